"""The demo's domains at 1 mm against 3 mm (issue 26): each method's in-mask PSNR / SSIM
against the target-site truth at the scan's OWN resolution, and the time per volume.

    python tools/resolution_table.py --data-dir data/phantom-demo --sites exp siteB \\
        --subjects 3 --out runs/resolution

The 1 mm scans are the built-in subjects rendered at 1 mm (`--fine rendered`: the data
set's generator at 1 mm voxels, same seeds; a different draw of the random fields than
the 3 mm rendering of the same subject) or their 3 mm volumes resampled to 1 mm
(`--fine interpolated`: nibabel.processing, linear; masks nearest neighbour), a paper
shift applied at 1 mm to the truth; written to OUT/1mm. Each
site's scans are harmonized together, as harmonize.py does with one folder per site,
with the shipped `demo` prior (3 mm): the 1 mm scans are brought to its grid for the
fit and the result is applied to their own voxels. The truth is scaled to [0, 1] by its
99.5th in-brain percentile at each resolution; SSIM is the mean over the axial slices
holding brain. Seconds per volume: loading, fitting and applying, the first site's
including the compiles. Writes OUT/resolution.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import nibabel as nib
import numpy as np
from nibabel import processing

from bh_jax import metrics, pretrained, resample
from bh_jax.config import PhantomConfig
from bh_jax.data.manifest import load_manifest
from bh_jax.data.phantom import (
    SHIFT_SITES,
    TARGET_SITE,
    grid,
    render_subject,
    unit_scale,
)
from bh_jax.data.shifts import apply_shift
from bh_jax.harmonize import Harmonizer, SolverConfig, harmonize_volumes
from bh_jax.harmonize.pipeline import classical
from bh_jax.harmonize.run import native_output
from bh_jax.inputs import load_scan
from bh_jax.training.checkpoint import load_flow

METHODS = ("Source", "HM", "Nyul", "default")


def resampled(path: Path, out: Path, order: int) -> Path:
    image = nib.load(str(path))
    data = nib.Nifti1Image(np.asarray(image.dataobj, np.float32), image.affine)
    fine = processing.resample_to_output(data, voxel_sizes=(1.0, 1.0, 1.0), order=order)
    nib.save(fine, str(out))
    return out


def fine_files(site: str, index: int, files: tuple[Path, Path, Path], out: Path) -> tuple:
    """(source, mask, truth) at 1 mm. A paper shift is applied at 1 mm to the resampled
    truth, as the data set applies it at 3 mm (a shift of interpolated values is not an
    interpolation of shifted ones); a scanner's 3 mm image is resampled as it is."""
    source, mask, truth = files
    mask = resampled(mask, out / f"{site}-{index}-mask.nii.gz", 0)
    truth = resampled(truth, out / f"{site}-{index}-truth.nii.gz", 1)
    if site not in SHIFT_SITES:
        return resampled(source, out / f"{site}-{index}-source.nii.gz", 1), mask, truth
    image, brain = nib.load(str(truth)), nib.load(str(mask)).get_fdata() > 0
    shifted = apply_shift(unit_scale(image.get_fdata(), brain), site)
    nib.save(nib.Nifti1Image(shifted.astype(np.float32), image.affine),
             str(out / f"{site}-{index}-source.nii.gz"))
    return out / f"{site}-{index}-source.nii.gz", mask, truth


def save(data: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    nib.save(nib.Nifti1Image(data.astype(np.float32), affine), str(path))
    return path


def rendered_files(site: str, subject: str, config: dict, out: Path) -> tuple:
    """(source, mask, truth) of a data set's subject rendered at 1 mm."""
    cfg = PhantomConfig(**{**config, "voxel_mm": 1.0})
    index = int(subject.removeprefix("sub-"))
    scanner = site if site not in SHIFT_SITES else TARGET_SITE
    anatomy, images = render_subject(cfg, index, sites=tuple(dict.fromkeys((TARGET_SITE,
                                                                            scanner))))
    _, affine = grid(1.0)
    truth = images[TARGET_SITE]
    source = (apply_shift(unit_scale(truth, anatomy.mask), site) if site in SHIFT_SITES
              else images[site])
    stem = out / f"{site}-{index}"
    return (save(source, affine, Path(f"{stem}-source.nii.gz")),
            save(anatomy.mask.astype(np.float32), affine, Path(f"{stem}-mask.nii.gz")),
            save(truth, affine, Path(f"{stem}-truth.nii.gz")))


def scores(output: np.ndarray, truth_path: Path, mask: np.ndarray) -> dict:
    truth = nib.as_closest_canonical(nib.load(str(truth_path))).get_fdata()
    truth = np.clip(truth / np.percentile(truth[mask], 99.5), 0.0, 1.0)
    psnr = float(metrics.psnr(output, truth, mask))
    keep = mask.any(axis=(0, 1))
    slices = [np.moveaxis(a[:, :, keep], -1, 0).astype(np.float32) for a in (output, truth, mask)]
    ssim = float(np.mean(jax.vmap(metrics.ssim)(*slices)))
    return {"psnr": psnr, "ssim": ssim}


def run_site(flow, harmonizer, files: list[tuple[Path, Path, Path]]) -> dict:
    start = time.perf_counter()
    scans = [load_scan(path, flow.config.data, flow.voxel_mm, mask) for path, mask, _ in files]
    outputs = {"default": [native_output(s, r, "unit")[0] for s, r in zip(
        scans, harmonize_volumes(harmonizer, [s.prepared for s in scans], flow.reference))]}
    seconds = (time.perf_counter() - start) / len(files)
    for method in ("HM", "Nyul"):
        outputs[method] = [native_output(s, classical(method.lower(), s.prepared,
                                                      flow.reference), "unit")[0]
                           for s in scans]
    outputs["Source"] = [np.clip(s.native.data / s.prepared.scale.high, 0, 1) for s in scans]
    table = {}
    for method in METHODS:
        each = [scores(o, truth, s.native_mask)
                for o, s, (_, _, truth) in zip(outputs[method], scans, files)]
        table[method] = {k: float(np.mean([e[k] for e in each])) for k in ("psnr", "ssim")}
    return {"scores": table, "seconds_per_volume": seconds,
            "shape": list(scans[0].native.data.shape)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="the demo preset's built-in data set")
    parser.add_argument("--sites", nargs="+", default=["exp", "siteB"])
    parser.add_argument("--subjects", type=int, default=3, help="subjects per site")
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--fine", default="rendered", choices=("rendered", "interpolated"),
                        help="how the 1 mm scans are made (see above)")
    parser.add_argument("--fwhm-per-width", type=float, nargs="+",
                        help="1 mm rows only, once per value: the anti-aliasing filter's "
                             "FWHM per mm of width difference (bh_jax.resample."
                             "BOX_FWHM_PER_WIDTH; 1.0: the first version)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    data, out = Path(args.data_dir), Path(args.out)
    (out / "1mm").mkdir(parents=True, exist_ok=True)
    flow = load_flow(pretrained.path("demo"))
    harmonizer = Harmonizer(flow.model, flow.params, SolverConfig(), batch_size=32)
    manifest = load_manifest(data)
    result = {}
    for site in args.sites:
        entries = [e for e in manifest["images"]
                   if e["split"] == args.split and e["site"] == site][:args.subjects]
        coarse = [(Path(e["path"]), Path(e["mask"]), Path(e["truth"])) for e in entries]
        fine = ([rendered_files(site, e["subject"], manifest["config"], out / "1mm")
                 for e in entries]
                if args.fine == "rendered" else
                [fine_files(site, i, files, out / "1mm") for i, files in enumerate(coarse)])
        rows = ([(f"1 mm, FWHM per width {k}", fine, k) for k in args.fwhm_per_width]
                if args.fwhm_per_width else
                [("3 mm", coarse, None), ("1 mm", fine, None)])
        for resolution, files, scale in rows:
            if scale is not None:
                resample.BOX_FWHM_PER_WIDTH = scale
            result[f"{site} {resolution}"] = run_site(flow, harmonizer, files)
            row = result[f"{site} {resolution}"]
            print(f"{site} {resolution} {row['shape']}: " + ", ".join(
                f"{m} {row['scores'][m]['psnr']:.2f}/{row['scores'][m]['ssim']:.4f}"
                for m in METHODS) + f"; {row['seconds_per_volume']:.1f} s per volume",
                flush=True)
    (out / "resolution.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
