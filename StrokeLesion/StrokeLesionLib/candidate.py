"""The semi-automatic starting mask of the stroke consensus (method.md section 3).

candidate = ADC < 620 x 10^-6 mm2/s  AND  DWI hyperintense relative to the brain
            AND inside the brain, 26-connected islands smaller than a minimum volume removed.

DWI hyperintensity (default): DWI > median + k * MAD_n of the DWI inside the brain mask,
k = 3 (a robust z-score above 3; MAD_n = 1.4826 * median absolute deviation, so it equals
the standard deviation for normal data). Alternative: DWI above a percentile of the brain.

T2 shine-through: DWI hyperintense but ADC *not* low (ADC >= the candidate threshold, or a
stated higher floor) is a separate mask and count; it is never part of the lesion.

The candidate is a start for the reader, who refines the border on DWI (the consensus'
workflow); on its own it is not a segmentation. Only about half of an expert lesion
usually has ADC below 620 x 10^-6 mm2/s (ISLES'22 case 0009: lesion median ADC 0.59 x
10^-3), which bounds its Dice against an expert mask.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import SimpleITK as sitk

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.agreement.segmentation_metrics import connected_components

from .diffusion import DiffusionCase, check_threshold_mm2s

CONSENSUS_ADC_THRESHOLD_MM2S = 620e-6
MAD_TO_SD = 1.4826


@dataclass
class CandidateParams:
    adc_threshold_mm2s: float = CONSENSUS_ADC_THRESHOLD_MM2S
    dwi_rule: str = "mad"            # "mad": median + k * MAD_n; "percentile": above a brain percentile
    dwi_k: float = 3.0
    dwi_percentile: float = 99.0
    min_size_ml: float = 0.01        # islands below this volume are removed (0.01 mL = 10 mm3)
    shine_through_adc_mm2s: float | None = None   # None: ADC >= adc_threshold counts as "not low"
    connectivity: int = 26

    def check(self) -> "CandidateParams":
        check_threshold_mm2s(self.adc_threshold_mm2s)
        if self.shine_through_adc_mm2s is not None:
            check_threshold_mm2s(self.shine_through_adc_mm2s)
            if self.shine_through_adc_mm2s < self.adc_threshold_mm2s:
                raise UserError("the T2 shine-through ADC floor must not be below the candidate ADC threshold")
        if self.dwi_rule not in ("mad", "percentile"):
            raise UserError(f"unknown DWI hyperintensity rule {self.dwi_rule!r}; use 'mad' or 'percentile'")
        if not (0 <= self.dwi_k <= 20):
            raise UserError(f"DWI k {self.dwi_k} is out of range (0-20 robust SDs)")
        if not (50 <= self.dwi_percentile < 100):
            raise UserError(f"DWI percentile {self.dwi_percentile} is out of range (50-99.99)")
        if not (self.min_size_ml >= 0):
            raise UserError(f"minimum lesion size {self.min_size_ml} mL must be >= 0")
        if self.connectivity not in (6, 26):
            raise UserError("connectivity must be 6 or 26")
        return self


def voxel_volume_ml(img: sitk.Image) -> float:
    return float(np.prod(img.GetSpacing())) / 1000.0


def remove_small_islands(mask: sitk.Image, min_voxels: float, connectivity: int = 26) -> tuple[np.ndarray, int, int]:
    """Drop connected components (ClinicalMRICommonLib.agreement's lesion definition: 26- or 6-connected)
    with fewer than ``min_voxels`` voxels. Returns (mask array z,y,x, n_kept, n_removed)."""
    lab, n = connected_components(mask, connectivity)
    if n == 0:
        return lab > 0, 0, 0
    sizes = np.bincount(lab.ravel())
    keep = sizes >= min_voxels - 1e-9
    keep[0] = False
    return keep[lab], int(keep.sum()), int(n - keep.sum())


@dataclass
class CandidateResult:
    mask: sitk.Image              # UInt8 candidate lesion mask on the DWI grid
    shine_through: sitk.Image     # UInt8 T2 shine-through mask (not lesion)
    params: CandidateParams
    dwi_threshold: float          # DWI value above which a voxel counts as hyperintense
    brain_median_dwi: float
    brain_mad_dwi: float
    stats: dict = field(default_factory=dict)

    def summary(self, diffusion: DiffusionCase | None = None) -> dict:
        out = {
            "volume_ml": self.stats["volume_ml"],
            "n_voxels": self.stats["n_voxels"],
            "n_lesions": self.stats["n_lesions"],
            "islands_removed": self.stats["islands_removed"],
            "shine_through_volume_ml": self.stats["shine_through_volume_ml"],
            "shine_through_n_regions": self.stats["shine_through_n_regions"],
            "dwi_threshold": self.dwi_threshold,
            "dwi_rule": (f"DWI > brain median + {self.params.dwi_k:g} x MAD_n" if self.params.dwi_rule == "mad"
                         else f"DWI > brain {self.params.dwi_percentile:g}th percentile"),
            "params": asdict(self.params),
        }
        if diffusion is not None:
            out["adc_units"] = diffusion.units.units
            out["adc_units_detected"] = diffusion.units.detected
            out["brain_median_adc_raw"] = diffusion.units.brain_median_raw
            out["brain_median_adc_mm2s"] = diffusion.units.brain_median_mm2s
            out["brain_volume_ml"] = float(sitk.GetArrayViewFromImage(diffusion.brain).sum()
                                           * voxel_volume_ml(diffusion.brain))
        return out


def dwi_hyperintense_threshold(dwi: np.ndarray, brain: np.ndarray, params: CandidateParams) -> tuple[float, float, float]:
    """(threshold, brain median, brain MAD_n) of the DWI for the configured rule."""
    vals = dwi[brain]
    if vals.size == 0:
        raise UserError("the brain mask is empty; cannot judge DWI hyperintensity")
    med = float(np.median(vals))
    mad = float(MAD_TO_SD * np.median(np.abs(vals - med)))
    if params.dwi_rule == "mad":
        thr = med + params.dwi_k * mad
    else:
        thr = float(np.percentile(vals, params.dwi_percentile))
    return thr, med, mad


def candidate_mask(case: DiffusionCase, params: CandidateParams | None = None) -> CandidateResult:
    """Compute the candidate lesion mask and the T2 shine-through mask (both on the DWI grid)."""
    params = (params or CandidateParams()).check()
    dwi = sitk.GetArrayFromImage(case.dwi)
    adc = sitk.GetArrayFromImage(case.adc_mm2s)
    brain = sitk.GetArrayFromImage(case.brain) > 0
    thr, med, mad = dwi_hyperintense_threshold(dwi, brain, params)
    vv = voxel_volume_ml(case.dwi)
    min_vox = params.min_size_ml / vv if vv > 0 else 0.0

    def img(a: np.ndarray) -> sitk.Image:
        out = sitk.GetImageFromArray(a.astype(np.uint8))
        out.CopyInformation(case.dwi)
        return out

    dwi_high = (dwi > thr) & brain
    adc_low = adc < params.adc_threshold_mm2s
    lesion, n_les, n_removed = remove_small_islands(img(dwi_high & adc_low), min_vox, params.connectivity)
    st_floor = params.shine_through_adc_mm2s or params.adc_threshold_mm2s
    shine, n_st, _ = remove_small_islands(img(dwi_high & (adc >= st_floor)), min_vox, params.connectivity)

    stats = {
        "n_voxels": int(lesion.sum()),
        "volume_ml": float(lesion.sum() * vv),
        "n_lesions": n_les,
        "islands_removed": n_removed,
        "shine_through_volume_ml": float(shine.sum() * vv),
        "shine_through_n_regions": n_st,
    }
    return CandidateResult(img(lesion), img(shine), params, float(thr), med, mad, stats)


def lesion_table(mask: sitk.Image, case: DiffusionCase, flair: sitk.Image | None = None,
                 connectivity: int = 26) -> list[dict]:
    """One row per lesion (connected component) of ``mask`` on the DWI grid, with the
    numbers a reader checks (method.md section 3: acute = DWI high, ADC low; FLAIR high
    suggests an older lesion): volume, median ADC (10^-6 mm2/s), lesion-to-brain median
    ratios of DWI and (with ``flair`` already on the DWI grid, see
    diffusion.resample_to_grid) FLAIR, and the centroid (LPS mm).
    """
    from ClinicalMRICommonLib.grids import same_grid
    if not same_grid(mask, case.dwi):
        raise UserError("the lesion mask is not on the DWI grid")
    if flair is not None and not same_grid(flair, case.dwi):
        raise UserError("FLAIR must be resampled onto the DWI grid first")
    lab, n = connected_components(mask, connectivity)
    brain = sitk.GetArrayViewFromImage(case.brain) > 0
    dwi = sitk.GetArrayViewFromImage(case.dwi)
    adc = sitk.GetArrayViewFromImage(case.adc_mm2s)
    fl = sitk.GetArrayViewFromImage(flair) if flair is not None else None
    dwi_brain = float(np.median(dwi[brain])) if brain.any() else float("nan")
    fl_brain = float(np.median(fl[brain])) if fl is not None and brain.any() else float("nan")
    vv = voxel_volume_ml(case.dwi)
    rows = []
    for i in range(1, n + 1):
        region = lab == i
        z, y, x = (float(c) for c in np.argwhere(region).mean(axis=0))
        rows.append({
            "lesion": i,
            "n_voxels": int(region.sum()),
            "volume_ml": float(region.sum() * vv),
            "adc_median_1e-6mm2/s": float(np.median(adc[region]) * 1e6),
            "dwi_to_brain": float(np.median(dwi[region]) / dwi_brain) if dwi_brain else float("nan"),
            "flair_to_brain": (float(np.median(fl[region]) / fl_brain) if fl is not None and fl_brain
                               else None),
            "centroid_lps": [float(v) for v in case.dwi.TransformContinuousIndexToPhysicalPoint((x, y, z))],
        })
    return rows
