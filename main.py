"""ml4paleo in one process tree: the web app + the convert, segment and mesh runners.

    python main.py [--host 127.0.0.1] [--port 5000] [--data ./data] [--no-runners]

The web app runs on waitress (a production WSGI server); the runners are child
processes; Ctrl-C (or SIGTERM) stops them all. Same as ``ml4paleo serve``.
"""

import sys

from ml4paleo.jobs.serve import serve_main

if __name__ == "__main__":
    sys.exit(serve_main())
