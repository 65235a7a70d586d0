"""The suite draws with jax.random's "rbg" generator (tests/conftest.py: XLA:CPU compiles
it far faster); here, once, the library with jax's default generator, in a fresh process."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow  # a subprocess

# Every place the library draws: the flow's initialisation, dequantisation (training and
# evaluation) and sampling; the same key twice gives the same numbers.
_SNIPPET = """
import jax, numpy as np
assert jax.config.jax_default_prng_impl == "threefry2x32", jax.config.jax_default_prng_impl
from bh_jax.config import FlowConfig
from bh_jax.flows.model import FlowModel
from bh_jax.training.state import make_eval_step
model = FlowModel(FlowConfig(levels=1, steps=1, hidden=4), 8, 8)
x = np.random.default_rng(0).uniform(size=(4, *model.image_shape)).astype(np.float32)
params = model.init(jax.random.PRNGKey(0), x)
evaluate = make_eval_step(model)
bpd = [np.asarray(evaluate(params, x, jax.random.PRNGKey(1))) for _ in range(2)]
np.testing.assert_array_equal(*bpd)
assert np.all(np.isfinite(bpd[0])) and bpd[0].shape == (4,)
samples = [np.asarray(model.sample(params, jax.random.PRNGKey(2), 2, 0.7)) for _ in range(2)]
np.testing.assert_array_equal(*samples)
assert samples[0].shape == (2, *model.image_shape) and np.all(np.isfinite(samples[0]))
print("ok")
"""


def test_the_library_runs_with_jax_default_generator():
    env = {k: v for k, v in os.environ.items() if k != "JAX_DEFAULT_PRNG_IMPL"}
    result = subprocess.run([sys.executable, "-c", _SNIPPET], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"
