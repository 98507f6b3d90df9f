"""``annotation-qc loop ...`` through the tool's parser convention: every command's bad input
gives one ``error:`` line and exit status 2 (never a traceback), every option has help text,
and a CNS-tumour label-map loop runs init -> train -> prelabel -> accept."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk
from ClinicalMRICommonLib.cli import iter_options, tool_parser
from loop_phantoms import phantom, run_loop_cli, to_image, write_cases


@pytest.fixture
def small(tmp_path):
    specs = [{"case_id": "S1", "standard": True}, {"case_id": "P1"}, {"case_id": "P2"}]
    csv_path, truths = write_cases(tmp_path / "data", specs, seed=5)
    assert run_loop_cli(["init", "--folder", str(tmp_path / "loop"), "--cases", str(csv_path)]) == 0
    return tmp_path / "loop", csv_path, truths


def _one_error(capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "Traceback" not in err[0], err
    for n in needles:
        assert n in err[0], err[0]
    return err[0]


def test_every_option_has_help_and_json_where_data_is_printed():
    from AnnotationQCLib.loop.cli import add_loop_commands

    parser, sub = tool_parser("annotation-qc", "t")
    add_loop_commands(sub)
    commands = {}
    for path, action in iter_options(parser):
        if action.help is None and action.option_strings != ["-h", "--help"]:
            pytest.fail(f"{' '.join(path)} {action.option_strings or action.dest} has no help text")
        commands.setdefault(path, set()).update(action.option_strings)
    for cmd in ("init", "import", "train", "prelabel", "queue", "accept", "reject", "status"):
        assert "--json" in commands[("loop", cmd)], cmd
    assert "--overwrite" in commands[("loop", "prelabel")]


def test_init_bad_input(tmp_path, capsys):
    csv_path, _ = write_cases(tmp_path / "d", [{"case_id": "A", "standard": True}, {"case_id": "B"}])
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    bad = tmp_path / "d" / "bad.csv"
    with open(bad, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["id", "image", "mask"])
        w.writeheader()
        w.writerows({"id": r["case_id"], "image": r["image"], "mask": r["mask"]} for r in rows)
    assert run_loop_cli(["init", "--folder", str(tmp_path / "L"), "--cases", str(bad)]) == 2
    _one_error(capsys, "lacks the column case_id")
    assert run_loop_cli(["init", "--folder", str(tmp_path / "L"), "--cases", str(tmp_path / "none.csv")]) == 2
    _one_error(capsys, "cases file not found")
    assert run_loop_cli(["init", "--folder", str(tmp_path / "L"), "--cases", str(csv_path), "--labels", "x"]) == 2
    _one_error(capsys, "invalid choice")
    assert not (tmp_path / "L").exists()


def test_every_reader_id_follows_the_64_character_rule(small, tmp_path, capsys):
    """--by of every loop command (init, train, prelabel, import, accept, reject) is one id of
    AnnotationQC's one rule (sessions.check_name): a 300-character id is refused with one
    line before anything is written, and the library refuses it too."""
    from AnnotationQCLib.loop.store import LoopFolder
    from ClinicalMRICommonLib.errors import UserError

    loop, csv_path, truths = small
    long_id = "r" * 300
    before = (loop / "audit.jsonl").read_bytes()
    for argv in (["init", "--folder", str(tmp_path / "L2"), "--cases", str(csv_path)],
                 ["train", "--folder", str(loop), "--epochs", "1", "--device", "cpu"],
                 ["prelabel", "--folder", str(loop), "--device", "cpu"],
                 ["import", "--folder", str(loop), "--masks", str(tmp_path / "data")],
                 ["accept", "--folder", str(loop), "--case", "P1", "--mask", str(truths["P1"]), "--verdict", "redrawn"],
                 ["reject", "--folder", str(loop), "--case", "P1", "--reason", "x"]):
        assert run_loop_cli(argv + ["--by", long_id]) == 2, argv
        line = _one_error(capsys, "--by", "at most 64 characters", "(300 characters)")
        assert len(line) < 400, line
    assert not (tmp_path / "L2").exists()
    assert (loop / "audit.jsonl").read_bytes() == before
    with pytest.raises(UserError, match="at most 64 characters"):
        LoopFolder.create(tmp_path / "L3", csv_path, by=long_id)
    assert not (tmp_path / "L3").exists()
    assert run_loop_cli(["init", "--folder", str(tmp_path / "L4"), "--cases", str(csv_path), "--by", "r" * 64]) == 0


def test_train_prelabel_queue_bad_input(small, tmp_path, capsys):
    loop, _, _ = small
    assert run_loop_cli(["train", "--folder", str(loop), "--epochs", "1", "--device", "cpu"]) == 2
    _one_error(capsys, "holds 1 patient(s); training needs at least 2")
    assert run_loop_cli(["train", "--folder", str(loop), "--epochs", "0"]) == 2
    _one_error(capsys, "--epochs must be at least 1")
    assert run_loop_cli(["train", "--folder", str(loop), "--patch", "20"]) == 2
    _one_error(capsys, "multiple of 8")
    assert run_loop_cli(["prelabel", "--folder", str(loop), "--device", "cpu"]) == 2
    _one_error(capsys, "has no trained model yet")
    assert run_loop_cli(["queue", "--folder", str(loop), "--n", "3"]) == 2
    _one_error(capsys, "has no trained model yet")
    assert run_loop_cli(["status", "--folder", str(tmp_path / "data")]) == 2
    _one_error(capsys, "is not a loop folder")
    assert run_loop_cli(["status", "--folder", str(tmp_path / "nowhere")]) == 2
    _one_error(capsys, "loop folder not found")
    assert run_loop_cli(["queue", "--folder", str(loop)]) == 2
    _one_error(capsys, "--n")


def test_accept_reject_import_bad_input(small, tmp_path, capsys):
    loop, _, truths = small
    args = ["accept", "--folder", str(loop), "--by", "r1", "--verdict", "redrawn"]
    assert run_loop_cli(args + ["--case", "ZZ", "--mask", str(truths["P1"])]) == 2
    _one_error(capsys, "case 'ZZ' is not in the loop")
    assert run_loop_cli(args + ["--case", "P1", "--mask", str(tmp_path / "missing.nii.gz")]) == 2
    _one_error(capsys, "file not found")
    arr = sitk.GetArrayFromImage(sitk.ReadImage(str(truths["P1"])))
    sitk.WriteImage(to_image((arr * 255).astype(np.uint8)), str(tmp_path / "m255.nii.gz"))
    assert run_loop_cli(args + ["--case", "P1", "--mask", str(tmp_path / "m255.nii.gz")]) == 2
    _one_error(capsys, "is not binary (values 0, 255)")
    sitk.WriteImage(to_image(arr[:, :, :30]), str(tmp_path / "small.nii.gz"))
    assert run_loop_cli(args + ["--case", "P1", "--mask", str(tmp_path / "small.nii.gz")]) == 2
    _one_error(capsys, "different grid", "size (30, 32, 32) vs (32, 32, 32)")
    assert run_loop_cli(["accept", "--folder", str(loop), "--by", "r1", "--verdict", "accepted", "--case", "P1"]) == 2
    _one_error(capsys, "has no model proposal")
    assert run_loop_cli(args + ["--case", "P1", "--mask", str(truths["P1"]), "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["event"] == "accept" and rec["data"]["case_id"] == "P1"
    assert run_loop_cli(args + ["--case", "P1", "--mask", str(truths["P1"])]) == 2
    _one_error(capsys, "already in the standard set")
    assert run_loop_cli(["reject", "--folder", str(loop), "--case", "ZZ", "--by", "r1"]) == 2
    _one_error(capsys, "case 'ZZ' is not in the loop")
    assert run_loop_cli(["reject", "--folder", str(loop), "--case", "P1", "--by", "r1"]) == 2
    _one_error(capsys, "nothing to reject")
    assert run_loop_cli(["import", "--folder", str(loop), "--by", "r1", "--study", str(tmp_path)]) == 2
    _one_error(capsys, "--study needs --sequence and --content")
    assert run_loop_cli(["import", "--folder", str(loop), "--by", "r1", "--masks", str(tmp_path / "no")]) == 2
    _one_error(capsys, "masks folder not found")


def test_cns_label_map_loop_end_to_end(tmp_path, capsys):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    rows = []
    truths = {}
    for cid in ("S1", "S2", "P1"):
        img, whole = phantom(rng)
        labels = whole.astype(np.uint8)
        core = np.zeros_like(whole)
        zz, yy, xx = np.nonzero(whole)
        cz, cy, cx = int(zz.mean()), int(yy.mean()), int(xx.mean())
        core[cz - 2:cz + 2, cy - 2:cy + 2, cx - 2:cx + 2] = 1
        labels[(core == 1) & (whole == 1)] = 3
        img = img + 40.0 * (labels == 3)
        sitk.WriteImage(to_image(img), str(tmp_path / f"{cid}.nii.gz"))
        sitk.WriteImage(to_image(labels), str(tmp_path / f"{cid}_labels.nii.gz"))
        truths[cid] = tmp_path / f"{cid}_labels.nii.gz"
        rows.append({"case_id": cid, "image_FLAIR": f"{cid}.nii.gz", "mask": "" if cid == "P1" else f"{cid}_labels.nii.gz"})
    with open(tmp_path / "cases.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    loop = str(tmp_path / "loop")
    assert run_loop_cli(["init", "--folder", loop, "--cases", str(tmp_path / "cases.csv"), "--labels",
                         "intra-axial"]) == 0
    capsys.readouterr()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run_loop_cli(["train", "--folder", loop, "--epochs", "2", "--device", "cpu", "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        assert out["round"] == 1 and out["epochs"] == 2
        assert run_loop_cli(["prelabel", "--folder", loop, "--device", "cpu", "--samples", "2"]) == 0
    finally:
        torch.set_num_threads(threads)
    from AnnotationQCLib.loop.store import LoopFolder

    lf = LoopFolder(loop)
    prop = sitk.ReadImage(str(lf.proposal_paths("P1", 1)[0]))
    assert set(np.unique(sitk.GetArrayFromImage(prop)).tolist()) <= {0, 1, 2, 3, 4}
    manifest = json.loads((lf.model_dir(1) / "manifest.json").read_text())
    assert manifest["n_classes"] == 5 and manifest["labels"]["mode"] == "intra-axial"
    capsys.readouterr()
    assert run_loop_cli(["accept", "--folder", loop, "--case", "P1", "--mask", str(truths["P1"]), "--by", "r1",
                         "--verdict", "corrected", "--json"]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert set(rec["data"]["dice_per_label"]) == {"whole-tumour", "tumour-body", "enhancing", "non-enhancing"}
    assert rec["data"]["proposal_round"] == 1 and 0.0 <= rec["data"]["changed_fraction"] <= 1.0
