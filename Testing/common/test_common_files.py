"""ClinicalMRICommonLib.files and .errors: the atomic verified writer, the overwrite policy,
JSON-lines logs that survive an interrupted append, and every OSError as one line naming the
user's path (real faults: a mounted full tmpfs, a read-only mount, a real permission denial)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "faults"))
import faultlib as fl  # noqa: E402
from faultlib import full_disk, read_only_dir  # noqa: E402,F401  (pytest fixtures)

from ClinicalMRICommonLib.errors import InputWarning, UserError, run_cli  # noqa: E402
from ClinicalMRICommonLib.files import (TEMP_PREFIX, append_jsonl, atomic_path, check_output_path,  # noqa: E402
                                        clean_stale_temps, is_temp_name, json_safe, read_jsonl, sha256_file,
                                        verify_image_file, write_bytes_atomic, write_image_atomic,
                                        write_json_atomic, write_text_atomic)


def _temps(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if is_temp_name(p.name)]


def test_atomic_write_publishes_with_normal_permissions(tmp_path):
    target = tmp_path / "sub" / "result.json"
    write_json_atomic(target, {"n": np.int64(3), "x": np.float32(0.5), "p": Path("a/b")})
    assert json.loads(target.read_text()) == {"n": 3, "x": 0.5, "p": "a/b"}
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert _temps(target.parent) == []


def test_failure_inside_the_block_keeps_the_old_file(tmp_path):
    target = tmp_path / "table.csv"
    target.write_text("old\n")
    with pytest.raises(ValueError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise ValueError("writer failed")
    assert target.read_text() == "old\n" and _temps(tmp_path) == []


def test_oserror_inside_the_block_names_the_users_path(tmp_path):
    target = tmp_path / "table.csv"
    with pytest.raises(UserError) as err:
        with atomic_path(target, what="feature table") as tmp:
            open(tmp / "nonsense", "w")  # ENOTDIR on the temporary file
    msg = str(err.value)
    assert str(target) in msg and TEMP_PREFIX not in msg and "a part of the path is a file" in msg


def test_temporary_name_keeps_the_suffix_and_is_short(tmp_path):
    name = "a" * 240 + ".nii.gz"
    with atomic_path(tmp_path / name) as tmp:
        assert tmp.name.endswith(".nii.gz") and is_temp_name(tmp.name) and len(tmp.name) < 80
        sitk.WriteImage(sitk.Image(3, 3, 3, sitk.sitkUInt8), str(tmp))
    assert (tmp_path / name).is_file()


def test_exclusive_never_replaces(tmp_path):
    target = tmp_path / "final.nii.gz"
    write_bytes_atomic(target, b"first", exclusive=True)
    with pytest.raises(UserError, match="already exists"):
        write_bytes_atomic(target, b"second", exclusive=True)
    assert target.read_bytes() == b"first" and _temps(tmp_path) == []


def test_sitk_hides_a_full_disk_the_writer_does_not(full_disk):
    img = sitk.GetImageFromArray(np.arange(50 * 60 * 70, dtype=np.float32).reshape(50, 60, 70))
    full_disk.fill(leave=16384)
    raw = full_disk.path / "raw.nii.gz"
    sitk.WriteImage(img, str(raw), True)  # what the tools used to do
    assert raw.exists(), "SimpleITK now reports a full disk: the read-back is still the safe way"
    with pytest.raises(UserError, match="does not read back complete"):
        verify_image_file(raw, img)
    raw.unlink()
    with pytest.raises(UserError, match=str(full_disk.path / "mask.nii.gz")):
        write_image_atomic(img, full_disk.path / "mask.nii.gz")
    assert not (full_disk.path / "mask.nii.gz").exists() and _temps(full_disk.path) == []


def test_image_write_verifies_grid_and_voxels(tmp_path):
    img = fl._on_grid(fl.image_array())
    write_image_atomic(img, tmp_path / "ok.nrrd")
    other = fl._on_grid(fl.image_array(seed=5))
    with pytest.raises(UserError, match="does not read back"):
        verify_image_file(tmp_path / "ok.nrrd", other)


# ---------------------------------------------------------------------------------------
# the overwrite policy


def test_check_output_path_policy(tmp_path):
    image = fl.good_image(tmp_path)
    out = tmp_path / "out.csv"
    assert check_output_path(out) == out
    out.write_text("x\n")
    with pytest.raises(UserError, match="already exists; choose another name or pass --overwrite"):
        check_output_path(out)
    assert check_output_path(out, overwrite=True) == out
    link = tmp_path / "link.nii.gz"
    link.symlink_to(image)
    with pytest.raises(UserError, match="also an input"):
        check_output_path(link, overwrite=True, inputs=[image])
    with pytest.raises(UserError, match="two outputs"):
        check_output_path(tmp_path / "a.nii.gz", others=[tmp_path / "." / "a.nii.gz"])
    folder = tmp_path / "dataset"
    folder.mkdir()
    assert check_output_path(folder, folder=True) == folder  # an empty folder may be used
    (folder / "x").write_text("1")
    with pytest.raises(UserError, match="already exists"):
        check_output_path(folder, folder=True)
    with pytest.raises(UserError, match="is a folder; give a file name"):
        check_output_path(folder, overwrite=True)
    with pytest.raises(UserError, match="is a file, not a folder"):
        check_output_path(out / "inner.csv")
    with pytest.raises(UserError, match="too long"):
        check_output_path(tmp_path / ("n" * 256))
    with pytest.raises(UserError, match="empty"):
        check_output_path("")


# ---------------------------------------------------------------------------------------
# JSON-lines logs


def test_append_on_a_full_disk_leaves_no_partial_line(full_disk):
    log = full_disk.path / "audit.jsonl"
    append_jsonl(log, {"seq": 1})
    before = log.read_bytes()
    full_disk.fill(leave=0)
    with pytest.raises(UserError, match=r"audit.jsonl: no space left"):
        append_jsonl(log, {"seq": 2, "blob": "x" * 200000})
    assert log.read_bytes() == before
    full_disk.empty()
    append_jsonl(log, {"seq": 2})
    assert [r["seq"] for r in read_jsonl(log, "audit log")] == [1, 2]


def test_torn_last_line_is_ignored_and_reported(tmp_path):
    log = tmp_path / "reads.jsonl"
    append_jsonl(log, {"a": 1})
    append_jsonl(log, {"a": 2})
    with open(log, "ab") as f:
        f.write(b'{"a": 3, "note": "caf\xc3')  # cut inside a UTF-8 character, as a crash does
    recs, torn = read_jsonl(log, "reading log", return_torn=True)
    assert [r["a"] for r in recs] == [1, 2] and torn.startswith('{"a": 3')
    with pytest.warns(InputWarning, match="last line is incomplete"):
        assert len(read_jsonl(log, "reading log")) == 2
    with pytest.warns(InputWarning, match="last line was incomplete .* it was removed"):
        append_jsonl(log, {"a": 4})
    assert [r["a"] for r in read_jsonl(log, "reading log")] == [1, 2, 4]


def test_complete_last_record_without_newline_is_kept(tmp_path):
    log = tmp_path / "x.jsonl"
    log.write_text('{"a": 1}\n{"a": 2}')
    assert [r["a"] for r in read_jsonl(log, "log")] == [1, 2]
    append_jsonl(log, {"a": 3})
    assert [r["a"] for r in read_jsonl(log, "log")] == [1, 2, 3]


def test_torn_line_in_the_middle_is_an_error(tmp_path):
    log = tmp_path / "x.jsonl"
    log.write_text('{"a": 1}\n{"a": \n{"a": 3}\n')
    with pytest.raises(UserError, match="line 2 is not valid JSON; the audit log is damaged"):
        read_jsonl(log, "audit log")
    log.write_text('{"a": 1}\n[1, 2]\n')
    with pytest.raises(UserError, match="line 2 is not a JSON object"):
        read_jsonl(log, "audit log")
    assert read_jsonl(tmp_path / "none.jsonl", "log") == []


def test_json_safe_and_sha256(tmp_path):
    obj = json_safe({"a": np.float64("nan"), "b": (np.int32(2), np.inf), "c": np.array([1.5, -np.inf]),
                     1: np.bool_(True), "p": tmp_path})
    assert json.dumps(obj, allow_nan=False) == json.dumps(
        {"a": None, "b": [2, None], "c": [1.5, None], "1": True, "p": str(tmp_path)})
    data = os.urandom(3 << 20)
    (tmp_path / "blob").write_bytes(data)
    assert sha256_file(tmp_path / "blob") == hashlib.sha256(data).hexdigest()


def test_clean_stale_temps(tmp_path):
    dead = mp.get_context("fork").Process(target=os._exit, args=(0,))
    dead.start()
    dead.join()
    stale = tmp_path / f"{TEMP_PREFIX}{dead.pid}-abcd1234.mask.nii.gz"
    live = tmp_path / f"{TEMP_PREFIX}{os.getpid()}-abcd1234.mask.nii.gz"
    old = tmp_path / ".tmp.xyz.nii.gz"
    for p in (stale, live, old):
        p.write_bytes(b"partial")
    os.utime(old, (1, 1))
    (tmp_path / "kept.nii.gz").write_bytes(b"real")
    assert sorted(p.name for p in clean_stale_temps(tmp_path)) == sorted([stale.name, old.name])
    assert live.exists() and (tmp_path / "kept.nii.gz").exists()


# ---------------------------------------------------------------------------------------
# every OSError: one line naming the user's path, exit 2


def _open_for_writing(path):
    with open(path, "w") as f:
        f.write("x" * 4_000_000)


@pytest.mark.parametrize("case,reason", [
    ("name too long", "the file name is too long"), ("parent is a file", "a part of the path is a file"),
    ("not a directory", "a part of the path is a file"), ("is a directory", "it is a folder"),
    ("missing folder", "no such file or folder")])
def test_run_cli_reports_os_errors(tmp_path, case, reason):
    f = tmp_path / "plain.txt"
    f.write_text("x")
    target = {"name too long": tmp_path / ("n" * 300), "parent is a file": f / "out.txt",
              "not a directory": f / "deeper" / "out.txt", "is a directory": tmp_path,
              "missing folder": tmp_path / "nowhere" / "out.txt"}[case]
    res = fl.run_in_process(_open_for_writing, target, watch=[f])
    line = fl.assert_refused(res, existing=[f])
    assert reason in line and str(target) in line


def test_run_cli_no_space_left(full_disk):
    # a plain write: the OS does not say which file (the tools write through the atomic writer)
    fl.assert_refused(fl.run_in_process(_open_for_writing, full_disk.path / "big.txt"), mentions=["no space left"])
    target = full_disk.path / "report.txt"
    fl.assert_refused(fl.run_in_process(write_text_atomic, target, "x" * 4_000_000, "report"),
                      mentions=[f"could not write report {target}: no space left"], absent=[target],
                      no_temps_in=[full_disk.path])


def test_run_cli_read_only_file_system(read_only_dir):
    folder = read_only_dir.seal()
    line = fl.assert_refused(fl.run_in_process(_open_for_writing, folder / "out.txt"), mentions=[str(folder)])
    assert "read-only" in line or "permission denied" in line


def _as_nobody(path, queue):
    try:
        os.setgid(65534)
        os.setuid(65534)
        write_text_atomic(path, "result\n", "report")
        queue.put("written")
    except UserError as exc:
        queue.put(str(exc))
    except BaseException as exc:  # noqa: BLE001 - reported to the test instead of a silent child death
        queue.put(f"unexpected {type(exc).__name__}: {exc}")


def test_permission_denied_names_the_users_path(tmp_path):
    if os.geteuid() != 0:
        folder = tmp_path / "locked"
        folder.mkdir()
        folder.chmod(0o555)
        try:
            with pytest.raises(UserError, match="permission denied") as err:
                write_text_atomic(folder / "r.txt", "x")
        finally:
            folder.chmod(0o755)
        assert TEMP_PREFIX not in str(err.value)
        return
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="cmc-perm-", dir="/tmp"))  # pytest's tmp root is private to root
    try:
        base.chmod(0o755)
        folder = base / "locked"
        folder.mkdir()
        folder.chmod(0o555)  # root could write here anyway: the child drops to user 'nobody'
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=_as_nobody, args=(folder / "report.html", q))
        p.start()
        msg = q.get(timeout=30)
        p.join(30)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    assert msg == f"could not write report {folder / 'report.html'}: permission denied; choose a path you may " \
                  "read or write, or ask for access"


def test_run_cli_warnings_and_multiline_errors(capsys):
    def main(argv):
        warnings.warn("mask m.nii.gz has 2 labels", InputWarning)
        raise UserError("first line\nsecond line")

    assert run_cli(main, []) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["warning: mask m.nii.gz has 2 labels", "error: first line second line"]

    def interrupted(argv):
        raise KeyboardInterrupt

    assert run_cli(interrupted, []) == 130
