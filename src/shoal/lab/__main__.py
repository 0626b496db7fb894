"""Entry point of `python -m shoal.lab` (see shoal.lab.cli)."""

import sys

from .cli import main

sys.exit(main())
