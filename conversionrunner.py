"""The convert runner: `python conversionrunner.py [--data DIR] [--poll-interval S] [--once]`.

Polls the job store and runs the convert step on queued jobs; run several copies at once
if you like (each job is claimed by exactly one). Same as `ml4paleo runner convert`.
"""

import sys

from ml4paleo.cli.jobs_commands import runner_main

if __name__ == "__main__":
    sys.exit(runner_main("convert"))
