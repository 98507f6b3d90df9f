"""The cohort manifest: a CSV file with one row per lesion, validated up front.

(Not to be confused with a model bundle's ``manifest.json``, :mod:`HRMMPredictLib.bundle`.)

Columns: ``patient_id, lesion_id, label`` (1 = HRMM, 0 = SRMM), one image path per
sequence (``t1, t2, fst2``, :data:`HRMMPredictLib.sequences.SEQUENCES`) and the ROI ``roi``,
optionally the second reads ``roi_reader2, roi_repeat``. Paths are relative to the
manifest's folder (absolute paths are accepted too); an image may be a DICOM series folder. Every problem is reported at once, with
the CSV row number (the header is row 1), so a user fixes the file in one go.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ClinicalMRICommonLib.errors import InputWarning, UserError
from ClinicalMRICommonLib.grids import Grid, grid_difference, same_grid
from ClinicalMRICommonLib.images import read_grid, read_image
from ClinicalMRICommonLib.masks import read_mask
from HRMMPredictLib.roi import ROI_KINDS, mask_on_grid, roi_warnings, same_file_warnings, same_grid_reordered
from HRMMPredictLib.sequences import SEQUENCES, sequence_label

IMAGE_COLUMNS = SEQUENCES
ROI_COLUMNS = ROI_KINDS
REQUIRED = ("patient_id", "lesion_id", "label") + IMAGE_COLUMNS + ROI_COLUMNS[:1]
OPTIONAL_ROIS = ROI_COLUMNS[1:]
MAX_LISTED = 30


def load_cohort_manifest(path: str | os.PathLike, check_images: bool = True,
                         require_labels: bool = True) -> pd.DataFrame:
    """Read and validate a cohort manifest (CSV); return it with absolute paths.

    Raises one UserError listing every problem found (missing columns, files, unreadable
    images, grids that differ, empty ROIs, unknown labels, duplicate lesion ids).
    """
    p = Path(path)
    if not p.is_file():
        raise UserError(f"cohort manifest not found: {p}")
    try:
        df = pd.read_csv(p, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise UserError(f"cohort manifest {p} is not a readable CSV ({str(exc).splitlines()[0]})") from None
    df.columns = [c.strip() for c in df.columns]
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise UserError(f"cohort manifest {p} lacks column(s) {', '.join(missing)}; required: {', '.join(REQUIRED)}")
    if len(df) == 0:
        raise UserError(f"cohort manifest {p} has no rows")
    base = p.resolve().parent
    problems: list[str] = []
    for c in df.columns:
        df[c] = df[c].str.strip()
    rois = [c for c in ROI_COLUMNS if c in df.columns]

    dup = df["lesion_id"].duplicated(keep=False) & (df["lesion_id"] != "")
    for i in np.flatnonzero(dup.to_numpy()):
        problems.append(f"row {i + 2}: lesion_id {df['lesion_id'].iat[i]!r} appears more than once")

    labels = []
    for i, r in enumerate(df.itertuples(index=False)):
        row = i + 2
        rd = r._asdict()
        if not rd["patient_id"]:
            problems.append(f"row {row}: patient_id is empty")
        if not rd["lesion_id"]:
            problems.append(f"row {row}: lesion_id is empty")
        lab = rd["label"]
        if lab in ("0", "1", "0.0", "1.0"):
            labels.append(int(float(lab)))
        elif lab == "" and not require_labels:
            labels.append(-1)
        else:
            labels.append(-1)
            problems.append(f"row {row}: label {lab!r} is not 0 (SRMM) or 1 (HRMM)")
        for col in IMAGE_COLUMNS + tuple(rois):
            val = rd.get(col, "")
            if not val:
                if col in REQUIRED:
                    problems.append(f"row {row}: {col} path is empty")
                continue
            full = Path(val) if os.path.isabs(val) else base / val
            df.at[df.index[i], col] = str(full)
        if check_images:
            problems.extend(_check_row_images(row, df.iloc[i], rois))
    if problems:
        n = len(problems)
        shown = problems[:MAX_LISTED]
        more = f"\n  ... and {n - MAX_LISTED} more" if n > MAX_LISTED else ""
        raise UserError(f"cohort manifest {p} has {n} problem(s):\n  " + "\n  ".join(shown) + more)
    df["label"] = labels
    df.attrs["cohort_path"] = str(p.resolve())
    return df


def _check_row_images(row: int, r: pd.Series, rois: list[str]) -> list[str]:
    """Every image read in full (so truncated, NaN/infinite, vector and single-slice images are
    refused here, not half-way through an extraction), every ROI checked on its image's grid
    (an ROI stored in another voxel order of the same physical grid is accepted); warnings
    (InputWarning) for the same file given twice and for ROIs touching the edge of the field
    of view or covering most of it."""
    from HRMMPredictLib.radiomics.features import require_volume

    problems = []
    grids = {}
    images = {}
    labels = {c: sequence_label(c) for c in IMAGE_COLUMNS}
    for w in same_file_warnings({c: r.get(c, "") for c in IMAGE_COLUMNS}, labels):
        warnings.warn(f"row {row}: {w}", InputWarning, stacklevel=3)
    image_files = {os.path.realpath(r[c]): c for c in IMAGE_COLUMNS if r.get(c, "")}
    for col in IMAGE_COLUMNS + tuple(rois):
        val = r.get(col, "")
        if not val:
            continue
        f = Path(val)
        if not f.exists():
            problems.append(f"row {row}: {col} file not found: {f}")
            continue
        if col in rois and os.path.realpath(f) in image_files:
            problems.append(f"row {row}: {col} is the {image_files[os.path.realpath(f)]} image file {f}; give the "
                            "ROI mask (label map) file")
            continue
        try:
            if col in IMAGE_COLUMNS:
                img = read_image(f, f"{col} image")   # whole file: truncation, NaN, vector images
                require_volume(img, f"{col} image {f}")
                images[col] = img
                grids[col] = Grid.of(img)
            else:
                grids[col] = read_grid(f, col)  # the header only; the voxels are read below
        except UserError as exc:
            problems.append(f"row {row}: {exc}")
    ref_col = next((c for c in IMAGE_COLUMNS if c in grids), None)
    if ref_col:
        for col, g in grids.items():
            diff = grid_difference(g, grids[ref_col]) if col != ref_col else ""
            if diff and col in rois and same_grid(same_grid_reordered(g.image(), grids[ref_col].image()),
                                                  grids[ref_col]):
                continue                     # the same physical grid in another storage order
            if diff:
                problems.append(f"row {row}: {col} is on a different grid than {ref_col} ({diff})")
    for col in rois:
        if col not in grids or any(p.startswith(f"row {row}: {col} is on a different grid") for p in problems):
            continue
        try:
            if ref_col in images:
                mask, _ = mask_on_grid(r[col], images[ref_col], image_what=f"{ref_col} image", min_voxels=1,
                                       what=col)
                for w in roi_warnings(mask, f"{ref_col} image"):
                    warnings.warn(f"row {row}: {col}: {w}", InputWarning, stacklevel=3)
            else:
                read_mask(r[col], what=col)  # refuses an empty mask (the one mask reader)
        except UserError as exc:
            problems.append(f"row {row}: {exc}")
    return problems


def cohort_hash(df: pd.DataFrame) -> str:
    """SHA-256 over the cohort's rows (ids, labels) and the content of every file it names."""
    from HRMMPredictLib.radiomics.features import file_sha256  # memoised: files are hashed once per run

    h = hashlib.sha256()
    cols = [c for c in ("patient_id", "lesion_id", "label") + IMAGE_COLUMNS + ROI_COLUMNS if c in df.columns]
    for _, r in df.sort_values("lesion_id").iterrows():
        for c in cols:
            v = r[c]
            if c in IMAGE_COLUMNS + ROI_COLUMNS:
                v = file_sha256(v) if isinstance(v, str) and v else ""
            h.update(f"{c}={v};".encode())
        h.update(b"\n")
    return h.hexdigest()


def summarize(df: pd.DataFrame, split: pd.Series | None = None) -> list[dict]:
    """Patients, lesions and class balance, overall and per split."""
    groups = [("all", df)]
    if split is not None:
        for name in pd.unique(split):
            groups.append((str(name), df[split.to_numpy() == name]))
    out = []
    for name, g in groups:
        out.append({"split": name, "patients": int(g["patient_id"].nunique()), "lesions": int(len(g)),
                    "positives": int((g["label"] == 1).sum()), "negatives": int((g["label"] == 0).sum())})
    return out
