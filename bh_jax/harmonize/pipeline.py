"""Volumes in, harmonized volumes out (Python API over the engine).

    harmonizer = Harmonizer(model, params, SolverConfig(), batch_size=16)
    results = harmonize_volumes(harmonizer, prepared_volumes, reference)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from bh_jax.baselines.hm import histogram_match
from bh_jax.baselines.ssimh import spectrum_swap
from bh_jax.harmonize.calibration import Calibrator, IntensityCurve
from bh_jax.harmonize.engine import Harmonizer
from bh_jax.harmonize.settings import Weights
from bh_jax.preprocess import PreparedVolume
from bh_jax.reference import TargetReference

METHODS = ("blindharmony", "hm", "ssimh")


@dataclass
class HarmonizedVolume:
    """Harmonized slices of one volume and their per-slice diagnostics."""

    prepared: PreparedVolume
    slices: np.ndarray  # [N, H, W] in [0, 1]
    diagnostics: dict[str, np.ndarray]  # name -> [N]
    curve: IntensityCurve | None = None  # init 'calibrated': the volume's intensity curve


def initial_images(prepared: PreparedVolume, reference: TargetReference, init: str,
                   calibrator: Calibrator | None = None, curve: IntensityCurve | None = None
                   ) -> tuple[np.ndarray, IntensityCurve | None]:
    """(x_init [N, H, W], intensity curve or None) for the solver: 'calibrated'
    (the given `curve`, else the volume's own fit: needs `calibrator`), 'hm',
    'template' or 'source'."""
    slices, masks = prepared.slices, prepared.slice_masks
    if init == "calibrated":
        if curve is None:
            if calibrator is None:
                raise ValueError("init 'calibrated' needs a Calibrator")
            curve, _ = calibrator.curve(slices, masks, reference)
        return curve(slices, masks), curve
    if init == "hm":
        return histogram_match(slices, masks, reference), None
    if init == "template":
        return np.broadcast_to(reference.mean_slice, slices.shape) * masks, None
    return slices, None


def curve_fit_status(done: int, total: int, seconds: float, first: float) -> str:
    """'intensity curve i/n' and, once two fits have finished, the time left at
    the mean pace of the fits after the first (which includes compiling): the
    `done` fits took `seconds`, the first of them `first`."""
    status = f"intensity curve {done + 1}/{total}"
    if done < 2:
        return status
    left = (seconds - first) / (done - 1) * (total - done)
    return status + (f", about {left / 60:.0f} min left" if left >= 90
                     else f", about {left:.0f} s left")


def shared_curve(harmonizer: Harmonizer, prepared: list[PreparedVolume],
                 reference: TargetReference) -> IntensityCurve:
    """One intensity curve for all of `prepared` (`Calibrator.shared_curve`; the
    harmonizer's init must be 'calibrated')."""
    return harmonizer.calibrator.shared_curve(
        [(p.slices, p.slice_masks) for p in prepared], reference)[0]


def harmonize_volumes(harmonizer: Harmonizer, prepared: list[PreparedVolume],
                      reference: TargetReference, progress=None,
                      weights: Weights | None = None, curve: IntensityCurve | None = None
                      ) -> list[HarmonizedVolume]:
    """Harmonizes several volumes with BlindHarmony, their slices packed together.

    Args:
      harmonizer: the compiled engine.
      prepared: volumes from `bh_jax.preprocess.prepare_volume`.
      reference: target statistics (for the HM or template initialisation).
      progress: optional tqdm-like bar, advanced by slices.
      weights: b1, b2, alpha (default: the harmonizer's settings); changing
        them does not recompile.
      curve: init 'calibrated': the intensity curve of every volume (e.g. a
        whole run's `Calibrator.shared_curve`). Default: with
        `calibration.shared`, one curve fitted on `prepared` together; else
        one per volume.
    """
    if not prepared:
        return []
    init = harmonizer.settings.init
    if curve is None and init == "calibrated" and harmonizer.settings.calibration.shared:
        curve = shared_curve(harmonizer, prepared, reference)
    sources = np.concatenate([p.slices for p in prepared])
    brains = np.concatenate([p.slice_masks for p in prepared])
    # Curve fits (seconds each on a 2-core CPU, the first also compiles) come
    # before the first batch: say so, with the time left, rather than sit at 0 %.
    report = (harmonizer.calibrator is not None and curve is None
              and hasattr(progress, "set_postfix_str"))
    starts, began, first = [], time.perf_counter(), 0.0
    for i, p in enumerate(prepared):
        if report:
            progress.set_postfix_str(curve_fit_status(i, len(prepared),
                                                      time.perf_counter() - began, first))
        starts.append(initial_images(p, reference, init, harmonizer.calibrator, curve))
        if i == 0:
            first = time.perf_counter() - began
    if report:
        progress.set_postfix_str("")
    inits = np.concatenate([x_init for x_init, _ in starts])
    on_batch = progress.update if progress is not None else None
    slices, diagnostics = harmonizer.harmonize_slices(sources, brains, inits, on_batch, weights)
    results, start = [], 0
    for p, (_, curve) in zip(prepared, starts):
        stop = start + len(p.slices)
        results.append(HarmonizedVolume(p, slices[start:stop],
                                        {k: v[start:stop] for k, v in diagnostics.items()},
                                        curve))
        start = stop
    return results


def harmonize_volume(harmonizer: Harmonizer, prepared: PreparedVolume,
                     reference: TargetReference, weights: Weights | None = None
                     ) -> HarmonizedVolume:
    """Harmonizes one volume with BlindHarmony (`weights` as `harmonize_volumes`)."""
    return harmonize_volumes(harmonizer, [prepared], reference, weights=weights)[0]


def classical(method: str, prepared: PreparedVolume, reference: TargetReference) -> HarmonizedVolume:
    """HM or SSIMH of one volume (no per-slice diagnostics beyond the slice count)."""
    if method == "hm":
        slices = histogram_match(prepared.slices, prepared.slice_masks, reference)
    elif method == "ssimh":
        slices = spectrum_swap(prepared.slices, prepared.slice_masks, reference)
    else:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return HarmonizedVolume(prepared, slices, {})
