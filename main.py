"""ml4paleo in one process tree: the web app + the convert, segment and mesh runners.

    python main.py [--host 127.0.0.1] [--port 5000] [--data ./data] [--no-runners] [--threads 8]

The web app runs on waitress (a production WSGI server); the runners are child
processes; Ctrl-C (or SIGTERM) stops them all. Same as ``ml4paleo serve``.
"""

import sys

from webapp.serve import main

if __name__ == "__main__":
    sys.exit(main())
