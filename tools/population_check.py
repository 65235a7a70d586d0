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

Seconds; no segmenter. Writes OUT/population_check.json. `--population N` also draws N
more subjects with the sample's seed (indices from 10,000, past every data set's, imaged
at the target site only, prepared as the data set's scans are; about 0.3 s each at 3 mm)
and prints their landmarks' mean and standard deviation: the population the sample's 5
subjects come from, and how far their mean is from it in standard errors; with
`--typical`, subjects with the population's mean tissue constants (their anatomy, size
and atrophy still their own): how much of the subjects' spread the constants make.
"""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
from noise_check import check_parser, mean_scores, open_check, site_volumes
from tqdm import tqdm

from bh_jax.baselines.nyul import landmarks, site_landmarks
from bh_jax.config import PhantomConfig
from bh_jax.data.phantom import TARGET_SITE, grid, render_subject
from bh_jax.io import Volume
from bh_jax.preprocess import prepare_volume

# The first subject index of `--population`: past every data set's subjects.
POPULATION_START = 10_000


def population_landmarks(phantom, data, percentiles, count: int,
                         start: int = POPULATION_START, typical: bool = False) -> np.ndarray:
    """float64 [count, L]: the target-site landmarks of subjects start, start + 1, ...
    of the phantom `phantom` (a PhantomConfig), rendered in memory and prepared with
    `data` (a DataConfig) as the data set's saved scans are (`typical`: with the
    population's mean tissue constants, `bh_jax.data.phantom.make_anatomy`)."""
    _, affine = grid(phantom.voxel_mm)
    marks = []
    for index in tqdm(range(start, start + count), desc="population", leave=False):
        anatomy, rendered = render_subject(phantom, index, typical, sites=(TARGET_SITE,))
        volume = Volume(rendered[TARGET_SITE], f"phantom subject {index}", affine,
                        nib.Nifti1Header())
        prepared = prepare_volume(volume, data, anatomy.mask)
        marks.append(landmarks(prepared.slices[prepared.slice_masks], percentiles))
    return np.array(marks)


def main() -> None:
    parser = check_parser(__doc__)
    parser.add_argument("--site", default="exp", help="a shift or scanner site (default: exp)")
    parser.add_argument("--population", type=int, default=0, metavar="N",
                        help="also the landmarks of N more subjects of the sample's seed "
                             "(default: 0, none)")
    parser.add_argument("--typical", action="store_true",
                        help="the N subjects with the population's mean tissue constants "
                             "(their anatomy and atrophy their own): how much of the "
                             "subjects' spread the tissue constants make")
    args = parser.parse_args()
    if args.population < 0:
        parser.error("--population: a number of subjects, 0 or more")
    if args.typical and not args.population:
        parser.error("--typical renders the --population subjects: give --population N")
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
    if args.population:
        phantom = PhantomConfig(**manifest["config"])  # the sample's seed and voxel size
        population = population_landmarks(phantom, flow.config.data, scale.percentiles,
                                          args.population, typical=args.typical)
        result["population"] = {"subjects": args.population, "start": POPULATION_START,
                                "typical": args.typical,
                                "mean": population.mean(axis=0).tolist(),
                                "sd": population.std(axis=0, ddof=1).tolist()
                                if args.population > 1 else [0.0] * population.shape[1]}
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
    if "population" in result:
        population = result["population"]
        kind = ", typical tissue constants" if population.get("typical") else ""
        row(f"population mean ({population['subjects']} subjects{kind})", population["mean"])
        row("population sd", population["sd"])
        n = len(result["subjects"])
        if not population.get("typical"):  # typical subjects are not the sample's population
            # The sample's mean against the population's, in standard errors of a mean of n.
            row(f"sample mean - population mean, in sd / sqrt({n})",
                [(t - m) / (s / np.sqrt(n)) if s > 0 else 0.0 for t, m, s in
                 zip(result["truth_landmarks_mean"], population["mean"], population["sd"],
                     strict=True)])
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
