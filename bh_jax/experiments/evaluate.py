"""Evaluation on the built-in data set: methods against target-site truth.

A *method* maps a list of `PreparedVolume`s of source images to their
harmonized [N, H, W] slices in [0, 1] (a list: BlindHarmony packs the slices
of all volumes into the same batches). `evaluate_methods` runs methods on the
held-out subjects of every source site and compares them with the same
subject's target-site image, slice by slice, inside the brain mask.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path

import jax
import numpy as np
from tqdm.auto import tqdm

from bh_jax import metrics
from bh_jax.config import DataConfig, PhantomConfig
from bh_jax.data.manifest import prepare_entry, select, target_volumes, wm_slices
from bh_jax.data.phantom import render_subject
from bh_jax.figures import new_figure, save_figure
from bh_jax.harmonize.calibration import Calibrator
from bh_jax.harmonize.methods import VolumeMethod
from bh_jax.harmonize.pipeline import HarmonizedVolume, classical, site_nyul
from bh_jax.harmonize.settings import CalibrationConfig
from bh_jax.preprocess import IntensityScale, PreparedVolume, window_slices
from bh_jax.reference import TargetReference
from bh_jax.training.checkpoint import LoadedFlow
from bh_jax.training.input_pipeline import SliceSet
from bh_jax.training.qc import prior_scores

Method = Callable[[list[PreparedVolume]], list[np.ndarray]]
NYUL_PER_SITE = "Nyul per site"
Segmenter = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (slices, masks) -> bool WM

_masked_psnr = jax.jit(jax.vmap(metrics.psnr))
_masked_ssim = jax.jit(jax.vmap(metrics.ssim))


def slice_scores(pred: np.ndarray, truth: np.ndarray, masks: np.ndarray) -> dict[str, np.ndarray]:
    """In-mask PSNR (dB) and SSIM of each of [N, H, W] slices."""
    return {"psnr": np.asarray(_masked_psnr(pred, truth, masks)),
            "ssim": np.asarray(_masked_ssim(pred, truth, masks))}


def target_reference(manifest: dict, config: DataConfig, split: str = "train") -> TargetReference:
    """Target-site statistics of one split of the built-in data set."""
    prepared = target_volumes(manifest, config, split)
    if not prepared:
        raise ValueError(f"no target-site images in split {split!r}")
    slices = SliceSet.from_volumes(prepared)
    return TargetReference.from_slices(slices.slices, slices.masks, slices.voxel_mm,
                                       slices.volumes)


def classical_methods(reference: TargetReference) -> dict[str, Method]:
    """Source (identity), HM, Nyul and Nyul per site (if the reference has its scale)
    and SSIMH as methods; a method is given one site's volumes at a time."""
    def method(name: str) -> Method:
        return lambda volumes: [classical(name, p, reference).slices for p in volumes]

    def per_site(volumes: list[PreparedVolume]) -> list[np.ndarray]:
        return [r.slices for r in site_nyul(volumes, reference)]

    nyul = ({"Nyul": method("nyul"), NYUL_PER_SITE: per_site}
            if np.all(np.isfinite(reference.nyul)) else {})
    return {"Source": lambda volumes: [p.slices for p in volumes],
            "HM": method("hm"), **nyul, "SSIMH": method("ssimh")}


TYPICAL = "Typical contrast (oracle)"


def typical_contrast_method(manifest: dict, config: DataConfig) -> Method:
    """A reference row for the built-in data set, not a method: each source's
    subject rendered at the target site with the population's mean tissue
    constants (`phantom.make_anatomy(typical=True)`: the subject's own anatomy,
    texture and noise).

    A blind method sees a subject only through an unknown monotone intensity
    map, and such a map can turn one set of tissue intensities into any other:
    the subject's own tissue constants are out of its reach, and its natural
    aim is this image. Not a bound: a method can land closer to the truth on a
    subject whose constants happen to suit it.
    """
    cfg = PhantomConfig(**manifest["config"])
    index = {s["subject"]: i for i, s in enumerate(manifest["subjects"])}
    subject_of = {str(Path(e["path"])): e["subject"] for e in manifest["images"]}
    target = manifest["target_site"]
    rendered: dict[str, np.ndarray] = {}  # subject -> raw target image

    def typical(prepared: PreparedVolume) -> np.ndarray:
        subject = subject_of[str(Path(prepared.volume.path))]
        if subject not in rendered:
            rendered[subject] = render_subject(cfg, index[subject], typical=True)[1][target]
        image = prepared.volume.to_canonical(rendered[subject])
        unit = IntensityScale.fit(image, prepared.mask, config.high_percentile).normalize(image)
        return window_slices(prepared, unit) * prepared.slice_masks

    return lambda volumes: [typical(p) for p in volumes]


def every_nth_slice(prepared: PreparedVolume, stride: int) -> PreparedVolume:
    """The same volume with only every `stride`-th kept slice (for quick evaluations)."""
    if stride <= 1:
        return prepared
    pick = slice(stride // 2, None, stride)
    return replace(prepared, slice_indices=prepared.slice_indices[pick],
                   slices=prepared.slices[pick], slice_masks=prepared.slice_masks[pick])


def evaluate_methods(manifest: dict, config: DataConfig, methods: dict[str, Method],
                     sites: Iterable[str] | None = None, split: str = "test",
                     progress: bool = False, slice_stride: int = 1,
                     subjects: Iterable[str] | None = None, examples: dict | None = None,
                     segment: Segmenter | None = None
                     ) -> dict[str, dict[str, dict[str, float]]]:
    """Mean in-mask PSNR/SSIM of each method on each source site.

    With `slice_stride` k > 1 only every k-th slice of each volume is used
    (quicker; HM still sees the kept slices' histogram only). `subjects`
    restricts the split to those subjects. If `examples` is a dict, it is
    filled with {site: {method or "Truth": [H, W]}}: the middle slice of the
    site's first subject. With `segment`, the white-matter Dice of its
    segmentation of each output against the subject's WM labels is added
    (one value per volume). Each method is called once per source site, with
    that site's volumes: the volumes it harmonizes together.

    Returns:
      {site: {method: {"psnr": dB, "ssim": value, "slices": count}}} (+ "dice"
      with `segment`), means over all kept slices (volumes, for Dice) of all
      subjects of the split.
    """
    target = manifest["target_site"]
    sites = [s for s in (sites or manifest["sites"]) if s != target]
    entries = [e for e in manifest["images"] if e["split"] == split and e["site"] in sites
               and (subjects is None or e["subject"] in subjects)]
    truths: dict[str, PreparedVolume] = {}
    labels: dict[str, np.ndarray] = {}
    for entry in entries:
        if entry["subject"] not in truths:
            truth = every_nth_slice(prepare_entry(entry, config, key="truth"), slice_stride)
            truths[entry["subject"]] = truth
            if segment is not None:
                labels[entry["subject"]] = wm_slices(truth, entry["wm"])
    sources = [every_nth_slice(prepare_entry(e, config), slice_stride) for e in entries]
    # A method sees one source site's volumes at a time, as a user harmonizes
    # one site's scans together (a shared intensity curve is then one per site).
    by_site = [[i for i, e in enumerate(entries) if e["site"] == site] for site in sites]
    scores: dict[str, dict[str, dict[str, list]]] = {
        s: {m: {"psnr": [], "ssim": []} for m in methods} for s in sites}
    for name, method in methods.items():
        if progress:
            print(f"evaluate: {name} on {len(sources)} volumes", flush=True)
        outputs = [None] * len(entries)
        for group in filter(None, by_site):
            for i, output in zip(group, method([sources[i] for i in group]), strict=True):
                outputs[i] = output
        for entry, output in zip(entries, outputs, strict=True):
            truth = truths[entry["subject"]]
            if examples is not None:  # the first subject of each site
                middle = len(truth.slices) // 2
                per_site = examples.setdefault(entry["site"], {"Truth": truth.slices[middle]})
                per_site.setdefault(name, output[middle])
            for metric, values in slice_scores(output, truth.slices, truth.slice_masks).items():
                scores[entry["site"]][name][metric].append(values)
            if segment is not None:
                wm = segment(output, truth.slice_masks)
                scores[entry["site"]][name].setdefault("dice", []).append(
                    np.atleast_1d(metrics.dice(wm, labels[entry["subject"]])))
    return {site: {name: {**{metric: float(np.mean(np.concatenate(values)))
                             for metric, values in v.items()},
                          "slices": int(sum(len(x) for x in v["psnr"]))}
                   for name, v in per_method.items()}
            for site, per_method in scores.items() if any(v["psnr"] for v in per_method.values())}


def format_table(results: dict[str, dict[str, dict[str, float]]],
                 metrics: tuple[str, ...] = ("psnr", "ssim")) -> str:
    """Markdown table: a row per method, a column per site and metric."""
    sites = list(results)
    methods = list(next(iter(results.values()))) if results else []
    digits = {"psnr": 2}
    header = "| method | " + " | ".join(f"{s} {m.upper() if m != 'dice' else 'Dice'}"
                                       for s in sites for m in metrics) + " |"
    rule = "|---|" + "---|" * (len(sites) * len(metrics))
    rows = [f"| {name} | " + " | ".join(
        f"{results[s][name][m]:.{digits.get(m, 4)}f}" if m in results[s].get(name, {}) else "-"
        for s in sites for m in metrics) + " |" for name in methods]
    return "\n".join([header, rule, *rows])


def save_examples_png(examples: dict[str, dict[str, np.ndarray]], path: str | Path) -> Path:
    """A grid of example slices: a row per site, a column per method (+ Truth)."""
    sites = list(examples)
    columns = list(dict.fromkeys(m for s in sites for m in examples[s] if m != "Truth"))
    columns.append("Truth")
    fig, axes = new_figure(len(sites), len(columns),
                           (1.5 * len(columns), 1.5 * len(sites)))
    for row, site in enumerate(sites):
        for col, name in enumerate(columns):
            ax = axes[row, col]
            if name in examples[site]:
                ax.imshow(np.rot90(examples[site][name]), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if row == 0:
                ax.set_title(name, fontsize=8)
        axes[row, 0].set_ylabel(site, fontsize=8)
    return save_figure(fig, path)


def site_report(manifest: dict, config: DataConfig) -> str:
    """Table of the classical methods (`classical_methods`) on every source site's
    test subjects."""
    reference = target_reference(manifest, config)
    results = evaluate_methods(manifest, config, classical_methods(reference))
    return ("In-mask PSNR (dB) / SSIM against the target-site truth, test subjects:\n"
            + format_table(results))


def prior_check(flow: LoadedFlow, manifest: dict, sites: Iterable[str], split: str = "val",
                slice_stride: int = 1, batch_size: int = 32) -> dict[str, dict]:
    """Does the prior rank the truth above HM? (Where BlindHarmony can beat HM.)

    For every source site, scores the same subjects' Truth (target-site image),
    HM output, Source and Affine under the flow: mean bits/dim and mean z^2
    (the objective's prior term), and the fraction of slices whose truth has a
    lower bits/dim (or z^2) than their HM image. Fractions near 0.5 mean the
    prior cannot tell HM's residual intensity error from the truth, so no
    weighting of the prior term can move BlindHarmony past HM. Affine is the
    oracle `best_affine` map of the source: the closest any result with
    NCC = 1 can come to the truth; its PSNR (and HM's, the source's) against
    the truth says how much room the NCC term leaves above HM.

    Returns:
      {site: {"Truth": {"bpd", "z2"}, "HM"|"Source"|"Affine": {"bpd", "z2",
      "psnr"}, "truth_preferred_bpd", "truth_preferred_z2", "slices"}}.
    """
    def scores_of(slices: np.ndarray) -> dict[str, np.ndarray]:
        return prior_scores(flow.model, flow.params, slices, batch_size)

    # Per subject, shared by all sites: the prepared truth and its scores.
    truths: dict[str, tuple[PreparedVolume, dict[str, np.ndarray]]] = {}
    results = {}
    for site in sites:
        entries = select(manifest, split, site)
        if not entries:
            continue
        kinds: dict[str, list[dict]] = {"Truth": [], "HM": [], "Source": [], "Affine": []}
        for entry in entries:
            if entry["subject"] not in truths:
                truth = every_nth_slice(prepare_entry(entry, flow.config.data, key="truth"),
                                        slice_stride)
                truths[entry["subject"]] = truth, scores_of(truth.slices)
            truth, truth_scores = truths[entry["subject"]]
            source = every_nth_slice(prepare_entry(entry, flow.config.data), slice_stride)
            kinds["Truth"].append(truth_scores)
            for kind, image in (
                    ("Source", source.slices),
                    ("HM", classical("hm", source, flow.reference).slices),
                    ("Affine", best_affine(source.slices, truth.slices, truth.slice_masks))):
                scores = scores_of(image)
                scores["psnr"] = slice_scores(image, truth.slices, truth.slice_masks)["psnr"]
                kinds[kind].append(scores)
        scores = {kind: {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
                  for kind, parts in kinds.items()}
        results[site] = {kind: {k: float(v.mean()) for k, v in s.items()}
                         for kind, s in scores.items()}
        for k in ("bpd", "z2"):
            results[site][f"truth_preferred_{k}"] = float(
                np.mean(scores["Truth"][k] < scores["HM"][k]))
        results[site]["slices"] = int(len(scores["Truth"]["bpd"]))
    return results


def best_affine(source: np.ndarray, truth: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """The oracle a * source + b closest to the truth (least squares inside the masks).

    One (a, b) for all [N, H, W] slices of a volume, clipped to [0, 1], zero
    background: the best any method that keeps NCC(x, source) = 1 can do.
    """
    masks = np.asarray(masks, bool)
    out = np.zeros_like(np.asarray(source, np.float32))
    values = source[masks]
    if values.size == 0:
        return out
    design = np.stack([values, np.ones_like(values)], axis=1).astype(np.float64)
    coef = np.linalg.lstsq(design, truth[masks].astype(np.float64), rcond=None)[0]
    out[masks] = np.clip(design @ coef, 0.0, 1.0)
    return out


def calibration_check(flow: LoadedFlow, manifest: dict, split: str = "val",
                      slice_stride: int = 1) -> list[dict]:
    """Does the intensity calibration leave the target's own images alone?

    Calibrates each target-site image of `split` as if it came from another
    site (`harmonize.calibration`): the right curve is the identity, so its
    fitted values should equal its knots. One row per subject: the in-mask
    PSNR (dB) of the calibrated image and of the HM image against the image
    itself, and the knots and fitted values. Values that barely change from
    subject to subject while the knots do mean the prior's likelihood acts as
    a population histogram: it cannot see a subject's own contrast.
    """
    calibrator = Calibrator(flow.model, flow.params, CalibrationConfig())
    rows = []
    for entry in select(manifest, split, manifest["target_site"]):
        image = every_nth_slice(prepare_entry(entry, flow.config.data), slice_stride)
        slices, masks = image.slices, image.slice_masks
        curve, _ = calibrator.curve(slices, masks, flow.reference)
        hm = classical("hm", image, flow.reference).slices
        psnr = {name: float(np.mean(slice_scores(x, slices, masks)["psnr"]))
                for name, x in (("curve", curve(slices, masks)), ("hm", hm))}
        rows.append({"subject": entry["subject"], "curve_psnr": psnr["curve"],
                     "hm_psnr": psnr["hm"], "fitted": curve.fitted,
                     "knots": " ".join(f"{v:.3f}" for v in curve.knots),
                     "values": " ".join(f"{v:.3f}" for v in curve.values)})
    return rows


def as_evaluation(method: VolumeMethod, progress: bool = False,
                  on_results: Callable[[list[HarmonizedVolume], float], None] | None = None
                  ) -> Method:
    """Any harmonization method of `bh_jax.harmonize.run` as an evaluation method.

    `on_results(results, seconds)`, if given, also receives the full results
    (with per-slice diagnostics) and the time they took, e.g. to write them.
    """
    def evaluated(volumes: list[PreparedVolume]) -> list[np.ndarray]:
        start = time.perf_counter()
        with tqdm(total=sum(len(p.slices) for p in volumes), unit="slice",
                  desc=method.name, disable=not progress) as bar:
            results = method.harmonize(volumes, bar)
        if on_results is not None:
            on_results(results, time.perf_counter() - start)
        return [r.slices for r in results]

    return evaluated
