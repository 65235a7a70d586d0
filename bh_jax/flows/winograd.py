"""A 3x3 'SAME' convolution by Winograd's minimal filtering, F(4x4, 3x3).

XLA:CPU runs convolutions as direct (Eigen) contractions; the conditioners' 3x3
convolutions are almost all of the flow's time there (docs/performance.md). Winograd's
algorithm (Lavin & Gray 2016) computes each 4x4 output tile from a 6x6 input tile with
36 products per channel pair instead of 144: the input tiles and the kernel are
transformed by small constant matrices (B^T d B, G g G^T), each of the 36 transformed
positions is one plain [tiles x C_in] @ [C_in x C_out] matrix product (XLA's fast
path), and the products are transformed back (A^T m A). On the 2-core CPU this takes a
96 -> 96 channel convolution of 4 x 72 x 88 pixels from 28 ms to 15 ms. The results
equal `lax.conv_general_dilated`'s to float32 rounding (relative 1e-5: the transforms'
constants are exact in binary except 1/6, 1/12 and 1/24).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

TILE = 4  # output pixels per tile side; input tiles are TILE + 2

# Lavin & Gray's F(4x4, 3x3) matrices (interpolation points 0, +-1, +-2, infinity).
INPUT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]],
                 np.float32)  # B^T
KERNEL = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                   [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]],
                  np.float32)  # G
OUTPUT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                   [0, 1, -1, 8, -8, 1]], np.float32)  # A^T


def _combine(matrix: np.ndarray, items: list) -> list:
    """[sum_j matrix[i, j] items[j] for each row i], skipping zero coefficients (the
    matrices are constants: XLA fuses these sums into the slicing around them)."""
    rows = []
    for row in matrix:
        terms = [item if c == 1 else -item if c == -1 else float(c) * item
                 for c, item in zip(row, items) if c != 0]
        total = terms[0]
        for term in terms[1:]:
            total = total + term
        rows.append(total)
    return rows


def conv3x3_same(x: jnp.ndarray, kernel: jnp.ndarray) -> jnp.ndarray:
    """`lax.conv_general_dilated(x, kernel, (1, 1), 'SAME')` for x [N, H, W, C] (NHWC)
    and kernel [3, 3, C, O] (HWIO), any H and W, by Winograd F(4x4, 3x3)."""
    n, h, w, c = x.shape
    tiles_h, tiles_w = -(-h // TILE), -(-w // TILE)
    # 'SAME' pads one pixel each side; the extra zeros below and to the right complete
    # the last tiles, whose surplus outputs are cropped.
    padded = jnp.pad(x, ((0, 0), (1, 1 + tiles_h * TILE - h), (1, 1 + tiles_w * TILE - w),
                         (0, 0)))
    span_h, span_w = TILE * tiles_h, TILE * tiles_w
    rows = _combine(INPUT, [padded[:, a:a + span_h:TILE] for a in range(TILE + 2)])
    tiles = [_combine(INPUT, [row[:, :, b:b + span_w:TILE] for b in range(TILE + 2)])
             for row in rows]  # [6][6] of [N, tiles_h, tiles_w, C]
    weights = jnp.einsum("ia,abco,jb->ijco", KERNEL, kernel, KERNEL)
    products = [[jnp.dot(tiles[i][j].reshape(-1, c), weights[i, j]).reshape(
        n, tiles_h, tiles_w, -1) for j in range(TILE + 2)] for i in range(TILE + 2)]
    by_row = list(zip(*[_combine(OUTPUT, [products[i][j] for i in range(TILE + 2)])
                        for j in range(TILE + 2)]))  # [4 output rows][6]
    # Stacked as [N, tiles_h, 4 rows, tiles_w, 4 columns, O], the tiles are already in
    # image order: a reshape, no transpose (a transpose here cost as much as the rest).
    out = jnp.stack([jnp.stack(_combine(OUTPUT, list(row)), axis=3) for row in by_row],
                    axis=2)
    return out.reshape(n, span_h, span_w, -1)[:, :h, :w]
