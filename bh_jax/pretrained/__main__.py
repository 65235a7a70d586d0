"""python -m bh_jax.pretrained: list or export shipped checkpoints."""

import sys

from bh_jax.pretrained import main

sys.exit(main())
