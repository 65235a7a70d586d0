"""The shipped `demo` checkpoint: loadable, as recorded, and guarded against drift."""

import json
import shutil

import pytest

from bh_jax import pretrained
from bh_jax.config import get_preset
from bh_jax.training.checkpoint import CheckpointError, load_flow


def _files(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns)
                  for p in folder.rglob("*"))


def test_shipped_checkpoint_loads_with_its_recorded_config():
    folder = pretrained.path("demo")
    record = pretrained.provenance("demo")
    before = _files(folder)
    flow = load_flow(folder)
    assert _files(folder) == before, "loading wrote into the shipped folder"
    assert flow.config.name == record["preset"] == "demo"
    assert flow.config.flow == get_preset("demo").flow
    assert flow.config.data == get_preset("demo").data
    assert flow.identity["step"] == record["step"]
    assert record["best_val_bpd"] < 6.0 and record["command"].startswith("python train.py")
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size == record["size_bytes"] + len((folder / "PROVENANCE.json").read_bytes())
    assert size < 10 * 2**20


def test_validation_bpd_matches_the_recorded_value(tiny_phantom):
    folder, _ = tiny_phantom
    bpd = pretrained.validation_bpd(pretrained.path("demo"), "tiny", data_dir=folder)
    assert bpd == pytest.approx(pretrained.provenance("demo")["tiny_val_bpd"], abs=0.02)


def test_checkpoint_of_another_version_is_refused(tmp_path):
    copy = tmp_path / "old"
    shutil.copytree(pretrained.path("demo"), copy)
    raw = json.loads((copy / "config.json").read_text())
    raw["version"] = 0
    (copy / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match=r"config\.json.*version 0 is not supported"):
        load_flow(copy)


def test_unknown_shipped_name_lists_the_available_ones():
    with pytest.raises(ValueError, match="available: \\['demo'\\]"):
        pretrained.path("nope")
