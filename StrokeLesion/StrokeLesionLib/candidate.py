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

Optional second step, :func:`refine_on_dwi` (the consensus: "ADC < 620 x 10^-6 mm2/s as the
initial lesion, then determine the border on DWI"): the candidate's lesions are the seeds;
voxels that are DWI-hyperintense by the same rule as step 1 and whose ADC is below a relaxed
limit, REFINE_ADC_LIMIT_MM2S = 800 x 10^-6 mm2/s (the ADC of normal adult white matter,
about 0.7-0.8 x 10^-3 mm2/s, e.g. Helenius et al., AJNR 2002;23:194-199: below it diffusion
is restricted compared with normal tissue, so such a DWI-bright voxel is not T2
shine-through) join them:

* ``mode="border"`` (default): only the one-voxel layer around the seeds (26-neighbourhood),
  the voxels a lesion border shares with normal tissue (partial volume raises their ADC
  above 620 x 10^-6 although they are partly lesion);
* ``mode="connected"``: every such voxel 26-connected to a seed (unbounded growth).

The plain candidate is never changed; docs/stroke_lesion.md gives both steps' Dice, lesion
F1 and volume difference on the shared ISLES'22 case (no constant was fitted to it).
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
#: relaxed ADC limit of the DWI refinement (normal adult white matter; module docstring)
REFINE_ADC_LIMIT_MM2S = 800e-6
REFINE_MODES = ("border", "connected")


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
    elif params.dwi_rule == "percentile":
        thr = float(np.percentile(vals, params.dwi_percentile))
    else:  # a library caller that skipped CandidateParams.check(): never fall back silently
        raise UserError(f"unknown DWI hyperintensity rule {params.dwi_rule!r}; use 'mad' or 'percentile'")
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


@dataclass
class RefineResult:
    mask: sitk.Image              # UInt8 refined lesion mask on the DWI grid (seeds included)
    mode: str
    adc_limit_mm2s: float
    seed_adc_threshold_mm2s: float
    dwi_threshold: float
    stats: dict = field(default_factory=dict)

    def summary(self) -> dict:
        return {"mode": self.mode, "seed_adc_threshold_mm2s": self.seed_adc_threshold_mm2s,
                "adc_limit_mm2s": self.adc_limit_mm2s, "dwi_threshold": self.dwi_threshold, **self.stats}


def refine_on_dwi(case: DiffusionCase, seeds: CandidateResult, *, mode: str = "border",
                  adc_limit_mm2s: float = REFINE_ADC_LIMIT_MM2S) -> RefineResult:
    """The second step: grow the candidate's lesions (``seeds``) into DWI-hyperintense voxels
    (``seeds.dwi_threshold``, step 1's rule) with ADC below ``adc_limit_mm2s``; ``mode``
    "border" adds only the one-voxel layer around the seeds, "connected" every such voxel
    connected to a seed (see the module docstring). ``seeds`` itself is not changed."""
    from scipy import ndimage as ndi

    if mode not in REFINE_MODES:
        raise UserError(f"unknown refinement mode {mode!r}; use {' or '.join(REFINE_MODES)}")
    check_threshold_mm2s(adc_limit_mm2s)
    if adc_limit_mm2s < seeds.params.adc_threshold_mm2s:
        raise UserError(f"the refinement's ADC limit {adc_limit_mm2s:g} mm2/s is below the candidate's threshold "
                        f"{seeds.params.adc_threshold_mm2s:g}: it must relax it")
    seed = sitk.GetArrayFromImage(seeds.mask) > 0
    dwi = sitk.GetArrayViewFromImage(case.dwi)
    adc = sitk.GetArrayViewFromImage(case.adc_mm2s)
    brain = sitk.GetArrayViewFromImage(case.brain) > 0
    allowed = (dwi > seeds.dwi_threshold) & brain & (adc < adc_limit_mm2s)
    structure = np.ones((3, 3, 3), bool) if seeds.params.connectivity == 26 else ndi.generate_binary_structure(3, 1)
    if mode == "border":
        out = seed | (ndi.binary_dilation(seed, structure=structure) & allowed)
    else:
        lab, _ = ndi.label(allowed | seed, structure=structure)
        hit = np.unique(lab[seed])
        out = np.isin(lab, hit[hit > 0])
    img = sitk.GetImageFromArray(out.astype(np.uint8))
    img.CopyInformation(case.dwi)
    vv = voxel_volume_ml(case.dwi)
    _, n = connected_components(img, seeds.params.connectivity)
    stats = {"n_voxels": int(out.sum()), "volume_ml": float(out.sum() * vv), "n_lesions": int(n),
             "added_voxels": int((out & ~seed).sum()), "added_ml": float((out & ~seed).sum() * vv)}
    return RefineResult(img, mode, float(adc_limit_mm2s), float(seeds.params.adc_threshold_mm2s),
                        float(seeds.dwi_threshold), stats)
