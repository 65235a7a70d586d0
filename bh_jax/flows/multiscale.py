"""Multi-scale factoring (RealNVP): half the channels leave for the base distribution."""

from __future__ import annotations

import distrax
import jax.numpy as jnp


class FactorOut(distrax.Bijector):
    """Identity on the first half of the channels, `inner` on the second half.

    The first half are latents that go straight to the standard-normal base;
    `inner` (the next, coarser level) processes the rest. Keeping both halves in
    one [..., H, W, C] array makes the whole flow one image-shaped bijection,
    so the latent of an image is simply an array of the image's size.
    """

    def __init__(self, inner: distrax.Bijector):
        super().__init__(event_ndims_in=3)
        self.inner = inner

    def forward_and_log_det(self, x):
        keep, rest = jnp.split(x, 2, axis=-1)
        rest, log_det = self.inner.forward_and_log_det(rest)
        return jnp.concatenate([keep, rest], axis=-1), log_det

    def inverse_and_log_det(self, y):
        keep, rest = jnp.split(y, 2, axis=-1)
        rest, log_det = self.inner.inverse_and_log_det(rest)
        return jnp.concatenate([keep, rest], axis=-1), log_det
