"""NIfTI in and out, with the input's exact geometry preserved.

Volumes are processed in canonical RAS voxel order (`Volume.data`), and results
are put back in the file's ORIGINAL voxel order, affine and qform/sform
(`Volume.to_original`, `save_like`). Every problem with an input file becomes a
`BadInputError` whose message is one line naming the file and the problem.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import nibabel as nib
import numpy as np
from nibabel import orientations as ornt

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Voxels larger than this are not a brain scan's (the prior's grids are 1-6 mm).
MAX_VOXEL_MM = 10.0
_RAS = ornt.axcodes2ornt(("R", "A", "S"))


class BadInputError(ValueError):
    """An input file that cannot be used; `str(err)` is `"<path>: <problem>"`."""

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


def is_nifti_path(path: str | os.PathLike) -> bool:
    return str(path).endswith(NIFTI_SUFFIXES)


def strip_nifti_suffix(name: str) -> str:
    for suffix in (".nii.gz", ".nii"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


@dataclass
class Volume:
    """A 3D image in canonical RAS order plus what is needed to undo that.

    Attributes:
      data: float32 [X, Y, Z] in RAS+ voxel order.
      path: the file it came from.
      affine: the file's original affine (voxel -> world, original order).
      header: a copy of the file's original NIfTI header.
    """

    data: np.ndarray
    path: str
    affine: np.ndarray
    header: nib.Nifti1Header

    @property
    def _file_ornt(self) -> np.ndarray:
        return ornt.io_orientation(self.affine)

    @property
    def voxel_mm(self) -> np.ndarray:
        """float [3]: voxel size along the canonical R, A, S axes of `data`."""
        sizes = nib.affines.voxel_sizes(self.affine)
        canonical = np.empty(3)
        canonical[self._file_ornt[:, 0].astype(int)] = sizes
        return canonical

    @property
    def canonical_affine(self) -> np.ndarray:
        """float [4, 4]: voxel -> world of `data` (canonical order), the same world."""
        transform = ornt.ornt_transform(self._file_ornt, _RAS)
        shape = self.header.get_data_shape()[:3]
        return self.affine @ ornt.inv_ornt_aff(transform, shape)

    def to_canonical(self, array: np.ndarray) -> np.ndarray:
        """Reorders an array in the file's voxel order into RAS order."""
        return ornt.apply_orientation(array, ornt.ornt_transform(self._file_ornt, _RAS))

    def to_original(self, array: np.ndarray) -> np.ndarray:
        """Reorders an array in RAS order back into the file's voxel order."""
        return ornt.apply_orientation(array, ornt.ornt_transform(_RAS, self._file_ornt))


# More voxels than this (a 1024^3 volume) is no brain scan: refused before reading.
MAX_VOXELS = 1024**3


def check_data_size(path: Path, image: nib.Nifti1Image) -> None:
    """BadInputError, before any voxel is read, if the header claims more voxels than
    MAX_VOXELS or more bytes than the file holds (a .nii's size, a .nii.gz's
    recorded uncompressed size)."""
    shape = image.header.get_data_shape()
    voxels = int(np.prod(shape, dtype=np.int64)) if shape else 0
    if voxels > MAX_VOXELS:
        raise BadInputError(path, f"the header claims {' x '.join(map(str, shape))} voxels, "
                                  f"more than any brain scan ({MAX_VOXELS} at most)")
    offset = getattr(image.dataobj, "offset", image.header.get_data_offset())
    needed = int(offset) + voxels * image.get_data_dtype().itemsize
    if path.name.endswith(".gz"):
        with open(path, "rb") as file:  # gzip's last 4 bytes: the size mod 2^32
            file.seek(max(path.stat().st_size - 4, 0))
            held = int.from_bytes(file.read(4), "little")
        short = needed < 2**32 and held < needed
    else:
        held = path.stat().st_size
        short = held < needed
    if short:
        raise BadInputError(path, f"truncated or corrupt image data (the header's "
                                  f"{' x '.join(map(str, shape))} voxels need {needed} bytes, "
                                  f"the file holds {held})")


def _read_image(path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    if not path.exists():
        raise BadInputError(path, "file not found")
    if path.is_dir():
        raise BadInputError(path, "is a folder, expected a NIfTI file")
    try:
        image = nib.load(str(path))
    except Exception as err:  # nibabel raises several types for unreadable files
        raise BadInputError(path, f"not a readable NIfTI file ({type(err).__name__})") from None
    if not isinstance(image, (nib.Nifti1Image, nib.Nifti2Image)):
        raise BadInputError(path, f"not a NIfTI image ({type(image).__name__})")
    check_data_size(path, image)
    try:
        data = np.asarray(image.get_fdata(dtype=np.float32))
    except (EOFError, zlib.error, OSError, ValueError) as err:
        raise BadInputError(path, f"truncated or corrupt image data ({err})") from None
    if data.ndim > 3 and all(n == 1 for n in data.shape[3:]):
        data = data.reshape(data.shape[:3])  # converters often write [X, Y, Z, 1]
    return image, data


def load_volume(path: str | os.PathLike) -> Volume:
    """Loads a 3D NIfTI volume as float32 in canonical RAS order.

    A 4D file with one volume ([X, Y, Z, 1]) counts as 3D; `save_like` writes
    its result with the same [X, Y, Z, 1] shape.

    Raises:
      BadInputError: missing, unreadable or truncated file, not 3D, NaN/Inf
        voxels, or an all-zero volume.
    """
    path = Path(path)
    image, data = _read_image(path)
    if data.ndim != 3:
        raise BadInputError(path, f"expected a 3D volume, got shape {data.shape}")
    check_geometry(path, image.affine)
    n_bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
    if n_bad:
        raise BadInputError(path, f"{n_bad} voxels are NaN or Inf")
    if not np.any(data):
        raise BadInputError(path, "all voxels are zero")
    volume = Volume(data=np.empty(0), path=str(path), affine=image.affine.copy(),
                    header=image.header.copy())
    volume.data = np.ascontiguousarray(volume.to_canonical(data), dtype=np.float32)
    return volume


def check_geometry(path: str | os.PathLike, affine: np.ndarray) -> None:
    """BadInputError unless the affine is finite and invertible with voxel sizes in
    (0, MAX_VOXEL_MM] mm."""
    affine = np.asarray(affine, float)
    if not np.all(np.isfinite(affine)):
        raise BadInputError(path, "the affine (qform/sform) has NaN or Inf entries")
    sizes = nib.affines.voxel_sizes(affine)
    if not np.all(sizes > 1e-6) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise BadInputError(path, f"the affine is singular (voxel sizes "
                                  f"{', '.join(f'{s:.3g}' for s in sizes)} mm)")
    if np.any(sizes > MAX_VOXEL_MM):
        raise BadInputError(path, f"voxel sizes {', '.join(f'{s:.3g}' for s in sizes)} mm: "
                                  f"more than {MAX_VOXEL_MM:g} mm is not a brain scan's")


def load_mask(path: str | os.PathLike, like: Volume) -> np.ndarray:
    """Loads a mask for `like` as bool [X, Y, Z] in canonical RAS order.

    Raises:
      BadInputError: unreadable file, a shape or affine different from the
        image's, NaN/Inf voxels, or no voxel in the mask.
    """
    path = Path(path)
    image, data = _read_image(path)
    expected = like.header.get_data_shape()[:3]
    if data.shape != tuple(expected):
        raise BadInputError(path, f"mask shape {data.shape} differs from image shape "
                                  f"{tuple(expected)} ({like.path})")
    if not np.all(np.isfinite(data)):
        raise BadInputError(path, "mask has NaN or Inf voxels")
    if not np.allclose(image.affine, like.affine, atol=1e-3):
        raise BadInputError(path, f"mask affine differs from the image's ({like.path})")
    if not np.any(data > 0.5):
        raise BadInputError(path, f"mask is empty (no voxel above 0.5) ({like.path})")
    return like.to_canonical(data > 0.5)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary file name beside `path`, moved onto `path` when the block ends.

    Readers never see a partial file: the block writes the temporary file (its
    name ends like `path`, so writers that choose the format by extension
    work), and only a block that completes renames it into place; otherwise it
    is removed. The file gets the permissions a plain `open()` would give
    (0666 less the umask), not `mkstemp`'s owner-only 0600. Creates the folder.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else path.suffix
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_like(path: str | os.PathLike, canonical: np.ndarray, like: Volume) -> Path:
    """Writes a RAS-ordered array with `like`'s exact geometry, atomically.

    The output has `like`'s original voxel order, shape, affine, qform and sform
    (with their codes), datatype float32 and no scaling slope/intercept, so an
    int16 input header cannot truncate float results. The file is written to a
    temporary name in the same folder and renamed into place.

    Raises:
      ValueError: if `path` is the input file itself.
    """
    path = Path(path)
    if path.exists() and os.path.samefile(path, like.path):
        raise ValueError(f"{path}: refusing to overwrite the input file")
    data = np.asarray(like.to_original(canonical), dtype=np.float32)
    if data.shape != tuple(like.header.get_data_shape()[:3]):
        raise ValueError(f"{path}: array shape {data.shape} does not match the input "
                         f"{like.header.get_data_shape()}")
    data = data.reshape(like.header.get_data_shape())  # [X, Y, Z, 1] inputs stay 4D
    header = like.header.copy()
    header.set_data_dtype(np.float32)
    image_class = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
    image = image_class(data, like.affine, header)
    image.set_qform(like.header.get_qform(), code=int(like.header["qform_code"]))
    image.set_sform(like.header.get_sform(), code=int(like.header["sform_code"]))
    image.header.set_slope_inter(np.nan, np.nan)
    with atomic_path(path) as tmp:
        nib.save(image, tmp)
    return path


def write_json_atomic(path: str | os.PathLike, payload: Any) -> Path:
    """Writes JSON atomically (`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2, sort_keys=True, default=_json_default))
    return Path(path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
