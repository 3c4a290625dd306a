"""``ppdet-ghm`` as a script file, for launchers that take a path (paddle.distributed.launch)."""

import sys

from ppdet_ghm.cli import main

if __name__ == "__main__":
    sys.exit(main())
