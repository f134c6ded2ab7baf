"""``python -m ml4paleo.jobs convert|segment|mesh [--data DIR] [--poll-interval S] [--once] [-v]``."""

import sys

from ml4paleo.cli.jobs_commands import runner_main

sys.exit(runner_main())
