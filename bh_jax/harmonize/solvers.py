"""Solvers for one slice: find x_h = f^-1(z) minimising the objective.

Both are pure functions of (params, weights, source, brain, x_init), vmapped
over slices by `bh_jax.harmonize.engine`, with their whole loop in one
`lax.scan`. The weights are data, not part of the compiled program.

* `latent` (default): an optax optimiser on z, gradients through f^-1,
  z initialised as f(x_init); the iterate with the lowest objective is kept.
* `alternating`: the published scheme: an image-space gradient step on the
  distance D, then z = (1 - alpha) f(x), x = clip(f^-1(z), 0, 1); if that
  produces NaN/Inf the image step is kept.
* `image`: an optax optimiser on the image x itself, from x_init, with the
  flow's exact negative log-density -log p(x) / D (log-det included) as the
  prior term instead of |z|^2 / D; the iterate with the lowest objective is kept.
  On the built-in data's validation subjects it is the only solver above HM on
  the scanner sites (README, "Choosing the solver settings").
* `curve`: no per-slice optimisation: x_init itself, by default the source
  through its volume's maximum-likelihood intensity curve
  (`bh_jax.harmonize.calibration`); diagnostics as the others (prior |z|^2).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from bh_jax.flows.model import FlowModel
from bh_jax.harmonize.objective import (
    latent_prior,
    non_edge_mask,
    objective_terms,
    weighted_loss,
)
from bh_jax.harmonize.settings import SolverConfig, Weights


def _image(model: FlowModel, params: dict, z: jnp.ndarray) -> jnp.ndarray:
    return model.decode(params, z)[..., 0]


def _latent(model: FlowModel, params: dict, x: jnp.ndarray) -> jnp.ndarray:
    return model.encode(params, x[..., None])


def _image_prior(model: FlowModel, params: dict, x: jnp.ndarray) -> jnp.ndarray:
    """-log p(x) / D of one image [H, W], in nats per pixel."""
    return -model.log_prob(params, x[None, ..., None])[0] / model.latent_size


def _diagnostics(model, params, cfg, weights, source, brain, non_edge, x_start, prior_start,
                 x_h, prior_end):
    """Objective terms at start and end, and the prior's bits/dim of source and result."""
    start = objective_terms(x_start, prior_start, source, brain, non_edge, cfg.gradient)
    end = objective_terms(x_h, prior_end, source, brain, non_edge, cfg.gradient)
    bpd = model.bits_per_dim(params, jnp.stack([source, x_h])[..., None])
    out = {f"{k}_start": v for k, v in start.items()}
    out.update({f"{k}_end": v for k, v in end.items()})
    out.update(loss_start=weighted_loss(start, weights), loss_end=weighted_loss(end, weights),
               ncc_end=1.0 - end["one_minus_ncc"], bpd_source=bpd[0], bpd_result=bpd[1],
               non_edge_fraction=jnp.sum(non_edge) / jnp.maximum(jnp.sum(brain), 1))
    return out


def _minimise(loss, start: jnp.ndarray, cfg: SolverConfig) -> jnp.ndarray:
    """`cfg.steps` Adam steps on `loss` from `start` in one lax.scan; the best iterate."""
    schedule = (optax.cosine_decay_schedule(cfg.learning_rate, cfg.steps)
                if cfg.schedule == "cosine" else cfg.learning_rate)
    optimizer = optax.adam(schedule)

    def step(carry, _):
        v, opt_state, best_v, best_loss = carry
        value, grads = jax.value_and_grad(loss)(v)
        # Keep the best iterate: Adam's sign-like first steps can overshoot a
        # start that is already good (e.g. the histogram-matched source).
        better = value < best_loss
        best_v = jnp.where(better, v, best_v)
        best_loss = jnp.where(better, value, best_loss)
        updates, opt_state = optimizer.update(grads, opt_state, v)
        return (optax.apply_updates(v, updates), opt_state, best_v, best_loss), value

    carry = (start, optimizer.init(start), start, jnp.asarray(jnp.inf, start.dtype))
    (last, _, best, best_loss), _ = jax.lax.scan(step, carry, None, length=cfg.steps)
    return jnp.where(loss(last) < best_loss, last, best)


def solve_latent(model: FlowModel, cfg: SolverConfig, params: dict, weights: Weights,
                 source: jnp.ndarray, brain: jnp.ndarray, x_init: jnp.ndarray
                 ) -> tuple[jnp.ndarray, dict]:
    """Harmonizes one slice [H, W] by optimising its latent; returns (x_h, diagnostics)."""
    non_edge = non_edge_mask(source, brain, cfg.percentile, cfg.gradient)

    def loss(z):
        x = _image(model, params, z)
        return weighted_loss(objective_terms(x, latent_prior(z), source, brain, non_edge,
                                             cfg.gradient), weights)

    z0 = _latent(model, params, x_init)
    z = _minimise(loss, z0, cfg)
    x_h = _image(model, params, z)
    ok = jnp.all(jnp.isfinite(x_h))
    x_h = jnp.where(ok, x_h, x_init)
    z = jnp.where(ok, z, z0)
    x_h = jnp.clip(x_h, 0.0, 1.0) * brain
    x_start = jnp.clip(_image(model, params, z0), 0.0, 1.0) * brain
    diagnostics = _diagnostics(model, params, cfg, weights, source, brain, non_edge, x_start,
                               latent_prior(z0), x_h, latent_prior(z))
    diagnostics["failed"] = ~ok
    return x_h, diagnostics


def solve_image(model: FlowModel, cfg: SolverConfig, params: dict, weights: Weights,
                source: jnp.ndarray, brain: jnp.ndarray, x_init: jnp.ndarray
                ) -> tuple[jnp.ndarray, dict]:
    """Harmonizes one slice [H, W] by optimising the image under the exact
    log-density; returns (x_h, diagnostics)."""
    non_edge = non_edge_mask(source, brain, cfg.percentile, cfg.gradient)

    def loss(x):
        x = x * brain  # the background stays zero, as in every training image
        return weighted_loss(objective_terms(x, _image_prior(model, params, x), source, brain,
                                             non_edge, cfg.gradient), weights)

    x_h = _minimise(loss, x_init, cfg)
    ok = jnp.all(jnp.isfinite(x_h))
    x_h = jnp.clip(jnp.where(ok, x_h, x_init), 0.0, 1.0) * brain
    x_start = jnp.clip(x_init, 0.0, 1.0) * brain
    diagnostics = _diagnostics(model, params, cfg, weights, source, brain, non_edge, x_start,
                               _image_prior(model, params, x_start), x_h,
                               _image_prior(model, params, x_h))
    diagnostics["failed"] = ~ok
    return x_h, diagnostics


def solve_alternating(model: FlowModel, cfg: SolverConfig, params: dict, weights: Weights,
                      source: jnp.ndarray, brain: jnp.ndarray, x_init: jnp.ndarray
                      ) -> tuple[jnp.ndarray, dict]:
    """The published alternating scheme for one slice [H, W]; returns (x_h, diagnostics)."""
    non_edge = non_edge_mask(source, brain, cfg.percentile, cfg.gradient)
    no_prior = Weights(weights.b1, weights.b2, 0.0)

    def distance(x):
        terms = objective_terms(x, 0.0, source, brain, non_edge, cfg.gradient)
        return weighted_loss(terms, no_prior)

    def step(x, _):
        x_step = x - cfg.learning_rate * jax.grad(distance)(x)
        z = (1.0 - weights.alpha) * _latent(model, params, x_step)
        x_new = jnp.clip(_image(model, params, z), 0.0, 1.0)
        ok = jnp.all(jnp.isfinite(x_new))
        return jnp.where(ok, x_new, x_step), ~ok

    x, failures = jax.lax.scan(step, x_init, None, length=cfg.steps)
    x_h = jnp.clip(x, 0.0, 1.0) * brain
    z0, z = _latent(model, params, x_init), _latent(model, params, x_h)
    x_start = jnp.clip(x_init, 0.0, 1.0) * brain
    diagnostics = _diagnostics(model, params, cfg, weights, source, brain, non_edge, x_start,
                               latent_prior(z0), x_h, latent_prior(z))
    diagnostics["failed"] = jnp.any(failures)
    return x_h, diagnostics


def solve_curve(model: FlowModel, cfg: SolverConfig, params: dict, weights: Weights,
                source: jnp.ndarray, brain: jnp.ndarray, x_init: jnp.ndarray
                ) -> tuple[jnp.ndarray, dict]:
    """x_init as the result for one slice [H, W] (the volume's intensity curve did
    the work); returns (x_h, diagnostics) with start = end."""
    non_edge = non_edge_mask(source, brain, cfg.percentile, cfg.gradient)
    x_h = jnp.clip(x_init, 0.0, 1.0) * brain
    prior = latent_prior(_latent(model, params, x_h))
    ok = jnp.all(jnp.isfinite(prior))
    diagnostics = _diagnostics(model, params, cfg, weights, source, brain, non_edge, x_h,
                               prior, x_h, prior)
    diagnostics["failed"] = ~ok
    return x_h, diagnostics


def solver_fn(cfg: SolverConfig):
    return {"latent": solve_latent, "alternating": solve_alternating,
            "image": solve_image, "curve": solve_curve}[cfg.solver]
