"""Stage-by-stage flow timings on an accelerator, printed as each stage ends.

    JAX_LOG_COMPILES=1 python tools/gpu_probe.py              # demo:64 reference:16
    python tools/gpu_probe.py demo:64                          # one preset:batch

`python -m bh_jax.bench flow` prints only when all its stages are done; on the
H100 lent to one session its compilations outlasted the device's per-call limit,
so this script prints after every stage (init, encode, decode, gradient of the
log-likelihood) and gives figures for whatever finished. The README's GPU
figures come from it (see "Speed").
"""

import sys
import time

import jax
import jax.numpy as jnp

from bh_jax.config import get_preset
from bh_jax.flows.model import FlowModel

START = time.time()


def log(message: str) -> None:
    print(f"[{time.time() - START:7.1f}s] {message}", flush=True)


def rate(fn, *args, calls: int, batch: int) -> float:
    """Slices per second over `calls` calls of an already compiled `fn`."""
    start = time.time()
    for _ in range(calls):
        jax.block_until_ready(fn(*args))
    return calls * batch / (time.time() - start)


def probe(preset: str, batch: int) -> None:
    config = get_preset(preset)
    model = FlowModel(config.flow, config.data.height, config.data.width)
    x = jax.random.uniform(jax.random.PRNGKey(0), (batch, *model.image_shape))
    log(f"{preset} b{batch} init")
    params = jax.block_until_ready(jax.jit(model.init)(jax.random.PRNGKey(1), x))
    log("init done")
    encode = jax.jit(model.encode)
    z = jax.block_until_ready(encode(params, x))
    log("encode compiled")
    log(f"encode {rate(encode, params, x, calls=5, batch=batch):.1f} slices/s")
    decode = jax.jit(model.decode)
    y = jax.block_until_ready(decode(params, z))
    log(f"decode compiled; round-trip max err {float(jnp.max(jnp.abs(y - x))):.2e}")
    log(f"decode {rate(decode, params, z, calls=5, batch=batch):.1f} slices/s")
    grad = jax.jit(jax.grad(lambda p, v: jnp.mean(model.log_prob(p, v))))
    jax.block_until_ready(grad(params, x))
    log("grad log_prob compiled")
    log(f"grad log_prob {rate(grad, params, x, calls=3, batch=batch):.1f} images/s")


if __name__ == "__main__":
    for spec in sys.argv[1:] or ["demo:64", "reference:16"]:
        preset, batch = spec.split(":")
        probe(preset, int(batch))
