"""The measure runner: `python measurerunner.py [--data DIR] [--poll-interval S] [--once]`.

Polls the job store and runs the measure step (morphometry) on queued jobs; run several
copies at once if you like (each job is claimed by exactly one). Same as
`ml4paleo runner measure`.
"""

import sys

from ml4paleo.cli.jobs_commands import runner_main

if __name__ == "__main__":
    sys.exit(runner_main("measure"))
