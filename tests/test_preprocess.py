import numpy as np

from bh_jax.config import DataConfig
from bh_jax.io import Volume
from bh_jax.preprocess import (
    IntensityScale,
    auto_brain_mask,
    in_plane_mm,
    prepare_volume,
    reassemble,
    smooth_volume_in_plane,
)


def sphere_with_ventricle(shape=(40, 48, 24)):
    grid = np.stack(np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij"))
    radius = np.sqrt((grid**2).sum(0))
    data = np.where(radius < 0.8, 100.0, 0.0)
    data[radius < 0.2] = 1.0  # dark "ventricle": below threshold, inside the brain
    data[2, 2, 2] = 100.0  # a speck of noise outside, not connected
    return data.astype(np.float32), radius


def test_auto_mask_keeps_largest_component_and_fills_holes():
    data, radius = sphere_with_ventricle()
    mask = auto_brain_mask(data)
    assert mask[radius < 0.75].all()
    assert not mask[2, 2, 2]
    assert not mask[radius > 0.85].any()


def test_auto_mask_of_empty_volume_is_empty():
    assert not auto_brain_mask(np.zeros((5, 5, 5), np.float32)).any()


def test_intensity_scale_is_robust_and_clipped():
    data = np.concatenate([np.linspace(0, 1, 999), [1000.0]]).astype(np.float32)
    scale = IntensityScale.fit(data, np.ones_like(data, bool), 99.0)
    assert 0.98 < scale.high < 1.0
    unit = scale.normalize(data)
    assert unit.max() == 1.0 and unit.min() == 0.0


def _volume(data):
    return Volume(data=data, path="mem", affine=np.eye(4), header=None)


def test_slices_are_centred_and_small_slices_skipped():
    data, _ = sphere_with_ventricle()
    config = DataConfig(height=32, width=32, min_brain_fraction=0.2)
    prepared = prepare_volume(_volume(data), config)
    fraction = prepared.slice_masks.mean(axis=(1, 2))
    assert (fraction >= 0.2).all() and len(prepared.slice_indices) < data.shape[2]
    # Centred: the brain's centre of mass is within a pixel of the window centre.
    rows, cols = np.nonzero(prepared.slice_masks[len(prepared.slices) // 2])
    assert abs(rows.mean() - 15.5) <= 1 and abs(cols.mean() - 15.5) <= 1
    assert prepared.slices[~prepared.slice_masks].max() == 0


def test_window_larger_and_smaller_than_volume_round_trip():
    data, _ = sphere_with_ventricle()
    for size in ((64, 64), (16, 24)):
        config = DataConfig(height=size[0], width=size[1], min_brain_fraction=0.0,
                            high_percentile=100.0)
        prepared = prepare_volume(_volume(data), config)
        processed = np.full_like(prepared.slices, 0.5)
        out = reassemble(prepared, processed)
        # Exactly the in-mask voxels inside the window took the processed value.
        assert (out == 50.0).sum() == prepared.slice_masks.sum() > 0
        np.testing.assert_array_equal(out[out != 50.0], data[out != 50.0])
        assert not (out[~prepared.mask] == 50.0).any()


def test_brain_outside_window_is_counted_and_refused(tmp_path):
    import nibabel as nib
    import pytest

    from bh_jax.inputs import load_prepared
    from bh_jax.io import BadInputError

    data, _ = sphere_with_ventricle()
    small = DataConfig(height=16, width=24, min_brain_fraction=0.0)
    prepared = prepare_volume(_volume(data), small)
    # Independently: brain voxels of the kept slices outside the window's rows and columns.
    (x0, y0), kept = prepared.origin, prepared.mask[:, :, prepared.slice_indices]
    inside = np.zeros_like(kept)
    inside[max(x0, 0):x0 + 16, max(y0, 0):y0 + 24] = True
    expected = (kept & ~inside).sum() / kept.sum()
    assert 0.3 < expected < 1
    assert prepared.brain_outside_window() == pytest.approx(expected)
    assert prepare_volume(_volume(data), DataConfig(height=64, width=64)).brain_outside_window() == 0

    path = tmp_path / "big.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 1.5, 1])), str(path))
    xs, ys, _ = np.nonzero(prepared.mask)
    needed = f"{xs.max() - xs.min() + 1}x{ys.max() - ys.min() + 1}"
    with pytest.raises(BadInputError, match=rf"of the brain lies outside the prior's 16x24 slice "
                                            rf"window at 1.5 mm: it needs a prior with slices of "
                                            rf"at least {needed}$") as info:
        load_prepared(path, small)
    assert str(info.value).startswith(str(path)) and f"{expected:.0%}" in str(info.value)
    assert len(load_prepared(path, DataConfig(height=64, width=64)).slices) > 0


def test_signed_intensities_are_refused_small_ringing_is_not(tmp_path):
    import nibabel as nib
    import pytest

    from bh_jax.inputs import load_prepared
    from bh_jax.io import BadInputError
    from bh_jax.preprocess import negative_fraction

    data, radius = sphere_with_ventricle()
    brain = radius < 0.8
    ringing = data.copy()
    ringing[(radius > 0.8) & (radius < 0.85)] = -2.0  # 2 % of the maximum: resampling
    zscored = np.where(brain, (data - data[brain].mean()) / data[brain].std(), 0.0)
    assert negative_fraction(data) == 0 and negative_fraction(ringing) == 0
    expected = np.mean(zscored[zscored != 0] < -0.05 * np.percentile(zscored[zscored > 0], 99.5))
    assert negative_fraction(zscored) == pytest.approx(expected) and expected > 0.01

    config = DataConfig(height=64, width=64)
    for name, array in (("ringing", ringing), ("zscored", zscored)):
        nib.save(nib.Nifti1Image(array.astype(np.float32), np.eye(4)), str(tmp_path / f"{name}.nii"))
    assert len(load_prepared(tmp_path / "ringing.nii", config).slices) > 0
    with pytest.raises(BadInputError, match="non-zero voxels are negative") as info:
        load_prepared(tmp_path / "zscored.nii", config)
    assert str(info.value).startswith(str(tmp_path / "zscored.nii"))


def test_target_reference_keeps_the_voxel_size_and_reads_older_files(tmp_path):
    from bh_jax.reference import TargetReference

    data, _ = sphere_with_ventricle()
    prepared = prepare_volume(_volume(data), DataConfig(height=64, width=64))
    reference = TargetReference.from_slices(prepared.slices, prepared.slice_masks,
                                            np.array([1.0, 1.2, 1.5]))
    reference.save(tmp_path / "reference.npz")
    np.testing.assert_allclose(TargetReference.load(tmp_path / "reference.npz").voxel_mm,
                               [1.0, 1.2, 1.5])
    # A file written before voxel_mm existed loads with it unknown (NaN).
    older = {k: v for k, v in np.load(tmp_path / "reference.npz").items() if k != "voxel_mm"}
    np.savez(tmp_path / "older.npz", **older)
    loaded = TargetReference.load(tmp_path / "older.npz")
    assert np.isnan(loaded.voxel_mm).all()
    np.testing.assert_array_equal(loaded.quantiles, reference.quantiles)


def test_target_reference_keeps_each_volumes_mean_landmarks(tmp_path):
    """`nyul_mean`: the training volumes' landmarks (np.percentile of each volume's
    brain) averaged as measured; Nyul's standard scale stretches them first, so the
    two differ. Unknown (NaN, and no scale to map onto) without the volumes or in a
    file written before it existed."""
    import pytest

    from bh_jax.baselines.nyul import PERCENTILES
    from bh_jax.reference import TargetReference

    rng = np.random.default_rng(0)
    slices = np.concatenate([0.2 + 0.6 * rng.random((4, 16, 16)), rng.random((4, 16, 16)) ** 3])
    masks = np.zeros(slices.shape, bool)
    masks[:, 2:14, 3:13] = True
    volumes = np.repeat([0, 1], 4)
    reference = TargetReference.from_slices(slices, masks, volumes=volumes)
    expected = np.mean([np.percentile(slices[volumes == v][masks[volumes == v]], PERCENTILES)
                        for v in (0, 1)], axis=0)
    np.testing.assert_allclose(reference.nyul_mean, expected, rtol=1e-6)
    assert not np.allclose(reference.nyul_mean, reference.nyul, atol=1e-3)
    np.testing.assert_array_equal(reference.mean_landmark_scale().intensities,
                                  reference.nyul_mean)
    reference.save(tmp_path / "reference.npz")
    np.testing.assert_array_equal(TargetReference.load(tmp_path / "reference.npz").nyul_mean,
                                  reference.nyul_mean)
    older = {k: v for k, v in np.load(tmp_path / "reference.npz").items() if k != "nyul_mean"}
    np.savez(tmp_path / "older.npz", **older)
    for unknown in (TargetReference.load(tmp_path / "older.npz"),
                    TargetReference.from_slices(slices, masks)):
        assert np.isnan(unknown.nyul_mean).all()
        with pytest.raises(ValueError, match="no mean landmarks"):
            unknown.mean_landmark_scale()


def test_constant_volume_says_so(tmp_path):
    import nibabel as nib
    import pytest

    from bh_jax.inputs import load_scan
    from bh_jax.io import BadInputError

    path = tmp_path / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.full((40, 40, 20), 7.0, np.float32), np.eye(4)), str(path))
    with pytest.raises(BadInputError, match=r"flat.nii.gz: the brain is constant \(every "
                                            r"voxel is 7\): nothing to harmonize$"):
        load_scan(path, DataConfig(height=16, width=16), None)


def test_whole_head_without_a_mask_is_refused_with_one_it_is_harmonized(tmp_path):
    import nibabel as nib
    import pytest

    from bh_jax.inputs import MAX_AUTOMATIC_MASK_LITRES, load_prepared
    from bh_jax.io import BadInputError

    # A "head" at 4 mm: brain (r < 0.5) inside a bright scalp shell; the automatic
    # mask takes all of it (r < 0.8), an ellipsoid of 0.8 x (128, 128, 96) mm semi-axes.
    data, radius = sphere_with_ventricle((64, 64, 48))
    data[(radius > 0.6) & (radius < 0.8)] = 300.0
    affine = np.diag([4.0, 4.0, 4.0, 1.0])
    head = tmp_path / "head.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(head))
    litres = np.count_nonzero(radius < 0.8) * 64 / 1e6
    assert litres > MAX_AUTOMATIC_MASK_LITRES
    config = DataConfig(height=64, width=64)
    with pytest.raises(BadInputError, match=rf"the automatic brain mask covers {litres:.1f} L, "
                                            r"more than a brain .*give brain masks with "
                                            r"--mask-dir$") as info:
        load_prepared(head, config)
    assert str(info.value).startswith(str(head))

    mask = tmp_path / "head_mask.nii.gz"
    nib.save(nib.Nifti1Image((radius < 0.5).astype(np.uint8), affine), str(mask))
    prepared = load_prepared(head, config, mask)
    assert len(prepared.slices) > 0 and prepared.mask.sum() == np.count_nonzero(radius < 0.5)


def test_in_plane_smoothing_keeps_constants_follows_the_pixel_size_and_spares_the_outside():
    """A constant brain stays constant (normalised convolution: no dark rim), the
    outside is untouched, and a point spreads by sigma_mm / pixel size per axis:
    its second moments along x and y, on pixels of 1 and 2 mm, are 4:1 in pixels."""
    mask = np.zeros((41, 41, 3), bool)
    mask[5:36, 5:36] = True
    data = np.where(mask, 7.0, 3.0).astype(np.float32)
    smoothed = smooth_volume_in_plane(data, mask, 2.0, (1.0, 2.0))
    np.testing.assert_allclose(smoothed, data, rtol=1e-5)
    point = np.where(mask, 0.0, 3.0).astype(np.float32)
    point[20, 20, 1] = 1.0
    spread = smooth_volume_in_plane(point, mask, 2.0, (1.0, 2.0))
    assert not spread[mask[..., 0], 0].any() and not spread[mask[..., 2], 2].any()
    assert np.all(spread[~mask] == 3.0)
    plane = spread[..., 1] * mask[..., 1]
    offsets = np.arange(41) - 20
    var_x = (plane.sum(1) * offsets**2).sum() / plane.sum()
    var_y = (plane.sum(0) * offsets**2).sum() / plane.sum()
    np.testing.assert_allclose([var_x, var_y], [4.0, 1.0], rtol=0.02)
    affine = np.diag([1.0, 2.0, 3.0, 1.0])
    assert in_plane_mm(affine) == (1.0, 2.0)
