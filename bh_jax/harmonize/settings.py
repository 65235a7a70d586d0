"""Every harmonization setting in one place: the objective's weights, the
intensity calibration, the solver, and each solver's defaults.

The defaults were chosen on the built-in data set's validation subjects; the
sweeps that chose them, with their commands, are in docs/methods.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import jax


@dataclass(frozen=True)
class Weights:
    """b1 (correlation), b2 (edges), alpha (prior) of the objective.

    A pytree: the engine passes it to its compiled program as data, so new
    weights do not recompile.
    """

    b1: float = 1.0
    b2: float = 0.0
    alpha: float = 0.01


jax.tree_util.register_dataclass(Weights, data_fields=["b1", "b2", "alpha"], meta_fields=[])


@dataclass(frozen=True)
class CalibrationConfig:
    """How to fit a volume's intensity curve.

    Attributes:
      segments: linear pieces of the monotone curve (1 = an affine map).
      steps: L-BFGS iterations (each one evaluation of the likelihood and its
        gradient, more when the line search rejects the first step).
      pool: slices of each volume the curve is fitted on (evenly spaced among
        those with at least half the largest brain area; a fixed number, so
        one compiled program serves volumes of any length).
      shared: one curve for all the volumes harmonized together, fitted on
        their slices pooled (`Calibrator.shared_curve`), instead of one per
        volume: for scans of one scanner and protocol, whose intensity map is
        the same for every subject. The pooled fit cannot absorb a subject's
        own tissue contrast into the map, so that contrast survives.
    """

    # Chosen on the validation subjects (docs/methods.md).
    segments: int = 4
    steps: int = 30
    pool: int = 16
    shared: bool = False

    def __post_init__(self):
        for name in ("segments", "steps", "pool"):
            if getattr(self, name) < 1:
                raise ValueError(f"calibration {name} must be >= 1, got {getattr(self, name)}")


SOLVERS = ("latent", "alternating", "image", "curve")
INITS = ("calibrated", "hm", "template", "source")


@dataclass(frozen=True)
class SolverConfig:
    """How to harmonize.

    Attributes:
      solver: 'latent', 'alternating', 'image' or 'curve'.
      steps: optimiser steps (latent, image) or iterations (alternating);
        unused by 'curve'.
      learning_rate: Adam's peak step on z (latent) or on x (image), or the
        image step (alternating).
      schedule: 'constant' or 'cosine' (decay to 0 over `steps`); latent and image.
      weights: default b1, b2, alpha (a run can pass others without
        recompiling). For `alternating`, alpha is the shrink of z per
        iteration, as in the published code.
      percentile: non-edge mask threshold (percentile of in-brain gradients).
      gradient: 'sobel' or 'diff'.
      init: x_init: 'calibrated' (the source through its volume's
        maximum-likelihood intensity curve, `bh_jax.harmonize.calibration`),
        'hm' (the source histogram-matched to the target), 'template' (the
        target's mean slice) or 'source'.
      calibration: how the 'calibrated' curve is fitted.
    """

    solver: str = "latent"
    steps: int = 10
    learning_rate: float = 0.05
    schedule: str = "cosine"
    weights: Weights = field(default_factory=Weights)
    percentile: float = 30.0
    gradient: str = "sobel"
    init: str = "hm"
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)

    def __post_init__(self):
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {self.init!r}")
        if self.schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")


DEFAULTS = {
    "latent": SolverConfig(),  # steps 10, lr 0.05, b1 1, b2 0, alpha 0.01
    # The published scheme: 10 iterations, z shrunk by alpha = 1e-3 each time.
    "alternating": SolverConfig(solver="alternating", steps=10, learning_rate=1.0,
                                weights=Weights(b1=1.0, b2=1.0, alpha=1e-3)),
    # Adam on the image, exact -log p(x) / D as the prior (`bh_jax.harmonize.solvers`).
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
