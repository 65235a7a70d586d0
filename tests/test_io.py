import gzip
import io
import os
import stat
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bh_jax.config import DataConfig
from bh_jax.io import BadInputError, atomic_path, load_mask, load_volume, save_like
from bh_jax.preprocess import prepare_volume, reassemble


def oblique_lps_affine():
    """An LPS-oriented affine with a rotation and anisotropic voxels."""
    angle = np.deg2rad(12.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0],
                         [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag([-1.1, -0.9, 1.3])
    affine[:3, 3] = [40.0, 55.0, -30.0]
    return affine


def blob_volume(shape=(30, 36, 20), seed=0):
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij"))
    inside = (grid**2).sum(0) < 0.6
    return (inside * (100 + 50 * rng.random(shape))).astype(np.float32)


def write(path, data, affine, dtype=np.float32, slope=None):
    image = nib.Nifti1Image(data, affine)
    image.set_data_dtype(dtype)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=2)
    if slope is not None:
        image.header.set_slope_inter(slope, 0.0)
    nib.save(image, str(path))
    return path


def test_canonical_is_ras_and_undoable(tmp_path):
    data = blob_volume()
    path = write(tmp_path / "lps.nii.gz", data, oblique_lps_affine())
    volume = load_volume(path)
    assert nib.aff2axcodes(oblique_lps_affine()) == ("L", "P", "S")
    np.testing.assert_array_equal(volume.data, data[::-1, ::-1, :])
    np.testing.assert_array_equal(volume.to_original(volume.data), data)


def test_round_trip_through_slices_is_exact(tmp_path):
    data = blob_volume()
    affine = oblique_lps_affine()
    src = write(tmp_path / "in.nii.gz", data, affine)
    before = src.read_bytes()
    volume = load_volume(src)
    config = DataConfig(height=32, width=32, min_brain_fraction=0.0, high_percentile=100.0)
    prepared = prepare_volume(volume, config)
    assert prepared.slices.shape[1:] == (32, 32) and len(prepared.slices) > 0
    out = save_like(tmp_path / "out.nii.gz", reassemble(prepared, prepared.slices), volume)
    back = nib.load(str(out))
    np.testing.assert_allclose(back.get_fdata(), data, rtol=1e-6, atol=0)
    background = data == 0
    np.testing.assert_array_equal(back.get_fdata()[background], 0)
    np.testing.assert_array_equal(back.affine, nib.load(str(src)).affine)
    np.testing.assert_array_equal(back.header.get_qform(), nib.load(str(src)).header.get_qform())
    np.testing.assert_array_equal(back.header.get_sform(), nib.load(str(src)).header.get_sform())
    assert int(back.header["qform_code"]) == 1 and int(back.header["sform_code"]) == 2
    assert back.get_data_dtype() == np.float32
    assert src.read_bytes() == before, "the input must not be modified"


def test_single_volume_4d_file_is_3d_and_keeps_its_shape(tmp_path):
    data = blob_volume()
    affine = oblique_lps_affine()
    src = write(tmp_path / "in.nii.gz", data[..., None], affine)
    mask = write(tmp_path / "mask.nii.gz", (data > 0)[..., None].astype(np.uint8), affine, np.uint8)
    volume = load_volume(src)
    np.testing.assert_array_equal(volume.data, data[::-1, ::-1, :])
    assert load_mask(mask, volume).shape == data.shape
    back = nib.load(str(save_like(tmp_path / "out.nii.gz", volume.data, volume)))
    assert back.shape == data.shape + (1,)
    np.testing.assert_array_equal(back.get_fdata()[..., 0], data)
    np.testing.assert_array_equal(back.affine, nib.load(str(src)).affine)


def test_unit_scale_reassembly_is_identity(tmp_path):
    volume = load_volume(write(tmp_path / "in.nii", blob_volume(), np.eye(4)))
    prepared = prepare_volume(volume, DataConfig(height=40, width=40, min_brain_fraction=0.0))
    unit = reassemble(prepared, prepared.slices, output_scale="unit")
    np.testing.assert_array_equal(unit, prepared.scale.normalize(volume.data))


def test_int16_header_does_not_truncate_float_output(tmp_path):
    data = (blob_volume() * 10).astype(np.int16)
    volume = load_volume(write(tmp_path / "int.nii.gz", data, np.eye(4), np.int16, slope=1.0))
    values = volume.data * 0.0 + 0.123
    back = nib.load(str(save_like(tmp_path / "o.nii.gz", values, volume)))
    assert back.get_data_dtype() == np.float32
    np.testing.assert_allclose(back.get_fdata(), 0.123, rtol=1e-6)


def test_refuses_to_overwrite_input(tmp_path):
    path = write(tmp_path / "in.nii.gz", blob_volume(), np.eye(4))
    volume = load_volume(path)
    with pytest.raises(ValueError, match="refusing to overwrite"):
        save_like(path, volume.data, volume)


def test_no_partial_file_when_write_fails(tmp_path):
    volume = load_volume(write(tmp_path / "in.nii.gz", blob_volume(), np.eye(4)))
    with pytest.raises(ValueError):
        save_like(tmp_path / "out.nii.gz", volume.data[:-1], volume)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz"]


def test_atomic_path_all_or_nothing_with_plain_permissions(tmp_path):
    target = tmp_path / "sub" / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert list((tmp_path / "sub").iterdir()) == []
    old_umask = os.umask(0o027)
    try:
        with atomic_path(target) as tmp:
            assert tmp.parent == target.parent and tmp.name.endswith(".json")
            tmp.write_text("whole")
    finally:
        os.umask(old_umask)
    assert target.read_text() == "whole" and len(list(target.parent.iterdir())) == 1
    # What open() would give under that umask, not mkstemp's owner-only 0600.
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            raise RuntimeError("interrupted")
    assert target.read_text() == "whole", "a failed rewrite keeps the old file"


# One clear error per kind of bad input, naming the file.

def _truncated(tmp_path):
    good = write(tmp_path / "good.nii.gz", blob_volume(), np.eye(4)).read_bytes()
    path = tmp_path / "cut.nii.gz"
    path.write_bytes(good[: len(good) // 2])
    return path


def _not_nifti(tmp_path):
    path = tmp_path / "notes.nii.gz"
    path.write_bytes(gzip.compress(b"this is not an image"))
    return path


def _header_claiming(shape, path: Path, gz: bool) -> Path:
    """A NIfTI whose header claims `shape` (float32) over a 1 KB body."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.float32)
    header.set_qform(np.eye(4), code=1)
    header["vox_offset"] = 352
    raw = io.BytesIO()
    header.write_to(raw)
    body = raw.getvalue().ljust(352, b"\0") + bytes(1024)
    path.write_bytes(gzip.compress(body) if gz else body)
    return path


BAD_INPUTS = {
    "huge header": (lambda p: _header_claiming((2000, 2000, 2000), p / "huge.nii.gz", True),
                    "claims 2000 x 2000 x 2000 voxels"),
    "short .nii": (lambda p: _header_claiming((512, 512, 512), p / "short.nii", False),
                   "need 536871264 bytes, the file holds 1376"),
    "short .nii.gz": (lambda p: _header_claiming((512, 512, 512), p / "short.nii.gz", True),
                      "need 536871264 bytes"),
    "missing": (lambda p: p / "absent.nii.gz", "not found"),
    "folder": (lambda p: (p / "scans.nii.gz").mkdir() or p / "scans.nii.gz",
               "is a folder, expected a NIfTI file"),
    "not nifti": (_not_nifti, "not a readable NIfTI"),
    "truncated": (_truncated, "truncated or corrupt"),
    "2d": (lambda p: write(p / "flat.nii.gz", np.ones((8, 8), np.float32), np.eye(4)),
           "expected a 3D volume"),
    "4d": (lambda p: write(p / "time.nii.gz", np.ones((8, 8, 8, 3), np.float32), np.eye(4)),
           "expected a 3D volume"),
    "nan": (lambda p: write(p / "nan.nii.gz", np.where(blob_volume() > 120, np.nan, 1.0)
                            .astype(np.float32), np.eye(4)), "NaN or Inf"),
    "inf": (lambda p: write(p / "inf.nii.gz", np.where(blob_volume() > 120, np.inf, 1.0)
                            .astype(np.float32), np.eye(4)), "NaN or Inf"),
    "all zero": (lambda p: write(p / "zero.nii.gz", np.zeros((8, 8, 8), np.float32),
                                 np.eye(4)), "all voxels are zero"),
}


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_input_gets_one_line_error_naming_file(tmp_path, kind):
    make, message = BAD_INPUTS[kind]
    path = make(tmp_path)
    # Refused before any voxel is allocated: a 512^3 body would take 0.5 GB.
    tracemalloc.start()
    with pytest.raises(BadInputError) as info:
        load_volume(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB allocated before refusing"
    text = str(info.value)
    assert text.startswith(str(path)) and message in text and "\n" not in text


def test_mask_shape_mismatch(tmp_path):
    volume = load_volume(write(tmp_path / "img.nii.gz", blob_volume(), np.eye(4)))
    mask = write(tmp_path / "mask.nii.gz", np.ones((10, 10, 10), np.uint8), np.eye(4), np.uint8)
    with pytest.raises(BadInputError, match="mask shape") as info:
        load_mask(mask, volume)
    assert str(info.value).startswith(str(mask))
    assert os.path.basename(volume.path) in str(info.value)


def test_empty_mask_is_named(tmp_path):
    data = blob_volume()
    volume = load_volume(write(tmp_path / "img.nii.gz", data, np.eye(4)))
    mask = write(tmp_path / "mask.nii.gz", np.zeros(data.shape, np.uint8), np.eye(4), np.uint8)
    with pytest.raises(BadInputError, match="mask is empty") as info:
        load_mask(mask, volume)
    assert str(info.value).startswith(str(mask)) and "\n" not in str(info.value)


@pytest.mark.parametrize("problem, message", [
    ("nan", "mask has NaN or Inf voxels"),
    ("shifted", "mask affine differs from the image's ("),
])
def test_a_mask_with_nan_or_on_another_grid_is_named(tmp_path, problem, message):
    data = blob_volume()
    volume = load_volume(write(tmp_path / "img.nii.gz", data, np.eye(4)))
    values = (data > 100).astype(np.float32)
    affine = np.eye(4)
    if problem == "nan":
        values[0, 0, 0] = np.nan
    else:
        affine[:3, 3] = [0.0, 0.0, 2.0]  # two voxels along z: another grid, same shape
    mask = write(tmp_path / "mask.nii.gz", values, affine)
    with pytest.raises(BadInputError) as info:
        load_mask(mask, volume)
    text = str(info.value)
    assert text.startswith(str(mask)) and message in text and "\n" not in text
    assert problem == "nan" or text.endswith(f"({volume.path})")


def test_voxel_size_follows_the_canonical_axes(tmp_path):
    # File axes i, j, k along A, S, R (a sagittal stack) with 1, 2, 3 mm voxels.
    affine = np.zeros((4, 4))
    affine[1, 0], affine[2, 1], affine[0, 2], affine[3, 3] = 1.0, 2.0, 3.0, 1.0
    volume = load_volume(write(tmp_path / "sag.nii.gz", blob_volume(), affine))
    assert nib.aff2axcodes(affine) == ("A", "S", "R")
    np.testing.assert_allclose(volume.voxel_mm, [3.0, 1.0, 2.0])
    assert volume.data.shape == (20, 30, 36)
