"""tools/params_npz.py: a prior carried as a few small files comes back exactly."""

import importlib.util
from pathlib import Path

import jax
import numpy as np
import pytest

from bh_jax.training.checkpoint import load_flow

TOOL = Path(__file__).resolve().parents[2] / "tools" / "params_npz.py"


def _tool():
    spec = importlib.util.spec_from_file_location("params_npz", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_export_then_import_gives_the_same_prior(trained, tmp_path):
    tool = _tool()
    tool.export(trained[0], tmp_path / "carried")
    assert sorted(p.name for p in (tmp_path / "carried").iterdir()) == [
        "config.json", "metrics.json", "params.npz", "reference.npz"]
    tool.import_(tmp_path / "carried", tmp_path / "rebuilt")
    before, after = load_flow(trained[0]), load_flow(tmp_path / "rebuilt")
    assert after.config == before.config and after.identity["step"] == before.identity["step"]
    for a, b in zip(jax.tree.leaves(before.params), jax.tree.leaves(after.params), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(SystemExit, match="exists"):
        tool.import_(tmp_path / "carried", tmp_path / "rebuilt")
