"""``python -m spanet_pl.grid``: see ``spanet_pl.grid.cli``."""
import sys

from .cli import main

sys.exit(main())
