"""Which scale should a site's Nyul map map onto? (validation, no flow)

A site's Nyul map takes the mean of its scans' landmarks onto a scale. Nyul's standard
scale is a mean of the target training scans' landmarks after each is stretched onto
common end points; the target's own scans, taken as a site, do not map onto it
unchanged. This check maps each site's scans with its map, no field and no curve (Nyul
per site, `--method site-nyul`), onto the standard scale and onto the target training
scans' mean landmarks as measured (`TargetReference.nyul_mean`), with the site's
landmarks averaged by their mean (the library's) or their median, in sites of
`--site-size` scans, and scores each output against the truth (in-mask PSNR and SSIM,
means over slices; per-volume means). Seconds, not the flow's hour:

    python tools/nyul_scale_check.py --checkpoint bh_jax/pretrained/demo \
        --data-dir data/phantom-demo-val20 --out runs/nyul-scale-val20 \
        --sites target log gamma0.7 exp gamma1.5 siteA siteB siteC siteD

Validation subjects by default (`--split test` only to report a choice made).
"""

from __future__ import annotations

import json

import numpy as np
from noise_check import check_parser, mean_scores, open_check, site_volumes

from bh_jax.baselines.nyul import landmarks

AVERAGES = {"mean": np.mean, "median": np.median}


def site_maps(prepared, scales: dict, site_size: int) -> dict[str, list[np.ndarray]]:
    """{'SCALE, AVERAGE': [slices of each volume]}: the volumes in consecutive sites of
    `site_size`, each through its site's map onto each of `scales` (name: NyulScale),
    the site's landmarks averaged over its volumes by each of `AVERAGES`."""
    outputs = {f"{s}, {a}": [] for s in scales for a in AVERAGES}
    for start in range(0, len(prepared), site_size):
        site = prepared[start:start + site_size]
        for name, scale in scales.items():
            marks = np.stack([landmarks(p.slices[p.slice_masks], scale.percentiles)
                              for p in site])
            for average, reduce in AVERAGES.items():
                outputs[f"{name}, {average}"] += [scale(p.slices, p.slice_masks,
                                                        reduce(marks, axis=0)) for p in site]
    return outputs


def main() -> None:
    parser = check_parser(__doc__)
    parser.add_argument("--sites", nargs="+", required=True)
    parser.add_argument("--site-size", type=int, default=5,
                        help="scans per site (the test split's 5 by default)")
    args = parser.parse_args()
    flow, manifest, out = open_check(args)
    scales = {"standard": flow.reference.nyul_scale(),
              "mean landmarks": flow.reference.mean_landmark_scale()}
    rows = []
    for site in args.sites:
        entries, sources, truths, _ = site_volumes(manifest, args.split, site, flow.config.data)
        for name, outputs in site_maps(sources, scales, args.site_size).items():
            for entry, truth, output in zip(entries, truths, outputs, strict=True):
                rows.append({"site": site, "subject": entry["subject"], "method": name,
                             **mean_scores(output, truth)})
    (out / "nyul_scale_check.json").write_text(json.dumps(
        {"rows": rows, "split": args.split, "site_size": args.site_size,
         "checkpoint": args.checkpoint}, indent=1))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    print("| site | " + " | ".join(f"{m}: PSNR / SSIM" for m in methods) + " |")
    print("|---|" + "---|" * len(methods))
    for site in args.sites:
        groups = [[r for r in rows if (r["site"], r["method"]) == (site, m)] for m in methods]
        print(f"| {site} | " + " | ".join(f"{np.mean([r['psnr'] for r in g]):.2f} / "
                                          f"{np.mean([r['ssim'] for r in g]):.4f}"
                                          for g in groups) + " |")


if __name__ == "__main__":
    main()
