"""Image-quality grading inside a reader study: records go to ``<study>/quality.jsonl``,
where :class:`AnnotationQCLib.sessions.ReaderStudy` reads them to hide flagged series.

The grading rules, scales (CNS grade 1-3, stroke Likert 1-5) and SNR/CNR measures are
ClinicalMRICommonLib.quality's (:func:`~ClinicalMRICommonLib.quality.grade_series`, shared
with ``stroke-lesion quality``). Here they get the study's rules: the rater must be a
registered reader of the study, the series must exist, the record is appended under the
study's lock to its signed, hash-chained quality log (tampering is reported when the study is
opened), and graders see no labels and no reads.
"""

from __future__ import annotations

import os
from pathlib import Path

from ClinicalMRICommonLib.images import read_image
from ClinicalMRICommonLib.quality import grade_series, make_record

from .sessions import ReaderStudy


def _append(study: ReaderStudy, rec: dict) -> dict:
    return study.append_quality(rec)


def record_quality(study_folder: str | os.PathLike, case_id: str, sequence: str, rater: str, **kwargs) -> dict:
    """Validate and append a record to ``<study>/quality.jsonl`` (where the reader study
    picks it up). Returns the record. (Library use; the command ``annotation-qc quality
    grade`` uses :func:`grade`, which also requires a registered rater.)"""
    folder = Path(study_folder)
    rec = make_record(case_id, sequence, rater, **kwargs)
    if (folder / "study.json").exists():
        study = ReaderStudy.open(folder)
        study.source_image(case_id, sequence)  # UserError for unknown case/series
        return _append(study, rec)
    from ClinicalMRICommonLib.quality import append_quality_record

    append_quality_record(folder / "quality.jsonl", rec)
    return rec


def grade(study_folder: str | os.PathLike, case_id: str, sequence: str, rater: str, *, scale: str, score: int,
          roi_labelmap: str | os.PathLike | None = None, snr: float | None = None, cnr: float | None = None,
          reason: str = "", min_snr: float | None = None, min_cnr: float | None = None,
          rayleigh_correction: bool = False) -> dict:
    """Grade one series of a reader study (see the module docstring). With ``roi_labelmap``
    (labels 1 signal, 2 background, 3 tissue, on the series' grid) SNR and CNR are measured on
    the case's source image. Returns the logged record."""
    study = ReaderStudy.open(study_folder)
    study.role(rater)
    src = study.source_image(case_id, sequence, check=roi_labelmap is not None)
    image = labels = None
    if roi_labelmap is not None:
        image = read_image(src, f"{sequence} image of case {case_id!r}")
        labels = read_image(roi_labelmap, "ROI label map")
    # the label map's checks (grid, labels 0-3, signal and background) are the common measurement's
    rec = grade_series(case_id, sequence, rater, scale=scale, score=score, image=image, roi_labelmap=labels,
                       snr=snr, cnr=cnr, reason=reason, min_snr=min_snr, min_cnr=min_cnr,
                       rayleigh_correction=rayleigh_correction, roi_name=roi_labelmap)
    return _append(study, rec)
