"""The out-of-the-box demo: `bh-harmonize --demo` (`python harmonize.py --demo`).

Builds the built-in data set, harmonizes held-out source subjects with the
shipped `demo` checkpoint, writes their NIfTI outputs (+ JSON reports) and a
figure, and returns a PSNR/SSIM table of Source / HM / Nyul / Nyul per site /
SSIMH / BlindHarmony (and the typical-contrast reference,
`evaluate.typical_contrast_method`)
against the same subjects' target-site images.
"""

from __future__ import annotations

import time
from pathlib import Path

from bh_jax import pretrained
from bh_jax.data.phantom import ensure_phantom
from bh_jax.experiments.evaluate import (
    TYPICAL,
    as_evaluation,
    classical_methods,
    evaluate_methods,
    format_table,
    save_examples_png,
    typical_contrast_method,
)
from bh_jax.harmonize.methods import VolumeMethod, flow_method
from bh_jax.harmonize.pipeline import HarmonizedVolume
from bh_jax.harmonize.report import build_report, output_reports, write_run_record
from bh_jax.harmonize.run import Job, output_path, write_result
from bh_jax.harmonize.settings import SolverConfig, default_settings
from bh_jax.inputs import scan_of
from bh_jax.training.checkpoint import load_flow

# The paper's shifts, and a mild and a large simulated scanner gap (the other
# sites: `python -m bh_jax.bench quality`); sized to finish in minutes on a CPU.
DEMO_SITES = ("exp", "log", "gamma0.7", "siteA", "siteC")
def _writer(method: VolumeMethod, output_dir: Path):
    """`on_results` hook that writes every BlindHarmony output (NIfTI + JSON)."""
    def write(results: list[HarmonizedVolume], seconds: float) -> None:
        per_slice = seconds / max(sum(len(r.slices) for r in results), 1)
        for result in results:
            source = Path(result.prepared.volume.path)
            write_result(Job(source, output_path(output_dir, source)),
                         scan_of(result.prepared, "manifest"), result, method, "input",
                         False, {"harmonize_s": per_slice * len(result.slices)})

    return write


def run_demo(output_dir: str | Path, data_dir: str | Path | None = None,
             checkpoint: str | Path | None = None, subjects: int | None = None,
             settings: SolverConfig | None = None, batch_size: int = 16,
             progress: bool = True) -> dict:
    """Runs the demo; returns {"table": markdown, "results": ..., "figure": path, ...}.

    Args:
      output_dir: NIfTI outputs, their JSON reports and `demo.png` go here.
      data_dir: the built-in data set (generated if absent; default
        OUTPUT_DIR/data).
      checkpoint: a training folder (default: the shipped `demo` checkpoint).
      subjects: how many held-out (test) subjects per source site (default:
        all of them; the first ones by name otherwise).
      settings: BlindHarmony's solver (default: `default_settings()`, as
        `python harmonize.py --demo`). Each source site's subjects are
        harmonized together (`evaluate_methods`): a shared curve is one per site.
    """
    if subjects is not None and subjects < 1:
        raise ValueError(f"the demo needs at least 1 subject per site, got {subjects}")
    start = time.perf_counter()
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    flow = load_flow(checkpoint or pretrained.path("demo"))
    manifest = ensure_phantom(data_dir or output_dir / "data", flow.config.phantom.evaluation(),
                              flow.config.name, progress=progress)
    test_subjects = [s["subject"] for s in manifest["subjects"] if s["split"] == "test"]
    test_subjects = test_subjects[:subjects]
    settings = settings or default_settings()
    blindharmony = flow_method(flow, "blindharmony", settings, batch_size)
    methods = classical_methods(flow.reference)
    methods["BlindHarmony"] = as_evaluation(blindharmony, progress,
                                            on_results=_writer(blindharmony, output_dir))
    methods[TYPICAL] = typical_contrast_method(manifest, flow.config.data)
    examples: dict = {}
    results = evaluate_methods(manifest, flow.config.data, methods, sites=DEMO_SITES,
                               subjects=test_subjects, examples=examples)
    figure = save_examples_png(examples, output_dir / "demo.png")
    outputs = sorted(str(p) for p in output_dir.glob("*_harmonized.nii.gz"))
    seconds = time.perf_counter() - start
    write_run_record(output_dir, {
        "inputs": [r["input"] for r in output_reports(output_dir)], "method": "blindharmony",
        "harmonized": len(outputs), "skipped": 0, "seconds": seconds, "failures": []})
    report_start = time.perf_counter()
    report = build_report(output_dir)
    return {"table": format_table(results), "results": results, "figure": figure,
            "checkpoint": flow.identity, "subjects": len(test_subjects), "seconds": seconds,
            "report": report, "report_seconds": time.perf_counter() - report_start,
            "outputs": outputs}
