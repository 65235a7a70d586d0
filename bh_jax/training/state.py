"""The train state and what acts on it: optimizer, state, train and evaluation steps.

The train state is one pytree {"params", "opt_state", "step"}: exactly what
orbax saves and restores (`bh_jax.training.checkpoint`).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bh_jax.batching import fixed_batches
from bh_jax.config import TrainConfig
from bh_jax.flows.model import FlowModel
from bh_jax.sharding import shard_batch
from bh_jax.training.input_pipeline import SliceSet
from bh_jax.training.qc import CURVE_FREQUENCIES, bend_intensities, scale_contrast


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Adam with linear warm-up and cosine decay to 0, after global-norm clipping."""
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=config.learning_rate,
        warmup_steps=min(config.warmup_steps, max(config.steps - 1, 0)),
        decay_steps=max(config.steps, 1), end_value=0.0)
    return optax.chain(optax.clip_by_global_norm(config.grad_clip), optax.adam(schedule))


def create_state(model: FlowModel, config: TrainConfig, key: jax.Array,
                 init_batch: jnp.ndarray) -> dict:
    """A fresh train state; ActNorm is initialised from `init_batch` [B, H, W, 1]."""
    return state_from_params(model.init(key, init_batch), config)


def state_from_params(params: dict, config: TrainConfig) -> dict:
    """A train state at step 0 that starts from `params` (e.g. a trained prior's)."""
    return {"params": params, "opt_state": make_optimizer(config).init(params),
            "step": jnp.zeros((), jnp.int32)}


def abstract_state(model: FlowModel, config: TrainConfig) -> Any:
    """Shapes and dtypes of a train state, without computing one."""
    batch = jnp.zeros((2, *model.image_shape), jnp.float32)
    return jax.eval_shape(lambda: create_state(model, config, jax.random.PRNGKey(0), batch))


def contrast_factors(key: jax.Array, n: int, config: TrainConfig) -> jnp.ndarray:
    """[n, 1, 1, 1] factors exp(+-u), u uniform in [log low, log high], sign at random."""
    size_key, sign_key = jax.random.split(key)
    size = jax.random.uniform(size_key, (n, 1, 1, 1), minval=jnp.log(config.contrast_low),
                              maxval=jnp.log(config.contrast_high))
    return jnp.exp(jnp.where(jax.random.bernoulli(sign_key, 0.5, size.shape), size, -size))


def curve_shapes(key: jax.Array, n: int, config: TrainConfig) -> tuple[jnp.ndarray, jnp.ndarray]:
    """[n, 1, 1] strengths uniform in [-curve_strength, curve_strength] and [n, 1, 1]
    frequencies 1 to `qc.CURVE_FREQUENCIES` of `qc.bend_intensities`' curves."""
    strength_key, frequency_key = jax.random.split(key)
    strength = jax.random.uniform(strength_key, (n, 1, 1), minval=-config.curve_strength,
                                  maxval=config.curve_strength)
    frequency = jax.random.randint(frequency_key, (n, 1, 1), 1, CURVE_FREQUENCIES + 1)
    return strength, frequency.astype(jnp.float32)


def make_loss(model: FlowModel, config: TrainConfig) -> Callable:
    """(params, batch [B, H, W, 1], masks [B, H, W, 1] or None, key) -> (loss, bits/dim).

    Maximum likelihood of the dequantised batch; with `config.contrast_weight`,
    plus hinges that ask each slice to beat a contrast-scaled copy of itself by
    `contrast_margin` bits/dim, by bits/dim and by z^2; with `config.curve_weight`,
    plus a hinge that asks it to beat a curve-bent copy by the change-of-variables
    score (`TrainConfig`)."""
    if config.curve_weight and not 0.0 <= config.curve_strength < 1.0:
        raise ValueError(f"train.curve_strength must be in [0, 1) (a bent curve must stay "
                         f"monotone), got {config.curve_strength}")
    z2_bits = 1.0 / (2.0 * math.log(2.0))  # z^2 per dim -> its share of bits/dim

    def contrast_hinge(params, batch, masks, key, bpd, z2):
        factor_key, negative_key = jax.random.split(key)
        scaled = scale_contrast(batch, masks, contrast_factors(factor_key, len(batch), config))
        log_prob_neg, z2_neg = model.log_prob_and_z2(
            params, model.dequantize(negative_key, scaled))
        return (jax.nn.relu(config.contrast_margin + bpd - model.to_bits_per_dim(log_prob_neg))
                + jax.nn.relu(config.contrast_margin + z2_bits * (z2 - z2_neg)))

    def curve_hinge(params, dequantized, masks, key, bpd):
        # The bent copy of the same dequantised image: the change of variables is
        # exact, so a flow that the curve fit would leave at the identity pays nothing.
        strength, frequency = curve_shapes(key, len(dequantized), config)
        bent, log_slope = bend_intensities(dequantized[..., 0], masks[..., 0],
                                           strength, frequency)
        score = (model.to_bits_per_dim(model.log_prob_and_z2(params, bent[..., None])[0])
                 - log_slope / model.latent_size)
        return jax.nn.relu(bpd - score)

    def loss_fn(params, batch, masks, key):
        dequantized = model.dequantize(key, batch)
        log_prob, z2 = model.log_prob_and_z2(params, dequantized)
        bpd = model.to_bits_per_dim(log_prob)
        loss = bpd
        contrast_key, curve_key = jax.random.fold_in(key, 1), jax.random.fold_in(key, 2)
        if config.contrast_weight:
            loss = loss + config.contrast_weight * contrast_hinge(
                params, batch, masks, contrast_key, bpd, z2)
        if config.curve_weight:
            loss = loss + config.curve_weight * curve_hinge(
                params, dequantized, masks, curve_key, bpd)
        return jnp.mean(loss), bpd

    return loss_fn


@functools.lru_cache(maxsize=8)
def make_train_step(model: FlowModel, config: TrainConfig) -> Callable:
    """jit-compiled (state, batch [B, H, W, 1] in [0, 1], masks [B, H, W, 1], key)
    -> (state, bits/dim): one optimizer step on `make_loss` (masks, the brain masks,
    only if `config.reads_masks`; None otherwise)."""
    optimizer = make_optimizer(config)
    loss_fn = make_loss(model, config)

    @jax.jit
    def train_step(state, batch, masks, key):
        key = jax.random.fold_in(key, state["step"])
        (_, bpd), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state["params"], batch, masks, key)
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        return ({"params": params, "opt_state": opt_state, "step": state["step"] + 1},
                jnp.mean(bpd))

    return train_step


@functools.lru_cache(maxsize=8)
def make_eval_step(model: FlowModel) -> Callable:
    """jit-compiled (params, batch, key) -> bits/dim [B] of the dequantised batch."""
    return jax.jit(lambda params, batch, key: model.bits_per_dim(
        params, model.dequantize(key, batch)))


def evaluate(eval_step: Callable, params: dict, data: SliceSet, batch_size: int,
             mesh, seed: int = 0) -> float:
    """Mean bits/dim over all of `data`, in fixed-size batches (the last one padded)."""
    total, count = 0.0, 0
    for index, valid in fixed_batches(len(data), batch_size):
        batch = shard_batch(mesh, data.slices[index][..., None])
        key = jax.random.PRNGKey(seed + int(index[0]))  # index[0]: the batch's start
        bpd = np.asarray(eval_step(params, batch, key))
        total += float(bpd[:valid].sum())
        count += valid
    return total / max(count, 1)
