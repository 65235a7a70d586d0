"""Checkpoints shipped with bh_jax, and how they are made.

    flow = bh_jax.load_flow(bh_jax.pretrained.path("demo"))

Each `bh_jax/pretrained/<name>/` is a training folder of train.py reduced to
what harmonize.py needs (config.json, reference.npz, metrics.json,
samples.png and the best orbax state) plus PROVENANCE.json: the command that
trained it, the code version, its validation bits/dim, training time and
machine. `validation_bpd` recomputes the figure a test compares against, so a
change that silently breaks old checkpoints fails CI.

Make one from a training folder:

    python -m bh_jax.pretrained export runs/demo-v2 --name demo \\
        --command "python train.py --data phantom --preset demo --workdir runs/demo-v2" \\
        --training-time "57 min 49 s (4500 steps)" --machine "2-core CPU"
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

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
    import jax

    from bh_jax.checkpoint import load_flow
    from bh_jax.config import get_preset
    from bh_jax.input_pipeline import phantom_slices
    from bh_jax.sharding import data_mesh
    from bh_jax.train import evaluate, make_eval_step

    flow = load_flow(workdir)
    config = replace(get_preset(preset), data=flow.config.data)
    with tempfile.TemporaryDirectory() as tmp:
        _, val = phantom_slices(config, data_dir or tmp, progress=False)
    return evaluate(make_eval_step(flow.model), flow.params, val,
                    flow.config.train.batch_size, data_mesh(jax.devices()[:1]))


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def export(workdir: str | Path, name: str, command: str, training_time: str,
           machine: str) -> Path:
    """Copies the best state of a training folder to `bh_jax/pretrained/<name>`
    with its provenance."""
    import bh_jax
    from bh_jax.checkpoint import load_flow

    workdir = Path(workdir)
    flow = load_flow(workdir)  # fails early on an unusable folder
    out = ROOT / name
    tmp = ROOT / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for file in _COPIED:
        if (workdir / file).is_file():
            shutil.copy2(workdir / file, tmp / file)
    step = flow.identity["step"]
    shutil.copytree(workdir / flow.identity["which"] / str(step), tmp / "best" / str(step))
    metrics = json.loads((workdir / "metrics.json").read_text())
    record = {
        "name": name, "command": command, "bh_jax_version": bh_jax.__version__,
        "exported_at_commit": _git_commit(), "step": step, "preset": flow.config.name,
        "params": metrics.get("params"), "best_val_bpd": metrics.get("best_val_bpd"),
        "training_time": training_time, "machine": machine,
        "tiny_val_bpd": validation_bpd(tmp, "tiny"),
        "size_bytes": sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file()),
    }
    (tmp / PROVENANCE_FILE).write_text(json.dumps(record, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bh_jax.pretrained", description=__doc__)
    sub = parser.add_subparsers(dest="command_name", required=True)
    sub.add_parser("list", help="the shipped checkpoints and their provenance")
    ex = sub.add_parser("export", help="ship the best state of a training folder")
    ex.add_argument("workdir")
    ex.add_argument("--name", required=True)
    ex.add_argument("--command", required=True, help="the command that trained it")
    ex.add_argument("--training-time", required=True)
    ex.add_argument("--machine", required=True)
    args = parser.parse_args(argv)
    if args.command_name == "list":
        for name in available():
            print(name, json.dumps(provenance(name), indent=2))
        return 0
    out = export(args.workdir, args.name, args.command, args.training_time, args.machine)
    print(f"exported {args.workdir} -> {out}")
    print((out / PROVENANCE_FILE).read_text())
    return 0

