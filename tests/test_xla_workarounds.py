"""The XLA flags set on import keep the CPU programs that crashed running."""

import math
import os
import subprocess
import sys

# The flow's forward pass vmapped over one slice of two images: what each of 8
# simulated devices runs in the curve solver's diagnostics. With YNNPACK's
# fusions on (jaxlib 0.10.2's default), XLA:CPU segfaulted on it on an AMD EPYC.
_SNIPPET = """
import bh_jax, jax, jax.numpy as jnp, numpy as np
flow = bh_jax.load_flow(bh_jax.pretrained.path("demo"))
x = np.random.default_rng(0).uniform(0, 1, (1, 2, 64, 64, 1)).astype(np.float32)
forward = jax.jit(jax.vmap(lambda p, x: flow.model.bijector(p).forward(x - 0.5).sum(),
                           in_axes=(None, 0)))
print(float(forward(flow.params, jnp.asarray(x))[0]))
"""


def _run(code: str, xla_flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "XLA_FLAGS": xla_flags, "JAX_PLATFORMS": "cpu"}
    env.pop("BH_JAX_KEEP_XLA_FLAGS", None)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=300)


def test_importing_bh_jax_adds_the_flags_and_keeps_the_users():
    code = "import os, bh_jax; print(os.environ['XLA_FLAGS'])"
    flags = _run(code, "--xla_force_host_platform_device_count=2").stdout.split()
    assert flags[0] == "--xla_force_host_platform_device_count=2"
    assert "--xla_cpu_enable_concurrency_optimized_scheduler=false" in flags
    # A user's own setting of a flag wins.
    own = "--xla_cpu_enable_concurrency_optimized_scheduler=true"
    flags = _run(code, own).stdout.split()
    assert own in flags and "--xla_cpu_enable_concurrency_optimized_scheduler=false" not in flags


def test_the_program_that_crashed_runs():
    result = _run(_SNIPPET, "")
    assert result.returncode == 0, result.stderr[-2000:]
    assert math.isfinite(float(result.stdout.split()[-1]))
