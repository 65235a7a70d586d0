"""Default solver settings, chosen on the built-in data set's VALIDATION subjects.

See `python -m bh_jax.bench sweep` and the README's table for how they were
chosen; test subjects were never used.
"""

from __future__ import annotations

from bh_jax.harmonize.objective import Weights
from bh_jax.harmonize.solvers import SolverConfig

DEFAULTS = {
    "latent": SolverConfig(solver="latent", steps=100, learning_rate=0.05,
                           weights=Weights(b1=1.0, b2=1.0, alpha=0.01)),
    # The published scheme: 10 iterations, z shrunk by alpha = 1e-3 each time.
    "alternating": SolverConfig(solver="alternating", steps=10, learning_rate=1.0,
                                weights=Weights(b1=1.0, b2=1.0, alpha=1e-3)),
}


def default_settings(solver: str = "latent") -> SolverConfig:
    try:
        return DEFAULTS[solver]
    except KeyError:
        raise ValueError(f"solver must be one of {sorted(DEFAULTS)}, got {solver!r}") from None
