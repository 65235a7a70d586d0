"""Harmonize files: plan the jobs, group them by site, bring each scan to the prior's
grid, harmonize in packed batches, write NIfTI + JSON (+ PNG) on each scan's own grid.

Used by `bh-harmonize` (harmonize.py). One failing subject does not stop the others.
Every file is written atomically, the NIfTI last: an output counts as done only when
its NIfTI exists and its JSON report says it was made with this run's method,
settings and checkpoint. One run at a time writes to a folder (a lock file).
"""

from __future__ import annotations

import contextlib
import csv
import fcntl
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from bh_jax.figures import new_figure, save_figure
from bh_jax.harmonize.methods import VolumeMethod
from bh_jax.harmonize.pipeline import HarmonizedVolume, SiteCurve
from bh_jax.inputs import Scan, load_scan, mask_for
from bh_jax.io import BadInputError, save_like, strip_nifti_suffix, write_json_atomic
from bh_jax.preprocess import in_plane_mm, reassemble, smooth_volume_in_plane
from bh_jax.version import code_version

OUTPUT_SUFFIX = "_harmonized"
LOCK_FILE = ".bh_jax.lock"
SITE_CHOICES = ("folder", "one", "each")  # or a table file
# At most this many of a site's inputs feed its intensity curve (they are all
# loaded at once).
SITE_CURVE_VOLUMES = 32


def output_path(output_dir: Path, source: Path) -> Path:
    """OUT/<name>_harmonized.nii.gz for an input file."""
    return Path(output_dir) / f"{strip_nifti_suffix(Path(source).name)}{OUTPUT_SUFFIX}.nii.gz"


@dataclass(frozen=True)
class Job:
    """One input file, its outputs, its site, and (optionally) its brain mask file."""

    input: Path
    output: Path  # .../<name>_harmonized.nii.gz
    mask: Path | None = None  # None: matched in --mask-dir, or automatic
    site: str = "all"

    @property
    def report(self) -> Path:
        return self.output.with_name(self.output.name.replace(".nii.gz", ".json"))

    @property
    def figure(self) -> Path:
        return self.output.with_name(self.output.name.replace(".nii.gz", ".png"))


def run_signature(method: VolumeMethod, output_scale: str) -> dict:
    """What an output must have been made with to count as done for this run."""
    return {"method": method.name,
            "settings": asdict(method.settings) if method.settings else None,
            "checkpoint_sha256": method.identity.get("sha256"), "output_scale": output_scale}


def output_state(job: Job, signature: dict | None) -> str:
    """'done', 'missing' (or incomplete: redo it) or 'stale: <why>' (made otherwise)."""
    import json

    if not (job.output.is_file() and job.report.is_file()):
        return "missing"
    try:
        made = json.loads(job.report.read_text()).get("signature")
    except (OSError, ValueError):
        return "missing"
    if signature is None or made == signature:
        return "done"
    differs = [k for k in signature if (made or {}).get(k) != signature[k]]
    return f"stale: made with another {' and '.join(differs) or 'version'}"


def as_given(path: str | os.PathLike) -> Path:
    """An input's absolute path with its symbolic links kept: its folder (the site
    by folder), name (the output's, a site table's key) and mask are the ones the
    user named, also where every file is a link (a DataLad or git-annex data set)."""
    return Path(os.path.abspath(path))


def is_output(path: Path, output_dir: Path) -> bool:
    """Whether an input is one of this folder's outputs (never harmonized again)."""
    return (path.resolve().parent == Path(output_dir).resolve()
            and strip_nifti_suffix(path.name).endswith(OUTPUT_SUFFIX))


def plan_jobs(inputs: list[Path], output_dir: str | Path, overwrite: bool = False,
              signature: dict | None = None, sites: dict[Path, str] | None = None
              ) -> tuple[list[Job], list[Path]]:
    """(jobs to run, inputs skipped because their output is done) for a run.

    The same file named twice (a relative and an absolute path, or a link to it) is
    one input, under the first name given (`as_given`); this folder's own outputs
    are never inputs. `sites` maps inputs (`as_given`) to site labels.

    Raises:
      ValueError (one line): two inputs would write the same output (same file
        name in different folders, or `x.nii` beside `x.nii.gz`); or, without
        `overwrite`, an output exists that was made with another method, other
        settings or another checkpoint.
    """
    output_dir = Path(output_dir)
    first_names: dict[Path, Path] = {}
    for p in inputs:
        if not is_output(Path(p), output_dir):
            first_names.setdefault(Path(p).resolve(), as_given(p))
    unique = list(first_names.values())
    by_output: dict[Path, list[Path]] = {}
    for path in unique:
        by_output.setdefault(output_path(output_dir, path), []).append(path)
    for output, sources in by_output.items():
        if len(sources) > 1:
            raise ValueError(f"{len(sources)} inputs would write {output} "
                             f"({', '.join(map(str, sources))}): harmonize them into "
                             "different --output-dir folders")
    jobs, skipped = [], []
    for output, (path,) in by_output.items():
        job = Job(path, output, site=(sites or {}).get(path, "all"))
        state = "missing" if overwrite else output_state(job, signature)
        if state.startswith("stale"):
            raise ValueError(f"{output}: {state.split(': ', 1)[1]} than this run's: use "
                             "--overwrite to redo it, or another --output-dir")
        (skipped.append(path) if state == "done" else jobs.append(job))
    return jobs, skipped


@contextlib.contextmanager
def output_lock(output_dir: str | Path) -> Iterator[None]:
    """Holds the output folder for this run; ValueError (one line) if another run
    holds it. On entry, removes the temporary files that a killed run left."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with open(output_dir / LOCK_FILE, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise ValueError(f"{output_dir}: another bh-harmonize run ({holder}) is writing "
                             "there: wait for it to finish, or use another --output-dir"
                             ) from None
        lock.truncate(0)
        lock.write(f"pid {os.getpid()}")
        lock.flush()
        for leftover in output_dir.glob(f".*{OUTPUT_SUFFIX}.*.tmp*"):
            with contextlib.suppress(OSError):  # another user's, or gone meanwhile
                leftover.unlink()
        try:
            yield
        finally:
            lock.truncate(0)
            fcntl.flock(lock, fcntl.LOCK_UN)


def read_site_table(path: str | os.PathLike) -> dict[str, str]:
    """{file name (or BIDS participant id) -> site} from a two-column CSV/TSV table
    (a header row is allowed: its first cell is not a NIfTI name)."""
    path = Path(path)
    text = path.read_text()
    lines = text.splitlines() or [""]
    dialect = csv.excel_tab if "\t" in lines[0] else csv.excel
    table = {}
    for row in csv.reader(text.splitlines(), dialect):
        if len(row) < 2 or not row[0].strip():
            continue
        table[row[0].strip()] = row[1].strip()
    if not table:
        raise ValueError(f"{path}: no 'file<TAB>site' rows (--sites table)")
    return table


def site_of(path: Path, table: dict[str, str]) -> str | None:
    """A file's site in a table: by its path, its name, its name without the NIfTI
    suffix, or its BIDS `sub-` entity (a participants.tsv row)."""
    name = strip_nifti_suffix(path.name)
    participant = next((part for part in name.split("_") if part.startswith("sub-")), None)
    for key in (str(path), path.name, name, participant):
        if key is not None and key in table:
            return table[key]
    return None


def site_groups(inputs: list[Path], sites: str) -> tuple[dict[Path, str], str]:
    """({input: site label}, how they were grouped) for `--sites`: 'folder' (by
    parent folder), 'one' (all together), 'each' (one per volume) or a table."""
    inputs = [as_given(p) for p in inputs]
    if sites == "folder":
        return {p: str(p.parent) for p in inputs}, "by folder (--sites folder)"
    if sites == "one":
        return {p: "all" for p in inputs}, "all inputs one site (--sites one)"
    if sites == "each":
        return {p: str(p) for p in inputs}, "one curve per volume (--sites each)"
    table = read_site_table(sites)
    groups = {p: site_of(p, table) for p in inputs}
    missing = [str(p) for p, site in groups.items() if site is None]
    if missing:
        raise ValueError(f"{sites}: no site for {len(missing)} input(s), e.g. {missing[0]}")
    return groups, f"by the table {sites}"


def load_job_scan(job: Job, method: VolumeMethod, mask_dir=None) -> Scan:
    return load_scan(job.input, method.data, method.voxel_mm,
                     job.mask or mask_for(job.input, mask_dir), method.min_size)


def fit_site_curves(method: VolumeMethod, jobs: list[Job], mask_dir=None,
                    progress: bool = False) -> dict[str, SiteCurve]:
    """Each site's intensity curve, for a method that shares one (`VolumeMethod.fit_site`),
    fitted on up to `SITE_CURVE_VOLUMES` of its inputs, evenly spaced; pass all of
    a run's jobs, done ones included, so that a resumed run uses the same curves.
    Inputs that cannot be loaded are left out (`run_jobs` reports them). With
    `progress`, a bar counts the sites (a fit takes minutes on a CPU)."""
    from tqdm.auto import tqdm

    if method.fit_site is None:
        return {}
    curves = {}
    sites = list(dict.fromkeys(job.site for job in jobs))
    for site in tqdm(sites, desc="site curves", unit="site", disable=not progress):
        members = [job for job in jobs if job.site == site]
        picks = np.unique(np.linspace(0, len(members) - 1, SITE_CURVE_VOLUMES).round()
                          .astype(int))
        volumes = []
        for job in (members[i] for i in picks):
            with contextlib.suppress(BadInputError):
                volumes.append(load_job_scan(job, method, mask_dir).prepared)
        if volumes:
            curves[site] = method.fit_site(volumes)
    return curves


def save_qc_png(result: HarmonizedVolume, path: Path, n_slices: int = 3) -> None:
    """Source / harmonized / difference for a few evenly spaced slices."""
    n = len(result.slices)
    picks = np.linspace(n * 0.25, n * 0.75, n_slices).astype(int) if n else []
    fig, axes = new_figure(len(picks), 3, (6, 2.1 * len(picks)))
    for row, i in enumerate(picks):
        src, out = result.prepared.slices[i], result.slices[i]
        for col, (image, title, cmap, lim) in enumerate([
                (src, "source", "gray", (0, 1)), (out, "harmonized", "gray", (0, 1)),
                (out - src, "difference", "RdBu_r", (-0.5, 0.5))]):
            ax = axes[row, col]
            ax.imshow(np.rot90(image), cmap=cmap, vmin=lim[0], vmax=lim[1])
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=9)
        axes[row, 0].set_ylabel(f"z = {result.prepared.slice_indices[i]}", fontsize=8)
    save_figure(fig, path, dpi=80)


def native_output(scan: Scan, result: HarmonizedVolume, output_scale: str = "input"
                  ) -> tuple[np.ndarray, str]:
    """(the harmonized scan on its own voxels, canonical order; how it was made).

    Curve methods' transforms, and every method's on a resampled scan, are applied
    to all of the native brain voxels; on its own grid, a method that moved the
    pixels keeps its slices (`preprocess.reassemble`). Outside the brain (and, for
    the latter, outside the slices it saw) the scan stays as it was."""
    prepared = result.prepared
    if not (result.exact_transform or scan.resampling.resampled):
        return reassemble(prepared, result.slices, output_scale), "the method's slices"
    native = scan.native
    high = prepared.scale.high
    voxels = np.argwhere(scan.native_mask)
    affine = native.canonical_affine
    world = (voxels @ affine[:3, :3].T + affine[:3, 3]
             if result.transform.field is not None else None)
    source = native.data
    if result.transform.smoothing_mm > 0:
        source = smooth_volume_in_plane(source, scan.native_mask,
                                        result.transform.smoothing_mm, in_plane_mm(affine))
    mapped = result.transform(source[scan.native_mask] / high, world)
    if output_scale == "input":
        out = native.data.copy()
        out[scan.native_mask] = mapped * high
    elif output_scale == "unit":
        out = np.clip(native.data / high, 0.0, 1.0).astype(np.float32)
        out[scan.native_mask] = mapped
    else:
        raise ValueError(f"output_scale must be 'input' or 'unit', got {output_scale!r}")
    how = ("its intensity transform" if result.exact_transform else
           "an intensity transform fitted from source to result on the prior's grid")
    return out.astype(np.float32), f"{how}, applied to every native brain voxel"


def save_harmonized(path: str | os.PathLike, scan: Scan, result: HarmonizedVolume,
                    output_scale: str = "input") -> None:
    """Writes a harmonized scan as a NIfTI on the scan's own grid and header
    (`native_output`), atomically."""
    save_like(path, native_output(scan, result, output_scale)[0], scan.native)


def write_result(job: Job, scan: Scan, result: HarmonizedVolume, method: VolumeMethod,
                 output_scale: str, qc_png: bool, timings: dict[str, float],
                 site: dict | None = None) -> None:
    """Writes a harmonized scan: the QC figure (if asked), the JSON report, then the
    NIfTI (on the scan's own grid), each atomically; the NIfTI marks it done."""
    prepared = result.prepared
    start = time.perf_counter()
    volume, how = native_output(scan, result, output_scale)
    if qc_png:
        save_qc_png(result, job.figure)
    timings["write_s"] = time.perf_counter() - start
    write_json_atomic(job.report, {
        "input": str(job.input), "output": str(job.output), "method": method.name,
        "signature": run_signature(method, output_scale), "code_version": code_version(),
        "settings": asdict(method.settings) if method.settings else None,
        "checkpoint": method.identity, "mask": scan.mask_source, "output_scale": output_scale,
        "intensity_high": prepared.scale.high, "slice_indices": prepared.slice_indices,
        "voxel_mm": [float(z) for z in scan.native.header.get_zooms()[:3]],
        "resampling": scan.resampling.as_dict(), "output_written_by": how,
        "brain_outside_window": prepared.brain_outside_window(),
        "site": site, "timings": timings,
        "intensity_transform": result.transform.as_dict() if result.transform else None,
        "calibration": result.notes or None,
        "diagnostics": {k: np.asarray(v).tolist() for k, v in result.diagnostics.items()},
    })
    save_like(job.output, volume, scan.native)


def estimated_slices(slices_loaded: int, subjects_loaded: int, subjects_left: int) -> int:
    """Slices of a whole run, for its ETA: the loaded ones plus the mean per loaded subject
    for each subject not yet loaded (a subject's slice count is known only once loaded)."""
    per_subject = slices_loaded / subjects_loaded if subjects_loaded else 0.0
    return slices_loaded + round(per_subject * subjects_left)


def _load(job: Job, method: VolumeMethod, mask_dir) -> tuple[Scan | str, float]:
    """(the scan, or why it cannot be loaded; seconds taken)."""
    start = time.perf_counter()
    try:
        scan = load_job_scan(job, method, mask_dir)
    except BadInputError as err:
        scan = str(err)
    return scan, time.perf_counter() - start


def _write_or_clean(job: Job, *args) -> str | None:
    """`write_result`; on failure, removes what it wrote and returns the reason."""
    try:
        write_result(job, *args)
    except (OSError, ValueError) as err:
        for leftover in (job.output, job.report, job.figure):
            with contextlib.suppress(OSError):  # e.g. the folder is not one
                leftover.unlink(missing_ok=True)
        return f"{job.output}: could not write ({err})"
    return None


def run_jobs(jobs: list[Job], method: VolumeMethod, output_scale: str = "input",
             mask_dir=None, qc_png: bool = False, chunk: int = 8,
             progress: bool = True, sites: dict[str, SiteCurve] | None = None,
             grouping: str = "") -> list[tuple[Path, str]]:
    """Harmonizes every job; returns [(input, reason)] for those that failed.

    Subjects are loaded `chunk` at a time and harmonized site by site; the next
    chunk is loaded, and the last one's outputs written, by two background threads
    while the current one is harmonized (loading and writing are numpy, nibabel and
    scipy work, the solve XLA's). The progress bar's total (hence its ETA) is the
    whole run's, estimated until the last chunk is loaded. `sites`: each site's
    intensity curve (`fit_site_curves`).
    """
    from tqdm.auto import tqdm

    sites = sites or {}
    failures: list[tuple[Path, str]] = []
    bar = tqdm(total=0, unit="slice", desc=f"harmonize ({method.name})", disable=not progress)
    if progress and method.settings is not None:
        # The first batch waits for XLA: seconds to minutes, longer on a GPU than a CPU.
        tqdm.write(f"compiling the {method.settings.solver} solver once for the whole run ...",
                   file=sys.stderr)
    done = slices_loaded = subjects_loaded = 0
    members = {site: sum(job.site == site for job in jobs) for site in sites}
    chunks = [jobs[first:first + chunk] for first in range(0, len(jobs), chunk)]
    writes: list[tuple[Job, HarmonizedVolume, Future]] = []

    def finish_writes() -> None:
        nonlocal done
        for job, result, write in writes:
            if (reason := write.result()) is not None:
                failures.append((job.input, reason))
                continue
            done += 1
            if result.notes.get("fallback"):
                tqdm.write(f"note: {job.input}: fell back to {result.notes['fallback']}",
                           file=sys.stderr)
            elif result.notes.get("flag"):
                tqdm.write(f"note: {job.input}: flagged: {result.notes['flag']}",
                           file=sys.stderr)
            bar.set_postfix(subjects=f"{done}/{len(jobs)}")
        writes.clear()

    loader, writer = ThreadPoolExecutor(1, "bh-load"), ThreadPoolExecutor(1, "bh-write")

    def start_loading(index: int) -> list[Future]:
        return [loader.submit(_load, job, method, mask_dir)
                for job in (chunks[index] if index < len(chunks) else [])]

    pending = start_loading(0)
    try:
        for index in range(len(chunks)):
            current, pending = pending, start_loading(index + 1)
            loaded = []
            for job, future in zip(chunks[index], current):
                scan, load_s = future.result()
                if isinstance(scan, str):
                    failures.append((job.input, scan))
                else:
                    loaded.append((job, scan, load_s))
            slices_loaded += sum(len(s.prepared.slices) for _, s, _ in loaded)
            subjects_loaded += len(loaded)
            bar.total = estimated_slices(slices_loaded, subjects_loaded,
                                         sum(map(len, chunks[index + 1:])))
            bar.refresh()
            for site in dict.fromkeys(job.site for job, _, _ in loaded):
                group = [item for item in loaded if item[0].site == site]
                start = time.perf_counter()
                results = method.harmonize([scan.prepared for _, scan, _ in group], bar,
                                           site=sites.get(site))
                seconds = time.perf_counter() - start
                finish_writes()  # the previous group's, written meanwhile
                n_slices = max(sum(len(r.slices) for r in results), 1)
                record = ({"label": site, "grouping": grouping, "volumes_in_run": members[site],
                           **sites[site].as_dict()} if site in sites else
                          {"label": site, "grouping": grouping, "shared_curve": False})
                for (job, scan, load_s), result in zip(group, results):
                    timings = {"load_s": load_s,
                               "harmonize_s": seconds * len(result.slices) / n_slices}
                    writes.append((job, result, writer.submit(
                        _write_or_clean, job, scan, result, method, output_scale, qc_png,
                        timings, record)))
        finish_writes()
    finally:
        # An interrupted run drops the loads not begun; the threads are joined at
        # exit, so the file being written is finished (atomically) first.
        loader.shutdown(wait=False, cancel_futures=True)
        writer.shutdown(wait=False)
    bar.total = bar.n  # the estimate counted subjects that then failed to load
    bar.close()
    return failures
