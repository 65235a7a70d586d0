"""Harmonization: the objective, its solvers, the batched engine, volumes in and out."""

from bh_jax.harmonize.calibration import CalibrationConfig
from bh_jax.harmonize.engine import Harmonizer
from bh_jax.harmonize.objective import Weights, ncc, non_edge_mask
from bh_jax.harmonize.pipeline import (METHODS, HarmonizedVolume, harmonize_volume,
                                       harmonize_volumes)
from bh_jax.harmonize.solvers import SolverConfig

__all__ = ["METHODS", "CalibrationConfig", "HarmonizedVolume", "Harmonizer", "SolverConfig",
           "Weights", "harmonize_volume", "harmonize_volumes", "ncc", "non_edge_mask"]
