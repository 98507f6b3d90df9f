"""Benchmark of the N4 settings of HRMMPredict's preprocessing (issue 14, "Cohort scale": N4 was
the shared cost of every extraction and of a single-case prediction).

Real data (``../shared/data/spine``): every vertebral body of the lumbar T2 (7 labels) and of
the cervical T2 (C5-C7), each used as the ROI of a crop made exactly as in training and
prediction (canonical orientation, ROI box + margin). On each crop, for each N4 setting:

- **time** of ``n4_correct`` (median of repeats);
- **ramp removed**: the crop is multiplied by a linear gain ramp 0.7 -> 1.3 along one axis
  (superior-inferior, then anterior-posterior); a perfect, bias-invariant correction gives
  N4(ramp x image) = c x N4(image). The residual gain is N4(ramp x image) / N4(image) in the
  crop's foreground; its range along the ramp axis (fitted line, end to end) over the imposed
  0.6 says how much of the ramp is left; "removed" = 1 - left;
- **contrast kept**: mean(ROI) / mean(rest of the crop's foreground) after N4(image), over the
  same ratio before N4 (1 = the correction leaves the body/surroundings contrast alone; N4
  should remove smooth gain, not anatomy);
- the **test phantom** of Testing/hrmm/radiomics/test_hrmm_radiomics.py (its background slope
  ratio, which the test requires below 0.5).

    python benchmarks/bench_n4.py [--repeats 3] [--json out.json]

Timings and measurements, not a test. The chosen setting (v3) is PreprocessConfig's default;
"v2" is the setting version-2 bundles recorded (and keep using).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SHARED_DATA", ROOT.parent / "shared" / "data")) / "spine"

SETTINGS = {
    "v2 (2 levels x 50, cubic, FWHM 0.15)": dict(version=2, n4_iterations=(50, 50), n4_fitting_levels=2,
                                                 n4_fwhm=0.15, n4_control_points=4, n4_spline_order=3),
    "1 level x 10, cubic, FWHM 0.15": dict(n4_iterations=(10,), n4_fitting_levels=1, n4_fwhm=0.15,
                                           n4_spline_order=3),
    "1 level x 10, quadratic, FWHM 0.3": dict(n4_iterations=(10,), n4_fitting_levels=1, n4_fwhm=0.3),
    "v3 (1 level x 10, quadratic, FWHM 0.5)": dict(),
    "2 levels x 10, quadratic, FWHM 0.5": dict(n4_iterations=(10, 10), n4_fitting_levels=2),
    "1 level x 20, quadratic, FWHM 0.5": dict(n4_iterations=(20,)),
}


def _cases():
    """(name, image, roi) pairs of real vertebral bodies."""
    out = []
    lum = DATA / "lumbar_vb2"
    if lum.is_dir():
        img = sitk.ReadImage(str(lum / "VB2_02_T2_uint8_spacingUNKNOWN.nii.gz"), sitk.sitkFloat32)
        lab = sitk.ReadImage(str(lum / "VB2_02_vertebral_bodies_labels_1-7.nii.gz"))
        for k in range(1, 8):
            out.append((f"lumbar VB{k}", img, sitk.Cast(lab == k, sitk.sitkUInt8)))
    cer = DATA / "cervical_tptbox"
    if cer.is_dir():
        img = sitk.ReadImage(str(cer / "sub-mri_label-6_T2w.nii.gz"), sitk.sitkFloat32)
        lab = sitk.ReadImage(str(cer / "sub-mri_seg-vert_label-6_msk.nii.gz"))
        for k in (5, 6, 7):
            out.append((f"cervical C{k}", img, sitk.Cast(lab == k, sitk.sitkUInt8)))
    return out


def _ramp(img: sitk.Image, axis: int) -> sitk.Image:
    """0.7 -> 1.3 linear gain along numpy axis ``axis`` of the image."""
    a = sitk.GetArrayFromImage(img).astype(np.float64)
    n = a.shape[axis]
    g = np.linspace(0.7, 1.3, n).reshape([-1 if d == axis else 1 for d in range(3)])
    out = sitk.GetImageFromArray((a * g).astype(np.float32))
    out.CopyInformation(img)
    return out


def _left_of_ramp(corr_ramped: np.ndarray, corr: np.ndarray, fg: np.ndarray, axis: int) -> float:
    r = corr_ramped[fg] / corr[fg]
    pos = np.indices(corr.shape)[axis][fg].astype(float)
    slope, icpt = np.polyfit(pos, r, 1)
    n = corr.shape[axis] - 1
    ends = np.array([icpt, icpt + slope * n])
    return float(abs(ends[1] - ends[0]) / ends.mean() / (0.6 / 1.0))


def measure(cfg, cases, repeats: int) -> dict:
    from HRMMPredictLib.radiomics.features import crop_to_roi, n4_correct, to_canonical

    times, left_si, left_ap, contrast = [], [], [], []
    for _name, img, roi in cases:
        ik, mk = to_canonical(img, roi, cfg)
        ic, mc = crop_to_roi(ik, mk, cfg)
        t = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            corr = n4_correct(ic, cfg)
            t.append(time.perf_counter() - t0)
        times.append(statistics.median(t))
        a_raw = sitk.GetArrayFromImage(ic).astype(np.float64)
        a = sitk.GetArrayFromImage(corr).astype(np.float64)
        fg = a_raw > np.percentile(a_raw, 20)          # leave out air / dark background
        m = sitk.GetArrayFromImage(mc).astype(bool)
        rest = fg & ~m
        contrast.append(float((a[m].mean() / a[rest].mean()) / (a_raw[m].mean() / a_raw[rest].mean())))
        # PIR numpy axes: (R-L, I-S, A-P) = (0, 1, 2): ramps along superior-inferior and AP
        for axis, sink in ((1, left_si), (2, left_ap)):
            cr = sitk.GetArrayFromImage(n4_correct(_ramp(ic, axis), cfg)).astype(np.float64)
            sink.append(_left_of_ramp(cr, a, fg, axis))
    return {"time_s_median": statistics.median(times), "time_s_mean": statistics.fmean(times),
            "ramp_removed_si_median": 1 - statistics.median(left_si), "ramp_removed_ap_median": 1 - statistics.median(left_ap),
            "ramp_removed_worst": 1 - max(left_si + left_ap),
            "contrast_kept_median": statistics.median(contrast),
            "contrast_kept_range": [min(contrast), max(contrast)], "crops": len(times)}


def phantom_slope_ratio(cfg) -> float:
    sys.path.insert(0, str(ROOT / "Testing" / "hrmm" / "radiomics"))
    sys.path.insert(0, str(ROOT / "Testing"))
    import test_hrmm_radiomics as T

    from ClinicalMRICommonLib.orientation import orientation_of
    from HRMMPredictLib.radiomics.features import crop_to_roi, preprocess, to_canonical

    img, mask = T._phantom(seed=3, bias=True)
    img_c, _ = preprocess(img, mask, cfg)
    raw_c, _ = crop_to_roi(*to_canonical(img, mask, cfg), cfg)

    def slope(im):
        a = sitk.GetArrayFromImage(sitk.DICOMOrient(im, orientation_of(img)))
        prof = a[:, :, :5].mean(axis=(0, 2))
        return abs(prof[-1] - prof[0]) / prof.mean()
    return float(slope(img_c) / slope(raw_c))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    from HRMMPredictLib.radiomics.features import PreprocessConfig

    cases = _cases()
    if not cases:
        sys.exit(f"error: no spine data under {DATA}")
    base = PreprocessConfig()
    res = {}
    for label, kw in SETTINGS.items():
        cfg = replace(base, **kw)
        r = measure(cfg, cases, a.repeats)
        r["phantom_slope_ratio"] = phantom_slope_ratio(cfg)
        res[label] = r
    v2 = res[next(iter(SETTINGS))]["time_s_median"]
    print(f"{len(cases)} real vertebral-body crops; time = median per crop; ramp 0.7-1.3 imposed")
    print(f"{'setting':42} {'time s':>7} {'x v2':>5} {'SI rm':>6} {'AP rm':>6} {'worst':>6} {'contr':>6} {'phant':>6}")
    for label, r in res.items():
        r["speedup_over_v2"] = v2 / r["time_s_median"]
        print(f"{label:42} {r['time_s_median']:7.3f} {r['speedup_over_v2']:5.1f} {r['ramp_removed_si_median']:6.2f} "
              f"{r['ramp_removed_ap_median']:6.2f} {r['ramp_removed_worst']:6.2f} {r['contrast_kept_median']:6.3f} "
              f"{r['phantom_slope_ratio']:6.3f}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
