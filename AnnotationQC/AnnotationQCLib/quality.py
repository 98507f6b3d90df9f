"""Image-quality grading inside a reader study: records go to ``<study>/quality.jsonl``,
where :class:`AnnotationQCLib.sessions.ReaderStudy` reads them to hide flagged series.

The grading rules, scales and SNR/CNR measures are ClinicalMRICommonLib.quality's (shared
with StrokeLesion's series grading).
"""

from __future__ import annotations

import os
from pathlib import Path

from ClinicalMRICommonLib.quality import append_quality_record, make_record

from .sessions import ReaderStudy


def record_quality(study_folder: str | os.PathLike, case_id: str, sequence: str, rater: str, **kwargs) -> dict:
    """Validate and append a record to ``<study>/quality.jsonl`` (where the reader study
    picks it up). Returns the record."""
    folder = Path(study_folder)
    if (folder / "study.json").exists():
        ReaderStudy.open(folder).source_image(case_id, sequence)  # UserError for unknown case/series
    rec = make_record(case_id, sequence, rater, **kwargs)
    append_quality_record(Path(study_folder) / "quality.jsonl", rec)
    return rec
