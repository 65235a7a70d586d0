"""Does a trained prior know the target's contrast? (run when training ends)

BlindHarmony's NCC term cannot tell an image from a brighter or higher-contrast
copy of it; only the prior can. `contrast_check` scores target-site slices with
their contrast scaled: a prior that knows the target's contrast scores 1.0 best.
`sample_realism` asks whether its samples look like the target's slices.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

import jax
import jax.numpy as jnp
import numpy as np

from bh_jax import metrics
from bh_jax.batching import fixed_batches
from bh_jax.flows.model import FlowModel


def prior_scores(model: FlowModel, params: dict, slices: np.ndarray,
                 batch_size: int = 32) -> dict[str, np.ndarray]:
    """Bits/dim and mean z^2 [N] of [N, H, W] slices under a flow (no dequantisation)."""
    score = _prior_score_fn(model)
    parts = [score(params, np.asarray(slices[index], np.float32)[..., None])
             for index, _ in fixed_batches(len(slices), batch_size)]
    return {k: np.concatenate([np.asarray(p[k]) for p in parts])[:len(slices)]
            for k in ("bpd", "z2")}


@lru_cache(maxsize=4)
def _prior_score_fn(model: FlowModel):
    def score(params, x):
        log_prob, z2 = model.log_prob_and_z2(params, x)
        return {"bpd": model.to_bits_per_dim(log_prob), "z2": z2}
    return jax.jit(score)


def scale_contrast(slices, masks, factor):
    """[..., H, W] slices with each slice's in-mask deviations from its in-mask mean
    times `factor` (a number, or one per slice [..., 1, 1]), clipped to [0, 1]; zero
    background. numpy in, numpy out; also traceable (the train step's negatives)."""
    xp = jnp if isinstance(slices, jax.Array) else np
    masks = xp.asarray(masks) > 0
    slices = xp.asarray(slices, xp.float32)
    count = masks.sum(axis=(-2, -1), keepdims=True)
    mean = xp.where(masks, slices, 0.0).sum(axis=(-2, -1), keepdims=True) / xp.maximum(count, 1)
    return xp.where(masks, xp.clip(mean + factor * (slices - mean), 0.0, 1.0),
                    0.0).astype(xp.float32)


CURVE_FREQUENCIES = 3


def bend_intensities(slices, masks, strength, frequency):
    """The in-mask intensities x of [..., H, W] slices through the monotone curve
    g(x) = x + strength sin(frequency pi x) / (frequency pi), and g's log2-slope
    summed over each slice's mask [...]. g(0) = 0, g(1) = 1 and g' = 1 + strength
    cos(frequency pi x) > 0 for |strength| < 1; `strength` and `frequency` are
    numbers or one per slice ([..., 1, 1]). Outside the mask x is kept. jax."""
    masks = jnp.asarray(masks) > 0
    angle = frequency * jnp.pi * slices
    bent = jnp.where(masks, slices + strength * jnp.sin(angle) / (frequency * jnp.pi), slices)
    log_slope = jnp.where(masks, jnp.log2(1.0 + strength * jnp.cos(angle)), 0.0)
    return bent, log_slope.sum(axis=(-2, -1))


CONTRASTS = (0.7, 0.8, 0.9, 1.0, 1.1, 1.2)


def contrast_check(model: FlowModel, params: dict, slices: np.ndarray, masks: np.ndarray,
                   factors: Iterable[float] = CONTRASTS, batch_size: int = 32) -> list[dict]:
    """Does the prior prefer the target's own contrast? (`scale_contrast` of target slices.)

    Scores [N, H, W] target-site slices with their contrast scaled by each
    factor c, three ways: bits/dim and z^2 of the scaled image (the solvers'
    prior terms), and `bpd_cov`, the bits/dim of the *unscaled* image under
    the flow pushed through the scaling (change of variables: bits/dim minus
    the brain fraction times log2 c), the score `bh_jax.harmonize.calibration`
    maximises. A score that keeps falling as the contrast falls pulls an
    optimisation towards flat images and cannot pick the right intensities
    among NCC-equivalent images (affine maps of the source); one that is
    lowest at factor 1 knows the target's contrast.

    Returns:
      One row per factor: {"contrast", "bpd", "z2", "bpd_cov" (means),
      "lowest_bpd", "lowest_z2", "lowest_bpd_cov" (fraction of slices for
      which this factor scores best), "slices"}.
    """
    factors = list(factors)
    if len(slices) == 0:
        raise ValueError("contrast_check: no slices")
    brain_fraction = np.asarray(masks, bool).mean(axis=(-2, -1))
    scores = [prior_scores(model, params, scale_contrast(slices, masks, f), batch_size)
              for f in factors]
    for f, s in zip(factors, scores):
        s["bpd_cov"] = s["bpd"] - brain_fraction * np.log2(f)
    keys = ("bpd", "z2", "bpd_cov")
    stacked = {k: np.stack([s[k] for s in scores]) for k in keys}  # [factors, N]
    lowest = {k: np.argmin(v, axis=0) for k, v in stacked.items()}
    return [{"contrast": f, **{k: float(stacked[k][i].mean()) for k in keys},
             **{f"lowest_{k}": float(np.mean(lowest[k] == i)) for k in keys},
             "slices": len(slices)} for i, f in enumerate(factors)]


def preferred_contrast(rows: list[dict]) -> str:
    """One line: the contrast factors with the lowest mean score, each way."""
    best = {k: min(rows, key=lambda r: r[k])["contrast"] for k in ("bpd", "z2", "bpd_cov")}
    return (f"prior QC: validation images score best at {best['bpd']:g}x their own contrast by "
            f"bits/dim, {best['z2']:g}x by z^2 (below 1: these favour flat images), "
            f"{best['bpd_cov']:g}x by the change-of-variables score of the intensity "
            "calibration (1 = it knows the target's contrast)")


REALISM_TEMPERATURE = 0.7


@jax.jit
def _nearest_ssim_batch(images: jnp.ndarray, references: jnp.ndarray) -> jnp.ndarray:
    """Best SSIM [B] of each of [B, H, W] images with any of [M, H, W] references."""
    def best(image):
        return jnp.max(jax.vmap(lambda ref: metrics.ssim(image, ref))(references))
    return jax.lax.map(best, images)


def nearest_ssim(images: np.ndarray, references: np.ndarray, batch_size: int = 16) -> np.ndarray:
    """For each of [N, H, W] images, its highest whole-slice SSIM (`metrics.ssim`,
    border excluded) with any of [M, H, W] reference slices."""
    if len(images) == 0 or len(references) == 0:
        raise ValueError("nearest_ssim: no images or no references")
    references = jnp.asarray(references, jnp.float32)
    parts = [_nearest_ssim_batch(np.asarray(images[index], np.float32), references)
             for index, _ in fixed_batches(len(images), batch_size)]
    return np.concatenate([np.asarray(p) for p in parts])[:len(images)]


def sample_realism(model: FlowModel, params: dict, train_slices: np.ndarray,
                   val_slices: np.ndarray, samples: int = 64,
                   temperature: float = REALISM_TEMPERATURE, seed: int = 0) -> dict:
    """Do the prior's samples look like target slices? Nearest-training-slice SSIM.

    Draws `samples` images at `temperature` and, for each, finds the training
    slice it resembles most (SSIM over the whole slice); does the same for
    `samples` real validation slices (other subjects than the training ones).
    A prior whose samples are brain slices brings the first mean close to the
    second; blobs with a brain's outline but no anatomy stay well below it.

    Returns:
      {"samples", "real": mean nearest SSIM, "samples_std", "real_std",
      "ratio": samples / real, "temperature", "count"}.
    """
    images = np.clip(np.asarray(model.sample(params, jax.random.PRNGKey(seed), samples,
                                             temperature))[..., 0], 0.0, 1.0)
    rng = np.random.default_rng(seed)
    real = np.asarray(val_slices)[rng.choice(len(val_slices), min(samples, len(val_slices)),
                                             replace=False)]
    fake_best = nearest_ssim(images, train_slices)
    real_best = nearest_ssim(real, train_slices)
    return {"samples": float(fake_best.mean()), "real": float(real_best.mean()),
            "samples_std": float(fake_best.std()), "real_std": float(real_best.std()),
            "ratio": float(fake_best.mean() / max(real_best.mean(), 1e-6)),
            "temperature": temperature, "count": len(images)}
