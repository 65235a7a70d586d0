"""Coupling layers: a Flax conditioner network inside a `distrax.SplitCoupling`.

The first half of the channels is left unchanged and conditions an
element-wise transform of the second half: a rational-quadratic spline
(Durkan et al. 2019; identity outside [-tail_bound, tail_bound], i.e. linear
tails) or a Glow affine transform (scale = sigmoid(h + 2)).
"""

from __future__ import annotations

from functools import partial

import distrax
import flax.linen as nn
import jax
import jax.numpy as jnp

from bh_jax.config import FlowConfig
from bh_jax.flows.conv import conv_general_dilated


class Conditioner(nn.Module):
    """Residual conv net: 1x1 in, `blocks` x (LN-ReLU-3x3-LN-ReLU-3x3), 1x1 out.

    The published network uses BatchNorm; a per-pixel LayerNorm keeps the
    conditioner a pure function of its input (no batch statistics), so encode
    and decode are exact inverses for any batch. The output layer is
    zero-initialised: every coupling starts as the identity.
    """

    hidden: int
    blocks: int
    features: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        # Gradients through the flow run inside the solvers' loops: see flows.conv.
        conv = partial(nn.Conv, conv_general_dilated=conv_general_dilated)
        h = conv(self.hidden, (1, 1))(x)
        for _ in range(self.blocks):
            r = conv(self.hidden, (3, 3))(nn.relu(nn.LayerNorm()(h)))
            r = conv(self.hidden, (3, 3))(nn.relu(nn.LayerNorm()(r)))
            h = h + r
        return conv(self.features, (1, 1), kernel_init=nn.initializers.zeros,
                    bias_init=nn.initializers.zeros)(h)


def _params_per_dim(config: FlowConfig) -> int:
    if config.coupling == "spline":
        return 3 * config.bins - 1  # widths, heights, interior knot slopes
    if config.coupling == "affine":
        return 2
    raise ValueError(f"coupling must be 'spline' or 'affine', got {config.coupling!r}")


def _conditioner_net(config: FlowConfig, channels: int) -> Conditioner:
    return Conditioner(config.hidden, config.blocks,
                       (channels - channels // 2) * _params_per_dim(config))


def init_coupling(key: jax.Array, config: FlowConfig, x: jnp.ndarray) -> dict:
    """Conditioner parameters for inputs like `x` [..., H, W, C]."""
    channels = x.shape[-1]
    return _conditioner_net(config, channels).init(key, x[..., : channels // 2])["params"]


def _inner_bijector(config: FlowConfig, raw: jnp.ndarray) -> distrax.Bijector:
    if config.coupling == "affine":
        return distrax.ScalarAffine(shift=raw[..., 0], scale=jax.nn.sigmoid(raw[..., 1] + 2.0))
    k = config.bins
    zero = jnp.zeros(raw.shape[:-1] + (1,), raw.dtype)
    # distrax wants 3K + 1 values; the two boundary slopes are fixed to 1.
    params = jnp.concatenate([raw[..., : 2 * k], zero, raw[..., 2 * k:], zero], axis=-1)
    return distrax.RationalQuadraticSpline(
        params, range_min=-config.tail_bound, range_max=config.tail_bound,
        boundary_slopes="identity", min_bin_size=config.min_bin_size,
        min_knot_slope=config.min_derivative)


def coupling(params: dict, config: FlowConfig, channels: int) -> distrax.SplitCoupling:
    """The coupling bijector on [..., H, W, channels] for given conditioner params."""
    net = _conditioner_net(config, channels)
    split = channels // 2
    per_dim = _params_per_dim(config)

    def conditioner(x1: jnp.ndarray) -> jnp.ndarray:
        out = net.apply({"params": params}, x1)
        return out.reshape(*out.shape[:-1], channels - split, per_dim)

    return distrax.SplitCoupling(split_index=split, event_ndims=3, conditioner=conditioner,
                                 bijector=lambda raw: _inner_bijector(config, raw))
