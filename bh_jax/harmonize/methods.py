"""The harmonization methods as the command line runs them: BlindHarmony with a
trained prior, HM and SSIMH to its target statistics, and the learned baselines.

`load_method(name, checkpoint, ...)` gives a `VolumeMethod`: prepared volumes in,
`HarmonizedVolume`s out, with what the report needs to say where they came from.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bh_jax.baselines.learned import load_baseline
from bh_jax.baselines.nyul import NyulScale, site_landmarks
from bh_jax.config import DataConfig
from bh_jax.harmonize.engine import Harmonizer
from bh_jax.harmonize.pipeline import (
    METHODS,
    HarmonizedVolume,
    SiteCurve,
    SiteLandmarks,
    classical,
    harmonize_volumes,
    shared_curve,
    site_nyul,
)
from bh_jax.harmonize.settings import SolverConfig
from bh_jax.harmonize.transform import fit_transform
from bh_jax.inputs import find_nifti, load_prepared, mask_for
from bh_jax.preprocess import PreparedVolume
from bh_jax.training.checkpoint import LoadedFlow, folder_digest, load_flow

LEARNED_METHODS = ("unet", "cyclegan")  # need a baseline checkpoint, not a flow's
ALL_METHODS = (*METHODS, *LEARNED_METHODS)


@dataclass(frozen=True)
class VolumeMethod:
    """A harmonization method as `run_jobs` uses it.

    Attributes:
      name: 'blindharmony', 'hm', 'nyul', 'ssimh', 'unet' or 'cyclegan'.
      data: the slice layout the method was trained for.
      min_size: smallest image side the method accepts.
      identity: the checkpoint it came from (written into every report).
      settings: solver settings (BlindHarmony only).
      harmonize: (volumes, progress bar or None, site=None) -> one result per
        volume; `site`, what `fit_site` gave for their site, matters only to
        BlindHarmony and site Nyul (without it, they fit one on the volumes given).
      voxel_mm: the isotropic grid (mm) its inputs are brought to, if known.
      fit_site: volumes -> their site's intensity curve (BlindHarmony with
        `calibration.shared`) or landmarks (site Nyul), for a method whose
        `harmonize` takes one.
      warnings: one-line messages a command line shows before any work (settings
        that the checkpoint cannot honour).
    """

    name: str
    data: DataConfig
    min_size: int
    identity: dict[str, Any]
    settings: SolverConfig | None
    harmonize: Callable[..., list[HarmonizedVolume]]
    voxel_mm: float | None = None
    fit_site: Callable[[list[PreparedVolume]], SiteCurve | SiteLandmarks] | None = None
    warnings: tuple[str, ...] = ()


def unused_nyul_setting(flow: LoadedFlow, settings: SolverConfig) -> str | None:
    """Why a Nyul setting of `settings.calibration` will not act as asked with this prior
    (made by an older bh_jax): without a Nyul scale `nyul_weight`, `scan_nyul_weight`
    and `scan_nyul_contrast_gain` have no effect; without mean landmarks `nyul_scale`
    'mean' maps onto the standard scale. None if they will act (or are unused)."""
    calibration = settings.calibration
    weights = {"nyul_weight": calibration.nyul_weight,
               "scan_nyul_weight": calibration.scan_nyul_weight,
               "scan_nyul_contrast_gain": calibration.scan_nyul_contrast_gain}
    given = ", ".join(f"{name} {w:g}" for name, w in weights.items() if w > 0)
    if settings.init != "calibrated" or not given:
        return None
    try:
        flow.reference.nyul_scale()
    except ValueError:
        return (f"{flow.identity['workdir']}: this prior has no Nyul scale (made by an older "
                f"bh_jax), so {given} has no effect and the site's curve is used "
                f"alone; give --nyul-from TARGET_SCANS to average it with Nyul's maps")
    if calibration.nyul_scale == "mean":
        try:
            flow.reference.mean_landmark_scale()
        except ValueError:
            return (f"{flow.identity['workdir']}: this prior has no mean landmarks (made by "
                    f"an older bh_jax), so the Nyul maps map onto the standard scale (as "
                    f"with --nyul-scale standard); give --nyul-from TARGET_SCANS to learn them")
    return None


def _volume_by_volume(harmonize_one: Callable[[PreparedVolume], HarmonizedVolume]):
    """`VolumeMethod.harmonize` for a method that takes one volume at a time."""
    def run(volumes, bar, site=None):  # no site curve in these methods
        results = [harmonize_one(p) for p in volumes]
        if bar is not None:
            bar.update(sum(len(p.slices) for p in volumes))
        return results

    return run


def flow_method(flow: LoadedFlow, name: str, settings: SolverConfig, batch_size: int,
                devices=None) -> VolumeMethod:
    """BlindHarmony with a trained prior, or HM / Nyul / site Nyul / SSIMH to its target
    statistics."""
    fit_site = None
    if name == "blindharmony":
        harmonizer = Harmonizer(flow.model, flow.params, settings, batch_size, devices)

        def run(volumes, bar, site=None):
            return harmonize_volumes(harmonizer, volumes, flow.reference, bar, site=site)

        if settings.init == "calibrated" and settings.calibration.shared:
            fit_site = partial(shared_curve, harmonizer, reference=flow.reference)
    elif name == "site-nyul":
        flow.reference.nyul_scale()  # fails before any work if it has none
        fit_site = partial(SiteLandmarks.fit, reference=flow.reference)

        def run(volumes, bar, site=None):
            results = site_nyul(volumes, flow.reference, site)
            if bar is not None:
                bar.update(sum(len(p.slices) for p in volumes))
            return results
    else:
        if name == "nyul":
            flow.reference.nyul_scale()  # fails before any work if it has none
        run = _volume_by_volume(lambda p: classical(name, p, flow.reference))
    unused = unused_nyul_setting(flow, settings) if name == "blindharmony" else None
    return VolumeMethod(name, flow.config.data, 2 ** flow.config.flow.levels, flow.identity,
                        settings if name == "blindharmony" else None, run,
                        flow.voxel_mm, fit_site, (unused,) if unused else ())


def baseline_method(baseline, batch_size: int) -> VolumeMethod:
    """A trained U-net or CycleGAN generator (`bh_jax.baselines.learned.load_baseline`)."""
    def harmonize_one(p: PreparedVolume) -> HarmonizedVolume:
        slices = baseline.apply(p.slices, p.slice_masks, batch_size)
        return HarmonizedVolume(p, slices, {}, fit_transform(p.slices, slices, p.slice_masks,
                                                             p.world_positions()))

    identity = {"workdir": str(Path(baseline.workdir).absolute()), "kind": baseline.config.kind,
                "source": baseline.config.source, "steps": baseline.config.steps,
                "sha256": folder_digest(baseline.workdir)}
    return VolumeMethod(baseline.config.kind, baseline.data, 2 ** baseline.config.depth,
                        identity, None, _volume_by_volume(harmonize_one),
                        baseline.data.voxel_mm)


def with_nyul_from(flow: LoadedFlow, folder: str | Path, mask_dir=None) -> LoadedFlow:
    """`flow` with its Nyul scale (and mean landmarks) learned from the target-site
    scans in `folder`
    (on the prior's grid; masks from `mask_dir`, else automatic), for a prior whose
    statistics have none (made by an older bh_jax) or to use other target scans."""
    paths = find_nifti([str(folder)])
    if not paths:
        raise ValueError(f"{folder}: no NIfTI files for --nyul-from")
    brains = []
    for path in paths:
        volume = load_prepared(path, flow.config.data, mask_for(path, mask_dir))
        brains.append(volume.slices[volume.slice_masks])
        try:
            NyulScale.fit(brains[-1:])
        except ValueError as err:  # e.g. a label map in the folder
            raise ValueError(f"{path}: {err} (--nyul-from takes target-site scans)") from None
    scale = NyulScale.fit(brains)
    return replace(flow, reference=replace(flow.reference, nyul=scale.intensities,
                                           nyul_mean=site_landmarks(brains).astype(np.float32)))


def load_method(name: str, checkpoint: str | Path, settings: SolverConfig, batch_size: int,
                devices=None, nyul_from: str | Path | None = None) -> VolumeMethod:
    """The method `name` from a checkpoint folder: a flow's (bh-train) or, for 'unet' /
    'cyclegan', a baseline's (bh-baselines); `nyul_from`: a folder of target-site
    scans to learn the Nyul scale from (`with_nyul_from`). Raises ValueError (or
    CheckpointError) naming the folder when it does not hold what `name` needs."""
    if name not in ALL_METHODS:
        raise ValueError(f"method must be one of {ALL_METHODS}, got {name!r}")
    if name in LEARNED_METHODS:
        baseline = load_baseline(checkpoint)
        if baseline.config.kind != name:
            raise ValueError(f"{checkpoint}: holds a {baseline.config.kind} baseline, "
                             f"not a {name}")
        return baseline_method(baseline, batch_size)
    flow = load_flow(checkpoint)
    if nyul_from is not None:
        flow = with_nyul_from(flow, nyul_from)
    return flow_method(flow, name, settings, batch_size, devices)
