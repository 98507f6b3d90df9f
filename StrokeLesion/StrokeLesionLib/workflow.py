"""Case-level two-reader workflow of the acute-stroke consensus (method.md section 3).

Every case is annotated independently by two qualified annotators (A and B, blinded to
each other); the system compares the two masks (ClinicalMRICommonLib.agreement: Dice, lesion-wise
matches, volume difference); a case whose disagreement exceeds the study's thresholds goes
to the reviewer, who decides lesion by lesion (A, B, union, intersection, an edited mask,
or none); a case the reviewer marks disputed goes to the arbitrator, whose decision is
final. Cases within the thresholds still get the reviewer's sign-off (the consensus: every
case is checked by at least one senior reader), on a proposed consensus (STAPLE of A and B)
unless the study switches sign-off off.

Storage (everything beside the masks, plain files)::

    STUDY/study.json                      thresholds and settings (written once)
    STUDY/readers.jsonl                   reader qualification records (append-only)
    STUDY/cases/<case>/case.json          the case: subject, session, images + SHA-256
    STUDY/cases/<case>/images/            copies of the source images and sidecars
    STUDY/cases/<case>/audit.jsonl        audit trail: seq, ts (UTC), who, role, action, what, why,
                                          prev/hash (SHA-256 chain: edits to history are detected)
    STUDY/cases/<case>/masks/<slot>/<case>_dwi_lesion-<slot>_v001.nii.gz   every version kept
    STUDY/cases/<case>/compare/           comparison results and the lesion-id map, versioned

Nothing is overwritten: new files are written to a temporary name and hard-linked to a
fresh versioned name (the link fails if the name exists), then made read-only; the audit
log only grows. State is never stored separately: it is replayed from the audit log.

Blinding is enforced by this API (listings for an annotator show neither the other
annotator's masks nor notes nor the comparison until the case is final). The files
themselves are readable by whoever can read the study folder; real blinding also needs
per-reader file permissions or a server, which is a site decision.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.grids import grid_difference, same_grid
from ClinicalMRICommonLib.images import read_image
from ClinicalMRICommonLib.files import sha256_file
from ClinicalMRICommonLib.locks import folder_lock, publish_exclusive

# ---------------------------------------------------------------------------------------
# Readers and roles

TITLES = ("resident", "attending", "associate_chief", "chief")
TITLE_NAMES = {"resident": "resident physician", "attending": "attending physician",
               "associate_chief": "associate chief physician", "chief": "chief physician"}

#: The consensus' reader qualifications (seed 004, section 2.5).
ROLE_REQUIREMENTS = {
    "annotator": {"min_title": "resident", "min_years": 5, "min_neuro_years": 2},
    "reviewer": {"min_title": "associate_chief", "min_years": 5, "min_neuro_years": 5},
    "arbitrator": {"min_title": "chief", "min_years": 10, "min_neuro_years": 10},
}
SLOTS = {"annotatorA": "annotator", "annotatorB": "annotator", "reviewer": "reviewer", "arbitrator": "arbitrator"}
ANNOTATOR_SLOTS = ("annotatorA", "annotatorB")
#: A lesion mask covering more than this fraction of the brain is refused: one hemisphere is
#: the largest territory one acute ischaemic stroke can take (complete carotid occlusion:
#: MCA + ACA territories), so half the brain is a hard upper bound; the DWI given as a mask
#: covers ~100%.
MAX_LESION_BRAIN_FRACTION = 0.5
#: Above this DWI lesion volume (mL) the record carries a warning: > 145 mL predicts malignant
#: MCA infarction (Oppenheim et al., Stroke 2000;31:2175-2181), the largest common infarcts.
LARGE_LESION_ML = 145.0
LESION_CHOICES = ("A", "B", "union", "intersection", "edited", "none")
ARBITRATION_CHOICES = LESION_CHOICES + ("review",)
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class Reader:
    id: str
    title: str                 # one of TITLES
    years: float               # years in diagnostic radiology
    neuro_years: float         # years in neuroradiology
    name: str = ""
    training: str = ""         # e.g. an AnnotationQC training-session id and result

    def check(self) -> "Reader":
        _check_id(self.id, "reader id")
        if self.title not in TITLES:
            raise UserError(f"reader {self.id}: unknown title {self.title!r}; use one of {', '.join(TITLES)}")
        for k in ("years", "neuro_years"):
            v = getattr(self, k)
            if not isinstance(v, (int, float)) or not (0 <= v <= 70):
                raise UserError(f"reader {self.id}: {k} must be a number of years (0-70), got {v!r}")
        if self.neuro_years > self.years:
            raise UserError(f"reader {self.id}: neuro_years ({self.neuro_years}) cannot exceed years ({self.years})")
        return self


def qualification_problems(reader: Reader, role: str) -> list[str]:
    """Why ``reader`` does not qualify for ``role`` (empty list: qualifies)."""
    req = ROLE_REQUIREMENTS[role]
    out = []
    if TITLES.index(reader.title) < TITLES.index(req["min_title"]):
        out.append(f"title {TITLE_NAMES[reader.title]} below {TITLE_NAMES[req['min_title']]}")
    if reader.years < req["min_years"]:
        out.append(f"{reader.years:g} years in radiology < {req['min_years']}")
    if reader.neuro_years < req["min_neuro_years"]:
        out.append(f"{reader.neuro_years:g} years in neuroradiology < {req['min_neuro_years']}")
    return out


def _annotating_next(st) -> str:
    """What happens next in a case still being annotated: missing annotators are assigned
    first, then the annotators still to submit draw."""
    unassigned = [s for s in ANNOTATOR_SLOTS if s not in st.assignments]
    if unassigned:
        opts = " ".join(f"--annotator-{s[-1].lower()} READER" for s in unassigned)
        return (f"assign {' and '.join('annotator ' + s[-1] for s in unassigned)} "
                f"('stroke-lesion case assign STUDY {st.case_id} {opts}')")
    todo = [s for s in ANNOTATOR_SLOTS if s not in st.annotations]
    return " and ".join(f"annotator {s[-1]} ({st.assignments[s]})" for s in todo) + \
        (" draws the mask" if len(todo) == 1 else " draw their masks")


def _check_id(value: str, what: str) -> str:
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise UserError(f"{what} {value!r} is not valid: use letters, digits, '-', '_' or '.', at most 64 characters")
    return value


# ---------------------------------------------------------------------------------------
# Settings


@dataclass
class Thresholds:
    """A case goes to the reviewer when ANY of these is exceeded."""

    min_dice: float = 0.80                  # Dice of A vs B below this
    max_abs_volume_diff_ml: float = 1.0     # |V_B - V_A| above this
    max_unmatched_lesions: int = 0          # lesions drawn by one annotator only (missed + extra) above this

    def check(self) -> "Thresholds":
        if not 0 <= self.min_dice <= 1:
            raise UserError(f"min_dice must be between 0 and 1, got {self.min_dice}")
        if self.max_abs_volume_diff_ml < 0 or self.max_unmatched_lesions < 0:
            raise UserError("volume and lesion-count thresholds must be >= 0")
        return self


@dataclass
class StudySettings:
    thresholds: Thresholds = field(default_factory=Thresholds)
    agreed_consensus: str = "staple"        # proposal for agreed cases: staple | union | intersection
    signoff_agreed: bool = True             # agreed cases still need the reviewer's sign-off
    lesion_connectivity: int = 26

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "StudySettings":
        d = dict(d)
        th = Thresholds(**d.pop("thresholds", {}))
        s = cls(thresholds=th, **{k: v for k, v in d.items() if k in cls.__dataclass_fields__})
        return s.check()

    def check(self) -> "StudySettings":
        self.thresholds.check()
        if self.agreed_consensus not in ("staple", "union", "intersection"):
            raise UserError(f"agreed_consensus must be staple, union or intersection, got {self.agreed_consensus!r}")
        if self.lesion_connectivity not in (6, 26):
            raise UserError("lesion connectivity must be 6 or 26")
        return self


# ---------------------------------------------------------------------------------------
# Files: no-clobber writes, hashes, lock, audit log


def _publish_new(write, final: Path) -> Path:
    """Write via ``write(tmp_path)`` to a temporary file beside ``final`` (flushed to disk),
    then publish it under ``final`` only if that name does not exist yet
    (locks.publish_exclusive: of two concurrent writers exactly one wins; nothing is ever
    replaced; a UserError for the other). Read-only after."""
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(final.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=".tmp.", suffix=suffix, dir=final.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        publish_exclusive(tmp, final, what="file", exists_message=f"{final} already exists; nothing was replaced")
        with contextlib.suppress(OSError):
            os.chmod(final, 0o444)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return final


def _next_version(folder: Path, stem: str, ext: str) -> tuple[int, Path]:
    pat = re.compile(re.escape(stem) + r"_v(\d{3,})" + re.escape(ext) + "$")
    nums = [int(m.group(1)) for p in folder.glob(f"{stem}_v*{ext}") if (m := pat.match(p.name))] \
        if folder.exists() else []
    v = max(nums, default=0) + 1
    return v, folder / f"{stem}_v{v:03d}{ext}"


def _lock(folder: Path, timeout_s: float = 15.0):
    """Exclusive lock on a folder: ClinicalMRICommonLib.locks.folder_lock (who holds it is
    recorded and reported; a stale lock of a dead process is taken over; re-entrant)."""
    return folder_lock(folder, timeout_s=timeout_s)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _record_hash(rec: dict) -> str:
    body = {k: v for k, v in rec.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class AuditLog:
    """Append-only JSON-lines log with a SHA-256 hash chain (who, when, what, why)."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def records(self, verify: bool = True) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        prev = ""
        for i, line in enumerate(self.path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"audit log {self.path} line {i} is not valid JSON; the log was edited by hand "
                                "or truncated (restore it from a backup)") from None
            if verify and (rec.get("prev") != prev or rec.get("hash") != _record_hash(rec)):
                raise UserError(f"audit log {self.path} line {i} fails its hash check; the history was altered "
                                "(restore it from a backup)")
            prev = rec.get("hash", "")
            out.append(rec)
        return out

    def append(self, *, who: str, role: str | None, action: str, what: dict, why: str = "") -> dict:
        """Append one record; call under the folder lock."""
        recs = self.records()
        what = json.loads(json.dumps(what, default=_json_default))   # plain JSON values: the hash is reproducible
        rec = {"seq": len(recs) + 1, "ts": _now(), "who": who, "role": role, "action": action,
               "what": what, "why": why or "", "prev": recs[-1]["hash"] if recs else ""}
        rec["hash"] = _record_hash(rec)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(rec, sort_keys=True, default=_json_default) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return rec


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o).__name__)


# ---------------------------------------------------------------------------------------
# Masks


def _binary(img: sitk.Image) -> sitk.Image:
    out = sitk.Cast(sitk.NotEqual(img, 0), sitk.sitkUInt8)
    out.CopyInformation(img)
    return out


def _arr(img: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(img) != 0


def _img(a: np.ndarray, like: sitk.Image, dtype=np.uint8) -> sitk.Image:
    out = sitk.GetImageFromArray(a.astype(dtype))
    out.CopyInformation(like)
    return out


def lesion_label_map(a: np.ndarray, b: np.ndarray, like: sitk.Image, connectivity: int = 26) -> tuple[np.ndarray, int]:
    """Lesions for the review: connected components of A union B (ClinicalMRICommonLib.agreement's
    definition), numbered 1..n in SimpleITK's raster order."""
    from ClinicalMRICommonLib.agreement.segmentation_metrics import connected_components
    lab, n = connected_components(_img(a | b, like), connectivity)
    return lab, n


def apply_lesion_choices(labels: np.ndarray, n: int, sources: dict[str, np.ndarray], choices: dict[int, str],
                         spacing_xyz: tuple[float, float, float], include_new: bool = True) -> tuple[np.ndarray, dict]:
    """Build a mask lesion by lesion.

    ``labels``: the lesion-id map (components of A union B, 1..n). ``sources``: arrays for
    "A", "B" and optionally "edited" / "review". For lesion i:

    * A, B, union, intersection, none: that operation restricted to lesion i's voxels;
    * edited / review (a whole mask drawn by the reviewer): the components of that mask that
      touch any lesion (overlap or 26-adjacent), restricted to lesion i's territory, i.e. the
      voxels nearer to lesion i than to any other lesion (Euclidean, in mm).

    Components of an edited/review mask that touch no lesion are new lesions: added when
    ``include_new``. Returns (mask, report).
    """
    a, b = sources["A"], sources["B"]
    out = np.zeros(labels.shape, bool)
    territory = None
    touching: dict[str, np.ndarray] = {}
    new_parts: dict[str, np.ndarray] = {}
    needs_territory = any(c in ("edited", "review") for c in choices.values()) or any(
        k in sources for k in ("edited", "review"))
    if needs_territory:
        if n:
            _, idx = ndi.distance_transform_edt(labels == 0, sampling=tuple(reversed(spacing_xyz)),
                                                return_indices=True)
            territory = labels[tuple(idx)]
        near = ndi.binary_dilation(labels > 0, structure=np.ones((3, 3, 3), bool))
        for key in ("edited", "review"):
            if key in sources:
                lab, m = ndi.label(sources[key], structure=np.ones((3, 3, 3), bool))
                hit = np.unique(lab[near & (lab > 0)])
                touch = np.isin(lab, hit[hit > 0])
                touching[key] = touch
                new_parts[key] = (lab > 0) & ~touch
    report = {"lesions": {}, "new_lesions_added": {}}
    for i in range(1, n + 1):
        c = choices[i]
        region = labels == i
        if c == "A":
            part = a & region
        elif c == "B":
            part = b & region
        elif c == "union":
            part = (a | b) & region
        elif c == "intersection":
            part = a & b & region
        elif c == "none":
            part = np.zeros_like(region)
        elif c in ("edited", "review"):
            if c not in sources:
                raise UserError(f"lesion {i}: choice {c!r} needs {'an edited mask (--edited)' if c == 'edited' else 'a review mask'}")
            part = touching[c] & (territory == i)
        else:
            raise UserError(f"lesion {i}: unknown choice {c!r}; use one of {', '.join(ARBITRATION_CHOICES)}")
        out |= part
        report["lesions"][str(i)] = {"choice": c, "n_voxels": int(part.sum())}
    if include_new:
        for key, part in new_parts.items():
            if part.any():
                lab, m = ndi.label(part, structure=np.ones((3, 3, 3), bool))
                out |= part
                report["new_lesions_added"][key] = {"n_components": int(m), "n_voxels": int(part.sum())}
    return out, report


# ---------------------------------------------------------------------------------------
# Study


@dataclass
class CaseState:
    case_id: str
    status: str                       # annotating | ready_to_compare | review | signoff | arbitration | final
    info: dict
    assignments: dict = field(default_factory=dict)
    annotations: dict = field(default_factory=dict)    # slot -> list of version records
    compare: dict | None = None
    reviews: list = field(default_factory=list)
    arbitration: dict | None = None
    consensus: dict | None = None
    notes: list = field(default_factory=list)
    quality: list = field(default_factory=list)
    records: list = field(default_factory=list)


class Study:
    """A study folder of stroke cases under the two-reader workflow."""

    FORMAT = "stroke-lesion-study/1"

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        meta = self.root / "study.json"
        if not meta.exists():
            raise UserError(f"{self.root} is not a stroke-lesion study (no study.json); create it with "
                            "'stroke-lesion study init'")
        try:
            data = json.loads(meta.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            raise UserError(f"{meta} is not valid JSON") from None
        if data.get("format") != self.FORMAT:
            raise UserError(f"{meta} has format {data.get('format')!r}, expected {self.FORMAT!r}")
        self.settings = StudySettings.from_dict(data.get("settings", {}))
        self.meta = data

    # -- creation ------------------------------------------------------------------------

    @classmethod
    def create(cls, root: str | os.PathLike, *, by: str, name: str = "", settings: StudySettings | None = None) -> "Study":
        root = Path(root)
        meta = root / "study.json"
        if meta.exists():
            raise UserError(f"{root} already holds a study (study.json exists); open it instead")
        settings = (settings or StudySettings()).check()
        root.mkdir(parents=True, exist_ok=True)
        data = {"format": cls.FORMAT, "name": name or root.name, "created": _now(), "created_by": by,
                "settings": settings.to_dict()}
        _publish_new(lambda p: p.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8"), meta)
        return cls(root)

    # -- readers -------------------------------------------------------------------------

    @property
    def _readers_log(self) -> AuditLog:
        return AuditLog(self.root / "readers.jsonl")

    def add_reader(self, reader: Reader, *, by: str, why: str = "") -> dict:
        """Record (or update: a new record, the old one is kept) a reader's qualification."""
        reader.check()
        with _lock(self.root):
            return self._readers_log.append(who=by, role="coordinator", action="reader",
                                            what=asdict(reader), why=why)

    def readers(self) -> dict[str, Reader]:
        out = {}
        for rec in self._readers_log.records():
            r = rec["what"]
            out[r["id"]] = Reader(**r)
        return out

    def reader(self, reader_id: str) -> Reader:
        rs = self.readers()
        if reader_id not in rs:
            raise UserError(f"unknown reader {reader_id!r}; add the reader's qualification first "
                            "('stroke-lesion reader add')")
        return rs[reader_id]

    # -- cases ---------------------------------------------------------------------------

    def case_dir(self, case_id: str) -> Path:
        return self.root / "cases" / _check_id(case_id, "case id")

    def case_ids(self) -> list[str]:
        d = self.root / "cases"
        return sorted(p.name for p in d.iterdir() if (p / "case.json").exists()) if d.exists() else []

    def _log(self, case_id: str) -> AuditLog:
        return AuditLog(self.case_dir(case_id) / "audit.jsonl")

    def init_case(self, case_id: str, *, dwi: str | os.PathLike, adc: str | os.PathLike,
                  others: dict[str, str | os.PathLike] | None = None, subject: str | None = None,
                  session: str = "01", by: str, why: str = "", assignments: dict[str, str] | None = None,
                  adc_units: str = "auto") -> CaseState:
        """Create a case: copy the images (and their JSON sidecars) into the case folder and
        assign the readers in ``assignments`` ({slot: reader id}).

        Atomic: everything is checked first (ids, labels, readers' qualifications, the images:
        readable, one grid, ADC units, the DWI/ADC pair of diffusion.check_adc_pair), then the
        case is built in a staging folder and renamed into ``cases/`` in one step. A refused
        case leaves nothing behind, so the corrected command can simply be run again."""
        from .diffusion import load_diffusion, parse_adc_units, sidecar_path
        d = self.case_dir(case_id)
        self._check_new_case(case_id)
        subject = re.sub(r"[^A-Za-z0-9]", "", subject or case_id)
        session = re.sub(r"[^A-Za-z0-9]", "", session)
        if not subject or not session:
            raise UserError("subject and session labels must contain letters or digits")
        images = {"dwi": dwi, "adc": adc, **{k: v for k, v in (others or {}).items() if v}}
        allowed = {"dwi", "adc", "flair", "t1w", "t2w", "b0"}
        bad = set(images) - allowed
        if bad:
            raise UserError(f"unknown image kind(s) {sorted(bad)}; use {sorted(allowed)}")
        for other in self.case_ids():
            oi = self._info_or_none(other) or {}
            if (oi.get("subject"), oi.get("session")) == (subject, session):
                raise UserError(f"case {other} of study {self.root} already has subject {subject} session {session}; "
                                "give this case its own --subject/--session (BIDS needs one folder per session)")
        # readers: every slot checked before anything is written
        planned: dict[str, str] = {}
        quals = {}
        for slot, rid in (assignments or {}).items():
            if rid:
                quals[slot] = self._qualified_for(slot, rid, planned, case_id)
                planned[slot] = rid
        # images
        units = parse_adc_units(adc_units)
        case = load_diffusion(dwi, adc, adc_units=units, b0_path=images.get("b0"))
        ref = case.dwi
        for kind, p in images.items():
            if kind not in ("dwi", "adc"):
                read_image(p, kind.upper())
        brain_ml = float(sitk.GetArrayViewFromImage(case.brain).sum()) * float(np.prod(ref.GetSpacing())) / 1000.0
        staging = self.root / ".staging"
        staging.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f"{case_id}.", dir=staging))
        try:
            info_images = {}
            for kind, p in images.items():
                p = Path(p)
                name = f"{case_id}_{kind}" + (".nii.gz" if p.name.endswith(".nii.gz") else "".join(p.suffixes[-1:]))
                dst = stage / "images" / name
                _publish_new(lambda t, p=p: shutil.copyfile(p, t), dst)
                entry = {"file": f"images/{name}", "sha256": sha256_file(dst), "source": str(p)}
                sc = sidecar_path(p)
                if sc.exists():
                    scd = stage / "images" / f"{case_id}_{kind}.json"
                    _publish_new(lambda t, sc=sc: shutil.copyfile(sc, t), scd)
                    entry["sidecar"] = f"images/{scd.name}"
                for ext in (".bval", ".bvec"):           # dcm2niix gradient tables of a DWI series
                    g = sc.with_suffix(ext)
                    if kind in ("dwi", "b0") and g.exists():
                        gd = stage / "images" / f"{case_id}_{kind}{ext}"
                        _publish_new(lambda t, g=g: shutil.copyfile(g, t), gd)
                        entry[ext[1:]] = f"images/{gd.name}"
                info_images[kind] = entry
            info_images["adc"]["units"] = {"units": case.units.units, "detected": case.units.detected,
                                           "brain_median_raw": case.units.brain_median_raw}
            info_images["adc"]["pair_check"] = {"checks": case.pair_check.get("checks", []),
                                                "warnings": list(case.warnings)}
            info = {"case_id": case_id, "subject": subject, "session": session, "created": _now(),
                    "created_by": by, "images": info_images, "brain_volume_ml": brain_ml}
            _publish_new(lambda t: t.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8"),
                         stage / "case.json")
            log = AuditLog(stage / "audit.jsonl")
            log.append(who=by, role="coordinator", action="case_init",
                       what={"subject": subject, "session": session,
                             "images": {k: v["sha256"] for k, v in info_images.items()}}, why=why)
            for slot, rid in planned.items():
                log.append(who=by, role="coordinator", action="assign",
                           what={"slot": slot, "reader": rid, "qualification": asdict(quals[slot])}, why=why)
            d.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.rename(stage, d)          # one step; refused when the case folder exists and is not empty
            except OSError:
                if (d / "case.json").exists():
                    raise UserError(f"case {case_id} already exists in {self.root}") from None
                raise
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        return self.state(case_id)

    def _check_new_case(self, case_id: str) -> None:
        d = self.case_dir(case_id)
        if (d / "case.json").exists():
            raise UserError(f"case {case_id} already exists in {self.root}")
        if d.exists() and any(p.name != ".lock" for p in d.iterdir()):
            raise UserError(f"{d} exists without a case.json (left by an interrupted 'case init' of an older "
                            "version?); move it away and run 'case init' again")

    def _info_or_none(self, case_id: str) -> dict | None:
        try:
            return self.case_info(case_id)
        except (UserError, json.JSONDecodeError):
            return None

    def case_info(self, case_id: str) -> dict:
        p = self.case_dir(case_id) / "case.json"
        if not p.exists():
            raise UserError(f"no case {case_id!r} in study {self.root}; known cases: "
                            + (", ".join(self.case_ids()) or "none"))
        return json.loads(p.read_text(encoding="utf-8"))

    def image_path(self, case_id: str, kind: str = "dwi") -> Path:
        info = self.case_info(case_id)
        if kind not in info["images"]:
            raise UserError(f"case {case_id} has no {kind} image")
        return self.case_dir(case_id) / info["images"][kind]["file"]

    def reference_image(self, case_id: str) -> sitk.Image:
        return read_image(self.image_path(case_id, "dwi"), "DWI")

    # -- state ---------------------------------------------------------------------------

    def state(self, case_id: str) -> CaseState:
        info = self.case_info(case_id)
        recs = self._log(case_id).records()
        st = CaseState(case_id, "annotating", info, records=recs)
        for r in recs:
            a, w = r["action"], r["what"]
            if a == "assign":
                st.assignments[w["slot"]] = w["reader"]
            elif a == "annotate":
                st.annotations.setdefault(w["slot"], []).append({**w, "ts": r["ts"], "who": r["who"]})
                if all(s in st.annotations for s in ANNOTATOR_SLOTS):
                    st.status = "ready_to_compare"
            elif a == "compare":
                st.compare = {**w, "ts": r["ts"], "who": r["who"]}
                st.status = "review" if w["needs_review"] else ("signoff" if w["signoff_required"] else "final")
            elif a == "review":
                st.reviews.append({**w, "ts": r["ts"], "who": r["who"], "why": r["why"]})
                st.status = "arbitration" if w["outcome"] == "disputed" else "final"
            elif a == "arbitrate":
                st.arbitration = {**w, "ts": r["ts"], "who": r["who"], "why": r["why"]}
                st.status = "final"
            elif a == "consensus":
                st.consensus = {**w, "ts": r["ts"], "who": r["who"]}
            elif a == "note":
                st.notes.append({**w, "ts": r["ts"], "who": r["who"], "role": r["role"]})
            elif a == "quality":
                st.quality.append({**w, "ts": r["ts"], "who": r["who"]})
        return st

    def slot_of(self, case_id: str, reader_id: str) -> str | None:
        """The slot (annotatorA/annotatorB/reviewer/arbitrator) ``reader_id`` holds in the case."""
        return self._slot_of(self.state(case_id), reader_id)

    def _slot_of(self, st: CaseState, reader_id: str) -> str | None:
        for slot, rid in st.assignments.items():
            if rid == reader_id:
                return slot
        return None

    # -- assignment ----------------------------------------------------------------------

    def _qualified_for(self, slot: str, reader_id: str, assignments: dict, case_id: str) -> Reader:
        """The reader, after checking the slot name, the reader's qualification for its role and
        that the reader holds no other slot in ``assignments``; UserError otherwise."""
        if slot not in SLOTS:
            raise UserError(f"unknown slot {slot!r}; use one of {', '.join(SLOTS)}")
        reader = self.reader(reader_id)
        problems = qualification_problems(reader, SLOTS[slot])
        if problems:
            req = ROLE_REQUIREMENTS[SLOTS[slot]]
            raise UserError(f"reader {reader_id} does not qualify as {SLOTS[slot]} ({'; '.join(problems)}); the "
                            f"consensus requires {TITLE_NAMES[req['min_title']]} or above, >= {req['min_years']} years "
                            f"in radiology and >= {req['min_neuro_years']} in neuroradiology")
        other = next((s for s, rid in assignments.items() if rid == reader_id), None)
        if other and other != slot:
            raise UserError(f"reader {reader_id} is already {other} of case {case_id}; the two annotators, the "
                            "reviewer and the arbitrator must be different people")
        return reader

    def assign(self, case_id: str, slot: str, reader_id: str, *, by: str, why: str = "") -> dict:
        """Assign a qualified reader to a slot (annotatorA/annotatorB/reviewer/arbitrator)."""
        self.case_info(case_id)
        self._qualified_for(slot, reader_id, {}, case_id)
        with _lock(self.case_dir(case_id)):
            st = self.state(case_id)
            reader = self._qualified_for(slot, reader_id, st.assignments, case_id)
            if slot in ANNOTATOR_SLOTS and slot in st.annotations:
                raise UserError(f"{slot} of case {case_id} has already annotated; the slot cannot be reassigned")
            if slot == "reviewer" and st.reviews or slot == "arbitrator" and st.arbitration:
                raise UserError(f"the {slot} of case {case_id} has already decided; cannot reassign")
            return self._log(case_id).append(who=by, role="coordinator", action="assign",
                                             what={"slot": slot, "reader": reader_id,
                                                   "qualification": asdict(reader)}, why=why)

    def _acting_slot(self, st: CaseState, reader_id: str, allowed: tuple[str, ...], action: str) -> str:
        slot = self._slot_of(st, reader_id)
        if slot not in allowed:
            who = ", ".join(f"{s}={st.assignments.get(s, '(unassigned)')}" for s in allowed)
            raise UserError(f"reader {reader_id} may not {action} case {st.case_id} ({who})")
        return slot

    # -- masks ---------------------------------------------------------------------------

    def _load_mask_file(self, case_id: str, path: str | os.PathLike | sitk.Image, what: str) -> sitk.Image:
        """A reader's mask from a file or an image in memory (the Slicer panel's exported
        segment), checked to lie on the case's DWI grid; binary, with the DWI's exact header."""
        from ClinicalMRICommonLib.images import nonfinite_voxels
        from ClinicalMRICommonLib.masks import check_mask_values
        ref = self.reference_image(case_id)
        if isinstance(path, sitk.Image):
            m, label, shown = path, what, what
        else:
            m, label, shown = read_image(path, what, finite=False), f"{what} {path}", path
        if m.GetDimension() != 3 or m.GetNumberOfComponentsPerPixel() != 1:
            raise UserError(f"{label} must be a 3D single-component image")
        if not same_grid(m, ref):
            raise UserError(f"{label} is not on the DWI grid of case {case_id} ({grid_difference(m, ref)}); "
                            "masks must be one-to-one with the source DWI (export the segmentation on the DWI)")
        bad = nonfinite_voxels(m, None if isinstance(path, sitk.Image) else path)
        if bad:
            raise UserError(f"{label} has {bad} NaN/infinite voxels; a lesion mask holds 0 outside and 1 inside")
        several: list[str] = []
        arr = sitk.GetArrayViewFromImage(m)
        check_mask_values(arr, shown, what, on_warning=several.append)   # refuses images, soft maps, negatives
        if several:
            labels = ", ".join(f"{v:g}" for v in np.unique(arr)[1:8])
            raise UserError(f"{label} has several labels ({labels}); a lesion mask is binary (0 outside, 1 inside): "
                            "save the lesion segment alone")
        out = _binary(m)
        out.CopyInformation(ref)        # same grid within tolerance: store the DWI's exact geometry
        return out

    def brain_volume_ml(self, case_id: str) -> float:
        """The case's brain volume (diffusion.brain_mask of the DWI), recorded at 'case init'."""
        info = self.case_info(case_id)
        if info.get("brain_volume_ml"):
            return float(info["brain_volume_ml"])
        from .diffusion import brain_mask
        ref = self.reference_image(case_id)
        return float(sitk.GetArrayFromImage(brain_mask(ref)).sum()) * float(np.prod(ref.GetSpacing())) / 1000.0

    def _save_mask(self, case_id: str, slot: str, img: sitk.Image) -> tuple[Path, int]:
        folder = self.case_dir(case_id) / "masks" / slot
        v, final = _next_version(folder, f"{case_id}_dwi_lesion-{slot}", ".nii.gz")
        _publish_new(lambda t: sitk.WriteImage(img, str(t), True), final)
        return final, v

    def _rel(self, case_id: str, p: Path) -> str:
        return str(p.relative_to(self.case_dir(case_id)))

    def mask_path(self, case_id: str, rel: str) -> Path:
        return self.case_dir(case_id) / rel

    def read_mask_version(self, case_id: str, rec: dict) -> sitk.Image:
        p = self.mask_path(case_id, rec["file"])
        if not p.exists():
            raise UserError(f"mask file {p} recorded in the audit trail is missing; restore it from a backup")
        if sha256_file(p) != rec["sha256"]:
            raise UserError(f"mask file {p} does not match the SHA-256 in the audit trail (changed after saving)")
        return _binary(sitk.ReadImage(str(p)))

    # -- annotate ------------------------------------------------------------------------

    def annotate(self, case_id: str, reader_id: str, mask: str | os.PathLike | sitk.Image | None, *,
                 no_lesion: bool = False, time_spent_s: float | None = None, why: str = "",
                 source: str = "manual", allow_large: bool = False) -> dict:
        """Save a new version of the reader's own mask (annotator A or B only).

        ``mask``: a file, or an image on the case's DWI grid (e.g. a Slicer segment; say
        where it came from in ``source``). Refused: masks that are not binary (an image, a
        soft map, several labels: ClinicalMRICommonLib.masks.check_mask_values) and lesions
        larger than MAX_LESION_BRAIN_FRACTION of the brain (unless ``allow_large``); lesions
        above LARGE_LESION_ML are saved with a warning in the record."""
        st = self.state(case_id)
        slot = self._acting_slot(st, reader_id, ANNOTATOR_SLOTS, "annotate")
        excluded = {k: v for k, v in self.excluded_series(case_id, st).items() if k in ("dwi", "adc")}
        if excluded:
            raise UserError(f"case {case_id} is excluded from annotation by its quality grading ("
                            + "; ".join(f"{k}: {', '.join(v)}" for k, v in excluded.items())
                            + "); re-grade the series if this is wrong")
        if mask is None and not no_lesion:
            raise UserError("give a mask file, or state that the case shows no lesion (--no-lesion)")
        if mask is not None:
            img = self._load_mask_file(case_id, mask, "mask")
            n = int(_arr(img).sum())
            label = "the mask" if isinstance(mask, sitk.Image) else f"mask {mask}"
            if n == 0 and not no_lesion:
                raise UserError(f"{label} is empty; if the case shows no acute lesion say so with --no-lesion")
            if n > 0 and no_lesion:
                raise UserError(f"--no-lesion was given but {label} labels {n} voxels")
            flags = self._volume_flags(case_id, n * float(np.prod(img.GetSpacing())) / 1000.0, label,
                                       allow_large=allow_large)
        else:
            ref = self.reference_image(case_id)
            img = _img(np.zeros(sitk.GetArrayViewFromImage(ref).shape, bool), ref)
            flags = {}
        with _lock(self.case_dir(case_id)):
            st = self.state(case_id)
            if st.status not in ("annotating", "ready_to_compare"):
                raise UserError(f"case {case_id} is in state {st.status}; the annotations were compared and are "
                                "locked")
            path, v = self._save_mask(case_id, slot, img)
            vv = float(np.prod(img.GetSpacing())) / 1000.0
            what = {"slot": slot, "version": v, "file": self._rel(case_id, path), "sha256": sha256_file(path),
                    "n_voxels": int(_arr(img).sum()), "volume_ml": float(_arr(img).sum() * vv),
                    "no_lesion": bool(no_lesion), "source": source,
                    "input": str(mask) if mask is not None and not isinstance(mask, sitk.Image) else None}
            if time_spent_s is not None:
                what["time_spent_s"] = float(time_spent_s)
            what.update(flags)
            return self._log(case_id).append(who=reader_id, role=slot, action="annotate", what=what, why=why)

    def _volume_flags(self, case_id: str, volume_ml: float, label: str, *, allow_large: bool = False) -> dict:
        """Plausibility of a lesion volume: refused above MAX_LESION_BRAIN_FRACTION of the brain
        (unless ``allow_large``), a warning above LARGE_LESION_ML. Returns the record fields."""
        brain = self.brain_volume_ml(case_id)
        frac = volume_ml / brain if brain > 0 else float("nan")
        out = {"brain_volume_ml": brain, "brain_fraction": frac, "warnings": []}
        if frac > MAX_LESION_BRAIN_FRACTION and not allow_large:
            raise UserError(f"{label} covers {volume_ml:.1f} mL = {100 * frac:.0f}% of the brain ({brain:.0f} mL); an "
                            f"acute infarct larger than {100 * MAX_LESION_BRAIN_FRACTION:.0f}% of the brain (a whole "
                            "hemisphere) is not plausible: check that the right file was given (an image, or an "
                            "inverted mask?); if it is right, pass --allow-large-lesion")
        if volume_ml > LARGE_LESION_ML:
            out["warnings"].append(f"lesion volume {volume_ml:.1f} mL ({100 * frac:.1f}% of the brain) is above "
                                   f"{LARGE_LESION_ML:g} mL, the DWI volume of malignant MCA infarction: check it")
        return out

    # -- notes ---------------------------------------------------------------------------

    def note(self, case_id: str, reader_id: str, text: str, *, lesion: int | None = None,
             point_lps: tuple[float, float, float] | None = None) -> dict:
        """Attach a note on an ambiguous region to the lesion it concerns.

        ``lesion``: a lesion id of the comparison (components of A union B). ``point_lps``:
        a scanner-space point (LPS mm, ITK convention; Slicer shows RAS = (-x, -y, z)); it is
        resolved to the lesion containing it, in the reader's own latest mask for an
        annotator (before the comparison) or in the comparison's lesion map otherwise.
        """
        if not text or not text.strip():
            raise UserError("a note needs text")
        st = self.state(case_id)
        role = self._slot_of(st, reader_id)
        if role is None:
            raise UserError(f"reader {reader_id} is not assigned to case {case_id}")
        what: dict = {"text": text.strip(), "lesion": None, "point_lps": None, "voxel_ijk": None,
                      "resolved_on": None, "component": None}
        ref = self.reference_image(case_id)
        if point_lps is not None:
            idx = ref.TransformPhysicalPointToIndex(tuple(float(x) for x in point_lps))
            if not all(0 <= i < s for i, s in zip(idx, ref.GetSize())):
                raise UserError(f"point {tuple(point_lps)} (LPS mm) lies outside the DWI of case {case_id}")
            what["point_lps"] = [float(x) for x in point_lps]
            what["voxel_ijk"] = [int(i) for i in idx]
        if lesion is not None:
            if st.compare is None:
                raise UserError("lesion numbers exist after the comparison; before it, give --point")
            if not 1 <= int(lesion) <= st.compare["n_lesions"]:
                raise UserError(f"case {case_id} has lesions 1..{st.compare['n_lesions']}; got {lesion}")
            what["lesion"] = int(lesion)
            what["resolved_on"] = "compare"
        elif point_lps is not None:
            i, j, k = what["voxel_ijk"]
            if st.compare is not None:
                lab = sitk.GetArrayFromImage(sitk.ReadImage(str(self.mask_path(case_id, st.compare["lesion_map"]))))
                what["resolved_on"] = "compare"
                what["lesion"] = int(lab[k, j, i]) or None
            elif role in ANNOTATOR_SLOTS and role in st.annotations:
                from ClinicalMRICommonLib.agreement.segmentation_metrics import connected_components
                own = self.read_mask_version(case_id, st.annotations[role][-1])
                lab, _ = connected_components(own, self.settings.lesion_connectivity)
                what["resolved_on"] = f"{role} v{st.annotations[role][-1]['version']}"
                what["component"] = int(lab[k, j, i]) or None
        with _lock(self.case_dir(case_id)):
            return self._log(case_id).append(who=reader_id, role=role, action="note", what=what)

    # -- compare -------------------------------------------------------------------------

    def compare(self, case_id: str, *, by: str, tolerance_mm: float = 1.0) -> dict:
        """Compare the latest masks of A and B (ClinicalMRICommonLib.agreement) and route the case."""
        from ClinicalMRICommonLib.agreement.segmentation_metrics import compare_masks, lesion_detection
        self.case_info(case_id)              # an unknown case: a UserError, no empty folder left by the lock
        with _lock(self.case_dir(case_id)):
            st = self.state(case_id)
            if st.status != "ready_to_compare":
                missing = [s for s in ANNOTATOR_SLOTS if s not in st.annotations]
                raise UserError(f"case {case_id} is in state {st.status}"
                                + (f"; waiting for {', '.join(missing)}" if missing else "; already compared"))
            va, vb = st.annotations["annotatorA"][-1], st.annotations["annotatorB"][-1]
            a_img, b_img = self.read_mask_version(case_id, va), self.read_mask_version(case_id, vb)
            agreement = compare_masks(a_img, b_img, tolerance_mm=tolerance_mm)
            det = lesion_detection(a_img, b_img, connectivity=self.settings.lesion_connectivity)
            a, b = _arr(a_img), _arr(b_img)
            labels, n = lesion_label_map(a, b, a_img, self.settings.lesion_connectivity)
            vv = float(np.prod(a_img.GetSpacing())) / 1000.0
            lesions = []
            for i in range(1, n + 1):
                reg = labels == i
                na, nb = int((a & reg).sum()), int((b & reg).sum())
                where = np.argwhere(reg)
                z, y, x = (float(c) for c in where.mean(axis=0))
                lps = [float(v) for v in a_img.TransformContinuousIndexToPhysicalPoint((x, y, z))]
                lesions.append({"id": i, "n_voxels": int(reg.sum()), "volume_ml": float(reg.sum() * vv),
                                "voxels_A": na, "voxels_B": nb, "voxels_both": int((a & b & reg).sum()),
                                "drawn_by": "both" if na and nb else ("A only" if na else "B only"),
                                "centroid_lps": lps, "centroid_ras": [-lps[0], -lps[1], lps[2]],
                                "slice_center": int(round(z)),
                                "slices": [int(where[:, 0].min()), int(where[:, 0].max())]})
            th = self.settings.thresholds
            unmatched = det["missed"] + det["extra"]
            reasons = []
            if agreement["dice"] < th.min_dice:
                reasons.append(f"Dice {agreement['dice']:.3f} < {th.min_dice}")
            if abs(agreement["volume_diff_ml"]) > th.max_abs_volume_diff_ml:
                reasons.append(f"|volume difference| {abs(agreement['volume_diff_ml']):.3f} mL > "
                               f"{th.max_abs_volume_diff_ml} mL")
            if unmatched > th.max_unmatched_lesions:
                reasons.append(f"{unmatched} lesion(s) drawn by one annotator only > {th.max_unmatched_lesions}")
            cdir = self.case_dir(case_id) / "compare"
            v, map_path = _next_version(cdir, f"{case_id}_dwi_lesionids", ".nii.gz")
            _publish_new(lambda t: sitk.WriteImage(_img(labels, a_img, np.uint16), str(t), True), map_path)
            agreement_clean = {k: (None if isinstance(v_, float) and not np.isfinite(v_) else v_)
                               for k, v_ in agreement.items()}
            result = {
                "version": v, "A": {"version": va["version"], "sha256": va["sha256"]},
                "B": {"version": vb["version"], "sha256": vb["sha256"]},
                "agreement": agreement_clean, "detection_B_vs_A": det, "n_lesions": n, "lesions": lesions,
                "lesion_map": self._rel(case_id, map_path), "thresholds": asdict(th),
                "needs_review": bool(reasons), "reasons": reasons,
                "signoff_required": bool(self.settings.signoff_agreed),
            }
            cpath = cdir / f"{case_id}_compare_v{v:03d}.json"
            _publish_new(lambda t: t.write_text(json.dumps(result, indent=2, default=_json_default) + "\n"), cpath)
            rec = self._log(case_id).append(who=by, role="system", action="compare", what=result,
                                            why="; ".join(reasons) or "within thresholds")
            if not reasons and not self.settings.signoff_agreed:
                prop = self._proposal(a_img, b_img)
                self._write_consensus(case_id, prop, by=by, decided_by="compare (agreed, no sign-off)",
                                      detail={"method": self.settings.agreed_consensus})
            return rec

    def _proposal(self, a_img: sitk.Image, b_img: sitk.Image) -> sitk.Image:
        a, b = _arr(a_img), _arr(b_img)
        method = self.settings.agreed_consensus
        if method == "union":
            return _img(a | b, a_img)
        if method == "intersection" or not (a.any() or b.any()):
            return _img(a & b, a_img)
        from ClinicalMRICommonLib.agreement.consensus import staple
        cons, _, _ = staple([a_img, b_img])
        return _binary(cons)

    def _write_consensus(self, case_id: str, img: sitk.Image, *, by: str, decided_by: str, detail: dict) -> dict:
        path, v = self._save_mask(case_id, "consensus", img)
        vv = float(np.prod(img.GetSpacing())) / 1000.0
        what = {"version": v, "file": self._rel(case_id, path), "sha256": sha256_file(path),
                "n_voxels": int(_arr(img).sum()), "volume_ml": float(_arr(img).sum() * vv),
                "decided_by": decided_by, **detail}
        return self._log(case_id).append(who=by, role="system", action="consensus", what=what)

    # -- review / arbitration ------------------------------------------------------------

    def compared_version(self, st: CaseState, slot: str) -> dict:
        """The annotation record of ``slot`` that the comparison used."""
        if st.compare is None:
            raise UserError(f"case {st.case_id} has not been compared yet")
        key = "A" if slot == "annotatorA" else "B"
        for rec in st.annotations.get(slot, []):
            if rec["version"] == st.compare[key]["version"]:
                return rec
        raise UserError(f"case {st.case_id}: the compared {slot} version is missing from the audit trail")

    def compared_masks(self, case_id: str, st: CaseState | None = None) -> tuple[sitk.Image, sitk.Image]:
        st = st or self.state(case_id)
        return (self.read_mask_version(case_id, self.compared_version(st, "annotatorA")),
                self.read_mask_version(case_id, self.compared_version(st, "annotatorB")))

    def _choices(self, n: int, choices: dict[int, str] | None, default: str | None, allowed: tuple[str, ...]) -> dict:
        out = {}
        for k, c in (choices or {}).items():
            k = int(k)
            if not 1 <= k <= n:
                raise UserError(f"lesion {k} does not exist; this case has lesions 1..{n}")
            if c not in allowed:
                raise UserError(f"lesion {k}: unknown choice {c!r}; use one of {', '.join(allowed)}")
            out[k] = c
        if default is not None and default not in allowed:
            raise UserError(f"unknown choice {default!r}; use one of {', '.join(allowed)}")
        missing = [i for i in range(1, n + 1) if i not in out]
        if missing and default is None:
            raise UserError(f"no decision for lesion(s) {', '.join(map(str, missing))}; give --all CHOICE or "
                            "--lesion N=CHOICE for each")
        for i in missing:
            out[i] = default
        return out

    def _decide(self, case_id: str, st: CaseState, choices, default, edited, include_new, allowed,
                review_mask: sitk.Image | None = None, edited_source: str = "") -> tuple[sitk.Image, dict, dict]:
        a_img, b_img = self.compared_masks(case_id, st)
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(self.mask_path(case_id, st.compare["lesion_map"]))))
        n = st.compare["n_lesions"]
        ch = self._choices(n, choices, default, allowed)
        sources = {"A": _arr(a_img), "B": _arr(b_img)}
        meta = {}
        if edited is not None:
            e = self._load_mask_file(case_id, edited, "edited mask")
            sources["edited"] = _arr(e)
            meta["edited_input"] = edited_source or ("image in memory" if isinstance(edited, sitk.Image)
                                                     else str(edited))
        if review_mask is not None:
            sources["review"] = _arr(review_mask)
        if edited is not None and "edited" not in ch.values() and not include_new:
            raise UserError("an edited mask was given but no lesion chooses 'edited' and new lesions are not included")
        mask, report = apply_lesion_choices(labels, n, sources, ch, a_img.GetSpacing(), include_new=include_new)
        return _img(mask, a_img), ch, {**report, **meta}

    def review(self, case_id: str, reader_id: str, *, choices: dict[int, str] | None = None,
               default: str | None = None, edited: str | os.PathLike | sitk.Image | None = None,
               accept_proposed: bool = False, dispute: bool = False, include_new: bool = True, why: str,
               edited_source: str = "") -> dict:
        """The reviewer's decision. ``accept_proposed`` (agreed cases): take the proposed
        consensus. Otherwise per-lesion choices (``choices`` {id: choice} and/or ``default``
        for the rest). ``dispute``: send the case to arbitration (choices optional: a
        proposal the arbitrator can pick with 'review'). ``edited``: the reviewer's edited
        mask (file or image on the DWI grid; ``edited_source`` says where it came from)."""
        if not why or not why.strip():
            raise UserError("the reviewer's decision needs a reason (--why)")
        st = self.state(case_id)
        self._acting_slot(st, reader_id, ("reviewer",), "review")
        if st.status not in ("review", "signoff"):
            raise UserError(f"case {case_id} is in state {st.status}; review happens after the comparison and "
                            "before a final decision")
        if accept_proposed and st.status != "signoff":
            raise UserError("--accept-proposed is only for cases within the thresholds; this one needs "
                            "lesion-by-lesion decisions")
        if accept_proposed and (choices or default or edited):
            raise UserError("--accept-proposed cannot be combined with lesion choices or an edited mask")
        result = None
        decisions = {}
        report = {}
        if accept_proposed:
            result = self._proposal(*self.compared_masks(case_id, st))
            report = {"method": f"proposed consensus ({self.settings.agreed_consensus} of A and B)"}
        elif choices or default or edited is not None or not dispute:
            result, decisions, report = self._decide(case_id, st, choices, default, edited, include_new,
                                                     LESION_CHOICES, edited_source=edited_source)
        with _lock(self.case_dir(case_id)):
            st2 = self.state(case_id)
            if st2.status != st.status or len(st2.records) != len(st.records):
                raise UserError(f"case {case_id} changed while deciding; run the review again")
            what: dict = {"outcome": "disputed" if dispute else "accepted",
                          "decisions": {str(k): v for k, v in decisions.items()}, "report": report,
                          "accept_proposed": bool(accept_proposed)}
            if result is not None:
                path, v = self._save_mask(case_id, "review", result)
                what.update({"version": v, "file": self._rel(case_id, path), "sha256": sha256_file(path),
                             "n_voxels": int(_arr(result).sum())})
            rec = self._log(case_id).append(who=reader_id, role="reviewer", action="review", what=what, why=why)
            if not dispute:
                self._write_consensus(case_id, result, by=reader_id, decided_by="reviewer",
                                      detail={"review_version": what.get("version")})
            return rec

    def arbitrate(self, case_id: str, reader_id: str, *, choices: dict[int, str] | None = None,
                  default: str | None = None, edited: str | os.PathLike | sitk.Image | None = None,
                  include_new: bool = True, why: str, edited_source: str = "") -> dict:
        """The arbitrator's final decision (choices include 'review': the reviewer's proposal)."""
        if not why or not why.strip():
            raise UserError("the arbitrator's decision needs a reason (--why)")
        st = self.state(case_id)
        self._acting_slot(st, reader_id, ("arbitrator",), "arbitrate")
        if st.status != "arbitration":
            raise UserError(f"case {case_id} is in state {st.status}; only cases the reviewer marked disputed go "
                            "to arbitration" + (" (the decision is final)" if st.status == "final" else ""))
        rv = st.reviews[-1]
        review_mask = self.read_mask_version(case_id, rv) if rv.get("file") else None
        uses_review = default == "review" or "review" in (choices or {}).values()
        if uses_review and review_mask is None:
            raise UserError("the reviewer made no proposal mask; choose A, B, union, intersection, edited or none")
        result, decisions, report = self._decide(case_id, st, choices, default, edited, include_new,
                                                 ARBITRATION_CHOICES, review_mask=review_mask if uses_review else None,
                                                 edited_source=edited_source)
        with _lock(self.case_dir(case_id)):
            st2 = self.state(case_id)
            if st2.status != "arbitration" or len(st2.records) != len(st.records):
                raise UserError(f"case {case_id} changed while deciding; run the arbitration again")
            path, v = self._save_mask(case_id, "arbitration", result)
            what = {"decisions": {str(k): c for k, c in decisions.items()}, "report": report, "version": v,
                    "file": self._rel(case_id, path), "sha256": sha256_file(path),
                    "n_voxels": int(_arr(result).sum()), "final": True}
            rec = self._log(case_id).append(who=reader_id, role="arbitrator", action="arbitrate", what=what, why=why)
            self._write_consensus(case_id, result, by=reader_id, decided_by="arbitrator",
                                  detail={"arbitration_version": v})
            return rec

    # -- quality -------------------------------------------------------------------------

    def record_quality(self, case_id: str, series: str, *, reader_id: str, likert: int, snr: float | None = None,
                       cnr: float | None = None, reason: str = "", roi_labelmap: str | os.PathLike | None = None,
                       min_snr: float | None = None, min_cnr: float | None = None,
                       snr_not_measurable: str | None = None, cnr_not_measurable: str | None = None) -> dict:
        """Record a series' image quality (Likert 1-5, SNR, CNR) in the case's audit trail.

        The record and its flag rule (Likert < 3, or SNR/CNR below the given minimums, needs
        a reason and excludes the series) are ClinicalMRICommonLib.quality's; with
        ``roi_labelmap`` (labels 1 signal, 2 background, 3 tissue on the series' grid) SNR
        and CNR are measured by ClinicalMRICommonLib.quality.snr_cnr_from_labelmap.

        A number that cannot be measured is recorded as such with its reason
        (``snr_not_measurable`` / ``cnr_not_measurable``): a derived map such as the ADC (its
        "noise" is the fit's, not the scanner's) or a skull-stripped image (background set to 0,
        no noise left). Each number's source is recorded: measured, entered or not measurable.
        """
        from ClinicalMRICommonLib.quality import make_record, snr_cnr_from_labelmap
        info = self.case_info(case_id)
        if series not in info["images"]:
            raise UserError(f"case {case_id} has no {series} image; series: {', '.join(info['images'])}")
        self.reader(reader_id)
        nm = {"snr": (snr_not_measurable or "").strip() or None, "cnr": (cnr_not_measurable or "").strip() or None}
        for k, v in (("snr", snr), ("cnr", cnr)):
            if v is not None and nm[k]:
                raise UserError(f"{k.upper()} is given both as a value and as not measurable; give one of them")
        measured = None
        source = {"snr": "entered" if snr is not None else None, "cnr": "entered" if cnr is not None else None}
        if roi_labelmap is not None:
            if snr is not None or cnr is not None:
                raise UserError("give SNR/CNR values or an ROI label map to measure them, not both")
            img = read_image(self.image_path(case_id, series), series.upper())
            try:
                measured = snr_cnr_from_labelmap(img, read_image(roi_labelmap, "ROI label map"))
            except UserError as exc:
                if "no noise" not in str(exc):
                    raise
                raise UserError(f"{exc}; on a skull-stripped image the background is set to 0 and there is no noise "
                                "to measure: record the numbers as not measurable instead (--not-measurable "
                                "\"skull-stripped: no background noise\")") from None
            snr, cnr = (None if nm["snr"] else measured["snr"]), (None if nm["cnr"] else measured["cnr"])
            source = {"snr": "measured" if snr is not None else None, "cnr": "measured" if cnr is not None else None}
        for k in ("snr", "cnr"):
            if nm[k]:
                source[k] = "not measurable"
        rec = make_record(case_id, series, reader_id, likert=likert, reason=reason, snr=snr, cnr=cnr,
                          min_snr=min_snr, min_cnr=min_cnr)
        what = {"series": series, "likert": rec["likert"], "snr": rec["snr"], "cnr": rec["cnr"],
                "reason": rec["reason"], "flagged": rec["flagged"], "flag_reasons": rec["flag_reasons"],
                "usable": not rec["flagged"], "measured": measured, "snr_source": source["snr"],
                "cnr_source": source["cnr"], "not_measurable": {k: v for k, v in nm.items() if v}}
        with _lock(self.case_dir(case_id)):
            return self._log(case_id).append(who=reader_id, role="quality", action="quality", what=what,
                                             why=rec["reason"])

    def excluded_series(self, case_id: str, st: CaseState | None = None) -> dict[str, list[str]]:
        """Series whose latest quality record (per reader) flags them: {series: reasons}."""
        st = st or self.state(case_id)
        latest: dict[tuple[str, str], dict] = {}
        for q in st.quality:
            latest[(q["series"], q["who"])] = q
        out: dict[str, list[str]] = {}
        for (series, _), q in latest.items():
            if q.get("flagged"):
                out.setdefault(series, []).extend(q.get("flag_reasons", []))
        return out

    # -- views ---------------------------------------------------------------------------

    def case_view(self, case_id: str, viewer: str | None = None) -> dict:
        """The case as ``viewer`` may see it. An annotator (before the case is final) sees
        only their own masks and notes and not the comparison; others see everything."""
        st = self.state(case_id)
        slot = self._slot_of(st, viewer) if viewer else None
        blinded = slot in ANNOTATOR_SLOTS and st.status != "final"
        nxt = {"annotating": _annotating_next(st),
               "ready_to_compare": "compare A and B",
               "review": "reviewer decides lesion by lesion (disagreement above thresholds)",
               "signoff": "reviewer signs off the proposed consensus (agreement within thresholds)",
               "arbitration": "arbitrator decides (disputed)", "final": "done"}[st.status]
        view = {"case_id": case_id, "subject": st.info["subject"], "session": st.info["session"],
                "status": st.status, "next": nxt, "assignments": st.assignments,
                "images": {k: v["file"] for k, v in st.info["images"].items()}}
        ann = {}
        for s, versions in st.annotations.items():
            if blinded and s != slot:
                ann[s] = {"submitted": True, "hidden": "blinded until the case is final"}
            else:
                ann[s] = [{k: v[k] for k in ("version", "file", "ts", "n_voxels", "volume_ml", "no_lesion")}
                          for v in versions]
        view["annotations"] = ann
        notes = [dict(n) for n in st.notes if not blinded or n["who"] == viewer]
        if st.compare and not blinded and any(n.get("voxel_ijk") and n.get("lesion") is None for n in notes):
            lab = sitk.GetArrayFromImage(sitk.ReadImage(str(self.mask_path(case_id, st.compare["lesion_map"]))))
            for n in notes:
                if n.get("voxel_ijk") and n.get("lesion") is None:
                    i, j, k = n["voxel_ijk"]
                    n["lesion"] = int(lab[k, j, i]) or None    # the comparison's lesion at the noted point
        view["notes"] = notes
        if not blinded:
            if st.compare:
                view["compare"] = {k: st.compare[k] for k in ("agreement", "detection_B_vs_A", "n_lesions", "lesions",
                                                               "needs_review", "reasons", "lesion_map")}
            view["reviews"] = [{k: r.get(k) for k in ("outcome", "decisions", "file", "who", "ts", "why")}
                               for r in st.reviews]
            if st.arbitration:
                view["arbitration"] = {k: st.arbitration.get(k) for k in ("decisions", "file", "who", "ts", "why")}
        if st.consensus and (not blinded or st.status == "final"):
            view["consensus"] = {k: st.consensus[k] for k in ("file", "version", "volume_ml", "decided_by", "ts")}
        view["quality"] = st.quality
        return view

    def status(self, viewer: str | None = None, *, preflight: bool = False) -> list[dict]:
        """One row per case (the cases ``viewer`` is assigned to, when given). With
        ``preflight`` each row also says what is still missing for the dataset's acceptance,
        each item with the command that supplies it (preflight.missing_for_acceptance)."""
        from .preflight import missing_for_acceptance
        out = []
        for cid in self.case_ids():
            v = self.case_view(cid, viewer)
            if viewer and viewer not in v["assignments"].values():
                continue
            row = {k: v[k] for k in ("case_id", "status", "next", "assignments")}
            if preflight:
                row["subject"], row["session"] = v["subject"], v["session"]
                if v.get("compare"):
                    row["dice_A_B"] = v["compare"]["agreement"].get("dice")
                    row["n_lesions"] = v["compare"]["n_lesions"]
                if v.get("consensus"):
                    row["consensus_volume_ml"] = v["consensus"]["volume_ml"]
                row["missing"] = missing_for_acceptance(self, cid)
                row["ready_for_acceptance"] = not row["missing"]
            out.append(row)
        return out

    def verify(self, case_id: str) -> list[str]:
        """Integrity problems of a case: audit hash chain and every recorded file's SHA-256."""
        problems = []
        try:
            st = self.state(case_id)
        except UserError as exc:
            return [str(exc)]
        for r in st.records:
            w = r["what"]
            if isinstance(w, dict) and "file" in w and "sha256" in w:
                p = self.mask_path(case_id, w["file"])
                if not p.exists():
                    problems.append(f"{p} missing")
                elif sha256_file(p) != w["sha256"]:
                    problems.append(f"{p} changed after it was recorded")
        for kind, e in st.info["images"].items():
            p = self.case_dir(case_id) / e["file"]
            if not p.exists() or sha256_file(p) != e["sha256"]:
                problems.append(f"image {p} missing or changed")
        return problems
