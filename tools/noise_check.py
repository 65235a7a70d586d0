"""Does smoothing a harmonized scan to the target's noise level help? (validation)

The default keeps a noisy site's noise: its intensity curve is fitted on a copy
smoothed to the target's noise-to-contrast ratio, then applied to the scan as
it is. This check smooths each method's output in the brain until its ratio is
the target's (`preprocess.match_noise`, the same step) and scores both against
the truth, per volume: in-mask PSNR and SSIM (means over slices) and a
target-trained segmenter's white-matter Dice, so that paired differences
between methods can be read subject by subject.

    python tools/noise_check.py --checkpoint bh_jax/pretrained/demo \
        --data-dir data/phantom-demo --out runs/noise-check

Validation subjects by default (`--split test` only to report a choice made).
The segmenter is trained as `bh-bench quality` trains it (1000 steps), or
reused from OUT/segmenter.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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
from bh_jax.data.phantom import ensure_phantom
from bh_jax.experiments.evaluate import as_evaluation, classical_methods, slice_scores
from bh_jax.harmonize.methods import flow_method
from bh_jax.harmonize.settings import default_settings
from bh_jax.preprocess import match_noise
from bh_jax.training.checkpoint import load_flow

SCANNERS = ["siteA", "siteB", "siteC", "siteD"]


def mean_scores(output, truth) -> dict[str, float]:
    """A volume's mean in-mask PSNR / SSIM over its slices."""
    per_slice = slice_scores(output, truth.slices, truth.slice_masks)
    return {"psnr": float(np.mean(per_slice["psnr"])), "ssim": float(np.mean(per_slice["ssim"]))}


def scores(output, truth, labels, segmenter) -> dict[str, float]:
    """A volume's mean in-mask PSNR / SSIM over its slices and its WM Dice."""
    wm = segmenter.apply(output, truth.slice_masks)
    return {**mean_scores(output, truth), "dice": float(metrics.dice(wm, labels))}


PROFILE_BINS = np.linspace(0.0, 1.0, 11)


def error_profile(output, truth, min_voxels: int = 50) -> list[float | None]:
    """Mean output - truth in the brain per tenth of the truth's intensity range
    (None where fewer than `min_voxels`): where in intensity a method errs."""
    inside = truth.slice_masks.astype(bool)
    x, y = truth.slices[inside], np.asarray(output)[inside]
    which = np.clip(np.digitize(x, PROFILE_BINS) - 1, 0, len(PROFILE_BINS) - 2)
    return [float(np.mean(y[which == b] - x[which == b])) if np.sum(which == b) >= min_voxels
            else None for b in range(len(PROFILE_BINS) - 1)]


def check_parser(doc: str) -> argparse.ArgumentParser:
    """A check's command line with the options `open_check` and the split's rows read:
    --checkpoint, --data-dir, --out, --split and --phantom-seed."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--split", default="val", choices=["val", "test"])
    parser.add_argument("--phantom-seed", type=int,
                        help="draw the data set's subjects with this seed instead of the "
                             "prior's (bh-phantom --seed N): a fresh sample, never used to "
                             "choose anything")
    return parser


def open_check(args) -> tuple:
    """(the prior, the built-in data set's manifest, the output folder, created) of a
    check's --checkpoint, --data-dir, --out and --phantom-seed (the data set's subjects
    drawn with another seed than the prior's: fresh subjects, none it was chosen on)."""
    flow = load_flow(args.checkpoint)
    phantom = flow.config.phantom.evaluation()
    if args.phantom_seed is not None:
        phantom = dataclasses.replace(phantom, seed=args.phantom_seed)
    manifest = ensure_phantom(args.data_dir, phantom, flow.config.name)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return flow, manifest, out


def trained_segmenter(out: Path, seed: int | None, data, manifest):
    """OUT/segmenter (bh-bench quality's settings), or OUT/segmenter-seedN; trained if missing."""
    config = BaselineConfig("segmenter")
    if seed is not None:
        config = dataclasses.replace(config, seed=seed)
    folder = out / ("segmenter" if seed is None else f"segmenter-seed{seed}")
    if not is_trained(folder):
        train_baseline(config, data, manifest, folder)
    return load_baseline(folder)


def site_volumes(manifest: dict, split: str, site: str, data,
                 subjects: list[str] | None = None) -> tuple[list, list, list, list]:
    """(entries, sources, truths, white-matter labels) of one site's `split` volumes
    (only `subjects`' if given)."""
    entries = [e for e in select(manifest, split, site)
               if subjects is None or e["subject"] in subjects]
    sources = [prepare_entry(e, data) for e in entries]
    truths = [prepare_entry(e, data, key="truth") for e in entries]
    return entries, sources, truths, [wm_slices(t, e["wm"]) for t, e in zip(truths, entries)]


def truth_rows(manifest: dict, split: str, data, score,
               subjects: list[str] | None = None) -> list[dict]:
    """The target-site scans' own rows: `score(image, truth, labels)` of each truth."""
    entries, _, truths, labels = site_volumes(manifest, split, manifest["target_site"], data,
                                              subjects)
    return [{"site": "target", "subject": e["subject"], "method": "Truth",
             **score(t.slices, t, wm)} for e, t, wm in zip(entries, truths, labels)]


def main() -> None:
    parser = check_parser(__doc__)
    parser.add_argument("--sites", nargs="+", default=SCANNERS)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    flow, manifest, out = open_check(args)
    data = flow.config.data
    segmenter = trained_segmenter(out, None, data, manifest)
    ratio = float(flow.reference.noise_ratio)
    classical = classical_methods(flow.reference)
    methods = {"default": as_evaluation(flow_method(flow, "blindharmony", default_settings(),
                                                    args.batch_size), progress=True),
               "Nyul": classical["Nyul"], "HM": classical["HM"]}

    rows = truth_rows(manifest, args.split, data, lambda *a: scores(*a, segmenter))
    for site in args.sites:
        entries, sources, truths, labels = site_volumes(manifest, args.split, site, data)
        for name, method in methods.items():
            # One call per site: the default fits one curve to the site's volumes.
            for entry, source, truth, wm, output in zip(entries, sources, truths, labels,
                                                        method(sources), strict=True):
                matched, sigma = match_noise(output, source.slice_masks, ratio)
                for variant, image in ((name, output), (f"{name}, noise matched", matched)):
                    rows.append({"site": site, "subject": entry["subject"], "method": variant,
                                 "smoothing_px": sigma if image is matched else 0.0,
                                 **scores(image, truth, wm, segmenter)})
                print(rows[-1], flush=True)
    (out / "noise_check.json").write_text(json.dumps(
        {"rows": rows, "split": args.split, "noise_ratio_target": ratio,
         "checkpoint": args.checkpoint}, indent=1))
    print(summary(rows))


def summary(rows: list[dict]) -> str:
    """Markdown: per site and method, the means over subjects (PSNR / SSIM / Dice)."""
    sites = list(dict.fromkeys(r["site"] for r in rows if r["site"] != "target"))
    names = list(dict.fromkeys(r["method"] for r in rows if r["site"] != "target"))
    lines = ["| method | " + " | ".join(sites) + " |", "|---|" + "---|" * len(sites)]
    for name in names:
        cells = []
        for site in sites:
            mine = [r for r in rows if r["site"] == site and r["method"] == name]
            cells.append(" / ".join(f"{np.mean([r[k] for r in mine]):.{d}f}"
                                    for k, d in (("psnr", 2), ("ssim", 4), ("dice", 4))))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    truth = [r["dice"] for r in rows if r["site"] == "target"]
    lines.append(f"\nTruth (target-site images) Dice: {np.mean(truth):.4f} "
                 f"({', '.join(f'{d:.4f}' for d in truth)})")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
