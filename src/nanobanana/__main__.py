"""``python -m nanobanana``: the command line, as the ``nanobanana`` script runs it."""

import sys

from nanobanana.cli import main

if __name__ == "__main__":
    sys.exit(main())
