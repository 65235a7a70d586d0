"""Harmonize files: plan the jobs, load, harmonize in packed batches, write
NIfTI + JSON (+ PNG).

Used by `bh-harmonize` (harmonize.py). One failing subject does not stop the others; every
output is written atomically, and nothing is written for a failed subject.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bh_jax.figures import new_figure, save_figure
from bh_jax.harmonize.calibration import IntensityCurve
from bh_jax.harmonize.methods import VolumeMethod
from bh_jax.harmonize.pipeline import HarmonizedVolume
from bh_jax.inputs import load_prepared, mask_for, resolution_warning
from bh_jax.io import BadInputError, save_like, strip_nifti_suffix, write_json_atomic
from bh_jax.preprocess import reassemble


def output_path(output_dir: Path, source: Path) -> Path:
    """OUT/<name>_harmonized.nii.gz for an input file."""
    return Path(output_dir) / f"{strip_nifti_suffix(Path(source).name)}_harmonized.nii.gz"


@dataclass(frozen=True)
class Job:
    """One input file, its outputs, and (optionally) its brain mask file."""

    input: Path
    output: Path  # .../<name>_harmonized.nii.gz
    mask: Path | None = None  # None: matched in --mask-dir, or automatic

    @property
    def report(self) -> Path:
        return self.output.with_name(self.output.name.replace(".nii.gz", ".json"))

    @property
    def figure(self) -> Path:
        return self.output.with_name(self.output.name.replace(".nii.gz", ".png"))


def plan_jobs(inputs: list[Path], output_dir: str | Path,
              overwrite: bool = False) -> tuple[list[Job], list[Path]]:
    """(jobs to run, inputs skipped because their output exists) for a run.

    Raises:
      ValueError: two inputs would write the same output (same file name in
        different folders, or `x.nii` beside `x.nii.gz`), one line naming them.
    """
    by_output: dict[Path, list[Path]] = {}
    for path in inputs:
        by_output.setdefault(output_path(output_dir, path), []).append(Path(path))
    for output, sources in by_output.items():
        if len(sources) > 1:
            raise ValueError(f"{len(sources)} inputs would write {output} "
                             f"({', '.join(map(str, sources))}): harmonize them into "
                             "different --output-dir folders")
    jobs = [Job(src[0], out) for out, src in by_output.items() if overwrite or not out.exists()]
    skipped = [src[0] for out, src in by_output.items() if not overwrite and out.exists()]
    return jobs, skipped


# At most this many inputs feed a run's shared intensity curve (memory: they are
# all loaded at once).
SHARED_CURVE_VOLUMES = 32


def shared_curve_for_run(method: VolumeMethod, inputs: list[Path],
                         mask_dir: str | Path | None = None) -> IntensityCurve | None:
    """A run's one intensity curve if `method` shares one (`VolumeMethod.fit_curve`),
    else None. Fitted on up to `SHARED_CURVE_VOLUMES` of `inputs`, evenly spaced;
    pass all of a run's inputs, done ones included, so that a resumed run uses
    the same curve. Inputs that cannot be loaded are left out (`run_jobs`
    reports them)."""
    if method.fit_curve is None or not inputs:
        return None
    picks = np.unique(np.linspace(0, len(inputs) - 1, SHARED_CURVE_VOLUMES).round().astype(int))
    volumes = []
    for path in (inputs[i] for i in picks):
        try:
            volumes.append(load_prepared(path, method.data, mask_for(path, mask_dir),
                                         method.min_size))
        except BadInputError:
            continue
    return method.fit_curve(volumes) if volumes else None


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


def write_result(job: Job, result: HarmonizedVolume, method: VolumeMethod, output_scale: str,
                 qc_png: bool, timings: dict[str, float], mask_source: str) -> None:
    """Writes a harmonized volume (NIfTI), its JSON report and, if asked, a QC figure."""
    prepared = result.prepared
    start = time.perf_counter()
    volume = reassemble(prepared, result.slices, output_scale)
    save_like(job.output, volume, prepared.volume)
    if qc_png:
        save_qc_png(result, job.figure)
    timings["write_s"] = time.perf_counter() - start
    write_json_atomic(job.report, {
        "input": str(job.input), "output": str(job.output), "method": method.name,
        "settings": asdict(method.settings) if method.settings else None,
        "checkpoint": method.identity, "mask": mask_source, "output_scale": output_scale,
        "intensity_high": prepared.scale.high, "slice_indices": prepared.slice_indices,
        "voxel_mm": [float(z) for z in prepared.volume.header.get_zooms()[:3]],
        "warnings": [w for w in [resolution_warning(prepared.volume.voxel_mm,
                                                    method.voxel_mm)] if w],
        "brain_outside_window": prepared.brain_outside_window(),  # left as in the input
        "timings": timings,
        "intensity_curve": result.curve.as_dict() if result.curve is not None else None,
        "diagnostics": {k: np.asarray(v).tolist() for k, v in result.diagnostics.items()},
    })


def estimated_slices(slices_loaded: int, subjects_loaded: int, subjects_left: int) -> int:
    """Slices of a whole run, for its ETA: the loaded ones plus the mean per loaded subject
    for each subject not yet loaded (a subject's slice count is known only once loaded)."""
    per_subject = slices_loaded / subjects_loaded if subjects_loaded else 0.0
    return slices_loaded + round(per_subject * subjects_left)


def run_jobs(jobs: list[Job], method: VolumeMethod, output_scale: str = "input",
             mask_dir=None, qc_png: bool = False, chunk: int = 8,
             progress: bool = True, curve: IntensityCurve | None = None
             ) -> list[tuple[Path, str]]:
    """Harmonizes every job; returns [(input, reason)] for those that failed.

    Subjects are loaded `chunk` at a time; the progress bar's total (hence its
    ETA) is the whole run's, estimated until the last chunk is loaded. `curve`:
    the run's shared intensity curve (`shared_curve_for_run`), if any.
    """
    from tqdm.auto import tqdm

    failures: list[tuple[Path, str]] = []
    bar = tqdm(total=0, unit="slice", desc=f"harmonize ({method.name})", disable=not progress)
    if progress and method.settings is not None:
        # The first batch waits for XLA: seconds to minutes, longer on a GPU than a CPU.
        tqdm.write(f"compiling the {method.settings.solver} solver once for the whole run ...",
                   file=sys.stderr)
    done = slices_loaded = subjects_loaded = 0
    for first in range(0, len(jobs), chunk):
        loaded = []
        for job in jobs[first:first + chunk]:
            start = time.perf_counter()
            try:
                mask_path = job.mask or mask_for(job.input, mask_dir)
                prepared = load_prepared(job.input, method.data, mask_path, method.min_size)
            except BadInputError as err:
                failures.append((job.input, str(err)))
                continue
            warning = resolution_warning(prepared.volume.voxel_mm, method.voxel_mm)
            if warning:
                tqdm.write(f"warning: {job.input}: {warning}", file=sys.stderr)
            loaded.append((job, prepared, time.perf_counter() - start,
                           str(mask_path) if mask_path else "automatic"))
        slices_loaded += sum(len(p.slices) for _, p, _, _ in loaded)
        subjects_loaded += len(loaded)
        bar.total = estimated_slices(slices_loaded, subjects_loaded,
                                     max(len(jobs) - first - chunk, 0))
        bar.refresh()
        start = time.perf_counter()
        results = method.harmonize([p for _, p, _, _ in loaded], bar, curve=curve)
        seconds = time.perf_counter() - start
        n_slices = max(sum(len(r.slices) for r in results), 1)
        for (job, _, load_s, mask_source), result in zip(loaded, results):
            timings = {"load_s": load_s,
                       "harmonize_s": seconds * len(result.slices) / n_slices}
            try:
                write_result(job, result, method, output_scale, qc_png, timings, mask_source)
            except (OSError, ValueError) as err:
                for leftover in (job.output, job.report, job.figure):
                    with contextlib.suppress(OSError):  # e.g. the folder is not one
                        leftover.unlink(missing_ok=True)
                failures.append((job.input, f"{job.output}: could not write ({err})"))
                continue
            done += 1
            bar.set_postfix(subjects=f"{done}/{len(jobs)}")
    bar.total = bar.n  # the estimate counted subjects that then failed to load
    bar.close()
    return failures
