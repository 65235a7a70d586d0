"""ActNorm (Kingma & Dhariwal 2018): per-channel affine, y = (x + loc) * exp(log_scale)."""

from __future__ import annotations

import distrax
import jax.numpy as jnp


def init_actnorm(x: jnp.ndarray, eps: float = 1e-6) -> dict:
    """Data-dependent initialisation: zero mean, unit variance per channel on `x`.

    Args:
      x: [..., H, W, C] first batch of activations.
    Returns:
      {"loc": [C], "log_scale": [C]}.
    """
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axis=axes)
    std = jnp.std(x, axis=axes)
    return {"loc": -mean, "log_scale": -jnp.log(std + eps)}


class ActNorm(distrax.Bijector):
    """Per-channel affine with learned loc and log-scale; log-det = H W sum(log_scale)."""

    def __init__(self, params: dict):
        super().__init__(event_ndims_in=3)
        self.loc = params["loc"]
        self.log_scale = params["log_scale"]

    def _log_det(self, x):
        h, w = x.shape[-3:-1]
        return jnp.broadcast_to(h * w * jnp.sum(self.log_scale), x.shape[:-3])

    def forward_and_log_det(self, x):
        return (x + self.loc) * jnp.exp(self.log_scale), self._log_det(x)

    def inverse_and_log_det(self, y):
        return y * jnp.exp(-self.log_scale) - self.loc, -self._log_det(y)
