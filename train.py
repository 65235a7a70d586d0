"""Train a BlindHarmony prior: `python train.py --help` (the same command as `bh-train`)."""

import sys

from bh_jax.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
