"""Scans in: NIfTI files found, matched to masks, loaded and checked, cut into slices.

Used by training (a target site's folder) and by harmonization (any site's scans):
every problem with a file is a `BadInputError` whose message names it.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path

import numpy as np

from bh_jax.config import DataConfig
from bh_jax.io import (
    BadInputError,
    is_nifti_path,
    load_mask,
    load_volume,
    strip_nifti_suffix,
)
from bh_jax.preprocess import PreparedVolume, negative_fraction, prepare_volume


def find_nifti(inputs: list[str | os.PathLike]) -> list[Path]:
    """NIfTI files named by files, folders (not recursive) or glob patterns, sorted."""
    found: list[Path] = []
    for item in map(str, inputs):
        if os.path.isdir(item):
            found += [p for p in sorted(Path(item).iterdir()) if is_nifti_path(p)]
        elif any(ch in item for ch in "*?["):
            found += [Path(p) for p in sorted(glob.glob(item)) if is_nifti_path(p)]
        else:
            found.append(Path(item))
    unique = list(dict.fromkeys(found))
    return unique


def mask_for(image: Path, mask_dir: str | os.PathLike | None) -> Path | None:
    """The mask matched to an image by file name in `mask_dir` (stem or stem_mask)."""
    if mask_dir is None:
        return None
    stem = strip_nifti_suffix(image.name)
    for name in (image.name, f"{stem}_mask.nii.gz", f"{stem}_mask.nii",
                 f"{stem}.nii.gz", f"{stem}.nii"):
        candidate = Path(mask_dir) / name
        if candidate.is_file():
            return candidate
    raise BadInputError(image, f"no mask for it in {mask_dir} (expected {stem}.nii.gz "
                               f"or {stem}_mask.nii.gz)")


# Brain left out of the slice window that a volume may have (it stays as in the
# input, unharmonized); the built-in data sets have under 0.3 %.
MAX_BRAIN_OUTSIDE_WINDOW = 0.01
# Clearly negative voxels a volume may have (`preprocess.negative_fraction`);
# the built-in data sets have none.
MAX_NEGATIVE_FRACTION = 0.01


# In-plane voxel sizes further than this (relative) from those of the prior's
# training volumes get a warning: the prior learned brains at that scale.
RESOLUTION_TOLERANCE = 0.2


def resolution_warning(voxel_mm: np.ndarray, trained_mm: np.ndarray | None) -> str | None:
    """One line if a volume's in-plane voxel size differs from the training
    volumes' by more than 20 % on either axis; None if not, or if unknown."""
    if trained_mm is None or not np.all(np.isfinite(trained_mm[:2])):
        return None
    ratio = np.asarray(voxel_mm[:2], float) / np.asarray(trained_mm[:2], float)
    if np.all(np.abs(ratio - 1.0) <= RESOLUTION_TOLERANCE):
        return None

    def size(mm):
        return "x".join(f"{v:.3g}" for v in mm[:2])
    return (f"in-plane voxel size {size(voxel_mm)} mm differs by more than 20 % from the "
            f"prior's training volumes' {size(trained_mm)} mm: resample to it for a "
            "reliable result")


def load_prepared(path: Path, config: DataConfig, mask_path: Path | None = None,
                  min_size: int = 1) -> PreparedVolume:
    """Loads and prepares one volume; BadInputError if it cannot be used (signed
    intensities, no brain slice, or more than 1 % of the brain outside the
    slice window)."""
    volume = load_volume(path)
    negative = negative_fraction(volume.data)
    if negative > MAX_NEGATIVE_FRACTION:
        raise BadInputError(path, f"{negative:.0%} of the non-zero voxels are negative: "
                                  "expected MR magnitudes with a zero background, not "
                                  "z-scored or mean-centred intensities")
    if min(volume.data.shape[:2]) < min_size:
        raise BadInputError(path, f"in-plane size {volume.data.shape[:2]} is smaller than "
                                  f"the model's minimum {min_size}x{min_size}")
    mask = load_mask(mask_path, volume) if mask_path else None
    prepared = prepare_volume(volume, config, mask)
    if len(prepared.slices) == 0:
        raise BadInputError(path, "no axial slice has enough brain (check the mask, or "
                                  "lower data.min_brain_fraction)")
    outside = prepared.brain_outside_window()
    if outside > MAX_BRAIN_OUTSIDE_WINDOW:
        zooms = "x".join(f"{z:g}" for z in volume.header.get_zooms()[:3])
        raise BadInputError(path, f"{outside:.0%} of the brain lies outside the model's "
                                  f"{config.height}x{config.width} slice window (voxels "
                                  f"{zooms} mm): resample it to the prior's training "
                                  "resolution, or train a prior with a larger slice size")
    return prepared
