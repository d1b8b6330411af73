"""``python -m mcqtune ...``: the same as the ``mcqtune`` command (and what ``torchrun -m`` launches)."""

import sys

from mcqtune.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
