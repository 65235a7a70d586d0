"""Held-out intensity maps: source domains that no method was chosen on.

The paper's shifts (exp, log, gamma) are the family every setting was tuned
against. These three maps were fixed before any result on them was seen, and
nothing is tuned on them: they check that a method generalises to intensity
maps of other shapes. Each is increasing (an intensity map, like a scanner's
contrast) and applied to the target site's image volume-wise, then min-max
normalised like the paper's shifts (`bh_jax.data.shifts`):

  sigmoid: an S-curve, contrast stretched in the middle, squeezed at both ends;
  knee:    flat below 60 % of the range, then steep (a piecewise linear knee);
  cubic:   x^3 + 0.2 x, strongly convex.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np

HELDOUT_MAPS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-8.0 * (x - 0.5))),
    "knee": lambda x: np.where(x < 0.6, 0.5 * x, 0.3 + 1.75 * (x - 0.6)),
    "cubic": lambda x: x**3 + 0.2 * x,
}


def apply_map(image: np.ndarray, name: str) -> np.ndarray:
    """`name`'s map of a target image (scaled to [0, 1] by its maximum first),
    min-max normalised over the volume; float32, zeros if constant."""
    image = np.asarray(image, np.float64)
    top = image.max()
    y = HELDOUT_MAPS[name](image / top if top > 0 else image)
    low, high = y.min(), y.max()
    if high - low <= 1e-12:
        return np.zeros(image.shape, np.float32)
    return ((y - low) / (high - low)).astype(np.float32)


def with_heldout_maps(manifest: dict, folder: str | Path, split: str = "test") -> dict:
    """A copy of `manifest` with each held-out map as a source site of the target
    site's `split` subjects (their images written under `folder`, reused if there)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = copy.deepcopy(manifest)
    targets = [e for e in manifest["images"]
               if e["site"] == manifest["target_site"] and e["split"] == split]
    for name in HELDOUT_MAPS:
        out["sites"][name] = {"kind": "heldout-map", "description": f"held-out map {name}"}
        for entry in targets:
            path = folder / f"{entry['subject']}_site-{name}_T1w.nii.gz"
            if not path.is_file():
                image = nib.load(entry["path"])
                mapped = nib.Nifti1Image(apply_map(image.get_fdata(), name), image.affine)
                tmp = path.with_name(f".{path.name}.tmp.nii.gz")
                nib.save(mapped, str(tmp))
                tmp.replace(path)
            out["images"].append({**entry, "site": name, "path": str(path)})
    return out
