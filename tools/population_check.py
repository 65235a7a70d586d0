"""Are a split's subjects typical of the target's population? (why a sample's site maps err)

A site's Nyul map (and the default built on it) maps the mean of its scans' landmarks
onto the standard scale, the target's training population. For a shift (one map for
every subject) that is exact when the site's subjects average to the population, and
off by the same amount for every subject when they do not. This check prints, for one
site of a split, each subject's target-site (truth) landmarks beside the standard scale,
their mean, and each subject's in-mask PSNR (mean over slices) through Nyul per scan and
through the site's map pooled by the mean and by the median of its scans' landmarks:

    python tools/population_check.py --checkpoint bh_jax/pretrained/demo \
        --data-dir data/phantom-demo-seed3 --phantom-seed 3 --split test --out runs/pop-seed3

Seconds; no segmenter. Writes OUT/population_check.json.
"""

from __future__ import annotations

import json

import numpy as np
from noise_check import check_parser, mean_scores, open_check, site_volumes

from bh_jax.baselines.nyul import landmarks, site_landmarks


def main() -> None:
    parser = check_parser(__doc__)
    parser.add_argument("--site", default="exp", help="a shift or scanner site (default: exp)")
    args = parser.parse_args()
    flow, manifest, out = open_check(args)
    scale = flow.reference.nyul_scale()
    entries, sources, truths, _ = site_volumes(manifest, args.split, args.site, flow.config.data)
    if not entries:
        parser.error(f"no {args.split} volumes of site {args.site!r} in {args.data_dir}")
    brains = [p.slices[p.slice_masks] for p in sources]
    marks = [landmarks(brain, scale.percentiles) for brain in brains]
    # The mean is the site map the default uses; the median, an alternative.
    pooled = {"mean": site_landmarks(brains, scale.percentiles),
              "median": np.median(marks, axis=0)}
    rows = []
    for entry, source, own, truth in zip(entries, sources, marks, truths, strict=True):
        truth_marks = landmarks(truth.slices[truth.slice_masks], scale.percentiles)
        maps = {"Nyul": own, **{f"site map ({name})": m for name, m in pooled.items()}}
        psnr = {name: mean_scores(scale(source.slices, source.slice_masks, m), truth)["psnr"]
                for name, m in maps.items()}
        rows.append({"subject": entry["subject"], "truth_landmarks": truth_marks.tolist(),
                     "psnr": psnr})
    truth_mean = np.mean([r["truth_landmarks"] for r in rows], axis=0)
    result = {"site": args.site, "split": args.split, "percentiles": scale.percentiles.tolist(),
              "standard_scale": scale.intensities.tolist(),
              "truth_landmarks_mean": truth_mean.tolist(), "subjects": rows}
    (out / "population_check.json").write_text(json.dumps(result, indent=1))
    print(report(result))


def report(result: dict) -> str:
    """Markdown: the landmarks table, then each subject's PSNR."""
    percentiles = [f"p{p:g}" for p in result["percentiles"]]
    lines = ["| | " + " | ".join(percentiles) + " |", "|---" * (len(percentiles) + 1) + "|"]

    def row(name, values):
        lines.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in values) + " |")

    row("standard scale", result["standard_scale"])
    for subject in result["subjects"]:
        row(f"{subject['subject']} truth", subject["truth_landmarks"])
    row("truth mean", result["truth_landmarks_mean"])
    methods = list(result["subjects"][0]["psnr"])
    lines += ["", "| subject | " + " | ".join(methods) + " |", "|---" * (len(methods) + 1) + "|"]
    for subject in result["subjects"]:
        lines.append(f"| {subject['subject']} | "
                     + " | ".join(f"{subject['psnr'][m]:.2f}" for m in methods) + " |")
    means = [np.mean([s["psnr"][m] for s in result["subjects"]]) for m in methods]
    lines.append("| mean | " + " | ".join(f"{v:.2f}" for v in means) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
