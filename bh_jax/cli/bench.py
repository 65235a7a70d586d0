"""Benchmarks and experiments: speed, memory, validation sweeps, the paper's tables.

    bh-bench flow --preset reference --batch-size 8
    bh-bench harmonize --preset demo
    bh-bench sweep --checkpoint runs/demo      # validation subjects only
    bh-bench prior --checkpoint runs/demo      # what the prior prefers (validation)
    bh-bench quality --checkpoint runs/demo --out runs/tables   # test subjects
    bh-bench study --checkpoint bh_jax/pretrained/demo --out runs/study --volumes 100

(`python -m bh_jax.bench ...` is the same command.) docs/results.md,
docs/methods.md and docs/performance.md quote these commands with their results.
"""

from __future__ import annotations

import itertools
import json
import sys
from dataclasses import replace
from pathlib import Path

from bh_jax.cli.common import (
    Parser,
    non_negative_float,
    positive_float,
    positive_int,
    run,
)
from bh_jax.harmonize.settings import DEFAULT_SOLVER, INITS, SOLVERS, CalibrationConfig


def _calibration_grid(args) -> list:
    """The `CalibrationConfig`s of `--calibration-*` (every combination), or [None]."""
    default = CalibrationConfig()
    grids = {"segments": args.calibration_segments, "pool": args.calibration_pool,
             "steps": args.calibration_steps, "shared": [False] if args.each_volume else None}
    if all(values is None for values in grids.values()):
        return [None]
    axes = {k: v if v is not None else [getattr(default, k)] for k, v in grids.items()}
    return [replace(default, **dict(zip(axes, combo)))
            for combo in itertools.product(*axes.values())]


def _table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for row in rows for k in row))  # every row's, in order
    fmt = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    return "\n".join(["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys),
                      *("| " + " | ".join(fmt(r[k]) if k in r else "" for k in keys) + " |"
                        for r in rows)])


def main(argv: list[str] | None = None) -> int:
    from bh_jax.experiments.bench import SWEEP_SITES

    parser = Parser(prog="bh-bench", description=__doc__.split("\n\n")[0],
                    epilog=__doc__.split("\n\n", 1)[1])
    sub = parser.add_subparsers(dest="command", required=True)
    flow = sub.add_parser("flow", help="flow size and speed")
    flow.add_argument("--preset", default="reference", help="model size (bh_jax/config.py)")
    flow.add_argument("--batch-size", type=positive_int, default=8, help="slices per call")
    harm = sub.add_parser("harmonize", help="harmonization slices/s per solver")
    harm.add_argument("--preset", default="demo", help="model size (bh_jax/config.py)")
    harm.add_argument("--batch-size", type=positive_int, nargs="+", default=[16],
                      help="slices per compiled batch (several: one row each)")
    harm.add_argument("--memory-only", action="store_true",
                      help="report XLA's memory plan per batch size, without timing")
    harm.add_argument("--steps", type=positive_int,
                      help="override the solvers' default steps")
    harm.add_argument("--solvers", nargs="+", choices=SOLVERS,
                      help="time these, in this order (default: all)")
    st = sub.add_parser("study", help="harmonize.py end to end over a study: volumes/min "
                                      "per method and where the time goes")
    st.add_argument("--checkpoint", required=True, help="flow training folder")
    st.add_argument("--data-dir", help="the built-in data set (default data/phantom-PRESET)")
    st.add_argument("--out", required=True, help="the study's scans and outputs go here")
    st.add_argument("--volumes", type=positive_int, default=100, help="scans in the study")
    st.add_argument("--site", default="exp", help="the source domain of the scans")
    st.add_argument("--methods", nargs="+", default=["hm", "nyul", "blindharmony"],
                    help="harmonize.py --method values, one run each")
    st.add_argument("--batch-size", type=positive_int, default=16, help="harmonize.py's")
    for name, text in (("sweep", "solver settings on the validation subjects"),
                       ("quality", "the paper's tables on the test subjects"),
                       ("prior", "does the prior rank the truth above HM, and prefer the "
                                 "target's contrast? (validation)")):
        p = sub.add_parser(name, help=text)
        p.add_argument("--checkpoint", required=True, help="flow training folder")
        p.add_argument("--data-dir", help="the built-in data set (default data/phantom-PRESET)")
        p.add_argument("--batch-size", type=positive_int, default=32,
                       help="slices per compiled batch")
        p.add_argument("--slice-stride", type=positive_int, default=1,
                       help="use every k-th slice of each volume (quicker)")
    for name, solver in (("sweep", "latent"), ("quality", DEFAULT_SOLVER)):
        sub.choices[name].add_argument("--solver", default=solver, choices=SOLVERS,
                                       help="BlindHarmony's solver")
        sub.choices[name].add_argument("--init", choices=INITS,
                                       help="the solver's starting image (default: the "
                                            "solver's default)")
        sub.choices[name].add_argument("--each-volume", action="store_true",
                                       help="init 'calibrated': one intensity curve per "
                                            "volume, not one per source site")
    qu = sub.choices["quality"]
    qu.add_argument("--out", required=True, help="tables (md, json) and figure go here")
    qu.add_argument("--quick", action="store_true", help="tiny run (the test suite's)")
    for kind in ("unet", "cyclegan", "segmenter"):
        qu.add_argument(f"--{kind}", help=f"trained {kind} folder (default: train one "
                                          f"into OUT/baselines)")
    qu.add_argument("--source", default="exp", help="the source domain of U-net / CycleGAN")
    qu.add_argument("--baseline-steps", type=positive_int,
                    help="training steps of missing baselines (default: BaselineConfig's)")
    qu.add_argument("--sites", nargs="+", help="source domains (default: all eight)")
    qu.add_argument("--heldout-maps", action="store_true",
                    help="also Table 4: the held-out intensity maps (experiments/heldout.py)")
    qu.add_argument("--no-learned", action="store_true",
                    help="skip the CycleGAN, U-net and typical-contrast rows (quicker)")
    qu.add_argument("--split", default="test", choices=["test", "val"],
                    help="the subjects scored (choose settings on val, report test)")
    qu.add_argument("--phantom-seed", type=int,
                    help="draw the built-in data set's subjects with this seed instead of "
                         "the prior's (a fresh sample; give it its own --data-dir)")
    sw = sub.choices["sweep"]
    sw.add_argument("--b2", type=non_negative_float, nargs="+", default=[0.0, 0.01, 0.1],
                    help="edge weights to try")
    sw.add_argument("--alpha", type=non_negative_float, nargs="+", default=[0.001, 0.01, 0.1],
                    help="prior weights to try")
    sw.add_argument("--learning-rate", type=positive_float, nargs="+", default=[0.05],
                    help="solver step sizes to try")
    sw.add_argument("--steps", type=positive_int, nargs="+", default=[100],
                    help="solver steps to try")
    sw.add_argument("--sites", nargs="+", default=SWEEP_SITES, choices=SWEEP_SITES,
                    help="source domains to score")
    calibration = CalibrationConfig()
    for name, help_text in (("segments", "linear pieces of the curve"),
                            ("pool", "slices the curve is fitted on"),
                            ("steps", "L-BFGS steps of the curve fit")):
        sw.add_argument(f"--calibration-{name}", type=positive_int, nargs="+",
                        help=f"intensity calibration: {help_text} (init 'calibrated' only; "
                             f"default {getattr(calibration, name)})")
    for p in sub.choices.values():
        p.add_argument("--repeats", type=positive_int, default=3,
                       help="timed calls after the first (the best is reported)")
        p.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    # Their tables time compiles: no compiled programs from earlier runs.
    timed = args.command in ("flow", "harmonize", "study")
    return run(lambda: _run(args), getattr(args, "batch_size", None),
               compilation_cache=not timed)


def _run(args) -> int:
    from bh_jax.experiments.bench import (
        bench_flow,
        bench_harmonize,
        prior,
        quality,
        study,
        sweep,
    )

    if args.command == "flow":
        result = bench_flow(args.preset, args.batch_size, args.repeats)
        print(_table([result]))
    elif args.command == "harmonize":
        result = [row for batch in args.batch_size for row in bench_harmonize(
            args.preset, batch, args.steps, args.repeats, args.memory_only, args.solvers)]
        print(_table(result))
    elif args.command == "study":
        from bh_jax.cli.harmonize import main as harmonize_main

        result = study(harmonize_main, args.checkpoint, args.data_dir, args.out, args.volumes,
                       args.methods, args.site, args.batch_size)
        print(_table([{k: v for k, v in row.items() if k != "machine"} for row in result]))
    elif args.command == "sweep":
        result = sweep(args.checkpoint, args.data_dir, args.batch_size, args.b2, args.alpha,
                       args.learning_rate, args.steps, args.slice_stride, args.solver,
                       args.init, _calibration_grid(args), args.sites)
        print(_table(result))
    elif args.command == "prior":
        result = prior(args.checkpoint, args.data_dir, args.batch_size, args.slice_stride)
        print(_table(result["sites"]))
        print("\nThe truth with its contrast scaled (1 = as acquired):")
        print(_table(result["contrast"]))
        print("\nSamples against real validation slices: mean SSIM with the nearest "
              "training slice:")
        print(_table(result["realism"]))
        print("\nThe target's own validation images calibrated (the right curve is the "
              "identity: values = knots):")
        print(_table(result["calibration"]))
    else:
        result = quality(args.checkpoint, args.data_dir, args.out, args.batch_size, args.quick,
                         args.slice_stride, unet=args.unet, cyclegan=args.cyclegan,
                         segmenter=args.segmenter, source=args.source,
                         baseline_steps=args.baseline_steps, solver=args.solver,
                         init=args.init, sites=args.sites, each_volume=args.each_volume,
                         heldout_maps=args.heldout_maps, split=args.split,
                         learned=not args.no_learned, phantom_seed=args.phantom_seed)
        print(f"{args.split} subjects, checkpoint {result['checkpoint']['workdir']} step "
              f"{result['checkpoint']['step']}, {result['machine']}, "
              f"{result['seconds']:.0f} s:\n")
        print(result["markdown"])
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
