"""Harmonization: settings, the objective, its solvers, the intensity calibration,
the batched engine, volumes in and out (`pipeline`), methods and file runs."""

from bh_jax.harmonize.engine import Harmonizer
from bh_jax.harmonize.objective import ncc, non_edge_mask
from bh_jax.harmonize.pipeline import (
                                       METHODS,
                                       HarmonizedVolume,
                                       harmonize_volume,
                                       harmonize_volumes,
)
from bh_jax.harmonize.settings import (
                                       CalibrationConfig,
                                       SolverConfig,
                                       Weights,
                                       default_settings,
)

__all__ = ["METHODS", "CalibrationConfig", "HarmonizedVolume", "Harmonizer", "SolverConfig",
           "Weights", "default_settings", "harmonize_volume", "harmonize_volumes", "ncc",
           "non_edge_mask"]
