"""A checkpoint folder: everything harmonize.py needs, and what resumes training.

    WORKDIR/config.json      the `Config` (typed, versioned)
    WORKDIR/reference.npz    target statistics of the training slices
    WORKDIR/latest/<step>/   the last `keep_last` train states (orbax)
    WORKDIR/best/<step>/     the train state with the best validation bits/dim
    WORKDIR/metrics.json     training history
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from bh_jax.config import Config
from bh_jax.flows.model import FlowModel
from bh_jax.io import write_json_atomic
from bh_jax.reference import TargetReference
from bh_jax.training.state import abstract_state

CONFIG_FILE = "config.json"
REFERENCE_FILE = "reference.npz"
METRICS_FILE = "metrics.json"
# A checkpoint on disk against its arrays' bytes (metadata, OCDBT overhead).
SPACE_MARGIN = 1.2


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be used; the message names it."""


def save_config(workdir: Path, config: Config) -> None:
    (workdir / CONFIG_FILE).parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(workdir / CONFIG_FILE, config.to_dict())


def read_config(workdir: Path) -> Config:
    path = Path(workdir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: not found; is {workdir} a bh_jax training folder?")
    try:
        return Config.from_json(path.read_text())
    except (ValueError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: {err}") from None


def _val_bpd(metrics: dict) -> float:
    """What 'best' means: the lowest validation bits/dim."""
    return metrics["val_bpd"]


class StateCheckpoints:
    """The 'latest' and 'best' orbax managers of one training folder."""

    def __init__(self, workdir: Path, keep_last: int):
        workdir = Path(workdir).absolute()
        self.latest = ocp.CheckpointManager(
            workdir / "latest", options=ocp.CheckpointManagerOptions(max_to_keep=keep_last))
        self.best = ocp.CheckpointManager(
            workdir / "best", options=ocp.CheckpointManagerOptions(
                max_to_keep=1, best_fn=_val_bpd, best_mode="min"))

    def save(self, step: int, state: Any, val_bpd: float | None = None) -> None:
        """Saves and waits until the step is committed, so that what is written
        after it (metrics.json) never runs ahead of the checkpoints.

        Raises:
          OSError (ENOSPC, naming the step's folder): the disk lacks room for it. Checked
            first: orbax's writers, failing midway, print hundreds of lines of tracebacks
            from their threads before the error reaches the caller."""
        copies = 2 if val_bpd is not None else 1
        # The arrays' own byte counts: no copy to the host.
        needed = copies * SPACE_MARGIN * sum(x.nbytes for x in jax.tree.leaves(state))
        folder = Path(self.latest.directory)
        if shutil.disk_usage(folder).free < needed + (1 << 20):
            raise OSError(errno.ENOSPC, "No space left on device", str(folder / str(step)))
        # Host copies: orbax saves a jax.Array replicated over N devices as N slices,
        # each cut by an eager op (2880 of them, 3.4 s of a 1-step run on 8 CPU devices).
        # Arrays spanning other hosts (jax.distributed) cannot be fetched; orbax saves those.
        state = jax.tree.map(
            lambda x: jax.device_get(x) if getattr(x, "is_fully_addressable", True) else x, state)
        self.latest.save(step, args=ocp.args.StandardSave(state))
        if val_bpd is not None:
            self.best.save(step, args=ocp.args.StandardSave(state),
                           metrics={"val_bpd": float(val_bpd)})
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def latest_step(self) -> int | None:
        return self.latest.latest_step()

    def restore_latest(self, abstract_state: Any) -> tuple[int, Any]:
        """(step, state) of the latest checkpoint, to resume training."""
        step = self.latest.latest_step()
        if step is None:
            raise CheckpointError(f"{self.latest.directory}: no checkpoint saved yet")
        return step, self.latest.restore(step, args=ocp.args.StandardRestore(abstract_state))

    def close(self) -> None:
        self.latest.wait_until_finished()
        self.best.wait_until_finished()
        self.latest.close()
        self.best.close()


def folder_digest(folder: str | Path) -> str:
    """SHA-256 of a folder's files (relative paths and contents, in sorted order):
    what exactly a checkpoint held, for reports. Hidden files are left out."""
    digest = hashlib.sha256()
    folder = Path(folder)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()
                       and not any(part.startswith(".") for part in p.relative_to(folder).parts)):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def saved_step(workdir: str | Path) -> int | None:
    """The latest committed training step in a workdir, or None."""
    steps = _steps(Path(workdir) / "latest")
    return steps[-1] if steps else None


def _steps(folder: Path) -> list[int]:
    """The completed checkpoint steps in an orbax manager's folder."""
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir()
                  if p.name.isdigit() and (p / "_CHECKPOINT_METADATA").is_file())


@dataclass
class LoadedFlow:
    """A trained prior ready to use: model, params, config and target statistics."""

    config: Config
    model: FlowModel
    params: dict
    reference: TargetReference
    identity: dict[str, Any]

    @property
    def voxel_mm(self) -> float | None:
        """The prior's grid: its training volumes' voxel size as recorded (the largest
        axis, for volumes that were not isotropic), else its preset's; None if neither."""
        recorded = np.asarray(self.reference.voxel_mm, float)
        if np.all(np.isfinite(recorded)):
            return float(recorded.max())
        return self.config.data.voxel_mm


def load_flow(workdir: str | Path, which: str = "best") -> LoadedFlow:
    """Loads the best (or latest) flow parameters of a training folder.

    Raises:
      CheckpointError: a missing or incompatible folder, with its path.
    """
    workdir = Path(workdir)
    config = read_config(workdir)
    model = FlowModel(config.flow, config.data.height, config.data.width)
    reference_path = workdir / REFERENCE_FILE
    if not reference_path.is_file():
        raise CheckpointError(f"{reference_path}: not found")
    if which == "best" and not _steps(workdir / "best"):
        which = "latest"
    if not _steps(workdir / which):
        raise CheckpointError(f"{workdir / which}: no checkpoint saved yet")
    # Read-only: a shipped or shared checkpoint folder is never written to.
    # (orbax logs a warning for every read-only manager; nothing is wrong.)
    absl_logger = logging.getLogger("absl")
    previous_level = absl_logger.level
    absl_logger.setLevel(logging.ERROR)
    try:
        manager = ocp.CheckpointManager(
            (workdir / which).absolute(), options=ocp.CheckpointManagerOptions(
                read_only=True, create=False, best_fn=_val_bpd, best_mode="min"))
    finally:
        absl_logger.setLevel(previous_level)
    try:
        step = manager.latest_step() if which == "latest" else manager.best_step()
        replicated = jax.sharding.SingleDeviceSharding(jax.devices()[0])
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
            abstract_state(model, config.train))
        try:
            state = manager.restore(step, args=ocp.args.StandardRestore(abstract))
        except Exception as err:  # orbax reports structure mismatches in many ways
            raise CheckpointError(f"{workdir}: checkpoint does not match its config.json "
                                  f"(written by another bh_jax version?): "
                                  f"{str(err).splitlines()[0][:200]}") from None
    finally:
        manager.close()
    metrics = {}
    if (workdir / METRICS_FILE).is_file():
        metrics = json.loads((workdir / METRICS_FILE).read_text())
    identity = {"workdir": str(workdir.absolute()), "which": which, "step": int(step),
                "preset": config.name, "best_val_bpd": metrics.get("best_val_bpd"),
                "sha256": folder_digest(workdir)}
    return LoadedFlow(config=config, model=model, params=state["params"],
                      reference=TargetReference.load(reference_path), identity=identity)
