"""Data parallelism over all devices: batches sharded, parameters replicated.

The same code runs on 1 CPU, 8 GPUs or a TPU slice. For several hosts, call
`jax.distributed.initialize()` first (train.py / harmonize.py --distributed);
every process then holds the rows of the global batch that its devices own.
"""

from __future__ import annotations

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
