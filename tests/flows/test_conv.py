"""The conditioners' convolution: lax's values and gradients, a fast transpose."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bh_jax.flows.conv import conv_general_dilated

DIMS = ("NHWC", "HWIO", "NHWC")


def _lax_conv(x, kernel, padding):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=DIMS)


def _conv(x, kernel, padding):
    return conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=DIMS)


@pytest.mark.parametrize("kernel_shape,padding", [
    ((3, 3, 4, 6), "SAME"), ((1, 1, 4, 6), "SAME"), ((2, 3, 4, 5), "SAME"),
    ((3, 3, 4, 2), ((2, 0), (1, 1))), ((3, 3, 4, 2), "VALID")])
def test_values_and_gradients_equal_lax(kernel_shape, padding):
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 7, 6, 4))
    kernel = jax.random.normal(jax.random.PRNGKey(1), kernel_shape)
    weights = jax.random.normal(jax.random.PRNGKey(2), _lax_conv(x, kernel, padding).shape)

    def loss(conv):
        return lambda x, k: jnp.sum(weights * jnp.tanh(conv(x, k, padding)))

    np.testing.assert_allclose(_conv(x, kernel, padding), _lax_conv(x, kernel, padding),
                               rtol=1e-5, atol=1e-5)
    ours = jax.grad(loss(_conv), (0, 1))(x, kernel)
    reference = jax.grad(loss(_lax_conv), (0, 1))(x, kernel)
    for a, b in zip(ours, reference):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    # Batched per example (as the solvers vmap over slices), inside a scan.
    def scanned(conv):
        def run(x):
            def step(carry, _):
                return carry - 0.1 * jax.grad(loss(conv))(carry[None], kernel)[0], None
            return jax.lax.scan(step, x, None, length=2)[0]
        return jax.vmap(run)

    np.testing.assert_allclose(jax.jit(scanned(_conv))(x), scanned(_lax_conv)(x),
                               rtol=1e-4, atol=1e-4)


def test_unsupported_convolutions_are_refused():
    x, kernel = jnp.zeros((1, 8, 8, 2)), jnp.zeros((3, 3, 2, 4))
    with pytest.raises(ValueError, match="stride-1"):
        conv_general_dilated(x, kernel, (2, 2), "SAME", dimension_numbers=DIMS)
    with pytest.raises(ValueError, match="stride-1"):
        conv_general_dilated(x, kernel, (1, 1), "SAME", rhs_dilation=(2, 2),
                             dimension_numbers=DIMS)
    with pytest.raises(ValueError, match="layouts"):
        conv_general_dilated(jnp.zeros((1, 2, 8, 8)), kernel, (1, 1), "SAME",
                             dimension_numbers=("NCHW", "HWIO", "NCHW"))
