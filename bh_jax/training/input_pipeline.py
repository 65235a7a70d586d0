"""Target-site training slices from a folder of NIfTI volumes or the built-in data.

Files -> `PreparedVolume`s (`bh_jax.inputs`) -> a `SliceSet` of [N, H, W] slices;
batches are drawn by step number (`bh_jax.batching.batch_indices`), so a resumed
run sees exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bh_jax.config import Config
from bh_jax.data.manifest import target_volumes
from bh_jax.data.phantom import ensure_phantom
from bh_jax.inputs import find_nifti, load_prepared, mask_for
from bh_jax.io import BadInputError
from bh_jax.preprocess import PreparedVolume


@dataclass
class SliceSet:
    """Slices [N, H, W] in [0, 1], their brain masks [N, H, W], the median voxel
    size [3] (canonical axes, mm) of the volumes they came from, and the volume
    [N] each slice came from, where known."""

    slices: np.ndarray
    masks: np.ndarray
    voxel_mm: np.ndarray | None = None
    volumes: np.ndarray | None = None

    @classmethod
    def from_volumes(cls, prepared: list[PreparedVolume]) -> "SliceSet":
        return cls(np.concatenate([p.slices for p in prepared]),
                   np.concatenate([p.slice_masks for p in prepared]),
                   np.median([p.volume.voxel_mm for p in prepared], axis=0),
                   np.concatenate([np.full(len(p.slices), i) for i, p in enumerate(prepared)]))

    def __len__(self) -> int:
        return len(self.slices)


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
    manifest = ensure_phantom(data_dir, config.phantom, config.name, progress=progress)
    return (SliceSet.from_volumes(target_volumes(manifest, config.data, "train")),
            SliceSet.from_volumes(target_volumes(manifest, config.data, "val")))
