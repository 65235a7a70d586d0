"""Train the BlindHarmony flow prior on target-site images.

    bh-train --data phantom --preset demo --workdir runs/demo
    bh-train --data /path/to/target_site_niftis --mask-dir /path/to/masks \\
             --preset demo --workdir runs/mysite
    bh-train --data phantom --preset demo --init-from bh_jax/pretrained/demo \\
             --steps 1500 --set train.contrast_weight=1 --workdir runs/demo-contrast

(`python train.py ...` is the same command.) Running the same command again
resumes from the latest checkpoint. Exit code 2: nothing was trained (bad
arguments, data or workdir; out of memory; training diverged).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from bh_jax.cli.common import Parser, fail, positive_float, positive_int, run
from bh_jax.config import PRESETS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = Parser(prog="bh-train", description=__doc__.split("\n\n")[0],
                    epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--data", required=True,
                        help="'phantom' (the built-in data set) or a folder of target-site "
                             "NIfTI volumes (.nii/.nii.gz)")
    parser.add_argument("--workdir", required=True, help="checkpoint folder (created/resumed)")
    parser.add_argument("--preset", default="demo", choices=sorted(PRESETS),
                        help="model, slice size and training schedule")
    parser.add_argument("--mask-dir", help="brain masks matched to --data files by name "
                                           "(default: automatic masks)")
    parser.add_argument("--data-dir", help="where the built-in data set is generated "
                                           "(default data/phantom-PRESET, or "
                                           "data/phantom-PRESET-Ntrain with --train-subjects)")
    parser.add_argument("--train-subjects", type=positive_int,
                        help="--data phantom: training subjects; beyond the preset's (demo "
                             "16), extra ones imaged at the target site only, validation and "
                             "test subjects unchanged (default: the preset's)")
    parser.add_argument("--voxel-size", type=positive_float, metavar="MM",
                        help="--data FOLDER: the prior's isotropic grid; every training "
                             "volume (and mask) is resampled to it (default: the preset's: "
                             + ", ".join(f"{n} {c.data.voxel_mm:g} mm" for n, c in
                                         PRESETS.items() if c.data.voxel_mm) + ")")
    parser.add_argument("--steps", type=positive_int,
                        help="training steps (default: the preset's: " + ", ".join(
                            f"{n} {c.train.steps}" for n, c in PRESETS.items()) + ")")
    parser.add_argument("--batch-size", type=positive_int,
                        help="images per step, a multiple of the device count (default: "
                             "the preset's: " + ", ".join(
                                 f"{n} {c.train.batch_size}" for n, c in PRESETS.items()) + ")")
    parser.add_argument("--learning-rate", type=positive_float,
                        help="peak Adam learning rate (default: the preset's: " + ", ".join(
                            f"{n} {c.train.learning_rate:g}" for n, c in PRESETS.items()) + ")")
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                        help="override any preset setting, e.g. --set flow.hidden=64 "
                             "(repeatable; bh_jax/config.py lists them)")
    parser.add_argument("--time-limit", type=positive_float, metavar="MINUTES",
                        help="stop with a checkpoint after this long; the same command "
                             "resumes (the learning-rate schedule stays that of --steps)")
    parser.add_argument("--init-from", metavar="CHECKPOINT",
                        help="start from this trained prior's best parameters (the same model "
                             "and slice size; e.g. bh_jax/pretrained/demo): fine-tuning, with "
                             "a fresh optimizer and the --steps schedule; flow.num_bits may "
                             "differ (it sets only the dequantisation noise)")
    parser.add_argument("--seed", type=int, help="batch and noise seed (default: the preset's, 0)")
    parser.add_argument("--distributed", action="store_true",
                        help="call jax.distributed.initialize() first (multi-host)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from bh_jax.config import get_preset
    from bh_jax.io import MAX_VOXEL_MM

    try:
        config = get_preset(args.preset).with_settings(args.set)
    except ValueError as err:
        return fail(err)
    overrides = {"steps": args.steps, "batch_size": args.batch_size,
                 "learning_rate": args.learning_rate, "seed": args.seed}
    config = config.replace(train={k: v for k, v in overrides.items() if v is not None})
    if args.voxel_size is not None:
        if args.data == "phantom":
            return fail("--voxel-size is for --data FOLDER (the built-in data set is rendered "
                        "at the preset's voxel size)")
        if args.voxel_size > MAX_VOXEL_MM:
            return fail(f"--voxel-size must be at most {MAX_VOXEL_MM:g} mm, "
                        f"got {args.voxel_size:g}")
        config = config.replace(data={"voxel_mm": args.voxel_size})
    if args.train_subjects is not None:
        if args.data != "phantom":
            return fail("--train-subjects is for --data phantom (a folder trains on all it holds)")
        if args.train_subjects < config.phantom.n_train:
            return fail(f"--train-subjects must be at least the preset's "
                        f"{config.phantom.n_train}, got {args.train_subjects}")
        config = config.replace(phantom={"extra_train": args.train_subjects
                                         - config.phantom.n_train})

    def body() -> int:
        import jax

        from bh_jax.training.checkpoint import load_flow, saved_step
        from bh_jax.training.input_pipeline import folder_slices, phantom_slices
        from bh_jax.training.qc import preferred_contrast
        from bh_jax.training.train import check_resume, train

        if args.distributed:
            jax.distributed.initialize()
        check_resume(args.workdir, config)
        step = saved_step(args.workdir)
        if step is not None:
            print(f"resuming from step {step} of {config.train.steps} in {args.workdir}",
                  flush=True)
        init_params = None
        if args.init_from is not None and step is None:
            start = load_flow(args.init_from)
            # num_bits sets only the training noise and the bits/dim offset, not the params
            same_model = dataclasses.replace(start.config.flow, num_bits=config.flow.num_bits)
            if (same_model, start.config.data) != (config.flow, config.data):
                raise ValueError(f"{args.init_from}: --init-from holds a different model or "
                                 f"slice size than preset {config.name!r} with these --set "
                                 "options")
            init_params = start.params
            print(f"starting from {args.init_from} (step {start.identity['step']})", flush=True)
        if args.data == "phantom":
            extra = config.phantom.extra_train
            data_dir = args.data_dir or (f"data/phantom-{config.name}" + (
                f"-{config.phantom.n_train + extra}train" if extra else ""))
            train_set, val_set = phantom_slices(config, data_dir, progress=not args.no_progress)
        else:
            train_set, val_set = folder_slices(args.data, config, args.mask_dir)
        print(f"training '{config.name}' on {len(train_set)} slices "
              f"({len(val_set)} validation), {config.data.height}x{config.data.width}, "
              f"{jax.device_count()} {jax.devices()[0].platform} device(s) -> {args.workdir}")
        metrics = train(config, args.workdir, train_set, val_set,
                        progress=not args.no_progress,
                        time_limit_s=None if args.time_limit is None else 60 * args.time_limit,
                        init_params=init_params, init_note=args.init_from)
        if metrics["step"] < config.train.steps:
            print(f"stopped at step {metrics['step']} of {config.train.steps} after the "
                  f"{args.time_limit:g}-minute limit; run the same command to continue")
        best = metrics["best_val_bpd"]
        print(f"step {metrics['step']}: best validation {best:.4f} bits/dim at step "
              f"{metrics['best_step']}; samples in {Path(args.workdir) / 'samples.png'}")
        if "contrast_check" in metrics:
            print(preferred_contrast(metrics["contrast_check"]))
        return 0

    return run(body, config.train.batch_size)


if __name__ == "__main__":
    sys.exit(main())
