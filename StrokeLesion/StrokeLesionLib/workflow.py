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

    STUDY/study.json                      thresholds and settings (written once; signed)
    STUDY/readers.jsonl (+ .head)         the study log: reader qualification records and the
                                          registration of every case (append-only, signed)
    STUDY/cases/<case>/case.json          the case: subject, session, images, sidecars, gradient
                                          tables + SHA-256 (its digest is in the case_init record)
    STUDY/cases/<case>/images/            copies of the source images and sidecars
    STUDY/cases/<case>/audit.jsonl (+ .head)  audit trail: seq, ts (UTC), who (reader id), os_user,
                                          host, role, action, what, why, prev/hash (SHA-256 chain),
                                          key_id/sig (HMAC with the site key); the head file
                                          records the count and last hash (a cut tail shows)
    STUDY/cases/<case>/masks/<slot>/<case>_dwi_lesion-<slot>_v001.nii.gz   every version kept
    STUDY/cases/<case>/compare/           comparison results and the lesion-id map, versioned

The logs are ClinicalMRICommonLib.audit's (the site key lives outside the study, see there).
Every command verifies what it reads: the logs, case.json against its case_init record, the
recorded paths (confined to the case folder) and the SHA-256 of every image and mask it
uses; :meth:`Study.verify_study` (``stroke-lesion verify``) lists every problem at once.

Nothing is overwritten: new files go through the verified atomic writer (temporary file,
fsync, read back, then linked to a fresh versioned name: the link fails if the name exists),
then made read-only; the audit log only grows. A file published for a record that could not
be written is removed again. State is never stored separately: it is replayed from the log.

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
import secrets
import shutil
import warnings
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from ClinicalMRICommonLib.audit import DOCUMENT_SIGNATURE, SITE_KEY_ENV, check_document, load_site_key, sign_document
from ClinicalMRICommonLib.errors import InputWarning, UserError, os_error_message
from ClinicalMRICommonLib.files import (clean_stale_temps, is_temp_name, json_safe, sha256_file, write_bytes_atomic,
                                        write_image_atomic)
from ClinicalMRICommonLib.grids import grid_difference, same_grid
from ClinicalMRICommonLib.images import read_image
from ClinicalMRICommonLib.locks import folder_lock, pid_alive, read_lock

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


#: The longest id (reader, case, --by), subject or session label (characters).
MAX_ID_LENGTH = 64


def _shown(value) -> str:
    """A value for a message: long ones cut, with their length."""
    text = repr(value)
    return text if len(text) <= 50 else f"{text[:40]}...' ({len(str(value))} characters)"


def check_id(value: str, what: str) -> str:
    """The one id rule (reader ids, case ids): letters, digits, '-', '_' or '.', starting with
    a letter or digit, at most MAX_ID_LENGTH characters; checked before anything is written."""
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise UserError(f"{what} {_shown(value)} is not valid: use letters, digits, '-', '_' or '.' (starting with a "
                        f"letter or digit), at most {MAX_ID_LENGTH} characters")
    return value


_check_id = check_id


def check_who(value: str, what: str = "--by") -> str:
    """Who performs a coordinator step (``--by``, default the login name): printable, one line,
    at most MAX_ID_LENGTH characters (login names may hold '@', '\\' or spaces)."""
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_ID_LENGTH or \
            not value.isprintable():
        raise UserError(f"{what} {_shown(value)} is not valid: give a name of 1-{MAX_ID_LENGTH} printable "
                        "characters on one line")
    return value.strip()


def check_label(value: str, what: str) -> str:
    """A BIDS subject/session label: punctuation removed (BIDS labels are alphanumeric); must
    keep letters or digits and be at most MAX_ID_LENGTH characters."""
    label = re.sub(r"[^A-Za-z0-9]", "", str(value))
    if not label:
        raise UserError(f"{what} label {_shown(value)} has no letters or digits; BIDS labels are alphanumeric")
    if len(label) > MAX_ID_LENGTH:
        raise UserError(f"{what} label {_shown(value)} is too long ({len(label)} characters, at most "
                        f"{MAX_ID_LENGTH}); give a shorter label")
    return label


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
    def from_dict(cls, d: dict, where: str = "study settings") -> "StudySettings":
        """Settings from study.json, every field's type checked (a UserError naming ``where``)."""
        if not isinstance(d, dict):
            raise UserError(f"{where}: 'settings' must be a JSON object, got {type(d).__name__}")
        d = dict(d)
        th = d.pop("thresholds", {})
        if not isinstance(th, dict):
            raise UserError(f"{where}: 'thresholds' must be a JSON object, got {type(th).__name__}")
        types = {"min_dice": (int, float), "max_abs_volume_diff_ml": (int, float), "max_unmatched_lesions": (int,),
                 "agreed_consensus": (str,), "signoff_agreed": (bool,), "lesion_connectivity": (int,)}
        for key, value in list(th.items()) + list(d.items()):
            want = types.get(key)
            if want is None:
                continue
            numeric = want != (bool,) and want != (str,)
            if not isinstance(value, want) or (numeric and isinstance(value, bool)) or \
                    (isinstance(value, float) and not np.isfinite(value)):
                raise UserError(f"{where}: {key} must be {'a number' if numeric else want[0].__name__}, got "
                                f"{_shown(value)}; the file was edited by hand (restore it)")
        th = Thresholds(**{k: v for k, v in th.items() if k in Thresholds.__dataclass_fields__})
        s = cls(thresholds=th, **{k: v for k, v in d.items() if k in cls.__dataclass_fields__ and k != "thresholds"})
        return s.check()

    def check(self) -> "StudySettings":
        self.thresholds.check()
        if self.agreed_consensus not in ("staple", "union", "intersection"):
            raise UserError(f"agreed_consensus must be staple, union or intersection, got {self.agreed_consensus!r}")
        if self.lesion_connectivity not in (6, 26):
            raise UserError("lesion connectivity must be 6 or 26")
        return self


# ---------------------------------------------------------------------------------------
# Files: verified no-clobber writes, hashes, lock, audit log


def _publish_image(img: sitk.Image, final: Path, what: str = "mask") -> Path:
    """Write ``img`` through the one verified atomic writer (ClinicalMRICommonLib.files:
    temporary file, fsync, read back grid and voxels, then published only if ``final`` does
    not exist yet: of two concurrent writers exactly one wins; nothing is ever replaced; a
    full disk is a UserError and leaves nothing). Read-only after."""
    write_image_atomic(img, final, what=what, exclusive=True)
    with contextlib.suppress(OSError):
        os.chmod(final, 0o444)
    return final


def _publish_bytes(data: bytes, final: Path, what: str = "file") -> Path:
    """As :func:`_publish_image` for bytes (read back and compared before publishing)."""
    write_bytes_atomic(final, data, what=what, exclusive=True)
    with contextlib.suppress(OSError):
        os.chmod(final, 0o444)
    return final


def _publish_copy(src: Path, final: Path, what: str = "file") -> str:
    """Copy ``src`` to the new file ``final`` (verified); returns the SHA-256 of what was copied."""
    try:
        data = Path(src).read_bytes()
    except OSError as exc:
        raise UserError(os_error_message(exc, src, f"could not read {what}")) from None
    _publish_bytes(data, final, what)
    return hashlib.sha256(data).hexdigest()


def _next_version(folder: Path, stem: str, ext: str) -> tuple[int, Path]:
    pat = re.compile(re.escape(stem) + r"_v(\d{3,})" + re.escape(ext) + "$")
    nums = [int(m.group(1)) for p in folder.glob(f"{stem}_v*{ext}") if (m := pat.match(p.name))] \
        if folder.exists() else []
    v = max(nums, default=0) + 1
    return v, folder / f"{stem}_v{v:03d}{ext}"


#: Subfolders of a case folder where interrupted writes may leave temporary files.
_CASE_SUBFOLDERS = ("", "images", "compare", "masks/annotatorA", "masks/annotatorB", "masks/review",
                    "masks/arbitration", "masks/consensus")


def _staging_pid(name: str) -> int | None:
    """The pid in a staging folder's name ``<case>.<pid>-<random>`` (None for older names)."""
    m = re.search(r"\.(\d+)-[0-9a-f]+$", name)
    return int(m.group(1)) if m else None


def _clean_leftovers(folder: Path) -> list[str]:
    """Remove what interrupted commands left in ``folder`` (a case folder or the study root):
    the atomic writer's temporary files of dead processes (files.clean_stale_temps) and, in
    the study root, case builds in ``.staging/`` whose process is gone. Call under the lock."""
    removed: list[str] = []
    for sub in _CASE_SUBFOLDERS:
        for p in clean_stale_temps(folder / sub if sub else folder):
            removed.append(str(p.relative_to(folder)))
    staging = folder / ".staging"
    if staging.is_dir():
        for p in staging.iterdir():
            pid = _staging_pid(p.name)
            if p.is_dir() and pid is not None and pid != os.getpid() and not pid_alive(pid):
                shutil.rmtree(p, ignore_errors=True)
                removed.append(str(p.relative_to(folder)))
    return removed


@contextlib.contextmanager
def _lock(folder: Path, timeout_s: float = 15.0, recovered: dict | None = None):
    """Exclusive lock on a folder: ClinicalMRICommonLib.locks.folder_lock (who holds it is
    recorded and reported; re-entrant). A stale lock of a dead process is taken over and the
    leftovers of the interrupted command are removed; both are reported as a warning and put
    in ``recovered`` (the caller records them in the audit trail)."""
    with folder_lock(folder, timeout_s=timeout_s) as lk:
        if lk._count == 1:                   # the outermost acquisition in this process
            removed = _clean_leftovers(folder)
            info = {}
            if lk.took_over is not None:
                info["lock_taken_over"] = lk.took_over.describe()
            if removed:
                info["leftovers_removed"] = removed
            if info:
                parts = ([f"took over the stale lock of {info['lock_taken_over']} (that process is gone)"]
                         if "lock_taken_over" in info else [])
                if removed:
                    parts.append(f"removed {len(removed)} leftover(s) of an interrupted command: "
                                 + ", ".join(removed[:5]) + (" ..." if len(removed) > 5 else ""))
                warnings.warn(f"{folder}: " + "; ".join(parts), InputWarning, stacklevel=3)
                if recovered is not None:
                    recovered[str(folder)] = info
        yield lk


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


class AuditLog:
    """A case's audit trail or the study's log: ClinicalMRICommonLib.audit.AuditLog (SHA-256
    chain, HMAC-SHA256 signature with the site key kept outside the study, a signed head file
    beside the log so removed records show, the operating-system user and host in every
    record, a torn last line ignored and reported) with the workflow's record fields
    (ts, who, role, action, what, why).

    ``required``: every record must be signed and the log and its head must exist (a case or
    study made by a version that signs); otherwise an older, unsigned log is read (its SHA-256
    chain still checked) and signed from its next record on."""

    def __init__(self, path: Path, *, required: bool = False, what: str = "audit log"):
        from ClinicalMRICommonLib.audit import AuditLog as _SignedLog
        self._log = _SignedLog(Path(path), what, required=required, time_field="ts")
        self.path = self._log.path
        self.head_path = self._log.head_path

    def verification(self):
        """Everything wrong with the log (ClinicalMRICommonLib.audit.Verification; never raises)."""
        return self._log.verify()

    def records(self, verify: bool = True) -> list[dict]:
        """The records; a UserError naming the first problem when anything was altered."""
        v = self._log.verify()
        if verify:
            v.raise_if_altered("restore the folder from a backup (stroke-lesion verify lists every problem)")
        if v.torn is not None:
            warnings.warn(f"{self._log.what} {self.path}: its last line is incomplete (an interrupted write, "
                          f"{len(v.torn)} characters); it was ignored", InputWarning, stacklevel=2)
        return v.records

    def is_signed(self) -> bool:
        return self._log.is_signed()

    def create(self) -> None:
        """Start the empty signed log (and its head), so that deleting both later is noticed."""
        self._log.create()

    def append(self, *, who: str, role: str | None, action: str, what: dict, why: str = "") -> dict:
        """Append one record (verifies the log first: nothing is written to an altered log)."""
        return self._log.append({"ts": _now(), "who": who, "role": role, "action": action, "what": what,
                                 "why": why or ""})


def _read_json_object(path: Path, what: str) -> dict:
    """A JSON object from ``path``; a UserError naming the file for anything else."""
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise UserError(f"{what} {path} is missing; restore it from a backup") from None
    except OSError as exc:
        raise UserError(os_error_message(exc, path, f"could not read the {what}")) from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise UserError(f"{path} is not valid JSON; the {what} was damaged or edited (restore it from a "
                        "backup)") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a JSON object; the {what} was damaged or edited (restore it)")
    return data


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


def _stat_key(p: Path):
    try:
        st = os.stat(p)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def _confined(folder: Path, rel, what: str, source: Path) -> Path:
    """``folder/rel``, refused unless ``rel`` is a relative path that stays inside ``folder``
    (no absolute path, no '..', no symbolic link leading out): recorded paths are confined to
    the study, so an edited record cannot point the tools at other files."""
    bad = not isinstance(rel, str) or not rel.strip() or os.path.isabs(rel) or "\\" in rel or \
        any(part in ("..", "") for part in rel.split("/"))
    if not bad:
        p = folder / rel
        try:
            bad = not p.resolve().is_relative_to(folder.resolve())
        except (OSError, RuntimeError):
            bad = True
        if not bad:
            return p
    raise UserError(f"{source}: {what} path {_shown(rel)} leads outside {folder}; recorded paths must stay inside the "
                    "study (the file was edited: restore it from a backup)")


def case_digest(info: dict) -> str:
    """SHA-256 of a case description's canonical JSON (what the case_init record keeps)."""
    body = {k: v for k, v in info.items() if k != "signature"}
    return hashlib.sha256(json.dumps(json_safe(body), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def case_json_problem(info: dict, records: list[dict], case_id: str) -> str | None:
    """Why case.json does not match the audit trail's case_init record (None: it matches).
    Cases created since issue 12 record case.json's digest; older ones their subject, session
    and image checksums, which are compared instead."""
    init = next((r for r in records if r.get("action") == "case_init"), None)
    if init is None or not isinstance(init.get("what"), dict):
        return "the audit trail has no case_init record, so the case description cannot be checked (restore the log)"
    w = init["what"]
    if info.get("case_id", case_id) != case_id:
        return f"it describes case {_shown(info.get('case_id'))}, not {case_id}: it was edited or copied (restore it)"
    if "case_json_sha256" in w:
        if case_digest(info) != w["case_json_sha256"]:
            return ("it was edited after the case was created (its digest differs from the audit trail's case_init "
                    "record); restore it from a backup")
        return None
    for key in ("subject", "session"):
        if key in w and w[key] != info.get(key):
            return (f"its {key} {_shown(info.get(key))} differs from the audit trail's case_init record "
                    f"({_shown(w[key])}): it was edited; restore it from a backup")
    recorded = w.get("images") or {}
    now = {k: e.get("sha256") for k, e in info["images"].items()}
    if recorded and recorded != now:
        return ("its images or their checksums differ from the audit trail's case_init record: it was edited; "
                "restore it from a backup")
    return None


def _replay(st: CaseState, r: dict) -> None:
    """Apply one audit record to the case state."""
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

    def __init__(self, root: str | os.PathLike, *, check: bool = True):
        """Open a study; its study.json is checked (format, types, signature). ``check=False``
        (the verify command) leaves the signature to :meth:`verify_study`, which reports it."""
        self.root = Path(root)
        meta = self.root / "study.json"
        if not meta.is_file():
            if self.root.exists() and not self.root.is_dir():
                raise UserError(f"{self.root} is a file, not a stroke-lesion study folder")
            raise UserError(f"{self.root} is not a stroke-lesion study (no study.json); create it with "
                            "'stroke-lesion study init'")
        data = _read_json_object(meta, "study description")
        if data.get("format") != self.FORMAT:
            raise UserError(f"{meta} has format {_shown(data.get('format'))}, expected {self.FORMAT!r}")
        #: study.json is signed (a study made since issue 12, or an older one signed at its next change)
        self.signed = DOCUMENT_SIGNATURE in data
        self.created_signed = bool(data.get("signed_logs")) and self.signed
        self._checked: dict = {}          # verified files: path -> (size, mtime_ns, sha256)
        self._recovered: dict = {}        # folder -> what _lock recovered (recorded with the next record)
        self._pending: list[Path] = []    # files published for the record not written yet (_case_lock)
        problems, _ = check_document(data, str(meta), required=self._readers_log.is_signed())
        if problems and check:
            hint = "" if " cannot be checked: " in problems[0] else \
                f"; restore the study folder from a backup (stroke-lesion verify {self.root} lists every problem)"
            raise UserError(problems[0] + hint)
        self.settings = StudySettings.from_dict(data.get("settings", {}), str(meta))
        self.meta = data

    # -- creation ------------------------------------------------------------------------

    @classmethod
    def create(cls, root: str | os.PathLike, *, by: str, name: str = "", settings: StudySettings | None = None) -> "Study":
        root = Path(root)
        by = check_who(by)
        meta = root / "study.json"
        if root.exists() and not root.is_dir():
            raise UserError(f"{root} is a file; give a new folder for the study")
        if meta.exists():
            raise UserError(f"{root} already holds a study (study.json exists); open it instead")
        if len(str(name)) > 200 or not str(name).isprintable():
            raise UserError(f"study name {_shown(name)} is not valid: at most 200 printable characters on one line")
        settings = (settings or StudySettings()).check()
        data = {"format": cls.FORMAT, "name": name or root.name, "created": _now(), "created_by": by,
                "settings": settings.to_dict(), "signed_logs": True}
        key = load_site_key(create=True)
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(os_error_message(exc, root, "could not create the study folder")) from None
        if Path(key.path).resolve().is_relative_to(root.resolve()):
            raise UserError(f"the site key {key.path} lies inside the study {root}; keep it outside every study "
                            f"({SITE_KEY_ENV})")
        signed = sign_document(data, key)
        AuditLog(root / "readers.jsonl", required=True, what="study log").create()
        _publish_bytes((json.dumps(signed, indent=2) + "\n").encode("utf-8"), meta, "study description")
        return cls(root)

    # -- readers -------------------------------------------------------------------------

    @property
    def _readers_log(self) -> AuditLog:
        """The study's log: readers' qualification records and the registration of every case."""
        return AuditLog(self.root / "readers.jsonl", required=getattr(self, "created_signed", False),
                        what="study log")

    def _sign_study_json(self) -> None:
        """Sign an older study's unsigned study.json as found, before its log is first signed
        (a folder whose log is signed must have signed documents). Call under the study lock."""
        if self.signed:
            return
        meta = self.root / "study.json"
        signed = sign_document(self.meta, load_site_key(create=True))
        write_bytes_atomic(meta, (json.dumps(signed, indent=2) + "\n").encode("utf-8"), what="study description")
        with contextlib.suppress(OSError):
            os.chmod(meta, 0o444)
        self.meta, self.signed = signed, True

    def add_reader(self, reader: Reader, *, by: str, why: str = "") -> dict:
        """Record (or update: a new record, the old one is kept) a reader's qualification."""
        reader.check()
        by = check_who(by)
        with _lock(self.root, recovered=self._recovered):
            self._readers_log.records()               # refused when altered, before study.json is signed
            self._sign_study_json()
            return self._readers_log.append(who=by, role="coordinator", action="reader",
                                            what={**asdict(reader), **self._recovery(self.root)}, why=why)

    def registered_cases(self) -> dict[str, dict]:
        """{case id: its registration} from the study log (cases created since issue 12)."""
        key = ("registered", _stat_key(self.root / "readers.jsonl"), _stat_key(self.root / "readers.jsonl.head"))
        hit = self._checked.get(key)
        if hit is None:
            hit = {r["what"]["case"]: r["what"] for r in self._readers_log.records()
                   if r.get("action") == "case" and isinstance(r.get("what"), dict) and
                   isinstance(r["what"].get("case"), str)}
            self._checked[key] = hit
        return hit

    def readers(self) -> dict[str, Reader]:
        out = {}
        fields = set(Reader.__dataclass_fields__)
        for i, rec in enumerate(self._readers_log.records(), start=1):
            if rec.get("action", "reader") != "reader":
                continue
            r = rec.get("what")
            try:
                reader = Reader(**{k: v for k, v in r.items() if k in fields})
                reader.check()
            except (AttributeError, TypeError, UserError) as exc:
                raise UserError(f"reader list {self.root / 'readers.jsonl'} record {i} is not a valid reader record "
                                f"({str(exc)[:120] or type(exc).__name__}); the list was edited (restore it)") from None
            out[reader.id] = reader
        return out

    def reader(self, reader_id: str) -> Reader:
        check_id(reader_id, "reader id")
        rs = self.readers()
        if reader_id not in rs:
            raise UserError(f"unknown reader {reader_id!r}; add the reader's qualification first "
                            "('stroke-lesion reader add')")
        return rs[reader_id]

    def _recovery(self, folder: Path) -> dict:
        """What _lock recovered in ``folder`` (a stale lock taken over, leftovers removed),
        for the record written next: {"recovered": {...}} or {}."""
        info = self._recovered.pop(str(folder), None)
        return {"recovered": info} if info else {}

    def _append(self, case_id: str, *, who: str, role: str | None, action: str, what: dict, why: str = "") -> dict:
        """Append to the case's audit trail (under the case lock), with what the lock recovered.
        The files published for this record (``self._pending``) are part of the case from now on."""
        d = self.case_dir(case_id)
        rec = self._log(case_id).append(who=who, role=role, action=action, what={**what, **self._recovery(d)},
                                        why=why)
        self._pending.clear()
        return rec

    @contextlib.contextmanager
    def _case_lock(self, case_id: str):
        """The case's lock for a check-write-record section. Files published in it whose record
        could not be written (a full disk, a damaged log) are removed again, so a failed
        command leaves the case as it was."""
        with _lock(self.case_dir(case_id), recovered=self._recovered):
            self._pending = []
            try:
                yield
            except BaseException:
                for p in self._pending:
                    with contextlib.suppress(OSError):
                        p.unlink()
                raise
            finally:
                self._pending = []

    # -- cases ---------------------------------------------------------------------------

    def case_dir(self, case_id: str) -> Path:
        return self.root / "cases" / check_id(case_id, "case id")

    def case_ids(self) -> list[str]:
        d = self.root / "cases"
        return sorted(p.name for p in d.iterdir() if _ID_RE.match(p.name) and (p / "case.json").exists()) \
            if d.is_dir() else []

    def _log(self, case_id: str, *, strict: bool = True) -> AuditLog:
        """The case's audit trail; a case registered in the study log with a signed trail must
        keep it signed (and its head), so deleting or replacing it is noticed. ``strict=False``
        (verification): an altered study log is reported elsewhere, not raised here."""
        try:
            reg = self.registered_cases().get(case_id) or {}
        except UserError:
            if strict:
                raise
            reg = {"signed_log": self.created_signed}
        return AuditLog(self.case_dir(case_id) / "audit.jsonl", required=bool(reg.get("signed_log")),
                        what="audit trail")

    def init_case(self, case_id: str, *, dwi: str | os.PathLike, adc: str | os.PathLike,
                  others: dict[str, str | os.PathLike] | None = None, subject: str | None = None,
                  session: str = "01", by: str, why: str = "", assignments: dict[str, str] | None = None,
                  adc_units: str = "auto") -> CaseState:
        """Create a case: copy the images (and their JSON sidecars) into the case folder and
        assign the readers in ``assignments`` ({slot: reader id}).

        Atomic: everything is checked first (ids, labels, readers' qualifications, the images:
        readable, one grid, ADC units, the DWI/ADC pair of diffusion.check_adc_pair), then the
        case is built in a staging folder and renamed into ``cases/`` in one step. A refused
        case leaves nothing behind, so the corrected command can simply be run again.

        Every copied file's SHA-256 is recorded in case.json, and the case_init record of the
        audit trail records case.json's own digest, so an edited case.json is noticed."""
        from .diffusion import load_diffusion, parse_adc_units, sidecar_path
        d = self.case_dir(case_id)
        by = check_who(by)
        self._check_new_case(case_id)
        subject = check_label(subject or case_id, "subject")
        session = check_label(session, "session")
        images = {"dwi": dwi, "adc": adc, **{k: v for k, v in (others or {}).items() if v}}
        allowed = {"dwi", "adc", "flair", "t1w", "t2w", "b0"}
        bad = set(images) - allowed
        if bad:
            raise UserError(f"unknown image kind(s) {sorted(bad)}; use {sorted(allowed)}")
        self._check_unique_session(subject, session)
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
        with _lock(self.root, recovered=self._recovered):
            self._check_new_case(case_id)
            self._check_unique_session(subject, session)
            staging = self.root / ".staging"
            stage = staging / f"{case_id}.{os.getpid()}-{secrets.token_hex(4)}"
            try:
                stage.mkdir(parents=True)
                info_images = {}
                for kind, p in images.items():
                    p = Path(p)
                    name = f"{case_id}_{kind}" + (".nii.gz" if p.name.endswith(".nii.gz") else
                                                  "".join(p.suffixes[-1:]))
                    entry = {"file": f"images/{name}",
                             "sha256": _publish_copy(p, stage / "images" / name, f"{kind.upper()} copy"),
                             "source": str(p)}
                    sc = sidecar_path(p)
                    if sc.is_file():
                        scd = stage / "images" / f"{case_id}_{kind}.json"
                        entry["sidecar_sha256"] = _publish_copy(sc, scd, "JSON sidecar copy")
                        entry["sidecar"] = f"images/{scd.name}"
                    for ext in (".bval", ".bvec"):           # dcm2niix gradient tables of a DWI series
                        g = sc.with_suffix(ext)
                        if kind in ("dwi", "b0") and g.is_file():
                            gd = stage / "images" / f"{case_id}_{kind}{ext}"
                            entry[ext[1:] + "_sha256"] = _publish_copy(g, gd, f"{ext} copy")
                            entry[ext[1:]] = f"images/{gd.name}"
                    info_images[kind] = entry
                info_images["adc"]["units"] = {"units": case.units.units, "detected": case.units.detected,
                                               "brain_median_raw": case.units.brain_median_raw}
                info_images["adc"]["pair_check"] = {"checks": case.pair_check.get("checks", []),
                                                    "warnings": list(case.warnings)}
                info = json_safe({"case_id": case_id, "subject": subject, "session": session, "created": _now(),
                                  "created_by": by, "images": info_images, "brain_volume_ml": brain_ml})
                _publish_bytes((json.dumps(info, indent=2) + "\n").encode("utf-8"), stage / "case.json",
                               "case description")
                self._readers_log.records()           # the study log must verify before the case is registered
                self._sign_study_json()
                log = AuditLog(stage / "audit.jsonl", required=True, what="audit trail")
                log.create()
                log.append(who=by, role="coordinator", action="case_init",
                           what={"subject": subject, "session": session,
                                 "images": {k: v["sha256"] for k, v in info_images.items()},
                                 "case_json_sha256": case_digest(info), **self._recovery(self.root)}, why=why)
                for slot, rid in planned.items():
                    log.append(who=by, role="coordinator", action="assign",
                               what={"slot": slot, "reader": rid, "qualification": asdict(quals[slot])}, why=why)
                self._readers_log.append(who=by, role="coordinator", action="case",
                                         what={"case": case_id, "case_json_sha256": case_digest(info),
                                               "signed_log": True}, why=why)
                d.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.rename(stage, d)          # one step; refused when the case folder exists and is not empty
                except OSError as exc:
                    if (d / "case.json").exists():
                        raise UserError(f"case {case_id} already exists in {self.root}") from None
                    raise UserError(os_error_message(exc, d, f"could not create case {case_id}")) from None
            finally:
                shutil.rmtree(stage, ignore_errors=True)
                with contextlib.suppress(OSError):
                    staging.rmdir()              # only when empty
        return self.state(case_id)

    def _check_unique_session(self, subject: str, session: str) -> None:
        for other in self.case_ids():
            oi = self._info_or_none(other) or {}
            if (oi.get("subject"), oi.get("session")) == (subject, session):
                raise UserError(f"case {other} of study {self.root} already has subject {subject} session {session}; "
                                "give this case its own --subject/--session (BIDS needs one folder per session)")

    def _check_new_case(self, case_id: str) -> None:
        d = self.case_dir(case_id)
        if (d / "case.json").exists():
            raise UserError(f"case {case_id} already exists in {self.root}")
        if d.exists() and any(p.name != ".lock" for p in d.iterdir()):
            raise UserError(f"{d} exists without a case.json (left by an interrupted 'case init' of an older "
                            "version?); move it away and run 'case init' again")

    def _info_or_none(self, case_id: str) -> dict | None:
        try:
            return self._read_case_json(case_id)
        except UserError:
            return None

    def _read_case_json(self, case_id: str) -> dict:
        """case.json, its structure and paths checked (not yet against the audit trail)."""
        d = self.case_dir(case_id)
        p = d / "case.json"
        if not p.exists():
            raise UserError(f"no case {case_id!r} in study {self.root}; known cases: "
                            + (", ".join(self.case_ids()) or "none"))
        info = _read_json_object(p, "case description")
        images = info.get("images")
        if not isinstance(images, dict) or "dwi" not in images or not all(
                isinstance(e, dict) and isinstance(e.get("file"), str) and isinstance(e.get("sha256"), str)
                for e in images.values()) or not isinstance(info.get("subject"), str) or \
                not isinstance(info.get("session"), str):
            raise UserError(f"{p} is not a valid case description (images, subject, session); it was edited "
                            "(restore it from a backup)")
        for kind, e in images.items():
            for part in ("file", "sidecar", "bval", "bvec"):
                if e.get(part) is not None:
                    _confined(d, e[part], f"case {case_id}: {kind} {part}", p)
        return info

    def _case_record(self, case_id: str) -> tuple[dict, list[dict]]:
        """(case.json, the audit records), both verified: the audit trail's chain (AuditLog),
        and case.json against the trail's case_init record. Cached while the files are unchanged."""
        d = self.case_dir(case_id)
        key = ("case", case_id, _stat_key(d / "case.json"), _stat_key(d / "audit.jsonl"),
               _stat_key(d / "audit.jsonl.head"))
        hit = self._checked.get(key)
        if hit is not None:
            return hit
        info = self._read_case_json(case_id)
        recs = self._log(case_id).records()
        problem = case_json_problem(info, recs, case_id)
        if problem:
            raise UserError(f"{d / 'case.json'}: {problem}")
        self._checked[key] = (info, recs)
        return info, recs

    def case_info(self, case_id: str) -> dict:
        return self._case_record(case_id)[0]

    def case_file(self, case_id: str, kind: str = "dwi", part: str = "file", *, verify: bool = True) -> Path | None:
        """A file of the case's ``kind`` image: ``part`` "file" (the image), "sidecar", "bval" or
        "bvec" (None when the case has none). The path is confined to the case folder and, with
        ``verify``, the file's SHA-256 is checked against the one recorded when the case was
        created (an image replaced or edited afterwards is refused)."""
        info = self.case_info(case_id)
        if kind not in info["images"]:
            raise UserError(f"case {case_id} has no {kind} image")
        e = info["images"][kind]
        if e.get(part) is None:
            return None
        d = self.case_dir(case_id)
        p = _confined(d, e[part], f"case {case_id}: {kind} {part}", d / "case.json")
        want = e.get("sha256" if part == "file" else f"{part}_sha256")
        if verify:
            self._check_sha(p, want, f"{kind.upper()} {'image' if part == 'file' else part} of case {case_id}",
                            "when the case was created")
        return p

    def _check_sha(self, p: Path, want: str | None, what: str, when: str) -> None:
        if not p.is_file():
            raise UserError(f"{what} {p} is missing; restore it from a backup")
        if want is None:          # an older case: sidecars and gradient tables were not hashed
            return
        key = ("sha", str(p), _stat_key(p))
        if self._checked.get(key) != want:
            try:
                got = sha256_file(p)
            except OSError as exc:
                raise UserError(os_error_message(exc, p, f"could not read {what}")) from None
            if got != want:
                raise UserError(f"{what} {p} does not match the SHA-256 recorded {when}: it was replaced or edited "
                                "afterwards; restore it from a backup (stroke-lesion verify lists every problem)")
            self._checked[key] = want

    def image_path(self, case_id: str, kind: str = "dwi", *, verify: bool = True) -> Path:
        return self.case_file(case_id, kind, "file", verify=verify)

    def reference_image(self, case_id: str) -> sitk.Image:
        return read_image(self.image_path(case_id, "dwi"), "DWI")

    # -- state ---------------------------------------------------------------------------

    def state(self, case_id: str) -> CaseState:
        info, recs = self._case_record(case_id)
        st = CaseState(case_id, "annotating", info, records=recs)
        for i, r in enumerate(recs, start=1):
            try:
                _replay(st, r)
            except (KeyError, TypeError, ValueError, AttributeError):
                raise UserError(f"audit log {self.case_dir(case_id) / 'audit.jsonl'} record {i} "
                                f"({_shown(r.get('action'))}) is malformed; the log was edited (restore it from a "
                                "backup)") from None
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
        by = check_who(by)
        self.case_info(case_id)
        self._qualified_for(slot, reader_id, {}, case_id)
        with self._case_lock(case_id):
            st = self.state(case_id)
            reader = self._qualified_for(slot, reader_id, st.assignments, case_id)
            if slot in ANNOTATOR_SLOTS and slot in st.annotations:
                raise UserError(f"{slot} of case {case_id} has already annotated; the slot cannot be reassigned")
            if slot == "reviewer" and st.reviews or slot == "arbitrator" and st.arbitration:
                raise UserError(f"the {slot} of case {case_id} has already decided; cannot reassign")
            return self._append(case_id, who=by, role="coordinator", action="assign",
                                what={"slot": slot, "reader": reader_id, "qualification": asdict(reader)}, why=why)

    def _acting_slot(self, st: CaseState, reader_id: str, allowed: tuple[str, ...], action: str) -> str:
        check_id(reader_id, "reader id")
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
        _publish_image(img, final, what=f"{slot} mask")
        self._pending.append(final)
        return final, v

    def _rel(self, case_id: str, p: Path) -> str:
        return str(p.relative_to(self.case_dir(case_id)))

    def mask_path(self, case_id: str, rel: str) -> Path:
        """A file the audit trail records (masks, the comparison's lesion map), confined to the case."""
        d = self.case_dir(case_id)
        return _confined(d, rel, f"case {case_id}: recorded file", d / "audit.jsonl")

    def read_mask_version(self, case_id: str, rec: dict) -> sitk.Image:
        p = self.mask_path(case_id, rec["file"])
        if not p.exists():
            raise UserError(f"mask file {p} recorded in the audit trail is missing; restore it from a backup")
        self._check_sha(p, rec.get("sha256") or "", "mask file", "in the audit trail")
        return _binary(read_image(p, "mask file", finite=False))

    def lesion_map(self, case_id: str, compare: dict) -> np.ndarray:
        """The comparison's lesion-id map (checked against its recorded SHA-256 when recorded)."""
        p = self.mask_path(case_id, compare["lesion_map"])
        self._check_sha(p, compare.get("lesion_map_sha256"), "lesion-id map", "in the audit trail")
        return sitk.GetArrayFromImage(read_image(p, "lesion-id map", finite=False))

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
        with self._case_lock(case_id):
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
            return self._append(case_id, who=reader_id, role=slot, action="annotate", what=what, why=why)

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
        check_id(reader_id, "reader id")
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
                lab = self.lesion_map(case_id, st.compare)
                what["resolved_on"] = "compare"
                what["lesion"] = int(lab[k, j, i]) or None
            elif role in ANNOTATOR_SLOTS and role in st.annotations:
                from ClinicalMRICommonLib.agreement.segmentation_metrics import connected_components
                own = self.read_mask_version(case_id, st.annotations[role][-1])
                lab, _ = connected_components(own, self.settings.lesion_connectivity)
                what["resolved_on"] = f"{role} v{st.annotations[role][-1]['version']}"
                what["component"] = int(lab[k, j, i]) or None
        with self._case_lock(case_id):
            return self._append(case_id, who=reader_id, role=role, action="note", what=what)

    # -- compare -------------------------------------------------------------------------

    def compare(self, case_id: str, *, by: str, tolerance_mm: float = 1.0) -> dict:
        """Compare the latest masks of A and B (ClinicalMRICommonLib.agreement) and route the case."""
        by = check_who(by)
        from ClinicalMRICommonLib.agreement.segmentation_metrics import compare_masks, lesion_detection
        self.case_info(case_id)              # an unknown case: a UserError, no empty folder left by the lock
        with self._case_lock(case_id):
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
            _publish_image(_img(labels, a_img, np.uint16), map_path, what="lesion-id map")
            self._pending.append(map_path)
            agreement_clean = {k: (None if isinstance(v_, float) and not np.isfinite(v_) else v_)
                               for k, v_ in agreement.items()}
            result = {
                "version": v, "A": {"version": va["version"], "sha256": va["sha256"]},
                "B": {"version": vb["version"], "sha256": vb["sha256"]},
                "agreement": agreement_clean, "detection_B_vs_A": det, "n_lesions": n, "lesions": lesions,
                "lesion_map": self._rel(case_id, map_path), "lesion_map_sha256": sha256_file(map_path),
                "thresholds": asdict(th),
                "needs_review": bool(reasons), "reasons": reasons,
                "signoff_required": bool(self.settings.signoff_agreed),
            }
            cpath = cdir / f"{case_id}_compare_v{v:03d}.json"
            _publish_bytes((json.dumps(json_safe(result), indent=2) + "\n").encode("utf-8"), cpath, "comparison")
            self._pending.append(cpath)
            rec = self._append(case_id, who=by, role="system", action="compare", what=result,
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
        return self._append(case_id, who=by, role="system", action="consensus", what=what)

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
        labels = self.lesion_map(case_id, st.compare)
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
        with self._case_lock(case_id):
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
            rec = self._append(case_id, who=reader_id, role="reviewer", action="review", what=what, why=why)
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
        with self._case_lock(case_id):
            st2 = self.state(case_id)
            if st2.status != "arbitration" or len(st2.records) != len(st.records):
                raise UserError(f"case {case_id} changed while deciding; run the arbitration again")
            path, v = self._save_mask(case_id, "arbitration", result)
            what = {"decisions": {str(k): c for k, c in decisions.items()}, "report": report, "version": v,
                    "file": self._rel(case_id, path), "sha256": sha256_file(path),
                    "n_voxels": int(_arr(result).sum()), "final": True}
            rec = self._append(case_id, who=reader_id, role="arbitrator", action="arbitrate", what=what, why=why)
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
                measured = snr_cnr_from_labelmap(img, roi_labelmap)
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
        with self._case_lock(case_id):
            return self._append(case_id, who=reader_id, role="quality", action="quality", what=what,
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

    def case_view(self, case_id: str, viewer: str | None = None, *, coordinator: bool = False) -> dict:
        """The case as ``viewer`` may see it. Before the case is final an annotator sees only
        their own masks and notes and not the comparison; the reviewer and the arbitrator see
        everything. Without a viewer the view is blinded too (states and who has submitted,
        nobody's masks, notes or comparison) unless ``coordinator`` asks for the unblinded
        coordinator's view."""
        if viewer is not None and coordinator:
            raise UserError("the coordinator's unblinded view shows every reader's work; it is not given to a reader "
                            "(use --reader alone for a reader's view)")
        if viewer is not None:
            check_id(viewer, "reader id")
        st = self.state(case_id)
        slot = self._slot_of(st, viewer) if viewer else None
        blinded = st.status != "final" and (slot in ANNOTATOR_SLOTS or (viewer is None and not coordinator))
        nxt = {"annotating": _annotating_next(st),
               "ready_to_compare": "compare A and B",
               "review": "reviewer decides lesion by lesion (disagreement above thresholds)",
               "signoff": "reviewer signs off the proposed consensus (agreement within thresholds)",
               "arbitration": "arbitrator decides (disputed)", "final": "done"}[st.status]
        view = {"case_id": case_id, "subject": st.info["subject"], "session": st.info["session"],
                "status": st.status, "next": nxt, "assignments": st.assignments,
                "images": {k: v["file"] for k, v in st.info["images"].items()},
                "view": "coordinator (unblinded)" if coordinator else (f"reader {viewer}" if viewer else "blinded")}
        ann = {}
        for s, versions in st.annotations.items():
            if blinded and s != slot:
                ann[s] = {"submitted": True, "hidden": "blinded until the case is final"}
            else:
                ann[s] = [{k: v.get(k) for k in ("version", "file", "ts", "n_voxels", "volume_ml", "no_lesion")}
                          for v in versions]
        view["annotations"] = ann
        notes = [dict(n) for n in st.notes if not blinded or (viewer is not None and n["who"] == viewer)]
        if st.compare and not blinded and any(n.get("voxel_ijk") and n.get("lesion") is None for n in notes):
            lab = self.lesion_map(case_id, st.compare)
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

    def status(self, viewer: str | None = None, *, preflight: bool = False, coordinator: bool = False) -> list[dict]:
        """One row per case (the cases ``viewer`` is assigned to, when given). With
        ``preflight`` each row also says what is still missing for the dataset's acceptance,
        each item with the command that supplies it (preflight.missing_for_acceptance).
        Agreement and consensus volumes of unfinished cases only in the ``coordinator`` view."""
        from .preflight import missing_for_acceptance
        out = []
        for cid in self.case_ids():
            v = self.case_view(cid, viewer, coordinator=coordinator)
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

    # -- verification --------------------------------------------------------------------

    def verify(self, case_id: str) -> list[str]:
        """Integrity problems of a case (see :meth:`verify_case`); empty when intact."""
        return self.verify_case(case_id)["problems"]

    def verify_case(self, case_id: str) -> dict:
        """Everything wrong with a case, in one report ``{"problems": [...], "notices": [...]}``:
        the audit trail (chain and signatures, removed or edited records, a torn last line),
        case.json against the trail, every image, sidecar and gradient table against its
        recorded SHA-256, every file the trail records (masks, lesion-id maps), files no record
        names (left by an interrupted command), temporary files and a stale lock."""
        d = self.case_dir(case_id)
        problems: list[str] = []
        notices: list[str] = []
        log = self._log(case_id, strict=False)
        lv = log_verification(log)
        problems += [f"audit trail {log.path}: {p}" for p in lv["problems"]]
        notices += [f"audit trail {log.path}: {n}" for n in lv["notices"]]
        recs = lv["records"]
        try:
            info = self._read_case_json(case_id)
        except UserError as exc:
            return {"problems": problems + [str(exc)], "notices": notices}
        if not lv["problems"]:
            problem = case_json_problem(info, recs, case_id)
            if problem:
                problems.append(f"{d / 'case.json'}: {problem}")
        for kind, e in info["images"].items():
            for part in ("file", "sidecar", "bval", "bvec"):
                if e.get(part) is None:
                    continue
                want = e.get("sha256" if part == "file" else f"{part}_sha256")
                p = d / e[part]
                what = f"{kind.upper()} {'image' if part == 'file' else part}"
                if not p.is_file():
                    problems.append(f"{what} {p} is missing")
                elif want is None:
                    notices.append(f"{what} {p}: no SHA-256 recorded (a case created before issue 12); not checked")
                elif sha256_file(p) != want:
                    problems.append(f"{what} {p} does not match the SHA-256 recorded when the case was created "
                                    "(replaced or edited)")
        recorded = {"case.json", "audit.jsonl", "audit.jsonl.head"} | {e[part] for e in info["images"].values()
                                                                      for part in ("file", "sidecar", "bval", "bvec")
                                                                      if e.get(part)}
        for i, r in enumerate(recs, start=1):
            w = r.get("what") if isinstance(r, dict) else None
            if not isinstance(w, dict):
                continue
            for key, sha_key in (("file", "sha256"), ("lesion_map", "lesion_map_sha256")):
                if not isinstance(w.get(key), str):
                    continue
                recorded.add(w[key])
                try:
                    p = self.mask_path(case_id, w[key])
                except UserError as exc:
                    problems.append(f"record {i}: {exc}")
                    continue
                if not p.is_file():
                    problems.append(f"{p} (record {i}, {r.get('action')}) is missing")
                elif w.get(sha_key) and sha256_file(p) != w[sha_key]:
                    problems.append(f"{p} (record {i}, {r.get('action')}) changed after it was recorded")
            if r.get("action") == "compare" and isinstance(w.get("version"), int):
                recorded.add(f"compare/{case_id}_compare_v{w['version']:03d}.json")
        for p in sorted(q for q in d.rglob("*") if q.is_file()):
            rel = p.relative_to(d).as_posix()
            if rel == ".lock":
                owner = read_lock(p)
                notices.append(f"{p}: locked by {owner.describe() if owner else 'an unknown process'} (a command is "
                               "running, or it was interrupted: the next command takes a stale lock over)")
            elif is_temp_name(p.name):
                notices.append(f"{p}: temporary file of an interrupted write (removed by the next command)")
            elif rel not in recorded:
                notices.append(f"{p}: no record names this file (left by an interrupted command, or added by hand); "
                               "it is not part of the case")
        return {"problems": problems, "notices": notices}

    def verify_study(self) -> dict:
        """The whole study: study.json, the reader list and every case (:meth:`verify_case`).
        ``{"ok": bool, "study": {...}, "readers": {...}, "cases": {case: {...}}}``."""
        study = {"problems": [], "notices": []}
        meta = self.root / "study.json"
        try:
            doc = _read_json_object(meta, "study description")
            problems, notices = check_document(doc, str(meta), required=self._readers_log.is_signed())
        except UserError as exc:
            problems, notices = [str(exc)], []
        study["problems"] += problems
        study["notices"] += notices
        leftovers = [p for p in (self.root / ".staging").glob("*")] if (self.root / ".staging").is_dir() else []
        study["notices"] += [f"{p}: an interrupted 'case init' (removed by the next case init)" for p in leftovers]
        lv = log_verification(self._readers_log)
        readers = {"problems": list(lv["problems"]), "notices": list(lv["notices"])}
        if not lv["problems"]:
            try:
                self.readers()
            except UserError as exc:
                readers["problems"].append(str(exc))
        cases = {}
        d = self.root / "cases"
        names = sorted(p.name for p in d.iterdir() if p.is_dir()) if d.is_dir() else []
        try:
            registered = self.registered_cases() if not lv["problems"] else {}
        except UserError:
            registered = {}
        for name in sorted(set(registered) - set(names)):
            study["problems"].append(f"case {name} is registered in the study log but its folder {d / name} is "
                                     "missing (deleted or moved); restore it from a backup")
        for name in names:
            if name not in registered and _ID_RE.match(name) and (d / name / "case.json").exists() and \
                    not lv["problems"]:
                note = (f"case {name} is not registered in the study log (created before issue 12, or copied in "
                        "by hand)")
                (study["problems"] if self.created_signed else study["notices"]).append(note)
            if not _ID_RE.match(name):
                study["problems"].append(f"{d / name}: not a valid case id (added by hand?)")
                continue
            if not (d / name / "case.json").exists():
                study["problems"].append(f"{d / name}: a case folder without case.json (deleted or never finished)")
                continue
            cases[name] = self.verify_case(name)
        ok = not study["problems"] and not readers["problems"] and not any(c["problems"] for c in cases.values())
        return {"ok": ok, "study": study, "readers": readers, "cases": cases}


def log_verification(log: AuditLog) -> dict:
    """``{"problems", "notices", "records"}`` of an audit log (never raises)."""
    v = log.verification()
    return {"problems": list(v.problems), "notices": list(v.notices) + list(v.info), "records": list(v.records)}
