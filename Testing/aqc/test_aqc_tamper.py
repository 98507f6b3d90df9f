"""Tamper evidence and concurrency of reader studies and training sessions (issue 12): every
command that reads a folder verifies it first and refuses an altered one (exit 2, one line
saying what was altered); ``study verify`` / ``training-verify`` list everything (exit 1);
checksums are verified before a file is scored; paths stay inside the folder; two
submissions at the same moment through the installed ``annotation-qc`` -> exactly one wins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from AnnotationQCLib.cli import main
from AnnotationQCLib.training import TrainingSession
from ClinicalMRICommonLib.audit import SITE_KEY_ENV, load_site_key, record_hash

SHAPE = (6, 16, 16)


def _image(path, seed):
    img = sitk.GetImageFromArray(np.random.default_rng(seed).normal(50, 8, SHAPE).astype(np.float32))
    img.SetSpacing((0.8, 0.8, 3.0))
    sitk.WriteImage(img, str(path))
    return path


def _mask(path, like, z1=3, x1=10):
    arr = np.zeros(SHAPE, np.uint8)
    arr[1:z1, 4:12, 4:x1] = 1
    m = sitk.GetImageFromArray(arr)
    m.CopyInformation(sitk.ReadImage(str(like)))
    sitk.WriteImage(m, str(path))
    return path


def _run(capsys, *args):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def _refused(capsys, *args, mentions=()):
    code, _, err = _run(capsys, *args)
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (args, code, err)
    for m in mentions:
        assert m in lines[0], (m, lines[0])
    return lines[0]


@pytest.fixture
def study(tmp_path, capsys):
    (tmp_path / "img").mkdir()
    rows = []
    for i, cid in enumerate(("c1", "c2"), start=1):
        _image(tmp_path / "img" / f"{cid}.nii.gz", i)
        rows.append({"case_id": cid, "patient_id": f"P{i}", "sequence": "T2", "image": f"img/{cid}.nii.gz"})
    pd.DataFrame(rows).to_csv(tmp_path / "cases.csv", index=False)
    st = tmp_path / "study"
    assert _run(capsys, "study", "init", "--folder", st, "--name", "t", "--cases", tmp_path / "cases.csv",
                "--washout-days", 0)[0] == 0
    for r, role in (("r1", "annotator"), ("r2", "annotator"), ("rev", "reviewer")):
        assert _run(capsys, "study", "reader", "add", "--study", st, "--reader", r, "--role", role)[0] == 0
    for r in ("r1", "r2"):
        for cid in ("c1", "c2"):
            m = _mask(tmp_path / f"{r}_{cid}.nii.gz", tmp_path / "img" / f"{cid}.nii.gz", x1=10 if r == "r1" else 11)
            assert _run(capsys, "study", "submit", "--study", st, "--reader", r, "--case", cid, "--sequence", "T2",
                        "--content", "ROI", "--mask", m)[0] == 0
    return st


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def _write(path, recs):
    path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in recs))


def _study_commands(st, tmp_path):
    mask = _mask(tmp_path / "new.nii.gz", tmp_path / "img" / "c1.nii.gz")
    return [
        ["study", "status", "--study", st, "--reader", "r1"],
        ["study", "status", "--study", st, "--coordinator"],
        ["study", "reader", "add", "--study", st, "--reader", "r3"],
        ["study", "assign", "--study", st, "--reader", "r1", "--all", "--session", "repeat"],
        ["study", "submit", "--study", st, "--reader", "r1", "--case", "c1", "--sequence", "T2", "--content", "WT",
         "--mask", mask],
        ["feature-icc", "--study", st, "--reader-a", "r1", "--reader-b", "r2", "--out", tmp_path / "icc.csv"],
        ["quality", "grade", "--study", st, "--case", "c1", "--sequence", "T2", "--rater", "r1", "--grade", "3"],
    ]


def test_a_clean_study_verifies(study, capsys):
    code, out, _ = _run(capsys, "study", "verify", "--study", study)
    assert code == 0 and out.startswith(f"reader study {study}: VERIFIED")
    code, out, _ = _run(capsys, "study", "verify", "--study", study, "--json")
    rep = json.loads(out)
    assert code == 0 and rep["ok"] and rep["problems"] == []
    recs = _lines(study / "reads.jsonl")
    assert all(r["sig"] and r["os_user"] and r["host"] and r["key_id"] == load_site_key().key_id for r in recs)


def test_a_reader_promoted_in_study_json_is_refused_by_every_command(study, tmp_path, capsys):
    meta = json.loads((study / "study.json").read_text())
    meta["readers"]["r1"]["role"] = "arbitrator"       # a junior reader made senior by hand
    (study / "study.json").write_text(json.dumps(meta, indent=2))
    before = {p: p.read_bytes() for p in study.rglob("*") if p.is_file()}
    for argv in _study_commands(study, tmp_path):
        _refused(capsys, *argv, mentions=["was altered: study.json was edited after it was signed", "study verify"])
    assert {p: p.read_bytes() for p in study.rglob("*") if p.is_file()} == before    # nothing written
    code, out, _ = _run(capsys, "study", "verify", "--study", study)
    assert code == 1 and "ALTERED (2 problems)" in out
    assert "reader 'r1' is 'arbitrator' in study.json but was registered as 'annotator'" in out


def test_a_reader_promoted_with_the_key_but_not_in_the_log_is_noticed(study, capsys):
    """Even someone who re-signs study.json (holding the key) without a registration in the
    log is caught by the cross-check."""
    from ClinicalMRICommonLib.audit import write_signed_json

    meta = json.loads((study / "study.json").read_text())
    meta["readers"]["r1"]["role"] = "arbitrator"
    write_signed_json(study / "study.json", meta)
    _refused(capsys, "study", "status", "--study", study, "--reader", "r1",
             mentions=["reader 'r1' is 'arbitrator' in study.json but was registered as 'annotator'"])


def _edit(path, i, **fields):
    recs = _lines(path)
    recs[i].update(fields)
    _write(path, recs)


def _recompute(path, i, **fields):
    recs = _lines(path)
    recs[i].update(fields)
    prev = recs[i - 1]["hash"] if i else ""
    for r in recs[i:]:
        r["prev"] = prev
        r["hash"] = prev = record_hash(r)
    _write(path, recs)
    return prev


def _swap(path, i, j):
    recs = _lines(path)
    recs[i], recs[j] = recs[j], recs[i]
    _write(path, recs)


TAMPERING = {
    "edited record": (lambda st: _edit(st / "reads.jsonl", 3, role="arbitrator"), "fails its SHA-256 chain check"),
    "chain recomputed without the key": (lambda st: _recompute(st / "reads.jsonl", 3, role="arbitrator"),
                                         "does not carry the site key's signature"),
    "last records removed": (lambda st: _write(st / "reads.jsonl", _lines(st / "reads.jsonl")[:-2]),
                             "the last 2 record(s) were removed"),
    "head removed": (lambda st: (st / "reads.jsonl.head").unlink(), "head file reads.jsonl.head is missing"),
    "records reordered": (lambda st: _swap(st / "reads.jsonl", 4, 5), "records were removed, inserted or reordered"),
    "log removed": (lambda st: ((st / "reads.jsonl").unlink(), (st / "reads.jsonl.head").unlink()),
                    "the log file reads.jsonl is missing"),
    "unsigned record added": (lambda st: _write(st / "reads.jsonl", [*_lines(st / "reads.jsonl"), {
        "event": "reader", "reader_id": "x", "role": "arbitrator"}]), "is not signed but follows signed"),
}


@pytest.mark.parametrize("kind", list(TAMPERING))
def test_reading_log_tampering_is_refused_and_listed(study, capsys, kind):
    tamper, phrase = TAMPERING[kind]
    tamper(study)
    line = _refused(capsys, "study", "status", "--study", study, "--coordinator", mentions=["was altered"])
    assert phrase in line or "more problem" in line, line
    code, out, _ = _run(capsys, "study", "verify", "--study", study)
    assert code == 1 and phrase in out, out


def test_another_sites_key_is_named(study, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv(SITE_KEY_ENV, str(tmp_path / "other-site.key"))
    load_site_key(create=True)
    _refused(capsys, "study", "status", "--study", study, "--coordinator", mentions=["another site key"])
    monkeypatch.setenv(SITE_KEY_ENV, str(tmp_path / "no-such.key"))
    _refused(capsys, "study", "status", "--study", study, "--coordinator", mentions=["does not exist"])
    assert not (tmp_path / "no-such.key").exists()      # reading never creates a key


def test_image_path_outside_the_study_and_replaced_images(study, tmp_path, capsys):
    meta_path = study / "study.json"
    good = meta_path.read_text()
    meta = json.loads(good)
    meta["cases"]["c1"]["images"]["T2"] = "../../x.nii.gz"
    meta_path.write_text(json.dumps(meta))
    code, out, _ = _run(capsys, "study", "verify", "--study", study)
    assert code == 1 and "'../../x.nii.gz' points outside" in out and "edited after it was signed" in out
    meta_path.write_text(good)
    # the source image replaced by another one: refused before a mask is saved on it, listed by verify
    _image(tmp_path / "img" / "c1.nii.gz", 99)
    mask = _mask(tmp_path / "new.nii.gz", tmp_path / "img" / "c1.nii.gz")
    _refused(capsys, "study", "submit", "--study", study, "--reader", "r1", "--case", "c1", "--sequence", "T2",
             "--content", "WT", "--mask", mask, mentions=["replaced or changed after the case was registered"])
    code, out, _ = _run(capsys, "study", "verify", "--study", study)
    assert code == 1 and "source image of case 'c1' T2" in out
    code, out, _ = _run(capsys, "study", "verify", "--study", study, "--quick")
    assert code == 0                                         # --quick skips the files


def test_a_replaced_mask_is_not_scored(study, tmp_path, capsys):
    path = study / "readers" / "r2" / "first" / "P1_T2_ROI.nii.gz"
    path.chmod(0o644)
    _mask(path, tmp_path / "img" / "c1.nii.gz", z1=5)
    _refused(capsys, "feature-icc", "--study", study, "--reader-a", "r1", "--reader-b", "r2", "--out",
             tmp_path / "icc.csv", mentions=["was changed after it was saved", str(path)])
    assert not (tmp_path / "icc.csv").exists()
    code, out, _ = _run(capsys, "study", "verify", "--study", study)
    assert code == 1 and "mask of 'r2'" in out and "was changed after it was saved" in out


def test_a_study_json_of_the_wrong_shape_is_a_verdict_not_a_traceback(study, capsys):
    meta = json.loads((study / "study.json").read_text())
    meta["cases"], meta["readers"] = list(meta["cases"]), ["r1"]
    (study / "study.json").write_text(json.dumps(meta))
    code, out, err = _run(capsys, "study", "verify", "--study", study)
    assert code == 1 and "not shaped as this version writes them" in out and "Traceback" not in err


def test_a_save_record_pointing_outside_is_noticed(study, capsys):
    recs = _lines(study / "reads.jsonl")
    i = next(i for i, r in enumerate(recs) if r["event"] == "save")
    _recompute(study / "reads.jsonl", i, mask="../../etc/passwd")
    code, out, _ = _run(capsys, "study", "verify", "--study", study)
    assert code == 1 and "points at '../../etc/passwd', not at the reader's own file" in out


# ---------------------------------------------------------------------------------------
# training sessions


def _volume(image, mask):
    return {"voxels": float(sitk.GetArrayViewFromImage(mask).sum()), "mean": float(
        sitk.GetArrayViewFromImage(image)[sitk.GetArrayViewFromImage(mask) > 0].mean())}


@pytest.fixture
def session(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    cases = []
    for i in range(1, 6):
        img = _image(src / f"P{i}_T2.nii.gz", i)
        ref = _mask(src / f"P{i}_ref.nii.gz", img, z1=2 + i % 4, x1=8 + i)
        cases.append({"case_id": f"case{i}", "patient_id": f"P{i}", "sequence": "T2", "image": str(img),
                      "reference": str(ref), "site": "a" if i < 3 else "b"})
    s = TrainingSession.create(tmp_path / "session", "t", cases, feature_extractor=_volume)
    s.submit("alice", "case1", sitk.ReadImage(str(src / "P1_ref.nii.gz")))
    return s.folder


def _session_commands(folder, tmp_path):
    m = _mask(tmp_path / "t.nii.gz", tmp_path / "src" / "P2_T2.nii.gz")
    return [["training-list", "--session", folder],
            ["training-submit", "--session", folder, "--trainee", "bob", "--case", "case2", "--mask", m],
            ["training-withdraw", "--session", folder, "--trainee", "alice", "--case", "case1", "--reason", "x"],
            ["training-report", "--session", folder, "--trainee", "alice", "--out", tmp_path / "rep"],
            ["training-summary", "--session", folder, "--out", tmp_path / "sum"]]


SESSION_TAMPERING = {
    "criteria edited": (lambda f: _edit_json(f / "session.json", lambda d: d["criteria"].update(dice=0.1)),
                        "session.json was edited after it was signed"),
    "reference path outside": (lambda f: _edit_json(f / "session.json",
                                                    lambda d: d["cases"]["case1"].update(reference="../../x.nrrd")),
                               "session.json was edited after it was signed"),
    "submission record recomputed": (lambda f: _recompute(f / "submissions.jsonl", 0, trainee="mallory"),
                                     "does not carry the site key's signature"),
    "submission record removed": (lambda f: _write(f / "submissions.jsonl", []), "the last 1 record(s) were removed"),
}


def _edit_json(path, change):
    d = json.loads(path.read_text())
    change(d)
    path.write_text(json.dumps(d))


@pytest.mark.parametrize("kind", list(SESSION_TAMPERING))
def test_session_tampering_is_refused_by_every_command_and_listed(session, tmp_path, capsys, kind):
    tamper, phrase = SESSION_TAMPERING[kind]
    tamper(session)
    before = {p: p.read_bytes() for p in session.rglob("*") if p.is_file()}
    for argv in _session_commands(session, tmp_path):
        _refused(capsys, *argv, mentions=["training session", "was altered", phrase])
    assert {p: p.read_bytes() for p in session.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "rep").exists() and not (tmp_path / "sum").exists()
    code, out, _ = _run(capsys, "training-verify", "--session", session)
    assert code == 1 and phrase in out


def test_session_files_checked_before_scoring(session, tmp_path, capsys):
    code, out, _ = _run(capsys, "training-verify", "--session", session)
    assert code == 0 and "VERIFIED" in out
    # a source image replaced: refused before scoring, listed by training-verify
    _image(tmp_path / "src" / "P1_T2.nii.gz", 42)
    _refused(capsys, "training-report", "--session", session, "--trainee", "alice", "--out", tmp_path / "rep",
             mentions=["image of case 'case1'", "replaced or changed"])
    code, out, _ = _run(capsys, "training-verify", "--session", session)
    assert code == 1 and "image of case 'case1'" in out
    # a reference outside reference/, re-signed by someone holding the key: still refused
    from ClinicalMRICommonLib.audit import write_signed_json

    meta = json.loads((session / "session.json").read_text())
    meta["cases"]["case2"]["reference"] = "reference/../../outside.nrrd"
    write_signed_json(session / "session.json", meta)
    _refused(capsys, "training-list", "--session", session, mentions=["points outside"])


def test_torn_submission_log_and_stale_lock_do_not_block(session, tmp_path, capsys):
    with open(session / "submissions.jsonl", "ab") as f:
        f.write(b'{"event": "submit", "trainee": "bob", "ca')      # an interrupted write
    code, out, err = _run(capsys, "training-list", "--session", session)
    assert code == 0 and "warning:" in err and "interrupted write" in err
    # a lock left by a killed process (its pid is gone) is taken over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (session / ".lock").write_text(json.dumps({"pid": dead.pid, "host": os.uname().nodename, "time": "2024"}))
    m = _mask(tmp_path / "b.nii.gz", tmp_path / "src" / "P2_T2.nii.gz")
    code, _, err = _run(capsys, "training-submit", "--session", session, "--trainee", "bob", "--case", "case2",
                        "--mask", m)
    assert code == 0, err
    code, out, _ = _run(capsys, "training-verify", "--session", session)
    assert code == 0, out


# ---------------------------------------------------------------------------------------
# two processes at the same moment, through the installed command


def _tool():
    exe = Path(sys.executable).parent / "annotation-qc"
    if not exe.exists():
        pytest.skip("the annotation-qc command is not installed in this environment")
    return str(exe)


def _race(argvs):
    procs = [subprocess.Popen([_tool(), *map(str, a)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"}) for a in argvs]
    return [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]


def test_two_training_submits_at_the_same_moment_one_wins(session, tmp_path):
    masks = [_mask(tmp_path / f"race{i}.nii.gz", tmp_path / "src" / "P3_T2.nii.gz", z1=2 + i) for i in range(2)]
    for rnd in range(3):
        trainee = f"t{rnd}"
        res = _race([["training-submit", "--session", session, "--trainee", trainee, "--case", "case3", "--mask", m]
                     for m in masks])
        codes = sorted(r[0] for r in res)
        assert codes == [0, 2], res
        loser = next(r for r in res if r[0] == 2)
        assert "already submitted" in loser[2] and "Traceback" not in loser[2] and loser[2].count("error:") == 1
        s = TrainingSession.open(session)
        sub = s.submissions()[(trainee, "case3")]
        winner = masks[[r[0] for r in res].index(0)]
        from ClinicalMRICommonLib.files import sha256_file

        assert sha256_file(session / sub["mask"]) == sub["sha256"]
        saved = sitk.GetArrayFromImage(sitk.ReadImage(str(session / sub["mask"])))
        assert np.array_equal(saved, sitk.GetArrayFromImage(sitk.ReadImage(str(winner))))
        assert [r["trainee"] for r in s._log.records() if r["event"] == "submit"].count(trainee) == 1
    assert not [p for p in session.rglob(".tmp*")]


def test_two_final_study_saves_at_the_same_moment_one_wins(study, tmp_path):
    masks = [_mask(tmp_path / f"race{i}.nii.gz", tmp_path / "img" / "c2.nii.gz", z1=2 + i) for i in range(2)]
    res = _race([["study", "submit", "--study", study, "--reader", "rev", "--case", "c2", "--sequence", "T2",
                  "--content", "ROI", "--mask", m] for m in masks])
    assert sorted(r[0] for r in res) == [0, 2], res
    loser = next(r for r in res if r[0] == 2)
    assert "already submitted" in loser[2] and loser[2].count("error:") == 1 and "Traceback" not in loser[2]
    from AnnotationQCLib.sessions import ReaderStudy

    saves = [e for e in ReaderStudy.open(study).events() if e["event"] == "save" and e["reader_id"] == "rev"]
    assert len(saves) == 1 and saves[0]["final"]


_KILLED_WRITER = """
import sys, time
import SimpleITK as sitk
from AnnotationQCLib.training import TrainingSession

real = sitk.WriteImage
def slow(img, path, *args):          # the write starts, then the process is killed in the middle
    real(img, path, *args)
    print("writing", flush=True)
    time.sleep(600)
sitk.WriteImage = slow
TrainingSession.open(sys.argv[1]).submit("kim", "case4", sitk.ReadImage(sys.argv[2]))
"""


def test_a_submission_killed_during_the_write_leaves_nothing_that_blocks(session, tmp_path):
    import signal

    mask = _mask(tmp_path / "k.nii.gz", tmp_path / "src" / "P4_T2.nii.gz")
    child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(session), str(mask)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "writing", child.stderr.read()
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)
    kim = session / "trainees" / "kim"
    assert (session / ".lock").exists() and [p.name for p in kim.iterdir() if p.name.startswith(".tmp")]
    assert not [p for p in kim.iterdir() if not p.name.startswith(".")]   # nothing published, nothing logged
    res = _race([["training-submit", "--session", session, "--trainee", "kim", "--case", "case4", "--mask", mask]])
    assert res[0][0] == 0, res
    assert not [p for p in kim.iterdir() if p.name.startswith(".tmp")]   # the leftover is cleaned up
    assert not (session / ".lock").exists()
    s = TrainingSession.open(session)
    assert s.verify().ok and ("kim", "case4") in s.submissions()

