"""Objective terms against hand computations on tiny arrays; mask corner cases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage

from bh_jax.harmonize.objective import (
    edge_term,
    image_gradient,
    latent_prior,
    ncc,
    non_edge_mask,
    objective_terms,
)


def test_ncc_matches_pearson_inside_mask():
    rng = np.random.default_rng(0)
    x, y = rng.random((2, 6, 7)).astype(np.float32)
    mask = np.zeros((6, 7), bool)
    mask[1:5, 2:6] = True
    expected = np.corrcoef(x[mask], y[mask])[0, 1]
    assert float(ncc(x, y, mask)) == pytest.approx(expected, abs=1e-5)
    assert float(ncc(x, 3 * x + 1, mask)) == pytest.approx(1.0, abs=1e-5)


def test_ncc_of_flat_or_empty_is_zero_not_nan():
    x = np.ones((5, 5), np.float32)
    y = np.arange(25, dtype=np.float32).reshape(5, 5)
    assert float(ncc(x, y, np.ones((5, 5), bool))) == 0.0
    assert float(ncc(y, y, np.zeros((5, 5), bool))) == 0.0


def test_gradients_by_hand():
    ramp = np.tile(np.arange(5, dtype=np.float32), (4, 1))  # +1 per column
    diff = np.asarray(image_gradient(ramp, "diff"))
    np.testing.assert_array_equal(diff[0], 0)
    np.testing.assert_array_equal(diff[1][:, :-1], 1)
    np.testing.assert_array_equal(diff[1][:, -1], 0)  # replicated edge
    rng = np.random.default_rng(1)
    image = rng.random((6, 8)).astype(np.float32)
    sobel = np.asarray(image_gradient(image, "sobel"))
    for axis in (0, 1):
        np.testing.assert_allclose(np.abs(sobel[axis]),
                                   np.abs(ndimage.sobel(image, axis=axis, mode="nearest")),
                                   atol=1e-5)
    assert not np.any(np.asarray(image_gradient(np.full((4, 4), 0.3), "sobel")))


def test_edge_term_by_hand():
    x = np.zeros((3, 3), np.float32)
    x[1, 1] = 1.0
    mask = np.zeros((3, 3), bool)
    mask[0, 1] = mask[1, 1] = True
    g = np.abs(np.asarray(image_gradient(x, "diff")))
    expected = (g[:, 0, 1].sum() + g[:, 1, 1].sum()) / 2
    assert float(edge_term(x, mask, "diff")) == pytest.approx(expected)


def test_non_edge_mask_ignores_background():
    # 75 % zero background: the published whole-slice percentile would be 0
    # and its strict '<' would empty the mask.
    rng = np.random.default_rng(2)
    brain = np.zeros((16, 16), bool)
    brain[4:12, 4:12] = True
    source = np.where(brain, 0.5 + 0.1 * rng.random((16, 16)), 0.0).astype(np.float32)
    mask = np.asarray(non_edge_mask(source, brain, 30.0))
    assert mask.any() and not mask[~brain].any()
    fraction = mask.sum() / brain.sum()
    assert 0.25 <= fraction <= 0.4


def test_non_edge_mask_corner_cases():
    flat = np.full((8, 8), 0.4, np.float32)
    brain = np.ones((8, 8), bool)
    assert np.asarray(non_edge_mask(flat, brain)).all()  # flat: nothing is an edge
    background = np.zeros((8, 8), np.float32)
    assert not np.asarray(non_edge_mask(background, np.zeros((8, 8), bool))).any()
    terms = objective_terms(jnp.asarray(background), latent_prior(jnp.zeros(64)),
                            jnp.asarray(background),
                            jnp.zeros((8, 8), bool), jnp.zeros((8, 8), bool))
    assert all(np.isfinite(float(v)) for v in terms.values())


def test_terms_are_differentiable_and_finite():
    rng = np.random.default_rng(3)
    source = rng.random((8, 8)).astype(np.float32)
    brain = np.ones((8, 8), bool)
    non_edge = non_edge_mask(source, brain)

    def total(x):
        t = objective_terms(x, latent_prior(x.ravel()), source, brain, non_edge)
        return t["one_minus_ncc"] + t["edge"] + t["prior"]

    grad = jax.grad(total)(jnp.asarray(rng.random((8, 8)), jnp.float32))
    assert bool(jnp.all(jnp.isfinite(grad)))
