"""Train a learned baseline on the built-in data set.

    bh-baselines unet --preset demo --source exp --workdir runs/unet-exp
    bh-baselines cyclegan --preset demo --source exp --workdir runs/cyclegan-exp
    bh-baselines segmenter --preset demo --workdir runs/segmenter

The slice size and the data set are the preset's (the same as the flow prior's).
Training state is saved every 200 steps: running the same command again resumes an
interrupted run (another config in the folder is an error). `bh-harmonize --method
unet|cyclegan --checkpoint DIR` and `bh-bench quality` use the folder.
"""

from __future__ import annotations

import sys
from dataclasses import fields

from bh_jax.cli.common import Parser, positive_float, positive_int, run, writable_folder
from bh_jax.config import PRESETS

_CHECKED = {int: positive_int, float: positive_float}
_FIELD_HELP = {"source": "the ONE source domain of unet / cyclegan (a site of the data set)",
               "features": "U-net width", "depth": "U-net downsamplings",
               "steps": "Adam steps", "batch_size": "slices per step",
               "learning_rate": "Adam learning rate", "loss": "unet loss: l1 or l2",
               "cycle_weight": "cyclegan: weight of the cycle losses"}


def main(argv: list[str] | None = None) -> int:
    from bh_jax.baselines.learned import KINDS, BaselineConfig

    parser = Parser(prog="bh-baselines", description=__doc__.split("\n\n")[0],
                    epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("kind", choices=KINDS, help="what to train")
    parser.add_argument("--workdir", required=True, help="training folder (created/resumed)")
    parser.add_argument("--preset", default="demo", choices=sorted(PRESETS),
                        help="slice size and built-in data set")
    parser.add_argument("--data-dir", help="the built-in data set (default data/phantom-PRESET)")
    defaults = BaselineConfig("unet")
    for field in fields(BaselineConfig):
        if field.name in ("kind", "seed"):
            continue
        default = getattr(defaults, field.name)
        parser.add_argument(f"--{field.name.replace('_', '-')}", default=default,
                            type=_CHECKED.get(type(default), type(default)),
                            help=_FIELD_HELP[field.name])
    parser.add_argument("--seed", type=int, default=defaults.seed, help="initialisation seed")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    def body() -> int:
        from bh_jax.baselines.learned import train_baseline
        from bh_jax.config import get_preset
        from bh_jax.data.phantom import ensure_phantom

        writable_folder(args.workdir, "--workdir")
        preset = get_preset(args.preset)
        config = BaselineConfig(**{f.name: getattr(args, f.name) for f in fields(BaselineConfig)})
        manifest = ensure_phantom(args.data_dir or f"data/phantom-{args.preset}", preset.phantom,
                                  args.preset, progress=not args.no_progress)
        metrics = train_baseline(config, preset.data, manifest, args.workdir,
                                 progress=not args.no_progress)
        print(f"{config.kind} ({config.source if config.kind != 'segmenter' else 'target'}): "
              f"loss {metrics['first_loss']:.4f} -> {metrics['final_loss']:.4f}; saved in "
              f"{args.workdir}")
        return 0

    return run(body, args.batch_size)


if __name__ == "__main__":
    sys.exit(main())
