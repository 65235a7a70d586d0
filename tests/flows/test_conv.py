"""The conditioners' convolution: lax's values and gradients, a fast transpose, and
Winograd's algorithm for large 3x3 convolutions on the CPU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bh_jax.flows import conv as conv_module
from bh_jax.flows.conv import conv_general_dilated
from bh_jax.flows.winograd import conv3x3_same

DIMS = ("NHWC", "HWIO", "NHWC")


def _lax_conv(x, kernel, padding):
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=DIMS)


def _conv(x, kernel, padding):
    return conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=DIMS)


@pytest.mark.parametrize("kernel_shape,padding,winograd", [
    ((3, 3, 4, 6), "SAME", False), ((3, 3, 4, 6), "SAME", True), ((1, 1, 4, 6), "SAME", False),
    ((2, 3, 4, 5), "SAME", False), ((3, 3, 4, 2), ((2, 0), (1, 1)), False),
    ((3, 3, 4, 2), "VALID", False)])
def test_values_and_gradients_equal_lax(kernel_shape, padding, winograd, monkeypatch):
    """`winograd`: every 3x3 'SAME' convolution takes Winograd's path, the forward
    pass and the input gradient (a 3x3 'SAME' convolution too)."""
    if winograd:
        monkeypatch.setattr(conv_module, "WINOGRAD_MIN_MACS", 0)
    x = jax.random.normal(jax.random.PRNGKey(0), (3, 7, 6, 4))
    kernel = jax.random.normal(jax.random.PRNGKey(1), kernel_shape)
    weights = jax.random.normal(jax.random.PRNGKey(2), _lax_conv(x, kernel, padding).shape)

    def loss(conv):
        return lambda x, k: jnp.sum(weights * jnp.tanh(conv(x, k, padding)))

    expected = _lax_conv(x, kernel, padding)
    # Winograd's float32 error scales with the output's magnitude, not each element's.
    np.testing.assert_allclose(_conv(x, kernel, padding), expected, rtol=1e-5,
                               atol=2e-6 * float(jnp.abs(expected).max()))
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


def test_winograd_equals_lax_for_any_image_size():
    """F(4x4, 3x3) tiles of an image whose sizes are not multiples of 4 (the last tiles
    padded, their surplus cropped): lax's values to float32 rounding."""
    n, h, w, c, o = 2, 9, 14, 5, 7
    x = jax.random.normal(jax.random.PRNGKey(0), (n, h, w, c))
    kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, c, o))
    reference = _lax_conv(x, kernel, "SAME")
    result = jax.jit(conv3x3_same)(x, kernel)
    assert result.shape == reference.shape
    np.testing.assert_allclose(result, reference, rtol=0,
                               atol=2e-5 * float(jnp.abs(reference).max()))


def test_winograd_is_taken_above_the_threshold_only(monkeypatch):
    """The large case compiles to the Winograd program (36 products and the kernel's
    transform, no convolution), the small one to XLA's convolution."""
    x, kernel = jnp.ones((1, 16, 16, 8)), jnp.ones((3, 3, 8, 8))
    monkeypatch.setattr(conv_module, "WINOGRAD_MIN_MACS", 9 * 16 * 16 * 8 * 8)

    def compiled(rows):
        program = jax.jit(lambda x, k: _conv(x[:, :rows], k, "SAME"))
        return program.lower(x, kernel).compile().as_text()

    large, small = compiled(16), compiled(8)
    assert large.count(" dot(") >= 36 and " convolution(" not in large
    assert " dot(" not in small and " convolution(" in small


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
