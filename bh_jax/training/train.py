"""Training the flow prior: the loop, its checkpoints and metrics, the prior's QC.

`train` is resumable: run it again on the same
workdir and it continues from the latest checkpoint, drawing the same batches
and dequantisation noise as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from bh_jax.batching import batch_indices
from bh_jax.config import Config
from bh_jax.figures import new_figure, save_figure
from bh_jax.flows.model import FlowModel, count_params
from bh_jax.io import write_json_atomic
from bh_jax.reference import TargetReference
from bh_jax.sharding import check_batch_size, data_mesh, replicate, shard_batch
from bh_jax.training.checkpoint import (
    METRICS_FILE,
    REFERENCE_FILE,
    CheckpointError,
    StateCheckpoints,
    read_config,
    save_config,
)
from bh_jax.training.input_pipeline import SliceSet
from bh_jax.training.qc import contrast_check
from bh_jax.training.state import (
    abstract_state,
    create_state,
    evaluate,
    make_eval_step,
    make_train_step,
    state_from_params,
)

SAMPLE_TEMPERATURES = (0.5, 0.7, 0.85, 1.0)


def check_resume(workdir: str | Path, config: Config) -> None:
    """Raises CheckpointError if `workdir` is not a folder or holds a different
    model or slice size."""
    workdir = Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise CheckpointError(f"{workdir}: exists and is not a folder (--workdir)")
    if not (workdir / "config.json").is_file():
        return
    saved = read_config(workdir)
    if saved.flow != config.flow or saved.data != config.data:
        raise CheckpointError(
            f"{workdir}: holds a checkpoint of a different model or slice size "
            f"(saved preset {saved.name!r}); use another --workdir or the same settings")


def save_samples_png(model: FlowModel, params: dict, path: Path, seed: int = 0,
                     per_row: int = 6) -> Path:
    """A grid of samples, one row per temperature."""
    fig, axes = new_figure(len(SAMPLE_TEMPERATURES), per_row,
                           (1.6 * per_row, 1.6 * len(SAMPLE_TEMPERATURES)))
    for row, temperature in enumerate(SAMPLE_TEMPERATURES):
        images = np.asarray(model.sample(params, jax.random.PRNGKey(seed + row), per_row,
                                         temperature))
        for col in range(per_row):
            ax = axes[row, col]
            ax.imshow(np.rot90(np.clip(images[col, :, :, 0], 0, 1)), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
        axes[row, 0].set_ylabel(f"T = {temperature}", fontsize=9)
    return save_figure(fig, path)


def train(config: Config, workdir: str | Path, train_set: SliceSet, val_set: SliceSet,
          progress: bool = True, stop_at: int | None = None,
          devices: list | None = None, time_limit_s: float | None = None,
          init_params: dict | None = None, init_note: str | None = None) -> dict:
    """Trains (or resumes training) the flow prior in `workdir`.

    Args:
      config: model, data and optimisation settings; saved as config.json.
      workdir: checkpoint folder (created); if it holds a checkpoint of the same
        model, training resumes from its latest step.
      train_set, val_set: target-site slices.
      progress: show a progress bar.
      stop_at: stop (and checkpoint) after this step, as if interrupted.
      time_limit_s: stop (and checkpoint) after the first step that ends this many
        seconds after the loop started; the same call resumes. The learning-rate
        schedule stays the one of `config.train.steps`.
      devices: devices to shard batches over (default: all).
      init_params: start from these parameters (a trained prior of the same
        model: fine-tuning) instead of fresh ones; ignored when resuming.
      init_note: where `init_params` came from, recorded in metrics.json.
    Returns:
      The metrics written to workdir/metrics.json.
    """
    from tqdm.auto import tqdm

    workdir = Path(workdir).absolute()
    tc = config.train
    model = FlowModel(config.flow, config.data.height, config.data.width)
    if len(train_set) == 0 or len(val_set) == 0:
        raise ValueError("no training or validation slices")
    mesh = data_mesh(devices)
    check_batch_size(mesh, tc.batch_size)
    resuming = (workdir / "config.json").is_file()
    check_resume(workdir, config)
    save_config(workdir, config)
    TargetReference.from_slices(train_set.slices, train_set.masks, train_set.voxel_mm,
                                train_set.volumes).save(workdir / REFERENCE_FILE)

    checkpoints = StateCheckpoints(workdir, tc.keep_last)
    history: list[dict] = []
    metrics_path = workdir / METRICS_FILE
    try:
        key = jax.random.PRNGKey(tc.seed)
        if resuming and checkpoints.latest_step() is not None:
            abstract = jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                               sharding=jax.sharding.NamedSharding(
                                                   mesh, jax.sharding.PartitionSpec())),
                abstract_state(model, tc))
            restored, state = checkpoints.restore_latest(abstract)
            if metrics_path.is_file():  # up to the checkpoint: a kill may fall in between
                history = [h for h in json.loads(metrics_path.read_text()).get("history", [])
                           if h["step"] <= restored]
        elif init_params is not None:
            state = replicate(mesh, state_from_params(init_params, tc))
        else:
            init = train_set.slices[batch_indices(len(train_set), tc.batch_size, tc.seed + 1, 0)]
            state = replicate(mesh, create_state(model, tc, jax.random.PRNGKey(config.flow.seed),
                                                 jnp.asarray(init[..., None])))
        start = int(state["step"])
        end = tc.steps if stop_at is None else min(stop_at, tc.steps)
        train_step, eval_step = make_train_step(model, tc), make_eval_step(model)
        bar = tqdm(total=tc.steps, initial=start, desc="train", disable=not progress,
                   unit="step", dynamic_ncols=True)
        if start == 0 and not history:  # the starting point, for comparison
            history.append({"step": 0, "train_bpd": None, "images_per_s": None,
                            "val_bpd": evaluate(eval_step, state["params"], val_set,
                                                tc.batch_size, mesh)})
        tick, window_start = time.perf_counter(), start
        deadline = math.inf if time_limit_s is None else tick + time_limit_s
        for step in range(start, end):
            index = batch_indices(len(train_set), tc.batch_size, tc.seed, step)
            batch = shard_batch(mesh, train_set.slices[index][..., None])
            # No copy of the masks per step unless the loss reads them.
            masks = (shard_batch(mesh, train_set.masks[index][..., None])
                     if tc.reads_masks else None)
            state, bpd = train_step(state, batch, masks, key)
            done = step + 1
            if time.perf_counter() >= deadline:
                end = done
            if done % tc.eval_every == 0 or done == end:
                bpd = float(bpd)
                if not math.isfinite(bpd):
                    raise FloatingPointError(f"training diverged at step {done} (bpd {bpd}); "
                                             "lower train.learning_rate")
                val_bpd = evaluate(eval_step, state["params"], val_set, tc.batch_size, mesh)
                rate = tc.batch_size * (done - window_start) / (time.perf_counter() - tick)
                history.append({"step": done, "train_bpd": bpd, "val_bpd": val_bpd,
                                "images_per_s": rate})
                checkpoints.save(done, state, val_bpd)
                _write_metrics(metrics_path, model, state, history, init_note=init_note)
                tick, window_start = time.perf_counter(), done
                bar.set_postfix(bpd=f"{bpd:.3f}", val=f"{val_bpd:.3f}", img_s=f"{rate:.0f}")
            bar.update(1)
            if done == end:
                break
        bar.close()
        contrast = None
        if done_training := int(state["step"]) >= tc.steps:
            save_samples_png(model, state["params"], workdir / "samples.png", tc.seed)
            contrast = contrast_check(model, state["params"], val_set.slices, val_set.masks,
                                      batch_size=tc.batch_size)
        metrics = _write_metrics(metrics_path, model, state, history, finished=done_training,
                                 contrast=contrast, init_note=init_note)
    finally:
        checkpoints.close()
    return metrics


def _write_metrics(path: Path, model: FlowModel, state: dict, history: list[dict],
                   finished: bool = False, contrast: list[dict] | None = None,
                   init_note: str | None = None) -> dict:
    best = min(history, key=lambda h: h["val_bpd"]) if history else None
    metrics = {"step": int(state["step"]), "finished": finished,
               "params": count_params(state["params"]),
               "best_val_bpd": best["val_bpd"] if best else None,
               "best_step": best["step"] if best else None,
               "final_val_bpd": history[-1]["val_bpd"] if history else None,
               "history": history}
    if init_note is not None:
        metrics["initialised_from"] = init_note
    if contrast is not None:  # the finished prior's QC (`evaluate.contrast_check`)
        metrics["contrast_check"] = contrast
    write_json_atomic(path, metrics)
    return metrics
