"""How much WM Dice can the two Nyul maps give without the flow? (validation)

The default maps a scan by (1 - v) x its site's Nyul map + v x its own Nyul map, both of
the scan divided by the field the flow's likelihood fitted. This check leaves the flow
out (no field, no curve, no smoothing): it maps each scan of a site by that blend for
several v, in closed form, and scores each output as `tools/settings_check.py` does
(in-mask PSNR and SSIM, means over slices, and a target-trained segmenter's white-matter
Dice), with each blend's Dice difference to Nyul's subject by subject. Minutes, not the
flow's hour: for the shifts, whose scans have no field of their own.

    python tools/nyul_blend_check.py --checkpoint bh_jax/pretrained/demo \
        --data-dir data/phantom-demo-val20 --out runs/nyul-blend-val20 \
        --sites log gamma0.7 exp gamma1.5

Validation subjects by default (`--split test` only to report a choice made). The
segmenter is trained as `bh-bench quality` trains it (1000 steps), or reused from
OUT/segmenter.
"""

from __future__ import annotations

import json

import numpy as np
from noise_check import (
    check_parser,
    open_check,
    scores,
    site_volumes,
    summary,
    trained_segmenter,
    truth_rows,
)

from bh_jax.baselines.nyul import landmarks, site_landmarks

WEIGHTS = (0.0, 0.25, 0.375, 0.5, 0.625, 0.75, 0.875, 1.0)


def blends(prepared, scale, weights) -> dict[str, list[np.ndarray]]:
    """{'v=...': [slices of each volume]} of one site's volumes: each through
    (1 - v) x the site's Nyul map + v x its own, for each v in `weights` (v = 1: Nyul)."""
    brains = [p.slices[p.slice_masks] for p in prepared]
    site = site_landmarks(brains, scale.percentiles)
    outputs = {f"v={v:g}": [] for v in weights}
    for p, brain in zip(prepared, brains):
        by_site = scale(p.slices, p.slice_masks, site)
        by_own = scale(p.slices, p.slice_masks, landmarks(brain, scale.percentiles))
        for v in weights:
            outputs[f"v={v:g}"].append((1.0 - v) * by_site + v * by_own)
    return outputs


def parsed_with_weights(parser, weights):
    """`parser`'s arguments, with --weights: the scan's own-map weights v to score
    (`weights` by default), which must include 1, Nyul, the Dice margins' reference."""
    parser.add_argument("--weights", type=float, nargs="+", default=list(weights),
                        help="the scan's own-map weights v to score (1: Nyul)")
    args = parser.parse_args()
    if 1.0 not in args.weights:
        parser.error("--weights must include 1 (Nyul), the Dice margins' reference")
    return args


def dice_margins(rows: list[dict], nyul: str = "v=1") -> str:
    """Markdown: per site and blend, the WM Dice minus Nyul's, mean over subjects, how
    many subjects are below Nyul's, and the worst."""
    lines = ["| site | blend | Dice - Nyul's | subjects below | worst |", "|---|---|---|---|---|"]
    for site in dict.fromkeys(r["site"] for r in rows if r["site"] != "target"):
        reference = {r["subject"]: r["dice"] for r in rows
                     if r["site"] == site and r["method"] == nyul}
        for name in dict.fromkeys(r["method"] for r in rows if r["site"] == site):
            margins = np.array([r["dice"] - reference[r["subject"]] for r in rows
                                if r["site"] == site and r["method"] == name])
            lines.append(f"| {site} | {name} | {margins.mean():+.5f} | "
                         f"{int(np.sum(margins < 0))}/{margins.size} | {margins.min():+.4f} |")
    return "\n".join(lines)


def main() -> None:
    parser = check_parser(__doc__)
    parser.add_argument("--sites", nargs="+", required=True)
    args = parsed_with_weights(parser, WEIGHTS)

    flow, manifest, out = open_check(args)
    data = flow.config.data
    segmenter = trained_segmenter(out, None, data, manifest)
    scale = flow.reference.nyul_scale()

    def scored(output, truth, wm) -> dict:
        return scores(output, truth, wm, segmenter)

    rows = truth_rows(manifest, args.split, data, scored)
    for site in args.sites:
        entries, sources, truths, labels = site_volumes(manifest, args.split, site, data)
        for name, outputs in blends(sources, scale, args.weights).items():
            for entry, truth, wm, output in zip(entries, truths, labels, outputs, strict=True):
                rows.append({"site": site, "subject": entry["subject"], "method": name,
                             **scored(output, truth, wm)})
        print(f"{site}: done", flush=True)
    (out / "nyul_blend_check.json").write_text(json.dumps(
        {"rows": rows, "split": args.split, "weights": args.weights,
         "checkpoint": args.checkpoint}, indent=1))
    print(summary(rows))
    print("\nWM Dice against Nyul's (v = 1), subject by subject:")
    print(dice_margins(rows))


if __name__ == "__main__":
    main()
