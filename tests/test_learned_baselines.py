"""U-net, CycleGAN and WM segmenter baselines (tiny configs), and the paper's tables."""

import json

import jax
import numpy as np
import pytest

from bh_jax.baselines.learned import (BaselineConfig, load_baseline, train_baseline,
                                      training_data)
from bh_jax.baselines.networks import PatchDiscriminator, UNet
from bh_jax.tables import USEFUL_CEILING


def test_network_shapes():
    x = np.zeros((2, 32, 32, 1), np.float32)
    unet = UNet(features=4, depth=2, out_channels=3)
    assert unet.apply(unet.init(jax.random.PRNGKey(0), x), x).shape == (2, 32, 32, 3)
    residual = UNet(features=4, depth=2, residual=True)
    ones = np.ones_like(x)
    np.testing.assert_array_equal(  # zero-initialised output layer: identity at start
        residual.apply(residual.init(jax.random.PRNGKey(0), ones), ones), ones)
    disc = PatchDiscriminator(features=4, layers=2)
    assert disc.apply(disc.init(jax.random.PRNGKey(0), x), x).shape == (2, 8, 8)


@pytest.fixture(scope="module")
def baselines(tiny_phantom, tiny_config, tmp_path_factory):
    """{kind: (folder, config, metrics)} of the three baselines, trained once."""
    _, manifest = tiny_phantom
    out = {}
    for kind in ("unet", "cyclegan", "segmenter"):
        folder = tmp_path_factory.mktemp(kind)
        config = BaselineConfig(kind, features=8, steps=50, batch_size=8)
        out[kind] = folder, config, train_baseline(config, tiny_config.data, manifest, folder,
                                                   progress=False)
    return out


@pytest.mark.parametrize("kind", ["unet", "cyclegan", "segmenter"])
def test_loss_drops_and_checkpoint_round_trips(kind, baselines, tiny_phantom, tiny_config):
    _, manifest = tiny_phantom
    folder, config, metrics = baselines[kind]
    if kind == "cyclegan":  # the cycle starts exact (identity generators): check the GAN
        history = metrics["history"]
        assert np.isfinite([h["discriminator"] for h in history]).all()
        assert history[-1]["discriminator"] < history[0]["discriminator"]
    else:
        assert metrics["final_loss"] < 0.8 * metrics["first_loss"]
    loaded = load_baseline(folder)
    assert loaded.config == config and loaded.data == tiny_config.data
    arrays = training_data(config, manifest, tiny_config.data)
    images = arrays.get("source", arrays.get("image"))[:5]
    masks = arrays.get("source_mask", arrays.get("mask"))[:5]
    out = loaded.apply(images, masks, batch_size=4)
    assert out.shape == images.shape
    assert out.dtype == (bool if kind == "segmenter" else np.float32)
    assert not out[~masks].any()


def test_baseline_folder_errors(tmp_path):
    with pytest.raises(ValueError, match="baseline.json: not found"):
        load_baseline(tmp_path)
    with pytest.raises(ValueError, match="kind must be one of"):
        BaselineConfig("gan")


def test_cli_clear_errors_for_a_file_as_workdir_and_out_of_memory(tiny_phantom, tmp_path,
                                                                  monkeypatch, capsys):
    import bh_jax.baselines.train as cli

    folder, _ = tiny_phantom
    args = ["unet", "--preset", "tiny", "--data-dir", str(folder), "--batch-size", "8",
            "--no-progress", "--workdir"]
    (tmp_path / "file").write_text("")
    assert cli.main(args + [str(tmp_path / "file")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'file'}: exists and is not a folder (--workdir)\n"

    def exhausted(*_, **__):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 9 bytes.")

    monkeypatch.setattr(cli, "train_baseline", exhausted)
    assert cli.main(args + [str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory with batches of 8 slices") and err.count("\n") == 1


def test_unknown_source_site(tiny_phantom, tiny_config):
    _, manifest = tiny_phantom
    with pytest.raises(ValueError, match="no train images of source site 'nope'"):
        training_data(BaselineConfig("unet", source="nope"), manifest, tiny_config.data)


def test_quality_quick_end_to_end(trained, tiny_phantom, baselines, tmp_path):
    from bh_jax.bench import quality
    from bh_jax.evaluate import TYPICAL
    from bh_jax.tables import SCANNERS, SHIFTS

    folder, _ = tiny_phantom
    # The `image` solver here: the default `latent` one runs in the demo and CLI tests.
    result = quality(str(trained[0]), str(folder), str(tmp_path), batch=8, quick=True,
                     solver="image", **{kind: str(baselines[kind][0]) for kind in baselines})
    assert result["settings"].startswith("SolverConfig(solver='image'")
    rows = ["Source", "BlindHarmony", "HM", "SSIMH", "CycleGAN (exp)", "U-net (exp)", TYPICAL]
    assert set(result["results"]) == set(SHIFTS + SCANNERS)
    for site, scores in result["results"].items():
        assert list(scores) == rows, site
        for name, values in scores.items():
            assert all(np.isfinite(values[m]) for m in ("psnr", "ssim", "dice")), (site, name)
    assert 0 <= result["wm_dice_target_ceiling"] <= 1
    markdown = (tmp_path / "quality.md").read_text()
    undertrained = result["wm_dice_target_ceiling"] < USEFUL_CEILING
    assert ("warning" in result) == ("Warning: the WM segmenter" in markdown) == undertrained
    assert markdown.count("| method |") == 3 and "Table 3" in markdown
    assert all(f"| {row} |" in markdown for row in rows)
    assert json.loads((tmp_path / "quality.json").read_text())["results"] == result["results"]
    assert (tmp_path / "quality.png").stat().st_size > 0


def test_quality_on_chosen_sites_only(trained, tiny_phantom, baselines, tmp_path):
    from bh_jax.bench import quality

    folder, _ = tiny_phantom
    given = {kind: str(baselines[kind][0]) for kind in baselines}
    result = quality(str(trained[0]), str(folder), str(tmp_path), batch=8, quick=True,
                     solver="curve", sites=["exp"], **given)
    assert set(result["results"]) == {"exp"}
    markdown = (tmp_path / "quality.md").read_text()
    assert "Table 1" in markdown and "Table 2" not in markdown and "Table 3" in markdown
    with pytest.raises(ValueError, match="sites must be among"):
        quality(str(trained[0]), str(folder), str(tmp_path / "bad"), batch=8, quick=True,
                sites=["siteZ"], **given)


def test_harmonize_cli_runs_learned_baselines(baselines, tiny_phantom, tmp_path):
    """harmonize.py --method unet|cyclegan: the input's geometry out, the baseline in the report."""
    import subprocess
    import sys
    from pathlib import Path

    import nibabel as nib

    root = Path(__file__).resolve().parents[1]
    _, manifest = tiny_phantom
    entry = next(e for e in manifest["images"] if e["split"] == "test" and e["site"] == "exp")

    def harmonize(method, folder, out):
        return subprocess.run([sys.executable, str(root / "harmonize.py"), entry["path"],
                               "--method", method, "--checkpoint", str(folder),
                               "--output-dir", str(out), "--no-progress"],
                              capture_output=True, text=True, cwd=root)

    for kind in ("unet", "cyclegan"):
        result = harmonize(kind, baselines[kind][0], tmp_path / kind)
        assert result.returncode == 0, result.stderr
        output = next((tmp_path / kind).glob("*_harmonized.nii.gz"))
        source, harmonized = nib.load(entry["path"]), nib.load(output)
        assert harmonized.shape == source.shape
        np.testing.assert_allclose(harmonized.affine, source.affine, atol=1e-6)
        assert np.isfinite(harmonized.get_fdata()).all()
        report = json.loads(output.with_name(output.name.replace(".nii.gz", ".json")).read_text())
        assert report["method"] == kind and report["checkpoint"]["kind"] == kind
    wrong = harmonize("cyclegan", baselines["unet"][0], tmp_path / "wrong")
    assert wrong.returncode == 2 and "holds a unet baseline, not a cyclegan" in wrong.stderr
    assert not (tmp_path / "wrong").exists() or not any((tmp_path / "wrong").iterdir())


def test_interrupted_training_resumes_exactly(tiny_phantom, tiny_config, tmp_path):
    _, manifest = tiny_phantom
    config = BaselineConfig("unet", features=4, steps=12, batch_size=4)
    train_baseline(config, tiny_config.data, manifest, tmp_path / "straight", progress=False)
    stopped = train_baseline(config, tiny_config.data, manifest, tmp_path / "resumed",
                             progress=False, stop_at=5)
    assert stopped == {}
    with pytest.raises(ValueError, match="training has not finished"):
        load_baseline(tmp_path / "resumed")
    resumed = train_baseline(config, tiny_config.data, manifest, tmp_path / "resumed",
                             progress=False)
    assert [h["step"] for h in resumed["history"]] == [0, 11]
    a, b = (load_baseline(tmp_path / name).params for name in ("straight", "resumed"))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, atol=1e-6)
    other = BaselineConfig("unet", features=4, steps=20, batch_size=4)
    with pytest.raises(ValueError, match="holds a different baseline"):
        train_baseline(other, tiny_config.data, manifest, tmp_path / "resumed", progress=False)


def test_an_undertrained_segmenter_is_flagged():
    from bh_jax.tables import ceiling_warning

    assert "undertrained" in ceiling_warning(0.0) and "0.0000" in ceiling_warning(0.0)
    assert ceiling_warning(0.97) is None
