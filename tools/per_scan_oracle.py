"""Per-scan own-map weights against the shift bars (an oracle on `field_oracle.py`'s output).

`tools/field_oracle.py` scores each subject's target-site image (a shift inverted
exactly, optionally divided by its true field or the quadratic fit to it) through
(1 - v) x its site's Nyul map + v x its own, for one v at a time. This check lets each
subject take its own v among those scored: of all the combinations, how many put the
mean PSNR at least Nyul's + 1 dB and the mean WM Dice at least Nyul's on every shift,
how many of those have v falling as the subject's contrast ratio r rises, and what the
default's contrast gain gives, both sided and flatter only (`pipeline.scan_map_weight`
on `--r-site`'s scans without a field; each v rounded to the nearest scored one). It
chooses nothing.

    python tools/per_scan_oracle.py --oracle runs/field-oracle-test/field_oracle.json \\
        --checkpoint bh_jax/pretrained/demo --data-dir data/phantom-demo --split test
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
from noise_check import open_check, site_volumes

from bh_jax.baselines.nyul import landmarks, site_landmarks
from bh_jax.harmonize.pipeline import scan_map_weight
from bh_jax.harmonize.settings import CalibrationConfig

SHIFTS = ("log", "gamma0.7", "exp", "gamma1.5")


def gain_weights(args) -> dict[str, dict[str, tuple[float, float]]]:
    """{subject: {'none' and 'all': (its own-map weight, its contrast ratio r)}} of the
    split's `--r-site` scans under their site's Nyul map, by the default's own rule
    (`pipeline.scan_map_weight`, both sides and flatter only) from `--scan-nyul-weight`."""
    flow, manifest, _ = open_check(args)
    scale = flow.reference.nyul_scale()
    entries, sources, _, _ = site_volumes(manifest, args.split, args.r_site, flow.config.data)
    brains = [p.slices[p.slice_masks] for p in sources]
    site = site_landmarks(brains, scale.percentiles)
    configs = {sides: CalibrationConfig(scan_nyul_weight=args.scan_nyul_weight,
                                        scan_nyul_gain_flatter_only=sides)
               for sides in ("none", "all")}
    return {e["subject"]: {sides: scan_map_weight(config, landmarks(b, scale.percentiles),
                                                  site, flow.reference, noise_matched=False)
                           for sides, config in configs.items()}
            for e, b in zip(entries, brains)}


def mean_scores(score: dict, image: str, subjects: list[str], weights) -> tuple[float, float]:
    """(mean PSNR, mean Dice) over `subjects` of `image`, each at its own weight."""
    values = [score[image, f"v={v:g}", x] for v, x in zip(weights, subjects)]
    return float(np.mean([p for p, _ in values])), float(np.mean([d for _, d in values]))


def combinations_meeting(score: dict, image: str, subjects: list[str], weights: list[float],
                         bars: dict[str, tuple[float, float]]) -> tuple[int, int]:
    """(how many per-subject weight combinations put `image`'s mean PSNR and Dice at or
    above every (PSNR, Dice) of `bars`, how many of those never rise along `subjects`)."""
    meets = monotone = 0
    for vs in itertools.product(weights, repeat=len(subjects)):
        psnr, dice = mean_scores(score, image, subjects, vs)
        if all(psnr >= p and dice >= d for p, d in bars.values()):
            meets += 1
            monotone += all(a >= b for a, b in zip(vs, vs[1:]))
    return meets, monotone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--oracle", required=True, help="field_oracle.json")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--r-site", default="log", help="the shift whose scans give r")
    parser.add_argument("--scan-nyul-weight", type=float,
                        default=CalibrationConfig().scan_nyul_weight,
                        help="the gain's base weight v (default: the default's; 0.375 "
                             "gives the numbers in docs/results.md)")
    args = parser.parse_args()
    args.out, args.phantom_seed = str(Path(args.oracle).parent), None  # as open_check wants
    rows = json.loads(Path(args.oracle).read_text())["rows"]
    score = {(r["site"], r["method"], r["subject"]): (r["psnr"], r["dice"]) for r in rows}
    gains = gain_weights(args)
    ratio = {x: gain["none"][1] for x, gain in gains.items()}
    subjects = sorted(ratio, key=ratio.get)  # flattest first
    bars = {s: (np.mean([score[s, "v=1", x][0] for x in subjects]) + 1.0,
                np.mean([score[s, "v=1", x][1] for x in subjects])) for s in SHIFTS}
    weights = sorted({float(m[2:]) for _, m, _ in score if m.startswith("v=")})
    gain = CalibrationConfig().scan_nyul_contrast_gain
    print("r:", ", ".join(f"{x} {ratio[x]:.3f}" for x in subjects))
    print("bars (PSNR, Dice):", {s: (round(p, 2), round(d, 4)) for s, (p, d) in bars.items()})
    for image in dict.fromkeys(k[0] for k in score if k[0] not in SHIFTS):
        meets, monotone = combinations_meeting(score, image, subjects, weights, bars)
        print(f"\n{image}: {meets} of {len(weights) ** len(subjects)} combinations meet "
              f"both bars, {monotone} of them with v falling as r rises")
        for name, sides in ((f"k = {gain:g}, both sides", "none"),
                            (f"k = {gain:g}, flatter only", "all")):
            vs = [gains[x][sides][0] for x in subjects]
            nearest = [min(weights, key=lambda w, v=v: abs(w - v)) for v in vs]
            psnr, dice = mean_scores(score, image, subjects, nearest)
            print(f"  {name}: v {', '.join(f'{v:.2f}' for v in vs)} -> {psnr:.2f} dB / "
                  f"{dice:.4f}")


if __name__ == "__main__":
    main()
