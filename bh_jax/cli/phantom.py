"""Build the built-in multi-site data set (simulated from the MNI ICBM152 template).

    bh-phantom --out data/phantom-demo --preset demo [--report]
    bh-phantom --out data/phantom-demo-val20 --preset demo --val-subjects 20

Writes OUT/sub-XXX/*.nii.gz (every subject at every site and shift, its brain mask
and white-matter labels), OUT/manifest.json and OUT/sites.png; docs/data.md
describes the sites. An existing data set of the same preset is reused.
"""

from __future__ import annotations

import sys
import time
from dataclasses import asdict
from pathlib import Path

from bh_jax.cli.common import Parser, positive_int, run
from bh_jax.config import PRESETS, PhantomConfig, get_preset


def main(argv: list[str] | None = None) -> int:
    parser = Parser(prog="bh-phantom", description=__doc__.split("\n\n")[0],
                    epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--preset", default="demo", choices=sorted(PRESETS),
                        help="voxel size and number of subjects")
    parser.add_argument("--seed", type=int, help="the subjects' seed (default: the preset's, 0)")
    parser.add_argument("--val-subjects", type=positive_int,
                        help="validation subjects; beyond the preset's (demo 3), extra ones "
                             "imaged at every site, the other subjects unchanged (a larger "
                             "set to choose settings on; default: the preset's)")
    parser.add_argument("--report", action="store_true",
                        help="print PSNR/SSIM of every source site (and of HM, Nyul, Nyul "
                             "per site and SSIMH) against its target-site truth, on the "
                             "test subjects")
    args = parser.parse_args(argv)

    def body() -> int:
        from bh_jax.data.phantom import ensure_phantom, grid, save_grid_png

        cfg = get_preset(args.preset).phantom
        if args.seed is not None:
            cfg = PhantomConfig(**{**asdict(cfg), "seed": args.seed})
        if args.val_subjects is not None:
            if args.val_subjects < cfg.n_val:
                raise ValueError(f"--val-subjects must be at least the preset's {cfg.n_val}, "
                                 f"got {args.val_subjects}")
            cfg = PhantomConfig(**{**asdict(cfg), "extra_val": args.val_subjects - cfg.n_val})
        start = time.perf_counter()
        manifest = ensure_phantom(args.out, cfg, args.preset)
        png = save_grid_png(manifest, Path(args.out) / "sites.png")
        shape, _ = grid(cfg.voxel_mm)
        counts = {split: sum(s["split"] == split for s in manifest["subjects"])
                  for split in ("train", "val", "test")}
        print(f"built-in data set '{args.preset}' in {args.out}: {len(manifest['subjects'])} "
              f"subjects ({counts['train']} train / {counts['val']} val / {counts['test']} "
              f"test), {len(manifest['sites'])} sites, volumes {shape} at {cfg.voxel_mm} mm, "
              f"{len(manifest['images'])} images ({time.perf_counter() - start:.1f} s)")
        for name, site in manifest["sites"].items():
            print(f"  {name:9s} {site['kind']:7s} {site['description']}")
        print(f"site grid: {png}")
        if args.report:
            from bh_jax.experiments.evaluate import site_report

            print(site_report(manifest, get_preset(args.preset).data))
        return 0

    return run(body)


if __name__ == "__main__":
    sys.exit(main())
