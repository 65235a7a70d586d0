"""bh_jax: BlindHarmony, blind MR harmonization with normalizing flows, in JAX.

    import bh_jax
    flow = bh_jax.load_flow(bh_jax.pretrained.path("demo"))

The package follows the data, each layer importing only the ones before it:
`config`, `io`, `batching`, `sharding`, `metrics` -> `preprocess`, `reference`,
`inputs` (scans in) -> `data` (the built-in data set) -> `flows` (the prior)
-> `training` (fitting it; `pretrained` holds the shipped checkpoints) ->
`baselines` -> `harmonize` (the engine) -> `experiments` (evaluation, tables,
benchmarks, the demo) -> `cli` (the command lines). docs/development.md has the
layout; a test checks the import graph.

The names below are loaded on first use, so that importing a small module
(or asking a command for --help) does not load the whole stack.
"""

from bh_jax import _xla_workarounds  # noqa: F401  (must run before jax starts a backend)
from bh_jax.version import __version__  # noqa: F401  (re-exported)

_PUBLIC = {
    "Config": "bh_jax.config", "get_preset": "bh_jax.config",
    "load_volume": "bh_jax.io", "save_like": "bh_jax.io",
    "prepare_volume": "bh_jax.preprocess", "reassemble": "bh_jax.preprocess",
    "load_scan": "bh_jax.inputs",
    "FlowModel": "bh_jax.flows.model",
    "load_flow": "bh_jax.training.checkpoint",
    "CalibrationConfig": "bh_jax.harmonize.settings", "SolverConfig": "bh_jax.harmonize.settings",
    "Weights": "bh_jax.harmonize.settings", "default_settings": "bh_jax.harmonize.settings",
    "Harmonizer": "bh_jax.harmonize.engine",
    "harmonize_volume": "bh_jax.harmonize.pipeline",
    "harmonize_volumes": "bh_jax.harmonize.pipeline",
    "save_harmonized": "bh_jax.harmonize.run",
}
_SUBMODULES = ("pretrained",)

__all__ = sorted([*_PUBLIC, *_SUBMODULES, "__version__"])


def __getattr__(name: str):
    import importlib

    if name in _PUBLIC:
        value = getattr(importlib.import_module(_PUBLIC[name]), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f"bh_jax.{name}")
    else:
        raise AttributeError(f"module 'bh_jax' has no attribute {name!r}")
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return __all__
