"""Every bijector: exact round trip and log-det against the Jacobian from autodiff.

jax.jacfwd, except through the coupling conditioners, whose convolutions have a
custom VJP (bh_jax.flows.conv) and so only reverse mode: jax.jacrev there.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from bh_jax.config import FlowConfig
from bh_jax.flows import (
    ActNorm,
    Conv1x1,
    FactorOut,
    Squeeze,
    coupling,
    init_actnorm,
    init_conv1x1,
    init_coupling,
)
from bh_jax.flows.model import FlowModel

SHAPE = (4, 4, 4)  # H, W, C of the test event


def _perturb(params, key, scale=0.3):
    """Random non-trivial parameters (the fixed permutation stays a permutation).
    numpy's generator, seeded from `key`: jax.random would compile a program per leaf."""
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).tolist())
    leaves, tree = jax.tree_util.tree_flatten_with_path(params)
    new = [leaf if getattr(path[-1], "key", None) == "perm" else
           np.asarray(leaf) + scale * rng.normal(size=leaf.shape).astype(np.float32)
           for path, leaf in leaves]
    return jax.tree_util.tree_unflatten(tree, new)


def _x(shape=SHAPE, seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed), (2, *shape))


def _coupling(kind):
    config = FlowConfig(coupling=kind, hidden=8, blocks=1)
    params = init_coupling(jax.random.PRNGKey(1), config, _x())
    return coupling(_perturb(params, jax.random.PRNGKey(2), 0.1), config, SHAPE[-1])


BIJECTORS = {
    "squeeze": lambda: Squeeze(),
    "actnorm": lambda: ActNorm(_perturb(init_actnorm(_x()), jax.random.PRNGKey(3))),
    "conv1x1-identity": lambda: Conv1x1(_perturb(init_conv1x1(jax.random.PRNGKey(4), 4),
                                                 jax.random.PRNGKey(5))),
    "conv1x1-orthogonal": lambda: Conv1x1(_perturb(
        init_conv1x1(jax.random.PRNGKey(4), 4, "orthogonal"), jax.random.PRNGKey(5))),
    "coupling-spline": lambda: _coupling("spline"),
    "coupling-affine": lambda: _coupling("affine"),
    "factor-out": lambda: FactorOut(ActNorm(_perturb(init_actnorm(_x()[..., 2:]),
                                                     jax.random.PRNGKey(6)))),
}


def _check_bijector(bijector, x, event_shape, jacobian=jax.jacfwd):
    y, log_det = jax.jit(bijector.forward_and_log_det)(x)
    back, inv_log_det = jax.jit(bijector.inverse_and_log_det)(y)
    assert float(jnp.max(jnp.abs(back - x))) < 1e-4
    np.testing.assert_allclose(inv_log_det, -log_det, atol=1e-3)
    size = int(np.prod(event_shape))

    def flat_forward(v):
        return bijector.forward(v.reshape(event_shape)).reshape(-1)

    # One program for the whole batch: each event's Jacobian, vmapped.
    jacobians = jax.jit(jax.vmap(jacobian(flat_forward)))(x.reshape(x.shape[0], -1))
    assert jacobians.shape == (x.shape[0], size, size)
    _, expected = jnp.linalg.slogdet(jacobians)
    np.testing.assert_allclose(log_det, expected, rtol=0, atol=1e-3)


@pytest.mark.parametrize("name", sorted(BIJECTORS))
def test_round_trip_and_log_det(name):
    jacobian = jax.jacrev if name.startswith("coupling") else jax.jacfwd
    _check_bijector(BIJECTORS[name](), _x(), SHAPE, jacobian)


@pytest.mark.parametrize("kind", ["spline", "affine"])
def test_whole_flow_round_trip_and_log_det(kind):
    model = FlowModel(FlowConfig(levels=2, steps=2, hidden=8, coupling=kind), 8, 8)
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 8, 8, 1))
    params = _perturb(model.init(jax.random.PRNGKey(1), x), jax.random.PRNGKey(2), 0.05)
    _check_bijector(model.bijector(params), x - 0.5, (8, 8, 1), jax.jacrev)
    z = model.encode(params, x)
    assert z.shape == (2, 64)
    assert float(jnp.max(jnp.abs(model.encode(params, model.decode(params, z)) - z))) < 1e-4


def test_batches_go_through_in_chunks_on_the_cpu_with_the_same_values(monkeypatch):
    from bh_jax.flows import model as model_module

    model = FlowModel(FlowConfig(levels=2, steps=2, hidden=8), 8, 8)
    x = jax.random.uniform(jax.random.PRNGKey(0), (2, 3, 8, 8, 1))  # 6 images, 2 lead axes
    params = _perturb(model.init(jax.random.PRNGKey(1), x[0]), jax.random.PRNGKey(2),
                      0.05)
    z = jax.random.normal(jax.random.PRNGKey(3), (2, 3, 64))

    def everything():  # traced anew on each call: the chunk size is read when tracing
        return jax.jit(lambda p, v, w: (
            model.log_prob(p, v), model.encode(p, v), model.decode(p, w)))(params, x, z)

    assert model.chunk_size(6) == 6
    whole = everything()
    per_image = 4 * 4 * 4 * 8  # the finest level's activations: 4 x 4 pixels x 8 hidden
    monkeypatch.setattr(model_module, "CPU_CHUNK_BYTES", 4 * per_image)
    jax.clear_caches()  # the model's jitted methods hold traces made with the old size
    assert [model.chunk_size(n) for n in (6, 8, 7, 3)] == [3, 4, 1, 3]
    assert "while" in jax.jit(model.encode).lower(params, x).as_text()  # the chunks: a loop
    for a, b in zip(whole, everything()):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)  # float32, another fusion
    monkeypatch.undo()
    jax.clear_caches()  # no later test gets a trace made with the small chunks


def test_actnorm_init_normalises_batch():
    x = 3.0 + 2.0 * _x()
    y = ActNorm(init_actnorm(x)).forward(x)
    np.testing.assert_allclose(jnp.mean(y, axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(jnp.std(y, axis=(0, 1, 2)), 1.0, atol=1e-4)


def test_couplings_start_as_identity():
    config = FlowConfig(coupling="spline", hidden=8)
    x = _x()
    layer = coupling(init_coupling(jax.random.PRNGKey(0), config, x), config, SHAPE[-1])
    y, log_det = layer.forward_and_log_det(x)
    np.testing.assert_allclose(y, x, atol=1e-5)
    np.testing.assert_allclose(log_det, 0.0, atol=1e-4)


def test_model_rejects_sizes_it_cannot_squeeze():
    with pytest.raises(ValueError, match="divisible"):
        FlowModel(FlowConfig(levels=3), 36, 32)
    with pytest.raises(ValueError, match="minimum size"):
        FlowModel(FlowConfig(levels=3), 8, 0)


def _dot_precisions(jaxpr) -> list:
    """The `precision` of every dot_general in a jaxpr, sub-jaxprs included."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(eqn.params["precision"])
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", value)
            if hasattr(inner, "eqns"):
                found += _dot_precisions(inner)
    return found


@pytest.mark.parametrize("direction", ["forward", "inverse"])
def test_conv1x1_multiplies_at_full_float32_precision(direction):
    """On a GPU the default precision is TF32, and the round trip then missed x by up to
    1.5e-3 (this file's round-trip tests, measured on an H100); the CPU cannot show that
    error, so check that every product of the 1x1 convolution asks for HIGHEST."""
    bijector = Conv1x1(_perturb(init_conv1x1(jax.random.PRNGKey(4), 4), jax.random.PRNGKey(5)))
    jaxpr = jax.make_jaxpr(getattr(bijector, direction))(_x()).jaxpr
    precisions = _dot_precisions(jaxpr)
    assert len(precisions) >= 2  # composing the matrix and applying it
    highest = jax.lax.Precision.HIGHEST
    assert all(p is not None and all(q == highest for q in np.atleast_1d(p))
               for p in precisions), precisions
