"""Train the BlindHarmony flow prior on target-site images.

    python train.py --data phantom --preset demo --workdir runs/demo
    python train.py --data /path/to/target_site_niftis --mask-dir /path/to/masks \
                    --preset demo --workdir runs/mysite

Running the same command again resumes from the latest checkpoint.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--data", required=True,
                        help="'phantom' (the built-in data set) or a folder of target-site "
                             "NIfTI volumes (.nii/.nii.gz)")
    parser.add_argument("--workdir", required=True, help="checkpoint folder (created/resumed)")
    parser.add_argument("--preset", default="demo", help="tiny, demo or reference (default demo)")
    parser.add_argument("--mask-dir", help="brain masks matched to --data files by name "
                                           "(default: automatic masks)")
    parser.add_argument("--data-dir", help="where the built-in data set is generated "
                                           "(default data/phantom-PRESET)")
    parser.add_argument("--steps", type=int, help="override train.steps")
    parser.add_argument("--batch-size", type=int, help="override train.batch_size")
    parser.add_argument("--learning-rate", type=float, help="override train.learning_rate")
    parser.add_argument("--seed", type=int, help="override train.seed")
    parser.add_argument("--distributed", action="store_true",
                        help="call jax.distributed.initialize() first (multi-host)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import jax

    if args.distributed:
        jax.distributed.initialize()
    from bh_jax.checkpoint import CheckpointError
    from bh_jax.config import get_preset
    from bh_jax.evaluate import preferred_contrast
    from bh_jax.input_pipeline import folder_slices, phantom_slices
    from bh_jax.io import BadInputError
    from bh_jax.sharding import out_of_memory_exit
    from bh_jax.train import check_resume, train

    try:
        config = get_preset(args.preset)
        overrides = {"steps": args.steps, "batch_size": args.batch_size,
                     "learning_rate": args.learning_rate, "seed": args.seed}
        config = config.replace(train={k: v for k, v in overrides.items() if v is not None})
        check_resume(args.workdir, config)
        if args.data == "phantom":
            data_dir = args.data_dir or f"data/phantom-{config.name}"
            train_set, val_set = phantom_slices(config, data_dir, progress=not args.no_progress)
        else:
            train_set, val_set = folder_slices(args.data, config, args.mask_dir)
        print(f"training '{config.name}' on {len(train_set)} slices "
              f"({len(val_set)} validation), {config.data.height}x{config.data.width}, "
              f"{jax.device_count()} {jax.devices()[0].platform} device(s) -> {args.workdir}")
        metrics = train(config, args.workdir, train_set, val_set,
                        progress=not args.no_progress)
    except (BadInputError, CheckpointError, ValueError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except jax.errors.JaxRuntimeError as err:
        return out_of_memory_exit(err, config.train.batch_size)
    best = metrics["best_val_bpd"]
    print(f"step {metrics['step']}: best validation {best:.4f} bits/dim at step "
          f"{metrics['best_step']}; samples in {Path(args.workdir) / 'samples.png'}")
    if "contrast_check" in metrics:
        print(preferred_contrast(metrics["contrast_check"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
