"""Diffusion handling for acute-stroke annotation: ADC units, eADC, brain mask, grids.

ADC maps are stored in different units by different scanners and converters: plain
mm2/s (0.0009 in normal brain), 10^-3 mm2/s (0.9; the ISLES'22 data, some Philips
exports) and 10^-6 mm2/s (900; Siemens/GE DICOM). A fixed threshold such as the
consensus' ADC < 620 x 10^-6 mm2/s is only meaningful once the units are known, so the
units are detected from the median ADC inside the brain and every ADC is converted to
the canonical unit of this library, **mm2/s** (float64), before any threshold is applied.

Detection rule: the median ADC of brain tissue plus CSF lies between 0.3 and 3.0 x 10^-3
mm2/s in adults and neonates (normal grey/white matter 0.7-0.9, CSF about 3). The three
units put that window at [0.0003, 0.003], [0.3, 3] and [300, 3000]; the windows are a
factor 100 apart, so a brain median fits at most one of them. A median that fits none
(0.05, 30, 50000) is refused with a UserError asking the user to state the units.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.images import check_finite, read_image
from ClinicalMRICommonLib.grids import grid_difference, same_grid

#: Scale factor from each supported unit to mm2/s (the canonical unit).
ADC_UNITS: dict[str, float] = {"mm2/s": 1.0, "1e-3mm2/s": 1e-3, "1e-6mm2/s": 1e-6}
CANONICAL_ADC_UNIT = "mm2/s"
#: Plausible median ADC of the brain (tissue + CSF), in mm2/s.
BRAIN_MEDIAN_ADC_RANGE_MM2S = (0.3e-3, 3.0e-3)

_UNIT_ALIASES = {
    "mm2/s": "mm2/s", "mm^2/s": "mm2/s", "mm²/s": "mm2/s", "1": "mm2/s", "1mm2/s": "mm2/s",
    "1e-3mm2/s": "1e-3mm2/s", "1e-3": "1e-3mm2/s", "10^-3mm2/s": "1e-3mm2/s", "10-3mm2/s": "1e-3mm2/s",
    "um2/ms": "1e-3mm2/s", "µm2/ms": "1e-3mm2/s", "x10^-3mm2/s": "1e-3mm2/s",
    "1e-6mm2/s": "1e-6mm2/s", "1e-6": "1e-6mm2/s", "10^-6mm2/s": "1e-6mm2/s", "10-6mm2/s": "1e-6mm2/s",
    "um2/s": "1e-6mm2/s", "µm2/s": "1e-6mm2/s", "x10^-6mm2/s": "1e-6mm2/s",
}


def parse_adc_units(text: str) -> str:
    """Normalise a unit string ('auto', 'mm2/s', '1e-3mm2/s', '10^-6 mm^2/s', 'um2/s', ...)."""
    key = str(text).strip().lower().replace(" ", "").replace("mm^2", "mm2").replace("×", "x")
    if key == "auto":
        return "auto"
    if key in _UNIT_ALIASES:
        return _UNIT_ALIASES[key]
    raise UserError(f"unknown ADC units {text!r}; use one of auto, " + ", ".join(ADC_UNITS))


@dataclass
class AdcUnits:
    """The units of an ADC map and how they were found."""

    units: str                 # one of ADC_UNITS
    factor_to_mm2s: float      # multiply stored values by this to get mm2/s
    brain_median_raw: float    # median stored value inside the brain mask
    brain_median_mm2s: float   # the same in mm2/s
    detected: bool             # True when found from the data, False when stated by the user
    n_brain_voxels: int

    def to_dict(self) -> dict:
        return asdict(self)


def _brain_median(adc: sitk.Image, brain: sitk.Image, path: str | os.PathLike | None) -> tuple[float, int]:
    a = sitk.GetArrayViewFromImage(adc)
    m = sitk.GetArrayViewFromImage(brain) > 0
    vals = a[m]
    vals = vals[np.isfinite(vals)]
    if vals.size == 0:
        where = f" of {path}" if path else ""
        raise UserError(f"the brain mask{where} contains no voxel; cannot measure the brain's median ADC "
                        "(check that the DWI shows a brain, or give a brain mask)")
    return float(np.median(vals)), int(vals.size)


def units_from_median(median: float) -> str | None:
    """The unit whose plausible brain-median window contains ``median``, or None.

    The window edges are inclusive and compared in each unit's own scale (300 and 3000 in
    1e-6 mm2/s fit although 3000 * 1e-6 is a hair above 3e-3 in floating point)."""
    lo, hi = BRAIN_MEDIAN_ADC_RANGE_MM2S
    rel = 1e-9
    fits = [u for u, f in ADC_UNITS.items() if lo / f * (1 - rel) <= median <= hi / f * (1 + rel)]
    return fits[0] if len(fits) == 1 else None


def detect_adc_units(adc: sitk.Image, brain: sitk.Image, units: str = "auto",
                     path: str | os.PathLike | None = None) -> AdcUnits:
    """Find (or check the user's) ADC units from the median ADC inside ``brain``.

    With ``units='auto'`` the brain median must fit exactly one unit's plausible window,
    otherwise a UserError says what was found and asks for ``--adc-units``. A stated unit
    is trusted (the user may know better, e.g. for a phantom) and only reported.
    """
    units = parse_adc_units(units)
    median, n = _brain_median(adc, brain, path)
    name = f"ADC file {path}" if path else "the ADC map"
    if units == "auto":
        found = units_from_median(median)
        if found is None:
            lo, hi = BRAIN_MEDIAN_ADC_RANGE_MM2S
            raise UserError(
                f"{name} has a brain median of {median:.4g}, which fits none of the known ADC units "
                f"(expected {lo:g}-{hi:g} in mm2/s, {lo * 1e3:g}-{hi * 1e3:g} in 1e-3mm2/s or "
                f"{lo * 1e6:g}-{hi * 1e6:g} in 1e-6mm2/s); check that it is an ADC map, or state the units "
                "with --adc-units")
        return AdcUnits(found, ADC_UNITS[found], median, median * ADC_UNITS[found], True, n)
    return AdcUnits(units, ADC_UNITS[units], median, median * ADC_UNITS[units], False, n)


def adc_to_mm2s(adc: sitk.Image, units: str | AdcUnits) -> sitk.Image:
    """Return the ADC map as float64 in mm2/s (geometry kept)."""
    factor = units.factor_to_mm2s if isinstance(units, AdcUnits) else ADC_UNITS[parse_adc_units(units)]
    out = sitk.Cast(adc, sitk.sitkFloat64) * float(factor)
    out.CopyInformation(adc)
    return out


def check_threshold_mm2s(threshold: float) -> float:
    """Refuse an ADC threshold that cannot be in mm2/s (e.g. 620 typed for 620e-6)."""
    t = float(threshold)
    if not math.isfinite(t) or t <= 0 or t > 0.01:
        raise UserError(f"ADC threshold {threshold!r} is not a plausible value in mm2/s; give it in mm2/s, "
                        "e.g. 620e-6 for the consensus' 620 x 10^-6 mm2/s")
    return t


# ---------------------------------------------------------------------------------------
# b-value and eADC


def sidecar_path(image_path: str | os.PathLike) -> Path:
    """The JSON sidecar of a NIfTI file (``x.nii.gz`` -> ``x.json``)."""
    p = Path(image_path)
    name = p.name
    for ext in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd"):
        if name.endswith(ext):
            return p.with_name(name[: -len(ext)] + ".json")
    return p.with_suffix(".json")


def read_sidecar(image_path: str | os.PathLike) -> dict | None:
    """Read the image's JSON sidecar; None when absent, UserError when unreadable."""
    sc = sidecar_path(image_path)
    if not sc.exists():
        return None
    try:
        data = json.loads(sc.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"JSON sidecar {sc} could not be read ({exc.__class__.__name__}: {str(exc)[:80]}); "
                        "fix or remove it") from None
    if not isinstance(data, dict):
        raise UserError(f"JSON sidecar {sc} is not a JSON object")
    return data


def read_b_value(dwi_path: str | os.PathLike, b_value: float | None = None) -> tuple[float, str]:
    """The DWI's b-value in s/mm2 and where it came from.

    Order: the user's value; the sidecar's ``DiffusionBValue`` (Philips/ISLES style) or
    ``BValue``; the largest value of a dcm2niix ``.bval`` file beside the image.
    """
    if b_value is not None:
        b = float(b_value)
        if not math.isfinite(b) or b <= 0 or b > 10000:
            raise UserError(f"b-value {b_value!r} is not plausible; give the DWI's b-value in s/mm2 (e.g. 1000)")
        return b, "user"
    meta = read_sidecar(dwi_path)
    if meta:
        for key in ("DiffusionBValue", "BValue", "bValue"):
            if key in meta:
                try:
                    b = float(np.max(np.asarray(meta[key], dtype=float)))
                except (TypeError, ValueError):
                    raise UserError(f"sidecar {sidecar_path(dwi_path)} has a non-numeric {key} "
                                    f"{meta[key]!r}; give --b-value") from None
                if b > 0:
                    return b, f"sidecar {sidecar_path(dwi_path).name}:{key}"
    bval = sidecar_path(dwi_path).with_suffix(".bval")
    if bval.exists():
        try:
            vals = [float(x) for x in bval.read_text().split()]
        except ValueError:
            raise UserError(f"b-value file {bval} is not a list of numbers; give --b-value") from None
        if vals and max(vals) > 0:
            return max(vals), f"bval file {bval.name}"
    raise UserError(f"no b-value found for DWI {dwi_path} (no DiffusionBValue in its JSON sidecar, no .bval "
                    "file); give it with --b-value (s/mm2, e.g. 1000)")


def eadc(adc_mm2s: sitk.Image, b_value: float) -> sitk.Image:
    """Exponential ADC, eADC = exp(-b * ADC) (b in s/mm2, ADC in mm2/s), float32 in [0, 1].

    Negative ADC values (noise in the background) are clipped to 0 first so eADC <= 1.
    """
    a = sitk.GetArrayFromImage(adc_mm2s).astype(np.float64)
    e = np.exp(-float(b_value) * np.clip(a, 0.0, None)).astype(np.float32)
    out = sitk.GetImageFromArray(e)
    out.CopyInformation(adc_mm2s)
    return out


# ---------------------------------------------------------------------------------------
# Brain mask

BRAIN_MASK_METHOD = ("Otsu threshold of the intensity (clipped at its 99.5th percentile), binary opening "
                     "(radius 1 voxel), largest 26-connected component, 3D hole filling, then hole filling "
                     "slice by slice along the slice axis (restores ventricles and sulcal CSF enclosed by brain)")


def brain_mask(image: sitk.Image) -> sitk.Image:
    """Brain mask from a b0-like or DWI image (UInt8, 1 inside). Method: BRAIN_MASK_METHOD.

    On skull-stripped data (ISLES'22) it returns the brain; on non-stripped DWI the
    fat-suppressed scalp is dark and the result is the brain plus little else.
    """
    a = sitk.GetArrayFromImage(image).astype(np.float64)
    finite = np.isfinite(a)
    if not finite.any() or np.nanmax(a) <= np.nanmin(a):
        raise UserError("cannot build a brain mask: the image is constant or empty")
    hi = np.percentile(a[finite], 99.5)
    clipped = np.where(finite, np.minimum(a, hi), 0.0)
    img = sitk.GetImageFromArray(clipped)
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.SetNumberOfHistogramBins(256)
    otsu.Execute(img)
    thr = otsu.GetThreshold()
    m = clipped > thr
    m = ndi.binary_opening(m, structure=ndi.generate_binary_structure(3, 1))
    lab, n = ndi.label(m, structure=np.ones((3, 3, 3)))
    if n == 0:
        raise UserError("cannot build a brain mask: no voxel above the Otsu threshold")
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    m = lab == int(np.argmax(sizes))
    m = ndi.binary_fill_holes(m)
    m = np.stack([ndi.binary_fill_holes(s) for s in m])
    out = sitk.GetImageFromArray(m.astype(np.uint8))
    out.CopyInformation(image)
    return out


# ---------------------------------------------------------------------------------------
# Grids


def _antialias_sigmas(image: sitk.Image, reference: sitk.Image) -> list[float]:
    """Gaussian sigma (mm) per axis of ``image`` so that downsampling to ``reference`` does
    not alias: the FWHM brings the source resolution to the target's (FWHM^2 = t^2 - s^2)."""
    d_src = np.array(image.GetDirection()).reshape(3, 3)
    d_ref = np.array(reference.GetDirection()).reshape(3, 3)
    t_sp = np.array(reference.GetSpacing())
    sig = []
    for i, s in enumerate(image.GetSpacing()):
        # extent of a target voxel along the source's axis i
        t = float(np.sum(np.abs(d_src[:, i] @ d_ref) * t_sp))
        fwhm2 = max(t * t - s * s, 0.0)
        sig.append(math.sqrt(fwhm2) / 2.354820045)
    return sig


def resample_to_grid(image: sitk.Image, reference: sitk.Image, *, interpolator: str = "linear",
                     antialias: bool = True, what: str = "image") -> sitk.Image:
    """Resample ``image`` onto ``reference``'s grid in physical space (same session, no
    registration: the scanner coordinates are trusted). Linear interpolation by default,
    with Gaussian anti-aliasing where the target is coarser (e.g. FLAIR 0.45 mm in-plane
    onto DWI 2 mm). Returns float32; voxels outside the source get 0.
    Raises UserError when the two images do not overlap at all.
    """
    if image.GetDimension() != 3 or reference.GetDimension() != 3:
        raise UserError(f"{what} must be a 3D image to be resampled onto the DWI grid")
    src = sitk.Cast(image, sitk.sitkFloat32)
    if same_grid(image, reference):
        return src
    if antialias:
        sig = _antialias_sigmas(image, reference)
        if max(sig) > 0:
            src = _smooth_axes(src, sig)
    interp = {"linear": sitk.sitkLinear, "nearest": sitk.sitkNearestNeighbor,
              "bspline": sitk.sitkBSpline}[interpolator]
    out = sitk.Resample(src, reference, sitk.Transform(), interp, 0.0, sitk.sitkFloat32)
    # overlap check: resample a ones image the same way
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    cover = sitk.Resample(ones, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    if not sitk.GetArrayViewFromImage(cover).any():
        raise UserError(f"{what} does not overlap the DWI volume in scanner space; it cannot be shown on the "
                        "DWI grid (different session or wrong file?)")
    return out


def _smooth_axes(img: sitk.Image, sigmas_mm: list[float]) -> sitk.Image:
    """Gaussian smoothing with a per-axis sigma in mm (zero: that axis is left alone)."""
    a = sitk.GetArrayFromImage(img)
    sp = img.GetSpacing()
    sig_vox = [sigmas_mm[i] / sp[i] for i in range(3)][::-1]  # numpy order z, y, x
    out = sitk.GetImageFromArray(ndi.gaussian_filter(a, sig_vox).astype(np.float32))
    out.CopyInformation(img)
    return out


def coverage_on_grid(image: sitk.Image, reference: sitk.Image) -> float:
    """Fraction of the reference grid's voxels that fall inside ``image``'s field of view."""
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    cover = sitk.Resample(ones, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return float(sitk.GetArrayViewFromImage(cover).mean())


# ---------------------------------------------------------------------------------------
# Loading a DWI/ADC pair


# ---------------------------------------------------------------------------------------
# Is the "ADC" an ADC map of this DWI?

#: Diffusivity of free water at body temperature (37 degC), mm2/s: CSF on an ADC map reads
#: about this (Le Bihan 1995, NMR Biomed 8:375; the ISLES'22 case reads 2.65e-3 in its CSF).
FREE_WATER_ADC_37C_MM2S = 3.0e-3
#: CSF below this on the map (half the free-water value, room for CSF voxels that partly hold
#: tissue) means the map is not an ADC in the units found.
MIN_CSF_ADC_MM2S = FREE_WATER_ADC_37C_MM2S / 2
#: CSF = the darkest CSF_PERCENTILE % of the DWI inside the brain (CSF is dark on a b=1000
#: DWI: it is ~10-20 % of the intracranial volume); tissue = the DWI's interquartile range.
CSF_PERCENTILE = 5.0
TISSUE_PERCENTILES = (25.0, 75.0)
#: CSF and tissue differ by a factor > 2 on a b=1000 DWI, an ADC and a b0 alike; a CSF/tissue
#: ratio within 10 % of 1 means no CSF is in view (a phantom) and the CSF checks are skipped
CSF_CONTRAST_MIN = 1.1
#: a b0 must explain the ADC: median ln(b0/DWI)/b within this factor of the ADC's median
B0_AGREEMENT_FACTOR = 2.0

_EADC_WORDS = re.compile(r"EADC|EXP[ _-]?ADC|EXPONENTIAL")
_ADC_WORDS = re.compile(r"(?<![A-Z])ADC|APPARENT[ _-]?DIFFUSION")
_DWI_WORDS = re.compile(r"TRACEW|(?<![A-Z])TRACE(?![A-Z])|ISODWI|(?<![A-Z])DWI(?![A-Z])|(?<![A-Z])B[ _=-]?0(?![0-9])"
                        r"|(?<![A-Z])B[ _=-]?(500|800|1000|1500|2000)(?![0-9])")
_MAGNITUDE_TOKENS = {"M", "MAGNITUDE", "M_SE", "M_FFE", "M_IR"}


def _sidecar_verdict(meta: dict | None) -> tuple[str | None, str]:
    """What the image's sidecar says it is: ("adc" | "eadc" | "dwi" | None, the fields read).

    ImageType (DICOM 0008,0008 as dcm2niix writes it), SeriesDescription and ProtocolName are
    read; Siemens marks eADC images with the ImageType value EXP, DWI traces with TRACEW,
    Philips magnitude images with M / M_SE."""
    if not meta:
        return None, ""
    itype = meta.get("ImageType")
    tokens = [str(t).upper() for t in itype] if isinstance(itype, list) else (
        [t for t in re.split(r"[\\/ ]+", str(itype).upper()) if t] if itype else [])
    texts = [("ImageType", " ".join(tokens))] + [(k, str(meta[k])) for k in ("SeriesDescription", "ProtocolName")
                                                  if meta.get(k)]
    said = "; ".join(f"{k} {v!r}" for k, v in texts if v)
    joined = " ".join(v for _, v in texts).upper()
    if _EADC_WORDS.search(joined) or "EXP" in tokens:
        return "eadc", said
    if _ADC_WORDS.search(joined):
        return "adc", said
    if _DWI_WORDS.search(joined) or set(tokens) & _MAGNITUDE_TOKENS:
        return "dwi", said
    return None, said


def check_adc_pair(dwi: sitk.Image, adc: sitk.Image, brain: sitk.Image, units: AdcUnits, *,
                   adc_path: str | os.PathLike | None = None, b0: sitk.Image | None = None,
                   b_value: float | None = None) -> dict:
    """Is ``adc`` an ADC map of ``dwi``? Returns ``{"problems": [...], "checks": [...], ...}``
    (no problem: plausible). Checks, in order:

    1. the ADC's JSON sidecar, when present: ``ImageType``/``SeriesDescription``/``ProtocolName``
       naming an ADC confirm it; naming an eADC, a trace/b-value image or a plain magnitude
       image (ImageType M/M_SE) make it a problem;
    2. CSF is bright on an ADC map and dark on the DWI: the map's median in the DWI's darkest
       CSF_PERCENTILE % of the brain must exceed its median in the DWI's interquartile range
       (a DWI, an eADC or exchanged files fail); without CSF contrast (within CSF_CONTRAST_MIN
       of 1: a phantom) checks 2 and 3 are skipped;
    3. CSF reads close to free water: at least MIN_CSF_ADC_MM2S in the units found (a b0 or
       another T2-weighted image has arbitrary intensities; its CSF rarely lands there);
    4. exchanged files: the DWI must not read like an ADC map of the "ADC" by checks 2-3;
    5. with a b0: the ADC's tissue median within B0_AGREEMENT_FACTOR of ln(b0/DWI)/b's.
    """
    checks, problems = [], []
    name = f"ADC file {adc_path}" if adc_path else "the ADC map"
    meta = read_sidecar(adc_path) if adc_path else None
    verdict, said = _sidecar_verdict(meta)
    if verdict == "adc":
        checks.append(f"sidecar names an ADC map ({said})")
    elif verdict == "eadc":
        problems.append(f"{name}: its sidecar describes an exponential ADC (eADC), not an ADC map ({said})")
    elif verdict == "dwi":
        problems.append(f"{name}: its sidecar describes a diffusion-weighted or b0 magnitude image, not an ADC map "
                        f"({said})")
    d = sitk.GetArrayViewFromImage(dwi)
    a = sitk.GetArrayViewFromImage(adc)
    m = (sitk.GetArrayViewFromImage(brain) > 0) & np.isfinite(d) & np.isfinite(a)
    out = {"sidecar": verdict, "csf_adc_mm2s": None, "csf_to_tissue": None}
    if m.sum() >= 100:
        dv = d[m]
        lo_c = np.percentile(dv, CSF_PERCENTILE)
        t_lo, t_hi = np.percentile(dv, TISSUE_PERCENTILES)
        csf = m & (d <= lo_c)
        tissue = m & (d >= t_lo) & (d <= t_hi)
        csf_med, tis_med = float(np.median(a[csf])), float(np.median(a[tissue]))
        ratio = csf_med / tis_med if tis_med > 0 else float("inf")
        csf_mm2s = csf_med * units.factor_to_mm2s
        out.update(csf_adc_mm2s=csf_mm2s, csf_to_tissue=ratio)
        if 1 / CSF_CONTRAST_MIN <= ratio <= CSF_CONTRAST_MIN:
            checks.append(f"no CSF contrast (CSF/tissue {ratio:.2f} on the ADC): a phantom or no CSF in view; the "
                          "CSF checks are skipped")
        elif ratio < 1.0:
            problems.append(f"{name} is not brighter in CSF than in tissue (CSF/tissue {ratio:.2f}; CSF = the darkest "
                            f"{CSF_PERCENTILE:g} % of the DWI in the brain): on an ADC map CSF is bright and on the DWI "
                            "dark; is it a DWI or an eADC, or are DWI and ADC exchanged?")
        else:
            checks.append(f"CSF brighter than tissue on the ADC (x{ratio:.2f}) and dark on the DWI")
            if csf_mm2s < MIN_CSF_ADC_MM2S:
                problems.append(f"{name}: CSF reads {csf_mm2s:.3g} mm2/s in the units found ({units.units}); free "
                                f"water at 37 degC diffuses at {FREE_WATER_ADC_37C_MM2S:g} mm2/s and the CSF of an ADC "
                                f"map reads above {MIN_CSF_ADC_MM2S:g}: this looks like a b0 or another T2-weighted "
                                "image, not an ADC map")
            else:
                checks.append(f"CSF reads {csf_mm2s:.3g} mm2/s (free water {FREE_WATER_ADC_37C_MM2S:g})")
        # exchanged files: the "DWI" reads like an ADC map of the "ADC" (bright, at free water, where
        # the "ADC" is darkest)
        dwi_units = units_from_median(float(np.median(dv)))
        if dwi_units is not None:
            av = a[m]
            csf2 = m & (a <= np.percentile(av, CSF_PERCENTILE))
            t2lo, t2hi = np.percentile(av, TISSUE_PERCENTILES)
            tis2 = m & (a >= t2lo) & (a <= t2hi)
            d_csf, d_tis = float(np.median(d[csf2])), float(np.median(d[tis2]))
            if d_tis > 0 and d_csf / d_tis > CSF_CONTRAST_MIN and d_csf * ADC_UNITS[dwi_units] >= MIN_CSF_ADC_MM2S:
                problems.append(f"the DWI reads like an ADC map of {name} (bright, {d_csf * ADC_UNITS[dwi_units]:.3g} "
                                f"mm2/s in {dwi_units}, where that map is darkest): DWI and ADC look exchanged")
        if b0 is not None and b_value:
            s0 = sitk.GetArrayViewFromImage(b0).astype(np.float64)
            ok = tissue & (s0 > 0) & (d > 0)
            if ok.sum() >= 100:
                implied = float(np.median(np.log(s0[ok] / d[ok]) / float(b_value)))
                measured = float(np.median(a[ok])) * units.factor_to_mm2s
                out["b0_implied_adc_mm2s"] = implied
                if not (implied > 0 and 1 / B0_AGREEMENT_FACTOR <= measured / implied <= B0_AGREEMENT_FACTOR):
                    problems.append(f"{name}: tissue ADC {measured:.3g} mm2/s disagrees with ln(b0/DWI)/b = "
                                    f"{implied:.3g} mm2/s from the b0 (more than x{B0_AGREEMENT_FACTOR:g} apart)")
                else:
                    checks.append(f"tissue ADC {measured:.3g} agrees with ln(b0/DWI)/b = {implied:.3g} mm2/s")
    out.update(problems=problems, checks=checks)
    return out


@dataclass
class DiffusionCase:
    """DWI and ADC of one case on one grid, the ADC converted to mm2/s, and the brain mask.

    ``warnings``: doubts about the DWI/ADC pair that were overridden by stated ADC units."""

    dwi: sitk.Image
    adc_mm2s: sitk.Image
    brain: sitk.Image
    units: AdcUnits
    dwi_path: str | None = None
    adc_path: str | None = None
    pair_check: dict = field(default_factory=dict)
    warnings: list = field(default_factory=list)


def read_diffusion_images(dwi_path: str | os.PathLike, adc_path: str | os.PathLike) -> tuple[sitk.Image, sitk.Image]:
    """Read DWI and ADC as stored (voxel type kept) and check them: 3D, finite, one grid."""
    dwi = read_image(dwi_path, "DWI")
    adc = read_image(adc_path, "ADC")
    for img, p, w in ((dwi, dwi_path, "DWI"), (adc, adc_path, "ADC")):
        if img.GetDimension() != 3:
            raise UserError(f"{w} file {p} is {img.GetDimension()}D; expected one 3D volume (for a 4D DWI series "
                            "pass the b=1000 volume)")
        check_finite(img, p, w)
    if not same_grid(dwi, adc):
        raise UserError(f"ADC file {adc_path} is on a different grid than DWI file {dwi_path} "
                        f"({grid_difference(adc, dwi)}); DWI and ADC of one acquisition share a grid, "
                        "check that both files belong to the same series")
    return dwi, adc


def load_diffusion(dwi_path: str | os.PathLike, adc_path: str | os.PathLike, *, adc_units: str = "auto",
                   brain: sitk.Image | None = None, check_pair: bool = True,
                   b0_path: str | os.PathLike | None = None) -> DiffusionCase:
    """Read DWI and ADC, check they share a grid, build the brain mask from the DWI (unless
    given), detect or apply the ADC units, check that the ADC is an ADC map of this DWI
    (:func:`check_adc_pair`; with a b0 also against ln(b0/DWI)/b) and convert it to mm2/s."""
    dwi, adc = read_diffusion_images(dwi_path, adc_path)
    b0 = b = None
    if b0_path is not None and check_pair:
        b0 = read_image(b0_path, "b0")
        if not same_grid(b0, dwi):
            b0 = None
        else:
            try:
                b, _ = read_b_value(dwi_path)
            except UserError:
                b0 = None
    return diffusion_from_images(dwi, adc, adc_units=adc_units, brain=brain, dwi_path=str(dwi_path),
                                 adc_path=str(adc_path), check_pair=check_pair, b0=b0, b_value=b)


def diffusion_from_images(dwi: sitk.Image, adc: sitk.Image, *, adc_units: str = "auto",
                          brain: sitk.Image | None = None, dwi_path: str | None = None,
                          adc_path: str | None = None, check_pair: bool = True, b0: sitk.Image | None = None,
                          b_value: float | None = None) -> DiffusionCase:
    """As load_diffusion, for images already in memory (the Slicer logic's entry point).

    With ``check_pair`` (default) the pair is checked by :func:`check_adc_pair`: a problem
    is a UserError when the units were detected, and a warning in ``warnings`` when the user
    stated them (the stated units force the map's use)."""
    if not same_grid(dwi, adc):
        raise UserError(f"ADC and DWI are on different grids ({grid_difference(adc, dwi)}); "
                        "they must come from the same acquisition")
    if np.array_equal(sitk.GetArrayViewFromImage(dwi), sitk.GetArrayViewFromImage(adc)):
        same = f" ({adc_path})" if adc_path and dwi_path and str(adc_path) == str(dwi_path) else ""
        raise UserError(f"the ADC map{same} has exactly the DWI's voxels: the same image was given twice; give the "
                        "ADC map of this DWI")
    if brain is None:
        brain = brain_mask(dwi)
    elif not same_grid(brain, dwi):
        raise UserError(f"brain mask is on a different grid than the DWI ({grid_difference(brain, dwi)})")
    units = detect_adc_units(adc, brain, adc_units, path=adc_path)
    pair = check_adc_pair(dwi, adc, brain, units, adc_path=adc_path, b0=b0, b_value=b_value) if check_pair else {}
    warnings = []
    if pair.get("problems"):
        if units.detected:
            raise UserError(pair["problems"][0] + "; give the ADC map of this DWI (or, if you are sure it is one, "
                            "state its units with --adc-units to use it anyway)")
        warnings = [p + " (used anyway: the ADC units were stated)" for p in pair["problems"]]
    return DiffusionCase(sitk.Cast(dwi, sitk.sitkFloat64), adc_to_mm2s(adc, units), brain, units,
                         dwi_path, adc_path, pair, warnings)
