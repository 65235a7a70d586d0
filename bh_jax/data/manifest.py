"""The built-in data set's files: its manifest, and its entries as prepared volumes.

`manifest.json` lists every image with its subject, site, split, ground truth
(the same subject at the target site), brain mask and white-matter labels.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from bh_jax.config import DataConfig
from bh_jax.io import load_mask, load_volume
from bh_jax.preprocess import PreparedVolume, prepare_volume, window_slices

MANIFEST = "manifest.json"


def load_manifest(folder: str | Path) -> dict:
    """Reads `manifest.json` and makes its paths absolute."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no phantom manifest (run bh-phantom "
                                "--out DIR first)")
    manifest = json.loads(path.read_text())
    for entry in manifest["images"] + manifest["subjects"]:
        for key in ("path", "truth", "mask", "wm"):
            if key in entry:
                entry[key] = str(folder / entry[key])
    return manifest


def select(manifest: dict, split: str | None = None, site: str | None = None) -> list[dict]:
    """Manifest image entries of one split and/or site."""
    return [e for e in manifest["images"]
            if (split is None or e["split"] == split) and (site is None or e["site"] == site)]


def target_volumes(manifest: dict, config: DataConfig, split: str) -> list[PreparedVolume]:
    """The target-site images of one split of a phantom manifest, prepared."""
    return [prepare_entry(e, config) for e in select(manifest, split, manifest["target_site"])]


def prepare_entry(entry: dict, config: DataConfig, key: str = "path") -> PreparedVolume:
    """Loads a phantom manifest entry's image (or its truth: key='truth') with its mask."""
    volume = load_volume(entry[key])
    return prepare_volume(volume, config, load_mask(entry["mask"], volume))


def wm_slices(prepared: PreparedVolume, wm_path: str | os.PathLike) -> np.ndarray:
    """Boolean white-matter labels (a manifest's `wm` file) of a prepared volume's slices."""
    return window_slices(prepared, load_volume(wm_path).data > 0.5) & prepared.slice_masks
