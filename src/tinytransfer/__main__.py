"""``python -m tinytransfer ...`` (and ``torchrun -m tinytransfer``) runs the command line."""

import sys

from .cli import main

sys.exit(main())
