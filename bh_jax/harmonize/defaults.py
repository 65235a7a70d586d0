"""Default solver settings, chosen on the built-in data set's VALIDATION subjects.

    python -m bh_jax.bench sweep --checkpoint bh_jax/pretrained/demo \
        --data-dir data/phantom-demo --b2 0 --alpha 0.01 --steps 10 20 30 --slice-stride 6

With the previous 4.81 bits/dim `demo` prior, 10 Adam steps (lr 0.05, b1 1,
b2 0, a 0.01) scored 25.51 dB mean in-mask PSNR over the 7 source domains,
0.09 dB below HM (its starting point), and 20 steps 25.20 dB. With the shipped
4.31 bits/dim prior, lr 0.005 / 0.02 / 0.05 scored -0.46 / -0.72 / -0.48 dB vs
HM (`--learning-rate ...`), and b2 in {0.1, 0.3} or a = 0.1 were 1.6 to 3.4 dB
worse than b2 = 0, a = 0.01 (`--b2 0 0.1 0.3 --alpha 0.01 0.1`). Test subjects were never used. The
README has the tables.

The `image` solver (`--solver image --b2 0 --alpha 0.1 1 --learning-rate 0.002
--steps 20`): a = 0.1 scored -0.07 dB vs HM on the mean, above HM on all four
scanner sites, and a = 1 -0.52 dB. 10 steps at lr 0.004 / 0.008 (`--steps 10
--learning-rate 0.004 0.008`): -0.16 / -0.60 dB, the first still above HM on
all four scanner sites.

The `curve` solver (`--solver curve --steps 1`): the calibration's settings
(4 segments, 60 steps, lr 0.05, 8 pooled slices) scored 32.26 / 31.80 / 32.11 dB
on exp / log / gamma0.7 (HM 30.18), -0.10 dB vs HM on the mean. In scratch runs
of an earlier version, lr 0.1, 30 steps on 4 slices, or 8 segments were worse;
in scratch runs of this one, 2 segments (31.16 dB mean on the three validation
shifts vs 31.96) and 1 (26.89) were worse (README, "Intensity calibration").
"""

from __future__ import annotations

from dataclasses import replace

from bh_jax.harmonize.objective import Weights
from bh_jax.harmonize.solvers import SolverConfig

DEFAULTS = {
    "latent": SolverConfig(),  # steps 10, lr 0.05, b1 1, b2 0, alpha 0.01
    # The published scheme: 10 iterations, z shrunk by alpha = 1e-3 each time.
    "alternating": SolverConfig(solver="alternating", steps=10, learning_rate=1.0,
                                weights=Weights(b1=1.0, b2=1.0, alpha=1e-3)),
    # Adam on the image, exact -log p(x) / D as the prior (see the module docstring).
    "image": SolverConfig(solver="image", steps=20, learning_rate=0.002, schedule="constant",
                          weights=Weights(b1=1.0, b2=0.0, alpha=0.1)),
    # The volume's maximum-likelihood intensity curve, no per-slice optimisation
    # (`bh_jax.harmonize.calibration`; 4 segments, 60 Adam steps, 8 pooled slices).
    "curve": SolverConfig(solver="curve", steps=1, init="calibrated"),
}


def default_settings(solver: str = "latent", **overrides) -> SolverConfig:
    """`solver`'s defaults with `overrides` (SolverConfig fields; None keeps the default)."""
    try:
        base = DEFAULTS[solver]
    except KeyError:
        raise ValueError(f"solver must be one of {sorted(DEFAULTS)}, got {solver!r}") from None
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})
