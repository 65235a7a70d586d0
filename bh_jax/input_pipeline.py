"""Target-site training slices from a folder of NIfTI volumes or the built-in data.

Files -> `PreparedVolume`s (bh_jax.preprocess) -> a `SliceSet` of [N, H, W]
slices; batches are drawn by step number, so a resumed run sees exactly the
batches an uninterrupted one would.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bh_jax.config import Config, DataConfig
from bh_jax.io import BadInputError, is_nifti_path, load_mask, load_volume, strip_nifti_suffix
from bh_jax.preprocess import PreparedVolume, negative_fraction, prepare_volume, window_slices


@dataclass
class SliceSet:
    """Slices [N, H, W] in [0, 1], their brain masks [N, H, W], and the median
    voxel size [3] (canonical axes, mm) of the volumes they came from, if known."""

    slices: np.ndarray
    masks: np.ndarray
    voxel_mm: np.ndarray | None = None

    @classmethod
    def from_volumes(cls, prepared: list[PreparedVolume]) -> "SliceSet":
        return cls(np.concatenate([p.slices for p in prepared]),
                   np.concatenate([p.slice_masks for p in prepared]),
                   np.median([p.volume.voxel_mm for p in prepared], axis=0))

    def __len__(self) -> int:
        return len(self.slices)


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


def folder_slices(folder: str | os.PathLike, config: Config, mask_dir=None,
                  val_fraction: float = 0.15) -> tuple[SliceSet, SliceSet]:
    """Train/validation slices from a folder of target-site volumes.

    The last ceil(val_fraction * n) volumes (by sorted name) are held out for
    validation; with a single volume, it serves both.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise BadInputError(folder, "data folder not found")
    paths = find_nifti([folder])
    if not paths:
        raise BadInputError(folder, "no NIfTI files (.nii, .nii.gz) in the data folder")
    min_size = 2 ** config.flow.levels
    prepared = [load_prepared(p, config.data, mask_for(p, mask_dir), min_size) for p in paths]
    n_val = min(len(prepared) - 1, int(np.ceil(val_fraction * len(prepared))))
    if n_val == 0:
        return SliceSet.from_volumes(prepared), SliceSet.from_volumes(prepared)
    return (SliceSet.from_volumes(prepared[:-n_val]),
            SliceSet.from_volumes(prepared[-n_val:]))


def phantom_slices(config: Config, data_dir: str | os.PathLike,
                   progress: bool = True) -> tuple[SliceSet, SliceSet]:
    """Train/validation target-site slices of the built-in data set (generated if needed)."""
    from bh_jax.data.phantom import ensure_phantom

    manifest = ensure_phantom(data_dir, config.phantom, config.name, progress=progress)
    return (SliceSet.from_volumes(target_volumes(manifest, config.data, "train")),
            SliceSet.from_volumes(target_volumes(manifest, config.data, "val")))


def target_volumes(manifest: dict, config: DataConfig, split: str) -> list[PreparedVolume]:
    """The target-site images of one split of a phantom manifest, prepared."""
    from bh_jax.data.phantom import select

    return [prepare_entry(e, config) for e in select(manifest, split, manifest["target_site"])]


def prepare_entry(entry: dict, config: DataConfig, key: str = "path") -> PreparedVolume:
    """Loads a phantom manifest entry's image (or its truth: key='truth') with its mask."""
    volume = load_volume(entry[key])
    return prepare_volume(volume, config, load_mask(entry["mask"], volume))


def wm_slices(prepared: PreparedVolume, wm_path: str | os.PathLike) -> np.ndarray:
    """Boolean white-matter labels (a manifest's `wm` file) of a prepared volume's slices."""
    return window_slices(prepared, load_volume(wm_path).data > 0.5) & prepared.slice_masks


def fixed_batches(n: int, batch_size: int) -> Iterator[tuple[np.ndarray, int]]:
    """(indices, valid) batches covering range(n), each of exactly `batch_size`.

    The last batch wraps around to the first items, so every batch has the
    same shape (one compiled program) and holds real data (no all-zero
    padding for a solver to divide by); keep the first `valid` results.
    """
    for start in range(0, n, batch_size):
        yield np.arange(start, start + batch_size) % n, min(batch_size, n - start)


def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """Indices of the training batch at `step` (a pure function of its arguments)."""
    rng = np.random.default_rng([seed, step])
    return rng.choice(n, size=batch_size, replace=n < batch_size)
