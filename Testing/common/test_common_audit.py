"""The one tamper-evident log (ClinicalMRICommonLib.audit): records chained by SHA-256 and
signed with the site key kept outside the folder, a signed head so a removed tail shows,
verify() listing every problem, torn tails survived, old unsigned logs read and signed from
then on, signed documents, and appends from several processes keeping one chain."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
from ClinicalMRICommonLib.audit import (
    SIGNED_SINCE,
    SITE_KEY_ENV,
    AuditLog,
    check_document,
    inside_folder,
    load_site_key,
    record_hash,
    sign_document,
    site_key_path,
)
from ClinicalMRICommonLib.errors import UserError


@pytest.fixture
def key_file(tmp_path, monkeypatch):
    p = tmp_path / "keys" / "site.key"
    monkeypatch.setenv(SITE_KEY_ENV, str(p))
    return p


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _write(path, recs):
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in recs))


def _log_with(tmp_path, n=4):
    log = AuditLog(tmp_path / "study" / "audit.jsonl", "reading log", required=True)
    log.create()
    for i in range(n):
        log.append({"event": "save", "by": f"r{i}", "data": {"i": i}})
    return log


def test_key_created_on_first_write_outside_the_folder_mode_0600(tmp_path, key_file):
    log = AuditLog(tmp_path / "study" / "audit.jsonl", "reading log")
    assert not key_file.exists()
    rec = log.append({"event": "init", "by": "coordinator"})
    assert key_file.exists() and stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(key_file.parent.stat().st_mode) == 0o700
    key = load_site_key()
    assert rec["key_id"] == key.key_id and len(key.key_id) == 16
    secret_hex = key.secret.hex()
    for p in (tmp_path / "study").rglob("*"):
        assert secret_hex not in p.read_text()      # the study records the key's id, never the key
    assert rec["os_user"] and rec["host"] and rec["by"] == "coordinator" and rec["seq"] == 1 and rec["prev"] == ""
    assert site_key_path("/x/other.key").as_posix() == "/x/other.key"   # a path given wins over the variable


def test_reading_never_creates_a_key(tmp_path, key_file):
    log = _log_with(tmp_path, 1)
    key_file.unlink()
    v = log.verify()
    assert not key_file.exists()
    assert any("signatures cannot be checked" in p and str(key_file) in p for p in v.problems)
    with pytest.raises(UserError, match="site key .* does not exist"):
        log.records()


def test_malformed_key_and_key_inside_the_folder_are_refused(tmp_path, key_file):
    key_file.parent.mkdir(parents=True)
    key_file.write_text("not a key\n")
    with pytest.raises(UserError, match="is not a ClinicalMRI site key"):
        AuditLog(tmp_path / "a.jsonl").append({"event": "x"})
    inside = tmp_path / "study" / "site.key"
    with pytest.raises(UserError, match="lies inside .* the folder it protects"):
        AuditLog(tmp_path / "study" / "audit.jsonl", key_path=inside).append({"event": "x"})


def test_a_clean_log_verifies(tmp_path, key_file):
    log = _log_with(tmp_path)
    v = log.verify()
    assert v.ok and v.signed and not v.notices, v.problems
    recs = log.records()
    assert [r["seq"] for r in recs] == [1, 2, 3, 4]
    assert all(recs[i]["prev"] == recs[i - 1]["hash"] for i in range(1, 4))
    head = json.loads(log.head_path.read_text())
    assert head["count"] == 4 and head["last_hash"] == recs[-1]["hash"]


def test_verify_reports_every_kind_of_tampering_at_once(tmp_path, key_file):
    log = _log_with(tmp_path, 6)
    recs = _lines(log.path)
    recs[1]["by"] = "chief"                                  # edited, hash left as it was
    recs[2]["data"] = {"i": 99}
    recs[2]["hash"] = record_hash(recs[2])                   # edited, chain recomputed without the key
    recs[3], recs[4] = recs[4], recs[3]                      # reordered
    _write(log.path, recs[:5])                               # the last record removed
    v = log.verify()
    text = " | ".join(v.problems)
    assert "record 2 fails its SHA-256 chain check" in text
    assert "does not carry the site key's signature" in text
    assert "sequence number" in text and "reordered" in text
    assert "the last 1 record(s) were removed" in text
    with pytest.raises(UserError, match=r"reading log .* was altered or is incomplete: record 2 fails its SHA-256 "
                                        r"chain check.*\(and \d+ more problems\)"):
        log.records()
    with pytest.raises(UserError, match="nothing was written"):
        log.append({"event": "save"})
    assert len(_lines(log.path)) == 5                        # nothing appended to an altered log


def test_recomputed_chain_and_head_without_the_key_is_noticed(tmp_path, key_file):
    log = _log_with(tmp_path, 3)
    recs = _lines(log.path)
    recs[0]["by"] = "chief"
    prev = ""
    for r in recs:                                           # a forger recomputes the whole chain ...
        r["prev"] = prev
        r["hash"] = prev = record_hash(r)
    _write(log.path, recs)
    head = json.loads(log.head_path.read_text())
    head["last_hash"] = prev                                 # ... and the head, but cannot sign
    log.head_path.write_text(json.dumps(head))
    problems = log.verify().problems
    assert sum("does not carry the site key's signature" in p for p in problems) == 3
    assert any("head file audit.jsonl.head was edited" in p for p in problems)


def test_removed_head_and_removed_log_are_noticed(tmp_path, key_file):
    log = _log_with(tmp_path, 2)
    log.head_path.unlink()
    assert any("head file audit.jsonl.head is missing" in p for p in log.verify().problems)
    log2 = _log_with(tmp_path / "other", 2)
    log2.path.unlink()
    assert any("is missing (it was deleted or moved)" in p for p in log2.verify().problems)


def test_another_sites_key_is_named(tmp_path, key_file, monkeypatch):
    log = _log_with(tmp_path, 2)
    other = tmp_path / "keys" / "other.key"
    monkeypatch.setenv(SITE_KEY_ENV, str(other))
    load_site_key(create=True)
    problems = log.verify().problems
    assert any("signed with another site key" in p for p in problems) and len(problems) == 3  # 2 records + head


def test_torn_last_line_is_ignored_reported_and_cut_by_the_next_append(tmp_path, key_file):
    log = _log_with(tmp_path, 2)
    with open(log.path, "ab") as f:
        f.write(b'{"event": "save", "by": "r9", "da')           # an interrupted write
    v = log.verify()
    assert v.ok and len(v.records) == 2 and any("incomplete (an interrupted write" in n for n in v.notices)
    assert len(log.records()) == 2
    log.append({"event": "save", "by": "r3"})
    assert log.verify().ok and len(_lines(log.path)) == 3 and log.path.read_bytes().endswith(b"\n")


def test_cutting_a_completed_last_record_short_is_a_problem(tmp_path, key_file):
    log = _log_with(tmp_path, 3)
    data = log.path.read_bytes()
    log.path.write_bytes(data[:-20])                         # the last (completed) record cut short
    problems = log.verify().problems
    assert any("were removed" in p and "cut short" in p for p in problems)


def test_head_behind_after_an_interrupted_write_is_a_notice_and_repaired(tmp_path, key_file):
    log = _log_with(tmp_path, 2)
    old_head = log.head_path.read_bytes()
    log.append({"event": "save"})
    log.head_path.write_bytes(old_head)                      # crash between the append and the head update
    v = log.verify()
    assert v.ok and any("1 record(s) behind" in n for n in v.notices)
    log.append({"event": "save"})
    v = log.verify()
    assert v.ok and not v.notices and json.loads(log.head_path.read_text())["count"] == 4


def test_old_unsigned_logs_are_read_and_signed_from_then_on(tmp_path, key_file):
    path = tmp_path / "old" / "reads.jsonl"
    path.parent.mkdir()
    prev, old = "", []
    for i in range(3):                                       # the former AnnotationQC chain (SHA-256 only)
        r = {"event": "save", "seq": i + 1, "time": "2024-01-01T00:00:00+00:00", "os_user": "u", "prev": prev}
        r["hash"] = prev = record_hash(r)
        old.append(r)
    _write(path, [{"event": "start"}] + old)                 # plus one record from before any chain
    log = AuditLog(path, "reading log")
    v = log.verify()
    assert v.ok and not v.signed
    assert any(f"records 1-4 of reads.jsonl are unsigned (created before version {SIGNED_SINCE})" in n
               for n in v.notices)
    rec = log.append({"event": "save", "by": "r1"})
    assert rec["legacy"]["records"] == 4 and rec["prev"] == old[-1]["hash"] and rec["seq"] == 5
    v = log.verify()
    assert v.ok and v.signed and not v.notices and "frozen as found when signing began at record 5" in v.info[0]
    recs = _lines(path)
    recs[0]["event"] = "edited"                              # the unsigned part is frozen as found
    _write(path, recs)
    assert any("unsigned record(s) before record 5" in p for p in log.verify().problems)
    _write(path, _lines(path)[:0] + old + [rec] + [{"event": "forged"}])
    problems = log.verify().problems
    assert any("record 5 is not signed but follows signed records" in p for p in problems)


def test_a_signed_folder_requires_signed_records(tmp_path, key_file):
    log = _log_with(tmp_path, 1)
    recs = _lines(log.path)
    for r in recs:
        r.pop("sig")
    _write(log.path, recs)
    log.head_path.unlink()                                   # made to look like an old log
    problems = AuditLog(log.path, "reading log", required=True).verify().problems
    assert any("not signed although this folder signs its logs" in p for p in problems)


def test_signed_documents(tmp_path, key_file):
    key = load_site_key(create=True)
    doc = sign_document({"format": "x/1", "readers": {"r1": {"role": "annotator"}}}, key)
    assert check_document(doc, "study.json", required=True) == ([], [])
    edited = json.loads(json.dumps(doc))
    edited["readers"]["r1"]["role"] = "arbitrator"
    assert "was edited after it was signed" in check_document(edited, "study.json", required=True)[0][0]
    unsigned = {k: v for k, v in doc.items() if k != "signature"}
    assert "not signed although" in check_document(unsigned, "study.json", required=True)[0][0]
    assert "unsigned (created before" in check_document(unsigned, "study.json", required=False)[1][0]


_APPENDER = """
import sys
from ClinicalMRICommonLib.audit import AuditLog
log = AuditLog(sys.argv[1], "race log")
for i in range(int(sys.argv[3])):
    log.append({"event": "save", "by": sys.argv[2], "i": i})
"""


def test_appends_from_two_processes_keep_one_chain(tmp_path, key_file):
    log = AuditLog(tmp_path / "race" / "audit.jsonl", "race log", required=True)
    log.create()
    env = {**os.environ, SITE_KEY_ENV: str(key_file)}
    procs = [subprocess.Popen([sys.executable, "-c", _APPENDER, str(log.path), who, "15"], env=env,
                              stderr=subprocess.PIPE, text=True) for who in ("a", "b")]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    v = log.verify()
    assert v.ok and not v.notices, v.problems
    assert len(v.records) == 30 and sorted(r["by"] for r in v.records).count("a") == 15


def test_paths_named_by_records_stay_inside_the_folder(tmp_path):
    (tmp_path / "study" / "readers").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    assert inside_folder(tmp_path / "study", "readers/r1.nii.gz", "mask") == tmp_path / "study/readers/r1.nii.gz"
    for bad in ("../../x", "/etc/passwd", "readers/../../elsewhere/x", ""):
        with pytest.raises(UserError, match="the record was edited"):
            inside_folder(tmp_path / "study", bad, "mask")
    (tmp_path / "study" / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UserError, match="points outside"):
        inside_folder(tmp_path / "study", "link/x.nii.gz", "mask")

