"""Invertible 1x1 convolution (Glow), LU-parametrised: W = P L (U + diag(exp(s)))."""

from __future__ import annotations

import distrax
import jax
import jax.numpy as jnp
from jax.scipy.linalg import lu, solve_triangular

# Full float32 products: at the default precision a GPU multiplies in TF32, and
# decode(encode(x)) then misses x by ~1e-3 (measured on an H100), while these
# C x C products cost nothing next to the conditioners' convolutions.
EXACT = jax.lax.Precision.HIGHEST


def init_conv1x1(key: jax.Array, channels: int, kind: str = "identity") -> dict:
    """Parameters of a C x C invertible 1x1 convolution.

    Args:
      key: PRNG key for the fixed permutation (and the rotation if orthogonal).
      channels: C.
      kind: 'identity' (W = P, a fixed random permutation, as the published
        code) or 'orthogonal' (a random rotation).
    Returns:
      {"perm": [C, C] fixed permutation matrix (never trained), "lower": [C, C]
      and "upper": [C, C] (only their strict triangles are used),
      "log_diag": [C]}.
    """
    perm_key, rot_key = jax.random.split(key)
    if kind == "identity":
        perm = jnp.eye(channels)[jax.random.permutation(perm_key, channels)]
        zeros = jnp.zeros((channels, channels))
        return {"perm": perm, "lower": zeros, "upper": zeros, "log_diag": jnp.zeros(channels)}
    if kind == "orthogonal":
        q, _ = jnp.linalg.qr(jax.random.normal(rot_key, (channels, channels)))
        perm, lower, upper = lu(q)
        # Q D with D = sign(diag U) is still a rotation and has a positive diagonal in U.
        diag = jnp.diag(upper)
        upper = upper * jnp.sign(diag)[None, :]
        return {"perm": perm, "lower": lower, "upper": upper,
                "log_diag": jnp.log(jnp.abs(diag))}
    raise ValueError(f"conv_init must be 'identity' or 'orthogonal', got {kind!r}")


class Conv1x1(distrax.Bijector):
    """Mixes channels with an invertible matrix; log-det = H W sum(log_diag)."""

    def __init__(self, params: dict):
        super().__init__(event_ndims_in=3)
        c = params["log_diag"].shape[0]
        self.perm = jax.lax.stop_gradient(params["perm"])
        self.lower = jnp.tril(params["lower"], -1) + jnp.eye(c)
        self.upper = jnp.triu(params["upper"], 1) + jnp.diag(jnp.exp(params["log_diag"]))
        self.log_diag = params["log_diag"]

    @property
    def matrix(self) -> jnp.ndarray:
        return jnp.matmul(jnp.matmul(self.perm, self.lower, precision=EXACT), self.upper,
                          precision=EXACT)

    def inverse_matrix(self) -> jnp.ndarray:
        eye = jnp.eye(self.log_diag.shape[0])
        lower_inv = solve_triangular(self.lower, eye, lower=True, unit_diagonal=True)
        upper_inv = solve_triangular(self.upper, eye, lower=False)
        return jnp.matmul(jnp.matmul(upper_inv, lower_inv, precision=EXACT), self.perm.T,
                          precision=EXACT)

    def _log_det(self, x):
        h, w = x.shape[-3:-1]
        return jnp.broadcast_to(h * w * jnp.sum(self.log_diag), x.shape[:-3])

    def forward_and_log_det(self, x):
        return jnp.einsum("...c,dc->...d", x, self.matrix, precision=EXACT), self._log_det(x)

    def inverse_and_log_det(self, y):
        return (jnp.einsum("...c,dc->...d", y, self.inverse_matrix(), precision=EXACT),
                -self._log_det(y))
