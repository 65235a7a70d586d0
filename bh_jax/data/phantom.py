"""The built-in multi-site data set, simulated from the MNI ICBM152 2009 template.

Real multi-scanner data cannot be shipped, so subjects and scanners are
simulated from the template files in the nilearn wheel (T1, GM and WM
probability maps; CSF = brain mask - GM - WM):

* Subjects: a smooth random deformation and a global scaling of the tissue
  maps, atrophy (tissue lost to CSF next to the ventricles and sulci) and a
  few percent of per-subject and spatially smooth tissue-property variation.
* Sites: an acquisition protocol rendered with MR signal equations from the
  tissues' T1/T2/PD (MPRAGE-like inversion recovery, spoiled gradient echo,
  spin echo), then a smooth bias field, blur and Rician noise at site-specific
  levels. All sites are T1-weighted: same contrast family, different scanners.
* Shifts: the paper's exp / log / gamma contrasts of the target image.

For every source image, the same subject at the target site is the ground
truth. Everything is deterministic given the seed.

    bh-phantom --out DIR [--preset tiny|demo|reference] [--report]
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from bh_jax.config import PhantomConfig
from bh_jax.data.manifest import MANIFEST, load_manifest
from bh_jax.data.shifts import apply_shift
from bh_jax.figures import new_figure, save_figure
from bh_jax.io import write_json_atomic

TARGET_SITE = "target"
SHIFT_SITES = ("exp", "log", "gamma0.7", "gamma1.5")

# Tissue properties at 3 T: T1 (ms), T2 (ms), proton density.
TISSUES = {
    "csf": (4000.0, 1500.0, 1.00),
    "gm": (1400.0, 90.0, 0.80),
    "wm": (850.0, 70.0, 0.70),
}


@dataclass(frozen=True)
class SiteProtocol:
    """One scanner: sequence, timing (ms), flip (deg) and imperfections.

    bias: peak log-amplitude of the smooth multiplicative bias field.
    noise: Rician noise sigma as a fraction of the mean white-matter signal.
    blur_mm: FWHM of the Gaussian point-spread function.
    gain: arbitrary scanner units per unit signal.
    """

    sequence: str  # 'ir' (MPRAGE-like), 'spgr' or 'se'
    tr: float
    te: float
    ti: float = 0.0
    flip: float = 90.0
    bias: float = 0.0
    noise: float = 0.0
    blur_mm: float = 0.0
    gain: float = 1000.0
    description: str = ""


SITES: dict[str, SiteProtocol] = {
    TARGET_SITE: SiteProtocol("ir", tr=2300, te=3, ti=900, bias=0.1, noise=0.015,
                              description="MPRAGE-like IR, TI 900 ms (target)"),
    "siteA": SiteProtocol("ir", tr=2000, te=3, ti=1000, bias=0.12, noise=0.025, gain=700,
                          description="MPRAGE-like IR, TI 1000 ms, mild bias (mild gap)"),
    "siteB": SiteProtocol("spgr", tr=20, te=4, flip=25, bias=0.15, noise=0.03, gain=3000,
                          blur_mm=1.5, description="spoiled GRE, flip 25 deg"),
    "siteC": SiteProtocol("se", tr=500, te=15, bias=0.2, noise=0.03, gain=1500,
                          description="T1w spin echo, TR 500 ms (low contrast)"),
    "siteD": SiteProtocol("ir", tr=1800, te=4, ti=700, bias=0.35, noise=0.05, gain=400,
                          blur_mm=4.0, description="IR TI 700 ms, strong bias, noisy, "
                          "blurred (large gap)"),
}


# ----------------------------------------------------------------------------
# Template


@lru_cache(maxsize=1)
def _template() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """GM, WM, brain mask (float32 [197, 233, 189], 1 mm) and the affine."""
    folder = resources.files("nilearn") / "datasets" / "data"

    def read(tissue: str) -> nib.Nifti1Image:
        path = folder / f"mni_icbm152_{tissue}_tal_nlin_sym_09a_converted.nii.gz"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: MNI template missing from the nilearn wheel")
        return nib.load(str(path))

    t1 = read("t1")
    gm = read("gm").get_fdata(dtype=np.float32) / 255.0
    wm = read("wm").get_fdata(dtype=np.float32) / 255.0
    brain = ndimage.binary_fill_holes(t1.get_fdata(dtype=np.float32) > 0)
    return gm, wm, brain.astype(np.float32), t1.affine


@lru_cache(maxsize=4)
def _smoothed_template(voxel_mm: float) -> tuple[np.ndarray, ...]:
    """Template maps pre-smoothed against aliasing at the output voxel size."""
    gm, wm, brain, affine = _template()
    sigma = 0.4 * max(voxel_mm - 1.0, 0.0)
    if sigma > 0:
        gm, wm, brain = (ndimage.gaussian_filter(m, sigma) for m in (gm, wm, brain))
    return gm, wm, brain, affine


def grid(voxel_mm: float) -> tuple[tuple[int, int, int], np.ndarray]:
    """Output shape and RAS affine of the phantom at `voxel_mm`."""
    _, _, _, affine = _template()
    shape = tuple(int(np.ceil(n / voxel_mm)) for n in _template()[0].shape)
    out_affine = affine.copy()
    out_affine[:3, :3] *= voxel_mm
    out_affine[:3, 3] += (voxel_mm - 1.0) / 2.0  # voxel centres stay centred
    return shape, out_affine


# ----------------------------------------------------------------------------
# Subjects


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Smooth random field with unit maximum magnitude."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return field / max(float(np.abs(field).max()), 1e-6)


@dataclass
class Anatomy:
    """One subject's tissue maps on the output grid (float32 [X, Y, Z])."""

    gm: np.ndarray
    wm: np.ndarray
    csf: np.ndarray
    mask: np.ndarray  # bool
    t1_factor: dict[str, np.ndarray]  # per-tissue T1 multiplier maps
    pd_factor: dict[str, float]


def make_anatomy(rng: np.random.Generator, voxel_mm: float, typical: bool = False) -> Anatomy:
    """A random subject: deformation, scaling, atrophy and tissue variation.

    With `typical`, the subject's tissue constants (one T1 and one PD factor
    per tissue) are replaced by their population means; every random number
    is still drawn, so the anatomy, texture and later noise stay the subject's.
    """
    gm_t, wm_t, brain_t, _ = _smoothed_template(voxel_mm)
    shape, _ = grid(voxel_mm)
    centre = (np.array(gm_t.shape) - 1) / 2.0
    coords = np.stack(np.meshgrid(*(np.arange(n) * voxel_mm + (voxel_mm - 1) / 2
                                    for n in shape), indexing="ij"))
    scale = rng.uniform(0.9, 1.1, size=3)
    warp_sigma = 20.0 / voxel_mm  # smooth over ~20 mm
    displacement = np.stack([4.0 * _smooth_field(rng, shape, warp_sigma) for _ in range(3)])
    source = (coords - centre[:, None, None, None]) / scale[:, None, None, None] \
        + centre[:, None, None, None] + displacement

    def warp(volume: np.ndarray) -> np.ndarray:
        return ndimage.map_coordinates(volume, source, order=1, mode="constant")

    gm, wm, brain = warp(gm_t), warp(wm_t), warp(brain_t)
    mask = ndimage.binary_fill_holes(brain > 0.5)
    gm, wm = gm * mask, wm * mask
    # Atrophy: tissue next to CSF is partly replaced by CSF.
    csf0 = np.clip(mask - gm - wm, 0.0, 1.0)
    near_csf = ndimage.gaussian_filter(csf0, 2.0 / voxel_mm + 0.5)
    near_csf /= max(float(near_csf.max()), 1e-6)
    atrophy = rng.uniform(0.0, 0.6)
    gm = gm * (1.0 - atrophy * near_csf)
    wm = wm * (1.0 - 0.5 * atrophy * near_csf)
    csf = np.clip(mask - gm - wm, 0.0, 1.0)
    texture_sigma = 6.0 / voxel_mm

    def constant(low: float, high: float) -> float:
        drawn = float(rng.uniform(low, high))
        return (low + high) / 2.0 if typical else drawn

    t1_factor = {t: constant(0.88, 1.12) * (1.0 + 0.03 * _smooth_field(rng, shape, texture_sigma))
                 for t in TISSUES}
    pd_factor = {t: constant(0.92, 1.08) for t in TISSUES}
    return Anatomy(gm=gm.astype(np.float32), wm=wm.astype(np.float32),
                   csf=csf.astype(np.float32), mask=mask, t1_factor=t1_factor,
                   pd_factor=pd_factor)


# ----------------------------------------------------------------------------
# Sites


def tissue_signal(protocol: SiteProtocol, t1: np.ndarray, t2: float, pd: float) -> np.ndarray:
    """Noise-free signal equation of the protocol's sequence."""
    e1 = np.exp(-protocol.tr / t1)
    e2 = np.exp(-protocol.te / t2)
    if protocol.sequence == "ir":
        return pd * np.abs(1.0 - 2.0 * np.exp(-protocol.ti / t1) + e1) * e2
    if protocol.sequence == "spgr":
        a = np.deg2rad(protocol.flip)
        return pd * np.sin(a) * (1.0 - e1) / (1.0 - np.cos(a) * e1) * e2
    if protocol.sequence == "se":
        return pd * (1.0 - e1) * e2
    raise ValueError(f"unknown sequence {protocol.sequence!r}")


def render(anatomy: Anatomy, protocol: SiteProtocol, rng: np.random.Generator,
           voxel_mm: float) -> np.ndarray:
    """The subject as the site's scanner images it, skull-stripped (float32)."""
    maps = {"csf": anatomy.csf, "gm": anatomy.gm, "wm": anatomy.wm}
    signal = np.zeros_like(anatomy.gm)
    for tissue, (t1, t2, pd) in TISSUES.items():
        values = tissue_signal(protocol, t1 * anatomy.t1_factor[tissue], t2,
                               pd * anatomy.pd_factor[tissue])
        signal += maps[tissue] * values
    if protocol.blur_mm > 0:
        signal = ndimage.gaussian_filter(signal, protocol.blur_mm / 2.355 / voxel_mm)
    if protocol.bias > 0:
        signal *= np.exp(protocol.bias * _smooth_field(rng, signal.shape, 40.0 / voxel_mm))
    wm_level = float(np.mean(signal[anatomy.wm > 0.9])) if np.any(anatomy.wm > 0.9) else 1.0
    sigma = protocol.noise * wm_level
    noisy = np.hypot(signal + sigma * rng.standard_normal(signal.shape),
                     sigma * rng.standard_normal(signal.shape))
    return (noisy * anatomy.mask * protocol.gain).astype(np.float32)


def unit_scale(image: np.ndarray, mask: np.ndarray, percentile: float = 99.5) -> np.ndarray:
    """Image divided by its in-mask percentile and clipped to [0, 1]."""
    high = float(np.percentile(image[mask], percentile))
    return np.clip(image / max(high, 1e-12), 0.0, 1.0) * mask


# ----------------------------------------------------------------------------
# The data set on disk


def _split_of(index: int, cfg: PhantomConfig) -> str:
    """train, val, test, the extra training subjects, the extra validation ones."""
    n_imaged = cfg.n_train + cfg.n_val + cfg.n_test
    if index < cfg.n_train:
        return "train"
    if index < cfg.n_train + cfg.n_val:
        return "val"
    if index < n_imaged:
        return "test"
    return "train" if index < n_imaged + cfg.extra_train else "val"


def _imaged_everywhere(index: int, cfg: PhantomConfig) -> bool:
    """All but the extra training subjects are imaged at every site."""
    n_imaged = cfg.n_train + cfg.n_val + cfg.n_test
    return not n_imaged <= index < n_imaged + cfg.extra_train


def _save(path: Path, data: np.ndarray, affine: np.ndarray, dtype: type) -> None:
    image = nib.Nifti1Image(data, affine)
    image.set_data_dtype(dtype)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))


def render_subject(cfg: PhantomConfig, index: int, typical: bool = False,
                   sites: tuple[str, ...] = tuple(SITES)) -> tuple[Anatomy, dict[str, np.ndarray]]:
    """Subject `index` of the data set and its image at every site and shift
    (`typical`: with the population's tissue constants, see `make_anatomy`).
    `sites` limits the rendering (the target first, as always: its image does
    not depend on which other sites are rendered after it)."""
    rng = np.random.default_rng([cfg.seed, index])
    anatomy = make_anatomy(rng, cfg.voxel_mm, typical)
    rendered = {site: render(anatomy, protocol, rng, cfg.voxel_mm)
                for site, protocol in SITES.items() if site in sites}
    if sites != tuple(SITES):
        return anatomy, rendered
    target_unit = unit_scale(rendered[TARGET_SITE], anatomy.mask)
    for shift in SHIFT_SITES:
        rendered[shift] = apply_shift(target_unit, shift)
    return anatomy, rendered


def generate(out: str | Path, cfg: PhantomConfig, preset: str = "custom",
             progress: bool = True) -> dict:
    """Writes the data set as NIfTI files plus `manifest.json`; returns the manifest.

    Layout: `OUT/sub-XXX/sub-XXX_site-NAME_T1w.nii.gz`, `..._mask.nii.gz`,
    `..._wm.nii.gz`. Source sites are stored as int16 with a scaling slope, as
    scanners write them; the target and the shifts as float32.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _, affine = grid(cfg.voxel_mm)
    count = cfg.n_train + cfg.n_val + cfg.n_test + cfg.extra_train + cfg.extra_val
    images, subjects = [], []
    for index in tqdm(range(count), desc="phantom subjects", disable=not progress):
        anatomy, rendered = render_subject(
            cfg, index, sites=tuple(SITES) if _imaged_everywhere(index, cfg) else (TARGET_SITE,))
        sid, split = f"sub-{index:03d}", _split_of(index, cfg)
        folder = out / sid
        folder.mkdir(exist_ok=True)
        mask_rel, wm_rel = f"{sid}/{sid}_mask.nii.gz", f"{sid}/{sid}_wm.nii.gz"
        _save(out / mask_rel, anatomy.mask.astype(np.uint8), affine, np.uint8)
        _save(out / wm_rel, (anatomy.wm > 0.5).astype(np.uint8), affine, np.uint8)
        truth_rel = f"{sid}/{sid}_site-{TARGET_SITE}_T1w.nii.gz"
        for site, image in rendered.items():
            rel = f"{sid}/{sid}_site-{site}_T1w.nii.gz"
            dtype = np.int16 if site in SITES and site != TARGET_SITE else np.float32
            _save(out / rel, image, affine, dtype)
            images.append({"subject": sid, "site": site, "split": split, "path": rel,
                           "truth": truth_rel, "mask": mask_rel, "wm": wm_rel})
        subjects.append({"subject": sid, "split": split, "mask": mask_rel, "wm": wm_rel})
    manifest = {
        "preset": preset,
        "config": asdict(cfg),
        "target_site": TARGET_SITE,
        "sites": {**{name: {"kind": "target" if name == TARGET_SITE else "scanner",
                            "description": p.description} for name, p in SITES.items()},
                  **{name: {"kind": "shift", "description": f"paper shift {name} of the "
                            "target image"} for name in SHIFT_SITES}},
        "subjects": subjects,
        "images": images,
    }
    write_json_atomic(out / MANIFEST, manifest)  # last: it marks the data set complete
    return manifest


def ensure_phantom(folder: str | Path, cfg: PhantomConfig, preset: str = "custom",
                   progress: bool = True) -> dict:
    """Loads the data set in `folder`, generating it first if absent.

    A data set with more extra validation subjects than `cfg` asks for is
    accepted as it is: its other subjects are the same.

    Raises:
      ValueError: the folder holds a data set made with other settings.
    """
    folder = Path(folder)
    if (folder / MANIFEST).is_file():
        manifest = load_manifest(folder)
        saved = PhantomConfig(**manifest["config"])  # fields added later: defaults
        if replace(saved, extra_val=0) != replace(cfg, extra_val=0):
            raise ValueError(f"{folder}: holds the built-in data set of preset "
                             f"{manifest['preset']!r} with other settings; use another folder")
        if saved.extra_val < cfg.extra_val:
            raise ValueError(f"{folder}: holds {saved.n_val + saved.extra_val} validation "
                             f"subjects, not {cfg.n_val + cfg.extra_val}; use another folder")
        return manifest
    generate(folder, cfg, preset, progress=progress)
    return load_manifest(folder)


# ----------------------------------------------------------------------------
# Figure


def save_grid_png(manifest: dict, path: str | Path, subjects: int = 3) -> Path:
    """A PNG grid: one row per site, one column per subject (mid-axial slice)."""
    sites = list(manifest["sites"])
    sids = [s["subject"] for s in manifest["subjects"]][:subjects]
    fig, axes = new_figure(len(sites), len(sids), (2.0 * len(sids), 2.0 * len(sites)))
    for row, site in enumerate(sites):
        for col, sid in enumerate(sids):
            entry = next(e for e in manifest["images"]
                         if e["site"] == site and e["subject"] == sid)
            volume = nib.load(entry["path"]).get_fdata(dtype=np.float32)
            mask = nib.load(entry["mask"]).get_fdata(dtype=np.float32) > 0
            z = int(np.argmax(mask.sum(axis=(0, 1))))
            image = unit_scale(volume, mask)[:, :, z]
            ax = axes[row, col]
            ax.imshow(np.rot90(image), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if col == 0:
                ax.set_ylabel(site, fontsize=9)
            if row == 0:
                ax.set_title(sid, fontsize=9)
    return save_figure(fig, path)
