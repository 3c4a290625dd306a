"""``python -m ppdet_ghm.convert SRC DST [--backbone-only] [--verbose]``: see :mod:`.cli`."""

import sys

from ppdet_ghm.convert.cli import main

if __name__ == "__main__":
    sys.exit(main())
