"""Image quality per series: the readers' grades and the measured SNR / CNR.

Scales
------
* ``grade`` 1-3, CNS-tumour annotation consensus: 1 = blurred / obvious artefacts, not
  diagnostic; 2 = structures distinguishable, minor artefacts; 3 = clear, good contrast, no
  artefacts. Only grade 2-3 series are annotated.
* ``likert`` 1-5, stroke annotation consensus (5 best); series with Likert < 3 are excluded.

A series is **flagged** (not offered for annotation) when a record has grade < 2 or
Likert < 3, or, when the caller gives minimum values, SNR / CNR below them. A flagged record
must carry a reason. Records are appended to a JSON-lines log (``quality.jsonl`` in a reader
study folder, where :class:`AnnotationQCLib.sessions.ReaderStudy` reads it to hide flagged
series); for each series the latest record of each rater counts, and the series is flagged
when any rater's latest record flags it.

SNR and CNR (two-region method, e.g. Magnotta & Friedman 2006, J Digit Imaging 19:140):
``SNR = mean(signal ROI) / SD(background ROI)``, ``CNR = |mean(signal ROI) - mean(tissue ROI)|
/ SD(background ROI)``, SD with ddof = 1. The background ROI should be air outside the body
with noise (not zero-filled). Magnitude images have Rayleigh-distributed background noise;
``rayleigh_correction=True`` divides the background SD by 0.655 to estimate the underlying
Gaussian noise SD (Henkelman 1985), which lowers SNR/CNR by that factor.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

import numpy as np
import SimpleITK as sitk

from .errors import UserError
from .files import append_jsonl, read_jsonl
from .grids import grid_difference, same_grid

GRADES = {1: "blurred or obvious artefacts; not diagnostic",
          2: "structures distinguishable; minor artefacts",
          3: "clear, good contrast; no artefacts"}
MIN_GRADE = 2
MIN_LIKERT = 3
RAYLEIGH_FACTOR = 0.655

#: The two grading scales: which record field holds the score, its range, the lowest score
#: still annotated, and where the scale comes from.
SCALES = {
    "cns": {"field": "grade", "range": (1, 3), "minimum": MIN_GRADE,
            "source": "CNS-tumour MRI annotation consensus: 1 not diagnostic, 2 minor artefacts, 3 clear"},
    "stroke": {"field": "likert", "range": (1, 5), "minimum": MIN_LIKERT,
               "source": "acute-stroke annotation consensus: Likert 1-5 (5 best), Likert < 3 excluded"},
}


def _roi_values(image_arr: np.ndarray, mask: sitk.Image, image: sitk.Image, what: str) -> np.ndarray:
    if not isinstance(mask, sitk.Image):
        raise UserError(f"{what} ROI must be a SimpleITK image")
    if not same_grid(mask, image):
        raise UserError(f"{what} ROI is not on the image grid ({grid_difference(mask, image)}); draw it on the "
                        "series being graded")
    sel = sitk.GetArrayViewFromImage(mask) != 0
    vals = image_arr[sel]
    if vals.size == 0:
        raise UserError(f"{what} ROI is empty; draw it on the image")
    if not np.all(np.isfinite(vals)):
        raise UserError(f"{what} ROI covers NaN/infinite voxels")
    return vals


def snr_cnr(image: sitk.Image, signal: sitk.Image, background: sitk.Image, tissue: sitk.Image | None = None,
            rayleigh_correction: bool = False) -> dict:
    """SNR (and CNR when ``tissue`` is given) from ROI masks on the image grid.

    Returns ``{"snr", "cnr", "mean_signal", "mean_tissue", "sd_background", "noise_sd",
    "n_signal", "n_background", "n_tissue"}`` (``cnr``/``mean_tissue``/``n_tissue`` None
    without a tissue ROI; ``noise_sd`` is the SD used, after the Rayleigh correction if asked).
    """
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise UserError("SNR/CNR need a scalar image")
    arr = sitk.GetArrayFromImage(image).astype(np.float64)
    s = _roi_values(arr, signal, image, "signal")
    b = _roi_values(arr, background, image, "background")
    if b.size < 2:
        raise UserError("background ROI needs at least 2 voxels for a standard deviation")
    sd = float(np.std(b, ddof=1))
    if sd <= 0:
        raise UserError("background ROI has no noise (all voxels equal, e.g. zero-filled air); draw it where "
                        "the background noise is visible")
    noise = sd / RAYLEIGH_FACTOR if rayleigh_correction else sd
    out = {"snr": float(s.mean()) / noise, "cnr": None, "mean_signal": float(s.mean()), "mean_tissue": None,
           "sd_background": sd, "noise_sd": noise, "n_signal": int(s.size), "n_background": int(b.size),
           "n_tissue": None}
    if tissue is not None:
        t = _roi_values(arr, tissue, image, "tissue")
        out.update(cnr=abs(float(s.mean()) - float(t.mean())) / noise, mean_tissue=float(t.mean()),
                   n_tissue=int(t.size))
    return out


#: the labels an ROI label map may hold: 0 unlabelled, 1 signal, 2 background, 3 tissue
ROI_LABELS = (0, 1, 2, 3)


def check_roi_labelmap(labelmap: sitk.Image, image: sitk.Image, name: str | os.PathLike | None = None, *,
                       signal: int = 1, background: int = 2, tissue: int | None = 3) -> np.ndarray:
    """The label array of an ROI label map after the checks every SNR/CNR measurement makes:
    on the series' grid, whole labels 0-3 only (and the labels asked for), with signal and
    background voxels. ``name``: the user's file, named in every error."""
    what = f"ROI label map {name}" if name is not None else "ROI label map"
    if not isinstance(labelmap, sitk.Image):
        raise UserError(f"{what} must be a SimpleITK image")
    if labelmap.GetNumberOfComponentsPerPixel() != 1:
        raise UserError(f"{what} has {labelmap.GetNumberOfComponentsPerPixel()} components per voxel; export the "
                        "segmentation as one label map (labels 1 signal, 2 background, 3 tissue)")
    if not same_grid(labelmap, image):
        raise UserError(f"{what} is not on the grid of the series ({grid_difference(labelmap, image)}); "
                        "draw the ROIs on the series being graded")
    lab = sitk.GetArrayFromImage(labelmap)
    values = np.unique(lab)
    allowed = set(ROI_LABELS) | {signal, background} | ({tissue} if tissue is not None else set())
    odd = [v for v in values.tolist() if v not in allowed]
    if odd:
        raise UserError(f"{what} holds values other than 0-3 (e.g. {odd[0]:g}); it must label signal {signal}, "
                        f"background {background}" + (f" and optionally tissue {tissue}" if tissue is not None else ""))
    missing = [f"{role} ({lab_v})" for lab_v, role in ((signal, "signal"), (background, "background"))
               if lab_v not in values]
    if missing:
        raise UserError(f"{what} has no {' and no '.join(missing)} voxels; label both")
    return lab


def snr_cnr_from_labelmap(image: sitk.Image, labelmap: sitk.Image | str | os.PathLike, signal: int = 1,
                          background: int = 2, tissue: int | None = 3, rayleigh_correction: bool = False,
                          name: str | os.PathLike | None = None) -> dict:
    """:func:`snr_cnr` with the ROIs as labels of one label map (as exported from a Slicer
    segmentation), checked first by :func:`check_roi_labelmap` (grid, labels 0-3, signal and
    background present). ``labelmap`` may be the file itself (read and named in errors) or
    an image (``name``: its file, for the errors). A missing tissue label gives no CNR."""
    if isinstance(labelmap, (str, os.PathLike)):
        from .images import read_image

        name = labelmap if name is None else name
        labelmap = read_image(labelmap, "ROI label map")
    lab = check_roi_labelmap(labelmap, image, name, signal=signal, background=background, tissue=tissue)

    def roi(v):
        m = sitk.GetImageFromArray((lab == v).astype(np.uint8))
        m.CopyInformation(labelmap)
        return m

    has_tissue = tissue is not None and bool((lab == tissue).any())
    return snr_cnr(image, roi(signal), roi(background), roi(tissue) if has_tissue else None, rayleigh_correction)


def make_record(case_id: str, sequence: str, rater: str, grade: int | None = None, likert: int | None = None,
                reason: str = "", snr: float | None = None, cnr: float | None = None,
                min_snr: float | None = None, min_cnr: float | None = None,
                time: datetime | None = None) -> dict:
    """A validated quality record for one series (see module docstring for the flag rule)."""
    for v, what in ((case_id, "case id"), (sequence, "sequence"), (rater, "rater")):
        if not str(v).strip():
            raise UserError(f"quality record needs a {what}")
    if grade is None and likert is None:
        raise UserError("give a grade (1-3) or a Likert score (1-5)")
    if grade is not None and (isinstance(grade, bool) or grade not in GRADES):
        raise UserError(f"grade must be 1, 2 or 3 (got {grade!r})")
    if likert is not None and (isinstance(likert, bool) or likert not in (1, 2, 3, 4, 5)):
        raise UserError(f"Likert score must be 1-5 (got {likert!r})")
    for v, what in ((snr, "SNR"), (cnr, "CNR"), (min_snr, "minimum SNR"), (min_cnr, "minimum CNR")):
        if v is not None and not (isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)
                                  and v >= 0):
            raise UserError(f"{what} must be a finite number >= 0 (got {v!r})")
    reasons = []
    if grade is not None and grade < MIN_GRADE:
        reasons.append(f"grade {grade} < {MIN_GRADE}")
    if likert is not None and likert < MIN_LIKERT:
        reasons.append(f"Likert {likert} < {MIN_LIKERT}")
    if min_snr is not None and snr is not None and snr < min_snr:
        reasons.append(f"SNR {snr:.1f} < {min_snr:g}")
    if min_cnr is not None and cnr is not None and cnr < min_cnr:
        reasons.append(f"CNR {cnr:.1f} < {min_cnr:g}")
    flagged = bool(reasons)
    if flagged and not str(reason).strip():
        raise UserError(f"series {case_id} {sequence} is flagged ({'; '.join(reasons)}): give the reason "
                        "(e.g. motion artefact, susceptibility)")
    return {"case_id": str(case_id), "sequence": str(sequence), "rater": str(rater), "grade": grade,
            "likert": likert, "reason": str(reason), "snr": snr, "cnr": cnr, "flagged": flagged,
            "flag_reasons": reasons,
            "time": (time or datetime.now(timezone.utc)).isoformat(timespec="seconds")}


def append_quality_record(log_path: str | os.PathLike, record: dict) -> None:
    """Append one record to a JSON-lines log (created when missing; never rewritten)."""
    append_jsonl(log_path, record)


def read_quality_log(log_path: str | os.PathLike) -> list[dict]:
    """The records of a quality log, in log order (none when it does not exist)."""
    return read_jsonl(log_path, "quality log")


def latest_records(records: list[dict]) -> dict[tuple[str, str, str], dict]:
    """The latest record per (case id, sequence, rater), in log order."""
    latest: dict[tuple[str, str, str], dict] = {}
    for r in records:
        latest[(r["case_id"], r["sequence"], r["rater"])] = r
    return latest


def flagged_series(records: list[dict]) -> list[tuple[str, str]]:
    """(case id, sequence) of series flagged by any rater's latest record."""
    flagged = {(c, s) for (c, s, _), r in latest_records(records).items() if r.get("flagged")}
    return sorted(flagged)


def grade_series(case_id: str, sequence: str, rater: str, *, scale: str, score: int,
                 image: sitk.Image | None = None, roi_labelmap: sitk.Image | None = None,
                 snr: float | None = None, cnr: float | None = None, reason: str = "",
                 min_snr: float | None = None, min_cnr: float | None = None,
                 rayleigh_correction: bool = False, time: datetime | None = None,
                 roi_name: str | os.PathLike | None = None) -> dict:
    """The grading core shared by AnnotationQC (``annotation-qc quality grade``) and
    StrokeLesion (``stroke-lesion quality``): one series' record on ``scale`` ("cns": grade
    1-3; "stroke": Likert 1-5, see :data:`SCALES`), with SNR/CNR either given or measured from
    ``roi_labelmap`` on ``image`` (labels 1 signal, 2 background, 3 tissue;
    :func:`snr_cnr_from_labelmap`; ``roi_name``: its file, named in errors), flagged by :func:`make_record`'s rule. The record gains
    ``scale`` and ``measured`` (the full measurement, or None)."""
    if scale not in SCALES:
        raise UserError(f"quality scale {scale!r} unknown; use {' or '.join(SCALES)}")
    lo, hi = SCALES[scale]["range"]
    if isinstance(score, bool) or not isinstance(score, (int, np.integer)) or not lo <= int(score) <= hi:
        raise UserError(f"{scale} quality score must be an integer {lo}-{hi} ({SCALES[scale]['source']}); "
                        f"got {score!r}")
    measured = None
    if roi_labelmap is not None:
        if snr is not None or cnr is not None:
            raise UserError("give SNR/CNR values or an ROI label map to measure them, not both")
        if image is None:
            raise UserError("measuring SNR/CNR from an ROI label map needs the graded image")
        measured = snr_cnr_from_labelmap(image, roi_labelmap, rayleigh_correction=rayleigh_correction,
                                         name=roi_name)
        snr, cnr = measured["snr"], measured["cnr"]
    field = SCALES[scale]["field"]
    rec = make_record(case_id, sequence, rater, **{field: int(score)}, reason=reason, snr=snr, cnr=cnr,
                      min_snr=min_snr, min_cnr=min_cnr, time=time)
    rec.update(scale=scale, measured=measured)
    return rec
