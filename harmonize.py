"""Harmonize scans: `python harmonize.py --help` (the same command as `bh-harmonize`)."""

import sys

from bh_jax.cli.harmonize import main

if __name__ == "__main__":
    sys.exit(main())
