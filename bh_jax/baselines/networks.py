"""Flax networks of the learned baselines: a U-net and a PatchGAN discriminator.

The U-net serves three baselines: supervised paired translation (U-net),
the CycleGAN generators, and the white-matter segmenter. GroupNorm instead
of BatchNorm keeps every network a pure function of (params, input).
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


class ConvBlock(nn.Module):
    """Two 3x3 convolutions, each followed by GroupNorm and ReLU."""

    features: int

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        for _ in range(2):
            x = nn.Conv(self.features, (3, 3))(x)
            x = nn.GroupNorm(num_groups=min(8, self.features))(x)
            x = nn.relu(x)
        return x


class UNet(nn.Module):
    """U-net [B, H, W, C] -> [B, H, W, out_channels]; H and W divisible by 2**depth.

    Attributes:
      features: channels of the first level (doubled at every level down).
      depth: number of 2x downsamplings.
      out_channels: output channels.
      residual: add the input to the output (translation starts at identity).
    """

    features: int = 16
    depth: int = 2
    out_channels: int = 1
    residual: bool = False

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        inputs, skips = x, []
        for level in range(self.depth):
            x = ConvBlock(self.features * 2**level)(x)
            skips.append(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = ConvBlock(self.features * 2**self.depth)(x)
        for level in reversed(range(self.depth)):
            x = nn.ConvTranspose(self.features * 2**level, (2, 2), strides=(2, 2))(x)
            x = ConvBlock(self.features * 2**level)(jnp.concatenate([x, skips[level]], -1))
        # Zero-initialised output: a residual network starts as the identity.
        out = nn.Conv(self.out_channels, (1, 1), kernel_init=nn.initializers.zeros)(x)
        return inputs + out if self.residual else out


class PatchDiscriminator(nn.Module):
    """PatchGAN: one real/fake score per overlapping patch, [B, H/2**n, W/2**n]."""

    features: int = 16
    layers: int = 2

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        for layer in range(self.layers):
            x = nn.Conv(self.features * 2**layer, (4, 4), strides=(2, 2))(x)
            x = nn.leaky_relu(x, 0.2)
        return nn.Conv(1, (3, 3))(x)[..., 0]
