"""The paper's tables on the built-in data set (`bh-bench quality`).

Table 1: simulated shifts (exp, log, gamma 0.7 and, unseen, gamma 1.5);
Table 2: simulated scanners; Table 3: white-matter Dice of a target-trained
segmenter. Rows: Source, BlindHarmony, HM, Nyul (per scan and per site), SSIMH,
CycleGAN and U-net (both
trained with ONE source domain, exp by default), and a reference: the subject
at the target site with the population's typical tissue contrast
(`evaluate.typical_contrast_method`, what a blind method can aim at).
Held-out test subjects only; nothing is tuned on them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bh_jax import metrics
from bh_jax.baselines.learned import (
    BaselineConfig,
    is_trained,
    load_baseline,
    train_baseline,
)
from bh_jax.data.manifest import prepare_entry, select, wm_slices
from bh_jax.experiments.evaluate import (
    NYUL_PER_SITE,
    TYPICAL,
    as_evaluation,
    classical_methods,
    evaluate_methods,
    every_nth_slice,
    format_table,
    save_examples_png,
    typical_contrast_method,
)
from bh_jax.experiments.heldout import HELDOUT_MAPS, with_heldout_maps
from bh_jax.harmonize.methods import baseline_method, flow_method
from bh_jax.io import atomic_path, write_json_atomic

SHIFTS = ("exp", "log", "gamma0.7", "gamma1.5")
SCANNERS = ("siteA", "siteB", "siteC", "siteD")
# --quick: the test suite's runs (a handful of optimiser steps, every 4th slice).
QUICK = {"baseline_steps": 20, "solver_steps": 2, "slice_stride": 4,
         "calibration": {"steps": 2, "pool": 8, "field_steps": 2}}


def baseline_folder(out: Path, kind: str, given: str | None, source: str, data, manifest,
                    steps: int | None, progress: bool) -> Path:
    """`given`, or a baseline trained into OUT/baselines/<kind> (reused if there)."""
    if given:
        return Path(given)
    folder = out / "baselines" / (kind if kind == "segmenter" else f"{kind}-{source}")
    if not is_trained(folder):  # absent, or interrupted: (re)train, resuming
        config = BaselineConfig(kind, source=source,
                                **({"steps": steps} if steps else {}))
        train_baseline(config, data, manifest, folder, progress=progress)
    return folder


# Below this Dice on the target images themselves, Table 3 says nothing.
USEFUL_CEILING = 0.5


def ceiling_warning(ceiling: float) -> str | None:
    """A warning when the segmenter fails on the target images themselves."""
    if ceiling >= USEFUL_CEILING:
        return None
    return (f"the WM segmenter's Dice on the target-site images is only {ceiling:.4f}: it is "
            f"undertrained and Table 3 is meaningless (train it longer: --baseline-steps, "
            f"default {BaselineConfig('segmenter').steps})")


def segmentation_ceiling(manifest: dict, data, segmenter, slice_stride: int) -> float:
    """WM Dice of the segmenter on the target-site test images themselves."""
    scores = []
    for entry in select(manifest, "test", manifest["target_site"]):
        prepared = every_nth_slice(prepare_entry(entry, data), slice_stride)
        wm = segmenter.apply(prepared.slices, prepared.slice_masks)
        scores.append(float(metrics.dice(wm, wm_slices(prepared, entry["wm"]))))
    return float(np.mean(scores))


def reproduce_tables(flow, manifest: dict, out: str | Path, settings, batch_size: int = 32,
                     unet: str | None = None, cyclegan: str | None = None,
                     segmenter: str | None = None, source: str = "exp",
                     baseline_steps: int | None = None, slice_stride: int = 1,
                     progress: bool = True, sites: Sequence[str] | None = None,
                     heldout_maps: bool = False, split: str = "test",
                     learned: bool = True) -> dict:
    """Runs every method on the `split` subjects' `sites` (None: all eight source
    domains) and, with `heldout_maps`, on the held-out intensity maps
    (`bh_jax.experiments.heldout`, Table 4); without `learned`, no CycleGAN, U-net
    or typical-contrast rows (quicker); writes OUT/quality.{md,json,png}."""
    sites = SHIFTS + SCANNERS if sites is None else tuple(sites)
    unknown = sorted(set(sites) - set(SHIFTS + SCANNERS))
    if unknown or not sites:
        raise ValueError(f"sites must be among {SHIFTS + SCANNERS}, got {list(sites)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if heldout_maps:
        manifest = with_heldout_maps(manifest, out / "heldout-maps", split)
        sites = sites + tuple(HELDOUT_MAPS)
    start = time.perf_counter()
    data = flow.config.data
    kinds = ("unet", "cyclegan", "segmenter") if learned else ("segmenter",)
    given = {"unet": unet, "cyclegan": cyclegan, "segmenter": segmenter}
    folders = {kind: baseline_folder(out, kind, given[kind], source, data, manifest,
                                     baseline_steps, progress) for kind in kinds}
    seg = load_baseline(folders["segmenter"])
    classical = classical_methods(flow.reference)
    methods = {"Source": classical["Source"],
               "BlindHarmony": as_evaluation(
                   flow_method(flow, "blindharmony", settings, batch_size), progress),
               **{name: classical[name] for name in ("HM", "Nyul", NYUL_PER_SITE, "SSIMH")
                  if name in classical}}
    if learned:
        for kind, name in (("cyclegan", "CycleGAN"), ("unet", "U-net")):
            methods[f"{name} ({source})"] = as_evaluation(
                baseline_method(load_baseline(folders[kind]), batch_size))
        methods[TYPICAL] = typical_contrast_method(manifest, data)
    examples: dict = {}
    results = evaluate_methods(manifest, data, methods, sites=list(sites), split=split,
                               progress=progress, slice_stride=slice_stride,
                               examples=examples, segment=seg.apply)
    ceiling = segmentation_ceiling(manifest, data, seg, slice_stride)
    shifts = {s: results[s] for s in SHIFTS if s in results}
    scanners = {s: results[s] for s in SCANNERS if s in results}
    maps = {s: results[s] for s in HELDOUT_MAPS if s in results}
    tables = [("Table 1: simulated shifts, in-mask PSNR (dB) / SSIM", shifts, ("psnr", "ssim")),
              ("Table 2: simulated scanners, in-mask PSNR (dB) / SSIM", scanners,
               ("psnr", "ssim")),
              (f"Table 3: white-matter Dice (target-site ceiling {ceiling:.4f})",
               {s: results[s] for s in SHIFTS + SCANNERS if s in results}, ("dice",)),
              ("Table 4: held-out intensity maps, in-mask PSNR (dB) / SSIM", maps,
               ("psnr", "ssim"))]
    markdown = "\n\n".join(f"{title}\n\n{format_table(part, keys)}"
                             for title, part, keys in tables if part)
    warning = ceiling_warning(ceiling)
    if warning:
        markdown += f"\n\nWarning: {warning}."
    record = {"results": results, "wm_dice_target_ceiling": ceiling,
              **({"warning": warning} if warning else {}),
              "checkpoint": flow.identity, "baselines": {k: str(v) for k, v in folders.items()},
              "settings": repr(settings), "slice_stride": slice_stride, "split": split,
              "seconds": time.perf_counter() - start}
    with atomic_path(out / "quality.md") as tmp:
        tmp.write_text(markdown + "\n")
    write_json_atomic(out / "quality.json", record)
    save_examples_png(examples, out / "quality.png")
    return {"markdown": markdown, **record}
