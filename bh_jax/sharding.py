"""Data parallelism over all devices: batches sharded, parameters replicated.

The same code runs on 1 CPU, 8 GPUs or a TPU slice. For several hosts, call
`jax.distributed.initialize()` first (train.py / harmonize.py --distributed);
every process then holds the rows of the global batch that its devices own.
"""

from __future__ import annotations

import sys
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1D mesh over `devices` (default: all devices of all processes)."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), (DATA_AXIS,))


def check_batch_size(mesh: Mesh, batch_size: int) -> None:
    if batch_size % mesh.size:
        raise ValueError(f"batch size {batch_size} must be a multiple of the number of "
                         f"devices ({mesh.size})")


def out_of_memory_message(err: BaseException, batch_size: int) -> str | None:
    """One line for the user if `err` is XLA failing to allocate memory for a
    batch program (on any device, the CPU included), else None.

    XLA reports it as a `JaxRuntimeError` when the result is first read, with
    a traceback that does not say what to change.
    """
    text = str(err)
    if not (isinstance(err, jax.errors.JaxRuntimeError)
            and ("RESOURCE_EXHAUSTED" in text or "Out of memory" in text)):
        return None
    device = jax.devices()[0]
    return (f"out of memory with batches of {batch_size} slices on {jax.device_count()} "
            f"{device.platform} device(s); lower --batch-size (XLA: "
            f"{text.strip().splitlines()[0]})")


def out_of_memory_exit(err: BaseException, batch_size: int) -> int:
    """For the command lines: prints `out_of_memory_message` as one `error:` line
    on stderr and returns exit status 2; re-raises any other error."""
    message = out_of_memory_message(err, batch_size)
    if message is None:
        raise err
    print(f"error: {message}", file=sys.stderr)
    return 2


def replicate(mesh: Mesh, tree: Any) -> Any:
    """Puts every leaf of `tree` on every device of the mesh."""
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def shard_batch(mesh: Mesh, batch: np.ndarray) -> jax.Array:
    """A global batch [B, ...] split along B over the mesh.

    Every process passes the same global batch; it contributes the rows its
    own devices hold (the standard multi-host recipe).
    """
    sharding = NamedSharding(mesh, PartitionSpec(DATA_AXIS))
    if jax.process_count() == 1:
        return jax.device_put(batch, sharding)
    per_process = batch.shape[0] // jax.process_count()
    start = jax.process_index() * per_process
    return jax.make_array_from_process_local_data(
        sharding, batch[start:start + per_process], batch.shape)
