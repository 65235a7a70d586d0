"""Scans in: NIfTI files found, matched to masks, loaded and checked, brought to the
prior's grid and cut into slices.

Used by training (a target site's folder) and by harmonization (any site's scans):
every problem with a file is a `BadInputError` whose message names it.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bh_jax.config import DataConfig
from bh_jax.io import (
    BadInputError,
    Volume,
    is_nifti_path,
    load_mask,
    load_volume,
    strip_nifti_suffix,
)
from bh_jax.preprocess import (
    PreparedVolume,
    auto_brain_mask,
    negative_fraction,
    prepare_volume,
)
from bh_jax.resample import Resampling, to_prior_grid


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
# Largest automatic mask taken for a brain, in litres. Adult brains with cerebellum and
# brainstem are at most about 1.9 L (the built-in phantom's 1.7 L, real skull-stripped
# T1 scans about 1.5 L); the automatic mask of a whole head is more (a defaced 1 mm
# head: 2.8 L), and fitting a brain prior to skull and scalp saturates the white matter.
MAX_AUTOMATIC_MASK_LITRES = 2.3


@dataclass
class Scan:
    """One input scan: its own voxels (what is written) and its version on the
    prior's grid (what the methods see).

    Attributes:
      path: the file.
      native: the scan as loaded (canonical order, the file's geometry kept).
      native_mask: bool brain mask of `native.data`.
      prepared: the scan on the prior's grid, cut into slices.
      resampling: what was done to bring it there.
      mask_source: the mask file, or 'automatic'.
    """

    path: Path
    native: Volume
    native_mask: np.ndarray
    prepared: PreparedVolume
    resampling: Resampling
    mask_source: str


def _window_needed(mask: np.ndarray, factor: int) -> tuple[int, int]:
    """The smallest slice (multiple of `factor`) holding the mask's in-plane extent."""
    xs, ys, _ = np.nonzero(mask)
    return tuple(int(-(-(span + 1) // factor) * factor)
                 for span in (xs.max() - xs.min(), ys.max() - ys.min()))


def load_scan(path: str | os.PathLike, config: DataConfig, voxel_mm: float | None = None,
              mask_path: str | os.PathLike | None = None, min_size: int = 1) -> Scan:
    """Loads a scan, checks it, and brings it to the prior's grid (`voxel_mm`
    isotropic; None: its own grid).

    Raises:
      BadInputError (one line naming the file): unreadable, not 3D, bad geometry,
        NaN/Inf, signed or constant intensities, an empty or mismatched mask, an
        automatic mask larger than a brain (a whole head without a mask), no
        slice with enough brain, or a brain too large for the slice window.
    """
    path = Path(path)
    volume = load_volume(path)
    negative = negative_fraction(volume.data)
    if negative > MAX_NEGATIVE_FRACTION:
        raise BadInputError(path, f"{negative:.0%} of the non-zero voxels are negative: "
                                  "expected MR magnitudes with a zero background, not "
                                  "z-scored or mean-centred intensities")
    mask = load_mask(mask_path, volume) if mask_path else _automatic_mask(path, volume)
    inside = volume.data[mask]
    if np.ptp(inside) <= 1e-6 * max(float(np.abs(inside).max()), 1e-30):
        raise BadInputError(path, f"the brain is constant (every voxel is {inside[0]:g}): "
                                  "nothing to harmonize")
    grid, grid_mask, record = to_prior_grid(volume, mask, voxel_mm)
    if min(grid.data.shape[:2]) < min_size:
        raise BadInputError(path, f"in-plane size {grid.data.shape[:2]} is smaller than "
                                  f"the model's minimum {min_size}x{min_size}")
    prepared = prepare_volume(grid, config, grid_mask)
    if len(prepared.slices) == 0:
        raise BadInputError(path, "no axial slice has enough brain (check the mask, or "
                                  "lower data.min_brain_fraction)")
    outside = prepared.brain_outside_window()
    if outside > MAX_BRAIN_OUTSIDE_WINDOW:
        needed = _window_needed(grid_mask, max(min_size, 1))
        raise BadInputError(path, f"{outside:.0%} of the brain lies outside the prior's "
                                  f"{config.height}x{config.width} slice window at "
                                  f"{float(np.max(grid.voxel_mm)):.3g} mm: it needs a prior with "
                                  f"slices of at least {needed[0]}x{needed[1]}")
    return Scan(path, volume, mask, prepared, record, str(mask_path) if mask_path else
                "automatic")


def _automatic_mask(path: Path, volume: Volume) -> np.ndarray:
    """`auto_brain_mask`, refused when empty or larger than a brain (a whole head)."""
    mask = auto_brain_mask(volume.data)
    if not mask.any():
        raise BadInputError(path, "the automatic brain mask is empty (is the volume "
                                  "skull-stripped? give a mask with --mask-dir)")
    litres = float(mask.sum() * np.prod(volume.voxel_mm)) / 1e6
    if litres > MAX_AUTOMATIC_MASK_LITRES:
        raise BadInputError(path, f"the automatic brain mask covers {litres:.1f} L, more than "
                                  f"a brain ({MAX_AUTOMATIC_MASK_LITRES} L at most): a whole "
                                  "head? give brain masks with --mask-dir")
    return mask


def scan_of(prepared: PreparedVolume, mask_source: str) -> Scan:
    """A volume already prepared on the prior's grid as a `Scan` (its own grid)."""
    volume = prepared.volume
    record = Resampling(volume.data.shape, tuple(float(v) for v in volume.voxel_mm), False,
                        float(np.median(volume.voxel_mm)), volume.data.shape, (0.0, 0.0, 0.0),
                        False)
    return Scan(Path(volume.path), volume, prepared.mask, prepared, record, mask_source)


def load_prepared(path: Path, config: DataConfig, mask_path: Path | None = None,
                  min_size: int = 1) -> PreparedVolume:
    """A scan on the grid of `config.voxel_mm` (its own if None), cut into slices
    (`load_scan`)."""
    return load_scan(path, config, config.voxel_mm, mask_path, min_size).prepared
