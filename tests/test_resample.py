"""Scans at any resolution, anisotropy and orientation: fitted on the prior's grid,
written on their own (`bh_jax.resample`, `bh_jax.inputs.load_scan`)."""

from pathlib import Path

import jax
import nibabel as nib
import numpy as np
import pytest
from nibabel import processing

from bh_jax.data.phantom import unit_scale
from bh_jax.data.shifts import apply_shift
from bh_jax.harmonize import Harmonizer, SolverConfig, harmonize_volumes
from bh_jax.harmonize.pipeline import classical
from bh_jax.harmonize.run import native_output, save_harmonized
from bh_jax.harmonize.settings import CalibrationConfig
from bh_jax.inputs import load_scan
from bh_jax.io import BadInputError
from bh_jax.resample import anti_aliasing_fwhm, is_on_grid
from bh_jax.training.checkpoint import load_flow

pytestmark = pytest.mark.slow  # fits on the tiny prior


def _save(path: Path, data: np.ndarray, affine: np.ndarray, dtype=np.float32) -> Path:
    image = nib.Nifti1Image(np.asarray(data, dtype), affine)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))
    return path


def _finer(path: str, factor: int, order: int) -> nib.Nifti1Image:
    """`path` resampled to voxels `factor` times finer (scipy's interpolation)."""
    image = nib.load(path)
    zooms = np.asarray(image.header.get_zooms()[:3]) / factor
    data = nib.Nifti1Image(image.get_fdata().astype(np.float32), image.affine)
    return processing.resample_to_output(data, voxel_sizes=zooms, order=order)


def _unit(data: np.ndarray, mask: np.ndarray) -> np.ndarray:
    return np.clip(data / np.percentile(data[mask], 99.5), 0.0, 1.0)


def _psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a[mask] - b[mask]) ** 2)))


@pytest.mark.parametrize("native", [(1.0, 1.0, 1.0), (1.0, 0.5, 4.0)])
def test_anti_aliasing_adds_the_variance_a_3mm_box_has_beyond_the_native_one(native):
    """Measured on what nibabel's smoothing does to an impulse: the kernel's variance
    (mm^2) plus the native voxel's box variance w^2/12 is the 3 mm box's, 9/12, along
    every finer axis; a coarser axis is left alone."""
    fwhm = anti_aliasing_fwhm(native, 3.0)
    impulse = np.zeros((41, 41, 41), np.float32)
    impulse[20, 20, 20] = 1.0
    smoothed = processing.smooth_image(nib.Nifti1Image(impulse, np.diag([*native, 1.0])),
                                       fwhm).get_fdata()
    for axis, width in enumerate(native):
        profile = smoothed.sum(axis=tuple(a for a in range(3) if a != axis))
        offsets = (np.arange(41) - 20) * width
        variance = float(np.sum(profile * offsets**2) / np.sum(profile))
        expected = max(9.0 - width**2, 0.0) / 12.0
        assert variance == pytest.approx(expected, abs=0.02), (axis, fwhm)


@pytest.fixture(scope="module")
def setting(trained, tiny_phantom):
    """(prior, harmonizer, the first exp test subject's entry)."""
    flow = load_flow(trained[0])
    settings = SolverConfig(calibration=CalibrationConfig(steps=2, pool=8, field_steps=2))
    harmonizer = Harmonizer(flow.model, flow.params, settings, batch_size=8,
                            devices=jax.devices()[:1])
    entry = next(e for e in tiny_phantom[1]["images"]
                 if e["split"] == "test" and e["site"] == "exp")
    return flow, harmonizer, entry


def _harmonized(setting, image: Path, mask: Path, method: str = "hm"):
    """(the scan, its harmonization in [0, 1] on its own voxels in canonical order,
    the result on the prior's grid) by `method`: 'hm' (exact, quick) or the default
    BlindHarmony (whose tiny prior is too weak to score)."""
    flow, harmonizer, _ = setting
    scan = load_scan(image, flow.config.data, flow.voxel_mm, mask)
    result = (classical("hm", scan.prepared, flow.reference) if method == "hm" else
              harmonize_volumes(harmonizer, [scan.prepared], flow.reference)[0])
    return scan, native_output(scan, result, "unit")[0], result


def test_finer_scan_is_harmonized_on_its_own_grid_as_well_as_on_the_priors(setting, tmp_path):
    flow, _, entry = setting
    # The subject at 3x finer voxels: its target image interpolated, then shifted as
    # the built-in data set shifts it (so source and truth relate as at 6 mm).
    truth, mask = _finer(entry["truth"], 3, 1), _finer(entry["mask"], 3, 0)
    truth_data, brain = truth.get_fdata(), mask.get_fdata() > 0
    shifted = apply_shift(unit_scale(truth_data, brain), "exp")
    paths = {"path": _save(tmp_path / "path.nii.gz", shifted, truth.affine),
             "truth": _save(tmp_path / "truth.nii.gz", truth_data, truth.affine),
             "mask": _save(tmp_path / "mask.nii.gz", brain, truth.affine, np.uint8)}
    before = paths["path"].read_bytes()

    coarse_scan, coarse_out, _ = _harmonized(setting, Path(entry["path"]), Path(entry["mask"]))
    fine_scan, fine_out, result = _harmonized(setting, paths["path"], paths["mask"])
    assert not coarse_scan.resampling.resampled and fine_scan.resampling.resampled
    assert fine_scan.prepared.slices.shape[1:] == coarse_scan.prepared.slices.shape[1:]
    assert fine_scan.resampling.grid_voxel_mm == flow.voxel_mm

    save_harmonized(tmp_path / "out.nii.gz", fine_scan, result)
    written = nib.load(str(tmp_path / "out.nii.gz"))
    source = nib.load(str(paths["path"]))
    assert written.shape == source.shape
    np.testing.assert_array_equal(written.affine, source.affine)
    np.testing.assert_array_equal(written.header.get_qform(), source.header.get_qform())
    np.testing.assert_array_equal(written.header.get_sform(), source.header.get_sform())
    assert nib.aff2axcodes(written.affine) == nib.aff2axcodes(source.affine)
    outside = nib.load(str(paths["mask"])).get_fdata() == 0
    np.testing.assert_array_equal(written.get_fdata()[outside], source.get_fdata()[outside])
    assert paths["path"].read_bytes() == before

    scores = {}
    for name, scan, out, truth_path in (("coarse", coarse_scan, coarse_out, entry["truth"]),
                                        ("fine", fine_scan, fine_out, paths["truth"])):
        mask = scan.native_mask
        truth = _unit(nib.as_closest_canonical(nib.load(str(truth_path))).get_fdata(), mask)
        scores[name] = _psnr(out, truth, mask)
        scores[f"{name} source"] = _psnr(_unit(scan.native.data, mask), truth, mask)
        if name == "fine":  # HM fitted on the native voxels themselves, independently
            x = scan.native.data[mask] / scan.prepared.scale.high
            levels = np.linspace(0.0, 1.0, len(flow.reference.quantiles))
            direct = np.zeros_like(out)
            direct[mask] = np.interp(x, np.quantile(x, levels), flow.reference.quantiles)
            scores["fine direct"] = _psnr(direct, truth, mask)
    # Fitting on the prior's grid costs under 1 dB against fitting on the native voxels;
    # the target's histogram itself is a 6 mm one (partial volumes), hence the 2 dB.
    assert abs(scores["fine"] - scores["fine direct"]) <= 1.0, scores
    assert abs(scores["fine"] - scores["coarse"]) <= 2.0, scores
    assert scores["fine"] >= scores["fine source"] + 10.0, scores


def test_anisotropic_and_coronal_inputs_match_the_axial_volume(setting, tmp_path):
    _, _, entry = setting
    fine, mask = _finer(entry["path"], 3, 1), _finer(entry["mask"], 3, 0)
    data, affine, mask_data = fine.get_fdata(), fine.affine, mask.get_fdata()
    iso_image = _save(tmp_path / "iso.nii.gz", data, affine)
    iso_mask = _save(tmp_path / "iso_mask.nii.gz", mask_data, affine, np.uint8)
    iso = _harmonized(setting, iso_image, iso_mask)[1]

    # Coronal voxel order (the same voxels, axes 1 and 2 swapped): the same volume
    # exactly, for the default method too.
    swap = affine[:, [0, 2, 1, 3]]
    assert not is_on_grid(swap, 2.0)
    coronal_files = (
        _save(tmp_path / "cor.nii.gz", data.transpose(0, 2, 1), swap),
        _save(tmp_path / "cor_mask.nii.gz", mask_data.transpose(0, 2, 1), swap, np.uint8))
    np.testing.assert_allclose(_harmonized(setting, *coronal_files)[1], iso, atol=1e-5)
    np.testing.assert_allclose(_harmonized(setting, *coronal_files, method="default")[1],
                               _harmonized(setting, iso_image, iso_mask, method="default")[1],
                               atol=1e-5)

    # Thick slices (every third axial plane: 2 x 2 x 6 mm): the same values, to
    # interpolation error, at the voxels they share.
    thick = affine @ np.diag([1, 1, 3, 1])
    brain = mask_data[:, :, ::3] > 0
    _, anisotropic, _ = _harmonized(
        setting, _save(tmp_path / "thick.nii.gz", data[:, :, ::3], thick),
        _save(tmp_path / "thick_mask.nii.gz", mask_data[:, :, ::3], thick, np.uint8))
    difference = np.abs(anisotropic - iso[:, :, ::3])[brain]
    assert np.mean(difference) < 0.03 and np.percentile(difference, 95) < 0.1


@pytest.mark.parametrize("affine, problem", [
    (np.diag([2.0, 0.0, 2.0, 1.0]), "the affine is singular"),
    (np.diag([2.0, np.nan, 2.0, 1.0]), "NaN or Inf"),
    (np.diag([2.0, 2.0, 12.0, 1.0]), "more than 10 mm"),
])
def test_bad_geometry_is_one_line_naming_the_file(setting, tmp_path, affine, problem):
    flow = setting[0]
    path = tmp_path / "bad.nii.gz"
    image = nib.Nifti1Image(np.ones((8, 8, 8), np.float32), None)  # no qform
    image.header.set_sform(affine, code=2)  # as written, undecomposed
    nib.save(image, str(path))
    with pytest.raises(BadInputError, match=problem) as err:
        load_scan(path, flow.config.data, flow.voxel_mm)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_mask_on_another_grid_is_refused(setting, tmp_path):
    flow, _, entry = setting
    fine_mask = _finer(entry["mask"], 2, 0)
    mask = _save(tmp_path / "mask.nii.gz", fine_mask.get_fdata(), fine_mask.affine, np.uint8)
    with pytest.raises(BadInputError, match="mask shape .* differs from image shape"):
        load_scan(Path(entry["path"]), flow.config.data, flow.voxel_mm, mask)


def test_a_1mm_scan_with_the_shipped_3mm_prior_scores_as_its_3mm_version(tmp_path):
    """Issue 26's case as a user meets it: a built-in subject resampled to 1 mm (its
    3 mm target image by scipy, linear; the mask nearest) and shifted there by exp as
    the data set shifts it at 3 mm, harmonized (HM: exact and quick) with the shipped
    `demo` prior, whose grid is 3 mm. Against the truth at each resolution, the 1 mm
    output scores within 1 dB of the 3 mm one, and far above its source."""
    from bh_jax import pretrained
    from bh_jax.config import get_preset
    from bh_jax.data.phantom import TARGET_SITE, grid, render_subject

    flow = load_flow(pretrained.path("demo"))
    anatomy, rendered = render_subject(get_preset("demo").phantom, 0, sites=(TARGET_SITE,))
    _, affine = grid(3.0)
    files = {}
    for name, factor in (("3 mm", 1), ("1 mm", 3)):
        truth_file = _save(tmp_path / f"truth{factor}.nii.gz", rendered[TARGET_SITE], affine)
        mask_file = _save(tmp_path / f"mask{factor}.nii.gz", anatomy.mask > 0, affine, np.uint8)
        truth, mask = (_finer(str(f), factor, order) for f, order in ((truth_file, 1),
                                                                       (mask_file, 0)))
        brain = mask.get_fdata() > 0
        files[name] = (_save(tmp_path / f"exp{factor}.nii.gz",
                             apply_shift(unit_scale(truth.get_fdata(), brain), "exp"),
                             truth.affine),
                       _save(tmp_path / f"brain{factor}.nii.gz", brain, truth.affine, np.uint8),
                       _save(tmp_path / f"t{factor}.nii.gz", truth.get_fdata(), truth.affine))
    scores = {}
    for name, (path, mask_path, truth_path) in files.items():
        scan = load_scan(path, flow.config.data, flow.voxel_mm, mask_path)
        assert scan.resampling.resampled == (name == "1 mm")
        out = native_output(scan, classical("hm", scan.prepared, flow.reference), "unit")[0]
        mask = scan.native_mask
        truth = _unit(nib.as_closest_canonical(nib.load(str(truth_path))).get_fdata(), mask)
        scores[name] = _psnr(out, truth, mask)
        scores[f"{name} source"] = _psnr(_unit(scan.native.data, mask), truth, mask)
    assert abs(scores["1 mm"] - scores["3 mm"]) <= 1.0, scores
    assert scores["1 mm"] >= scores["1 mm source"] + 5.0, scores
