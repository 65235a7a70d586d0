"""Intensity calibration: the source volume's intensity curve by maximum likelihood.

BlindHarmony's NCC term cannot tell an image from any a * x + b of it, so the
prior alone must choose the intensities. Its prior terms (|z|^2, -log p(x))
are mode-seeking: a flatter image is a likelier one, and on the target's own
validation images both keep falling as the contrast is lowered below the
acquired one (`bh-bench prior`). The principled score for "which
intensity map T turns this scanner's image into a target image" is the density
of the *source* under the flow pushed through T^-1 (change of variables):

    log p_source(x_s) = log p(T(x_s)) + sum_i log T'(x_s,i)     (brain voxels i)

The log-det term rewards contrast exactly as much as the density of a
stretched image falls, and on the target's validation images this score peaks
at their own contrast (bench prior, column `bpd_cov`).

`Calibrator` fits a monotone piecewise-linear T (knots at the source's in-brain
quantiles, values increasing by construction, starting at the histogram-matching
curve) by L-BFGS on that log-likelihood over a fixed pool of slices: one volume's,
or the pooled slices of a site's volumes (`shared_curve`). The whole fit is one
`lax.scan` in one compiled program for a whole run; the curve has only
segments + 1 parameters, so a quasi-Newton method converges in few steps
(docs/methods.md). It also fits, with the curve held, a smooth multiplicative field
per volume (`field`: a quadratic log-field over the brain, its log-det included,
with an L2 penalty on its coefficients), the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import optax

from bh_jax.flows.model import FlowModel
from bh_jax.harmonize.settings import CalibrationConfig
from bh_jax.reference import TargetReference
from bh_jax.sharding import check_batch_size, data_mesh, replicate, shard_batch


@dataclass(frozen=True)
class IntensityCurve:
    """A monotone piecewise-linear map: `knots` (source intensities) -> `values`."""

    knots: np.ndarray  # [segments + 1], increasing
    values: np.ndarray  # [segments + 1], increasing
    fitted: bool = True  # False: the fit gave NaN/Inf and this is its starting curve

    def __call__(self, slices: np.ndarray, masks: np.ndarray,
                 log_field: np.ndarray | None = None) -> np.ndarray:
        """The mapped in-mask intensities (after dividing by exp(log_field), if
        given, of the slices' shape), clipped to [0, 1]; zero background."""
        if log_field is not None:
            slices = np.asarray(slices) * np.exp(-np.asarray(log_field))
        mapped = np.interp(slices, self.knots, self.values)
        return np.where(masks, np.clip(mapped, 0.0, 1.0), 0.0).astype(np.float32)

    def as_dict(self) -> dict[str, list[float]]:
        return {"source": self.knots.tolist(), "target": self.values.tolist(),
                "fitted": self.fitted}


def curve_values(theta: jnp.ndarray) -> jnp.ndarray:
    """Knot values [S + 1] from parameters [S + 1]: the first value, then softplus
    increments (so the curve is strictly increasing whatever the parameters)."""
    steps = jax.nn.softplus(theta[1:])
    return theta[0] + jnp.concatenate([jnp.zeros(1, theta.dtype), jnp.cumsum(steps)])


def curve_parameters(values: np.ndarray, min_step: float = 1e-4) -> np.ndarray:
    """Inverse of `curve_values` (steps below `min_step` raised to it)."""
    steps = np.maximum(np.diff(values), min_step)
    return np.concatenate([values[:1], np.log(np.expm1(steps))]).astype(np.float32)


def source_knots(slices: np.ndarray, masks: np.ndarray, segments: int) -> np.ndarray:
    """Knots at the in-mask quantiles of a volume, strictly increasing.

    Raises ValueError for an empty mask or a constant volume (no curve to fit).
    """
    values = np.asarray(slices)[np.asarray(masks, bool)]
    if values.size == 0:
        raise ValueError("cannot calibrate intensities: the brain mask is empty")
    knots = np.quantile(values, np.linspace(0.0, 1.0, segments + 1))
    if knots[-1] - knots[0] <= 1e-6:
        raise ValueError("cannot calibrate intensities: the brain is constant")
    # Repeated quantiles (many equal voxels) would give zero-width segments.
    return np.maximum.accumulate(np.maximum(knots, knots[0] + 1e-6 * np.arange(segments + 1)))


def stacked(volumes: list[tuple]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(slices, masks, log fields or None) of volumes' (slices, masks[, log field])
    one after the other; the fields only if every volume has one."""
    if not volumes:
        raise ValueError("a shared intensity curve needs at least one volume")
    slices, masks = (np.concatenate([np.asarray(v[i]) for v in volumes]) for i in range(2))
    fields = (np.concatenate([v[2] for v in volumes])
              if all(len(v) > 2 and v[2] is not None for v in volumes) else None)
    return slices, masks.astype(bool), fields


def pool_slices(masks: np.ndarray, size: int) -> np.ndarray:
    """`size` slice indices, evenly spaced among the slices with at least half the
    largest brain area (edge slices hold little brain and little evidence)."""
    area = np.asarray(masks, bool).sum(axis=(-2, -1))
    candidates = np.flatnonzero(area >= 0.5 * area.max())
    return candidates[np.linspace(0, len(candidates) - 1, size).round().astype(int)]


def negative_log_likelihood(model: FlowModel, params: dict, theta: jnp.ndarray,
                            sources: jnp.ndarray, brains: jnp.ndarray, knots: jnp.ndarray,
                            log_fields: jnp.ndarray | None = None) -> jnp.ndarray:
    """-log p_source(x_s) of [P, H, W] slices under the curve `theta`, in bits/dim.

    The flow's density of the mapped slices plus the map's log-det (the sum of log
    slopes over brain voxels); the background stays zero. With `log_fields`
    [P, H, W], the slices are divided by exp(log_fields) before the curve, and the
    log-det includes that division (-log_fields per brain voxel).
    """
    values = curve_values(theta)
    if log_fields is not None:
        sources = sources * jnp.exp(-log_fields)
    slopes = (values[1:] - values[:-1]) / (knots[1:] - knots[:-1])
    segment = jnp.clip(jnp.searchsorted(knots, sources, side="right") - 1, 0, len(slopes) - 1)
    mapped = jnp.where(brains, values[segment] + slopes[segment] * (sources - knots[segment]),
                       0.0)
    log_slopes = jnp.log(slopes[segment]) - (0.0 if log_fields is None else log_fields)
    log_det = jnp.sum(jnp.where(brains, log_slopes, 0.0), axis=(-2, -1))
    nll = -model.log_prob(params, mapped[..., None]) - log_det
    return jnp.mean(nll) / (model.latent_size * math.log(2.0))


def _lbfgs(loss, start: jnp.ndarray, steps: int) -> tuple[jnp.ndarray, jnp.ndarray]:
    """`steps` L-BFGS iterations (zoom line search) of `loss` from `start` in one
    lax.scan; (end point, loss per step)."""
    optimizer = optax.lbfgs()
    # Reuses the line search's last value and gradient: one evaluation a step.
    value_and_grad = optax.value_and_grad_from_state(loss)

    def step(carry, _):
        x, state = carry
        value, grads = value_and_grad(x, state=state)
        updates, state = optimizer.update(grads, state, x, value=value, grad=grads,
                                          value_fn=loss)
        return (optax.apply_updates(x, updates), state), value

    (end, _), history = jax.lax.scan(step, (start, optimizer.init(start)), None, length=steps)
    return end, history


class Calibrator:
    """A trained flow's intensity calibration, compiled once for [pool, H, W] slices.

    Attributes:
      compilations: how many times a fit was traced (at most one curve fit and one
        field fit for a whole run).
    """

    def __init__(self, model: FlowModel, params: dict, config: CalibrationConfig,
                 devices=None):
        self.model = model
        self.config = config
        self.mesh = data_mesh(devices)
        check_batch_size(self.mesh, config.pool)
        self.params = replicate(self.mesh, params)
        self.compilations = 0

        def nll(params, theta, sources, brains, knots, log_fields):
            return negative_log_likelihood(model, params, theta, sources, brains, knots,
                                           log_fields)

        def fit_curve(params, theta, sources, brains, knots, log_fields):
            self.compilations += 1  # runs only while tracing
            return _lbfgs(lambda t: nll(params, t, sources, brains, knots, log_fields), theta,
                          config.steps)

        def fit_field(params, theta, sources, brains, knots, basis, penalty):
            self.compilations += 1

            def loss(c):
                log_fields = jnp.einsum("k,pkhw->phw", c, basis)
                return (nll(params, theta, sources, brains, knots, log_fields)
                        + penalty * jnp.sum(c**2))

            return _lbfgs(loss, jnp.zeros(basis.shape[1], theta.dtype), config.field_steps)

        self._fit_curve = jax.jit(fit_curve)
        self._fit_field = jax.jit(fit_field)
        self._value = jax.jit(nll)  # scoring: no backward pass to compile
        self._value_and_grad = jax.jit(jax.value_and_grad(nll, argnums=1))

    def _placed(self, slices: np.ndarray, masks: np.ndarray, knots: np.ndarray,
                *per_slice: np.ndarray) -> tuple:
        """The fit's inputs on the mesh: the pool's slices, masks (and any other
        per-slice arrays) sharded, knots replicated."""
        pool = pool_slices(masks, self.config.pool)
        return (shard_batch(self.mesh, np.asarray(slices, np.float32)[pool]),
                shard_batch(self.mesh, np.asarray(masks, bool)[pool]),
                replicate(self.mesh, jnp.asarray(knots, jnp.float32)),
                *(shard_batch(self.mesh, np.asarray(a, np.float32)[pool]) for a in per_slice))

    def likelihood(self, theta: np.ndarray, slices: np.ndarray, masks: np.ndarray,
                   knots: np.ndarray, log_fields: np.ndarray | None = None,
                   gradient: bool = False) -> float | tuple[float, np.ndarray]:
        """-log p_source in bits/dim (with `gradient`, also its gradient [S + 1]) at
        curve parameters `theta` (after dividing by exp(log_fields) [N, H, W], if
        given), over the same pool of `slices` and with the same placement on the
        devices as the fit uses. One compile per number of knots."""
        fields = np.zeros_like(slices, np.float32) if log_fields is None else log_fields
        placed = self._placed(slices, masks, knots, fields)
        theta = replicate(self.mesh, jnp.asarray(theta, jnp.float32))
        if not gradient:
            return float(self._value(self.params, theta, *placed))
        value, grad = self._value_and_grad(self.params, theta, *placed)
        return float(value), np.asarray(grad)

    def curve(self, slices: np.ndarray, masks: np.ndarray, reference: TargetReference,
              log_fields: np.ndarray | None = None) -> tuple[IntensityCurve, np.ndarray]:
        """The maximum-likelihood curve of one volume's [N, H, W] slices (divided by
        exp(log_fields) [N, H, W] first, if given).

        Starts from the histogram-matching curve (the target's quantiles at the
        knots' levels); if the fit produces NaN/Inf, returns that starting curve
        with `fitted=False`. Returns (curve, loss per step in bits/dim).
        """
        masks = np.asarray(masks, bool)
        segments = self.config.segments
        knots = self.knots(slices, masks, log_fields)
        levels = np.linspace(0.0, 1.0, len(reference.quantiles))
        start = np.interp(np.linspace(0.0, 1.0, segments + 1), levels, reference.quantiles)
        fields = np.zeros_like(slices, np.float32) if log_fields is None else log_fields
        sources, brains, knots_on, fields_on = self._placed(slices, masks, knots, fields)
        theta, history = self._fit_curve(
            self.params, replicate(self.mesh, jnp.asarray(curve_parameters(start))), sources,
            brains, knots_on, fields_on)
        history = np.asarray(history)
        values = np.asarray(curve_values(theta), np.float64)
        if not (np.all(np.isfinite(values)) and np.all(np.isfinite(history))):
            return IntensityCurve(knots, start, fitted=False), history
        return IntensityCurve(knots, values), history

    def shared_curve(self, volumes: list[tuple], reference: TargetReference
                     ) -> tuple[IntensityCurve, np.ndarray]:
        """One maximum-likelihood curve for several volumes of one scanner and
        protocol: `curve` of their (slices, masks[, log_fields]) stacked, so the knots
        are the pooled in-brain quantiles and the pool is spread evenly over the volumes."""
        slices, masks, log_fields = stacked(volumes)
        return self.curve(slices, masks, reference, log_fields)

    def knots(self, slices: np.ndarray, masks: np.ndarray,
              log_fields: np.ndarray | None = None) -> np.ndarray:
        """The knots `curve` places for these slices (their in-mask quantiles after
        dividing by exp(log_fields), if given)."""
        corrected = slices if log_fields is None else slices * np.exp(-log_fields)
        return source_knots(corrected, np.asarray(masks, bool), self.config.segments)

    def shared_knots(self, volumes: list[tuple]) -> np.ndarray:
        """The knots `shared_curve` of these volumes has, without fitting it."""
        return self.knots(*stacked(volumes))

    def field(self, slices: np.ndarray, masks: np.ndarray, basis: np.ndarray,
              curve: IntensityCurve, penalty: float) -> tuple[np.ndarray, np.ndarray]:
        """The maximum-likelihood multiplicative field of one volume under a fixed
        `curve`: coefficients [K] of log-field = sum_k c_k basis[:, k] (basis
        [N, K, H, W]), fitted over the volume's pool with `penalty` * |c|^2 added.
        Returns (coefficients, loss per step); zeros if the fit gave NaN/Inf."""
        sources, brains, knots, basis_on = self._placed(
            slices, masks, curve.knots, basis)
        theta = replicate(self.mesh, jnp.asarray(curve_parameters(curve.values)))
        coefficients, history = self._fit_field(self.params, theta, sources, brains, knots,
                                                basis_on, jnp.float32(penalty))
        coefficients, history = np.asarray(coefficients, np.float64), np.asarray(history)
        if not (np.all(np.isfinite(coefficients)) and np.all(np.isfinite(history))):
            return np.zeros(basis.shape[1]), history
        return coefficients, history
