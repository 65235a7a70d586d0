"""Cross-checks bh_jax's Nyul (`bh_jax.baselines.nyul`) against intensity-normalization's.

Both fit the standard scale on the built-in data's target training volumes (in-brain
voxels of their prepared slices) and standardize every test volume of every source
domain; the script prints both PSNRs against the truth and their largest difference.
intensity-normalization runs in its own interpreter (it needs Python >= 3.12):

    /root/.pyenv/versions/3.12.1/bin/python -m venv /tmp/inorm-venv
    /tmp/inorm-venv/bin/pip install "intensity-normalization==4.0.0"
    INORM_PYTHON=/tmp/inorm-venv/bin/python python tools/nyul_crosscheck.py --data-dir data/phantom-demo

Its output range is set to the target volumes' mean first and last landmarks (its
`output_min_value` / `output_max_value`), which is how bh_jax puts the scale in the
target's units; its output is clipped to [0, 1] as bh_jax's is.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

THEIRS = r"""
import sys
import numpy as np
from intensity_normalization.methods import nyul

data = np.load(sys.argv[1])
n_train, n_test = int(data["n_train"]), int(data["n_test"])
train = [data[f"train_{i}"] for i in range(n_train)]
masks = [data[f"train_mask_{i}"] for i in range(n_train)]
ends = np.array([np.percentile(x[m], [1, 99]) for x, m in zip(train, masks)]).mean(axis=0)
transform = nyul.fit_array(train, masks, output_min_value=ends[0], output_max_value=ends[1])
outputs = {}
for i in range(n_test):
    x, m = data[f"test_{i}"], data[f"test_mask_{i}"]
    outputs[f"out_{i}"] = np.where(m, np.clip(transform.transform_array(x, m), 0, 1), x)
np.savez(sys.argv[2], scale=transform.standard_scale, **outputs)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default="data/phantom-demo")
    parser.add_argument("--preset", default="demo")
    args = parser.parse_args()
    interpreter = os.environ.get("INORM_PYTHON")
    if not interpreter:
        parser.error("set INORM_PYTHON to a Python with intensity-normalization 4.0 (see --help)")

    from bh_jax.baselines.nyul import NyulScale
    from bh_jax.config import get_preset
    from bh_jax.data.manifest import prepare_entry, select, target_volumes
    from bh_jax.data.phantom import ensure_phantom
    from bh_jax.experiments.evaluate import slice_scores

    config = get_preset(args.preset)
    manifest = ensure_phantom(args.data_dir, config.phantom.evaluation(), args.preset)
    train = target_volumes(manifest, config.data, "train")
    ours = NyulScale.fit([p.slices[p.slice_masks] for p in train])
    entries = [e for e in select(manifest, "test") if e["site"] != manifest["target_site"]]
    tests = [prepare_entry(e, config.data) for e in entries]
    with tempfile.TemporaryDirectory() as tmp:
        arrays = {"n_train": len(train), "n_test": len(tests)}
        for i, p in enumerate(train):
            arrays[f"train_{i}"], arrays[f"train_mask_{i}"] = p.slices, p.slice_masks
        for i, p in enumerate(tests):
            arrays[f"test_{i}"], arrays[f"test_mask_{i}"] = p.slices, p.slice_masks
        np.savez(Path(tmp) / "in.npz", **arrays)
        subprocess.run([interpreter, "-c", THEIRS, str(Path(tmp) / "in.npz"),
                        str(Path(tmp) / "out.npz")], check=True)
        theirs = dict(np.load(Path(tmp) / "out.npz"))
    print(f"standard scale, largest difference: "
          f"{np.abs(theirs['scale'] - ours.intensities).max():.2e} "
          f"(ours {np.round(ours.intensities, 4).tolist()})")
    rows, largest = {}, 0.0
    for i, (entry, source) in enumerate(zip(entries, tests)):
        truth = prepare_entry(entry, config.data, key="truth")
        mine = ours(source.slices, source.slice_masks)
        other = theirs[f"out_{i}"]
        largest = max(largest, float(np.abs(mine - other)[source.slice_masks].max()))
        for name, x in (("bh_jax", mine), ("intensity-normalization", other)):
            psnr = slice_scores(x, truth.slices, truth.slice_masks)["psnr"]
            rows.setdefault(entry["site"], {}).setdefault(name, []).append(psnr)
    sites = list(rows)
    print("\n| Nyul (test subjects, in-mask PSNR dB) | " + " | ".join(sites) + " |")
    print("|---|" + "---|" * len(sites))
    for name in ("bh_jax", "intensity-normalization"):
        print(f"| {name} | " + " | ".join(
            f"{np.mean(np.concatenate(rows[s][name])):.2f}" for s in sites) + " |")
    print(f"\nlargest in-brain difference between the two outputs: {largest:.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
