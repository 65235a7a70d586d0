"""report.html: one self-contained page per output folder, to check a run by eye.

Built only from what a run leaves in its folder: each output's JSON report and
NIfTI, the inputs they name, and `run.json` (the last run's inputs, failures and
time). Figures are inline PNGs; the page refers to no other file. Rebuilding it on
a finished folder (`bh-report DIR`, or any rerun of harmonize.py) gives the same page.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

import numpy as np

from bh_jax.figures import new_figure
from bh_jax.io import atomic_path, load_volume, write_json_atomic
from bh_jax.preprocess import auto_brain_mask

RUN_RECORD = "run.json"
REPORT_FILE = "report.html"
# A volume's mean bits/dim after harmonization this many median absolute
# deviations above its site's median stands out (needs a look).
OUTLIER_MADS = 3.0
TRUTH_SITE = "target"  # the built-in data set: a source's truth is its target-site image


def write_run_record(folder: str | Path, record: dict) -> Path:
    """The run's own facts (inputs, failures with reasons, seconds), atomically."""
    return write_json_atomic(Path(folder) / RUN_RECORD, record)


def output_reports(folder: Path) -> list[dict]:
    """The JSON reports of the folder's finished outputs (their NIfTI exists), by name."""
    reports = []
    for path in sorted(folder.glob("*_harmonized.json")):
        report = json.loads(path.read_text())
        if Path(report["output"]).is_file():
            reports.append(report)
    return reports


def _site_of(report: dict) -> str:
    """The run's site label; else the built-in data set's site in the file name; else
    the input's folder (harmonize.py's default grouping)."""
    name = Path(report["input"]).name
    if label := (report.get("site") or {}).get("label"):
        return label
    if "_site-" in name:
        return name.split("_site-", 1)[1].split("_", 1)[0]
    return str(Path(report["input"]).parent)


def attention(reports: list[dict]) -> dict[str, list[str]]:
    """{output name: reasons} of the volumes that stand out: the safety net's flag
    (with, where it flags most of a site, the likeliest cause: scans of more than one
    scanner or protocol grouped as one site), failed slice fits, brain outside the
    window, or bits/dim far above those of the other volumes of its site (sites
    differ in noise, hence in bits/dim)."""
    means = [np.mean(r["diagnostics"]["bpd_result"]) if r.get("diagnostics") else np.nan
             for r in reports]
    usual = {}
    for site in {_site_of(r) for r in reports}:
        finite = np.array([m for m, r in zip(means, reports)
                           if _site_of(r) == site and np.isfinite(m)])
        if finite.size >= 3:  # fewer: nothing to compare with
            median = float(np.median(finite))
            usual[site] = (median, max(float(np.median(np.abs(finite - median))), 1e-6))
    mostly_flagged = _mostly_flagged_sites(reports)
    flagged: dict[str, list[str]] = {}
    for report, mean in zip(reports, means):
        reasons = []
        if flag := (report.get("calibration") or {}).get("flag"):
            reasons.append(flag)
            if hint := mostly_flagged.get(_site_of(report)):
                reasons.append(hint)
        if any((report.get("diagnostics") or {}).get("failed", [])):
            reasons.append("some slice fits failed")
        if (report.get("brain_outside_window") or 0.0) > 0.01:
            reasons.append(f"{report['brain_outside_window']:.0%} of the brain outside the "
                           "model's window")
        median, spread = usual.get(_site_of(report), (np.nan, np.nan))
        if report.get("diagnostics") and not np.isfinite(mean):
            reasons.append("its bits/dim are not finite")
        elif mean > median + OUTLIER_MADS * spread:
            reasons.append(f"bits/dim after {mean:.3f}, far above its site's median "
                           f"{median:.3f}")
        if reasons:
            flagged[Path(report["output"]).name] = reasons
    return flagged


def _mostly_flagged_sites(reports: list[dict]) -> dict[str, str]:
    """{site: hint} of the sites where the safety net flagged at least 2 volumes and at
    least half of them: on validation, a site's map only failed so when the site mixed
    scanners (a scan of another site among its volumes, docs/methods.md)."""
    hints = {}
    for site in {_site_of(r) for r in reports}:
        members = [r for r in reports if _site_of(r) == site]
        count = sum(bool((r.get("calibration") or {}).get("flag")) for r in members)
        if count >= 2 and 2 * count >= len(members):
            hints[site] = (f"{count} of the {len(members)} volumes of its site are flagged: "
                           "are they all from one scanner and protocol? (--sites)")
    return hints


def _png(figure) -> str:
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=55)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _truth_path(source: Path) -> Path | None:
    """The built-in data set's target-site image of a source scan, if it is one."""
    if "_site-" not in source.name:
        return None
    stem, rest = source.name.split("_site-", 1)
    truth = source.with_name(f"{stem}_site-{TRUTH_SITE}_{rest.split('_', 1)[1]}")
    return truth if truth.is_file() and truth != source else None


def _planes(volume: np.ndarray, centre: tuple[int, int, int]) -> list[np.ndarray]:
    x, y, z = centre
    return [volume[:, :, z].T, volume[:, y, :].T, volume[x, :, :].T]


def _aspects(path: str) -> list[float]:
    """Pixel aspect (height / width) of the three planes of `_planes`, in canonical
    (RAS) order, so that anisotropic scans are not drawn squashed."""
    import nibabel as nib

    image = nib.load(path)
    zooms = np.ones(3)
    for axis, (canonical, _) in enumerate(nib.io_orientation(image.affine)):
        zooms[int(canonical)] = image.header.get_zooms()[axis]
    x, y, z = zooms
    return [y / x, z / x, z / y]


def volume_figure(report: dict, quantiles: np.ndarray | None) -> str:
    """Source / harmonized (/ truth) in three planes, their difference, in-brain
    histograms beside the target's, and the intensity curve: a base64 PNG."""
    source = load_volume(report["input"]).data
    output = load_volume(report["output"]).data
    high = report.get("intensity_high") or float(np.percentile(source, 99.5))
    scale = high if report.get("output_scale", "input") == "input" else 1.0
    source, output = source / high, output / scale
    mask_file = report.get("mask", "automatic")
    brain = (load_volume(mask_file).data > 0 if mask_file != "automatic"
             and Path(mask_file).is_file() else auto_brain_mask(source))
    truth_path = _truth_path(Path(report["input"]))
    rows = [("source", source), ("harmonized", output), ("difference", output - source)]
    if truth_path is not None:
        truth = load_volume(truth_path).data
        rows.append(("truth", truth / max(np.percentile(truth[brain], 99.5), 1e-6)))
    centre = tuple(int(np.mean(a)) for a in np.nonzero(brain)) if brain.any() else tuple(
        s // 2 for s in source.shape)
    aspects = _aspects(report["input"])
    figure, axes = new_figure(len(rows), 4, (8.4, 2.1 * len(rows)))
    for row, (name, volume) in enumerate(rows):
        limits = (-0.5, 0.5) if name == "difference" else (0.0, 1.0)
        cmap = "coolwarm" if name == "difference" else "gray"
        for col, (plane, aspect) in enumerate(zip(_planes(volume, centre), aspects)):
            axes[row, col].imshow(plane, origin="lower", cmap=cmap, vmin=limits[0],
                                  vmax=limits[1], aspect=aspect)
            axes[row, col].set_axis_off()
        axes[row, 0].set_title(name, fontsize=9, loc="left")
    bins = np.linspace(0.0, 1.2, 61)
    histogram = axes[0, 3]
    for name, volume in rows[:2]:
        histogram.hist(np.clip(volume[brain], 0, 1.2), bins, histtype="step", density=True,
                       label=name)
    if quantiles is not None:
        histogram.hist(quantiles, bins, histtype="step", density=True, label="target")
    histogram.legend(fontsize=7)
    histogram.set_title("in-brain intensities", fontsize=9)
    curve = axes[1, 3]
    transform = report.get("intensity_transform") or {}
    if transform.get("source"):
        curve.plot(transform["source"], transform["target"], "o-", ms=3)
        curve.set_title(f"intensity curve ({transform.get('kind', '')})", fontsize=9)
    else:
        curve.set_axis_off()
    scores = axes[2, 3]
    diagnostics = report.get("diagnostics") or {}
    if diagnostics.get("bpd_source"):
        scores.plot(diagnostics["bpd_source"], label="source")
        scores.plot(diagnostics["bpd_result"], label="harmonized")
        scores.set_title("bits/dim per slice", fontsize=9)
        scores.legend(fontsize=7)
    else:
        scores.set_axis_off()
    for row in range(3, len(rows)):
        axes[row, 3].set_axis_off()
    return _png(figure)


def site_figure(site: dict) -> str:
    """One site's intensity curve (before and after the fields), a base64 PNG."""
    figure, axes = new_figure(1, 1, (3.2, 2.6))
    for key, label in (("before_fields", "before fields"), ("curve", "final")):
        if site.get(key):
            axes[0, 0].plot(site[key]["source"], site[key]["target"], "o-", ms=3, label=label)
    axes[0, 0].set_xlabel("source (unit scale)", fontsize=8)
    axes[0, 0].set_ylabel("target", fontsize=8)
    axes[0, 0].legend(fontsize=7)
    return _png(figure)


def _quantiles(reports: list[dict]) -> np.ndarray | None:
    from bh_jax.reference import TargetReference
    from bh_jax.training.checkpoint import REFERENCE_FILE

    for report in reports:
        path = Path((report.get("checkpoint") or {}).get("workdir", "")) / REFERENCE_FILE
        if path.is_file():
            return np.asarray(TargetReference.load(path).quantiles)
    return None


def _e(value) -> str:
    return html.escape(str(value))


def build_report(folder: str | Path) -> Path:
    """Writes FOLDER/report.html from the folder's outputs and run.json; returns its path."""
    folder = Path(folder)
    reports = output_reports(folder)
    run = json.loads((folder / RUN_RECORD).read_text()) if (folder / RUN_RECORD).is_file() \
        else {}
    flagged = attention(reports)
    quantiles = _quantiles(reports)
    first = reports[0] if reports else {}
    checkpoint = (first.get("checkpoint") or {})
    unknown = "not recorded"
    parts = [f"<h1>bh_jax harmonization: {_e(folder.name)}</h1>",
             "<h2>The run</h2><table>",
             f"<tr><th>outputs</th><td>{len(reports)} finished in {_e(folder)}</td></tr>",
             f"<tr><th>method</th><td>{_e(first.get('method', run.get('method', unknown)))}"
             "</td></tr>",
             f"<tr><th>checkpoint</th><td>{_e(checkpoint.get('workdir', unknown))}, step "
             f"{_e(checkpoint.get('step', unknown))}, sha256 "
             f"{_e(checkpoint.get('sha256', unknown))}</td></tr>",
             f"<tr><th>code</th><td>{_e(first.get('code_version', unknown))}</td></tr>"]
    if run:
        parts.append(f"<tr><th>last run</th><td>{len(run.get('inputs', []))} input(s), "
                     f"{run.get('harmonized', 0)} harmonized, {run.get('skipped', 0)} already "
                     f"done, {len(run.get('failures', []))} failed, "
                     f"{run.get('seconds', 0):.1f} s</td></tr>")
    parts.append("</table><details><summary>settings</summary><pre>"
                 f"{_e(json.dumps(first.get('settings'), indent=1))}</pre></details>")
    if run.get("inputs"):
        parts.append("<details><summary>inputs</summary><ul>" + "".join(
            f"<li>{_e(p)}</li>" for p in run["inputs"]) + "</ul></details>")
    parts.append("<h2>Needs a look</h2>")
    failures = run.get("failures", [])
    if not flagged and not failures:
        parts.append("<p>Nothing stands out.</p>")
    parts.append("<ul class='attention'>" + "".join(
        f"<li class='failed'>failed: {_e(f['reason'])}</li>"  # the reason names the file
        for f in failures) + "".join(
        f"<li class='flagged'><a href='#{_e(name)}'>{_e(name)}</a>: {_e('; '.join(why))}</li>"
        for name, why in flagged.items()) + "</ul>")
    sites = {r["site"]["label"]: r["site"] for r in reports
             if (r.get("site") or {}).get("before_fields")}
    if sites:
        parts.append("<h2>Site curves</h2>")
        for label, site in sites.items():
            members = [Path(r["input"]).name for r in reports
                       if (r.get("site") or {}).get("label") == label]
            parts.append(f"<div class='site'><h3>{_e(label)}</h3><p>{_e(site.get('grouping'))}; "
                         f"{len(members)} volume(s): {_e(', '.join(members))}</p>"
                         f"<img src='data:image/png;base64,{site_figure(site)}'></div>")
    parts.append("<h2>Volumes</h2>")
    for report in reports:
        name = Path(report["output"]).name
        d = report.get("diagnostics") or {}
        bpd = (f"{np.mean(d['bpd_source']):.3f} &rarr; {np.mean(d['bpd_result']):.3f}"
               if d.get("bpd_source") else "n/a")
        seconds = sum((report.get("timings") or {}).values())
        css = " class='flagged'" if name in flagged else ""
        parts.append(f"<div{css} id='{_e(name)}'><h3>{_e(name)}</h3><p>input "
                     f"{_e(report['input'])}; bits/dim {bpd}; {seconds:.1f} s"
                     + (f"; <b>{_e('; '.join(flagged[name]))}</b>" if name in flagged else "")
                     + f"</p><img src='data:image/png;base64,"
                     f"{volume_figure(report, quantiles)}'></div>")
    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>bh_jax report"
            "</title><style>body{font-family:sans-serif;margin:1.5em;max-width:70em}"
            "table{border-collapse:collapse}th,td{padding:2px 8px;text-align:left}"
            ".flagged{border-left:4px solid #c33;padding-left:8px}"
            ".failed{color:#c33}img{max-width:100%}</style></head><body>"
            + "\n".join(parts) + "</body></html>\n")
    with atomic_path(folder / REPORT_FILE) as tmp:
        tmp.write_text(page)
    return folder / REPORT_FILE
