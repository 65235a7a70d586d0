"""Statistics of the target site's training slices, saved beside checkpoints.

The classical baselines and the harmonizer's initialisation need the target
domain's intensity distribution (HM), its standard scale (Nyul), its amplitude
spectra (SSIMH) and its mean slice (a template). All come from the same training
slices.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields

import numpy as np

from bh_jax.baselines.nyul import PERCENTILES, NyulScale, site_landmarks
from bh_jax.io import atomic_path
from bh_jax.preprocess import noise_contrast_ratio

N_QUANTILES = 1001
N_AREA_BINS = 8


def brain_fraction(masks: np.ndarray) -> np.ndarray:
    """Fraction of each [..., H, W] slice covered by its mask."""
    return np.asarray(masks, np.float32).mean(axis=(-2, -1))


@dataclass(frozen=True)
class TargetReference:
    """Target-domain statistics of normalised [0, 1] slices.

    Attributes:
      quantiles: float32 [N_QUANTILES], in-mask intensity quantiles 0..1.
      areas: float32 [K], mean brain fraction of the slices in each area bin.
      amplitudes: float32 [K, H, W], mean |FFT2| (unshifted) per area bin:
        a slice's spectrum is compared with target slices of similar size.
      mean_slice: float32 [H, W], mean slice (zero background included).
      voxel_mm: float32 [3], the training volumes' median voxel size (canonical
        R, A, S axes); NaN where unknown (references saved before it existed).
      nyul: float32 [L], Nyul's standard scale at `baselines.nyul.PERCENTILES`
        (fitted per training volume); NaN where unknown (references saved before
        it existed, or made from slices without their volumes).
      nyul_mean: float32 [L], the training volumes' mean landmarks at the same
        percentiles, each volume's as measured, as a site's are averaged
        (`baselines.nyul.site_landmarks`; Nyul's scale first stretches each volume's
        landmarks onto common end points); NaN where unknown, as `nyul`.
      noise_ratio: the training volumes' mean noise-to-contrast ratio
        (`preprocess.noise_contrast_ratio`); NaN where unknown, as `nyul`.
    """

    quantiles: np.ndarray
    areas: np.ndarray
    amplitudes: np.ndarray
    mean_slice: np.ndarray
    voxel_mm: np.ndarray = field(default_factory=lambda: np.full(3, np.nan, np.float32))
    nyul: np.ndarray = field(default_factory=lambda: np.full(len(PERCENTILES), np.nan,
                                                             np.float32))
    noise_ratio: np.ndarray = field(default_factory=lambda: np.float32(np.nan))
    nyul_mean: np.ndarray = field(default_factory=lambda: np.full(len(PERCENTILES), np.nan,
                                                                  np.float32))

    @classmethod
    def from_slices(cls, slices: np.ndarray, masks: np.ndarray,
                    voxel_mm: np.ndarray | None = None,
                    volumes: np.ndarray | None = None) -> "TargetReference":
        """Builds the reference from [N, H, W] slices in [0, 1] and their masks
        (and the voxel size they were cut at, and the volume [N] each slice
        came from, if known: Nyul's scale is fitted per volume)."""
        slices = np.asarray(slices, np.float32)
        masks = np.asarray(masks, bool)
        values = slices[masks]
        if values.size == 0:
            raise ValueError("cannot build a target reference: no in-mask voxels")
        brains = ([] if volumes is None else
                  [slices[volumes == v][masks[volumes == v]] for v in np.unique(volumes)])
        area = brain_fraction(masks)
        edges = np.quantile(area, np.linspace(0, 1, N_AREA_BINS + 1)[1:-1])
        bins = np.searchsorted(edges, area)
        amplitude = np.abs(np.fft.fft2(slices))
        used = np.unique(bins)
        return cls(
            quantiles=np.quantile(values, np.linspace(0.0, 1.0, N_QUANTILES)).astype(np.float32),
            areas=np.array([area[bins == b].mean() for b in used], np.float32),
            amplitudes=np.stack([amplitude[bins == b].mean(axis=0) for b in used]).astype(np.float32),
            mean_slice=slices.mean(axis=0),
            voxel_mm=np.asarray(voxel_mm if voxel_mm is not None else np.full(3, np.nan),
                                np.float32),
            nyul=(np.full(len(PERCENTILES), np.nan, np.float32) if volumes is None else
                  NyulScale.fit(brains).intensities),
            noise_ratio=np.float32(np.nan if volumes is None else np.nanmean(
                [noise_contrast_ratio(slices[volumes == v], masks[volumes == v])
                 for v in np.unique(volumes)])),
            nyul_mean=(np.full(len(PERCENTILES), np.nan, np.float32) if volumes is None else
                       site_landmarks(brains).astype(np.float32)),
        )

    def nyul_scale(self) -> NyulScale:
        """Nyul's standard scale; ValueError if this reference has none."""
        if not np.all(np.isfinite(self.nyul)):
            raise ValueError("this prior's target statistics have no Nyul scale (made by an "
                             "older bh_jax): give --nyul-from TARGET_SCANS, or train again")
        return NyulScale(self.nyul, np.asarray(PERCENTILES, np.float32))

    def mean_landmark_scale(self) -> NyulScale:
        """The training volumes' mean landmarks as a scale to map onto (`nyul_mean`);
        ValueError if this reference has none."""
        if not np.all(np.isfinite(self.nyul_mean)):
            raise ValueError("this prior's target statistics have no mean landmarks (made "
                             "by an older bh_jax)")
        return NyulScale(self.nyul_mean, np.asarray(PERCENTILES, np.float32))

    def amplitude_for(self, masks: np.ndarray) -> np.ndarray:
        """[..., H, W] reference amplitude for slices with these masks."""
        nearest = np.abs(brain_fraction(masks)[..., None] - self.areas).argmin(axis=-1)
        return self.amplitudes[nearest]

    def save(self, path: str | os.PathLike) -> None:
        """Writes an .npz atomically (`bh_jax.io.atomic_path`)."""
        with atomic_path(path) as tmp:
            np.savez(tmp, **{f.name: getattr(self, f.name) for f in fields(self)})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TargetReference":
        with np.load(path) as archive:  # fields added later may be absent: defaults
            return cls(**{f.name: archive[f.name] for f in fields(cls) if f.name in archive})
