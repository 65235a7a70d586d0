"""The prior's QC: bits/dim and z^2 slice by slice, the contrast check run after training,
the realism of its samples."""

import jax
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from bh_jax.data.manifest import prepare_entry, target_volumes
from bh_jax.training.checkpoint import load_flow
from bh_jax.training.input_pipeline import SliceSet
from bh_jax.training.qc import (
    CONTRASTS,
    contrast_check,
    nearest_ssim,
    preferred_contrast,
    prior_scores,
    sample_realism,
    scale_contrast,
)


def _val_slices(manifest, config, site, key="path"):
    entries = [e for e in manifest["images"] if e["split"] == "val" and e["site"] == site]
    return np.concatenate([prepare_entry(e, config.data, key=key).slices for e in entries])


def test_prior_scores_match_the_flow_slice_by_slice(trained, tiny_phantom):
    workdir, config, _ = trained
    flow = load_flow(workdir)
    slices = _val_slices(tiny_phantom[1], config, "exp")[:7]  # not a multiple of the batch
    scores = prior_scores(flow.model, flow.params, slices, batch_size=4)
    z, bpd = jax.jit(lambda p, x: (flow.model.encode(p, x), flow.model.bits_per_dim(p, x)))(
        flow.params, slices[..., None])
    np.testing.assert_allclose(scores["bpd"], bpd, rtol=1e-5)
    np.testing.assert_allclose(scores["z2"], np.mean(np.asarray(z) ** 2, axis=-1), rtol=1e-5)


def test_scale_contrast_scales_deviations_about_each_slice_in_mask_mean(small_volume):
    slices, masks = small_volume(1)
    slices[1] += 0.1 * masks[1]  # slices with different means
    np.testing.assert_allclose(scale_contrast(slices, masks, 1.0), slices, atol=1e-6)
    half = scale_contrast(slices, masks, 0.5)
    for s, h, m in zip(slices, half, masks):
        assert h[m].mean() == pytest.approx(s[m].mean(), abs=1e-6)
        assert h[m].std() == pytest.approx(0.5 * s[m].std(), rel=1e-4)
    assert not half[~masks].any()
    assert scale_contrast(slices, masks, 10.0).max() <= 1.0  # clipped
    assert not scale_contrast(slices, np.zeros_like(masks), 0.5).any()  # empty masks


def test_contrast_check_scores_the_scaled_slices(trained, tiny_phantom):
    workdir, config, metrics = trained
    _, manifest = tiny_phantom
    flow = load_flow(workdir)
    target = SliceSet.from_volumes(target_volumes(manifest, config.data, "val"))
    slices, masks = target.slices, target.masks
    rows = contrast_check(flow.model, flow.params, slices, masks, factors=(0.5, 1.0),
                          batch_size=4)
    assert [r["contrast"] for r in rows] == [0.5, 1.0]
    expected = prior_scores(flow.model, flow.params, slices)
    assert rows[1]["bpd"] == pytest.approx(float(expected["bpd"].mean()), rel=1e-5)
    assert rows[1]["slices"] == len(slices)
    assert rows[0]["bpd"] != pytest.approx(rows[1]["bpd"], rel=1e-4)
    # The change-of-variables score: unchanged at 1, log2(2) bits per brain voxel more at 0.5
    # (up to the clipping of scale_contrast, which leaves a halved contrast inside [0, 1]).
    assert rows[1]["bpd_cov"] == pytest.approx(rows[1]["bpd"], rel=1e-6)
    fraction = np.asarray(masks, bool).mean(axis=(-2, -1))
    assert rows[0]["bpd_cov"] == pytest.approx(rows[0]["bpd"] + fraction.mean(), rel=1e-5)
    for k in ("lowest_bpd", "lowest_z2", "lowest_bpd_cov"):
        assert sum(r[k] for r in rows) == pytest.approx(1.0)
    # Training ran the same check on its validation slices when it finished.
    assert [r["contrast"] for r in metrics["contrast_check"]] == list(CONTRASTS)
    best = min(metrics["contrast_check"], key=lambda r: r["bpd"])["contrast"]
    assert f"at {best:g}x their own contrast by bits/dim" in preferred_contrast(
        metrics["contrast_check"])


def test_nearest_ssim_is_the_best_of_scikit_image_ssims(tiny_slices):
    train = tiny_slices[0].slices[:9]
    images = np.concatenate([train[:2], np.clip(train[2:5] + 0.2, 0, 1)])  # 5: not 4k
    best = nearest_ssim(images, train, batch_size=4)
    # Independent: scikit-image's Gaussian SSIM over the slice minus its border (metrics.ssim).
    border = 5
    expected = [max(structural_similarity(x, r, data_range=1.0, gaussian_weights=True,
                                          sigma=1.5, use_sample_covariance=False,
                                          full=True)[1][border:-border, border:-border].mean()
                    for r in train) for x in images]
    np.testing.assert_allclose(best, expected, atol=2e-4)
    np.testing.assert_allclose(best[:2], 1.0, atol=1e-5)  # an image's nearest is itself
    with pytest.raises(ValueError, match="no images"):
        nearest_ssim(images[:0], train)


def test_sample_realism_compares_samples_with_real_slices(trained, tiny_slices):
    workdir, _, _ = trained
    flow = load_flow(workdir)
    train, val = tiny_slices[0].slices, tiny_slices[1].slices
    result = sample_realism(flow.model, flow.params, train, val, samples=6)
    assert result["count"] == 6 and result["temperature"] == 0.7
    assert 0 < result["samples"] < result["real"] <= 1  # a 200-step prior draws blobs
    assert result["ratio"] == pytest.approx(result["samples"] / result["real"])
    again = sample_realism(flow.model, flow.params, train, val, samples=6)
    assert again == result  # a fixed seed reproduces
    # Real slices that are training slices are their own nearest: SSIM 1.
    assert sample_realism(flow.model, flow.params, train, train[:6],
                          samples=6)["real"] == pytest.approx(1.0, abs=1e-5)
