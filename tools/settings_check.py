"""Which calibration settings serve the default best? Variants against Nyul, per volume.

Runs the default (`curve` solver, one curve per site) with the given changes to its
`CalibrationConfig`, and Nyul per scan and per site, on each site's validation volumes, and scores every
output against the truth as `tools/noise_check.py` does (in-mask PSNR and SSIM, means
over slices, and a target-trained segmenter's white-matter Dice), so that paired
differences can be read subject by subject:

    python tools/settings_check.py --checkpoint bh_jax/pretrained/demo \
        --data-dir data/phantom-demo --out runs/settings-check --sites log gamma0.7 \
        --variant "no field: field_penalty=none" --variant "8 segments: segments=8"

A variant is `NAME: FIELD=VALUE, ...` (CalibrationConfig fields; `none` for None).
`--applied "NAME: FIELD=VALUE, ..."` is a variant in how the default's site fit is applied
(`nyul_weight`, `scan_nyul_weight`, `smooth_output`): it maps the volumes with the
default's own fit, so one fit a site serves them all.
Validation subjects by default (`--split test` only to report a choice made). The
segmenter is trained as `bh-bench quality` trains it (1000 steps), or reused from
OUT/segmenter; `--segmenter-seeds 1 2` also scores WM Dice with segmenters trained from
other seeds (OUT/segmenter-seed1, ...), to see how much of a Dice difference between
methods is the segmenter's own. `--no-default`: without the default's own fit (and its
`--applied` rows): the `--variant` rows and Nyul's only; with no variant, minutes.
`--phantom-seed N` (every check) draws the data set's subjects with another seed (a fresh
sample: build it with `bh-phantom --seed N`), to see whether a difference on the 5 test
subjects holds on others.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
from noise_check import (
    check_parser,
    error_profile,
    open_check,
    scores,
    site_volumes,
    summary,
    trained_segmenter,
    truth_rows,
)
from tqdm import tqdm

from bh_jax import metrics
from bh_jax.experiments.evaluate import NYUL_PER_SITE, as_evaluation, classical_methods
from bh_jax.harmonize.methods import VolumeMethod, flow_method
from bh_jax.harmonize.settings import default_settings

# Not used by a site's fit.
APPLIED_FIELDS = {"nyul_weight", "scan_nyul_weight", "scan_nyul_contrast_gain",
                  "scan_nyul_gain_flatter_only", "smooth_output", "fallback", "nyul_scale",
                  "safety_margin"}


def variant(text: str) -> tuple[str, dict]:
    """'NAME: field=value, ...' -> (NAME, {field: value}) with values parsed as JSON
    ('none' is None)."""
    name, _, changes = text.partition(":")
    fields = {}
    for change in filter(None, (c.strip() for c in changes.split(","))):
        key, _, value = change.partition("=")
        value = value.strip()
        fields[key.strip()] = None if value.lower() == "none" else json.loads(value)
    return name.strip(), fields


def main() -> None:
    parser = check_parser(__doc__)
    parser.add_argument("--sites", nargs="+", required=True)
    parser.add_argument("--variant", action="append", type=variant, default=[],
                        help="NAME: FIELD=VALUE, ... (repeatable)")
    parser.add_argument("--applied", action="append", type=variant, default=[],
                        help="NAME: FIELD=VALUE, ... of how the fit is applied "
                             f"({', '.join(sorted(APPLIED_FIELDS))}), on the default's own "
                             "site fits (repeatable)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--segmenter-seeds", type=int, nargs="*", default=[],
                        help="also score WM Dice with segmenters trained from these seeds")
    parser.add_argument("--no-default", action="store_true",
                        help="skip the default's own fit and its --applied rows: only the "
                             "--variant rows and Nyul per scan and per site")
    parser.add_argument("--subjects", nargs="+",
                        help="only these subjects (e.g. sub-029 sub-031); a site's curve is "
                             "then fitted on them alone")
    args = parser.parse_args()
    if args.no_default and args.applied:
        parser.error("--applied maps the default's own fit, which --no-default skips")
    for name, fields in args.applied:
        if set(fields) - APPLIED_FIELDS:
            parser.error(f"--applied {name!r}: only {sorted(APPLIED_FIELDS)} leave the fit as it is")

    flow, manifest, out = open_check(args)
    data = flow.config.data
    segmenter, *others = [trained_segmenter(out, seed, data, manifest)
                          for seed in [None, *args.segmenter_seeds]]
    base = default_settings()

    def with_calibration(**fields) -> VolumeMethod:
        settings = dataclasses.replace(
            base, calibration=dataclasses.replace(base.calibration, **fields))
        return flow_method(flow, "blindharmony", settings, args.batch_size)

    methods = {}
    if not args.no_default:
        methods["default"] = one_fit_for_all(
            with_calibration(), {name: with_calibration(**fields)
                                 for name, fields in args.applied})
    methods.update({name: as_evaluation(with_calibration(**fields), progress=True)
                    for name, fields in args.variant})
    classical = classical_methods(flow.reference)
    methods.update({name: classical[name] for name in ("Nyul", NYUL_PER_SITE)})

    def scored(output, truth, wm) -> dict:
        return {**scores(output, truth, wm, segmenter),
                "error_profile": error_profile(output, truth),
                "dice_other_seeds": [float(metrics.dice(s.apply(output, truth.slice_masks), wm))
                                     for s in others]}

    rows = truth_rows(manifest, args.split, data, scored, args.subjects)
    for site in args.sites:
        entries, sources, truths, labels = site_volumes(manifest, args.split, site, data,
                                                        args.subjects)
        for name, method in methods.items():
            # One call per site: the default fits one curve to the site's volumes.
            outputs = method(sources)
            for label, volumes in (outputs if isinstance(outputs, dict)
                                   else {name: outputs}).items():
                for entry, truth, wm, output in zip(entries, truths, labels, volumes,
                                                    strict=True):
                    rows.append({"site": site, "subject": entry["subject"], "method": label,
                                 **scored(output, truth, wm)})
                    print(rows[-1], flush=True)
    (out / "settings_check.json").write_text(json.dumps(
        {"rows": rows, "split": args.split, "variants": dict(args.variant),
         "applied": dict(args.applied), "segmenter_seeds": args.segmenter_seeds,
         "checkpoint": args.checkpoint, "phantom_seed": manifest["config"]["seed"]}, indent=1))
    print(summary(rows))
    print("\nMean output - truth by the truth's intensity (tenths of [0, 1]):")
    print(profile_summary(rows))
    for i, seed in enumerate(args.segmenter_seeds):
        print(f"\nWM Dice with the segmenter of seed {seed}:")
        print(summary([{**r, "dice": r["dice_other_seeds"][i]} for r in rows]))


def one_fit_for_all(default: VolumeMethod, others: dict[str, VolumeMethod]):
    """volumes -> {'default': its outputs, name: outputs of each of `others`}, all
    from the default's one site fit (`others` differ only in how it is applied)."""
    def evaluated(volumes) -> dict[str, list[np.ndarray]]:
        site = default.fit_site(volumes)
        with tqdm(total=sum(len(p.slices) for p in volumes) * (1 + len(others)),
                  unit="slice", desc="default") as bar:
            return {name: [r.slices for r in method.harmonize(volumes, bar, site=site)]
                    for name, method in {"default": default, **others}.items()}

    return evaluated


def profile_summary(rows: list[dict]) -> str:
    """Markdown: per site and method, the mean `error_profile` over subjects."""
    lines = ["| site | method | " + " | ".join(f"{b / 10:.1f}" for b in range(10)) + " |",
             "|---|---|" + "---|" * 10]
    for key in dict.fromkeys((r["site"], r["method"]) for r in rows if r["site"] != "target"):
        profiles = [r["error_profile"] for r in rows if (r["site"], r["method"]) == key]
        cells = []
        for b in range(10):
            values = [p[b] for p in profiles if p[b] is not None]
            cells.append(f"{np.mean(values):+.3f}" if values else "")
        lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
