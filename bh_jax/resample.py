"""Scans on the prior's grid: any voxel size, anisotropy or orientation in, the
prior's isotropic RAS grid out.

A prior learned brains at one voxel size (its training volumes', recorded in its
`reference.npz`). Every scan is brought to that grid for fitting and solving:
smoothed to the grid's resolution when its voxels are finer (a Gaussian that makes up
the difference between the two voxels' box profiles along each axis,
`anti_aliasing_fwhm`, `nibabel.processing.smooth_image`),
then resampled by trilinear interpolation onto an RAS-aligned grid covering the
scan (`nibabel.processing.resample_to_output`, which handles oblique affines);
masks by nearest neighbour. A scan already on such a grid is used as it is.
Results go back to the scan's own voxels as an intensity transform
(`bh_jax.harmonize.transform`), never by resampling an image back.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import nibabel as nib
import numpy as np
from nibabel import processing

from bh_jax.io import Volume

# Voxel sizes within this relative difference of the grid's count as on it.
ON_GRID_TOLERANCE = 0.01

# FWHM of a Gaussian with the variance of a box of unit width: sqrt(8 ln 2 / 12).
BOX_FWHM_PER_WIDTH = float(np.sqrt(8.0 * np.log(2.0) / 12.0))


@dataclass(frozen=True)
class Resampling:
    """What was done to bring a scan to the prior's grid (for the JSON report)."""

    native_shape: tuple[int, int, int]
    native_voxel_mm: tuple[float, float, float]  # along the canonical R, A, S axes
    oblique: bool
    grid_voxel_mm: float
    grid_shape: tuple[int, int, int]
    smoothing_fwhm_mm: tuple[float, float, float]
    resampled: bool

    def as_dict(self) -> dict:
        record = asdict(self)
        record["method"] = (
            "Gaussian smoothing to the grid's voxel size (box-matched FWHM, "
            "nibabel.processing.smooth_image), "
            "trilinear resampling onto the RAS grid (nibabel.processing.resample_to_output, "
            "order 1), mask by nearest neighbour (order 0); the result applied to the native "
            "voxels as an intensity transform" if self.resampled else
            "none: the scan is on the prior's grid (or the prior records no voxel size)")
        return record


def is_on_grid(affine: np.ndarray, voxel_mm: float) -> bool:
    """Whether an affine is RAS-aligned (no rotation, no flip) with isotropic voxels
    of `voxel_mm`."""
    linear = np.asarray(affine, float)[:3, :3]
    off_diagonal = linear - np.diag(np.diag(linear))
    return bool(np.all(np.abs(off_diagonal) < 1e-6 * voxel_mm)
                and np.all(np.abs(np.diag(linear) - voxel_mm) <= ON_GRID_TOLERANCE * voxel_mm))


def anti_aliasing_fwhm(native_mm: tuple[float, float, float], voxel_mm: float
                       ) -> tuple[float, float, float]:
    """FWHM (mm) of the Gaussian that takes voxels of `native_mm` to the resolution of
    `voxel_mm` voxels, per axis (0 where the scan is already as coarse).

    A voxel of width w averages the signal over a box of variance w^2 / 12; the
    Gaussian adds the variance that a `voxel_mm` box has beyond the native one:
    FWHM = 0.68 sqrt(voxel_mm^2 - w^2), 1.9 mm from 1 to 3 mm. (Taking the voxel
    sizes themselves as FWHMs, 2.8 mm there, left the scan blurrier than the
    prior's 3 mm training images and cost the default 0.5-0.7 dB on 1 mm
    validation scans: docs/results.md, "Scans at 1 mm".)"""
    return tuple(BOX_FWHM_PER_WIDTH * float(np.sqrt(max(voxel_mm**2 - v**2, 0.0)))
                 for v in native_mm)


def to_prior_grid(volume: Volume, mask: np.ndarray, voxel_mm: float | None
                  ) -> tuple[Volume, np.ndarray, Resampling]:
    """(the scan on the prior's grid, its mask there, what was done).

    Args:
      volume: a loaded scan (`bh_jax.io.load_volume`; canonical RAS order).
      mask: bool [X, Y, Z] brain mask of `volume.data`.
      voxel_mm: the prior's isotropic voxel size; None or NaN (a prior that does
        not record it): the scan's own grid.
    """
    affine = volume.canonical_affine
    native_mm = tuple(float(v) for v in volume.voxel_mm)
    oblique = not is_on_grid(affine, float(np.mean(np.abs(np.diag(affine[:3, :3])))))
    if voxel_mm is None or not np.isfinite(voxel_mm) or is_on_grid(affine, voxel_mm):
        record = Resampling(volume.data.shape, native_mm, oblique,
                            float(voxel_mm) if voxel_mm is not None else float("nan"),
                            volume.data.shape, (0.0, 0.0, 0.0), False)
        return volume, np.asarray(mask, bool), record
    fwhm = anti_aliasing_fwhm(native_mm, voxel_mm)
    image = nib.Nifti1Image(np.asarray(volume.data, np.float32), affine)
    if any(fwhm):
        image = processing.smooth_image(image, fwhm, mode="constant")
    grid = processing.resample_to_output(image, voxel_sizes=(voxel_mm,) * 3, order=1,
                                         mode="constant", cval=0.0)
    grid_mask = processing.resample_to_output(
        nib.Nifti1Image(np.asarray(mask, np.uint8), affine), voxel_sizes=(voxel_mm,) * 3,
        order=0, mode="constant", cval=0)
    data = np.asarray(grid.dataobj, np.float32)
    header = nib.Nifti1Image(data, grid.affine).header  # shape, zooms, float32
    header.set_qform(grid.affine, code=1)
    header.set_sform(grid.affine, code=1)
    on_grid = Volume(data=np.maximum(data, 0.0), path=volume.path, affine=grid.affine,
                     header=header)
    record = Resampling(volume.data.shape, native_mm, oblique, voxel_mm, data.shape, fwhm, True)
    return on_grid, np.asarray(grid_mask.dataobj) > 0, record
