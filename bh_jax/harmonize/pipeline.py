"""Volumes in, harmonized volumes out (Python API over the engine).

    harmonizer = Harmonizer(model, params, SolverConfig(), batch_size=16)
    results = harmonize_volumes(harmonizer, prepared_volumes, reference)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bh_jax.baselines import histogram_match, spectrum_swap
from bh_jax.harmonize.engine import Harmonizer
from bh_jax.harmonize.objective import Weights
from bh_jax.preprocess import PreparedVolume
from bh_jax.reference import TargetReference

METHODS = ("blindharmony", "hm", "ssimh")


@dataclass
class HarmonizedVolume:
    """Harmonized slices of one volume and their per-slice diagnostics."""

    prepared: PreparedVolume
    slices: np.ndarray  # [N, H, W] in [0, 1]
    diagnostics: dict[str, np.ndarray]  # name -> [N]


def initial_images(prepared: PreparedVolume, reference: TargetReference, init: str) -> np.ndarray:
    """x_init [N, H, W] for the solver: 'hm', 'template' or 'source'."""
    if init == "hm":
        return histogram_match(prepared.slices, prepared.slice_masks, reference)
    if init == "template":
        return np.broadcast_to(reference.mean_slice, prepared.slices.shape) * prepared.slice_masks
    return prepared.slices


def harmonize_volumes(harmonizer: Harmonizer, prepared: list[PreparedVolume],
                      reference: TargetReference, progress=None,
                      weights: Weights | None = None) -> list[HarmonizedVolume]:
    """Harmonizes several volumes with BlindHarmony, their slices packed together.

    Args:
      harmonizer: the compiled engine.
      prepared: volumes from `bh_jax.preprocess.prepare_volume`.
      reference: target statistics (for the HM or template initialisation).
      progress: optional tqdm-like bar, advanced by slices.
      weights: b1, b2, alpha (default: the harmonizer's settings); changing
        them does not recompile.
    """
    if not prepared:
        return []
    init = harmonizer.settings.init
    sources = np.concatenate([p.slices for p in prepared])
    brains = np.concatenate([p.slice_masks for p in prepared])
    inits = np.concatenate([initial_images(p, reference, init) for p in prepared])
    on_batch = progress.update if progress is not None else None
    slices, diagnostics = harmonizer.harmonize_slices(sources, brains, inits, on_batch, weights)
    results, start = [], 0
    for p in prepared:
        stop = start + len(p.slices)
        results.append(HarmonizedVolume(p, slices[start:stop],
                                        {k: v[start:stop] for k, v in diagnostics.items()}))
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
