"""The loop folder: cases, the standard set, rounds, proposals and expert reviews, with an
audit trail that makes every change visible and never loses or replaces a human annotation.

Layout::

    LOOP/
      loop.json                      format, sequences, label set (written once by init)
      cases.json                     cases: patient id, images per sequence (path, SHA-256), grid
      audit.jsonl                    hash-chained log of every event (audit.py); the state is
                                     replayed from it
      images/<case>_<seq>_resampled.nii.gz   images resampled onto the case's first image
      standard/<case>_<seq>_<content>.nii.gz the standard set (init masks, imported consensus or
                                     final masks, accepted reviews); read-only, never replaced
      rounds/round-NNN/model/        the round's network (model.py: safetensors + manifest)
      proposals/round-NNN/           <case>_<seq>_proposal.nii.gz, <case>_<seq>_uncertainty.nii.gz,
                                     prelabel.json (per-case scores and descriptors)

``<seq>`` is the case's first (reference) sequence and ``<content>`` the loop's content
(``lesion`` for binary masks, ``labels`` for CNS-tumour label maps), after the consensus'
naming ``<patient id>_<sequence>_<content>``.

Case states: ``pool`` (no standard annotation yet: pre-labelled, queued, reviewed),
``standard`` (in the standard set) and ``redraw`` (a reviewer rejected the proposal; the case
waits for a mask drawn from scratch, accepted with verdict ``redrawn``).

Masks: binary (0/1) for a ``binary`` loop; for a CNS-tumour loop a label map whose value k is
the k-th label of the consensus' label set (:mod:`AnnotationQCLib.terminology`, e.g.
intra-axial: 1 whole tumour, 2 tumour body, 3 enhancing, 4 non-enhancing; each voxel carries
its most specific label). A mask must lie on its case's first image's grid.

Numpy and SimpleITK only; torch/MONAI live in model.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.files import atomic_path, sha256_file, verify_image_file, write_image_atomic, write_json_atomic
from ClinicalMRICommonLib.grids import Grid, grid_difference, same_grid
from ClinicalMRICommonLib.images import check_finite, read_image

from ..sessions import check_name, read_json_document
from .audit import AuditTrail, folder_lock, utc_now

FORMAT = "annotationqc-loop/1"
VERDICTS = ("accepted", "corrected", "redrawn")
LABEL_MODES = ("binary", "intra-axial", "meningeal")
IMAGE_COLUMN = re.compile(r"^image(?:_(.+))?$")
MASK_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")


def _rel(folder: Path, path: Path) -> str:
    return path.relative_to(folder).as_posix()


def round_name(number: int) -> str:
    return f"round-{int(number):03d}"


# ---------------------------------------------------------------------------------------
# Masks


def label_values(labels: dict) -> dict[int, str]:
    """Mask value -> label key of a loop's label set (binary: {1: content})."""
    if labels["mode"] == "binary":
        return {1: labels["content"]}
    return {i + 1: key for i, key in enumerate(labels["keys"])}


def check_mask_image(mask: sitk.Image, reference, labels: dict, what: str) -> sitk.Image:
    """A mask as the loop stores it (UInt8 on the reference grid, values within the label
    set); UserError naming ``what`` for another grid, non-integer or unknown values."""
    if mask.GetNumberOfComponentsPerPixel() != 1 or mask.GetDimension() != 3:
        raise UserError(f"{what} is not a 3-D scalar label image")
    if not same_grid(mask, reference):
        raise UserError(f"{what} is on a different grid than the case's first image ({grid_difference(mask, reference)}); "
                        "masks must be drawn on (or resampled onto) that image's grid")
    arr = sitk.GetArrayViewFromImage(mask)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise UserError(f"{what} has NaN/infinite voxels; it is not a label mask")
    values = np.unique(arr)
    allowed = set(label_values(labels)) | {0}
    bad = [v for v in values.tolist() if v not in allowed]
    if bad:
        shown = ", ".join(f"{v:g}" for v in values[:8].tolist()) + (", ..." if len(values) > 8 else "")
        if labels["mode"] == "binary":
            raise UserError(f"{what} is not binary (values {shown}); save it with 0 outside and 1 inside")
        raise UserError(f"{what} has values {shown}; a {labels['mode']} label map uses 0 and "
                        + ", ".join(f"{v} {k}" for v, k in label_values(labels).items()))
    out = sitk.GetImageFromArray(np.asarray(arr).astype(np.uint8))
    out.CopyInformation(mask)
    return out


def read_loop_mask(path: str | os.PathLike, reference, labels: dict, what: str) -> sitk.Image:
    return check_mask_image(read_image(path, what), reference, labels, f"{what} {path}")


def mask_agreement(proposal: np.ndarray, expert: np.ndarray, labels: dict) -> dict:
    """How much the expert changed the proposal: foreground Dice (any label), Dice per label
    (label maps), changed voxels (label differs) and the changed fraction = changed voxels /
    voxels labelled in either mask (0 when neither labels anything)."""
    from ClinicalMRICommonLib.agreement.segmentation_metrics import dice

    def _img(a):
        return sitk.GetImageFromArray(a.astype(np.uint8))

    changed = int(np.count_nonzero(proposal != expert))
    either = int(np.count_nonzero((proposal != 0) | (expert != 0)))
    out = {"dice": float(dice(_img(expert != 0), _img(proposal != 0))), "changed_voxels": changed,
           "changed_fraction": (changed / either) if either else 0.0, "expert_voxels": int(np.count_nonzero(expert)),
           "proposal_voxels": int(np.count_nonzero(proposal))}
    if labels["mode"] != "binary":
        out["dice_per_label"] = {key: float(dice(_img(expert == v), _img(proposal == v)))
                                 for v, key in label_values(labels).items()}
    return out


def _publish(image: sitk.Image, final: Path) -> str:
    """Write ``image`` to ``final`` without ever replacing a file there, through the extension's
    verified atomic writer (read back before it is published; exclusive: a finished temporary
    file linked to the name). Read-only afterwards. Returns its SHA-256."""
    with atomic_path(final, what="standard annotation", exclusive=True,
                     verify=lambda tmp: verify_image_file(tmp, image, final=final, what="standard annotation"),
                     exists_message=f"{final} already exists without a record in the loop's audit trail (left "
                                    "over from an interrupted command?); it is left untouched - move it away "
                                    "and retry") as tmp:
        sitk.WriteImage(image, str(tmp), True)
    with contextlib.suppress(OSError):
        os.chmod(final, 0o444)
    return sha256_file(final)


# ---------------------------------------------------------------------------------------
# The cases table


def _read_cases_csv(path: Path) -> tuple[list[dict], list[str]]:
    """Rows (dicts of stripped strings: ids kept as written, "001" stays "001") and the
    column names, through the extension's one CSV reader."""
    from ClinicalMRICommonLib.tables import read_csv_table

    df = read_csv_table(path, "cases", str_columns=True)
    columns = [str(c).strip() for c in df.columns]
    rows = [{k: v.strip() for k, v in zip(columns, values)} for values in df.itertuples(index=False, name=None)]
    return rows, columns


def _sequences_from_columns(columns: list[str], path: Path, single_name: str) -> list[tuple[str, str]]:
    if "case_id" not in columns:
        raise UserError(f"cases file {path} lacks the column case_id (columns: {', '.join(columns)}); needed: case_id, "
                        "image or image_<sequence> (e.g. image_flair,image_t1c), optional mask and patient_id")
    found = []
    for c in columns:
        m = IMAGE_COLUMN.match(c)
        if m:
            found.append((c, m.group(1) if m.group(1) else single_name))
    if not found:
        raise UserError(f"cases file {path} has no image column (columns: {', '.join(columns)}); name it image, or "
                        "image_<sequence> for several sequences (e.g. image_dwi,image_adc)")
    if "image" in columns and len(found) > 1:
        raise UserError(f"cases file {path} mixes an 'image' column with image_<sequence> columns; name every image "
                        "column image_<sequence>")
    names = [s for _, s in found]
    for s in names:
        check_name(s, f"sequence (column image_{s} of {path})")
    if len({s.lower() for s in names}) != len(names):
        raise UserError(f"cases file {path} names a sequence twice ({', '.join(names)})")
    return found


class LoopFolder:
    """A human-in-the-loop annotation folder. Create with :meth:`create`, open with the
    constructor."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise UserError(f"loop folder not found: {self.folder}; create it with 'annotation-qc loop init'")
        self.meta = read_json_document(self.folder / "loop.json", FORMAT,
                                       f"{self.folder} is not a loop folder (no loop.json); create it with "
                                       "'annotation-qc loop init'")
        try:
            self.cases = json.loads((self.folder / "cases.json").read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            raise UserError(f"{self.folder / 'cases.json'} is missing or damaged; restore the loop folder") from None
        self.audit = AuditTrail(self.folder / "audit.jsonl")

    # ---- creation ----------------------------------------------------------------------

    @classmethod
    def create(cls, folder: str | os.PathLike, cases_csv: str | os.PathLike, *, sequence: str = "image",
               labels: str = "binary", content: str = "lesion", by: str = "") -> tuple[LoopFolder, dict]:
        """A new loop folder from a cases CSV; returns the folder and a summary (cases,
        standard, pool, warnings). The folder is built beside the target and moved into place
        at the end, so a failed init leaves nothing behind."""
        folder = Path(folder)
        if (folder / "loop.json").exists():
            raise UserError(f"{folder} already holds a loop; open it, or choose a new folder for a new loop")
        if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
            raise UserError(f"{folder} exists and is not an empty folder; choose a new folder for the loop")
        if labels not in LABEL_MODES:
            raise UserError(f"label set {labels!r} unknown; use one of {', '.join(LABEL_MODES)}")
        check_name(sequence, "sequence name")
        if str(by).strip():
            by = check_name(str(by).strip(), "reader id (--by)", becomes="the reader recorded in the audit trail")
        if labels == "binary":
            label_info = {"mode": "binary", "content": check_name(content, "content")}
        else:
            from ..terminology import label_set

            label_info = {"mode": labels, "content": "labels", "keys": [lab.key for lab in label_set(labels)],
                          "names": [lab.name for lab in label_set(labels)]}
        csv_path = Path(cases_csv)
        rows, columns = _read_cases_csv(csv_path)
        image_cols = _sequences_from_columns(columns, csv_path, sequence)
        base = csv_path.resolve().parent
        warnings: list[str] = []

        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.init.", dir=folder.parent))
        try:
            cases: dict[str, dict] = {}
            masks: dict[str, tuple[Path, sitk.Image]] = {}
            for number, row in enumerate(rows, start=2):
                case_id = row.get("case_id", "")
                if not case_id:
                    raise UserError(f"cases file {csv_path} line {number} has no case_id")
                check_name(case_id, f"case id (line {number} of {csv_path})")
                if case_id in cases:
                    raise UserError(f"case id {case_id!r} appears twice in cases file {csv_path}")
                patient = row.get("patient_id") or case_id
                check_name(patient, f"patient id of case {case_id!r}")
                images, reference = {}, None
                for col, seq in image_cols:
                    cell = row.get(col, "")
                    if not cell:
                        raise UserError(f"case {case_id!r} has no {col} in cases file {csv_path} (line {number}); "
                                        "every case needs every sequence")
                    p = Path(cell)
                    p = p if p.is_absolute() else base / p
                    what = f"{seq} image of case {case_id!r}"
                    img = read_image(p, what)
                    check_finite(img, p, what)
                    if img.GetDimension() != 3:
                        raise UserError(f"{what} ({p}) is {img.GetDimension()}-D; the loop needs 3-D images")
                    entry = {"path": str(p.resolve()), "sha256": sha256_file(p)}
                    if reference is None:
                        reference = img
                    elif not same_grid(img, reference):
                        warnings.append(f"case {case_id}: {seq} image {p} is on another grid than "
                                        f"{image_cols[0][1]} ({grid_difference(img, reference)}); resampled onto it "
                                        "(linear interpolation)")
                        res = sitk.Resample(img, reference, sitk.Transform(), sitk.sitkLinear, 0.0,
                                            sitk.sitkFloat32)
                        target = tmp / "images" / f"{case_id}_{seq}_resampled.nii.gz"
                        write_image_atomic(res, target)
                        entry = {"path": _rel(tmp, target), "sha256": sha256_file(target), "resampled_from": entry}
                    images[seq] = entry
                grid = Grid.of(reference)
                cases[case_id] = {"patient_id": patient, "images": images,
                                  "grid": {"size": grid.size, "spacing": grid.spacing, "origin": grid.origin,
                                           "direction": grid.direction}}
                if row.get("mask"):
                    mp = Path(row["mask"])
                    mp = mp if mp.is_absolute() else base / mp
                    masks[case_id] = (mp, read_loop_mask(mp, reference, label_info, f"mask of case {case_id!r}"))
            meta = {"format": FORMAT, "created": utc_now(), "sequences": [s for _, s in image_cols],
                    "reference_sequence": image_cols[0][1], "labels": label_info,
                    "cases_csv": str(csv_path.resolve())}
            write_json_atomic(tmp / "loop.json", meta)
            write_json_atomic(tmp / "cases.json", cases)
            audit = AuditTrail(tmp / "audit.jsonl")
            audit.create()
            audit.append("init", by or "loop", {"cases": len(cases), "sequences": meta["sequences"],
                                                       "labels": label_info, "cases_csv": meta["cases_csv"],
                                                       "cases_sha256": sha256_file(tmp / "cases.json"),
                                                       "warnings": warnings})
            loop = cls.__new__(cls)
            loop.folder, loop.meta, loop.cases, loop.audit = tmp, meta, cases, audit
            for case_id, (mp, mask) in masks.items():
                loop._add_standard(case_id, mask, "standard", by or "loop", {"source": "init",
                                                                             "origin": str(mp.resolve())})
            if folder.exists():
                folder.rmdir()  # the empty target folder
            os.replace(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        loop = cls(folder)
        return loop, {"folder": str(folder), "cases": len(cases), "standard": len(masks),
                      "pool": len(cases) - len(masks), "sequences": meta["sequences"], "labels": label_info["mode"],
                      "warnings": warnings}

    # ---- look-ups --------------------------------------------------------------------------

    @property
    def labels(self) -> dict:
        return self.meta["labels"]

    @property
    def sequences(self) -> list[str]:
        return list(self.meta["sequences"])

    def case(self, case_id: str) -> dict:
        if case_id not in self.cases:
            known = ", ".join(sorted(self.cases)[:8]) + (", ..." if len(self.cases) > 8 else "")
            raise UserError(f"case {case_id!r} is not in the loop {self.folder} (cases: {known})")
        return self.cases[case_id]

    def reference_grid(self, case_id: str) -> Grid:
        g = self.case(case_id)["grid"]
        return Grid(tuple(g["size"]), tuple(g["spacing"]), tuple(g["origin"]), tuple(g["direction"]))

    def _path(self, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else self.folder / p

    def read_images(self, case_id: str, verify: bool = True) -> list[sitk.Image]:
        """The case's images in the loop's sequence order, all on the first image's grid;
        each file's SHA-256 is checked against the one recorded at init."""
        out = []
        for seq in self.sequences:
            entry = self.case(case_id)["images"][seq]
            p = self._path(entry["path"])
            what = f"{seq} image of case {case_id!r}"
            if not p.exists():
                raise UserError(f"{what} not found: {p} (it was there at loop init); restore it or move it back")
            if verify and sha256_file(p) != entry["sha256"]:
                raise UserError(f"{what} ({p}) changed since loop init (checksum differs); the loop's annotations "
                                "belong to the image as it was - restore the original file")
            out.append(read_image(p, what))
        return out

    def standard_path(self, case_id: str) -> Path:
        return self.folder / "standard" / f"{case_id}_{self.meta['reference_sequence']}_{self.labels['content']}.nii.gz"

    def proposal_paths(self, case_id: str, round_no: int) -> tuple[Path, Path]:
        d = self.folder / "proposals" / round_name(round_no)
        stem = f"{case_id}_{self.meta['reference_sequence']}"
        return d / f"{stem}_proposal.nii.gz", d / f"{stem}_uncertainty.nii.gz"

    def model_dir(self, round_no: int) -> Path:
        return self.folder / "rounds" / round_name(round_no) / "model"

    def records(self) -> list[dict]:
        return self.audit.records()

    # ---- state, replayed from the audit trail -------------------------------------------------

    def state(self, records: list[dict] | None = None) -> dict:
        """cases (status, standard record, latest proposal, reviews), rounds and prelabels."""
        recs = self.records() if records is None else records
        cases = {cid: {"status": "pool", "standard": None, "proposal": None, "reviews": []} for cid in self.cases}
        rounds: list[dict] = []
        prelabels: dict[int, dict] = {}
        for r in recs:
            d, ev = r["data"], r["event"]
            if ev in ("standard", "accept"):
                c = cases[d["case_id"]]
                c["status"], c["standard"] = "standard", r
                if ev == "accept":
                    c["reviews"].append(r)
            elif ev == "reject":
                c = cases[d["case_id"]]
                c["status"] = "redraw"
                c["reviews"].append(r)
            elif ev == "train":
                rounds.append(r)
            elif ev == "prelabel":
                prelabels[d["round"]] = r
                for cid, entry in d["cases"].items():
                    cases[cid]["proposal"] = {"round": d["round"], **entry}
        return {"cases": cases, "rounds": rounds, "prelabels": prelabels, "records": recs}

    def latest_round(self, state: dict | None = None) -> int:
        st = state or self.state()
        return len(st["rounds"])

    # ---- writing, under the folder lock --------------------------------------------------------

    def _add_standard(self, case_id: str, mask: sitk.Image, event: str, by: str, data: dict) -> dict:
        target = self.standard_path(case_id)
        digest = _publish(mask, target)
        arr = sitk.GetArrayViewFromImage(mask)
        rec = {"case_id": case_id, "mask": _rel(self.folder, target), "sha256": digest,
               "voxels": int(np.count_nonzero(arr)), **data}
        return self.audit.append(event, by, rec)

    def append(self, event: str, by: str, data: dict) -> dict:
        """Append an event (train, prelabel) under the lock."""
        with folder_lock(self.folder):
            return self.audit.append(event, by, data)

    def standard_set(self, state: dict | None = None) -> list[dict]:
        """The standard set: case id, patient id, mask path (checksum verified)."""
        st = state or self.state()
        out = []
        for cid, c in sorted(st["cases"].items()):
            if c["status"] != "standard":
                continue
            rec = c["standard"]["data"]
            p = self.folder / rec["mask"]
            if not p.exists():
                raise UserError(f"standard annotation of case {cid!r} is missing ({p}); restore the loop folder")
            if sha256_file(p) != rec["sha256"]:
                raise UserError(f"standard annotation of case {cid!r} ({p}) was altered after it was recorded "
                                "(checksum differs); restore the original file")
            out.append({"case_id": cid, "patient_id": self.cases[cid]["patient_id"], "mask": p,
                        "sha256": rec["sha256"]})
        return out

    def _check_reader(self, by: str) -> str:
        if not str(by).strip():
            raise UserError("give the reader id (--by)")
        return check_name(str(by).strip(), "reader id")

    def _proposal_array(self, case_id: str, proposal: dict) -> np.ndarray:
        return sitk.GetArrayFromImage(self._checked_file(case_id, proposal, "proposal"))

    def _checked_file(self, case_id: str, proposal: dict, key: str) -> sitk.Image:
        p = self.folder / proposal[key]
        if not p.exists() or sha256_file(p) != proposal[f"{key}_sha256"]:
            raise UserError(f"model {key} of case {case_id!r} ({p}) is missing or was altered after pre-labelling; "
                            "run 'loop prelabel' again")
        return sitk.ReadImage(str(p))

    def proposal(self, case_id: str, state: dict | None = None) -> tuple[dict, sitk.Image, sitk.Image]:
        """The case's latest proposal: (record with round and score, label map, variance map),
        both files checked against their checksums."""
        st = state or self.state()
        self.case(case_id)
        entry = st["cases"][case_id]["proposal"]
        if entry is None:
            raise UserError(f"case {case_id!r} has no model proposal; run 'loop prelabel' first")
        return entry, self._checked_file(case_id, entry, "proposal"), self._checked_file(case_id, entry, "uncertainty")

    def accept(self, case_id: str, mask: str | os.PathLike | sitk.Image | None, by: str, verdict: str,
               note: str = "") -> dict:
        """An expert's reviewed mask joins the standard set.

        ``verdict``: ``accepted`` (the proposal unchanged; ``mask`` may be None), ``corrected``
        (the proposal edited) or ``redrawn`` (drawn from scratch; needed for a rejected case
        or one without a proposal). Recorded: reader, time, verdict, and against the proposal
        the Dice and changed-voxel fraction. Exactly one accept of a case wins: a second one
        (also a concurrent one) is refused."""
        by = self._check_reader(by)
        if verdict not in VERDICTS:
            raise UserError(f"verdict {verdict!r} unknown; use one of {', '.join(VERDICTS)}")
        grid = self.reference_grid(case_id)
        source = None
        if mask is not None and not isinstance(mask, sitk.Image):
            source = str(Path(mask).resolve())
            mask = read_loop_mask(mask, grid, self.labels, f"mask of case {case_id!r}")
        elif mask is not None:
            mask = check_mask_image(mask, grid, self.labels, f"mask of case {case_id!r}")
        with folder_lock(self.folder):
            st = self.state()
            c = st["cases"][case_id]
            if c["status"] == "standard":
                prev = c["standard"]
                raise UserError(f"case {case_id!r} is already in the standard set ({prev['event']} by {prev['by']} at "
                                f"{prev['time']}); an accepted annotation is never replaced")
            proposal = c["proposal"]
            if c["status"] == "redraw" and verdict != "redrawn":
                raise UserError(f"case {case_id!r} was rejected to be drawn from scratch; accept its new mask with "
                                "--verdict redrawn")
            if proposal is None and verdict != "redrawn":
                raise UserError(f"case {case_id!r} has no model proposal to accept or correct; run 'loop prelabel' "
                                "first, or accept a mask drawn from scratch with --verdict redrawn")
            if mask is None:
                if verdict != "accepted":
                    raise UserError(f"give the expert's mask (--mask) for verdict {verdict!r}")
                mask = sitk.ReadImage(str(self.folder / proposal["proposal"]))
                mask = check_mask_image(mask, grid, self.labels, f"proposal of case {case_id!r}")
            data = {"verdict": verdict, "note": str(note), "origin": source}
            if proposal is not None:
                agreement = mask_agreement(self._proposal_array(case_id, proposal),
                                           sitk.GetArrayViewFromImage(mask), self.labels)
                if verdict == "accepted" and agreement["changed_voxels"]:
                    raise UserError(f"verdict 'accepted' means the proposal unchanged, but this mask differs from it in "
                                    f"{agreement['changed_voxels']} voxels ({agreement['changed_fraction']:.1%}); use "
                                    "--verdict corrected")
                if verdict == "corrected" and not agreement["changed_voxels"]:
                    raise UserError("the mask is identical to the model's proposal; use --verdict accepted")
                data.update({"proposal_round": proposal["round"], "proposal": proposal["proposal"],
                             "proposal_sha256": proposal["proposal_sha256"], "after_reject": c["status"] == "redraw",
                             **agreement})
            else:
                data.update({"proposal_round": None, "after_reject": c["status"] == "redraw"})
            return self._add_standard(case_id, mask, "accept", by, data)

    def reject(self, case_id: str, by: str, reason: str = "") -> dict:
        """Send a pool case back to be drawn from scratch (its proposal is unusable)."""
        by = self._check_reader(by)
        self.case(case_id)
        with folder_lock(self.folder):
            st = self.state()
            c = st["cases"][case_id]
            if c["status"] == "standard":
                raise UserError(f"case {case_id!r} is already in the standard set; there is nothing to reject")
            if c["status"] == "redraw":
                raise UserError(f"case {case_id!r} was already rejected; accept its redrawn mask with --verdict redrawn")
            proposal = c["proposal"]
            return self.audit.append("reject", by, {"case_id": case_id, "reason": str(reason),
                                                    "proposal_round": proposal["round"] if proposal else None})

    # ---- importing standard annotations -------------------------------------------------------

    def import_masks(self, masks_folder: str | os.PathLike, by: str, source: str = "folder") -> dict:
        """Standard annotations from a folder of masks (a reader study's consensus masks, a
        stroke study's final masks): a file belongs to case C when its name (without suffix)
        is C or starts with ``C_`` (``<patient id>_<sequence>_<content>``); files are found
        in sub-folders too (BIDS derivatives). Cases already in the standard set, and files
        of no case, are listed as skipped; two files for one case are refused."""
        by = self._check_reader(by)
        d = Path(masks_folder)
        if not d.is_dir():
            raise UserError(f"masks folder not found: {d}")
        files = sorted(p for p in d.rglob("*") if p.is_file() and p.name.lower().endswith(MASK_SUFFIXES)
                       and not p.name.startswith("."))
        found: dict[str, list[Path]] = {}
        unmatched = []
        for p in files:
            stem = p.name
            for suffix in MASK_SUFFIXES:
                if stem.lower().endswith(suffix):
                    stem = stem[: -len(suffix)]
                    break
            cid = stem if stem in self.cases else stem.split("_", 1)[0]
            if cid in self.cases:
                found.setdefault(cid, []).append(p)
            else:
                unmatched.append(p.name)
        for cid, ps in found.items():
            if len(ps) > 1:
                raise UserError(f"masks folder {d} holds {len(ps)} masks for case {cid!r} ({', '.join(p.name for p in ps[:3])}); "
                                "keep one per case")
        masks = {cid: (ps[0], read_loop_mask(ps[0], self.reference_grid(cid), self.labels, f"mask of case {cid!r}"))
                 for cid, ps in sorted(found.items())}
        return self._import(masks, by, source, unmatched)

    def import_study_consensus(self, study_folder: str | os.PathLike, sequence: str, content: str, by: str,
                               method: str = "staple", threshold: float = 0.5) -> dict:
        """Standard annotations from a reader study: for each loop case that is a case of the
        study with at least two annotators' submitted masks of ``sequence``/``content``, their
        consensus (STAPLE or majority vote) joins the standard set. The source image of that
        sequence must be on the loop case's grid."""
        from ClinicalMRICommonLib.agreement.consensus import majority_vote, staple

        from ..sessions import ReaderStudy

        by = self._check_reader(by)
        if method not in ("staple", "majority"):
            raise UserError(f"consensus method {method!r} unknown; use staple or majority")
        study = ReaderStudy.open(study_folder)
        reads = study.reads()
        reads = reads[(reads["final"]) & (reads["role"] == "annotator") & (reads["sequence"] == sequence)
                      & (reads["content"] == content)]
        masks, skipped = {}, []
        for cid in sorted(self.cases):
            mine = reads[reads["case_id"] == cid]
            if len(mine) < 2:
                if cid in study.meta["cases"]:
                    skipped.append(f"{cid} ({len(mine)} submitted annotator mask(s); a consensus needs two or more)")
                continue
            grid = self.reference_grid(cid)
            readers = [read_loop_mask(study.folder / m, grid, {"mode": "binary", "content": content},
                                      f"{r}'s mask of case {cid!r}") for m, r in zip(mine["mask"], mine["reader_id"])]
            cons = staple(readers, threshold=threshold)[0] if method == "staple" else majority_vote(readers)
            masks[cid] = (Path(study.folder), check_mask_image(sitk.Cast(cons != 0, sitk.sitkUInt8), grid,
                                                                self.labels, f"consensus of case {cid!r}"))
        return self._import(masks, by, f"reader-study consensus ({method}, {len(reads['reader_id'].unique())} annotators)",
                            skipped)

    def _import(self, masks: dict, by: str, source: str, skipped: list) -> dict:
        added, already = [], []
        with folder_lock(self.folder):
            st = self.state()
            for cid, (origin, mask) in masks.items():
                if st["cases"][cid]["status"] == "standard":
                    already.append(cid)
                    continue
                self._add_standard(cid, mask, "standard", by, {"source": source, "origin": str(origin)})
                added.append(cid)
        return {"added": added, "already_standard": already, "skipped": list(skipped), "source": source}

    # ---- status ------------------------------------------------------------------------------

    def status(self, stop_unchanged: float = 0.8, min_reviews: int = 5) -> dict:
        """Rounds so far, the standard set's size and origin, per round the validation Dice of
        its model and how its proposals fared in review (accepted unchanged, corrected,
        redrawn, rejected; Dice and changed fraction against the expert's mask), and the
        stopping rule: stop when in one round at least ``min_reviews`` proposals were reviewed
        and at least ``stop_unchanged`` of them were accepted unchanged."""
        if not 0.0 < stop_unchanged <= 1.0:
            raise UserError(f"--stop-unchanged must lie in (0, 1] (got {stop_unchanged})")
        if min_reviews < 1:
            raise UserError(f"--min-reviews must be at least 1 (got {min_reviews})")
        st = self.state()
        counts = {"pool": 0, "standard": 0, "redraw": 0}
        origin = {"init": 0, "import": 0, "review": 0}
        for c in st["cases"].values():
            counts[c["status"]] += 1
            if c["status"] == "standard":
                ev = c["standard"]
                key = "review" if ev["event"] == "accept" else ("init" if ev["data"].get("source") == "init" else "import")
                origin[key] += 1
        reviews = [r for r in st["records"] if r["event"] in ("accept", "reject")]
        rounds = []
        for tr in st["rounds"]:
            d = tr["data"]
            r = d["round"]
            mine = [v for v in reviews if v["data"].get("proposal_round") == r]
            decisions = [v for v in mine if not v["data"].get("after_reject")]
            verdicts = {k: sum(1 for v in decisions if v["event"] == "accept" and v["data"]["verdict"] == k)
                        for k in VERDICTS}
            rejected = sum(1 for v in decisions if v["event"] == "reject")
            dices = [v["data"]["dice"] for v in mine if v["event"] == "accept" and v["data"].get("dice") is not None]
            changed = [v["data"]["changed_fraction"] for v in mine
                       if v["event"] == "accept" and v["data"].get("changed_fraction") is not None]
            pre = st["prelabels"].get(r)
            n_rev = len(decisions)
            rounds.append({"round": r, "trained": tr["time"], "network": d["network"],
                           "train_cases": len(d["train_cases"]), "val_cases": len(d["val_cases"]),
                           "val_dice": d["val_dice"], "best_epoch": d["best_epoch"], "epochs": d["epochs"],
                           "seconds_per_epoch": d["seconds_per_epoch"], "device": d["device"],
                           "prelabelled": len(pre["data"]["cases"]) if pre else 0,
                           "uncertainty": pre["data"]["method"] if pre else None,
                           "reviewed": n_rev, "accepted_unchanged": verdicts["accepted"],
                           "corrected": verdicts["corrected"], "redrawn": verdicts["redrawn"], "rejected": rejected,
                           "unchanged_rate": verdicts["accepted"] / n_rev if n_rev else None,
                           "mean_dice_vs_expert": float(np.mean(dices)) if dices else None,
                           "mean_changed_fraction": float(np.mean(changed)) if changed else None})
        rule = (f"stop when, in one round, at least {min_reviews} proposals were reviewed and at least "
                f"{stop_unchanged:.0%} of them were accepted unchanged")
        judged = [r for r in rounds if r["reviewed"] >= min_reviews]
        if not judged:
            stop = {"rule": rule, "met": False,
                    "reason": "no round has enough reviewed proposals yet" if rounds else "no round trained yet"}
        else:
            last = judged[-1]
            met = last["unchanged_rate"] >= stop_unchanged
            stop = {"rule": rule, "met": met, "round": last["round"],
                    "reason": (f"round {last['round']}: {last['accepted_unchanged']} of {last['reviewed']} reviewed "
                               f"proposals accepted unchanged ({last['unchanged_rate']:.0%}) "
                               + (">= " if met else "< ") + f"{stop_unchanged:.0%}")}
        return {"folder": str(self.folder), "sequences": self.sequences, "labels": self.labels["mode"],
                "cases": len(self.cases), "standard": counts["standard"], "standard_origin": origin,
                "pool": counts["pool"], "redraw": counts["redraw"], "rounds": rounds, "stopping": stop,
                "audit": {"records": len(st["records"]), "hash_chain": "verified"}}
