"""Squeeze: space-to-depth 2x2, [..., H, W, C] -> [..., H/2, W/2, 4C]."""

from __future__ import annotations

import distrax
import jax.numpy as jnp


def squeeze(x: jnp.ndarray) -> jnp.ndarray:
    *batch, h, w, c = x.shape
    x = x.reshape(*batch, h // 2, 2, w // 2, 2, c)
    x = jnp.moveaxis(x, -4, -3)  # [..., h/2, w/2, 2, 2, c]
    return x.reshape(*batch, h // 2, w // 2, 4 * c)


def unsqueeze(y: jnp.ndarray) -> jnp.ndarray:
    *batch, h, w, c4 = y.shape
    y = y.reshape(*batch, h, w, 2, 2, c4 // 4)
    y = jnp.moveaxis(y, -3, -4)  # [..., h, 2, w, 2, c]
    return y.reshape(*batch, 2 * h, 2 * w, c4 // 4)


class Squeeze(distrax.Bijector):
    """A permutation of pixels into channels; its log-det is 0."""

    def __init__(self):
        super().__init__(event_ndims_in=3, is_constant_jacobian=True)

    def forward_and_log_det(self, x):
        return squeeze(x), jnp.zeros(x.shape[:-3], x.dtype)

    def inverse_and_log_det(self, y):
        return unsqueeze(y), jnp.zeros(y.shape[:-3], y.dtype)
