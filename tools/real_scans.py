"""Real scans through `harmonize.py` with the shipped `demo` prior (issue 26): each output
checked against its input, the time per volume, a figure, and an anisotropic copy.

    python tools/real_scans.py --out runs/real \\
        --scan depression_sub-01=SUB01_T1w.nii.gz \\
        --scan fs_head=T1.nii.gz:aparc.DKTatlas+aseg.nii.gz \\
        --scan niimath_T1=T1_0.8mm.nii.gz --aniso depression_sub-01

`--scan NAME=IMAGE[:MASK]`: a scan and, for a whole head, its brain mask (any label map:
non-zero is brain). Each scan is harmonized in its own `harmonize.py` run (one site each)
with every method of `--methods`; a scan with a mask is also run without it, which must
be refused with one line. For every output the tool checks what issue 26 promises: the
input's shape, affine, qform/sform and voxel order; the voxels outside the brain mask
(given or automatic) bit-identical to the input's; all finite; the inputs unchanged
(sha256). `--aniso NAME` also writes that scan resampled to 3 mm along its second file
axis (nibabel.processing, linear; mask nearest neighbour), harmonizes it, and compares it
with the isotropic result resampled to the same grid (in-mask PSNR, peak at the 99.5th
percentile), beside how far harmonization moved the source. Writes OUT/real_scans.json,
OUT/real_scans.md and OUT/real_scans.png (rows: scans; columns: source and default,
axial and coronal, each at its own 99.5th percentile).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import matplotlib
import nibabel as nib
import numpy as np
from nibabel import processing

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bh_jax import metrics  # noqa: E402
from bh_jax.io import load_mask, load_volume  # noqa: E402
from bh_jax.preprocess import auto_brain_mask  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "bh_jax" / "pretrained" / "demo"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def stage(name: str, image: Path, mask: Path | None, out: Path) -> tuple[Path, Path | None]:
    """Copies a scan (and its mask, a label map taken as it is) under OUT/NAME/ for
    harmonize.py, named as its --mask-dir matches them."""
    folder = out / name
    (folder / "scans").mkdir(parents=True, exist_ok=True)
    scan = folder / "scans" / f"{name}.nii.gz"
    shutil.copyfile(image, scan)
    if mask is None:
        return scan, None
    (folder / "masks").mkdir(exist_ok=True)
    staged = folder / "masks" / f"{name}_mask.nii.gz"
    shutil.copyfile(mask, staged)
    return scan, staged


def harmonize(scan: Path, mask: Path | None, method: str, out: Path) -> dict:
    """One `harmonize.py` run; its exit code, last line and wall time."""
    command = [sys.executable, str(ROOT / "harmonize.py"), str(scan), "--checkpoint",
               str(CHECKPOINT), "--output-dir", str(out), "--no-progress", "--overwrite"]
    if method != "default":
        command += ["--method", method]
    if mask is not None:
        command += ["--mask-dir", str(mask.parent)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    lines = (done.stdout + done.stderr).strip().splitlines()
    return {"exit": done.returncode, "seconds": time.perf_counter() - start,
            "last_line": lines[-1] if lines else "", "log": lines[-6:]}


def check_output(scan: Path, mask: Path | None, output: Path) -> dict:
    """What issue 26 promises of an output, each as a bool."""
    source, result = nib.load(str(scan)), nib.load(str(output))
    data, harmonized = source.get_fdata(dtype=np.float32), result.get_fdata(dtype=np.float32)
    volume = load_volume(scan)
    brain = load_mask(mask, volume) if mask else auto_brain_mask(volume.data)
    native_brain = volume.to_original(brain)
    return {
        "shape": result.shape == source.shape,
        "affine": bool(np.array_equal(result.affine, source.affine)),
        "qform_sform": bool(np.array_equal(result.get_qform(), source.get_qform())
                            and np.array_equal(result.get_sform(), source.get_sform())
                            and int(result.header["qform_code"]) == int(source.header["qform_code"])
                            and int(result.header["sform_code"]) == int(source.header["sform_code"])),
        "voxel_order": nib.aff2axcodes(result.affine) == nib.aff2axcodes(source.affine),
        "outside_brain_untouched": bool(np.array_equal(harmonized[~native_brain],
                                                       data[~native_brain])),
        "finite": bool(np.isfinite(harmonized).all()),
        "brain_voxels_changed": float(np.mean(harmonized[native_brain] != data[native_brain])),
    }


def harmonize_and_check(scan: Path, mask: Path | None, method: str, out: Path) -> dict:
    """`harmonize`, then `check_output` and the output report's timings."""
    run = harmonize(scan, mask, method, out)
    output = out / f"{scan.name[:-7]}_harmonized.nii.gz"
    if run["exit"] == 0:
        run["output"] = str(output)
        run["checks"] = check_output(scan, mask, output)
        report = json.loads(output.with_name(output.name[:-7] + ".json").read_text())
        run["timings"] = report["timings"]
        run["resampled"] = report["resampling"]["grid_shape"]
    return run


def anisotropic(scan: Path, mask: Path | None, out: Path) -> tuple[Path, Path | None]:
    """The scan resampled to 3 mm along its second file axis (and its mask)."""
    image = nib.load(str(scan))
    affine = image.affine.copy()
    affine[:3, 1] *= 3.0
    shape = (image.shape[0], int(np.ceil(image.shape[1] / 3)), image.shape[2])
    folder = out / f"{scan.name[:-7]}_aniso"
    (folder / "scans").mkdir(parents=True, exist_ok=True)
    aniso = folder / "scans" / f"{folder.name}.nii.gz"
    data = nib.Nifti1Image(image.get_fdata(dtype=np.float32), image.affine)
    nib.save(processing.resample_from_to(data, (shape, affine), order=1), str(aniso))
    if mask is None:
        return aniso, None
    (folder / "masks").mkdir(exist_ok=True)
    aniso_mask = folder / "masks" / f"{folder.name}_mask.nii.gz"
    labels = nib.load(str(mask))
    nib.save(processing.resample_from_to(labels, (shape, affine), order=0), str(aniso_mask))
    return aniso, aniso_mask


def compare_aniso(iso_output: Path, aniso_scan: Path, aniso_output: Path,
                  aniso_mask: Path | None) -> dict:
    """The anisotropic scan's result against the isotropic result on the same grid."""
    target = nib.load(str(aniso_output))
    iso = nib.load(str(iso_output))
    iso_on_grid = processing.resample_from_to(
        nib.Nifti1Image(iso.get_fdata(dtype=np.float32), iso.affine), target, order=1)
    volume = load_volume(aniso_scan)
    brain = load_mask(aniso_mask, volume) if aniso_mask else auto_brain_mask(volume.data)
    inside = volume.to_original(brain)
    reference = iso_on_grid.get_fdata(dtype=np.float32)[inside]
    harmonized = target.get_fdata(dtype=np.float32)[inside]
    source = nib.load(str(aniso_scan)).get_fdata(dtype=np.float32)[inside]
    peak = float(np.percentile(reference, 99.5))
    return {"psnr_aniso_vs_iso_db": float(metrics.psnr(harmonized, reference, data_range=peak)),
            "psnr_source_vs_iso_db": float(metrics.psnr(source, reference, data_range=peak)),
            "brain_voxels": int(inside.sum())}


def table(record: dict) -> str:
    """One line per scan and method: checks, seconds, the refusal without a mask."""
    lines = ["| scan | grid (axes, mm) | method | checks | s (fit+write) | note |",
             "|---|---|---|---|---|---|"]
    for name, entry in record.items():
        grid = (f"{'x'.join(map(str, entry['shape']))} ({entry['axes']}, "
                f"{'x'.join(f'{v:.2f}' for v in entry['voxel_mm'])})")
        runs = dict(entry["runs"])
        if "aniso_1x3x1" in entry:
            runs["default, 1x3x1 copy"] = entry["aniso_1x3x1"]
        unchanged = "input files unchanged" if entry["inputs_unchanged"] else "INPUT CHANGED"
        for row, (method, run) in enumerate(runs.items()):
            checks = run.get("checks", {})
            passed = [k for k, v in checks.items() if v is True]
            failed = [k for k, v in checks.items() if v is False]
            verdict = "all pass" if checks and not failed else f"FAIL: {', '.join(failed)}"
            if run["exit"]:
                verdict = f"exit {run['exit']}"
            seconds = sum(run.get("timings", {}).values())
            note = unchanged if row == 0 else ""
            if "agreement" in run:
                a = run["agreement"]
                note = (f"vs isotropic result: {a['psnr_aniso_vs_iso_db']:.1f} dB "
                        f"(source: {a['psnr_source_vs_iso_db']:.1f})")
            lines.append(f"| {name} | {grid} | {method} | {verdict} ({len(passed)}) | "
                         f"{seconds:.1f} of {run['seconds']:.0f} | {note} |")
        if "without_mask" in entry:
            lines.append(f"| {name} | | no mask | exit {entry['without_mask']['exit']} | | "
                         f"{entry['without_mask']['last_line']} |")
    return "\n".join(lines) + "\n"


def figure(rows: list[tuple[str, Path, Path]], path: Path) -> None:
    fig, axes = plt.subplots(len(rows), 4, figsize=(12, 3.2 * len(rows)), squeeze=False)
    for row, (name, source, output) in zip(axes, rows):
        for column, (label, file) in enumerate((("source", source), ("default", output))):
            data = nib.as_closest_canonical(nib.load(str(file))).get_fdata(dtype=np.float32)
            high = np.percentile(data[data > 0], 99.5)
            axial = data[:, :, int(data.shape[2] * 0.55)].T
            coronal = data[:, int(data.shape[1] * 0.5), :].T
            for offset, (view, plane) in enumerate((("axial", axial), ("coronal", coronal))):
                ax = row[2 * offset + column]
                ax.imshow(plane, origin="lower", cmap="gray", vmin=0, vmax=high)
                ax.set_title(f"{name}: {label}, {view}", fontsize=9)
                ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=60)


def parse_scan(text: str) -> tuple[str, Path, Path | None]:
    name, _, files = text.partition("=")
    image, _, mask = files.partition(":")
    if not name or not image:
        raise SystemExit(f"--scan {text}: expected NAME=IMAGE[:MASK]")
    return name, Path(image), Path(mask) if mask else None


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scan", action="append", type=parse_scan, required=True)
    parser.add_argument("--methods", nargs="+", default=["default", "hm", "nyul"])
    parser.add_argument("--aniso", nargs="*", default=[], help="scan NAMEs to also run at 1x3x1")
    parser.add_argument("--out", type=Path, default=Path("runs/real"))
    args = parser.parse_args(argv)

    record: dict = {}
    rows = []
    for name, image, mask in args.scan:
        digests = {p: sha256(p) for p in (image, mask) if p}
        scan, staged_mask = stage(name, image, mask, args.out)
        header = nib.load(str(scan))
        entry: dict = {"shape": header.shape, "voxel_mm": [float(v) for v in
                                                            header.header.get_zooms()[:3]],
                       "axes": "".join(nib.aff2axcodes(header.affine)), "runs": {}}
        for method in args.methods:
            out = args.out / name / method
            entry["runs"][method] = run = harmonize_and_check(scan, staged_mask, method, out)
            print(name, method, json.dumps({k: v for k, v in run.items() if k != "log"}))
        if staged_mask is not None:
            refused = harmonize(scan, None, args.methods[0], args.out / name / "no-mask")
            entry["without_mask"] = refused
            print(name, "without its mask:", refused["exit"], refused["last_line"])
        if name in args.aniso:
            aniso, aniso_mask = anisotropic(scan, staged_mask, args.out)
            out = args.out / aniso.name[:-7] / "default"
            run = harmonize_and_check(aniso, aniso_mask, "default", out)
            if run["exit"] == 0:
                iso = args.out / name / "default" / f"{name}_harmonized.nii.gz"
                run["agreement"] = compare_aniso(iso, aniso, Path(run["output"]), aniso_mask)
            entry["aniso_1x3x1"] = run
            print(name, "1x3x1:", json.dumps({k: v for k, v in run.items() if k != "log"}))
        entry["inputs_unchanged"] = all(sha256(p) == d for p, d in digests.items())
        record[name] = entry
        if "default" in entry["runs"] and entry["runs"]["default"]["exit"] == 0:
            rows.append((name, scan, args.out / name / "default" / f"{name}_harmonized.nii.gz"))
    (args.out / "real_scans.json").write_text(json.dumps(record, indent=1, default=str))
    (args.out / "real_scans.md").write_text(table(record))
    print(table(record))
    if rows:
        figure(rows, args.out / "real_scans.png")


if __name__ == "__main__":
    main()
