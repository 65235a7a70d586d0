"""Benchmarks and experiments (long runs; never part of the test suite's timings).

The functions behind `bh-bench` (`python -m bh_jax.bench`; bh_jax/cli/bench.py):
`flow` and `harmonize` (speed and memory), `sweep` (settings on the validation
subjects), `prior` (what the prior prefers), `quality` (the paper's tables on the
test subjects).
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from bh_jax.config import get_preset
from bh_jax.data.manifest import select, target_volumes
from bh_jax.data.phantom import ensure_phantom
from bh_jax.experiments.evaluate import (
    calibration_check,
    classical_methods,
    evaluate_methods,
    every_nth_slice,
    prior_check,
)
from bh_jax.experiments.tables import QUICK, reproduce_tables
from bh_jax.flows.model import FlowModel, count_params
from bh_jax.harmonize.calibration import negative_log_likelihood, source_knots
from bh_jax.harmonize.engine import Harmonizer
from bh_jax.harmonize.pipeline import harmonize_volumes
from bh_jax.harmonize.settings import (
    DEFAULT_SOLVER,
    SOLVERS,
    CalibrationConfig,
    Weights,
    default_settings,
)
from bh_jax.training.checkpoint import load_flow
from bh_jax.training.input_pipeline import SliceSet
from bh_jax.training.qc import contrast_check, sample_realism
from bh_jax.training.state import make_optimizer, make_train_step


def machine() -> str:
    device = jax.devices()[0]
    kind = getattr(device, "device_kind", device.platform)
    return (f"{jax.device_count()} x {kind} ({device.platform}), {os.cpu_count()} CPU cores, "
            f"{platform.processor() or platform.machine()}, jax {jax.__version__}")


def _stage(message: str) -> None:
    """Progress on stderr: compiling can take minutes on an accelerator."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def _timed(fn, *args, repeats: int = 3) -> tuple[float, float]:
    """(first call incl. compile, best of `repeats` later calls), seconds."""
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    first = time.perf_counter() - start
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        best = min(best, time.perf_counter() - start)
    return first, best


def _random_model(preset: str, batch: int):
    config = get_preset(preset)
    model = FlowModel(config.flow, config.data.height, config.data.width)
    x = jax.random.uniform(jax.random.PRNGKey(0), (batch, *model.image_shape))
    params = model.init(jax.random.PRNGKey(1), x)
    return config, model, params, x


def bench_flow(preset: str, batch: int, repeats: int) -> dict:
    """Parameters, compile time, training images/s, forward+inverse passes/s."""
    config, model, params, x = _random_model(preset, batch)
    state = {"params": params, "opt_state": make_optimizer(config.train).init(params),
             "step": jnp.zeros((), jnp.int32)}
    # The round trip first: timed after the much larger train step in the same
    # process, `reference` at batch 8 measured 0.70 instead of 0.86-0.89 slices/s
    # (2-core CPU).
    _stage(f"{preset} flow initialised, {count_params(params):,} params; timing the round trip")
    round_trip = jax.jit(lambda p, v: model.decode(p, model.encode(p, v)))
    rt_first, rt_best = _timed(round_trip, params, x, repeats=repeats)
    # The harmonizer relies on decode(encode(x)) == x; reduced-precision matmuls
    # (e.g. TF32 on a GPU, see JAX_DEFAULT_MATMUL_PRECISION) would show here.
    round_trip_error = float(jnp.max(jnp.abs(round_trip(params, x) - x)))
    _stage(f"round trip {batch / rt_best:.3g} slices/s; timing the train step")
    step = make_train_step(model, config.train)
    key = jax.random.PRNGKey(2)
    train_first, train_best = _timed(lambda: step(state, x, None, key)[1], repeats=repeats)
    return {"benchmark": "flow", "preset": preset, "image": list(model.image_shape[:2]),
            "batch": batch, "params": count_params(params),
            "train_compile_s": train_first - train_best, "train_images_per_s": batch / train_best,
            "fwd_inv_compile_s": rt_first - rt_best,
            "fwd_inv_slices_per_s": batch / rt_best, "round_trip_max_abs_error": round_trip_error,
            "matmul_precision": str(jax.config.jax_default_matmul_precision), "machine": machine()}


def _time_calibration(calibrator, images: np.ndarray, brains: np.ndarray,
                      repeats: int) -> dict:
    """Compile time and seconds of one evaluation of the intensity calibration's
    likelihood and gradient over its slice pool: the unit of the `curve`
    solver's per-volume fit (not in its slices/s). A fit takes 30 L-BFGS steps
    of one or more evaluations each (the line search's count depends on the
    flow and the volume, so random weights cannot time a whole fit)."""
    pool = np.resize(np.arange(len(images)), calibrator.config.pool)
    knots = jnp.asarray(source_knots(images, brains, calibrator.config.segments), jnp.float32)
    theta = jnp.zeros(calibrator.config.segments + 1)
    evaluate = jax.jit(jax.value_and_grad(lambda t: negative_log_likelihood(
        calibrator.model, calibrator.params, t, images[pool], brains[pool], knots)))
    first, best = _timed(evaluate, theta, repeats=repeats)
    return {"calibration_compile_s": first - best, "calibration_eval_s": best}


def bench_harmonize(preset: str, batch: int, steps: int | None, repeats: int,
                    memory_only: bool = False, solvers: list[str] | None = None) -> list[dict]:
    """Slices/s and XLA's memory plan of each solver (default: all, in `SOLVERS`'
    order) with its default settings.

    Random weights: speed and memory only. `memory_only` skips the timing
    (one compilation per solver), to choose a batch size for a device.
    """
    config, model, params, x = _random_model(preset, batch)
    images = np.asarray(x[..., 0])
    brains = np.ones_like(images, bool)
    rows = []
    for solver in solvers or SOLVERS:
        settings = default_settings(solver)
        if steps:
            settings = replace(settings, steps=steps)
        harmonizer = Harmonizer(model, params, settings, batch_size=batch)
        row = {"benchmark": "harmonize", "preset": preset, "solver": solver,
               "steps": settings.steps, "batch": batch}
        if not memory_only:
            first, best = _timed(harmonizer.harmonize_slices, images, brains, images,
                                 repeats=repeats)
            row.update(compile_s=first - best, slices_per_s=batch / best)
            if harmonizer.calibrator is not None:
                row.update(_time_calibration(harmonizer.calibrator, images, brains, repeats))
        memory = harmonizer.memory_mib()
        row.update(memory_mib=sum(memory.values()), temporaries_mib=memory["temporaries"],
                   machine=machine())
        rows.append(row)
        _stage(json.dumps(row))
    return rows


def _evaluation(checkpoint: str, data_dir: str | None, phantom_seed: int | None = None):
    """(the prior, the built-in data set's manifest); with `phantom_seed`, the data set's
    subjects drawn with that seed instead of the prior's (a fresh sample)."""
    flow = load_flow(checkpoint)
    phantom = flow.config.phantom.evaluation()
    if phantom_seed is not None:
        phantom = replace(phantom, seed=phantom_seed)
    manifest = ensure_phantom(data_dir or f"data/phantom-{flow.config.name}", phantom,
                              flow.config.name)
    return flow, manifest


def study(harmonize_main, checkpoint: str, data_dir: str | None, out: str, volumes: int,
          methods: list[str], site: str, batch: int) -> list[dict]:
    """End to end, as a user runs it: `harmonize.py` over a study of `volumes` scans of
    one site (the built-in test subjects of `site`, copied under new names until there
    are `volumes`), once per method, each into its own folder. Per method: the run's
    seconds, volumes per minute, and where the time went: in the main thread, the site
    curve fit, harmonizing (summed over the volumes' reports; compiling included),
    building report.html, and the rest (loading the prior, waiting for the first scans
    and the last writes); in the background threads, overlapped with the main one,
    loading the scans (to the prior's grid) and writing the outputs.
    `harmonize_main`: harmonize.py's `main(argv)` (the command lines sit above this
    layer and pass it in)."""
    from bh_jax.harmonize.report import build_report

    _, manifest = _evaluation(checkpoint, data_dir)
    entries = select(manifest, "test", site)
    if not entries:
        raise ValueError(f"no test images of site {site!r} in the built-in data set")
    scans, masks = Path(out, "study", site), Path(out, "study-masks")
    for folder in (scans, masks):
        folder.mkdir(parents=True, exist_ok=True)
    for index in range(volumes):
        entry = entries[index % len(entries)]
        for folder, source in ((scans, entry["path"]), (masks, entry["mask"])):
            copy = folder / f"scan-{index:04d}.nii.gz"
            if not copy.exists():  # copies: a run resolves links to one input
                shutil.copyfile(source, copy)
    rows = []
    for method in methods:
        target = Path(out, method)
        _stage(f"{method}: {volumes} volumes -> {target}")
        start = time.perf_counter()
        code = harmonize_main([str(scans), "--mask-dir", str(masks), "--output-dir", str(target),
                         "--method", method, "--checkpoint", checkpoint, "--batch-size",
                         str(batch), "--overwrite", "--no-progress", "--no-report"])
        report_start = time.perf_counter()
        build_report(target)
        report_s = time.perf_counter() - report_start
        seconds = time.perf_counter() - start
        reports = [json.loads(p.read_text()) for p in target.glob("*_harmonized.json")]
        parts = {k: sum(r["timings"].get(k, 0.0) for r in reports)
                 for k in ("load_s", "harmonize_s", "write_s")}
        record = json.loads((target / "run.json").read_text())
        fit = record.get("site_curves_seconds", 0.0)
        rows.append({"method": method, "volumes": len(reports), "exit": code,
                     "seconds": seconds, "volumes_per_min": 60 * len(reports) / seconds,
                     "site_curve_s": fit, "harmonize_s": parts["harmonize_s"],
                     "report_s": report_s,
                     "rest_s": seconds - fit - parts["harmonize_s"] - report_s,
                     "background_load_s": parts["load_s"],
                     "background_write_s": parts["write_s"], "machine": machine()})
        _stage(json.dumps(rows[-1]))
    return rows


SWEEP_SITES = ["exp", "log", "gamma0.7", "siteA", "siteB", "siteC", "siteD"]


def quality(checkpoint: str, data_dir: str | None, out: str, batch: int, quick: bool = False,
            slice_stride: int = 1, baseline_steps: int | None = None,
            solver: str = DEFAULT_SOLVER, init: str | None = None,
            sites: list[str] | None = None, each_volume: bool = False,
            heldout_maps: bool = False, split: str = "test", learned: bool = True,
            phantom_seed: int | None = None, **baselines) -> dict:
    """The paper's tables on the `split` subjects' `sites` (default all;
    `experiments.tables`), BlindHarmony with `solver`'s default settings (and
    `init`, if given; with `each_volume`, one intensity curve per volume instead
    of one per site), and the held-out maps' table if asked; --quick: a tiny run.
    `phantom_seed`: the built-in data set's subjects drawn with another seed than
    the prior's (a fresh sample, never used to choose anything)."""
    flow, manifest = _evaluation(checkpoint, data_dir, phantom_seed)
    settings = default_settings(solver, init=init, calibration=CalibrationConfig(shared=False)
                                if each_volume else None)
    if quick:
        settings = replace(settings, steps=QUICK["solver_steps"], calibration=replace(
            settings.calibration, **QUICK["calibration"]))
        baseline_steps = QUICK["baseline_steps"]
        slice_stride = max(slice_stride, QUICK["slice_stride"])
    result = reproduce_tables(flow, manifest, out, settings, batch, baseline_steps=baseline_steps,
                              slice_stride=slice_stride, sites=sites,
                              heldout_maps=heldout_maps, split=split, learned=learned,
                              **baselines)
    result["machine"] = machine()
    return result


def _validation_scores(flow, manifest, harmonizer, weights, slice_stride: int,
                       sites: list[str]) -> dict:
    """HM and BlindHarmony (`harmonizer` at `weights`) on the VALIDATION subjects' `sites`."""
    def blindharmony(volumes):
        with tqdm(total=sum(len(p.slices) for p in volumes), unit="slice",
                  desc="blindharmony") as bar:
            results = harmonize_volumes(harmonizer, volumes, flow.reference, bar, weights)
        return [r.slices for r in results]

    methods = {"HM": classical_methods(flow.reference)["HM"], "BlindHarmony": blindharmony}
    return evaluate_methods(manifest, flow.config.data, methods, sites=sites, split="val",
                            slice_stride=slice_stride)


def sweep(checkpoint: str, data_dir: str | None, batch: int, b2s, alphas, lrs, steps,
          slice_stride: int = 1, solver: str = "latent", init: str | None = None,
          calibrations=(None,), sites=SWEEP_SITES) -> list[dict]:
    """Grid over (b2, alpha, learning rate, steps) of `solver` (from `init`, default the
    solver's), and over `calibrations` (`CalibrationConfig`s of the 'calibrated'
    start; None: the default), on the VALIDATION subjects' `sites`.

    One compiled harmonizer per (calibration, learning rate, steps): the weights are data.
    """
    flow, manifest = _evaluation(checkpoint, data_dir)
    rows = []
    for calibration, lr, n in itertools.product(calibrations, lrs, steps):
        settings = default_settings(solver, learning_rate=lr, steps=n, init=init,
                                    calibration=calibration)
        harmonizer = Harmonizer(flow.model, flow.params, settings, batch)
        for b2, alpha in itertools.product(b2s, alphas):
            out = _validation_scores(flow, manifest, harmonizer, Weights(1.0, b2, alpha),
                                     slice_stride, sites)
            bh = [out[s]["BlindHarmony"]["psnr"] for s in out]
            hm = [out[s]["HM"]["psnr"] for s in out]
            row = {"solver": solver, "init": settings.init, "b2": b2, "alpha": alpha,
                   "learning_rate": lr, "steps": n,
                   **({f"calibration_{k}": v for k, v in asdict(settings.calibration).items()}
                      if settings.init == "calibrated" else {}),
                   "mean_psnr": float(np.mean(bh)),
                   "mean_gain_over_hm": float(np.mean(bh) - np.mean(hm)),
                   **{f"{s}_psnr": out[s]["BlindHarmony"]["psnr"] for s in out}}
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def prior(checkpoint: str, data_dir: str | None, batch: int, slice_stride: int = 1
          ) -> dict[str, list[dict]]:
    """The prior on the VALIDATION subjects: truth vs HM vs Source vs the oracle
    affine map (`evaluate.prior_check`), and its preferred contrast
    (`evaluate.contrast_check`), how realistic its samples are
    (`qc.sample_realism`), and whether the intensity calibration leaves
    the target's own images alone (`evaluate.calibration_check`)."""
    flow, manifest = _evaluation(checkpoint, data_dir)
    results = prior_check(flow, manifest, SWEEP_SITES, "val", slice_stride, batch)
    kinds = [("Truth", ("bpd", "z2")), *((k, ("bpd", "z2", "psnr"))
                                         for k in ("HM", "Source", "Affine"))]
    sites = [{"site": site, **{f"{kind}_{k}": r[kind][k] for kind, keys in kinds for k in keys},
              "truth_preferred_bpd": r["truth_preferred_bpd"],
              "truth_preferred_z2": r["truth_preferred_z2"], "slices": r["slices"]}
             for site, r in results.items()]
    target = SliceSet.from_volumes([every_nth_slice(v, slice_stride) for v in
                                    target_volumes(manifest, flow.config.data, "val")])
    contrast = contrast_check(flow.model, flow.params, target.slices, target.masks,
                              batch_size=batch)
    # The same 16 training subjects' slices for every prior, however many it saw.
    training = SliceSet.from_volumes(target_volumes(manifest, flow.config.data, "train"))
    realism = sample_realism(flow.model, flow.params, training.slices, target.slices)
    return {"sites": sites, "contrast": contrast, "realism": [realism],
            "calibration": calibration_check(flow, manifest, "val", slice_stride)}
