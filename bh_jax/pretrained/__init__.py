"""Checkpoints shipped with bh_jax, and how they are made.

    flow = bh_jax.load_flow(bh_jax.pretrained.path("demo"))

Each `bh_jax/pretrained/<name>/` is a training folder of train.py reduced to
what harmonize.py needs (config.json, reference.npz, metrics.json,
samples.png and the best orbax state) plus PROVENANCE.json: the command that
trained it, the code version, its validation bits/dim, training time and
machine. `validation_bpd` recomputes the figure a test compares against, so a
change that silently breaks old checkpoints fails CI.

Make one from a training folder:

    bh-pretrained export runs/demo-v2 --name demo \\
        --command "bh-train --data phantom --preset demo --workdir runs/demo-v2" \\
        --training-time "57 min 49 s (4500 steps)" --machine "2-core CPU"
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from dataclasses import replace
from pathlib import Path

import jax

from bh_jax.config import get_preset
from bh_jax.sharding import data_mesh
from bh_jax.training.checkpoint import CheckpointError, LoadedFlow, load_flow
from bh_jax.training.input_pipeline import phantom_slices
from bh_jax.training.state import evaluate, make_eval_step
from bh_jax.version import __version__, code_version

ROOT = Path(__file__).parent
PROVENANCE_FILE = "PROVENANCE.json"
_COPIED = ("config.json", "reference.npz", "metrics.json", "samples.png")


def available() -> list[str]:
    """Names of the shipped checkpoints."""
    return sorted(p.name for p in ROOT.iterdir() if (p / PROVENANCE_FILE).is_file())


def path(name: str = "demo") -> Path:
    """The folder of a shipped checkpoint, for `bh_jax.load_flow` or --checkpoint."""
    folder = ROOT / name
    if not (folder / PROVENANCE_FILE).is_file():
        raise ValueError(f"no shipped checkpoint {name!r}; available: {available()}")
    return folder


def provenance(name: str = "demo") -> dict:
    return json.loads((path(name) / PROVENANCE_FILE).read_text())


def validation_bpd(workdir: str | Path, preset: str = "tiny",
                   data_dir: str | Path | None = None) -> float:
    """Bits/dim of a checkpoint on the target-site validation images of the
    built-in data set of `preset` (generated in `data_dir`, or a temporary
    folder), prepared at the checkpoint's slice size. The dequantisation noise
    is fixed, so the value is reproducible."""
    flow = load_flow(workdir)
    config = replace(get_preset(preset), data=flow.config.data)
    with tempfile.TemporaryDirectory() as tmp:
        _, val = phantom_slices(config, data_dir or tmp, progress=False)
    return evaluate(make_eval_step(flow.model), flow.params, val,
                    flow.config.train.batch_size, data_mesh(jax.devices()[:1]))


def export(workdir: str | Path, name: str, command: str, training_time: str,
           machine: str) -> Path:
    """Copies the best state of a training folder to `bh_jax/pretrained/<name>`
    with its provenance. A checkpoint of that name is replaced only once the copy
    is complete.

    Raises ValueError for a name that is not a plain folder name, CheckpointError
    for a folder that cannot be shipped (no checkpoint, no metrics.json); nothing is
    written then, and a copy that fails half-way is removed.
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(f"{name!r}: a checkpoint's name must be a plain folder name "
                         "(letters, digits, '_', '.', '-')")
    workdir = Path(workdir)
    flow = load_flow(workdir)  # fails early on an unusable folder
    metrics_file = workdir / "metrics.json"
    if not metrics_file.is_file():
        raise CheckpointError(f"{metrics_file}: not found")
    out = ROOT / name
    tmp = ROOT / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_export(workdir, flow, tmp, name, command, training_time, machine)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _write_export(workdir: Path, flow: LoadedFlow, tmp: Path, name: str, command: str,
                  training_time: str, machine: str) -> None:
    """The shipped folder's files and PROVENANCE.json, in `tmp`."""
    tmp.mkdir()
    for file in _COPIED:
        if (workdir / file).is_file():
            shutil.copy2(workdir / file, tmp / file)
    step = flow.identity["step"]
    shutil.copytree(workdir / flow.identity["which"] / str(step), tmp / "best" / str(step))
    metrics = json.loads((workdir / "metrics.json").read_text())
    record = {
        "name": name, "command": command, "bh_jax_version": __version__,
        "code_version": code_version(), "step": step, "preset": flow.config.name,
        "params": metrics.get("params"), "best_val_bpd": metrics.get("best_val_bpd"),
        "training_time": training_time, "machine": machine,
        "tiny_val_bpd": validation_bpd(tmp, "tiny"),
        "size_bytes": sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file()),
    }
    (tmp / PROVENANCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
