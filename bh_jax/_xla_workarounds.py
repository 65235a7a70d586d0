"""XLA flags set before the first backend use (importing bh_jax does this).

Both work around XLA:CPU crashes in jaxlib 0.10 and only affect the CPU backend:

* the concurrency-optimised scheduler produced programs that segfault when the
  harmonization solver is vmapped over 8 or more slices (reproduced with random
  and trained weights); turning it off costs nothing measurable.
* XLA:CPU (jaxlib 0.10.2) hands some transposes and convolutions to YNNPACK
  ("YNN fusions"); on an AMD EPYC its transpose segfaults (slinky
  `fuse_contiguous_dims`) for a flow's forward pass vmapped over one slice of
  two images, which is what each of 8 simulated devices runs in the tests.
  An empty `--xla_cpu_experimental_ynn_fusion_type=` turns those fusions off.
  An unknown flag aborts, so it is set only where it was found in the library:
  from jaxlib 0.9.2 on (0.9.2, 0.10.0 and 0.10.2 checked).

A flag the user already set in XLA_FLAGS is left as it is; set
BH_JAX_KEEP_XLA_FLAGS=1 to leave XLA_FLAGS untouched altogether.
"""

import os
from importlib import metadata


def _jaxlib_version() -> tuple[int, ...]:
    try:
        release = metadata.version("jaxlib").split("+")[0].split(".")
        return tuple(int(part) for part in release[:3] if part.isdigit())
    except metadata.PackageNotFoundError:
        return ()


def _flags() -> dict[str, str]:
    """{flag name: the flag as passed}: the ones this jaxlib understands."""
    flags = {"xla_cpu_enable_concurrency_optimized_scheduler":
             "--xla_cpu_enable_concurrency_optimized_scheduler=false"}
    if _jaxlib_version() >= (0, 9, 2):
        flags["xla_cpu_experimental_ynn_fusion_type"] = "--xla_cpu_experimental_ynn_fusion_type="
    return flags


if not os.environ.get("BH_JAX_KEEP_XLA_FLAGS"):
    _current = os.environ.get("XLA_FLAGS", "")
    _added = [flag for name, flag in _flags().items() if name not in _current]
    os.environ["XLA_FLAGS"] = " ".join([_current, *_added]).strip()
