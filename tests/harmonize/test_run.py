"""A run's jobs: which inputs, which are done, which share a site curve, the folder lock
(`bh_jax.harmonize.run`; no model needed)."""

import json
import os
from pathlib import Path

import pytest

from bh_jax.harmonize.run import (
    Job,
    output_lock,
    output_path,
    output_state,
    plan_jobs,
    read_site_table,
    site_groups,
)

SIGNATURE = {"method": "blindharmony", "settings": {"solver": "curve"},
             "checkpoint_sha256": "abc", "output_scale": "input"}


def _done(output_dir: Path, source: Path, signature: dict | None) -> None:
    """A finished output of `source`: its NIfTI and its report."""
    job = Job(source, output_path(output_dir, source))
    job.output.parent.mkdir(parents=True, exist_ok=True)
    job.output.write_bytes(b"nifti")
    job.report.write_text(json.dumps({"signature": signature}))


def test_one_file_named_twice_is_one_input(tmp_path, monkeypatch):
    (tmp_path / "scan.nii.gz").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    jobs, skipped = plan_jobs([Path("scan.nii.gz"), tmp_path / "scan.nii.gz"], tmp_path / "out")
    assert [j.input for j in jobs] == [tmp_path / "scan.nii.gz"] and skipped == []


def test_outputs_are_never_inputs_even_in_the_input_folder(tmp_path):
    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"")
    _done(tmp_path, scan, SIGNATURE)  # --output-dir equal to the input folder, run once
    inputs = sorted(tmp_path.glob("*.nii.gz"))
    assert len(inputs) == 2
    jobs, skipped = plan_jobs(inputs, tmp_path, signature=SIGNATURE)
    assert jobs == [] and skipped == [scan]


def test_an_output_is_done_only_with_its_report_and_the_same_signature(tmp_path):
    scan, out = tmp_path / "scan.nii.gz", tmp_path / "out"
    scan.write_bytes(b"")
    job = Job(scan, output_path(out, scan))
    assert output_state(job, SIGNATURE) == "missing"
    _done(out, scan, SIGNATURE)
    job.report.unlink()  # killed between the report and the NIfTI
    assert output_state(job, SIGNATURE) == "missing"
    _done(out, scan, SIGNATURE)
    assert output_state(job, SIGNATURE) == "done"
    job.report.write_text('{"signature": ')  # a damaged report (not JSON): made again
    assert output_state(job, SIGNATURE) == "missing"
    _done(out, scan, SIGNATURE)
    other = {**SIGNATURE, "method": "hm", "checkpoint_sha256": "def"}
    assert output_state(job, other) == "stale: made with another method and checkpoint_sha256"
    with pytest.raises(ValueError, match="made with another method and checkpoint_sha256 "
                                         "than this run's: use --overwrite"):
        plan_jobs([scan], out, signature=other)
    jobs, _ = plan_jobs([scan], out, overwrite=True, signature=other)
    assert [j.input for j in jobs] == [scan]


def test_the_output_folder_is_locked_and_leftovers_are_removed(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    leftover = out / ".scan_harmonized.nii.gz.x1y2.tmp.nii.gz"  # a killed run's
    leftover.write_bytes(b"half")
    keep = out / "notes.txt"
    keep.write_text("mine")
    with output_lock(out):
        assert not leftover.exists() and keep.exists()
        with pytest.raises(ValueError, match=f"{out}: another bh-harmonize run \\(pid "
                                             f"{os.getpid()}\\) is writing there"):
            with output_lock(out):
                pass
    with output_lock(out):  # released
        pass


def test_links_keep_the_folder_and_name_they_were_given(tmp_path):
    """A folder of links to files elsewhere (a DataLad or git-annex data set) is one
    site by folder, named and written by the links' names; a link beside its target
    is one input."""
    store = tmp_path / "annex"
    store.mkdir()
    site = tmp_path / "siteB"
    site.mkdir()
    links = []
    for i in range(2):
        target = store / f"MD5E-s{i}--key{i}" / f"MD5E-s{i}--key{i}.nii.gz"
        target.parent.mkdir()
        target.write_bytes(b"")
        links.append(site / f"sub-0{i}_T1w.nii.gz")
        links[-1].symlink_to(target)
    groups, _ = site_groups(links, "folder")
    assert set(groups.values()) == {str(site)}
    jobs, _ = plan_jobs([*links, links[0].resolve()], tmp_path / "out", sites=groups)
    assert [j.input for j in jobs] == links
    assert [j.output.name for j in jobs] == ["sub-00_T1w_harmonized.nii.gz",
                                             "sub-01_T1w_harmonized.nii.gz"]
    assert all(j.site == str(site) for j in jobs)


def test_sites_by_folder_one_each_or_table(tmp_path):
    a1, a2, b1 = (tmp_path / "A" / "s1.nii.gz", tmp_path / "A" / "s2.nii.gz",
                  tmp_path / "B" / "sub-07_T1w.nii.gz")
    inputs = [a1, a2, b1]
    groups, how = site_groups(inputs, "folder")
    assert groups[a1] == groups[a2] != groups[b1] and "folder" in how
    assert len(set(site_groups(inputs, "one")[0].values())) == 1
    assert len(set(site_groups(inputs, "each")[0].values())) == 3
    table = tmp_path / "sites.tsv"
    table.write_text("file\tsite\ns1.nii.gz\tprisma\ns2\tprisma\nsub-07\tskyra\n")
    groups, how = site_groups(inputs, str(table))
    assert [groups[p] for p in inputs] == ["prisma", "prisma", "skyra"] and str(table) in how
    table.write_text("s1.nii.gz,prisma\n")
    with pytest.raises(ValueError, match="no site for 2 input"):
        site_groups(inputs, str(table))
    table.write_text("")
    with pytest.raises(ValueError, match="no 'file<TAB>site' rows"):
        read_site_table(table)
