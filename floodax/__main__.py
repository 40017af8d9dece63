"""``python -m floodax``: the same commands as the ``floodax`` script."""

import sys

from floodax._cli import main

if __name__ == "__main__":
    sys.exit(main())
