"""The one tamper-evident log of the extension (reader studies, training sessions, the stroke
workflow's case audit trails and reader lists, the active-learning loop), and signed JSON
documents (a study's or session's description).

How a log is kept
-----------------
A log is an append-only JSON-lines file (``<name>.jsonl``). :meth:`AuditLog.append` adds to
the caller's fields (any JSON object: ``event``/``by``/``data``, ``who``/``role``/``action``/
``what``/``why``, ...):

- ``seq`` (1, 2, ...), the time (``time``, or the caller's ``time_field``, UTC), ``os_user``
  and ``host`` (what the operating system says, next to the id the user typed);
- ``prev``: the previous record's hash, and ``hash``: SHA-256 of the record's canonical JSON
  (sorted keys, no spaces) without ``hash`` and ``sig`` -- the **chain**;
- ``key_id`` and ``sig``: HMAC-SHA256 of the hash with the **site key** -- the **signature**.

After every append a **head file** (``<name>.jsonl.head``, written atomically, signed) records
the number of records and the last hash, so removing records from the end is noticed. Appends
happen under :func:`ClinicalMRICommonLib.locks.folder_lock` of the log's folder (re-entrant:
callers that hold it for their check-write-log section keep it). A torn last line (an
interrupted write: no newline, not valid JSON) is ignored and reported, never fatal, and cut
off by the next append.

The site key
------------
32 random bytes (hex, one line) in a file **outside** every study folder: the path given by
the caller, else ``$CLINICALMRI_SITE_KEY_FILE``, else ``~/.config/clinicalmri/site.key``
(``$XDG_CONFIG_HOME`` respected; ``%APPDATA%\\ClinicalMRI`` on Windows). It is created on
first *write* with mode 0600 in a folder of mode 0700; reading never creates one. A folder
records only the key's id (the first 16 hex digits of its SHA-256), never the key. Copy the
key file to every computer of the site that works on the same folders; keep a backup (without
it, the folders' signatures cannot be checked).

:meth:`AuditLog.verify` reports everything wrong in one list (:class:`Verification`):
an edited record (hash), a chain recomputed without the key (signature), records removed,
inserted or reordered (seq / prev), a removed tail (head), a missing or edited head, another
site's key, a missing key, unsigned records after signed ones. ``records()`` refuses with
the first problem in one line (and how many more).

What it can prove, and what not
-------------------------------
It proves that the records and documents were written by someone holding this site's key
and that none was edited, removed, inserted or reordered since, and that the log was not cut
after its head was written. It **cannot** prove:

- who sat at the keyboard: reader ids are typed; ``os_user``/``host`` are what the operating
  system says (an administrator, or anyone who can run programs as that user, can say
  otherwise), which makes casual impersonation visible, not impossible;
- anything against someone holding the site key (the key file is a secret of the site, like
  a password: whoever can read it can forge records, documents and heads);
- that a folder was not replaced as a whole by an older copy of itself (log and head restored
  together from a backup look like the earlier state), or by another complete folder signed
  with the same key: keep off-site copies of the head files, or of the folder, to compare;
- that files the records point to are intact: their SHA-256 is recorded, and the tools check
  it before they use a file (``verify`` commands check all of them).

Old logs (before signing)
-------------------------
Logs written before signatures (ClinicalMRI :data:`SIGNED_SINCE`, hash chain only, or no chain
at all) are read, not refused: :meth:`AuditLog.verify` reports "unsigned (created before
...)" as a notice, still checks their SHA-256 chain where they have one, and the next append
signs from then on: the first signed record carries ``legacy`` (the number of unsigned records
before it and the SHA-256 of all of them), and a head file is written, so the unsigned part
is frozen as found. An unsigned record after a signed one is a problem. A folder whose log is
signed must have signed documents (removing the signatures to make it look old is noticed).

Only the standard library is imported at module level (the Slicer start-up rule).
"""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import hmac
import json
import os
import secrets
import socket
import stat
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from . import __version__
from .errors import InputWarning, UserError, os_error_message

__all__ = ["DOCUMENT_SIGNATURE", "SIGNED_SINCE", "SITE_KEY_ENV", "AuditLog", "SiteKey", "Verification",
           "canonical_json", "check_document", "default_site_key_path", "inside_folder", "load_site_key", "os_user",
           "record_hash", "sign_document", "site_key_path", "utc_now", "write_signed_json"]

#: Environment variable naming the site key file.
SITE_KEY_ENV = "CLINICALMRI_SITE_KEY_FILE"
#: The version that signs logs and documents ("unsigned (created before version ...)").
SIGNED_SINCE = __version__
HEAD_FORMAT = "clinicalmri-audit-head/1"
#: Fields the log adds to every record (a caller's fields of these names are replaced).
CHAIN_FIELDS = ("seq", "os_user", "host", "prev", "key_id", "hash", "sig", "legacy")
DOCUMENT_SIGNATURE = "signature"
_KEY_BYTES = 32
_REC_DOMAIN = b"clinicalmri-audit-record/1\n"
_HEAD_DOMAIN = b"clinicalmri-audit-head/1\n"
_DOC_DOMAIN = b"clinicalmri-document/1\n"


# ---------------------------------------------------------------------------------------
# small helpers


def utc_now() -> str:
    """The current time, UTC, ISO 8601 to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def os_user() -> str:
    """The operating-system account running this process (what the OS says)."""
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - containers without a passwd entry
        return "unknown"


def _host() -> str:
    try:
        return socket.gethostname() or "unknown"
    except OSError:
        return "unknown"


def canonical_json(obj) -> bytes:
    """Canonical JSON bytes: sorted keys, no spaces, ASCII (what hashes and signatures cover)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode("utf-8")


def record_hash(record: dict) -> str:
    """SHA-256 (hex) of a record's canonical JSON without ``hash`` and ``sig`` (the chain
    hash; the same as the older unsigned logs' hash)."""
    body = {k: v for k, v in record.items() if k not in ("hash", "sig")}
    return hashlib.sha256(canonical_json(body)).hexdigest()


def _plain(obj):
    """Plain JSON values (numpy scalars, paths; NaN/inf -> None), so hashes are reproducible."""
    from .files import json_safe

    return json.loads(json.dumps(json_safe(obj), allow_nan=False))


# ---------------------------------------------------------------------------------------
# the site key


def default_site_key_path() -> Path:
    """``~/.config/clinicalmri/site.key`` (``$XDG_CONFIG_HOME``; ``%APPDATA%`` on Windows)."""
    if os.name == "nt" and os.environ.get("APPDATA"):
        return Path(os.environ["APPDATA"]) / "ClinicalMRI" / "site.key"
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "clinicalmri" / "site.key"


def site_key_path(path: str | os.PathLike | None = None) -> Path:
    """The site key file: ``path``, else ``$CLINICALMRI_SITE_KEY_FILE``, else the default."""
    if path is not None and str(path).strip():
        return Path(path).expanduser()
    env = os.environ.get(SITE_KEY_ENV, "").strip()
    return Path(env).expanduser() if env else default_site_key_path()


@dataclass(frozen=True)
class SiteKey:
    """A site's signing key. ``key_id`` (16 hex digits of its SHA-256) is what folders record."""

    path: Path
    secret: bytes = field(repr=False)

    @property
    def key_id(self) -> str:
        return hashlib.sha256(self.secret).hexdigest()[:16]

    def sign(self, data: bytes) -> str:
        return hmac.new(self.secret, data, hashlib.sha256).hexdigest()

    def check(self, data: bytes, signature) -> bool:
        return isinstance(signature, str) and hmac.compare_digest(self.sign(data), signature)


def _parse_key(raw: bytes, p: Path) -> bytes:
    text = raw.decode("ascii", "replace").strip().split()
    try:
        secret = bytes.fromhex(text[0]) if text else b""
    except ValueError:
        secret = b""
    if len(secret) < 16:
        raise UserError(f"site key file {p} is not a ClinicalMRI site key (expected one line of at least 32 hex "
                        f"digits); restore the site's key file or point {SITE_KEY_ENV} at it")
    return secret


def _warn_if_open(p: Path) -> None:
    if os.name == "nt":
        return
    with contextlib.suppress(OSError):
        mode = p.stat().st_mode
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            warnings.warn(f"site key file {p} can be read by other users (mode {stat.S_IMODE(mode):o}); anyone who "
                          f"reads it can forge records: run 'chmod 600 {p}'", InputWarning, stacklevel=3)


def load_site_key(path: str | os.PathLike | None = None, *, create: bool = False) -> SiteKey:
    """The site key (see :func:`site_key_path`). ``create``: make a new one when the file is
    missing (mode 0600; folder 0700; two processes creating it at once get the same key).
    UserError when it is missing (and not created) or malformed."""
    p = site_key_path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        if not create:
            raise UserError(f"the site key {p} does not exist, so signatures cannot be checked; copy the site's key "
                            f"file there or set {SITE_KEY_ENV} to its path") from None
        raw = _create_key(p)
    except IsADirectoryError:
        raise UserError(f"site key path {p} is a folder; give the key file ({SITE_KEY_ENV})") from None
    except OSError as exc:
        raise UserError(os_error_message(exc, p, "could not read the site key")) from None
    secret = _parse_key(raw, p)
    _warn_if_open(p)
    return SiteKey(p, secret)


def _create_key(p: Path) -> bytes:
    data = (secrets.token_hex(_KEY_BYTES) + "\n").encode("ascii")
    tmp = p.parent / f".{p.name}.{secrets.token_hex(6)}.new"
    try:
        p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            from .locks import write_all

            write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, p)  # exclusive: of two creators, one key wins and both use it
        except FileExistsError:
            return p.read_bytes()
        except OSError:
            with contextlib.suppress(FileExistsError):
                fd = os.open(p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                return data
            return p.read_bytes()
        return data
    except OSError as exc:
        raise UserError(os_error_message(exc, p, "could not create the site key")) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _check_outside(key: SiteKey, folder: Path) -> None:
    """The key must not live inside the folder it protects (whoever copies the folder would
    get the key)."""
    try:
        Path(key.path).resolve().relative_to(Path(folder).resolve())
    except ValueError:
        return
    raise UserError(f"the site key {key.path} lies inside {folder}, the folder it protects; move it outside "
                    f"(e.g. {default_site_key_path()}) and set {SITE_KEY_ENV}")


def inside_folder(folder: str | os.PathLike, relative, what: str) -> Path:
    """``folder / relative`` for a path a certified record or document names (a mask, a
    reference, a copied image), when it stays inside ``folder``: no absolute path, no ``..``
    leading out, no symbolic link pointing out; UserError naming ``what`` otherwise (the record
    was edited: e.g. ``../../x`` must never be read or exported)."""
    folder = Path(folder)
    rel = str(relative or "")
    p = Path(rel)
    if not rel or p.is_absolute() or p.drive:
        raise UserError(f"{what} {rel[:200]!r} is not a path inside {folder}: the record was edited")
    full = folder / p
    try:
        full.resolve().relative_to(folder.resolve())
    except ValueError:
        raise UserError(f"{what} {rel[:200]!r} points outside {folder}: the record was edited") from None
    return full


# ---------------------------------------------------------------------------------------
# signed JSON documents (a study's or session's description)


def sign_document(doc: dict, key: SiteKey) -> dict:
    """``doc`` (plain JSON values) with a ``signature`` over everything else."""
    body = _plain({k: v for k, v in doc.items() if k != DOCUMENT_SIGNATURE})
    mac = key.sign(_DOC_DOMAIN + canonical_json(body))  # covers everything but the signature itself
    body[DOCUMENT_SIGNATURE] = {"key_id": key.key_id, "hmac": mac}
    return body


def write_signed_json(path: str | os.PathLike, doc: dict, *, what: str = "document",
                      key_path: str | os.PathLike | None = None, key: SiteKey | None = None) -> dict:
    """Sign ``doc`` with the site key (created on first use) and write it atomically (verified
    read-back). Returns the signed document."""
    from .files import write_json_atomic

    key = key or load_site_key(key_path, create=True)
    _check_outside(key, Path(path).parent)
    signed = sign_document(doc, key)
    write_json_atomic(path, signed, what=what)
    return signed


def check_document(doc: dict, name: str, *, required: bool, key: SiteKey | None = None,
                   key_path: str | os.PathLike | None = None) -> tuple[list[str], list[str]]:
    """(problems, notices) of a document's signature. ``required``: the folder is signed (its
    log is), so an unsigned document is a problem; otherwise it is a notice (an old folder)."""
    sig = doc.get(DOCUMENT_SIGNATURE)
    if sig is None:
        if required:
            return [f"{name} is not signed although its folder's log is: it was replaced or its signature removed"], []
        return [], [f"{name} is unsigned (created before version {SIGNED_SINCE}); it is signed at the next change"]
    if not isinstance(sig, dict) or not isinstance(sig.get("hmac"), str):
        return [f"{name} has a damaged signature: it was edited by hand"], []
    if key is None:
        try:
            key = load_site_key(key_path)
        except UserError as exc:
            return [f"{name} cannot be checked: {exc}"], []
    data = _DOC_DOMAIN + canonical_json({k: v for k, v in doc.items() if k != DOCUMENT_SIGNATURE})
    if sig.get("key_id") != key.key_id:
        return [(f"{name} was signed with another site key (id {sig.get('key_id')}; this computer's key {key.path} "
                 f"has id {key.key_id}): use the site's key file ({SITE_KEY_ENV}), or it was replaced")], []
    if not key.check(data, sig.get("hmac")):
        return [f"{name} was edited after it was signed (its signature does not match its content)"], []
    return [], []


# ---------------------------------------------------------------------------------------
# the log


@dataclass
class Verification:
    """What :meth:`AuditLog.verify` found: ``problems`` (altered, removed, unverifiable) and
    ``notices`` (unsigned old records not yet followed by signed ones, a torn last line, a head
    behind after an interrupted write) and ``info`` (an unsigned old part frozen when signing
    began). ``records`` are the complete records read (the torn tail left out)."""

    what: str
    path: Path
    records: list = field(default_factory=list)
    problems: list = field(default_factory=list)
    notices: list = field(default_factory=list)
    info: list = field(default_factory=list)
    signed: bool = False
    torn: str | None = None
    head: dict | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def message(self, hint: str = "") -> str:
        """One line: the first problem, how many more, and ``hint``."""
        more = len(self.problems) - 1
        state = "cannot be checked" if self.problems[0].startswith("its signatures cannot be checked") else \
            "was altered or is incomplete"
        return (f"{self.what} {self.path} {state}: {self.problems[0]}"
                + (f" (and {more} more problem{'s' if more > 1 else ''})" if more > 0 else "")
                + (f"; {hint}" if hint else ""))

    def raise_if_altered(self, hint: str = "") -> None:
        if self.problems:
            raise UserError(self.message(hint))


def _split_lines(data: bytes):
    """(list of (line number, record or None when not JSON), torn text or None)."""
    pieces = data.split(b"\n")
    out, torn = [], None
    for i, raw in enumerate(pieces, start=1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            rec = None
        if rec is None and i == len(pieces):  # the last piece, without a newline: an interrupted write
            torn = raw.decode("utf-8", "replace")
            break
        out.append((i, rec if isinstance(rec, dict) else None))
    return out, torn


def _prefix_digest(records: list[dict]) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(canonical_json(r) + b"\n")
    return h.hexdigest()


class AuditLog:
    """A signed, hash-chained, append-only JSON-lines log with a signed head file.

    ``what`` names it in messages ("reading log"). ``key_path``: the site key (default
    :func:`site_key_path`). ``required``: every record must be signed (a folder made by a
    version that signs); otherwise unsigned old records are read (notices). ``time_field``:
    the name of the time field the log adds when the caller gives none (``time``; the stroke
    workflow's logs use ``ts``). ``lock_folder``: the folder whose lock guards appends
    (default: the log's folder)."""

    def __init__(self, path: str | os.PathLike, what: str = "audit log", *, key_path=None,
                 required: bool = False, time_field: str = "time", lock_folder=None, head_path=None):
        self.path = Path(path)
        self.what = what
        self.key_path = key_path
        self.required = required
        self.time_field = time_field
        self.lock_folder = Path(lock_folder) if lock_folder is not None else self.path.parent
        self.head_path = Path(head_path) if head_path is not None else self.path.with_name(self.path.name + ".head")

    # ---- reading ------------------------------------------------------------------------

    def is_signed(self) -> bool:
        """True when the log has a head file or a signed record (it must then stay signed)."""
        if self.head_path.exists():
            return True
        try:
            with open(self.path, "rb") as f:
                return b'"sig":' in f.read(1 << 20)
        except OSError:
            return False

    def _read_head(self, v: Verification, key: SiteKey | None) -> dict | None:
        try:
            raw = self.head_path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            v.problems.append(os_error_message(exc, self.head_path, "cannot read the head file"))
            return None
        try:
            head = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            head = None
        if not isinstance(head, dict) or head.get("format") != HEAD_FORMAT or \
                not isinstance(head.get("count"), int) or not isinstance(head.get("last_hash"), str):
            v.problems.append(f"its head file {self.head_path.name} is damaged (not a {HEAD_FORMAT} record)")
            return None
        if key is not None:
            if head.get("key_id") != key.key_id:
                v.problems.append(f"its head file {self.head_path.name} was signed with another site key (id "
                                  f"{head.get('key_id')}; this computer's key has id {key.key_id})")
            elif not key.check(_HEAD_DOMAIN + canonical_json({k: x for k, x in head.items() if k != "sig"}),
                               head.get("sig")):
                v.problems.append(f"its head file {self.head_path.name} was edited (its signature does not match)")
        return head

    def verify(self, *, key: SiteKey | None = None) -> Verification:
        """Check the whole log and its head (see the module docstring); never raises for what
        it finds (a problem with reading the file itself is a problem too)."""
        v = Verification(self.what, self.path)
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            data = None
        except IsADirectoryError:
            v.problems.append(f"{self.path} is a folder, not the {self.what}")
            return v
        except OSError as exc:
            v.problems.append(os_error_message(exc, self.path, "cannot read it"))
            return v
        lines, v.torn = _split_lines(data or b"")
        head_exists = self.head_path.exists()
        any_sig = any(rec is not None and "sig" in rec for _, rec in lines)
        v.signed = head_exists or any_sig or self.required
        if v.signed and key is None:
            try:
                key = load_site_key(self.key_path)
            except UserError as exc:
                v.problems.append(f"its signatures cannot be checked: {exc}")
        if data is None:
            if head_exists or self.required:
                v.problems.append(f"the log file {self.path.name} is missing (it was deleted or moved); restore it")
            return v
        head = self._read_head(v, key) if head_exists else None
        v.head = head
        prev = legacy_prev = ""
        signed_from = None
        unsigned = []
        for n, (line_no, rec) in enumerate(lines, start=1):
            if rec is None:
                v.problems.append(f"line {line_no} is not a valid JSON record (the file was damaged or edited)")
                prev = ""
                continue
            v.records.append(rec)
            if "sig" in rec:
                if signed_from is None:
                    signed_from = n
                    if n > 1:
                        want = {"records": n - 1, "sha256": _prefix_digest(v.records[:-1])}
                        if rec.get("legacy") != want:
                            v.problems.append(f"the {n - 1} unsigned record(s) before record {n} are not those the "
                                              "log was signed after (they were edited, added or removed)")
                if rec.get("seq") != n:
                    v.problems.append(f"record {n} carries sequence number {rec.get('seq')!r}: records were "
                                      "removed, inserted or reordered")
                if rec.get("prev") != prev:
                    v.problems.append(f"record {n} does not follow record {n - 1} (its 'prev' hash differs): "
                                      "records were removed, inserted or reordered" if n > 1 else
                                      f"record {n} is not the first record of the log (records before it were "
                                      "removed)")
                if rec.get("hash") != record_hash(rec):
                    v.problems.append(f"record {n} fails its SHA-256 chain check: it was edited after it was written")
                elif key is not None:
                    if rec.get("key_id") != key.key_id:
                        v.problems.append(f"record {n} was signed with another site key (id {rec.get('key_id')}; "
                                          f"this computer's key {key.path} has id {key.key_id})")
                    elif not key.check(_REC_DOMAIN + rec["hash"].encode("ascii"), rec.get("sig")):
                        v.problems.append(f"record {n} does not carry the site key's signature: it was edited and "
                                          "its hash chain recomputed without the key")
                prev = rec.get("hash") if isinstance(rec.get("hash"), str) else record_hash(rec)
                continue
            # an unsigned record
            if signed_from is not None:
                v.problems.append(f"record {n} is not signed but follows signed records: it was added or edited "
                                  "outside the tool")
            else:
                unsigned.append(n)
            if "hash" in rec:  # an older hash-chained record: its chain is still checked
                if rec.get("prev") != legacy_prev or rec.get("hash") != record_hash(rec):
                    v.problems.append(f"record {n} fails its SHA-256 chain check: it was edited, removed or "
                                      "reordered after it was written")
                legacy_prev = rec.get("hash")
            prev = rec["hash"] if isinstance(rec.get("hash"), str) else record_hash(rec)
        count = len(v.records)
        damaged = count != len(lines)
        if unsigned and signed_from is not None:
            span = f"record {unsigned[0]}" if len(unsigned) == 1 else f"records {unsigned[0]}-{unsigned[-1]}"
            v.info.append(f"{span} of {self.path.name} {'was' if len(unsigned) == 1 else 'were'} written unsigned "
                          f"(before version {SIGNED_SINCE}) and frozen as found when signing began at record "
                          f"{signed_from}")
        elif unsigned and self.required:
            one = len(unsigned) == 1
            span = f"record {unsigned[0]} is" if one else f"records {unsigned[0]}-{unsigned[-1]} are"
            v.problems.append(f"{span} not signed although this folder signs its logs: added or edited outside the "
                              "tool")
        elif unsigned:
            span = f"record {unsigned[0]}" if len(unsigned) == 1 else f"records {unsigned[0]}-{unsigned[-1]}"
            v.notices.append(f"{span} of {self.path.name} {'is' if len(unsigned) == 1 else 'are'} unsigned (created "
                             f"before version {SIGNED_SINCE}); the log is signed from its next record on")
        if v.torn is not None:
            v.notices.append(f"the last line of {self.path.name} was incomplete (an interrupted write, "
                             f"{len(v.torn)} characters); it was ignored and is removed by the next change")
        if damaged:
            pass  # a damaged line: the counts below would only repeat it
        elif head_exists and head is not None:
            hc = head["count"]
            if hc > count:
                cut = hc - count
                v.problems.append(f"the last {cut} record(s) were removed (its head file records {hc} records, the "
                                  f"log has {count})" + ("; the last line was cut short" if v.torn is not None else ""))
            else:
                at = v.records[hc - 1] if hc > 0 else None
                link = "" if at is None else (at["hash"] if isinstance(at.get("hash"), str) else record_hash(at))
                if link != head["last_hash"]:
                    v.problems.append(f"record {hc} is not the one its head file recorded: the history was rewritten")
                elif hc < count:
                    v.notices.append(f"its head file was {count - hc} record(s) behind (an interrupted write); it is "
                                     "brought up to date by the next change")
        elif not head_exists and (any_sig or self.required):
            v.problems.append(f"its head file {self.head_path.name} is missing, so removed records cannot be ruled "
                              "out (restore it from a backup)")
        return v

    def records(self) -> list[dict]:
        """The records, after :meth:`verify`; UserError (one line: the first problem) when
        anything was altered. A torn last line is ignored."""
        v = self.verify()
        v.raise_if_altered()
        return v.records

    # ---- writing ------------------------------------------------------------------------

    def create(self) -> None:
        """Start a new, empty signed log (the log file and a head of 0 records), so that a
        later deletion of both is noticed by a folder that ``required`` them. Refused when
        the log or its head exists."""
        from .files import write_bytes_atomic
        from .locks import folder_lock

        with folder_lock(self.lock_folder):
            if self.path.exists() or self.head_path.exists():
                raise UserError(f"{self.what} {self.path} already exists; it is never started again")
            key = load_site_key(self.key_path, create=True)
            _check_outside(key, self.lock_folder)
            write_bytes_atomic(self.path, b"", what=self.what, exclusive=True)
            self._write_head(key, 0, "")

    def _write_head(self, key: SiteKey, count: int, last_hash: str) -> None:
        from .files import write_json_atomic

        head = {"format": HEAD_FORMAT, "log": self.path.name, "count": count, "last_hash": last_hash,
                "key_id": key.key_id, "time": utc_now()}
        head["sig"] = key.sign(_HEAD_DOMAIN + canonical_json(head))
        write_json_atomic(self.head_path, head, what=f"head file of the {self.what}")

    def append(self, body: dict) -> dict:
        """Append one record (under the log folder's lock; re-entrant): verifies the log first
        (refused when anything was altered: nothing is written), signs the record, appends it
        (synced), then updates the head. Returns the record with its chain fields."""
        from .files import append_jsonl
        from .locks import folder_lock

        if not isinstance(body, dict):
            raise TypeError("an audit record is a dict")
        with folder_lock(self.lock_folder):
            key = load_site_key(self.key_path, create=True)
            _check_outside(key, self.lock_folder)
            v = self.verify(key=key)
            v.raise_if_altered("nothing was written; restore the folder from a backup")
            recs = v.records
            last = recs[-1] if recs else None
            prev = "" if last is None else (last["hash"] if isinstance(last.get("hash"), str) else record_hash(last))
            head = v.head
            if head is None or head.get("count") != len(recs):
                self._write_head(key, len(recs), prev)  # the head exists before any signed record
            rec = {k: x for k, x in _plain(body).items() if k not in CHAIN_FIELDS}
            if not rec.get(self.time_field):
                rec[self.time_field] = utc_now()
            rec.update(seq=len(recs) + 1, os_user=os_user(), host=_host(), prev=prev, key_id=key.key_id)
            if recs and not any("sig" in r for r in recs):
                rec["legacy"] = {"records": len(recs), "sha256": _prefix_digest(recs)}
            rec["hash"] = record_hash(rec)
            rec["sig"] = key.sign(_REC_DOMAIN + rec["hash"].encode("ascii"))
            with warnings.catch_warnings():
                if v.torn is not None:  # already reported by verify(); cutting it off is expected
                    warnings.simplefilter("ignore", InputWarning)
                append_jsonl(self.path, rec, self.what)
            try:
                self._write_head(key, len(recs) + 1, rec["hash"])
            except UserError as exc:  # the record is safely in the log; the next append repairs the head
                warnings.warn(f"{exc} (the record was saved; the head is brought up to date by the next change)",
                              InputWarning, stacklevel=2)
            return rec
