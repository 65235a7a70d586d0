"""A stride-1 NHWC convolution whose input gradient is a plain convolution.

JAX differentiates a convolution with respect to its input by convolving the
cotangent with the reversed kernel read through swapped dimension numbers
(kernel spec [H, W, O, I]). Inside a loop body (`lax.scan`, `fori_loop`,
`while_loop`: every harmonization solver and the intensity calibration) XLA:CPU
runs that form on a slow path (jax-ml/jax#12868): on jaxlib 0.10.2, a
16 x 16 x 16 x 8 -> 32 channel 3x3 convolution's input gradient took 3.4 ms
in a `lax.scan` against 0.3 ms outside one, and the demo flow's likelihood
gradient 0.70 s against 0.13 s. `conv_general_dilated` below gives the same
values but computes the input gradient as an ordinary HWIO convolution with a
new kernel: the old one flipped in space, its input and output channel axes
swapped by a real transpose. That runs at full speed in and out of loops.

Large 3x3 'SAME' convolutions (the `reference` model's finest level) run on the
CPU by Winograd's algorithm (`bh_jax.flows.winograd`), elsewhere as XLA's own.

It accepts exactly what `flax.linen.Conv` passes for the conditioners'
convolutions (stride 1, no dilation, one feature group, NHWC / HWIO) and
refuses anything else.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp
from jax import lax

from bh_jax.flows.winograd import conv3x3_same

_DIMENSIONS = ("NHWC", "HWIO", "NHWC")
# Winograd is used for 3x3 'SAME' convolutions of at least this many multiply-adds
# per image: the `reference` model's finest level (5.3e8; 1.8x faster than XLA's at 4
# images, 1.2x at one), not its second (1.3e8; slower with one image) nor the `demo`
# model (9e6). Each use adds 36 products and their transforms to the program: the
# `reference` round trip compiled in 47 s instead of 20 (101 s with the second level
# as well, for 4 % more speed). Per image, because under vmap the batch is not seen.
# docs/performance.md.
WINOGRAD_MIN_MACS = 2e8


def _explicit_padding(padding, lhs_shape: Sequence[int],
                      kernel_shape: Sequence[int]) -> tuple[tuple[int, int], ...]:
    """(low, high) pads per spatial axis: 'SAME' / 'VALID' resolved by lax's own rule."""
    if isinstance(padding, str):
        padding = lax.padtype_to_pads(lhs_shape[1:3], kernel_shape[:2], (1, 1), padding)
    return tuple((int(lo), int(hi)) for lo, hi in padding)


def _direct(x, kernel, padding):
    return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_DIMENSIONS)


def _conv(x, kernel, padding):
    if (kernel.shape[:2] == (3, 3) and tuple(padding) == ((1, 1), (1, 1))
            and 9 * math.prod(x.shape[1:]) * kernel.shape[3] >= WINOGRAD_MIN_MACS):
        # The choice is made when compiling for a platform: GPUs keep their library's.
        return lax.platform_dependent(x, kernel, cpu=conv3x3_same,
                                      default=partial(_direct, padding=padding))
    return _direct(x, kernel, padding)


def _transposed_conv(padding, kernel, cotangent):
    """The transpose of x -> conv(x, kernel): the kernel flipped, its input and
    output channels swapped by a real transpose, the padding mirrored."""
    flipped = jnp.transpose(jnp.flip(kernel, (0, 1)), (0, 1, 3, 2))
    mirrored = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(kernel.shape[:2], padding))
    return _conv(cotangent, flipped, mirrored)


# A custom VJP, not a custom JVP: JAX transposes a JVP rule's convolution into
# the slow form again, and linear_call (custom transpose) has no batching rule.
# The price: no forward-mode derivatives (jvp, jacfwd) through the conditioners.
@partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_loop_friendly(x, kernel, padding):
    return _conv(x, kernel, padding)


def _forward(x, kernel, padding):
    return _conv(x, kernel, padding), (x, kernel)


def _backward(padding, residuals, cotangent):
    x, kernel = residuals
    # The kernel gradient is needed in training only (never inside a loop);
    # XLA drops it where only the input gradient is used.
    _, kernel_vjp = jax.vjp(lambda k: _direct(x, k, padding), kernel)
    return _transposed_conv(padding, kernel, cotangent), kernel_vjp(cotangent)[0]


_conv_loop_friendly.defvjp(_forward, _backward)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, **unsupported):
    """`lax.conv_general_dilated` for stride-1 NHWC/HWIO convolutions (pass it
    as `flax.linen.Conv(..., conv_general_dilated=conv_general_dilated)`).

    Raises ValueError for strides, dilations, feature groups, layouts or
    options it does not implement.
    """
    ones = (1,) * (lhs.ndim - 2)
    if (tuple(window_strides) != ones or tuple(lhs_dilation or ones) != ones
            or tuple(rhs_dilation or ones) != ones or feature_group_count != 1
            or lhs.ndim != 4 or precision is not None or unsupported):
        raise ValueError("conv_general_dilated supports stride-1, undilated, ungrouped 2-D "
                         "convolutions only")
    if dimension_numbers is not None:
        spec = lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
        if spec != lax.conv_dimension_numbers(lhs.shape, rhs.shape, _DIMENSIONS):
            raise ValueError(f"conv_general_dilated supports {_DIMENSIONS} layouts only, "
                             f"got {dimension_numbers}")
    return _conv_loop_friendly(lhs, rhs, _explicit_padding(padding, lhs.shape, rhs.shape))
