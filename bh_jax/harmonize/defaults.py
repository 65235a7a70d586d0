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

The `curve` solver (`--solver curve --steps 1`) and the calibration's settings
(`CalibrationConfig`): the first settings (4 segments, 60 steps, lr 0.05, 8
pooled slices) scored 32.26 / 31.80 / 32.11 dB on exp / log / gamma0.7 (HM
30.18), -0.10 dB vs HM on the mean of all seven domains. On the three shifts
(every 3rd slice, mean over volumes, scratch script), 8 slices x 300 steps at lr
0.02 scored 32.70 dB, 16 x 100 at lr 0.05 32.93 and 16 x 300 at lr 0.02 33.17
(8 x 60: 31.96; HM 30.07), so the pool is 16 slices. The fit is now L-BFGS
(the curve has 5 parameters): `python -m bh_jax.bench sweep ... --solver curve
--b2 0 --alpha 0.01 --steps 1 --slice-stride 3 --calibration-steps 20 30`
scored 33.07 / 33.17 / 33.31 dB (20 steps) and 33.17 / 33.23 / 33.44 (30 steps,
the default) on exp / log / gamma0.7, +0.22 and +0.27 dB over HM on the mean of
all seven domains (Adam, 300 steps: 33.07 / 33.34 / 33.47 on the shifts). `--calibration-segments 3 4 5` (same command) scored 25.87 / 26.01 / 25.63 dB on
the mean of all seven domains, so 4 segments stay; `--calibration-pool 32` 26.09 dB,
0.08 dB above 16 slices (about the float-rounding drift between runs) for twice
the slices per likelihood evaluation, so the pool stays 16. In
scratch runs, 8 and 16 segments reached a higher likelihood and a lower PSNR
(exp: 32.11 and 31.28 dB mean over the 3 volumes vs 33.05 for 4), and in
earlier versions 2 segments (31.16 dB) and 1 (26.89) were worse (README,
"Intensity calibration").

One curve per source site (`CalibrationConfig.shared`, `--shared-curve`):
`python -m bh_jax.bench sweep ... --solver curve --b2 0 --alpha 0.01 --steps 1
--slice-stride 3 --shared-curve` scored 41.46 / 41.94 / 42.16 dB on exp / log /
gamma0.7 and 30.02 dB on the mean of all seven domains, +4.21 dB over HM (one
curve per volume: +0.21). It stays opt-in in harmonize.py (it assumes all the
inputs of a run come from one scanner and protocol); `--demo`, which runs each
site separately, uses it (`bh_jax.harmonize.demo`).
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
    # (`bh_jax.harmonize.calibration`; 4 segments, 30 L-BFGS steps, 16 pooled slices).
    "curve": SolverConfig(solver="curve", steps=1, init="calibrated"),
}


def default_settings(solver: str = "latent", **overrides) -> SolverConfig:
    """`solver`'s defaults with `overrides` (SolverConfig fields; None keeps the default).

    Raises ValueError for an unknown solver, or for a `calibration` given to
    settings that do not start from the calibrated curve (it would be ignored).
    """
    try:
        base = DEFAULTS[solver]
    except KeyError:
        raise ValueError(f"solver must be one of {sorted(DEFAULTS)}, got {solver!r}") from None
    settings = replace(base, **{k: v for k, v in overrides.items() if v is not None})
    if overrides.get("calibration") is not None and settings.init != "calibrated":
        raise ValueError(f"calibration settings apply to init 'calibrated' only, not "
                         f"{settings.init!r} (use --init calibrated or --solver curve)")
    return settings
