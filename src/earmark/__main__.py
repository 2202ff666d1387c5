"""``python -m earmark ...`` runs the command line (as torchrun's ``-m earmark`` does)."""

import sys

from earmark.cli import main

if __name__ == "__main__":
    sys.exit(main())
