"""Training sessions: an instructor's reference cases, trainee submissions, a per-trainee
report that says what to practise, and a summary across trainees.

Folder layout (everything is stored relative to the session folder, so the folder can be
moved together with its images)::

    <session>/
      session.json           name, criteria, cases (patient id, sequence, content, site,
                             source image path relative to the session + SHA-256, reference
                             mask + SHA-256, the reference's radiomics features)
      reference/<patient>_<sequence>_<content>.nrrd|.nii.gz   frozen reference masks, in
                             the source file's format (its geometry kept exactly: a NRRD
                             origin in float64 is not rounded to NIfTI's float32)
      submissions.jsonl      signed, hash-chained log: every submission and withdrawal (who,
                             when, operating-system user, file, SHA-256, reason), with its
                             signed head file submissions.jsonl.head
      trainees/<trainee>/<patient>_<sequence>_<content>.<ext>   submitted masks (read-only)
      trainees/<trainee>/withdrawn/...                          withdrawn submissions, kept
      reports/<trainee>/report.json, report.html, <case>_overlay.png, <case>_overlay_full.png
      summary/summary.csv, summary.html, summary.json

Pass criteria (``criteria`` in session.json; the instructor chooses them at creation):

* every reference case submitted;
* ``dice``: mean Dice over the cases >= 0.80;
* ``min_case_dice`` (optional): every case's Dice >= this value;
* ``feature_error`` (optional): on every case, the median relative error of the trainee's
  radiomics features against the reference's features <= this value;
* ``icc`` (optional; the default of sessions made before version 2): median over features of
  ICC(A,1) between the trainee's and the reference's feature values over the cases >= this
  value. docs/annotation_qc.md shows with numbers why it is no longer a default: across
  heterogeneous cases the between-case variance dominates: a trainee with Dice 0.41 and 0.49
  on two of five real cases still reaches a median ICC of 0.989.

Radiomics features: pyradiomics shape + first-order features of the original image (bin
width 25) by default, or any ``feature_extractor(image, mask) -> dict[str, float]``. The
mask is checked against the image with the project's one grid tolerance
(:func:`ClinicalMRICommonLib.grids.same_grid`, 1e-4) and then given the image's exact grid, so
pyradiomics applies the same tolerance as the rest of the extension. A reference case whose
features cannot be computed is refused when the session is created (naming the case); when
a trainee's mask cannot be scored for features, its Dice and HD95 are still reported.

A session needs at least 5 reference cases. Varied size and site is checked and reported as
a warning when missing (one site only, or reference volumes within a factor of 2).

Tamper evidence (:mod:`AnnotationQCLib.audit`): session.json is a signed document (criteria,
cases, the SHA-256 of every source image and reference mask) and submissions.jsonl a signed
log (the site key is kept outside the folder). Opening a session checks both, and that every
reference and submission path stays inside the session's reference/ and trainees/<id>/
folders, and refuses in one line when anything was altered; the SHA-256 of the image,
reference and submission are checked before a case is scored;
:meth:`TrainingSession.verify` (``annotation-qc training-verify``) lists everything. Sessions
made before signing are read, reported as unsigned, and signed at their next change.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.files import (
    atomic_path,
    check_output_path,
    clean_stale_temps,
    json_safe,
    sha256_file,
    verify_image_file,
    write_image_atomic,
    write_json_atomic,
    write_text_atomic,
)
from ClinicalMRICommonLib.grids import grid_difference, same_grid
from ClinicalMRICommonLib.images import read_grid, read_image
from ClinicalMRICommonLib.locks import folder_lock
from ClinicalMRICommonLib.masks import binary_mask, read_mask

from .audit import AUDIT_SIGNED, AuditLog, FolderReport, check_document, inside, os_user, utc_now, write_signed_json
from .sessions import check_name, mask_name, read_json_document

FORMAT = "annotationqc-training/2"
FORMAT_V1 = "annotationqc-training/1"
MIN_CASES = 5
DEFAULT_CRITERIA = {"dice": 0.80, "min_case_dice": None, "feature_error": None, "icc": None,
                    "icc_form": "ICC(A,1)"}
CRITERIA_HELP = {"dice": "mean Dice over the cases", "min_case_dice": "Dice of every case",
                 "feature_error": "median relative feature error of every case (at most)",
                 "icc": "median feature ICC over the cases"}
FEATURE_TOLERANCE = 0.10      # a feature "reproduced" within 10 % of the reference value
TRAINEE_BECOMES = "the folder trainees/<id>/ of the session and the name in reports"
DEFAULT_EXTRACTOR = "pyradiomics shape+firstorder, original image, binWidth 25"


def _pyradiomics_version() -> str:
    try:
        from importlib.metadata import version

        return version("pyradiomics")
    except Exception:  # noqa: BLE001 - metadata missing
        return "unknown"


def pyradiomics_shape_firstorder(image: sitk.Image, mask: sitk.Image) -> dict[str, float]:
    """Default feature extractor: pyradiomics shape + first-order features, original image,
    bin width 25, no resampling or normalisation.

    The mask must be on the image's grid by :func:`same_grid` (tolerance 1e-4); it is then
    given the image's exact grid, so a mask whose origin was rounded by NIfTI's float32 (or
    any difference within the tolerance) is scored like the rest of the extension accepts it,
    rather than refused by pyradiomics' stricter default geometry check."""
    import logging

    import radiomics
    from radiomics import featureextractor

    if not same_grid(mask, image):
        raise UserError(f"radiomics features need the mask on the image grid ({grid_difference(mask, image)})")
    m = binary_mask(mask)
    m.CopyInformation(image)
    radiomics.setVerbosity(logging.ERROR)
    ex = featureextractor.RadiomicsFeatureExtractor(binWidth=25, additionalInfo=False)
    ex.disableAllFeatures()
    ex.enableFeatureClassByName("shape")
    ex.enableFeatureClassByName("firstorder")
    try:
        res = ex.execute(sitk.Cast(image, sitk.sitkFloat32), m, label=1)
    except (ValueError, RuntimeError, IndexError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise UserError(f"radiomics features could not be computed ({first[:160]})") from None
    return {k: float(v) for k, v in res.items() if not k.startswith("diagnostics_")}


CASE_COLUMNS = ("case_id", "patient_id", "sequence", "image", "reference")


def cases_from_csv(path: str | os.PathLike) -> list[dict]:
    """Reference cases for :meth:`TrainingSession.create` from a CSV table (columns case_id,
    patient_id, sequence, image, reference; optional content and site). Relative image and
    mask paths are taken relative to the CSV file's folder."""
    from ClinicalMRICommonLib.tables import read_csv_table

    table = read_csv_table(path, "training cases")
    missing = [c for c in CASE_COLUMNS if c not in table.columns]
    if missing:
        raise UserError(f"training cases file {path} lacks column(s) {', '.join(missing)}; "
                        f"needed: {', '.join(CASE_COLUMNS)} (optional: content, site)")
    base = Path(path).resolve().parent
    cases = []
    for row in table.to_dict("records"):
        row = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}
        for k in ("case_id", "patient_id", "sequence", "content", "site"):
            if row.get(k) is not None:
                row[k] = str(row[k])
        for k in ("image", "reference"):
            if row.get(k):
                p = Path(str(row[k]))
                row[k] = str(p if p.is_absolute() else base / p)
        cases.append(row)
    return cases


def _source_suffix(path: str | os.PathLike) -> str:
    """The suffix a copy of ``path`` keeps (its own format; NRRD for anything else)."""
    name = str(path).lower()
    for ext, keep in ((".nii.gz", ".nii.gz"), (".nii", ".nii.gz"), (".nrrd", ".nrrd"), (".nhdr", ".nrrd"),
                      (".mha", ".mha"), (".mhd", ".mha")):
        if name.endswith(ext):
            return keep
    return ".nrrd"


def _same_geometry_exactly(a, b) -> bool:
    return (tuple(a.GetSize()) == tuple(b.GetSize()) and tuple(a.GetSpacing()) == tuple(b.GetSpacing())
            and tuple(a.GetOrigin()) == tuple(b.GetOrigin()) and tuple(a.GetDirection()) == tuple(b.GetDirection()))


def _on_grid_of(mask: sitk.Image, grid) -> sitk.Image:
    """``mask`` (already within same_grid's tolerance of ``grid``) with ``grid``'s exact geometry."""
    m = binary_mask(mask)
    m.SetSpacing(tuple(grid.GetSpacing()))
    m.SetOrigin(tuple(grid.GetOrigin()))
    m.SetDirection(tuple(grid.GetDirection()))
    return m


def _features_of(extractor, image, mask, case_id: str, whose: str) -> dict:
    try:
        return extractor(image, mask)
    except UserError as exc:
        raise UserError(f"case {case_id!r}: {whose} {exc}") from None


def feature_agreement(reference: dict[str, float], test: dict[str, float]) -> dict:
    """Per-case agreement of two feature vectors: for every reference feature with a non-zero
    value, the relative error ``|test - reference| / |reference|``. Returns
    ``{"median_error", "within_10pct" (fraction of features within 10 %), "n_features",
    "worst": [(feature, error), ... 3 largest]}``."""
    errs = {}
    for k, r in reference.items():
        t = test.get(k)
        if t is None or not np.isfinite(r) or not np.isfinite(t) or abs(r) < 1e-12:
            continue
        errs[k] = abs(t - r) / abs(r)
    if not errs:
        return {"median_error": None, "within_10pct": None, "n_features": 0, "worst": []}
    vals = np.array(list(errs.values()))
    worst = sorted(errs.items(), key=lambda kv: -kv[1])[:3]
    return {"median_error": float(np.median(vals)), "within_10pct": float((vals <= FEATURE_TOLERANCE).mean()),
            "n_features": len(errs), "worst": [[k, float(v)] for k, v in worst]}


class TrainingSession:
    """An instructor-defined training session folder."""

    def __init__(self, folder: str | os.PathLike, *, verify: bool = True, key_path: str | os.PathLike | None = None):
        self.folder = Path(folder)
        self.key_path = key_path
        self.meta = read_json_document(self.folder / "session.json", (FORMAT, FORMAT_V1),
                                       f"{self.folder} is not a training session (no session.json)")
        self._images: dict[str, sitk.Image] = {}
        self.version = 1 if self.meta["format"] == FORMAT_V1 else 2
        stored = self.meta.get("criteria") or {}
        cases = self.meta.get("cases")
        if not isinstance(stored, dict) or not isinstance(cases, dict) or \
                not all(isinstance(c, dict) for c in cases.values()):
            raise UserError(f"{self.folder / 'session.json'} has no valid criteria or cases: it was edited")
        self.criteria = {**{k: None for k in DEFAULT_CRITERIA}, "icc_form": "ICC(A,1)", **stored}
        self._log = AuditLog(self.folder / "submissions.jsonl", "submission log", key_path=key_path,
                             required=self.meta.get("audit") == AUDIT_SIGNED)
        if verify:
            report = self.verify(files=False)
            report.raise_if_altered()
            report.warn_notices()

    # ---- integrity --------------------------------------------------------------------

    def verify(self, files: bool = True) -> FolderReport:
        """Everything wrong with the session, in one report: session.json's signature, the
        submission log (edited, removed, reordered or unsigned records; its head), reference
        and submission paths outside the session's reference/ and trainees/<id>/ folders, and
        with ``files`` the SHA-256 of every source image, reference mask and active submission."""
        rep = FolderReport(self.folder, "training session", f"annotation-qc training-verify --session {self.folder}")
        v = self._log.verify()
        rep.add_log(v)
        signed = self.meta.get("audit") == AUDIT_SIGNED or v.signed
        rep.add_document(check_document(self.meta, "session.json", required=signed, key_path=self.key_path))
        for cid in self.meta["cases"]:
            try:
                self._reference_path(cid)
            except UserError as exc:
                rep.problems.append(str(exc))
        for i, r in enumerate(v.records, start=1):
            if r.get("event") not in ("submit", "withdraw"):
                continue
            for key in ("mask", "moved_to"):
                if r.get(key) is not None or key == "mask":
                    try:
                        self._trainee_file(r.get("trainee"), r.get(key), f"submission log record {i}: {key}")
                    except UserError as exc:
                        rep.problems.append(str(exc))
        if files:
            for cid in self.meta["cases"]:
                for check in (self._reference, self._checked_image_path):
                    try:
                        check(cid)
                    except UserError as exc:
                        rep.problems.append(str(exc))
            if v.ok:
                for sub in self.submissions().values():
                    try:
                        self._submitted_mask(sub)
                    except UserError as exc:
                        rep.problems.append(str(exc))
        rep.problems = list(dict.fromkeys(rep.problems))
        return rep

    def _reference_path(self, case_id: str) -> Path:
        ref = str(self._case(case_id).get("reference") or "")
        if not ref.startswith("reference/"):
            raise UserError(f"reference mask {ref!r} of case {case_id!r} is not inside the session's reference/ "
                            "folder: session.json was edited")
        return inside(self.folder, ref, f"reference mask of case {case_id!r}")

    def _trainee_file(self, trainee, rel, what: str) -> Path:
        """A submission's file: inside trainees/<trainee>/ of the session."""
        try:
            tid = check_name(trainee, "trainee id", becomes=TRAINEE_BECOMES)
        except UserError:
            raise UserError(f"{what}: the trainee id {str(trainee)[:40]!r} is not valid: the record was edited") from None
        if not str(rel or "").startswith(f"trainees/{tid}/"):
            raise UserError(f"{what} {str(rel)[:120]!r} is not inside trainees/{tid}/ of the session: the record was "
                            "edited")
        return inside(self.folder, rel, what)

    def _upgrade_documents(self) -> None:
        """A session made before signing: sign session.json as found before its first signed
        record (call under the lock)."""
        if "signature" not in self.meta:
            self.meta = write_signed_json(self.folder / "session.json", self.meta, what="session description",
                                          key_path=self.key_path)

    # ---- definition ------------------------------------------------------------------

    @classmethod
    def create(cls, folder: str | os.PathLike, name: str, cases: list[dict], criteria: dict | None = None,
               feature_extractor: Callable[[sitk.Image, sitk.Image], dict] | None = None, *,
               key_path: str | os.PathLike | None = None) -> TrainingSession:
        """Define a session. ``cases``: dicts with ``case_id, patient_id, sequence, image,
        reference`` and optionally ``content`` ("lesion") and ``site``. Each reference mask is
        checked against its image's grid, its radiomics features are computed once (a case
        that cannot be scored is refused, by name), and it is copied into the session in its
        own file format; images stay where they are (paths relative to the session)."""
        folder = Path(folder)
        if (folder / "session.json").exists():
            raise UserError(f"{folder} already holds a training session; choose another folder")
        left = [n for n in ("submissions.jsonl", "submissions.jsonl.head") if (folder / n).exists()]
        if left:
            raise UserError(f"{folder} holds parts of a training session ({', '.join(left)}) but no session.json (an "
                            "interrupted creation?); choose an empty folder or remove them")
        if len(cases) < MIN_CASES:
            raise UserError(f"a training session needs at least {MIN_CASES} reference cases, got {len(cases)}")
        crit = dict(DEFAULT_CRITERIA)
        for k, v in (criteria or {}).items():
            if k not in DEFAULT_CRITERIA:
                raise UserError(f"unknown pass criterion {k!r}; use {', '.join(DEFAULT_CRITERIA)}")
            crit[k] = v
        for k in ("dice", "min_case_dice", "icc", "feature_error"):
            v = crit[k]
            if v is None and k != "dice":
                continue
            limit_ok = (0 < float(v) <= 1) if k != "feature_error" else (0 < float(v) < 10)
            if not (isinstance(v, (int, float)) and math.isfinite(float(v)) and limit_ok):
                raise UserError(f"pass criterion {k} ({CRITERIA_HELP[k]}) must be in "
                                f"{'(0, 1]' if k != 'feature_error' else '(0, 10)'}, got {v!r}")
        extractor = feature_extractor or pyradiomics_shape_firstorder
        stored: dict[str, dict] = {}
        problems: list[str] = []
        volumes: list[float] = []
        root = folder.resolve()
        for i, c in enumerate(cases, start=1):
            label = f"case {i}" + (f" ({c.get('case_id')})" if c.get("case_id") else "")
            try:
                missing = [k for k in CASE_COLUMNS if not c.get(k)]
                if missing:
                    raise UserError(f"missing {', '.join(missing)}")
                cid = check_name(c["case_id"], "case id")
                if cid in stored:
                    raise UserError(f"case id {cid!r} appears twice")
                content = c.get("content") or "lesion"
                stem = mask_name(c["patient_id"], c["sequence"], content)[: -len(".nii.gz")]
                img_path = Path(c["image"]).resolve()
                image = read_image(img_path, "source image")
                ref = read_mask(c["reference"], what="reference mask")  # the one mask policy: 0/1, no soft maps
                if not same_grid(ref, image):
                    raise UserError(f"reference mask {c['reference']} is not on the grid of {img_path} "
                                    f"({grid_difference(ref, image)})")
                n = int(sitk.GetArrayViewFromImage(ref).astype(bool).sum())
                if n == 0:
                    raise UserError(f"reference mask {c['reference']} is empty")
                feats = _features_of(extractor, image, ref, cid, "the reference cannot be scored:")
                volumes.append(n * float(np.prod(ref.GetSpacing())) / 1000.0)
                stored[cid] = {"patient_id": c["patient_id"], "sequence": c["sequence"], "content": content,
                               "site": str(c.get("site") or ""), "image": Path(os.path.relpath(img_path, root)).as_posix(),
                               "image_sha256": sha256_file(img_path) if img_path.is_file() else None,
                               "reference": f"reference/{stem}{_source_suffix(c['reference'])}",
                               "_src": ref, "_features": feats}
            except UserError as exc:
                problems.append(f"{label}: {exc}")
        if problems:
            raise UserError("training session not created: " + "; ".join(problems))
        warnings = []
        sites = {c["site"] for c in stored.values() if c["site"]}
        if len(sites) < 2:
            warnings.append("all reference cases come from one site (or no site given); include varied sites")
        if max(volumes) < 2 * min(volumes):
            warnings.append(f"reference volumes vary only from {min(volumes):.2f} to {max(volumes):.2f} mL; "
                            "include small and large lesions")
        (folder / "reference").mkdir(parents=True, exist_ok=True)
        for cid, c in stored.items():
            src, feats = c.pop("_src"), c.pop("_features")
            dest = folder / c["reference"]
            copy = binary_mask(src)
            write_image_atomic(copy, dest)
            if not _same_geometry_exactly(read_grid(dest, "reference copy"), src):  # keep the geometry exactly
                dest.unlink()
                c["reference"] = f"reference/{Path(c['reference']).name.split('.')[0]}.nrrd"
                dest = folder / c["reference"]
                write_image_atomic(copy, dest)
            c["reference_sha256"] = sha256_file(dest)
            if feature_extractor is None:
                c["reference_features"] = feats
        meta = {"format": FORMAT, "name": str(name), "created": utc_now(), "created_by": os_user(),
                "audit": AUDIT_SIGNED, "criteria": crit, "warnings": warnings, "cases": stored}
        if feature_extractor is None:
            meta["features"] = {"extractor": DEFAULT_EXTRACTOR, "pyradiomics": _pyradiomics_version()}
        with folder_lock(folder):
            AuditLog(folder / "submissions.jsonl", "submission log", key_path=key_path).create()
            write_signed_json(folder / "session.json", json_safe(meta), what="session description", key_path=key_path)
        return cls(folder, key_path=key_path)

    @classmethod
    def open(cls, folder: str | os.PathLike, *, verify: bool = True,
             key_path: str | os.PathLike | None = None) -> TrainingSession:
        return cls(folder, verify=verify, key_path=key_path)

    @property
    def case_ids(self) -> list[str]:
        return list(self.meta["cases"])

    def _case(self, case_id: str) -> dict:
        try:
            return self.meta["cases"][case_id]
        except KeyError:
            raise UserError(f"case {case_id!r} is not part of training session {self.meta['name']!r} "
                            f"(cases: {', '.join(self.case_ids)})") from None

    def image_path(self, case_id: str) -> Path:
        """The case's source image (stored relative to the session folder)."""
        c = self._case(case_id)
        p = Path(c["image"])
        full = p if p.is_absolute() else self.folder / p
        if not full.exists():
            raise UserError(f"image of case {case_id!r} not found at {full} (stored as {c['image']!r}, relative to "
                            f"the session folder {self.folder}); move the images together with the session folder")
        return full

    def _checked_image_path(self, case_id: str) -> Path:
        """The case's image path, its SHA-256 recorded at creation checked."""
        c = self._case(case_id)
        path = self.image_path(case_id)
        if c.get("image_sha256") and sha256_file(path) != c["image_sha256"]:
            raise UserError(f"image of case {case_id!r} ({path}) was replaced or changed after the session was "
                            "defined (SHA-256 differs); restore the original image")
        return path

    def _read_case_image(self, case_id: str) -> sitk.Image:
        """The case's image, checked against its SHA-256 (read once per session object)."""
        if case_id not in self._images:
            self._images[case_id] = read_image(self._checked_image_path(case_id), f"image of case {case_id!r}")
        return self._images[case_id]

    def _stem(self, case_id: str) -> str:
        c = self._case(case_id)
        return mask_name(c["patient_id"], c["sequence"], c["content"])[: -len(".nii.gz")]

    def _new_submission_path(self, trainee_id: str, case_id: str) -> Path:
        c = self._case(case_id)
        ext = ".nii.gz" if self.version == 1 else _source_suffix(c["image"])
        return self.folder / "trainees" / check_name(trainee_id, "trainee id", becomes=TRAINEE_BECOMES) / \
            f"{self._stem(case_id)}{ext}"

    # ---- submissions (replayed from the log) -------------------------------------------

    def submissions(self) -> dict[tuple[str, str], dict]:
        """The active submission per (trainee, case): the latest ``submit`` record not
        withdrawn since; in version-1 sessions also masks saved before the log existed."""
        active: dict[tuple[str, str], dict] = {}
        seen: set[tuple[str, str]] = set()
        for r in self._log.records():
            key = (r.get("trainee"), r.get("case_id"))
            seen.add(key)
            if r.get("event") == "submit":
                active[key] = r
            elif r.get("event") == "withdraw":
                active.pop(key, None)
        if self.version == 1 and (self.folder / "trainees").is_dir():
            for tdir in sorted((self.folder / "trainees").iterdir()):
                for cid in self.case_ids:
                    p = tdir / f"{self._stem(cid)}.nii.gz"
                    if (tdir.name, cid) not in seen and p.exists():
                        active[(tdir.name, cid)] = {"event": "submit", "trainee": tdir.name, "case_id": cid,
                                                    "mask": p.relative_to(self.folder).as_posix(), "legacy": True}
        return active

    def trainees(self) -> list[str]:
        """Every trainee who has submitted (or withdrawn) anything in this session."""
        names = {r.get("trainee") for r in self._log.records() if r.get("trainee")}
        names |= {t for (t, _) in self.submissions()}
        return sorted(names)

    def trainee_mask_path(self, trainee_id: str, case_id: str) -> Path:
        """The trainee's submitted mask for the case, or where a new submission will go."""
        sub = self.submissions().get((trainee_id, case_id))
        return self.folder / sub["mask"] if sub else self._new_submission_path(trainee_id, case_id)

    def _require_trainee(self, trainee_id: str) -> None:
        check_name(trainee_id, "trainee id", becomes=TRAINEE_BECOMES)
        known = self.trainees()
        if trainee_id not in known:
            raise UserError(f"trainee {trainee_id!r} has no submission in training session {self.meta['name']!r}; "
                            f"trainees: {', '.join(known) or 'none yet'}")

    # ---- trainee side ------------------------------------------------------------------

    def trainee_cases(self) -> list[dict]:
        """What a trainee sees: case id, patient id, sequence, content and the image path (never
        the reference mask)."""
        out = []
        for cid, c in self.meta["cases"].items():
            p = Path(c["image"])
            out.append({"case_id": cid, "patient_id": c["patient_id"], "sequence": c["sequence"],
                        "content": c["content"], "image": str(p if p.is_absolute() else (self.folder / p).resolve())})
        return out

    def submit(self, trainee_id: str, case_id: str, mask: sitk.Image, *, by: str | None = None,
               mask_name: str = "mask") -> Path:
        """Save a trainee's mask for a case (on the case image's grid; stored with the image's
        exact grid, in the image's file format). A submission is never overwritten: of two
        concurrent submissions exactly one is kept, and a wrong one must be withdrawn first.
        ``mask_name`` names the mask in messages (e.g. "mask t1_case1.nii.gz")."""
        c = self._case(case_id)
        check_name(trainee_id, "trainee id", becomes=TRAINEE_BECOMES)
        grid = read_grid(self.image_path(case_id), f"image of case {case_id!r}")
        if not isinstance(mask, sitk.Image) or not same_grid(mask, grid):
            diff = grid_difference(mask, grid) if isinstance(mask, sitk.Image) else "not an image"
            raise UserError(f"{mask_name} for case {case_id!r} is not on the grid of the case's image {c['image']} "
                            f"({diff}); draw it on that image")
        stored = _on_grid_of(mask, grid)
        if by is not None:
            check_name(by, "--by id", becomes="the name of who submitted in the submission log")
        with folder_lock(self.folder):
            if (trainee_id, case_id) in self.submissions():
                raise UserError(f"trainee {trainee_id!r} already submitted case {case_id!r} "
                                f"({self.trainee_mask_path(trainee_id, case_id)}); submissions are never overwritten "
                                "- withdraw it first (annotation-qc training-withdraw) to submit again")
            path = self._new_submission_path(trainee_id, case_id)
            clean_stale_temps(path.parent)  # leftovers of a killed submission (their writer is gone)
            if path.exists():
                raise UserError(f"{path} exists but is not recorded as a submission (left over from an interrupted "
                                "command?); it is left untouched - move it away and submit again")
            self._upgrade_documents()

            def verify_and_log(tmp: Path) -> None:  # logged after the read-back, before it is published
                verify_image_file(tmp, stored, final=path, what="submission")
                self._log.append({"event": "submit", "trainee": trainee_id, "case_id": case_id,
                                  "by": by or trainee_id, "mask": path.relative_to(self.folder).as_posix(),
                                  "sha256": sha256_file(tmp), "voxels": int(sitk.GetArrayViewFromImage(stored).sum())})

            with atomic_path(path, what="submission", exclusive=True, verify=verify_and_log,
                             exists_message=f"trainee {trainee_id!r} already submitted case {case_id!r}; nothing was "
                             "replaced") as tmp:
                sitk.WriteImage(stored, str(tmp), True)
            with contextlib.suppress(OSError):
                os.chmod(path, 0o444)  # a certified record: read-only
        return path

    def withdraw(self, trainee_id: str, case_id: str, reason: str, *, by: str | None = None) -> dict:
        """Withdraw a wrong submission (logged with its reason; the file is kept under
        ``trainees/<trainee>/withdrawn/``), so the trainee can submit the case again."""
        self._case(case_id)
        check_name(trainee_id, "trainee id", becomes=TRAINEE_BECOMES)
        if not str(reason or "").strip():
            raise UserError("give the reason for the withdrawal (e.g. 'drew the wrong lesion'); it is logged")
        if by is not None:
            check_name(by, "--by id", becomes="the name of who withdrew it in the submission log")
        with folder_lock(self.folder):
            sub = self.submissions().get((trainee_id, case_id))
            if sub is None:
                raise UserError(f"trainee {trainee_id!r} has no submission of case {case_id!r} to withdraw")
            src = self._trainee_file(trainee_id, sub["mask"], "submitted mask")
            n = len(self._log.records()) + 1
            name = src.name
            stem, ext = (name[: -len(".nii.gz")], ".nii.gz") if name.endswith(".nii.gz") else (src.stem, src.suffix)
            dest = src.parent / "withdrawn" / f"{stem}.{n:04d}{ext}"
            if dest.exists():
                raise UserError(f"{dest} already exists (left over from an interrupted command?); move it away first")
            self._upgrade_documents()
            dest.parent.mkdir(parents=True, exist_ok=True)
            sha = sha256_file(src) if src.exists() else None
            if src.exists():
                os.replace(src, dest)
            try:
                return self._log.append({"event": "withdraw", "trainee": trainee_id, "case_id": case_id,
                                         "by": by or trainee_id, "mask": sub["mask"], "sha256": sha,
                                         "moved_to": dest.relative_to(self.folder).as_posix() if sha else None,
                                         "reason": str(reason)})
            except BaseException:
                if sha is not None:  # not logged: the submission stays where it was
                    with contextlib.suppress(OSError):
                        os.replace(dest, src)
                raise

    def listing(self) -> dict:
        """Trainees, cases and what each trainee has submitted (for the instructor)."""
        subs = self.submissions()
        records = self._log.records()
        trainees = {}
        for t in self.trainees():
            trainees[t] = {cid: ({"mask": subs[(t, cid)]["mask"], "time": subs[(t, cid)].get("time")}
                                 if (t, cid) in subs else None) for cid in self.case_ids}
        withdrawn = [{k: r.get(k) for k in ("trainee", "case_id", "time", "reason", "by")}
                     for r in records if r.get("event") == "withdraw"]
        return {"session": self.meta["name"], "cases": self.trainee_cases(), "trainees": trainees,
                "withdrawn": withdrawn, "criteria": self.criteria}

    # ---- evaluation -------------------------------------------------------------------

    def _reference(self, case_id: str) -> sitk.Image:
        c = self._case(case_id)
        p = self._reference_path(case_id)
        if not p.exists() or sha256_file(p) != c["reference_sha256"]:
            raise UserError(f"reference mask {p} of case {case_id!r} is missing or was changed after the session "
                            "was defined")
        return sitk.ReadImage(str(p))

    def _submitted_mask(self, sub: dict) -> sitk.Image:
        p = self._trainee_file(sub.get("trainee"), sub.get("mask"), "submitted mask")
        if not p.exists():
            raise UserError(f"submitted mask {p} (trainee {sub['trainee']!r}, case {sub['case_id']!r}) is missing; "
                            "restore it or withdraw the submission")
        if sub.get("sha256") and sha256_file(p) != sub["sha256"]:
            raise UserError(f"submitted mask {p} (trainee {sub['trainee']!r}, case {sub['case_id']!r}) was changed "
                            "after it was submitted (SHA-256 differs from the submission log)")
        return binary_mask(sitk.ReadImage(str(p)))

    def _reference_features(self, case_id: str, image: sitk.Image, ref: sitk.Image, extractor) -> dict:
        c = self._case(case_id)
        cached = c.get("reference_features")
        info = self.meta.get("features") or {}
        if extractor is None and cached and info.get("pyradiomics") == _pyradiomics_version():
            return cached
        return _features_of(extractor or pyradiomics_shape_firstorder, image, ref, case_id, "reference")

    def _score_case(self, case_id: str, sub: dict, extractor) -> tuple[dict, dict | None, dict | None]:
        from ClinicalMRICommonLib.agreement.segmentation_metrics import border_offsets, compare_masks, lesion_report

        c = self._case(case_id)
        crit = self.criteria
        ref = self._reference(case_id)
        tr = self._submitted_mask(sub)
        if not same_grid(tr, ref):
            raise UserError(f"submitted mask of case {case_id!r} is not on the reference's grid "
                            f"({grid_difference(tr, ref)})")
        tr.CopyInformation(ref)
        m = compare_masks(ref, tr)
        r = sitk.GetArrayViewFromImage(ref) != 0
        t = sitk.GetArrayViewFromImage(tr) != 0
        vox_ml = float(np.prod(ref.GetSpacing())) / 1000.0
        over, under = int((t & ~r).sum()), int((r & ~t).sum())
        lesions = lesion_report(ref, tr)
        border = border_offsets(ref, tr)
        row = {"case_id": case_id, "patient_id": c["patient_id"], "sequence": c["sequence"], "site": c["site"],
               **m, "over_ml": over * vox_ml, "under_ml": under * vox_ml,
               "tendency": _tendency(over, under, int(r.sum())), "dice_pass": m["dice"] >= crit["dice"],
               "lesions": lesions, "border": border, "submitted": sub.get("time")}
        row["slice_coverage"] = _slice_coverage(lesions)
        feats_ref = feats_tr = None
        image = self._read_case_image(case_id)   # a missing or changed image is an error, not a feature problem
        try:
            feats_ref = self._reference_features(case_id, image, ref, extractor)
            if t.any():
                feats_tr = _features_of(extractor or pyradiomics_shape_firstorder, image, tr, case_id,
                                        "the trainee's mask cannot be scored:")
                row["features"] = feature_agreement(feats_ref, feats_tr)
            else:
                row["feature_problem"] = f"case {case_id!r}: the trainee's mask is empty; no features"
        except UserError as exc:
            row["feature_problem"] = str(exc)
            feats_tr = None
        row["hints"] = case_hints(row)
        return row, feats_ref, feats_tr

    def evaluate(self, trainee_id: str,
                 feature_extractor: Callable[[sitk.Image, sitk.Image], dict] | None = None) -> dict:
        """Score a trainee: per-case metrics, lesion-wise feedback, practice hints and the
        overall verdict (see the module docstring)."""
        from ClinicalMRICommonLib.agreement.icc import feature_icc, koo_li

        self._require_trainee(trainee_id)
        crit = self.criteria
        subs = self.submissions()
        rows, feats_ref, feats_tr, missing = [], {}, {}, []
        for cid in self.case_ids:
            sub = subs.get((trainee_id, cid))
            if sub is None:
                missing.append(cid)
                continue
            row, fr, ft = self._score_case(cid, sub, feature_extractor)
            rows.append(row)
            if fr is not None and ft is not None:
                feats_ref[cid], feats_tr[cid] = fr, ft
        reasons, notes = [], []
        if missing:
            reasons.append(f"{len(missing)} of {len(self.meta['cases'])} cases not submitted: {', '.join(missing)}")
        dices = [r["dice"] for r in rows]
        mean_dice = float(np.mean(dices)) if rows else float("nan")
        if rows and mean_dice < crit["dice"]:
            reasons.append(f"mean Dice {mean_dice:.3f} < {crit['dice']:.2f}")
        if crit.get("min_case_dice") is not None:
            for r in rows:
                if r["dice"] < crit["min_case_dice"]:
                    reasons.append(f"case {r['case_id']}: Dice {r['dice']:.3f} < {crit['min_case_dice']:.2f} "
                                   "(minimum per case)")
        for r in rows:
            if r.get("feature_problem"):
                (reasons if crit.get("feature_error") is not None else notes).append(r["feature_problem"])
            elif crit.get("feature_error") is not None and r["features"]["median_error"] is not None \
                    and r["features"]["median_error"] > crit["feature_error"]:
                reasons.append(f"case {r['case_id']}: median relative feature error "
                               f"{r['features']['median_error']:.3f} > {crit['feature_error']:.2f}")
        icc_summary = {"form": crit["icc_form"], "n_cases": len(feats_ref), "n_features": 0, "n_defined": 0,
                       "median": float("nan"), "fraction_ge_threshold": float("nan"), "interpretation": "undefined",
                       "criterion": crit.get("icc") is not None}
        icc_table = None
        if len(feats_ref) >= 2:
            import pandas as pd

            icc_table = feature_icc(pd.DataFrame(feats_ref).T, pd.DataFrame(feats_tr).T, form=crit["icc_form"])
            vals = icc_table["icc"].dropna()
            icc_summary.update(n_features=len(icc_table), n_defined=len(vals))
            if len(vals):
                med = float(vals.median())
                icc_summary.update(median=med, interpretation=koo_li(med),
                                   fraction_ge_threshold=float((vals >= (crit.get("icc") or 0.75)).mean()))
        if crit.get("icc") is not None:
            if not np.isfinite(icc_summary["median"]):
                reasons.append("feature ICC undefined (fewer than 2 cases with features, or constant features)")
            elif icc_summary["median"] < crit["icc"]:
                reasons.append(f"median feature {crit['icc_form']} {icc_summary['median']:.3f} < {crit['icc']:.2f}")
        errs = [r["features"]["median_error"] for r in rows if r.get("features") and
                r["features"]["median_error"] is not None]
        overall = {"cases_submitted": len(rows), "cases_total": len(self.meta["cases"]), "mean_dice": mean_dice,
                   "min_dice": float(min(dices)) if rows else float("nan"),
                   "cases_dice_pass": int(sum(r["dice_pass"] for r in rows)),
                   "median_feature_error": float(np.median(errs)) if errs else None,
                   "lesions_missed": int(sum(r["lesions"]["missed"] for r in rows)),
                   "lesions_extra": int(sum(r["lesions"]["extra"] for r in rows)),
                   "feature_icc": icc_summary, "passed": not reasons, "reasons": reasons, "notes": notes,
                   "hints": session_hints(rows)}
        report = {"session": self.meta["name"], "trainee": trainee_id, "created": utc_now(), "criteria": crit,
                  "warnings": self.meta.get("warnings", []), "cases": rows, "missing_cases": missing,
                  "overall": overall}
        if icc_table is not None:
            report["feature_icc_table"] = {f: (None if not np.isfinite(v) else float(v))
                                           for f, v in icc_table["icc"].items()}
        return report

    def report_folder(self, trainee_id: str) -> Path:
        return self.folder / "reports" / check_name(trainee_id, "trainee id", becomes=TRAINEE_BECOMES)

    def write_report(self, trainee_id: str, out_dir: str | os.PathLike | None = None,
                     feature_extractor: Callable[[sitk.Image, sitk.Image], dict] | None = None,
                     overwrite: bool = False) -> dict:
        """Evaluate and write ``report.json``, ``report.html`` and two overlay PNGs per case
        (zoomed and full size) into ``out_dir`` (default ``<session>/reports/<trainee>``). An
        existing report is kept unless ``overwrite``. Returns the report with the paths."""
        out = Path(out_dir) if out_dir else self.report_folder(trainee_id)
        check_output_path(out, what="report folder", folder=True, overwrite=True)
        for name in ("report.json", "report.html"):
            check_output_path(out / name, overwrite=overwrite, what="training report")
        report = self.evaluate(trainee_id, feature_extractor)
        out.mkdir(parents=True, exist_ok=True)
        subs = self.submissions()
        for row in report["cases"]:
            cid = row["case_id"]
            zoom, full = out / f"{cid}_overlay.png", out / f"{cid}_overlay_full.png"
            shown = overlay_png(self._read_case_image(cid), self._reference(cid),
                                self._submitted_mask(subs[(trainee_id, cid)]), zoom, full_png=full,
                                title=f"{cid} ({row['sequence']}): Dice {row['dice']:.3f}")
            row["overlay"], row["overlay_full"], row["overlay_slices"] = zoom.name, full.name, shown
        write_json_atomic(out / "report.json", json_safe(report))
        write_text_atomic(out / "report.html", report_html(report, out))
        report["files"] = {"json": str(out / "report.json"), "html": str(out / "report.html")}
        return report

    # ---- across trainees ------------------------------------------------------------------

    def summary(self, feature_extractor: Callable[[sitk.Image, sitk.Image], dict] | None = None) -> dict:
        """All trainees x all cases: Dice, HD95, lesions missed/extra, pass/fail per trainee and
        the hardest cases (lowest mean Dice over the trainees who submitted them)."""
        trainees = [t for t in self.trainees() if any(k[0] == t for k in self.submissions())]
        if not trainees:
            raise UserError(f"training session {self.meta['name']!r} has no submissions yet")
        table, verdicts = [], {}
        for t in trainees:
            rep = self.evaluate(t, feature_extractor)
            ov = rep["overall"]
            verdicts[t] = {"passed": ov["passed"], "reasons": ov["reasons"], "mean_dice": ov["mean_dice"],
                           "min_dice": ov["min_dice"], "cases_submitted": ov["cases_submitted"],
                           "hints": ov["hints"]}
            by_case = {r["case_id"]: r for r in rep["cases"]}
            for cid in self.case_ids:
                r = by_case.get(cid)
                table.append({"trainee": t, "case_id": cid, "submitted": r is not None,
                              "dice": r["dice"] if r else None, "hd95_mm": r["hd95_mm"] if r else None,
                              "lesions_reference": r["lesions"]["n_reference"] if r else None,
                              "lesions_missed": r["lesions"]["missed"] if r else None,
                              "lesions_extra": r["lesions"]["extra"] if r else None,
                              "feature_error": (r.get("features") or {}).get("median_error") if r else None,
                              "passed": ov["passed"]})
        hardest = []
        for cid in self.case_ids:
            ds = [row["dice"] for row in table if row["case_id"] == cid and row["dice"] is not None]
            missed = [row["lesions_missed"] for row in table if row["case_id"] == cid and row["submitted"]]
            if ds:
                hardest.append({"case_id": cid, "site": self._case(cid)["site"], "mean_dice": float(np.mean(ds)),
                                "min_dice": float(min(ds)), "trainees": len(ds),
                                "below_dice_threshold": int(sum(d < self.criteria["dice"] for d in ds)),
                                "lesions_missed": int(sum(missed))})
        hardest.sort(key=lambda h: h["mean_dice"])
        return {"session": self.meta["name"], "created": utc_now(), "criteria": self.criteria,
                "trainees": verdicts, "cases": self.case_ids, "table": table, "hardest_cases": hardest}

    def write_summary(self, out_dir: str | os.PathLike | None = None, overwrite: bool = False,
                      feature_extractor: Callable[[sitk.Image, sitk.Image], dict] | None = None) -> dict:
        """:meth:`summary` written as ``summary.csv`` (trainee x case rows), ``summary.html`` and
        ``summary.json`` into ``out_dir`` (default ``<session>/summary``); an existing summary
        is kept unless ``overwrite``."""
        import csv
        import io

        out = Path(out_dir) if out_dir else self.folder / "summary"
        check_output_path(out, what="summary folder", folder=True, overwrite=True)
        names = ("summary.csv", "summary.html", "summary.json")
        for name in names:
            check_output_path(out / name, overwrite=overwrite, what="training summary")
        summ = self.summary(feature_extractor)
        buf = io.StringIO()
        cols = list(summ["table"][0])
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        for row in summ["table"]:
            w.writerow({k: ("" if row[k] is None else (f"{row[k]:.4f}" if isinstance(row[k], float) else row[k]))
                        for k in cols})
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "summary.csv", buf.getvalue())
        write_text_atomic(out / "summary.html", summary_html(summ))
        write_json_atomic(out / "summary.json", json_safe(summ))
        summ["files"] = {n.split(".")[1]: str(out / n) for n in names}
        return summ


# ---------------------------------------------------------------------------------------
# Feedback derived from the numbers


def _tendency(over: int, under: int, n_ref: int) -> str:
    """"over-segments" / "under-segments" when one kind of error dominates (> 2x and > 5% of
    the reference), else "balanced"."""
    if n_ref == 0:
        return "balanced"
    if over > 2 * under and over > 0.05 * n_ref:
        return "over-segments"
    if under > 2 * over and under > 0.05 * n_ref:
        return "under-segments"
    return "balanced"


def _slice_coverage(lesions: dict) -> dict:
    """Over the detected reference lesions that span at least 2 slices: how many of their
    first/last slices the trainee annotated, and the share of all their slices covered."""
    ends = missed = total = covered = 0
    for les in lesions["reference_lesions"]:
        if not les["detected"]:
            continue
        total += les["slices_total"]
        covered += les["slices_covered"]
        if les["slices_total"] >= 2:
            ends += 2
            missed += (not les["first_slice_covered"]) + (not les["last_slice_covered"])
    return {"end_slices": ends, "end_slices_missed": missed, "slices_total": total, "slices_covered": covered,
            "fraction_covered": covered / total if total else None}


def _ml(v: float) -> str:
    return f"{v:.3f} mL" if v < 1 else f"{v:.2f} mL"


def _where(les: dict) -> str:
    r, a, s = les["centroid_ras"]
    k0, k1 = les["slices"]
    sl = f"slice {k0}" if k0 == k1 else f"slices {k0}-{k1}"
    return f"{_ml(les['volume_ml'])} at RAS ({r:.1f}, {a:.1f}, {s:.1f}), {sl}"


def case_hints(row: dict) -> list[str]:
    """Short practice hints for one case, derived from its numbers."""
    hints = []
    les = row["lesions"]
    missed = [x for x in les["reference_lesions"] if not x["detected"]]
    found = [x for x in les["reference_lesions"] if x["detected"]]
    for x in sorted(missed, key=lambda x: x["volume_ml"]):
        hints.append(f"missed lesion: {_where(x)}")
    for x in les["extra_lesions"]:
        hints.append(f"extra lesion (not in the reference): {_where(x)}")
    b = row["border"]
    if row["tendency"] == "over-segments" and b["outside_mm"]:
        hints.append(f"border drawn ~{b['outside_mm']:.1f} mm outside the reference")
    elif row["tendency"] == "under-segments" and b["inside_mm"]:
        hints.append(f"border drawn ~{b['inside_mm']:.1f} mm inside the reference")
    sc = row["slice_coverage"]
    if sc["end_slices_missed"]:
        hints.append(f"first/last slice not annotated on {sc['end_slices_missed']} of {sc['end_slices']} lesion ends")
    if missed and found and max(x["volume_ml"] for x in missed) < np.median([x["volume_ml"] for x in found]):
        hints.append("the missed lesions are smaller than the ones found")
    return hints


def session_hints(rows: list[dict]) -> list[str]:
    """What to practise, over all submitted cases (the most useful sentences first)."""
    hints = []
    missed = [x for r in rows for x in r["lesions"]["reference_lesions"] if not x["detected"]]
    found = [x for r in rows for x in r["lesions"]["reference_lesions"] if x["detected"]]
    n_ref = len(missed) + len(found)
    if missed:
        vm = [x["volume_ml"] for x in missed]
        cases = sorted({r["case_id"] for r in rows for x in r["lesions"]["reference_lesions"] if not x["detected"]})
        small = found and max(vm) < float(np.median([x["volume_ml"] for x in found]))
        if small:
            hints.append(f"You miss small lesions: {len(missed)} of {n_ref} reference lesions missed (cases "
                         f"{', '.join(cases)}), all of them {_ml(max(vm))} or smaller, while the lesions you found "
                         f"have a median of {_ml(float(np.median([x['volume_ml'] for x in found])))}. Search every "
                         "slice for small lesions before you submit.")
        else:
            hints.append(f"You missed {len(missed)} of {n_ref} reference lesions (cases {', '.join(cases)}; sizes "
                         f"{_ml(min(vm))} to {_ml(max(vm))}); the report lists where each one is.")
    extra = [x for r in rows for x in r["lesions"]["extra_lesions"]]
    if extra:
        cases = sorted({r["case_id"] for r in rows if r["lesions"]["extra_lesions"]})
        hints.append(f"You drew {len(extra)} lesion(s) the reference does not have (cases {', '.join(cases)}; median "
                     f"{_ml(float(np.median([x['volume_ml'] for x in extra])))}); check them against the other "
                     "sequences before labelling.")
    over = [r for r in rows if r["tendency"] == "over-segments" and r["border"]["outside_mm"]]
    under = [r for r in rows if r["tendency"] == "under-segments" and r["border"]["inside_mm"]]
    if over and len(over) >= len(under):
        mm = float(np.median([r["border"]["outside_mm"] for r in over]))
        hints.append(f"You over-segment borders by ~{mm:.1f} mm ({len(over)} of {len(rows)} cases: "
                     f"{', '.join(r['case_id'] for r in over)}); for unclear borders label only what is certainly "
                     "lesion.")
    if under and len(under) > len(over):
        mm = float(np.median([r["border"]["inside_mm"] for r in under]))
        hints.append(f"You under-segment: the reference border lies ~{mm:.1f} mm beyond yours ({len(under)} of "
                     f"{len(rows)} cases: {', '.join(r['case_id'] for r in under)}); widen the window to see the "
                     "whole lesion edge.")
    ends = sum(r["slice_coverage"]["end_slices"] for r in rows)
    ends_missed = sum(r["slice_coverage"]["end_slices_missed"] for r in rows)
    if ends_missed:
        cases = [r["case_id"] for r in rows if r["slice_coverage"]["end_slices_missed"]]
        hints.append(f"You miss the first/last slices of lesions: {ends_missed} of {ends} lesion ends not "
                     f"annotated (cases {', '.join(cases)}); the consensus says never to miss the first and last "
                     "slices - scroll one slice beyond each end.")
    return hints


# ---------------------------------------------------------------------------------------
# Pictures


OVERLAY_COLOURS = {"agree": (30, 200, 30), "over": (230, 30, 30), "under": (30, 80, 240)}
OVERLAY_LABELS = {"agree": "both (agree)", "over": "trainee only (over-segmented)",
                  "under": "reference only (under-segmented)"}


def _rgb_slice(sl: np.ndarray, r: np.ndarray, t: np.ndarray, lo: float, hi: float) -> np.ndarray:
    grey = np.clip((sl - lo) / (hi - lo if hi > lo else 1.0), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    for sel, key in ((r & t, "agree"), (t & ~r, "over"), (r & ~t, "under")):
        rgb[sel] = 0.4 * rgb[sel] + 0.6 * np.asarray(OVERLAY_COLOURS[key], dtype=float) / 255.0
    return rgb


def overlay_png(image: sitk.Image, reference: sitk.Image, test: sitk.Image, out_png: str | os.PathLike,
                full_png: str | os.PathLike | None = None, *, context_mm: float = 15.0, title: str = "") -> dict:
    """Overlay figures of two acquired slices: the one with the largest annotated area
    (reference or test) and the one with the most disagreement; the image in grey with
    agreement (green), over-segmentation (test only, red) and under-segmentation (reference
    only, blue), a legend and the slice numbers (k index, 0-based as in Slicer).

    ``out_png`` is zoomed to the lesions' bounding box plus ``context_mm`` of surroundings
    (at least 8 voxels), large enough to see a 1-voxel rim; ``full_png`` (optional) shows the
    whole slices. Pixels are drawn square in millimetres. Drawn with matplotlib's Agg canvas
    (no window, no global backend change) and written atomically. Returns the slice indices
    and the zoom box."""
    from ClinicalMRICommonLib.files import atomic_path
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    img = sitk.GetArrayFromImage(image).astype(float)
    r = sitk.GetArrayFromImage(reference) != 0
    t = sitk.GetArrayFromImage(test) != 0
    if img.ndim == 2:
        img, r, t = img[None], r[None], t[None]
    per_slice = lambda m: m.reshape(m.shape[0], -1).sum(axis=1)
    k_area = int(np.argmax(per_slice(r | t)))
    dis = per_slice(r ^ t)
    k_dis = int(np.argmax(dis)) if dis.any() else k_area
    union = r | t
    sx, sy = image.GetSpacing()[:2]
    if union.any():
        _, ys, xs = np.nonzero(union)
        my, mx = max(8, round(context_mm / sy)), max(8, round(context_mm / sx))
        box = (max(0, int(ys.min()) - my), min(img.shape[1], int(ys.max()) + my + 1),
               max(0, int(xs.min()) - mx), min(img.shape[2], int(xs.max()) + mx + 1))
    else:
        box = (0, img.shape[1], 0, img.shape[2])
    shown = list(dict.fromkeys((k_area, k_dis)))
    lo, hi = np.percentile(img[shown], [1, 99]) if img.size else (0.0, 1.0)
    captions = {k_area: "largest annotated area", k_dis: f"most disagreement ({int(dis[k_dis])} voxels)"}
    if k_area == k_dis:
        captions[k_area] = "largest area and most disagreement"

    def draw(path, crop):
        y0, y1, x0, x1 = crop
        h_mm, w_mm = (y1 - y0) * sy, (x1 - x0) * sx
        panel_w = 4.2
        panel_h = max(2.5, min(8.0, panel_w * h_mm / max(w_mm, 1e-6)))
        fig = Figure(figsize=(panel_w * len(shown), panel_h + 1.2), dpi=110)
        FigureCanvasAgg(fig)
        for i, k in enumerate(shown, start=1):
            ax = fig.add_subplot(1, len(shown), i)
            ax.imshow(_rgb_slice(img[k, y0:y1, x0:x1], r[k, y0:y1, x0:x1], t[k, y0:y1, x0:x1], lo, hi),
                      interpolation="nearest", aspect=sy / sx, origin="upper")
            ax.set_title(f"slice k={k}: {captions[k]}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.legend(handles=[Patch(color=np.asarray(OVERLAY_COLOURS[k]) / 255.0, label=OVERLAY_LABELS[k])
                            for k in ("agree", "over", "under")], loc="lower center", ncol=3, fontsize=8,
                   frameon=False)
        if title:
            fig.suptitle(title, fontsize=10)
        fig.subplots_adjust(left=0.02, right=0.98, top=0.86 if title else 0.92, bottom=0.12, wspace=0.05)
        with atomic_path(path) as tmp:
            fig.savefig(str(tmp), format="png")

    draw(out_png, box)
    if full_png is not None:
        draw(full_png, (0, img.shape[1], 0, img.shape[2]))
    return {"largest_area_slice": k_area, "most_disagreement_slice": k_dis, "zoom_box_yx": list(box)}


# ---------------------------------------------------------------------------------------
# HTML


def _f(v, nd=3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{nd}f}"


def _criteria_text(crit: dict) -> str:
    parts = [f"mean Dice \u2265 {crit['dice']:.2f}"]
    if crit.get("min_case_dice") is not None:
        parts.append(f"Dice of every case \u2265 {crit['min_case_dice']:.2f}")
    if crit.get("feature_error") is not None:
        parts.append(f"median relative feature error of every case \u2264 {crit['feature_error']:.2f}")
    if crit.get("icc") is not None:
        parts.append(f"median {crit['icc_form']} of radiomics features \u2265 {crit['icc']:.2f}")
    return "; ".join(parts) + "; all cases submitted"


def _verdict(passed: bool):
    from ClinicalMRICommonLib.report import Cell

    return Cell("PASSED" if passed else "NOT PASSED", bold=True, color="#1a7f37" if passed else "#b42318")


def report_html(report: dict, folder: str | os.PathLike | None = None) -> str:
    """A self-contained HTML page of a training report (one page of ClinicalMRICommonLib.report,
    the extension's one template): the PASSED / NOT PASSED banner with its reasons, what to
    practise, the per-case and per-lesion tables and the overlays, embedded from ``folder``
    (where :meth:`TrainingSession.write_report` wrote them; the full-size overlay stays
    beside the page)."""
    from ClinicalMRICommonLib.report import Cell, Report

    ov = report["overall"]
    verdict = "PASSED" if ov["passed"] else "NOT PASSED"
    rep = Report(f"Training report: {report['trainee']}", subtitle=f"Session {report['session']}, {report['created']}",
                 status=("passed" if ov["passed"] else "failed", verdict),
                 footer="Written by AnnotationQC's training session; every number is in report.json beside this page.")
    v = rep.section("verdict", "Verdict")
    v.bullets(ov["reasons"] or ["all criteria met"])
    v.text(f"Criteria: {_criteria_text(report['criteria'])}.")
    icc = ov["feature_icc"]
    v.text(f"Cases submitted {ov['cases_submitted']} / {ov['cases_total']}; mean Dice {_f(ov['mean_dice'])} "
           f"(min {_f(ov['min_dice'])}); lesions missed {ov['lesions_missed']}, extra {ov['lesions_extra']}; "
           f"median relative feature error {_f(ov['median_feature_error'])}; feature {icc['form']} over the cases "
           f"(for information{'; a criterion of this session' if icc['criterion'] else ''}): median "
           f"{_f(icc['median'])} ({icc['interpretation']}).")
    rep.section("practise", "What to practise").bullets(ov["hints"] or ["no systematic error found"])
    if ov.get("notes") or report.get("warnings"):
        n = rep.section("notes", "Notes")
        if ov.get("notes"):
            n.bullets(ov["notes"])
        for w in report.get("warnings", []):
            n.warning(w, lead="Session warning:")
    rows = []
    for c in report["cases"]:
        les, fe = c["lesions"], c.get("features") or {}
        rows.append([c["case_id"], c["sequence"], c["site"], _f(c["dice"]), _f(c["hd95_mm"], 2), _f(c["assd_mm"], 2),
                     _f(c["volume_ref_ml"]), _f(c["volume_test_ml"]), _f(c["over_ml"]), _f(c["under_ml"]),
                     c["tendency"], f"{les['matched']}/{les['n_reference']}", les["missed"], les["extra"],
                     _f(fe.get("median_error")), "yes" if c["dice_pass"] else "no"])
    rep.section("cases", "Per case").table(
        ["case", "sequence", "site", "Dice", "HD95 mm", "ASSD mm", "ref mL", "trainee mL", "over mL", "under mL",
         "tendency", "lesions found", "missed", "extra", "feature error", "Dice pass"], rows,
        num_cols=[3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14])
    lesion_rows = []
    for c in report["cases"]:
        for kind, items in (("missed", [x for x in c["lesions"]["reference_lesions"] if not x["detected"]]),
                            ("extra", c["lesions"]["extra_lesions"])):
            for x in items:
                ras = ", ".join(f"{q:.1f}" for q in x["centroid_ras"])
                lesion_rows.append([c["case_id"], kind, x["voxels"], _f(x["volume_ml"], 4), f"({ras})",
                                    f"{x['slices'][0]}\u2013{x['slices'][1]}"])
    les = rep.section("lesions", "Missed and extra lesions")
    if lesion_rows:
        les.table(["case", "lesion", "voxels", "mL", "centre RAS (mm)", "slices k"], lesion_rows, num_cols=[2, 3])
    else:
        les.text("No missed or extra lesions.")
    o = rep.section("overlays", "Where the trainee over- or under-segments")
    o.text("Per case: the slice with the largest annotated area and the slice with the most disagreement, zoomed "
           "to the lesion (the full slice is the _overlay_full.png file beside this page). Green: agree; red: "
           "trainee only (over-segmented); blue: reference only (under-segmented).")
    shown = [c for c in report["cases"] if c.get("overlay")]
    for c, col in zip(shown, o.columns(len(shown)) if shown else []):
        caption = f"{c['case_id']}: Dice {_f(c['dice'])}, {c['tendency']} (full size: {c['overlay_full']})"
        png = Path(folder) / c["overlay"] if folder is not None else None
        if png is not None and png.is_file():
            col.figure(png.read_bytes(), alt=f"overlay {c['case_id']}", caption=caption)
        else:
            col.text(f"{caption}; overlay file {c['overlay']}", muted=True)
        if c["hints"]:
            col.bullets(c["hints"])
    return rep.render()


def summary_html(summ: dict) -> str:
    """The session summary as one HTML page (ClinicalMRICommonLib.report): trainee x case
    Dice / HD95 / lesions missed, PASSED / NOT PASSED per trainee and the hardest cases."""
    from ClinicalMRICommonLib.report import Cell, Report

    cases = summ["cases"]
    n_pass = sum(1 for t in summ["trainees"].values() if t["passed"])
    n = len(summ["trainees"])
    rep = Report(f"Training summary: {summ['session']}", subtitle=f"{summ['created']}",
                 status=("passed" if n_pass == n else "failed", f"{n_pass} of {n} trainee(s) PASSED"),
                 footer="Written by AnnotationQC's training session; the numbers are in summary.json and summary.csv.")
    body = []
    for t, v in summ["trainees"].items():
        cells = []
        for c in cases:
            r = next(x for x in summ["table"] if x["trainee"] == t and x["case_id"] == c)
            cells.append(f"{_f(r['dice'])} / {_f(r['hd95_mm'], 1)} / {r['lesions_missed']}"
                         if r["submitted"] else Cell("not submitted", muted=True))
        body.append([t, *cells, _f(v["mean_dice"]), _verdict(v["passed"]), "; ".join(v["reasons"])])
    tc = rep.section("trainees", "Trainees x cases")
    tc.text(f"Criteria: {_criteria_text(summ['criteria'])}.")
    tc.table(["trainee", *[f"{c} Dice / HD95 / missed" for c in cases], "mean Dice", "verdict", "reasons"], body,
             num_cols=range(1, len(cases) + 2))
    hard = rep.section("hardest", "Hardest cases")
    hard.text("Cases by mean Dice over the trainees who submitted them (lowest first).")
    hard.table(["case", "site", "mean Dice", "min Dice", "below the Dice threshold", "lesions missed (all trainees)"],
               [[h["case_id"], h["site"], _f(h["mean_dice"]), _f(h["min_dice"]),
                 f"{h['below_dice_threshold']} / {h['trainees']}", h["lesions_missed"]] for h in summ["hardest_cases"]],
               num_cols=[2, 3, 4, 5])
    return rep.render()
