"""How much does each scan's bias-field fit gain, and how large is the field?

Fits each site's curve and fields as the default does (`pipeline.fit_site_curve`) and
prints, per scan, what its field fit lowered the loss by (`pipeline.field_gain`,
bits/dim) and the field's size (`pipeline.field_size`, the log-field's std over the
brain), with the site's medians. Could either tell a site whose scans carry a field
of their own from an intensity shift of the target (whose field is the target's),
so that only the first gets fields? Not with three scans a site, on the `demo`
validation subjects (docs/methods.md, "A field only where the likelihood wants one").
`--split train --sites target` measures the target's own training scans.

    python tools/field_gains.py --checkpoint bh_jax/pretrained/demo \
        --data-dir data/phantom-demo --out runs/field-gains.json \
        --sites target exp log gamma0.7 gamma1.5 siteA siteB siteC siteD
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from noise_check import site_volumes

from bh_jax.data.phantom import ensure_phantom
from bh_jax.harmonize.engine import Harmonizer
from bh_jax.harmonize.pipeline import fit_site_curve
from bh_jax.harmonize.settings import default_settings
from bh_jax.training.checkpoint import load_flow


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", required=True, help="JSON file of the gains and sizes")
    parser.add_argument("--sites", nargs="+", required=True)
    parser.add_argument("--split", default="val", choices=["train", "val", "test"])
    args = parser.parse_args()

    flow = load_flow(args.checkpoint)
    manifest = ensure_phantom(args.data_dir, flow.config.phantom.evaluation(), flow.config.name)
    calibrator = Harmonizer(flow.model, flow.params, default_settings(), 32).calibrator
    fits = {}
    for site in args.sites:
        _, sources, _, _ = site_volumes(manifest, args.split, site, flow.config.data)
        fit = fit_site_curve(calibrator, sources, flow.reference)
        fits[site] = {Path(path).name: {"gain": gain, "log_std": fit.field_sizes[path]}
                      for path, gain in fit.field_gains.items()}
        for key in ("gain", "log_std"):
            values = [scan[key] for scan in fits[site].values()]
            print(f"{site} {key}: median {np.median(values):.5f}, scans "
                  + " ".join(f"{v:.5f}" for v in values), flush=True)
        Path(args.out).write_text(json.dumps(fits, indent=1))


if __name__ == "__main__":
    main()
