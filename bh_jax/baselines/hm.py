"""HM: histogram matching inside the brain mask to the target reference."""

from __future__ import annotations

import numpy as np

from bh_jax.reference import N_QUANTILES, TargetReference


def histogram_match(x: np.ndarray, mask: np.ndarray, reference: TargetReference) -> np.ndarray:
    """Maps in-mask intensities to the target's by quantile mapping.

    Every in-mask value is replaced by the target quantile at its own quantile
    level among the in-mask values of `x`; the background is untouched. Pass a
    whole volume's slices to match the volume's histogram as one.

    Args:
      x: float [..., H, W] in [0, 1].
      mask: bool of x's shape.
      reference: target statistics.
    Returns:
      float32 of x's shape.
    """
    x = np.asarray(x, np.float32)
    mask = np.asarray(mask, bool)
    out = x.copy()
    values = x[mask]
    if values.size == 0:
        return out
    levels = np.linspace(0.0, 1.0, N_QUANTILES)
    source_quantiles = np.quantile(values, levels)
    # Ties in the source (e.g. a constant region) make its quantiles flat:
    # interpolate the rank through strictly increasing knots.
    knots, first = np.unique(source_quantiles, return_index=True)
    if knots.size == 1:
        out[mask] = reference.quantiles[N_QUANTILES // 2]
        return out
    rank = np.interp(values, knots, levels[first])
    out[mask] = np.interp(rank, levels, reference.quantiles)
    return out
