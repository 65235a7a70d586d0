"""The paper's simulated source domains (REFERENCE.md).

Each maps a target image x in [0, 1] to a new contrast and min-max normalises
the result to [0, 1] again over the whole array, zero background included, as
the published code does per slice: exp: e^x; log: log(1 + 3x); gammaG: x^G.
The caller picks the unit (one slice as in the paper, or one volume). All
three are increasing, so a zero background stays zero.
"""

from __future__ import annotations

import re

import numpy as np

PAPER_SHIFTS = ("exp", "log", "gamma0.7")


def _contrast(x: np.ndarray, name: str) -> np.ndarray:
    if name == "exp":
        return np.exp(x)
    if name == "log":
        return np.log1p(3.0 * x)
    match = re.fullmatch(r"gamma(\d+(?:\.\d+)?)", name)
    if match:
        return np.power(np.clip(x, 0.0, None), float(match.group(1)))
    raise ValueError(f"unknown shift {name!r}: use exp, log or gammaG (e.g. gamma0.7)")


def apply_shift(x: np.ndarray, name: str) -> np.ndarray:
    """Applies the named shift ('exp', 'log', 'gamma0.7', ...) to x in [0, 1].

    Args:
      x: float array in [0, 1], any shape.
      name: 'exp', 'log' or 'gamma' followed by the exponent.
    Returns:
      float32 array of x's shape in [0, 1]; zeros if x is constant.
    """
    y = _contrast(np.asarray(x, np.float64), name)
    low, high = y.min(), y.max()
    if high - low <= 1e-12:
        return np.zeros(np.shape(x), np.float32)
    return ((y - low) / (high - low)).astype(np.float32)
