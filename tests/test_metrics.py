import jax
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from bh_jax import metrics


@pytest.fixture
def pair():
    rng = np.random.default_rng(0)
    x = rng.random((40, 36)).astype(np.float32)
    y = np.clip(x + 0.1 * rng.standard_normal(x.shape), 0, 1).astype(np.float32)
    mask = np.zeros_like(x, bool)
    mask[5:30, 8:33] = True
    return x, y, mask


def test_psnr_matches_skimage(pair):
    x, y, mask = pair
    expected = peak_signal_noise_ratio(x, y, data_range=1.0)
    assert abs(float(metrics.psnr(x, y)) - expected) < 1e-4
    expected_masked = 10 * np.log10(1.0 / np.mean((x[mask] - y[mask]) ** 2, dtype=np.float64))
    assert abs(float(metrics.psnr(x, y, mask)) - expected_masked) < 1e-4


def _skimage_ssim(x, y, full=False):
    return structural_similarity(x, y, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, full=full)


def test_ssim_matches_skimage(pair):
    x, y, mask = pair
    assert abs(float(metrics.ssim(x, y)) - _skimage_ssim(x, y)) < 1e-4
    _, smap = _skimage_ssim(x, y, full=True)
    np.testing.assert_allclose(metrics.ssim_map(x, y), smap, atol=1e-4)
    assert abs(float(metrics.ssim(x, y, mask)) - smap[mask].mean()) < 1e-4


def test_metrics_jit_and_vmap(pair):
    x, y, mask = pair
    batch = np.stack([x, y]), np.stack([y, y]), np.stack([mask, mask])
    psnr = jax.jit(jax.vmap(metrics.psnr))(*batch)
    ssim = jax.jit(jax.vmap(metrics.ssim))(*batch)
    assert abs(float(psnr[0]) - float(metrics.psnr(x, y, mask))) < 1e-4
    assert float(psnr[1]) == pytest.approx(100.0)  # identical: capped, not inf
    assert float(ssim[1]) == pytest.approx(1.0, abs=1e-6)


def test_dice():
    a = np.zeros((4, 4), bool)
    b = np.zeros((4, 4), bool)
    assert float(metrics.dice(a, b)) == 1.0
    a[:2] = True
    b[1:3] = True
    assert float(metrics.dice(a, b)) == pytest.approx(2 * 4 / 16)
