"""XLA flags set before the first backend use (importing bh_jax does this).

On the CPU backend of jaxlib 0.10, the concurrency-optimised scheduler
produced programs that segfault when the harmonization solver is vmapped over
8 or more slices (reproduced with random and trained weights); turning that
scheduler off fixes it and costs nothing measurable. The flag only affects
the CPU backend. Set BH_JAX_KEEP_XLA_FLAGS=1 to leave XLA_FLAGS untouched.
"""

import os

_FLAG = "--xla_cpu_enable_concurrency_optimized_scheduler=false"

if not os.environ.get("BH_JAX_KEEP_XLA_FLAGS") and \
        "xla_cpu_enable_concurrency_optimized_scheduler" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip()
