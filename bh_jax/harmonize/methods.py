"""The harmonization methods as the command line runs them: BlindHarmony with a
trained prior, HM and SSIMH to its target statistics, and the learned baselines.

`load_method(name, checkpoint, ...)` gives a `VolumeMethod`: prepared volumes in,
`HarmonizedVolume`s out, with what the report needs to say where they came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bh_jax.baselines.learned import load_baseline
from bh_jax.config import DataConfig
from bh_jax.harmonize.calibration import IntensityCurve
from bh_jax.harmonize.engine import Harmonizer
from bh_jax.harmonize.pipeline import (
    METHODS,
    HarmonizedVolume,
    classical,
    harmonize_volumes,
    shared_curve,
)
from bh_jax.harmonize.settings import SolverConfig
from bh_jax.preprocess import PreparedVolume
from bh_jax.training.checkpoint import LoadedFlow, load_flow

LEARNED_METHODS = ("unet", "cyclegan")  # need a baseline checkpoint, not a flow's
ALL_METHODS = (*METHODS, *LEARNED_METHODS)


@dataclass(frozen=True)
class VolumeMethod:
    """A harmonization method as `run_jobs` uses it.

    Attributes:
      name: 'blindharmony', 'hm', 'ssimh', 'unet' or 'cyclegan'.
      data: the slice layout the method was trained for.
      min_size: smallest image side the method accepts.
      identity: the checkpoint it came from (written into every report).
      settings: solver settings (BlindHarmony only).
      harmonize: (volumes, progress bar or None, curve=None) -> one result per
        volume; `curve`, a shared intensity curve, only matters to BlindHarmony.
      voxel_mm: the training volumes' voxel size [3] (canonical axes, mm), if known.
      fit_curve: volumes -> their shared intensity curve, for a method whose
        `harmonize` takes one (`curve=`; BlindHarmony with `calibration.shared`).
    """

    name: str
    data: DataConfig
    min_size: int
    identity: dict[str, Any]
    settings: SolverConfig | None
    harmonize: Callable[..., list[HarmonizedVolume]]
    voxel_mm: np.ndarray | None = None
    fit_curve: Callable[[list[PreparedVolume]], IntensityCurve] | None = None


def _volume_by_volume(harmonize_one: Callable[[PreparedVolume], HarmonizedVolume]):
    """`VolumeMethod.harmonize` for a method that takes one volume at a time."""
    def run(volumes, bar, curve=None):  # no intensity curve in these methods
        results = [harmonize_one(p) for p in volumes]
        if bar is not None:
            bar.update(sum(len(p.slices) for p in volumes))
        return results

    return run


def flow_method(flow: LoadedFlow, name: str, settings: SolverConfig, batch_size: int,
                devices=None) -> VolumeMethod:
    """BlindHarmony with a trained prior, or HM / SSIMH to its target reference."""
    fit_curve = None
    if name == "blindharmony":
        harmonizer = Harmonizer(flow.model, flow.params, settings, batch_size, devices)

        def run(volumes, bar, curve=None):
            return harmonize_volumes(harmonizer, volumes, flow.reference, bar, curve=curve)

        if settings.init == "calibrated" and settings.calibration.shared:
            fit_curve = partial(shared_curve, harmonizer, reference=flow.reference)
    else:
        run = _volume_by_volume(lambda p: classical(name, p, flow.reference))
    return VolumeMethod(name, flow.config.data, 2 ** flow.config.flow.levels, flow.identity,
                        settings if name == "blindharmony" else None, run,
                        flow.reference.voxel_mm, fit_curve)


def baseline_method(baseline, batch_size: int) -> VolumeMethod:
    """A trained U-net or CycleGAN generator (`bh_jax.baselines.learned.load_baseline`)."""
    run = _volume_by_volume(lambda p: HarmonizedVolume(
        p, baseline.apply(p.slices, p.slice_masks, batch_size), {}))
    identity = {"workdir": str(Path(baseline.workdir).absolute()), "kind": baseline.config.kind,
                "source": baseline.config.source, "steps": baseline.config.steps}
    return VolumeMethod(baseline.config.kind, baseline.data, 2 ** baseline.config.depth,
                        identity, None, run)


def load_method(name: str, checkpoint: str | Path, settings: SolverConfig, batch_size: int,
                devices=None) -> VolumeMethod:
    """The method `name` from a checkpoint folder: a flow's (train.py) or, for 'unet' /
    'cyclegan', a baseline's (`python -m bh_jax.baselines.train`). Raises ValueError
    (or CheckpointError) naming the folder when it does not hold what `name` needs."""
    if name not in ALL_METHODS:
        raise ValueError(f"method must be one of {ALL_METHODS}, got {name!r}")
    if name in LEARNED_METHODS:
        baseline = load_baseline(checkpoint)
        if baseline.config.kind != name:
            raise ValueError(f"{checkpoint}: holds a {baseline.config.kind} baseline, "
                             f"not a {name}")
        return baseline_method(baseline, batch_size)
    return flow_method(load_flow(checkpoint), name, settings, batch_size, devices)
