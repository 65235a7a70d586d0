"""harmonize.py end to end: outputs, geometry, skip/resume, one bad subject among good ones,
the whole-run progress total."""

import json
from html.parser import HTMLParser
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest


@pytest.fixture
def quick(harmonize_cli):
    """harmonize.py in this process, without progress bars or report.html (the batch
    test checks the page)."""
    return lambda *args: harmonize_cli(*args, "--no-progress", "--no-report")


@pytest.fixture(scope="module")
def inputs(tiny_phantom, tmp_path_factory):
    """Two good source volumes (copied: inputs must stay untouched) and a truncated one."""
    _, manifest = tiny_phantom
    folder = tmp_path_factory.mktemp("inputs")
    entries = [e for e in manifest["images"] if e["split"] == "test" and e["site"] == "siteB"]
    good = []
    (folder / "masks").mkdir()
    for entry in entries[:2]:
        target = folder / Path(entry["path"]).name
        target.write_bytes(Path(entry["path"]).read_bytes())
        mask_name = target.name.replace(".nii.gz", "_mask.nii.gz")
        (folder / "masks" / mask_name).write_bytes(Path(entry["mask"]).read_bytes())
        good.append(target)
    bad = folder / "broken.nii.gz"
    bad.write_bytes(good[0].read_bytes()[:2000])
    (folder / "masks" / "broken_mask.nii.gz").write_bytes(Path(entries[0]["mask"]).read_bytes())
    return good, bad, [e["mask"] for e in entries[:2]]


def test_batch_run_with_a_bad_subject_then_resume(trained, inputs, tmp_path, harmonize_cli):
    workdir = trained[0]
    good, bad, masks = inputs
    before = [p.read_bytes() for p in good]
    out = tmp_path / "out"
    quick = ["--calibration-steps", "2", "--calibration-pool", "8", "--field-steps", "2",
             "--batch-size", "8"]
    first = harmonize_cli(*good, bad, "--no-progress", "--checkpoint", workdir,
                          "--output-dir", out, *quick, "--qc-png",
                          "--mask-dir", good[0].parent / "masks")
    assert first.returncode == 1, first.stderr
    assert f"{bad}: truncated or corrupt" in first.stderr
    assert "harmonized 2, skipped 0, failed 1" in first.stdout
    assert not list(out.glob("broken*")), "no output for the failed subject"
    for path, raw, mask in zip(good, before, masks):
        name = path.name.replace(".nii.gz", "_harmonized")
        result, source = nib.load(str(out / f"{name}.nii.gz")), nib.load(str(path))
        assert result.shape == source.shape
        np.testing.assert_array_equal(result.affine, source.affine)
        np.testing.assert_array_equal(result.header.get_sform(), source.header.get_sform())
        assert result.header["qform_code"] == source.header["qform_code"]
        assert result.get_data_dtype() == np.float32
        data = result.get_fdata()
        assert np.all(np.isfinite(data))
        outside = nib.load(mask).get_fdata() == 0
        np.testing.assert_array_equal(data[outside], source.get_fdata()[outside])
        report = json.loads((out / f"{name}.json").read_text())
        assert report["checkpoint"]["step"] == trained[2]["best_step"]
        assert len(report["diagnostics"]["bpd_result"]) == len(report["slice_indices"]) > 0
        assert report["voxel_mm"] == [float(z) for z in source.header.get_zooms()[:3]]
        assert 0 <= report["brain_outside_window"] <= 0.01
        assert report["resampling"]["resampled"] is False  # on the tiny prior's grid
        assert (out / f"{name}.png").is_file()
        assert path.read_bytes() == raw, "inputs must not be modified"

    page = (out / "report.html").read_text()
    check_report(page, inputs=[*good, bad], volumes=2)
    assert f"failed: {bad}: truncated or corrupt" in page  # the broken input, at the top

    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}
    second = harmonize_cli(*good, "--checkpoint", workdir, "--output-dir", out, *quick,
                           "--no-progress")
    assert second.returncode == 0, second.stderr
    assert "0 to harmonize, 2 already done" in second.stdout
    assert stamps == {p: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}
    # bh-report rebuilds the page from the folder alone: the same page.
    from bh_jax.cli import report as report_cli

    rebuilt = (out / "report.html").read_text()
    (out / "report.html").unlink()
    assert report_cli.main([str(out)]) == 0
    assert (out / "report.html").read_text() == rebuilt
    assert report_cli.main([str(tmp_path)]) == 2  # no outputs there: one line


class _Checker(HTMLParser):
    """Balanced tags (void elements aside) and every src/href inline or an anchor."""

    VOID = {"img", "meta", "br", "hr", "input", "link"}

    def __init__(self):
        super().__init__()
        self.open, self.images, self.external = [], 0, []

    def handle_starttag(self, tag, attrs):
        if tag not in self.VOID:
            self.open.append(tag)
        for name, value in attrs:
            if name in ("src", "href") and not value.startswith(("data:image/png;base64,", "#")):
                self.external.append(value)
        self.images += tag == "img"

    def handle_endtag(self, tag):
        assert self.open and self.open.pop() == tag, f"</{tag}> closes nothing open"


def check_report(page: str, inputs, volumes: int) -> None:
    """report.html is well formed, self-contained, names every input and holds at
    least one inline figure per volume."""
    checker = _Checker()
    checker.feed(page)
    checker.close()
    assert page.startswith("<!DOCTYPE html>") and checker.open == []
    assert checker.external == [] and checker.images >= volumes
    for path in inputs:
        assert str(path) in page, path


def test_classical_methods_and_overwrite(trained, inputs, tmp_path, harmonize_cli):
    good = inputs[0]
    for method in ("hm", "ssimh"):
        result = harmonize_cli(good[0], "--no-progress", "--checkpoint", trained[0],
                               "--output-dir", tmp_path, "--method", method, "--overwrite")
        assert result.returncode == 0, result.stderr
        report = json.loads(next(tmp_path.glob("*_harmonized.json")).read_text())
        assert report["method"] == method
        assert (tmp_path / "report.html").is_file()  # classical reports have null fields


def test_site_nyul_maps_a_sites_scans_by_their_mean_landmarks(trained, tiny_phantom, tmp_path,
                                                             quick):
    from bh_jax.baselines.nyul import landmarks
    from bh_jax.inputs import load_prepared
    from bh_jax.training.checkpoint import load_flow

    _, manifest = tiny_phantom
    paths = [Path(e["path"]) for e in manifest["images"] if e["site"] == "siteB"][:3]
    outputs = {}
    for method, sites in (("site-nyul", "one"), ("site-nyul", "each"), ("nyul", "one")):
        out = tmp_path / f"{method}-{sites}"
        result = quick(*paths, "--checkpoint", trained[0], "--output-dir", out,
                       "--method", method, "--sites", sites, "--output-scale", "unit")
        assert result.returncode == 0, result.stderr
        outputs[method, sites] = [nib.load(str(out / p.name.replace(".nii.gz", "_harmonized.nii.gz")))
                                  .get_fdata() for p in paths]
    reports = [json.loads(p.read_text()) for p in sorted((tmp_path / "site-nyul-one")
                                                         .glob("*_harmonized.json"))]
    marks = reports[0]["site"]["nyul_site_landmarks"]
    assert all(r["site"]["nyul_site_landmarks"] == marks for r in reports)
    assert reports[0]["site"]["fitted_on_volumes"] == len(paths)
    # The landmarks are the mean of each scan's on the prior's grid (independently here).
    flow = load_flow(trained[0])
    scale = flow.reference.nyul_scale()
    prepared = [load_prepared(p, flow.config.data) for p in paths]
    expected = np.mean([landmarks(v.slices[v.slice_masks], scale.percentiles) for v in prepared],
                       axis=0)
    np.testing.assert_allclose(marks, expected, rtol=1e-6)
    assert reports[0]["intensity_transform"]["kind"] == "site-nyul"
    # A site of one scan is Nyul's own map; a shared map differs from it.
    for each, nyul in zip(outputs["site-nyul", "each"], outputs["nyul", "one"]):
        np.testing.assert_allclose(each, nyul, atol=1e-5)
    assert max(np.max(np.abs(a - b)) for a, b in zip(outputs["site-nyul", "one"],
                                                      outputs["nyul", "one"])) > 1e-3


def test_clear_errors_for_missing_checkpoint_and_inputs(tmp_path, inputs, trained, quick):
    result = quick(inputs[0][0], "--checkpoint", tmp_path / "nope", "--output-dir", tmp_path)
    assert result.returncode == 2 and "config.json: not found" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = quick(empty, "--checkpoint", trained[0], "--output-dir", tmp_path)
    assert result.returncode == 2 and "no NIfTI files" in result.stderr
    assert not list(tmp_path.glob("*harmonized*"))
    not_a_folder = tmp_path / "out.txt"
    not_a_folder.write_text("")
    result = quick(inputs[0][0], "--checkpoint", trained[0], "--output-dir", not_a_folder,
                   "--method", "hm")
    assert result.returncode == 2
    assert result.stderr == f"error: {not_a_folder}: exists and is not a folder (--output-dir)\n"


class _RecordingBar:
    """Stands in for tqdm: records the total at every refresh."""

    totals: list[int] = []

    def __init__(self, total=0, **_):
        self.total, self.n = total, 0

    def update(self, n):
        self.n += n

    def refresh(self):
        _RecordingBar.totals.append(self.total)

    def close(self):
        _RecordingBar.totals.append(self.total)

    def set_postfix(self, **_):
        pass


def test_progress_total_estimates_the_whole_run(tiny_phantom, tiny_config, tmp_path, monkeypatch):
    import tqdm.auto

    from bh_jax.harmonize.methods import VolumeMethod, _volume_by_volume
    from bh_jax.harmonize.pipeline import HarmonizedVolume
    from bh_jax.harmonize.run import Job, output_path, run_jobs

    _, manifest = tiny_phantom
    paths = [Path(e["path"]) for e in manifest["images"] if e["site"] == "siteA"][:3]
    jobs = [Job(p, output_path(tmp_path, p)) for p in paths]
    identity = _volume_by_volume(lambda p: HarmonizedVolume(p, p.slices, {}))
    method = VolumeMethod("identity", tiny_config.data, 4, {}, None, identity)
    monkeypatch.setattr(tqdm.auto, "tqdm", _RecordingBar)
    _RecordingBar.totals = []
    assert run_jobs(jobs, method, chunk=1, progress=False) == []
    slices = [len(json.loads(j.report.read_text())["slice_indices"]) for j in jobs]
    # After the first subject: its slice count for each of the three; at the end: exact.
    assert _RecordingBar.totals[0] == 3 * slices[0]
    assert _RecordingBar.totals[-1] == sum(slices)


def test_cli_choices_match_the_library():
    """The command line spells its methods out (--help does not load the models): keep
    them in sync with the library's."""
    from bh_jax.cli import harmonize as cli
    from bh_jax.harmonize.methods import ALL_METHODS
    from bh_jax.harmonize.settings import INITS, SOLVERS

    choices = {a.dest: a.choices for a in cli.build_parser()._actions}
    assert tuple(choices["method"]) == ALL_METHODS
    assert tuple(choices["solver"]) == SOLVERS
    assert tuple(choices["init"]) == INITS



def test_field_steps_option_sets_or_removes_the_field():
    from bh_jax.cli import harmonize as cli
    from bh_jax.harmonize.settings import CalibrationConfig

    def calibration(*options):
        args = cli.parse_args(["a.nii.gz", "--checkpoint", "c", "--output-dir", "o", *options])
        return cli.solver_settings(args).calibration

    assert calibration() == CalibrationConfig()
    assert calibration("--field-steps", "3").field_steps == 3
    assert calibration("--field-steps", "0").field_penalty is None
    assert calibration("--field-steps", "3", "--calibration-steps", "2").steps == 2

def _raise(message):
    import jax

    def fail(*_, **__):
        raise jax.errors.JaxRuntimeError(message)
    return fail


def test_out_of_memory_is_one_clear_line(trained, inputs, tmp_path, monkeypatch, capsys):
    """XLA's allocation failure surfaces at the first read, as a traceback that does
    not say what to change; the CLI turns it into one line and exit status 2."""
    import jax

    from bh_jax.cli import harmonize
    from bh_jax.harmonize import run

    # HM: no site curve to fit before the jobs run.
    args = [str(inputs[0][0]), "--checkpoint", str(trained[0]), "--output-dir",
            str(tmp_path / "out"), "--batch-size", "8", "--no-progress", "--method", "hm"]
    monkeypatch.setattr(run, "run_jobs", _raise(
        "RESOURCE_EXHAUSTED: Out of memory allocating 288046326656 bytes."))
    assert harmonize.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: out of memory with batches of 8 slices") and err.count("\n") == 1
    assert "lower --batch-size" in err and "288046326656 bytes" in err
    monkeypatch.setattr(run, "run_jobs", _raise("INTERNAL: something else"))
    with pytest.raises(jax.errors.JaxRuntimeError, match="something else"):
        harmonize.main(args)


def test_inputs_with_the_same_name_are_refused_not_overwritten(inputs, trained, tmp_path, quick):
    from bh_jax.harmonize.run import plan_jobs

    good = inputs[0][0]
    for site in ("site1", "site2"):
        (tmp_path / site).mkdir()
        (tmp_path / site / "sub.nii.gz").write_bytes(good.read_bytes())
    clash = [tmp_path / "site1" / "sub.nii.gz", tmp_path / "site2" / "sub.nii.gz"]
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="2 inputs would write .*sub_harmonized.nii.gz"):
        plan_jobs(clash, out)
    result = quick(*clash, "--checkpoint", trained[0], "--output-dir", out, "--method", "hm")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert str(clash[0]) in result.stderr and str(clash[1]) in result.stderr
    assert not out.exists()
    # Outputs already there are skipped (the resume rule), unless overwriting.
    out.mkdir()
    (out / "sub_harmonized.nii.gz").write_bytes(b"")
    jobs, skipped = plan_jobs(clash[:1], out)
    assert [j.input for j in jobs] == clash[:1], "no report: the output is incomplete"
    (out / "sub_harmonized.json").write_text('{"signature": null}')
    jobs, skipped = plan_jobs(clash[:1], out)
    assert jobs == [] and skipped == clash[:1]
    jobs, skipped = plan_jobs(clash[:1], out, overwrite=True)
    assert [j.input for j in jobs] == clash[:1] and skipped == []


def test_a_subject_whose_output_cannot_be_written_leaves_nothing_and_stops_no_other(
        inputs, trained, tmp_path, quick):
    """Its QC figure, written before the failed report, is removed; the other subject
    is written; the run says why and exits 1."""
    good, _, _ = inputs
    out = tmp_path / "out"
    blocked = good[0].name.replace(".nii.gz", "_harmonized")
    (out / f"{blocked}.json").mkdir(parents=True)  # the report cannot replace a folder
    result = quick(*good, "--checkpoint", trained[0], "--output-dir", out, "--method", "hm",
                   "--mask-dir", good[0].parent / "masks", "--qc-png")
    assert result.returncode == 1, result.stderr
    assert f"{out / blocked}.nii.gz: could not write" in result.stderr
    assert "harmonized 1, skipped 0, failed 1" in result.stdout
    assert sorted(p.name for p in out.glob(f"{blocked}*")) == [f"{blocked}.json"]
    assert (out / f"{blocked}.json").is_dir()  # what was there is left as it was
    other = good[1].name.replace(".nii.gz", "_harmonized")
    assert {p.suffix for p in out.glob(f"{other}*")} == {".gz", ".json", ".png"}


def test_flagged_and_fallen_back_scans_are_named_on_stderr_and_in_their_reports(
        inputs, trained, tmp_path, quick, monkeypatch):
    """What the safety net decided for a scan (its notes) is one stderr line per scan
    and stays in the scan's JSON report. The notes are given by a wrapped method:
    the safety net's own decisions are tested in test_calibration."""
    from dataclasses import replace

    from bh_jax.harmonize import methods

    decisions = [{"flag": "the prior scores Nyul's map 0.2 bits/dim higher"},
                 {"fallback": "nyul: the prior scores it 0.3 bits/dim higher"}]

    def with_notes(load_method):
        def load(*args, **kwargs):
            method = load_method(*args, **kwargs)

            def harmonize(volumes, bar=None, site=None):
                results = method.harmonize(volumes, bar, site=site)
                return [replace(r, notes={**r.notes, **decisions[i % 2]})
                        for i, r in enumerate(results)]
            return replace(method, harmonize=harmonize)
        return load

    monkeypatch.setattr(methods, "load_method", with_notes(methods.load_method))
    good, _, _ = inputs
    out = tmp_path / "out"
    result = quick(*good, "--checkpoint", trained[0], "--output-dir", out, "--method", "hm",
                   "--mask-dir", good[0].parent / "masks")
    assert result.returncode == 0, result.stderr
    assert f"note: {good[0]}: flagged: {decisions[0]['flag']}" in result.stderr
    assert f"note: {good[1]}: fell back to {decisions[1]['fallback']}" in result.stderr
    for path, notes in zip(good, decisions):
        name = path.name.replace(".nii.gz", "_harmonized.json")
        assert json.loads((out / name).read_text())["calibration"] == notes


def test_oblique_scan_of_other_voxel_size_is_written_on_its_own_grid(inputs, trained, tmp_path,
                                                                     quick):
    good, _, masks = inputs
    image, mask = nib.load(str(good[0])), nib.load(str(masks[0]))
    angle = np.deg2rad(20)
    turn = np.array([[np.cos(angle), -np.sin(angle), 0, 0], [np.sin(angle), np.cos(angle), 0, 0],
                     [0, 0, 1, 0], [0, 0, 0, 1]])
    affine = turn @ image.affine @ np.diag([0.5, 0.5, 1, 1])  # half-size voxels, turned
    path, mask_path = tmp_path / "oblique.nii.gz", tmp_path / "oblique_mask.nii.gz"
    data = image.get_fdata().astype(np.float32)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    nib.save(nib.Nifti1Image(mask.get_fdata().astype(np.uint8), affine), str(mask_path))
    before = path.read_bytes()
    # Beside it, a scan with a singular affine (a zero voxel size): refused alone.
    singular = nib.Nifti1Image(data, None)
    singular.header.set_sform(np.diag([6.0, 0.0, 6.0, 1.0]), code=2)
    nib.save(singular, str(tmp_path / "flat.nii.gz"))
    nib.save(nib.Nifti1Image(mask.get_fdata().astype(np.uint8), None),
             str(tmp_path / "flat_mask.nii.gz"))
    result = quick(path, tmp_path / "flat.nii.gz", "--checkpoint", trained[0],
                   "--output-dir", tmp_path / "out", "--method", "hm", "--mask-dir", tmp_path)
    assert result.returncode == 1, result.stderr
    assert f"{tmp_path / 'flat.nii.gz'}: the affine is singular" in result.stderr
    assert "harmonized 1, skipped 0, failed 1" in result.stdout
    assert not list((tmp_path / "out").glob("flat*"))
    written = nib.load(str(tmp_path / "out" / "oblique_harmonized.nii.gz"))
    assert written.shape == data.shape
    np.testing.assert_array_equal(written.affine, nib.load(str(path)).affine)
    outside = mask.get_fdata() == 0
    np.testing.assert_array_equal(written.get_fdata()[outside], data[outside])
    inside = ~outside
    assert not np.allclose(written.get_fdata()[inside], data[inside])
    report = json.loads((tmp_path / "out" / "oblique_harmonized.json").read_text())
    resampling = report["resampling"]
    assert resampling["resampled"] and resampling["oblique"]
    assert resampling["grid_voxel_mm"] == trained[1].data.voxel_mm
    assert "applied to every native brain voxel" in report["output_written_by"]
    assert path.read_bytes() == before


def test_shared_curve_is_one_per_run_and_the_same_on_resume(trained, tiny_phantom, tmp_path,
                                                            quick):
    _, manifest = tiny_phantom
    paths = [Path(e["path"]) for e in manifest["images"] if e["site"] == "exp"][:3]
    out = tmp_path / "out"
    args = [*paths, "--checkpoint", trained[0], "--output-dir", out, "--solver", "curve",
            "--shared-curve", "--calibration-steps", "2", "--calibration-pool", "8",
            "--field-steps", "2", "--batch-size", "8"]
    first = quick(*args)
    assert first.returncode == 0, first.stderr
    n = len(paths)
    assert "fitting the intensity curves of 1 site(s), all inputs one site" in first.stdout

    def curves():
        return [json.loads(p.read_text())["site"]["before_fields"]
                for p in sorted(out.glob("*_harmonized.json"))]

    before = curves()
    assert len(before) == n and all(c == before[0] for c in before) and before[0]["target"]
    assert json.loads(next(out.glob("*_harmonized.json")).read_text())["settings"]["calibration"]["shared"]
    # A resumed run fits on all the inputs again (done ones too): the same curve.
    (out / Path(paths[0]).name.replace(".nii.gz", "_harmonized.json")).unlink()
    (out / Path(paths[0]).name.replace(".nii.gz", "_harmonized.nii.gz")).unlink()
    again = quick(*args)
    assert again.returncode == 0 and "1 to harmonize" in again.stdout
    assert curves() == before


def test_evaluation_gives_a_method_one_site_at_a_time(tiny_phantom, tiny_config):
    from bh_jax.experiments.evaluate import evaluate_methods

    _, manifest = tiny_phantom
    calls = []

    def identity(volumes):
        calls.append(sorted({Path(v.volume.path).name.split("_site-")[1] for v in volumes}))
        return [v.slices for v in volumes]

    sites = ["exp", "siteA", "log"]
    results = evaluate_methods(manifest, tiny_config.data, {"identity": identity}, sites=sites)
    assert list(results) == sites
    assert calls == [["exp_T1w.nii.gz"], ["siteA_T1w.nii.gz"], ["log_T1w.nii.gz"]]


def test_harmonize_cli_runs_learned_baselines(baselines, tiny_phantom, tmp_path, quick):
    """harmonize.py --method unet|cyclegan: the input's geometry out, the baseline in the report."""
    _, manifest = tiny_phantom
    entry = next(e for e in manifest["images"] if e["split"] == "test" and e["site"] == "exp")

    def harmonize(method, folder, out):
        return quick(entry["path"], "--method", method, "--checkpoint", folder,
                     "--output-dir", out)

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


def test_nyul_scale_is_learned_from_a_folder_of_target_scans(trained, tiny_phantom, tmp_path):
    from bh_jax.baselines.nyul import NyulScale
    from bh_jax.harmonize.methods import with_nyul_from
    from bh_jax.inputs import load_prepared
    from bh_jax.training.checkpoint import load_flow

    _, manifest = tiny_phantom
    targets = [Path(e["path"]) for e in manifest["images"]
               if e["site"] == manifest["target_site"] and e["split"] == "train"][:3]
    folder = tmp_path / "target"
    folder.mkdir()
    for path in targets:
        (folder / path.name).write_bytes(path.read_bytes())
    flow = load_flow(trained[0])
    learned = with_nyul_from(flow, folder)
    # Independently: the scale of the same volumes' in-brain voxels.
    volumes = [load_prepared(p, flow.config.data) for p in sorted(folder.iterdir())]
    expected = NyulScale.fit([v.slices[v.slice_masks] for v in volumes])
    np.testing.assert_allclose(learned.reference.nyul, expected.intensities, rtol=1e-6)
    assert not np.allclose(learned.reference.nyul, flow.reference.nyul)
    # ... and the mean of their landmarks as measured (the `mean` scale).
    np.testing.assert_allclose(learned.reference.nyul_mean, np.mean(
        [np.percentile(v.slices[v.slice_masks], expected.percentiles) for v in volumes], axis=0),
        rtol=1e-5)
    (folder / "labels.nii.gz").write_bytes(Path(manifest["images"][0]["mask"]).read_bytes())
    with pytest.raises(ValueError, match="labels.nii.gz: .*--nyul-from takes target-site"):
        with_nyul_from(flow, folder)


def test_a_prior_without_nyul_scale_warns_that_nyul_weight_has_no_effect(trained):
    from dataclasses import replace

    from bh_jax.harmonize.methods import flow_method
    from bh_jax.harmonize.settings import SolverConfig
    from bh_jax.training.checkpoint import load_flow

    flow = load_flow(trained[0])
    settings = SolverConfig()
    assert settings.calibration.nyul_weight > 0  # the default averages with Nyul
    assert flow_method(flow, "blindharmony", settings, 8).warnings == ()
    old = replace(flow, reference=replace(flow.reference,
                                          nyul=np.full_like(flow.reference.nyul, np.nan)))
    (warning,) = flow_method(old, "blindharmony", settings, 8).warnings
    assert "no Nyul scale" in warning and "--nyul-from" in warning
    assert str(trained[0].name) in warning
    curve_alone = replace(settings, calibration=replace(settings.calibration, nyul_weight=0.0,
                                                        scan_nyul_weight=0.0,
                                                        scan_nyul_contrast_gain=0.0))
    assert flow_method(old, "blindharmony", curve_alone, 8).warnings == ()
    scan_only = replace(settings, calibration=replace(curve_alone.calibration,
                                                      scan_nyul_weight=0.5))
    (warning,) = flow_method(old, "blindharmony", scan_only, 8).warnings
    assert "so scan_nyul_weight 0.5 has no effect" in warning  # nyul_weight 0 not named
    # A prior with a Nyul scale but no mean landmarks maps onto the standard scale.
    no_mean = replace(flow, reference=replace(flow.reference, nyul_mean=np.full_like(
        flow.reference.nyul_mean, np.nan)))
    (warning,) = flow_method(no_mean, "blindharmony", settings, 8).warnings
    assert "no mean landmarks" in warning and "--nyul-scale standard" in warning
    standard = replace(settings, calibration=replace(settings.calibration, nyul_scale="standard"))
    assert flow_method(no_mean, "blindharmony", standard, 8).warnings == ()
    assert flow_method(old, "hm", settings, 8).warnings == ()
