"""bh_jax: BlindHarmony, blind MR harmonization with normalizing flows, in JAX.

    from bh_jax import FlowModel, Harmonizer, SolverConfig, load_flow, harmonize_volume

The package follows the data: `io` and `preprocess` (files -> slices),
`data` (the built-in data set), `flows` (the prior), `train` (fitting it),
`harmonize` (the engine), `baselines` (classical and learned), `metrics`,
`evaluate` and `tables`, `bench`; `pretrained` holds the shipped checkpoints.
"""

from bh_jax import _xla_workarounds  # noqa: F401  (must run before jax starts a backend)
from bh_jax import pretrained
from bh_jax.checkpoint import load_flow
from bh_jax.config import Config, get_preset
from bh_jax.flows.model import FlowModel
from bh_jax.harmonize import (CalibrationConfig, Harmonizer, SolverConfig, Weights,
                              harmonize_volume, harmonize_volumes)
from bh_jax.io import load_volume, save_like
from bh_jax.preprocess import prepare_volume, reassemble

__version__ = "0.1.0"

__all__ = ["CalibrationConfig", "Config", "FlowModel", "Harmonizer", "SolverConfig", "Weights",
           "get_preset", "harmonize_volume", "harmonize_volumes", "load_flow", "load_volume",
           "prepare_volume", "pretrained", "reassemble", "save_like"]
