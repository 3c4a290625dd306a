"""``python -m ppdet_ghm``: the ``ppdet-ghm`` command line (:mod:`ppdet_ghm.cli`)."""

import sys

from ppdet_ghm.cli import main

if __name__ == "__main__":
    sys.exit(main())
