"""SSIMH: spectrum swapping (Guan et al., MLMI 2022).

Keeps the source slice's phase and replaces its low-frequency amplitude with
the target's: the mean amplitude spectrum of target training slices whose brain
covers a similar fraction of the slice (so the swapped DC term, the slice's
total intensity, belongs to a slice of comparable size).
"""

from __future__ import annotations

import numpy as np

from bh_jax.reference import TargetReference


def low_frequency_mask(height: int, width: int, radius: float) -> np.ndarray:
    """bool [H, W] (unshifted FFT layout): |frequency| <= radius cycles/pixel."""
    fy = np.fft.fftfreq(height)[:, None]
    fx = np.fft.fftfreq(width)[None, :]
    return np.sqrt(fy**2 + fx**2) <= radius


def spectrum_swap(x: np.ndarray, mask: np.ndarray, reference: TargetReference,
                  radius: float = 0.04) -> np.ndarray:
    """Harmonizes [..., H, W] slices by low-frequency amplitude swapping.

    Args:
      x: float [..., H, W] in [0, 1].
      mask: bool of x's shape; the result is zero outside it.
      reference: target statistics for [H, W] slices.
      radius: the swapped disc's radius in cycles/pixel (0 < radius <= 0.71).
    Returns:
      float32 of x's shape in [0, 1].
    """
    x = np.asarray(x, np.float32)
    if reference.amplitudes.shape[-2:] != x.shape[-2:]:
        raise ValueError(f"reference spectra {reference.amplitudes.shape[-2:]} do not "
                         f"match slices {x.shape[-2:]}")
    spectrum = np.fft.fft2(x)
    low = low_frequency_mask(*x.shape[-2:], radius)
    amplitude = np.where(low, reference.amplitude_for(mask), np.abs(spectrum))
    swapped = np.fft.ifft2(amplitude * np.exp(1j * np.angle(spectrum))).real
    return (np.clip(swapped, 0.0, 1.0) * mask).astype(np.float32)
