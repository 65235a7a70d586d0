"""Harmonize MR volumes to the target site of a trained BlindHarmony prior.

    bh-harmonize scans/*.nii.gz --checkpoint runs/demo --output-dir out
    bh-harmonize scans/ --mask-dir masks/ --checkpoint runs/demo --output-dir out --qc-png
    bh-harmonize scans/ --method unet --checkpoint runs/tables/baselines/unet-exp --output-dir out
    bh-harmonize --demo     # built-in data + shipped checkpoint, prints a table

(`python harmonize.py ...` is the same command.) Writes OUT/<name>_harmonized.nii.gz
(the input's exact geometry) and OUT/<name>_harmonized.json (settings, checkpoint,
timings, per-slice QC) for every input. Existing outputs are skipped unless
--overwrite, so an interrupted run resumes. A subject that fails is reported at
the end and the exit code is 1; the others are still written. Exit code 2: nothing
was done (bad arguments, checkpoint or output folder; out of memory).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from bh_jax.cli.common import (
    Parser,
    fail,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    run,
    unit_float,
    writable_folder,
)
from bh_jax.harmonize.settings import (
    DEFAULT_SOLVER,
    DEFAULTS,
    GAIN_FLATTER_ONLY,
    INITS,
    NYUL_SCALES,
    SOLVERS,
    CalibrationConfig,
    default_settings,
)

CHUNK_SUBJECTS = 8  # subjects whose slices are packed into the same batches
METHOD_CHOICES = ("blindharmony", "hm", "nyul", "site-nyul", "ssimh", "unet", "cyclegan")


def _per_solver(field: str) -> str:
    """'latent 10, alternating 10, ...': a setting's default for every solver."""
    def value(settings):
        return getattr(settings.weights if field in ("b1", "b2", "alpha") else settings, field)
    return ", ".join(f"{name} {value(s):g}" for name, s in DEFAULTS.items() if name != "curve")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="bh-harmonize", description=__doc__.split("\n\n")[0],
                    epilog=__doc__.split("\n\n", 1)[1])
    calibration = CalibrationConfig()
    parser.add_argument("inputs", nargs="*", help="NIfTI files, folders or glob patterns")
    parser.add_argument("--checkpoint", help="training folder of bh-train (--method unet / "
                                             "cyclegan: of bh-baselines; --demo: default the "
                                             "shipped demo checkpoint)")
    parser.add_argument("--output-dir", help="where outputs are written (--demo: out/demo)")
    parser.add_argument("--demo", action="store_true",
                        help="harmonize held-out subjects of the built-in data set and print "
                             "Source / HM / Nyul / Nyul per site / SSIMH / BlindHarmony PSNR "
                             "and SSIM (with the typical-contrast reference)")
    parser.add_argument("--demo-subjects", type=positive_int,
                        help="--demo: held-out subjects per source site (default: all; "
                             "the built-in data set has 5)")
    parser.add_argument("--data-dir", help="--demo: the built-in data set (default OUT/data)")
    parser.add_argument("--mask-dir", help="brain masks matched by file name "
                                           "(default: automatic masks)")
    parser.add_argument("--method", default="blindharmony", choices=METHOD_CHOICES,
                        help="hm / nyul / site-nyul (one Nyul map per site, from its scans' "
                             "mean landmarks) / ssimh use the flow checkpoint's target "
                             "statistics; "
                             "unet / cyclegan need a baseline checkpoint")
    parser.add_argument("--solver", choices=SOLVERS,
                        help="curve (default): each site's maximum-likelihood intensity "
                             "curve and a smooth field per volume; latent: the published "
                             "Adam on z; alternating: the published alternating scheme; "
                             "image: Adam on the image with the exact log-density as prior")
    parser.add_argument("--steps", type=positive_int,
                        help=f"solver steps (default: the solver's: {_per_solver('steps')})")
    parser.add_argument("--learning-rate", type=positive_float,
                        help=f"solver step size (default: {_per_solver('learning_rate')})")
    parser.add_argument("--b1", type=non_negative_float,
                        help=f"weight of 1 - NCC (default: {_per_solver('b1')})")
    parser.add_argument("--b2", type=non_negative_float,
                        help=f"weight of the edge term (default: {_per_solver('b2')})")
    parser.add_argument("--alpha", type=non_negative_float,
                        help="weight of the prior term (|z|^2/D; -log p(x)/D for image; "
                             f"default: {_per_solver('alpha')})")
    parser.add_argument("--init", choices=INITS,
                        help="starting image: the source through its maximum-likelihood "
                             "intensity curve, histogram-matched, the target's mean slice, or "
                             "as is (default: the solver's: "
                             + ", ".join(f"{n} {s.init}" for n, s in DEFAULTS.items()) + ")")
    parser.add_argument("--calibration-steps", type=positive_int,
                        help="init 'calibrated': L-BFGS steps of the intensity-curve fit "
                             f"(default {calibration.steps})")
    parser.add_argument("--calibration-pool", type=positive_int,
                        help="init 'calibrated': slices per volume the curve is fitted on "
                             f"(default {calibration.pool}; a multiple of the device count)")
    parser.add_argument("--field-steps", type=non_negative_int,
                        help="init 'calibrated': L-BFGS steps of each scan's smooth bias-field "
                             f"fit (default {calibration.field_steps}; 0: no field, e.g. for "
                             "scans already bias-corrected)")
    parser.add_argument("--nyul-weight", type=unit_float,
                        help="init 'calibrated': weight of each site's Nyul map, measured on "
                             "the same field-corrected, noise-matched scans, averaged into its "
                             f"fitted curve (default {calibration.nyul_weight:g}; 0: the curve "
                             "alone)")
    parser.add_argument("--scan-nyul-weight", type=unit_float,
                        help="init 'calibrated': weight of each scan's own Nyul map (on the "
                             "same corrected scan) averaged into that transform (default "
                             f"{calibration.scan_nyul_weight:g}; higher: closer to Nyul, "
                             "each subject moved onto the population's contrast)")
    parser.add_argument("--scan-nyul-contrast-gain", type=non_negative_float,
                        help="init 'calibrated': k: a scan takes clip(v + k * (1 - r), 0, 1) "
                             "of its own map, r its tissue contrast under its site's map over "
                             "the target's (r < 1: flatter; r > 1 only where "
                             "--scan-nyul-gain-flatter-only does not cover the scan); default "
                             f"{calibration.scan_nyul_contrast_gain:g}, 0: the same weight v "
                             "for every scan")
    parser.add_argument("--scan-nyul-gain-flatter-only", choices=GAIN_FLATTER_ONLY,
                        help="init 'calibrated': on which scans the contrast gain only "
                             "raises the weight (a scan with more contrast than its site's "
                             "typical one otherwise takes less): 'all', 'noisy' (the scans "
                             "smoothed to the target's noise) or 'none'; default "
                             f"{calibration.scan_nyul_gain_flatter_only}")
    parser.add_argument("--nyul-scale", choices=NYUL_SCALES,
                        help="init 'calibrated': what the site's and the scan's Nyul maps map "
                             "onto: 'standard' (Nyul's scale, the --method nyul baseline's) or "
                             "'mean' (the target's training scans' mean landmarks, averaged "
                             f"as the site's are); default {calibration.nyul_scale}")
    parser.add_argument("--sites", default="folder",
                        help="which inputs share an intensity curve (blindharmony) or Nyul "
                             "landmarks (site-nyul), one per site, fitted on up to 32 of its "
                             "inputs: 'folder' (the inputs of each folder), "
                             "'one' (all of them), 'each' (none: one curve per volume), or a "
                             "CSV/TSV table of file name (or BIDS participant id) and site")
    parser.add_argument("--shared-curve", action="store_true",
                        help="the same as --sites one")
    parser.add_argument("--nyul-from", metavar="FOLDER",
                        help="target-site scans to learn Nyul's standard scale from (for "
                             "--method nyul / site-nyul and the safety net; default: the "
                             "checkpoint's)")
    parser.add_argument("--batch-size", type=positive_int, default=16,
                        help="slices per compiled batch (a multiple of the device count)")
    parser.add_argument("--output-scale", default="input", choices=["input", "unit"],
                        help="write in the input's intensity scale or in [0, 1]")
    parser.add_argument("--overwrite", action="store_true", help="redo existing outputs")
    parser.add_argument("--no-report", action="store_true",
                        help="do not write OUTPUT_DIR/report.html (every output's figures, "
                             "QC scores and the volumes that stand out, in one page)")
    parser.add_argument("--qc-png", action="store_true",
                        help="also write a source / harmonized / difference figure")
    parser.add_argument("--distributed", action="store_true",
                        help="call jax.distributed.initialize() first (multi-host)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.demo:
        if args.inputs:
            parser.error("--demo takes no INPUT files")
        if args.method != "blindharmony":
            parser.error("--demo compares BlindHarmony with the classical methods; it takes "
                         "no --method (the learned baselines: bh-bench quality)")
        args.output_dir = args.output_dir or "out/demo"
    elif args.demo_subjects is not None:
        parser.error("--demo-subjects is a --demo option")
    elif not args.inputs or not args.checkpoint or not args.output_dir:
        parser.error("INPUT..., --checkpoint and --output-dir are required (or use --demo)")
    if args.shared_curve:
        args.sites = "one"
    if args.sites not in ("folder", "one", "each") and not Path(args.sites).is_file():
        parser.error(f"--sites {args.sites!r}: expected folder, one, each or a table file")
    args.solver = args.solver or DEFAULT_SOLVER
    return args


def solver_settings(args: argparse.Namespace):
    """The SolverConfig the options ask for (the solver's defaults, overridden)."""
    from bh_jax.harmonize.settings import Weights

    base = default_settings(args.solver)
    weights = Weights(**{k: v if getattr(args, k) is None else getattr(args, k)
                         for k, v in asdict(base.weights).items()})
    given = {k: getattr(args, f"calibration_{k}") for k in ("steps", "pool")
             if getattr(args, f"calibration_{k}") is not None}
    if args.field_steps == 0:
        given["field_penalty"] = None
    elif args.field_steps is not None:
        given["field_steps"] = args.field_steps
    for name in ("nyul_weight", "scan_nyul_weight", "scan_nyul_contrast_gain",
                 "scan_nyul_gain_flatter_only", "nyul_scale"):
        if getattr(args, name) is not None:
            given[name] = getattr(args, name)
    if base.init == "calibrated" or args.init == "calibrated":
        given["shared"] = args.sites != "each"
    return default_settings(args.solver, weights=weights, steps=args.steps,
                            learning_rate=args.learning_rate, init=args.init,
                            calibration=replace(base.calibration, **given) if given else None)


def demo_main(args: argparse.Namespace, settings) -> int:
    from bh_jax.experiments.demo import run_demo

    result = run_demo(args.output_dir, args.data_dir, args.checkpoint, args.demo_subjects,
                      settings, args.batch_size, progress=not args.no_progress)
    shared = settings.init == "calibrated" and settings.calibration.shared
    print(f"In-mask PSNR (dB) / SSIM against the target-site truth, mean over the slices "
          f"of {result['subjects']} held-out subject(s) per site; BlindHarmony with the "
          f"{settings.solver!r} solver{', one intensity curve per site' if shared else ''}, "
          f"checkpoint {result['checkpoint']['workdir']}:")
    print(result["table"])
    print(f"{len(result['outputs'])} harmonized volumes and {result['figure']} in "
          f"{args.output_dir}; {result['seconds']:.0f} s")
    print(f"report: {result['report']} ({result['report_seconds']:.0f} s)")
    return 0


def harmonize_files(args: argparse.Namespace, settings) -> int:
    import jax

    from bh_jax.harmonize import report, run
    from bh_jax.harmonize.methods import load_method
    from bh_jax.inputs import find_nifti

    inputs = find_nifti(args.inputs)
    if not inputs:
        raise ValueError(f"no NIfTI files (.nii, .nii.gz) in {' '.join(args.inputs)}")
    groups, grouping = run.site_groups(inputs, args.sites)
    method = load_method(args.method, args.checkpoint, settings, args.batch_size,
                         nyul_from=args.nyul_from)
    for warning in method.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    signature = run.run_signature(method, args.output_scale)
    run.plan_jobs(inputs, args.output_dir, args.overwrite, signature, groups)  # fail early
    writable_folder(args.output_dir, "--output-dir")
    with run.output_lock(args.output_dir):
        jobs, skipped = run.plan_jobs(inputs, args.output_dir, args.overwrite, signature, groups)
        every = jobs + [run.Job(p, run.output_path(args.output_dir, p), site=groups[p])
                        for p in skipped]  # site curves see done inputs too (resumes agree)
        print(f"{len(every)} input(s): {len(jobs)} to harmonize, {len(skipped)} already done; "
              f"method {args.method}, {jax.device_count()} {jax.devices()[0].platform} "
              f"device(s)")
        start = time.perf_counter()
        curves, curve_seconds = {}, 0.0
        if jobs and method.fit_site is not None:
            needed = {job.site for job in jobs}
            shared = "Nyul landmarks" if args.method == "site-nyul" else "intensity curves"
            print(f"fitting the {shared} of {len(needed)} site(s), {grouping}, each "
                  f"on up to {run.SITE_CURVE_VOLUMES} of its inputs ...", flush=True)
            curves = run.fit_site_curves(method, [j for j in every if j.site in needed],
                                         args.mask_dir, progress=not args.no_progress)
            curve_seconds = time.perf_counter() - start
        failures = run.run_jobs(jobs, method, args.output_scale, mask_dir=args.mask_dir,
                                qc_png=args.qc_png, chunk=CHUNK_SUBJECTS,
                                progress=not args.no_progress, sites=curves,
                                grouping=grouping)
        seconds = time.perf_counter() - start
        done = len(jobs) - len(failures)
        report.write_run_record(args.output_dir, {
            "inputs": [str(p) for p in inputs], "method": args.method,
            "harmonized": done, "skipped": len(skipped), "seconds": seconds,
            "site_curves_seconds": curve_seconds,
            "failures": [{"input": str(p), "reason": why} for p, why in failures]})
        if not args.no_report:
            start_report = time.perf_counter()
            page = report.build_report(args.output_dir)
            print(f"report: {page} ({time.perf_counter() - start_report:.1f} s)")
    print(f"harmonized {done}, skipped {len(skipped)}, failed {len(failures)} "
          f"in {seconds:.1f} s -> {args.output_dir}")
    for path, reason in failures:
        print(f"failed: {reason}", file=sys.stderr)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.output_dir and Path(args.output_dir).exists() \
            and not Path(args.output_dir).is_dir():
        return fail(f"{args.output_dir}: exists and is not a folder (--output-dir)")

    def body() -> int:
        import jax

        if args.distributed:
            jax.distributed.initialize()
        settings = solver_settings(args)
        if args.demo:
            return demo_main(args, settings)
        return harmonize_files(args, settings)

    return run(body, args.batch_size)


if __name__ == "__main__":
    sys.exit(main())
