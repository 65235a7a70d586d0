"""Train a learned baseline on the built-in data set.

    python -m bh_jax.baselines.train unet --preset demo --source exp --workdir runs/unet-exp
    python -m bh_jax.baselines.train cyclegan --preset demo --source exp --workdir runs/cyclegan-exp
    python -m bh_jax.baselines.train segmenter --preset demo --workdir runs/segmenter

The slice size and the data set are the preset's (the same as the flow
prior's). Training state is saved every 200 steps: running the same command
again resumes an interrupted run (another config in the folder is an error). `harmonize.py --method unet|cyclegan --checkpoint DIR` and
`python -m bh_jax.bench quality` use the folder.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from pathlib import Path

from bh_jax.baselines.learned import KINDS, BaselineConfig, train_baseline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bh_jax.baselines.train",
                                     description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--preset", default="demo", help="slice size and built-in data set")
    parser.add_argument("--data-dir", help="the built-in data set (default data/phantom-PRESET)")
    defaults = BaselineConfig("unet")
    for field in fields(BaselineConfig):
        if field.name != "kind":
            parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(
                getattr(defaults, field.name)), default=getattr(defaults, field.name))
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    import jax

    from bh_jax.config import get_preset
    from bh_jax.data.phantom import ensure_phantom
    from bh_jax.sharding import out_of_memory_exit

    if Path(args.workdir).exists() and not Path(args.workdir).is_dir():
        print(f"error: {args.workdir}: exists and is not a folder (--workdir)", file=sys.stderr)
        return 2
    try:
        preset = get_preset(args.preset)
        config = BaselineConfig(**{f.name: getattr(args, f.name) for f in fields(BaselineConfig)})
        manifest = ensure_phantom(args.data_dir or f"data/phantom-{args.preset}", preset.phantom,
                                  args.preset, progress=not args.no_progress)
        metrics = train_baseline(config, preset.data, manifest, args.workdir,
                                 progress=not args.no_progress)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except jax.errors.JaxRuntimeError as err:
        return out_of_memory_exit(err, args.batch_size)
    print(f"{config.kind} ({config.source if config.kind != 'segmenter' else 'target'}): "
          f"loss {metrics['first_loss']:.4f} -> {metrics['final_loss']:.4f}; saved in "
          f"{args.workdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
