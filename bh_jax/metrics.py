"""Image quality and overlap metrics in JAX (jit- and vmap-able).

All functions take single 2D images [H, W]; use `jax.vmap` for batches.
SSIM follows Wang et al. 2004 as scikit-image computes it with
`gaussian_weights=True, sigma=1.5, use_sample_covariance=False`: an 11-tap
Gaussian window (sigma 1.5, truncated at 3.5 sigma), K1 = 0.01, K2 = 0.03,
reflect padding; the whole-slice mean excludes the 5-pixel border as
scikit-image does, the masked mean averages the SSIM map inside the mask.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

_SIGMA = 1.5
_RADIUS = int(3.5 * _SIGMA + 0.5)  # 5: an 11-tap window, as scipy.ndimage
_K1, _K2 = 0.01, 0.03
_MIN_MSE = 1e-10  # caps PSNR of identical images at 100 dB instead of inf


def _gaussian_taps() -> np.ndarray:
    x = np.arange(-_RADIUS, _RADIUS + 1, dtype=np.float64)
    taps = np.exp(-0.5 * (x / _SIGMA) ** 2)
    return (taps / taps.sum()).astype(np.float32)


_TAPS = _gaussian_taps()


def _masked_mean(values: jnp.ndarray, mask: jnp.ndarray | None) -> jnp.ndarray:
    if mask is None:
        return jnp.mean(values)
    weights = mask.astype(values.dtype)
    return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def psnr(x: jnp.ndarray, y: jnp.ndarray, mask: jnp.ndarray | None = None,
         data_range: float = 1.0) -> jnp.ndarray:
    """Peak signal-to-noise ratio in dB of [H, W] images, optionally in a mask."""
    mse = _masked_mean((x - y) ** 2, mask)
    return 10.0 * jnp.log10(data_range**2 / jnp.maximum(mse, _MIN_MSE))


def _blur(image: jnp.ndarray) -> jnp.ndarray:
    """Separable Gaussian filter with scipy's 'reflect' (half-sample) padding."""
    padded = jnp.pad(image, _RADIUS, mode="symmetric")
    height, width = image.shape
    rows = sum(t * padded[i:i + height, :] for i, t in enumerate(_TAPS))
    return sum(t * rows[:, i:i + width] for i, t in enumerate(_TAPS))


def ssim_map(x: jnp.ndarray, y: jnp.ndarray, data_range: float = 1.0) -> jnp.ndarray:
    """Per-pixel SSIM [H, W] of two [H, W] images."""
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    mx, my = _blur(x), _blur(y)
    vx = _blur(x * x) - mx * mx
    vy = _blur(y * y) - my * my
    cxy = _blur(x * y) - mx * my
    return ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))


def ssim(x: jnp.ndarray, y: jnp.ndarray, mask: jnp.ndarray | None = None,
         data_range: float = 1.0) -> jnp.ndarray:
    """Mean SSIM: inside `mask` if given, else over the slice minus its border."""
    smap = ssim_map(x, y, data_range)
    if mask is None:
        return jnp.mean(smap[_RADIUS:-_RADIUS, _RADIUS:-_RADIUS])
    return _masked_mean(smap, mask)


def dice(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
    """Dice overlap of two boolean masks; 1.0 when both are empty."""
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    total = jnp.sum(a) + jnp.sum(b)
    return jnp.where(total > 0, 2.0 * jnp.sum(a * b) / jnp.maximum(total, 1.0), 1.0)
