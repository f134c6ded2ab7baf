"""``python -m ml4paleo.jobs convert|segment|mesh [--data DIR] [--poll-interval S] [--once]``."""

import sys

from ml4paleo.jobs.serve import runner_main

sys.exit(runner_main())
