"""The shipped `demo` checkpoint: loadable, as recorded, and guarded against drift."""

import json
import shutil

import jax
import numpy as np
import pytest

from bh_jax import pretrained
from bh_jax.cli import pretrained as pretrained_cli
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


def test_export_ships_the_best_state_with_its_provenance(trained, tmp_path, monkeypatch,
                                                        run_main):
    """bh-pretrained export: the training folder's best parameters, loadable, with a
    provenance that says what they are; the training folder untouched."""
    workdir, config, metrics = trained
    monkeypatch.setattr(pretrained, "ROOT", tmp_path)
    before = _files(workdir)
    result = run_main(pretrained_cli.main, "export", workdir, "--name", "mine", "--command",
                      "bh-train --preset tiny", "--training-time", "1 min", "--machine", "ci")
    assert result.returncode == 0, result.stderr
    assert _files(workdir) == before
    assert pretrained.available() == ["mine"]
    shipped, original = load_flow(pretrained.path("mine")), load_flow(workdir)
    assert shipped.config == config and shipped.identity["step"] == original.identity["step"]
    jax.tree_util.tree_map(np.testing.assert_array_equal, shipped.params, original.params)
    record = pretrained.provenance("mine")
    assert record["command"] == "bh-train --preset tiny" and record["preset"] == "tiny"
    assert record["best_val_bpd"] == metrics["best_val_bpd"]
    assert record["tiny_val_bpd"] == pytest.approx(
        pretrained.validation_bpd(workdir, "tiny"), abs=1e-6)
    folder = pretrained.path("mine")
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert size == record["size_bytes"] + len((folder / "PROVENANCE.json").read_bytes())
    listed = run_main(pretrained_cli.main, "list")
    assert listed.returncode == 0 and listed.stdout.startswith("mine {")


@pytest.mark.parametrize("problem", ["no checkpoint", "no metrics", "bad name"])
def test_export_of_an_unusable_folder_is_one_line_and_writes_nothing(
        trained, tmp_path, monkeypatch, run_main, problem):
    workdir, _, _ = trained
    source = tmp_path / "run"
    shutil.copytree(workdir, source)
    name, expected = "mine", str(source / "latest")
    if problem == "no checkpoint":
        for which in ("best", "latest"):
            shutil.rmtree(source / which, ignore_errors=True)
    elif problem == "no metrics":
        (source / "metrics.json").unlink()
        expected = str(source / "metrics.json")
    else:
        name, expected = "../mine", "'../mine': a checkpoint's name must be a plain folder"
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    monkeypatch.setattr(pretrained, "ROOT", shipped)
    result = run_main(pretrained_cli.main, "export", source, "--name", name, "--command", "c",
                      "--training-time", "t", "--machine", "m")
    assert result.returncode == 2
    assert expected in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert list(shipped.iterdir()) == [] and not (tmp_path / "mine").exists()
