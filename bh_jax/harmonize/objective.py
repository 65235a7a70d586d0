"""The BlindHarmony objective for one slice (pure JAX, jit- and vmap-able).

    L(z) = b1 (1 - NCC_B(x_h, x_s)) + b2 ||M G x_h||_1 / |M| + a |z|^2 / D,
    x_h = f^-1(z)

(the `image` solver replaces |z|^2 / D by the exact -log p(x_h) / D).

B is the brain mask, M the non-edge mask of the source, G the image gradient
(both axes), D = H * W the latent size. Dividing the edge term by the mask
size and the prior by D makes b2 and a mean the same at every image size.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax.scipy.signal import convolve2d

from bh_jax.harmonize.settings import Weights

_EPS = 1e-8
_SOBEL_X = jnp.array([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])


def ncc(x: jnp.ndarray, y: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """Pearson correlation of x and y [H, W] inside `mask`; 0 if either is flat."""
    w = mask.astype(x.dtype)
    n = jnp.maximum(jnp.sum(w), 1.0)
    xc = (x - jnp.sum(x * w) / n) * w
    yc = (y - jnp.sum(y * w) / n) * w
    denom = jnp.sqrt(jnp.sum(xc**2) * jnp.sum(yc**2))
    return jnp.where(denom > _EPS, jnp.sum(xc * yc) / jnp.maximum(denom, _EPS), 0.0)


def image_gradient(x: jnp.ndarray, kind: str = "sobel") -> jnp.ndarray:
    """[2, H, W] gradients of x [H, W] along rows and columns ('sobel' or 'diff').

    Edges are replicated, so a constant image has zero gradient everywhere.
    """
    if kind == "sobel":
        padded = jnp.pad(x, 1, mode="edge")
        return jnp.stack([convolve2d(padded, _SOBEL_X.T, mode="valid"),
                          convolve2d(padded, _SOBEL_X, mode="valid")])
    if kind == "diff":
        padded = jnp.pad(x, ((0, 1), (0, 1)), mode="edge")
        return jnp.stack([padded[1:, :-1] - padded[:-1, :-1], padded[:-1, 1:] - padded[:-1, :-1]])
    raise ValueError(f"gradient must be 'sobel' or 'diff', got {kind!r}")


def non_edge_mask(source: jnp.ndarray, brain: jnp.ndarray, percentile: float = 30.0,
                  gradient: str = "sobel") -> jnp.ndarray:
    """Pixels in the brain whose source gradient magnitude is at most the p-th
    percentile of the in-brain magnitudes.

    The percentile is taken over the brain only, so a large zero background
    cannot push it to 0 and empty the mask (the published code's failure), and
    '<=' keeps flat regions in it. Empty only when the brain mask is.
    """
    magnitude = jnp.sqrt(jnp.sum(image_gradient(source, gradient) ** 2, axis=0))
    inside = brain.astype(bool)
    ranked = jnp.where(inside, magnitude, jnp.inf).ravel()
    count = jnp.sum(inside)
    position = jnp.clip(jnp.floor(percentile / 100.0 * (count - 1)).astype(jnp.int32), 0,
                        ranked.size - 1)
    threshold = jnp.sort(ranked)[position]
    return inside & (magnitude <= threshold)


def edge_term(x: jnp.ndarray, non_edge: jnp.ndarray, gradient: str = "sobel") -> jnp.ndarray:
    """||M G x||_1 / |M|: mean absolute gradient of x inside the non-edge mask."""
    w = non_edge.astype(x.dtype)
    total = jnp.sum(jnp.abs(image_gradient(x, gradient)) * w[None])
    return total / jnp.maximum(jnp.sum(w), 1.0)


def latent_prior(z: jnp.ndarray) -> jnp.ndarray:
    """|z|^2 / D: the published prior term (the latent's squared norm per dimension)."""
    return jnp.mean(z**2)


def objective_terms(x_h: jnp.ndarray, prior: jnp.ndarray, source: jnp.ndarray,
                    brain: jnp.ndarray, non_edge: jnp.ndarray, gradient: str = "sobel"
                    ) -> dict[str, jnp.ndarray]:
    """The unweighted terms for image x_h [H, W] whose prior term is `prior`.

    `prior` is computed by the solver: `latent_prior(z)` for the latent and
    alternating solvers, the negative log-density per dimension for `image`.
    """
    return {"one_minus_ncc": 1.0 - ncc(x_h, source, brain),
            "edge": edge_term(x_h, non_edge, gradient),
            "prior": prior}


def weighted_loss(terms: dict[str, jnp.ndarray], weights: Weights) -> jnp.ndarray:
    return (weights.b1 * terms["one_minus_ncc"] + weights.b2 * terms["edge"]
            + weights.alpha * terms["prior"])
