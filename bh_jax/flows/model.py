"""The multi-scale flow f: images x in [0, 1] <-> latents z ~ N(0, I).

Per level: Squeeze -> `steps` x (ActNorm -> 1x1 conv -> coupling) -> 1x1 conv;
after every level but the last, half the channels are factored out
(`FactorOut`). The whole flow maps an [H, W, 1] image, shifted to
[-0.5, 0.5] ("glow" preprocessing, log-det 0), to an [H, W, 1]-sized latent;
`encode` / `decode` flatten it to a vector of H*W values, so |z|^2 and
f^-1(z) are plain array operations for the harmonizer.

Every method is a pure function of (params, inputs): jit-, grad- and
vmap-able. The model object only holds static configuration; `init`,
`log_prob`, `encode`, `decode` and `sample` are jitted (with the model static),
since run eagerly their many small operations each compile on their own.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import distrax
import jax
import jax.numpy as jnp
from jax import lax

from bh_jax.config import FlowConfig
from bh_jax.flows.actnorm import ActNorm, init_actnorm
from bh_jax.flows.conv1x1 import Conv1x1, init_conv1x1
from bh_jax.flows.coupling import coupling, init_coupling
from bh_jax.flows.multiscale import FactorOut
from bh_jax.flows.squeeze import Squeeze, squeeze

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)
# On the CPU a batch goes through the flow in chunks of images whose finest-level
# activations (H/2 x W/2 x hidden float32 per image) fit this many bytes: a larger batch's
# layer outputs leave the caches between layers. The `reference` round trip at batch 8
# ran at 0.8 slices/s in one piece and 1.38 in chunks of 4 (2 MiB L2 per core, 32 MiB L3;
# docs/performance.md). The `demo` model (128 KiB an image) is chunked only above 80.
CPU_CHUNK_BYTES = 10 * 2**20


def count_params(params) -> int:
    """Trainable parameters (the fixed 1x1-conv permutations excluded)."""
    leaves = jax.tree_util.tree_leaves_with_path(params)
    return sum(int(leaf.size) for path, leaf in leaves
               if getattr(path[-1], "key", None) != "perm")


@dataclass(frozen=True)
class FlowModel:
    """A flow for [height, width, 1] images with the given architecture."""

    config: FlowConfig
    height: int
    width: int

    def __post_init__(self):
        factor = 2 ** self.config.levels
        if self.height % factor or self.width % factor:
            raise ValueError(
                f"image size {self.height}x{self.width} must be divisible by "
                f"2^levels = {factor} for a {self.config.levels}-level flow")
        if min(self.height, self.width) < factor:
            raise ValueError(f"images of {self.height}x{self.width} are smaller than the "
                             f"model's minimum size {factor}x{factor}")

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, 1)

    @property
    def latent_size(self) -> int:
        return self.height * self.width

    # ------------------------------------------------------------------ build

    @functools.partial(jax.jit, static_argnums=0)
    def init(self, key: jax.Array, x: jnp.ndarray) -> dict:
        """Parameters, with ActNorm initialised from the batch x [B, H, W, 1] in [0, 1]."""
        cfg = self.config
        y = jnp.asarray(x, jnp.float32) - 0.5
        levels = []
        for level in range(cfg.levels):
            y = squeeze(y)
            channels = y.shape[-1]
            steps = []
            for _ in range(cfg.steps):
                key, conv_key, coupling_key = jax.random.split(key, 3)
                step = {"actnorm": init_actnorm(y)}
                y = ActNorm(step["actnorm"]).forward(y)
                step["conv"] = init_conv1x1(conv_key, channels, cfg.conv_init)
                y = Conv1x1(step["conv"]).forward(y)
                step["coupling"] = init_coupling(coupling_key, cfg, y)
                y = coupling(step["coupling"], cfg, channels).forward(y)
                steps.append(step)
            key, conv_key = jax.random.split(key)
            final_conv = init_conv1x1(conv_key, channels, cfg.conv_init)
            y = Conv1x1(final_conv).forward(y)
            levels.append({"steps": steps, "final_conv": final_conv})
            y = y[..., channels // 2:]  # what FactorOut passes on
        return {"levels": levels}

    def bijector(self, params: dict) -> distrax.Bijector:
        """f as a distrax bijector: [..., H, W, 1] in [-0.5, 0.5] -> latent image."""
        cfg = self.config
        inner = None
        for level in reversed(range(cfg.levels)):
            level_params = params["levels"][level]
            channels = 4 * 2**level  # 1 channel in, x4 by squeeze, /2 by each factoring
            layers: list[distrax.Bijector] = [Squeeze()]  # applied first
            for step in level_params["steps"]:
                layers += [ActNorm(step["actnorm"]), Conv1x1(step["conv"]),
                           coupling(step["coupling"], cfg, channels)]
            layers.append(Conv1x1(level_params["final_conv"]))
            if inner is not None:
                layers.append(FactorOut(inner))
            layers.append(distrax.Inverse(Squeeze()))
            inner = distrax.Chain(layers[::-1])  # Chain applies its last bijector first
        return inner

    # -------------------------------------------------------------- densities

    @functools.partial(jax.jit, static_argnums=0)
    def log_prob(self, params: dict, x: jnp.ndarray) -> jnp.ndarray:
        """Log density [B] of continuous images x [B, H, W, 1] (nats)."""
        return self.log_prob_and_z2(params, x)[0]

    @functools.partial(jax.jit, static_argnums=0)
    def log_prob_and_z2(self, params: dict, x: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
        """Log density [B] (nats) and mean z^2 [B] of images x [B, H, W, 1], one pass:
        the two prior terms the solvers use (exact log-density; the published a |z|^2)."""
        def one_chunk(images):
            z, log_det = self.bijector(params).forward_and_log_det(images - 0.5)
            z2 = jnp.sum(z**2, axis=(-3, -2, -1))
            base = -0.5 * z2 - self.latent_size * _HALF_LOG_2PI
            return jnp.stack([base + log_det, z2 / self.latent_size], axis=-1)
        parts = self._in_chunks(one_chunk, x, 3)
        return parts[..., 0], parts[..., 1]

    def dequantize(self, key: jax.Array, x: jnp.ndarray) -> jnp.ndarray:
        """Uniform dequantisation of x in [0, 1] at `num_bits` (result in [0, 1])."""
        levels = 2.0**self.config.num_bits
        discrete = jnp.clip(jnp.floor(x * levels), 0, levels - 1)
        return (discrete + jax.random.uniform(key, x.shape)) / levels

    def bits_per_dim(self, params: dict, x: jnp.ndarray) -> jnp.ndarray:
        """Bits/dim [B] of dequantised x [B, H, W, 1] as a num_bits-deep discrete image.

        -log2 p(x_discrete) / D = -log p(x) / (D ln 2) + num_bits: the bin width
        2^-num_bits of the quantisation is the preprocessing's log-det.
        """
        return self.to_bits_per_dim(self.log_prob(params, x))

    def to_bits_per_dim(self, log_prob: jnp.ndarray) -> jnp.ndarray:
        """Bits/dim of a `num_bits`-deep discrete image from its continuous log density."""
        return -log_prob / (self.latent_size * math.log(2.0)) + self.config.num_bits

    # ---------------------------------------------------------- latent access

    @functools.partial(jax.jit, static_argnums=0)
    def encode(self, params: dict, x: jnp.ndarray) -> jnp.ndarray:
        """z = f(x): images [..., H, W, 1] in [0, 1] -> latents [..., H*W]."""
        z = self._in_chunks(lambda images: self.bijector(params).forward(images - 0.5), x, 3)
        return z.reshape(*z.shape[:-3], self.latent_size)

    @functools.partial(jax.jit, static_argnums=0)
    def decode(self, params: dict, z: jnp.ndarray) -> jnp.ndarray:
        """x = f^-1(z): latents [..., H*W] -> images [..., H, W, 1]."""
        z = z.reshape(*z.shape[:-1], *self.image_shape)
        return self._in_chunks(lambda latents: self.bijector(params).inverse(latents), z, 3) + 0.5

    def chunk_size(self, batch: int) -> int:
        """Images per step of a `batch` on the CPU: the largest divisor of the batch whose
        finest-level activations fit `CPU_CHUNK_BYTES`."""
        per_image = 4 * (self.height // 2) * (self.width // 2) * self.config.hidden
        limit = max(1, CPU_CHUNK_BYTES // per_image)
        return max(d for d in range(1, min(batch, limit) + 1) if batch % d == 0)

    def _in_chunks(self, fn, x: jnp.ndarray, event_ndim: int) -> jnp.ndarray:
        """fn(x) for x [..., *event], on the CPU one `chunk_size` of images at a time
        (`lax.map`; the images are independent); elsewhere in one piece."""
        lead, event = x.shape[:x.ndim - event_ndim], x.shape[x.ndim - event_ndim:]
        batch = math.prod(lead)
        chunk = self.chunk_size(batch)
        if chunk == batch:
            return fn(x)
        chunks = x.reshape(batch // chunk, chunk, *event)

        def whole(images):
            out = fn(images.reshape(batch, *event))
            return out.reshape(batch // chunk, chunk, *out.shape[1:])

        out = lax.platform_dependent(chunks, cpu=lambda c: lax.map(fn, c), default=whole)
        return out.reshape(*lead, *out.shape[2:])

    @functools.partial(jax.jit, static_argnums=(0, 3))
    def sample(self, params: dict, key: jax.Array, n: int,
               temperature: float = 1.0) -> jnp.ndarray:
        """n images [n, H, W, 1] decoded from z ~ N(0, temperature^2 I)."""
        z = temperature * jax.random.normal(key, (n, self.latent_size))
        return self.decode(params, z)
