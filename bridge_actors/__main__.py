"""``python -m bridge_actors``: the same as the ``bridge-actors`` command."""

import sys

from ._cli import main

if __name__ == "__main__":
    sys.exit(main())
