"""Carry a trained prior between machines as a few small files, and back.

    python tools/params_npz.py export WORKDIR FOLDER   # FOLDER: params.npz + the json/npz
    python tools/params_npz.py import FOLDER WORKDIR   # a training folder load_flow reads

A device run brings back at most 8 files of 16 MiB each; a training folder is
hundreds of orbax files with the optimiser's state. `export` keeps what using the
prior needs: the best params (float32, compressed; a leaf per tree path), config.json,
reference.npz and metrics.json. `import` rebuilds a folder with one checkpoint
(step and validation bits/dim from metrics.json) whose params are those, and a
fresh optimiser state (training it further restarts Adam's moments).
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bh_jax.flows.model import FlowModel
from bh_jax.training.checkpoint import (
    METRICS_FILE,
    REFERENCE_FILE,
    StateCheckpoints,
    load_flow,
    read_config,
)
from bh_jax.training.state import create_state

CARRIED = ("config.json", REFERENCE_FILE, METRICS_FILE)


def _flat(params) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return {jax.tree_util.keystr(path): np.asarray(leaf, np.float32) for path, leaf in leaves}


def export(workdir: Path, folder: Path) -> None:
    flow = load_flow(workdir)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(folder / "params.npz", **_flat(flow.params))
    for name in CARRIED:
        if (workdir / name).is_file():
            shutil.copy2(workdir / name, folder / name)
    print(f"{workdir} step {flow.identity['step']} -> {folder}")


def import_(folder: Path, workdir: Path) -> None:
    if workdir.exists():
        sys.exit(f"{workdir}: exists; give a new folder")
    workdir.mkdir(parents=True)
    for name in CARRIED:
        shutil.copy2(folder / name, workdir / name)
    config = read_config(workdir)
    model = FlowModel(config.flow, config.data.height, config.data.width)
    shape = (2, config.data.height, config.data.width, 1)
    state = create_state(model, config.train, jax.random.PRNGKey(0), jnp.ones(shape))
    saved = np.load(folder / "params.npz")
    leaves, treedef = jax.tree_util.tree_flatten_with_path(state["params"])
    keys = [jax.tree_util.keystr(path) for path, _ in leaves]
    if sorted(keys) != sorted(saved.files):
        sys.exit(f"{folder / 'params.npz'}: parameters do not match config.json's model")
    params = jax.tree_util.tree_unflatten(treedef, [jnp.asarray(saved[k]) for k in keys])
    metrics = json.loads((workdir / METRICS_FILE).read_text())
    step = int(metrics.get("best_step") or metrics["step"])
    state = {**state, "params": params, "step": jnp.asarray(step, jnp.int32)}
    checkpoints = StateCheckpoints(workdir, keep_last=1)
    try:
        checkpoints.save(step, state, metrics.get("best_val_bpd"))
    finally:
        checkpoints.close()
    print(f"{folder} -> {workdir} (step {step})")


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("export", "import"):
        sys.exit(__doc__)
    (export if sys.argv[1] == "export" else import_)(Path(sys.argv[2]), Path(sys.argv[3]))
