"""`python -m bh_jax.bench ...`: the same command as `bh-bench` (bh_jax/cli/bench.py)."""

import sys

from bh_jax.cli.bench import main

if __name__ == "__main__":
    sys.exit(main())
