"""The table-driven bad-input suite of ``annotation-qc`` (issue 12): every command x every
applicable bad-input class -- images (missing, folder, empty, garbage, truncated, 2-D, 4-D,
vector, NaN, zero/negative pixdim, sheared), mask values (intensity image, soft 0.5, negative
labels, NaN, empty where a mask must select something, another grid), CSVs (semicolon, tab,
duplicate columns, binary, header only, missing columns, missing/folder/empty file), study
and session folders (missing, a file, not a study, damaged description), ids of 300
characters, non-finite numbers, outputs (existing without --overwrite, output = input, two
outputs equal, a read-only folder, a full disk on a small tmpfs when running as root) --
each must end with exit 2, exactly one ``error:`` line, no traceback, and every input and
existing file byte-identical, nothing published, no temporary file left.

Rows run in-process through ``errors.run_cli`` (the tool's own runner) for speed; one row per
command also runs through the installed ``annotation-qc`` command. The totals (attempts,
refused cleanly, tracebacks, data damaged) are printed at the end of the module and written
to ``<pytest basetemp>/aqc_fault_totals.json``."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import faultlib as fl
import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk
from faultlib import full_disk, read_only_dir  # noqa: F401  (pytest fixtures)

TOTALS = {"attempts": 0, "refused cleanly": 0, "tracebacks": 0, "data damaged": 0, "other failures": 0}
LONG_ID = "r" * 300


@pytest.fixture(scope="module", autouse=True)
def _site_key_and_totals(tmp_path_factory):
    from ClinicalMRICommonLib.audit import SITE_KEY_ENV

    old = os.environ.get(SITE_KEY_ENV)
    os.environ[SITE_KEY_ENV] = str(tmp_path_factory.mktemp("aqc_fault_key") / "site.key")
    yield
    if old is None:
        os.environ.pop(SITE_KEY_ENV, None)
    else:
        os.environ[SITE_KEY_ENV] = old
    out = tmp_path_factory.getbasetemp() / "aqc_fault_totals.json"
    out.write_text(json.dumps(TOTALS, indent=2) + "\n")
    print(f"\nannotation-qc fault table: {json.dumps(TOTALS)} ({out})")


# ---------------------------------------------------------------------------------------
# the good data every row starts from (one copy per row)


def _img(arr, spacing=fl.SPACING):
    return fl._on_grid(arr, spacing=spacing)


def _box_mask(z, y, x):
    m = np.zeros(fl.SIZE[::-1], np.uint8)
    m[z[0]:z[1], y[0]:y[1], x[0]:x[1]] = 1
    return m


BOXES = [((2, 6), (3, 8), (3, 9)), ((1, 8), (2, 10), (2, 12)), ((3, 5), (4, 7), (4, 7)), ((2, 7), (5, 10), (6, 12)),
         ((1, 4), (2, 6), (2, 5))]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from AnnotationQCLib.sessions import study_from_csv
    from AnnotationQCLib.training import TrainingSession

    root = tmp_path_factory.mktemp("aqc_fault_base")
    src = root / "src"
    src.mkdir()
    rows, cases = [], []
    for i, b in enumerate(BOXES, start=1):
        arr = fl.image_array(i) + 80 * _box_mask(*b)
        sitk.WriteImage(_img(arr.astype(np.float32)), str(src / f"img{i}.nii.gz"))
        sitk.WriteImage(_img(_box_mask(*b)), str(src / f"ref{i}.nii.gz"))
        cases.append({"case_id": f"case{i}", "patient_id": f"P{i}", "sequence": "T2", "image": str(src / f"img{i}.nii.gz"),
                      "reference": str(src / f"ref{i}.nii.gz"), "site": "a" if i < 3 else "b"})
        if i <= 2:
            rows.append({"case_id": f"c{i}", "patient_id": f"P{i}", "sequence": "T2", "image": f"img{i}.nii.gz"})
    pd.DataFrame(cases).to_csv(root / "training_cases.csv", index=False)
    pd.DataFrame(rows).to_csv(src / "study_cases.csv", index=False)
    fl.good_mask(src, "mask.nii.gz")
    fl.good_mask(src, "mask2.nii.gz")
    bg = np.zeros(fl.SIZE[::-1], np.uint8)
    bg[0:2, 0:2, 0:3] = 1
    sitk.WriteImage(_img(bg), str(src / "background.nii.gz"))
    lab = fl.mask_array().astype(np.uint8)
    lab[0:2, 0:2, 0:3] = 2
    lab[8:10, 9:12, 0:3] = 3
    sitk.WriteImage(_img(lab), str(src / "rois.nii.gz"))
    sitk.WriteImage(_img(fl.mask_array(), spacing=(1.0, 1.0, 2.0)), str(src / "other_grid.nii.gz"))
    feats = pd.DataFrame({"case_id": ["c1", "c2", "c3", "c4"], "f1": [1.0, 2.0, 3.0, 4.5], "f2": [3.0, 1.0, 2.0, 5.0]})
    feats.to_csv(root / "a.csv", index=False)
    feats.assign(f1=feats.f1 + 0.1).to_csv(root / "b.csv", index=False)
    pd.DataFrame({"case_id": [1, 1, 2, 2, 3, 3], "r": ["x", "y"] * 3, "y": [1.0, 1.2, 2.0, 2.3, 3.1, 2.9]}).to_csv(
        root / "ratings.csv", index=False)
    session = TrainingSession.create(root / "session", "faults", cases)
    session.submit("alice", "case1", sitk.ReadImage(str(src / "ref1.nii.gz")))
    loop_rows = [{"case_id": f"L{i}", "image": f"img{i}.nii.gz", **({"mask": f"ref{i}.nii.gz"} if i <= 3 else {})}
                 for i in range(1, 6)]
    pd.DataFrame(loop_rows).to_csv(src / "loop_cases.csv", index=False)
    from AnnotationQCLib.cli import main as aqc

    assert aqc(["loop", "init", "--folder", str(root / "loop"), "--cases", str(src / "loop_cases.csv"),
                "--by", "lead"]) == 0
    study = study_from_csv(root / "study", "faults", src / "study_cases.csv", washout_days=0)
    study.add_reader("r1")
    study.add_reader("qa", "reviewer")
    study.save_mask("r1", "c1", "T2", "ROI", sitk.ReadImage(str(src / "mask.nii.gz")), final=True)
    return root


@pytest.fixture
def ws(base, tmp_path):
    """A private copy of the good data (so that a product bug cannot spoil the next row)."""
    dest = tmp_path / "w"
    shutil.copytree(base, dest)
    (dest / "out").mkdir()
    return dest


# ---------------------------------------------------------------------------------------
# running a row and counting


def _paths_in(argv) -> list[Path]:
    out = []
    for a in argv:
        p = Path(str(a))
        try:
            if str(a).startswith(("/", ".")) and p.exists():
                out.append(p)
        except OSError:
            continue
    return out


def refuse(argv, *, existing=(), absent=(), no_temps_in=(), mentions=(), tool=False) -> str:
    """Run ``annotation-qc ARGV`` (in-process, or the installed command with ``tool``) and
    assert it was refused cleanly (faultlib.assert_refused); count the outcome."""
    from AnnotationQCLib import cli

    argv = [str(a) for a in argv]
    inputs = _paths_in(argv)
    watch = inputs + [Path(p) for p in existing]
    if tool:
        res = fl.run_tool(["annotation-qc", *argv], watch=watch)
    else:
        res = fl.run_in_process(cli._main, argv, watch=watch)
    TOTALS["attempts"] += 1
    traceback = "Traceback" in res.stderr or "Traceback" in res.stdout
    damaged = False
    for p in watch:
        key = str(Path(p).resolve())
        if key in res.before and fl._digest(Path(key)) != res.before[key]:
            damaged = True
    damaged |= any(Path(p).exists() for p in absent)
    if traceback:
        TOTALS["tracebacks"] += 1
    elif damaged:
        TOTALS["data damaged"] += 1
    try:
        line = fl.assert_refused(res, inputs=inputs, existing=existing, absent=absent, no_temps_in=no_temps_in,
                                 mentions=mentions)
    except AssertionError:
        if not (traceback or damaged):
            TOTALS["other failures"] += 1
        raise
    TOTALS["refused cleanly"] += 1
    return line


def _bad(kind, ws):
    return fl.make(kind, ws / "bad")


def _csv_with(ws, name, src_csv, column, value, row=0):
    """A copy of a good case table (next to it, so its relative paths still hold) with one cell
    replaced."""
    df = pd.read_csv(src_csv)
    df[column] = df[column].astype(object)
    df.loc[row, column] = str(value)
    p = Path(src_csv).parent / name
    df.to_csv(p, index=False)
    return p


# ---------------------------------------------------------------------------------------
# images (every command that reads an image or a mask file)


def _study_csv(ws):
    return ws / "src" / "study_cases.csv"


IMAGE_COMMANDS = {
    "compare --reference": lambda ws, bad: (["compare", "--reference", bad, "--test", ws / "src/mask.nii.gz"], [], []),
    "compare --test": lambda ws, bad: (["compare", "--reference", ws / "src/mask.nii.gz", "--test", bad], [], []),
    "consensus --masks": lambda ws, bad: (["consensus", "--masks", bad, ws / "src/mask.nii.gz", "--out",
                                           ws / "out/c.nii.gz"], [], [ws / "out/c.nii.gz"]),
    "quality --image": lambda ws, bad: (["quality", "--image", bad, "--signal", ws / "src/mask.nii.gz",
                                         "--background", ws / "src/background.nii.gz"], [], []),
    "quality --signal": lambda ws, bad: (["quality", "--image", ws / "src/img1.nii.gz", "--signal", bad,
                                          "--background", ws / "src/background.nii.gz"], [], []),
    "training-create image": lambda ws, bad: (
        ["training-create", "--folder", ws / "new", "--name", "n", "--cases",
         _csv_with(ws, "tc.csv", ws / "training_cases.csv", "image", bad)], [], [ws / "new/session.json"]),
    "training-create reference": lambda ws, bad: (
        ["training-create", "--folder", ws / "new", "--name", "n", "--cases",
         _csv_with(ws, "tc.csv", ws / "training_cases.csv", "reference", bad)], [], [ws / "new/session.json"]),
    "training-submit --mask": lambda ws, bad: (
        ["training-submit", "--session", ws / "session", "--trainee", "bob", "--case", "case2", "--mask", bad],
        [ws / "session"], []),
    "study init image": lambda ws, bad: (
        ["study", "init", "--folder", ws / "newstudy", "--name", "n", "--cases",
         _csv_with(ws, "sc.csv", _study_csv(ws), "image", bad)], [], [ws / "newstudy/study.json"]),
    "study submit --mask": lambda ws, bad: (
        ["study", "submit", "--study", ws / "study", "--reader", "r1", "--case", "c2", "--sequence", "T2",
         "--content", "ROI", "--mask", bad], [ws / "study"], []),
    "quality grade --roi-labelmap": lambda ws, bad: (
        ["quality", "grade", "--study", ws / "study", "--case", "c1", "--sequence", "T2", "--rater", "qa",
         "--likert", "4", "--roi-labelmap", bad], [ws / "study"], []),
}


@pytest.mark.parametrize("kind", fl.IMAGE_FAULTS)
@pytest.mark.parametrize("command", list(IMAGE_COMMANDS))
def test_bad_image(ws, command, kind):
    bad = _bad(kind, ws)
    argv, existing, absent = IMAGE_COMMANDS[command](ws, bad)
    refuse(argv, existing=existing, absent=absent, no_temps_in=[ws], mentions=[bad.name])


# masks whose values or grid are wrong; "empty mask" only where a mask must select something
MASK_COMMANDS = {
    "compare --test": ["intensity image as mask", "float mask 0.5", "negative labels", "NaN mask", "other grid"],
    "consensus --masks": ["intensity image as mask", "float mask 0.5", "negative labels", "NaN mask", "other grid"],
    "quality --signal": fl.MASK_FAULTS + ["other grid"],
    "training-create reference": fl.MASK_FAULTS + ["other grid"],
    "training-submit --mask": fl.MASK_FAULTS + ["other grid"],
    "study submit --mask": ["intensity image as mask", "float mask 0.5", "negative labels", "NaN mask", "other grid"],
    "quality grade --roi-labelmap": ["other grid", "NaN mask", "float mask 0.5", "negative labels"],
}
MASK_ROWS = [(c, k) for c, kinds in MASK_COMMANDS.items() for k in kinds]


@pytest.mark.parametrize(("command", "kind"), MASK_ROWS, ids=[f"{c}-{k}" for c, k in MASK_ROWS])
def test_bad_mask(ws, command, kind):
    bad = ws / "src/other_grid.nii.gz" if kind == "other grid" else _bad(kind, ws)
    argv, existing, absent = IMAGE_COMMANDS[command](ws, bad)
    refuse(argv, existing=existing, absent=absent, no_temps_in=[ws], mentions=[bad.name])


# ---------------------------------------------------------------------------------------
# CSV tables


def _missing_columns(ws, command):
    p = ws / "missing_columns.csv"
    if command == "icc --input":
        pd.read_csv(ws / "ratings.csv").drop(columns=["y"]).to_csv(p, index=False)
    elif command == "feature-icc --a":
        pd.read_csv(ws / "a.csv").rename(columns={"case_id": "id"}).to_csv(p, index=False)
    elif command == "training-create --cases":
        pd.read_csv(ws / "training_cases.csv").drop(columns=["reference"]).to_csv(p, index=False)
    else:
        pd.read_csv(_study_csv(ws)).drop(columns=["image"]).to_csv(p, index=False)
    return p


CSV_COMMANDS = {
    "icc --input": lambda ws, bad: (["icc", "--input", bad, "--target", "case_id", "--rater", "r", "--rating", "y"],
                                    []),
    "feature-icc --a": lambda ws, bad: (["feature-icc", "--a", bad, "--b", ws / "b.csv", "--id-column", "case_id",
                                         "--out", ws / "out/icc.csv"], [ws / "out/icc.csv"]),
    "training-create --cases": lambda ws, bad: (["training-create", "--folder", ws / "new", "--name", "n", "--cases",
                                                 bad], [ws / "new/session.json"]),
    "study init --cases": lambda ws, bad: (["study", "init", "--folder", ws / "newstudy", "--name", "n", "--cases",
                                            bad], [ws / "newstudy/study.json"]),
}
CSV_KINDS = fl.CSV_FAULTS + ["missing columns", "missing file", "folder instead of file", "empty file"]


@pytest.mark.parametrize("kind", CSV_KINDS)
@pytest.mark.parametrize("command", list(CSV_COMMANDS))
def test_bad_csv(ws, command, kind):
    bad = _missing_columns(ws, command) if kind == "missing columns" else _bad(kind, ws)
    argv, absent = CSV_COMMANDS[command](ws, bad)
    line = refuse(argv, absent=absent, no_temps_in=[ws], mentions=[bad.name])
    if kind == "semicolon CSV":
        assert "';' as delimiter" in line
    if kind == "duplicate-column CSV":
        assert "duplicate column names" in line


# ---------------------------------------------------------------------------------------
# study and session folders


def _folder_kind(ws, kind, what):
    doc = "session.json" if what == "session" else "study.json"
    if kind == "missing folder":
        return ws / "no_such_folder"
    if kind == "a file":
        return ws / "src/mask.nii.gz"
    if kind == "not a study or session":
        return ws / "src"
    folder = ws / what
    text = (folder / doc).read_text()
    if kind == "wrong types":
        d = json.loads(text)
        d["cases"] = list(d["cases"])
        d["readers" if what == "study" else "criteria"] = ["r1"]
        text = json.dumps(d)
    elif kind == "damaged description":
        text = text[: len(text) // 2]
    else:
        text = text.replace('"format": "annotationqc-', '"format": "other-')
    (folder / doc).write_text(text)
    return folder


SESSION_COMMANDS = {
    "training-submit": lambda ws, s: ["training-submit", "--session", s, "--trainee", "bob", "--case", "case2",
                                      "--mask", ws / "src/ref2.nii.gz"],
    "training-withdraw": lambda ws, s: ["training-withdraw", "--session", s, "--trainee", "alice", "--case", "case1",
                                        "--reason", "wrong"],
    "training-list": lambda ws, s: ["training-list", "--session", s],
    "training-report": lambda ws, s: ["training-report", "--session", s, "--trainee", "alice", "--out", ws / "out/r"],
    "training-summary": lambda ws, s: ["training-summary", "--session", s, "--out", ws / "out/s"],
    "training-verify": lambda ws, s: ["training-verify", "--session", s],
}
STUDY_COMMANDS = {
    "study reader add": lambda ws, s: ["study", "reader", "add", "--study", s, "--reader", "r9"],
    "study assign": lambda ws, s: ["study", "assign", "--study", s, "--reader", "r1", "--all"],
    "study submit": lambda ws, s: ["study", "submit", "--study", s, "--reader", "r1", "--case", "c2", "--sequence",
                                   "T2", "--content", "ROI", "--mask", ws / "src/mask.nii.gz"],
    "study status": lambda ws, s: ["study", "status", "--study", s, "--coordinator"],
    "study verify": lambda ws, s: ["study", "verify", "--study", s],
    "quality grade": lambda ws, s: ["quality", "grade", "--study", s, "--case", "c1", "--sequence", "T2", "--rater",
                                    "qa", "--likert", "4"],
    "feature-icc --study": lambda ws, s: ["feature-icc", "--study", s, "--reader-a", "r1", "--reader-b", "qa",
                                          "--out", ws / "out/icc.csv"],
}
FOLDER_KINDS = ["missing folder", "a file", "not a study or session", "damaged description", "other format",
                "wrong types"]
# (study verify reports a study.json of the wrong shape as ALTERED, exit 1: a verdict, not a refusal)
FOLDER_ROWS = [(c, k, "session") for c in SESSION_COMMANDS for k in FOLDER_KINDS] + \
              [(c, k, "study") for c in STUDY_COMMANDS for k in FOLDER_KINDS if (c, k) != ("study verify", "wrong types")]


@pytest.mark.parametrize(("command", "kind", "what"), FOLDER_ROWS, ids=[f"{c}-{k}" for c, k, _ in FOLDER_ROWS])
def test_bad_folder(ws, command, kind, what):
    folder = _folder_kind(ws, kind, what)
    argv = (SESSION_COMMANDS if what == "session" else STUDY_COMMANDS)[command](ws, folder)
    refuse(argv, existing=[ws / what], absent=[ws / "out/r", ws / "out/s", ws / "out/icc.csv"], no_temps_in=[ws],
           mentions=[folder.name])


# ---------------------------------------------------------------------------------------
# the pre-annotation loop's commands (annotation-qc loop ...)


LOOP_COMMANDS = {
    "loop import": lambda ws, f: ["loop", "import", "--folder", f, "--masks", ws / "src", "--by", "lead"],
    "loop train": lambda ws, f: ["loop", "train", "--folder", f, "--epochs", "1", "--device", "cpu"],
    "loop prelabel": lambda ws, f: ["loop", "prelabel", "--folder", f, "--device", "cpu"],
    "loop queue": lambda ws, f: ["loop", "queue", "--folder", f, "--n", "2"],
    "loop accept": lambda ws, f: ["loop", "accept", "--folder", f, "--case", "L4", "--mask", ws / "src/ref4.nii.gz",
                                  "--by", "r1", "--verdict", "redrawn"],
    "loop reject": lambda ws, f: ["loop", "reject", "--folder", f, "--case", "L4", "--by", "r1", "--reason", "x"],
    "loop status": lambda ws, f: ["loop", "status", "--folder", f],
}
LOOP_FOLDERS = {"missing folder": lambda ws: ws / "no_such_loop", "a file": lambda ws: ws / "src/mask.nii.gz",
                "not a loop": lambda ws: ws / "src"}
LOOP_FOLDER_ROWS = [(c, k) for c in LOOP_COMMANDS for k in LOOP_FOLDERS]


@pytest.mark.parametrize(("command", "kind"), LOOP_FOLDER_ROWS, ids=[f"{c}-{k}" for c, k in LOOP_FOLDER_ROWS])
def test_loop_bad_folder(ws, command, kind):
    folder = LOOP_FOLDERS[kind](ws)
    refuse(LOOP_COMMANDS[command](ws, folder), existing=[ws / "loop"], no_temps_in=[ws], mentions=[folder.name])


@pytest.mark.parametrize("kind", CSV_KINDS[:5] + ["missing file", "folder instead of file", "empty file"])
def test_loop_init_bad_cases_table(ws, kind):
    bad = _bad(kind, ws)
    refuse(["loop", "init", "--folder", ws / "newloop", "--cases", bad], absent=[ws / "newloop/audit.jsonl"],
           no_temps_in=[ws], mentions=[bad.name])


LOOP_MASK_KINDS = ["missing file", "empty file", "binary garbage", "truncated .nii.gz", "2-D image", "4-D image",
                   "NaN voxels", "intensity image as mask", "float mask 0.5", "negative labels", "other grid"]


@pytest.mark.parametrize("kind", LOOP_MASK_KINDS)
def test_loop_accept_bad_mask(ws, kind):
    bad = ws / "src/other_grid.nii.gz" if kind == "other grid" else _bad(kind, ws)
    refuse(["loop", "accept", "--folder", ws / "loop", "--case", "L4", "--mask", bad, "--by", "r1", "--verdict",
            "redrawn"], existing=[ws / "loop"], no_temps_in=[ws], mentions=[bad.name])


@pytest.mark.parametrize("command", ["loop init", "loop accept", "loop reject"])
def test_loop_long_reader_id(ws, command):
    argv = {"loop init": ["loop", "init", "--folder", ws / "newloop", "--cases", ws / "src/loop_cases.csv"],
            "loop accept": ["loop", "accept", "--folder", ws / "loop", "--case", "L4", "--mask",
                            ws / "src/ref4.nii.gz", "--verdict", "redrawn"],
            "loop reject": ["loop", "reject", "--folder", ws / "loop", "--case", "L4", "--reason", "x"]}[command]
    line = refuse(argv + ["--by", LONG_ID], existing=[ws / "loop"], absent=[ws / "newloop/audit.jsonl"],
                  no_temps_in=[ws], mentions=["--by" if command == "loop init" else "reader"])
    assert len(line) < 400, line


# ---------------------------------------------------------------------------------------
# ids and numbers


ID_ROWS = {
    "study reader add --reader": lambda ws: ["study", "reader", "add", "--study", ws / "study", "--reader", LONG_ID],
    "study reader add --by": lambda ws: ["study", "reader", "add", "--study", ws / "study", "--reader", "r5", "--by",
                                         LONG_ID],
    "study assign --reader": lambda ws: ["study", "assign", "--study", ws / "study", "--reader", LONG_ID, "--all"],
    "study assign --by": lambda ws: ["study", "assign", "--study", ws / "study", "--reader", "r1", "--all", "--by",
                                     LONG_ID],
    "study submit --reader": lambda ws: ["study", "submit", "--study", ws / "study", "--reader", LONG_ID, "--case",
                                         "c2", "--sequence", "T2", "--content", "ROI", "--mask", ws / "src/mask.nii.gz"],
    "study submit --content": lambda ws: ["study", "submit", "--study", ws / "study", "--reader", "r1", "--case",
                                          "c2", "--sequence", "T2", "--content", "x" * 300, "--mask",
                                          ws / "src/mask.nii.gz"],
    "study status --reader": lambda ws: ["study", "status", "--study", ws / "study", "--reader", LONG_ID],
    "quality grade --rater": lambda ws: ["quality", "grade", "--study", ws / "study", "--case", "c1", "--sequence",
                                         "T2", "--rater", LONG_ID, "--likert", "4"],
    "training-submit --trainee": lambda ws: ["training-submit", "--session", ws / "session", "--trainee", LONG_ID,
                                             "--case", "case2", "--mask", ws / "src/ref2.nii.gz"],
    "training-withdraw --by": lambda ws: ["training-withdraw", "--session", ws / "session", "--trainee", "alice",
                                          "--case", "case1", "--reason", "x", "--by", LONG_ID],
    "training-report --trainee": lambda ws: ["training-report", "--session", ws / "session", "--trainee", LONG_ID],
    "feature-icc --reader-a": lambda ws: ["feature-icc", "--study", ws / "study", "--reader-a", LONG_ID,
                                          "--reader-b", "r1", "--out", ws / "out/icc.csv"],
    "quality grade --snr nan": lambda ws: ["quality", "grade", "--study", ws / "study", "--case", "c1", "--sequence",
                                           "T2", "--rater", "qa", "--likert", "4", "--snr", "nan"],
    "quality grade --min-cnr inf": lambda ws: ["quality", "grade", "--study", ws / "study", "--case", "c1",
                                               "--sequence", "T2", "--rater", "qa", "--likert", "4", "--cnr", "3",
                                               "--min-cnr", "inf"],
    "training-create --dice nan": lambda ws: ["training-create", "--folder", ws / "new", "--name", "n", "--cases",
                                              ws / "training_cases.csv", "--dice", "nan"],
    "compare --tolerance-mm nan": lambda ws: ["compare", "--reference", ws / "src/mask.nii.gz", "--test",
                                              ws / "src/mask2.nii.gz", "--tolerance-mm", "nan"],
    "consensus --threshold nan": lambda ws: ["consensus", "--masks", ws / "src/mask.nii.gz", ws / "src/mask2.nii.gz",
                                             "--out", ws / "out/c.nii.gz", "--threshold", "nan"],
    "icc --alpha 2": lambda ws: ["icc", "--input", ws / "ratings.csv", "--target", "case_id", "--rater", "r",
                                 "--rating", "y", "--alpha", "2"],
}


@pytest.mark.parametrize("row", list(ID_ROWS))
def test_bad_id_or_number(ws, row):
    line = refuse(ID_ROWS[row](ws), existing=[ws / "study", ws / "session"],
                  absent=[ws / "new/session.json", ws / "out/c.nii.gz", ws / "out/icc.csv"], no_temps_in=[ws])
    assert len(line) < 400, line                     # a 300-character id is not echoed whole


# ---------------------------------------------------------------------------------------
# outputs


def _old(p):
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("an earlier result\n")
    return p


OUTPUT_ROWS = {
    "feature-icc --out exists": lambda ws: (["feature-icc", "--a", ws / "a.csv", "--b", ws / "b.csv", "--id-column",
                                             "case_id", "--out", _old(ws / "out/icc.csv")], [ws / "out/icc.csv"]),
    "feature-icc --plot exists": lambda ws: (["feature-icc", "--a", ws / "a.csv", "--b", ws / "b.csv", "--id-column",
                                              "case_id", "--out", ws / "out/icc.csv", "--plot",
                                              _old(ws / "out/icc.png")], [ws / "out/icc.png"]),
    "consensus --out exists": lambda ws: (["consensus", "--masks", ws / "src/mask.nii.gz", ws / "src/mask2.nii.gz",
                                           "--out", _old(ws / "out/c.nii.gz")], [ws / "out/c.nii.gz"]),
    "consensus --disagreement exists": lambda ws: (["consensus", "--masks", ws / "src/mask.nii.gz",
                                                    ws / "src/mask2.nii.gz", "--out", ws / "out/c.nii.gz",
                                                    "--disagreement", _old(ws / "out/d.nii.gz")], [ws / "out/d.nii.gz"]),
    "consensus --probability exists": lambda ws: (["consensus", "--masks", ws / "src/mask.nii.gz",
                                                   ws / "src/mask2.nii.gz", "--out", ws / "out/c.nii.gz",
                                                   "--probability", _old(ws / "out/p.nii.gz")], [ws / "out/p.nii.gz"]),
    "training-report report exists": lambda ws: (["training-report", "--session", ws / "session", "--trainee", "alice",
                                                  "--out", ws / "out/r"], [_old(ws / "out/r/report.json")]),
    "training-summary summary exists": lambda ws: (["training-summary", "--session", ws / "session", "--out",
                                                    ws / "out/s"], [_old(ws / "out/s/summary.csv")]),
    "training-create --folder a session": lambda ws: (["training-create", "--folder", ws / "session", "--name", "x",
                                                       "--cases", ws / "training_cases.csv"], [ws / "session"]),
    "study init --folder a study": lambda ws: (["study", "init", "--folder", ws / "study", "--name", "x", "--cases",
                                                _study_csv(ws)], [ws / "study"]),
    "consensus --out = input": lambda ws: (["consensus", "--masks", ws / "src/mask.nii.gz", ws / "src/mask2.nii.gz",
                                            "--out", ws / "src/mask.nii.gz", "--overwrite"], []),
    "feature-icc --out = --a": lambda ws: (["feature-icc", "--a", ws / "a.csv", "--b", ws / "b.csv", "--id-column",
                                            "case_id", "--out", ws / "a.csv", "--overwrite"], []),
    "consensus --out = --disagreement": lambda ws: (["consensus", "--masks", ws / "src/mask.nii.gz",
                                                     ws / "src/mask2.nii.gz", "--out", ws / "out/x.nii.gz",
                                                     "--disagreement", ws / "out/x.nii.gz"], []),
    "consensus --out = --probability": lambda ws: (["consensus", "--masks", ws / "src/mask.nii.gz",
                                                    ws / "src/mask2.nii.gz", "--out", ws / "out/x.nii.gz",
                                                    "--probability", ws / "out/x.nii.gz", "--overwrite"], []),
    "feature-icc --out = --plot": lambda ws: (["feature-icc", "--a", ws / "a.csv", "--b", ws / "b.csv", "--id-column",
                                               "case_id", "--out", ws / "out/x.csv", "--plot", ws / "out/x.csv"], []),
    "training-report --out a file": lambda ws: (["training-report", "--session", ws / "session", "--trainee", "alice",
                                                 "--out", _old(ws / "out/file.txt")], [ws / "out/file.txt"]),
    "consensus --out a folder": lambda ws: (["consensus", "--masks", ws / "src/mask.nii.gz", ws / "src/mask2.nii.gz",
                                             "--out", ws / "out"], []),
}


@pytest.mark.parametrize("row", list(OUTPUT_ROWS))
def test_bad_output(ws, row):
    argv, existing = OUTPUT_ROWS[row](ws)
    refuse(argv, existing=existing + [ws / "session", ws / "study"],
           absent=[ws / "out/x.nii.gz", ws / "out/x.csv"], no_temps_in=[ws])


def _place(ws, dest: Path):
    """The good data inside ``dest`` (a read-only or full tmpfs): src, session, study."""
    for name in ("src", "session", "study"):
        shutil.copytree(ws / name, dest / name)
    for name in ("a.csv", "b.csv", "training_cases.csv"):
        shutil.copy(ws / name, dest / name)
    return dest


WRITE_ROWS = {
    "consensus --out": lambda ws, d: (["consensus", "--masks", ws / "src/mask.nii.gz", ws / "src/mask2.nii.gz",
                                       "--out", d / "c.nii.gz", "--disagreement", d / "dis.nii.gz"],
                                      [d / "c.nii.gz", d / "dis.nii.gz"]),
    "feature-icc --out": lambda ws, d: (["feature-icc", "--a", ws / "a.csv", "--b", ws / "b.csv", "--id-column",
                                         "case_id", "--out", d / "icc.csv"], [d / "icc.csv"]),
    "training-create --folder": lambda ws, d: (["training-create", "--folder", d / "new", "--name", "n", "--cases",
                                                ws / "training_cases.csv"], [d / "new/session.json"]),
    "study init --folder": lambda ws, d: (["study", "init", "--folder", d / "newstudy", "--name", "n", "--cases",
                                           _study_csv(ws)], [d / "newstudy/study.json"]),
    "training-submit": lambda ws, d: (["training-submit", "--session", d / "session", "--trainee", "bob", "--case",
                                       "case2", "--mask", ws / "src/ref2.nii.gz"], []),
    "training-withdraw": lambda ws, d: (["training-withdraw", "--session", d / "session", "--trainee", "alice",
                                         "--case", "case1", "--reason", "wrong lesion"], []),
    "training-report --out": lambda ws, d: (["training-report", "--session", ws / "session", "--trainee", "alice",
                                             "--out", d / "rep"], [d / "rep/report.json"]),
    "study submit": lambda ws, d: (["study", "submit", "--study", d / "study", "--reader", "r1", "--case", "c2",
                                    "--sequence", "T2", "--content", "ROI", "--mask", ws / "src/mask.nii.gz"], []),
    "study reader add": lambda ws, d: (["study", "reader", "add", "--study", d / "study", "--reader", "r7"], []),
    "study assign": lambda ws, d: (["study", "assign", "--study", d / "study", "--reader", "r1", "--all"], []),
    "quality grade": lambda ws, d: (["quality", "grade", "--study", d / "study", "--case", "c1", "--sequence", "T2",
                                     "--rater", "qa", "--likert", "4"], []),
}


@pytest.mark.parametrize("row", list(WRITE_ROWS))
def test_read_only_folder(ws, read_only_dir, row):
    d = _place(ws, read_only_dir.path)
    argv, absent = WRITE_ROWS[row](ws, d)
    folder = read_only_dir.seal()
    refuse(argv, existing=[folder / "session", folder / "study"], absent=absent, no_temps_in=[folder])


@pytest.mark.parametrize("row", list(WRITE_ROWS))
def test_full_disk(ws, full_disk, row):
    d = _place(ws, full_disk.path)
    argv, absent = WRITE_ROWS[row](ws, d)
    full_disk.fill()
    line = refuse(argv, existing=[d / "session", d / "study"], absent=absent, no_temps_in=[d])
    assert "no space left" in line or "disk full" in line, line


# ---------------------------------------------------------------------------------------
# the installed command: one row per command


TOOL_ROWS = {
    "icc": lambda ws: ["icc", "--input", fl.make("semicolon CSV", ws / "bad"), "--target", "case_id", "--rater", "r",
                       "--rating", "y"],
    "compare": lambda ws: ["compare", "--reference", fl.make("4-D image", ws / "bad"), "--test", ws / "src/mask.nii.gz"],
    "feature-icc": lambda ws: ["feature-icc", "--a", fl.make("duplicate-column CSV", ws / "bad"), "--b", ws / "b.csv",
                               "--id-column", "case_id", "--out", ws / "out/i.csv"],
    "consensus": lambda ws: ["consensus", "--masks", ws / "src/mask.nii.gz", ws / "src/other_grid.nii.gz", "--out",
                             ws / "out/c.nii.gz"],
    "quality": lambda ws: ["quality", "--image", fl.make("NaN voxels", ws / "bad"), "--signal", ws / "src/mask.nii.gz",
                           "--background", ws / "src/background.nii.gz"],
    "quality grade": lambda ws: ["quality", "grade", "--study", ws / "study", "--case", "c1", "--sequence", "T2",
                                 "--rater", "qa", "--likert", "4", "--snr", "nan"],
    "training-create": lambda ws: ["training-create", "--folder", ws / "new", "--name", "n", "--cases",
                                   fl.make("binary CSV", ws / "bad")],
    "training-submit": lambda ws: ["training-submit", "--session", ws / "session", "--trainee", "bob", "--case",
                                   "case2", "--mask", fl.make("empty mask", ws / "bad")],
    "training-withdraw": lambda ws: ["training-withdraw", "--session", ws / "session", "--trainee", "nobody", "--case",
                                     "case1", "--reason", "x"],
    "training-list": lambda ws: ["training-list", "--session", ws / "src"],
    "training-report": lambda ws: ["training-report", "--session", ws / "session", "--trainee", LONG_ID],
    "training-summary": lambda ws: ["training-summary", "--session", ws / "no_such"],
    "training-verify": lambda ws: ["training-verify", "--session", ws / "src/mask.nii.gz"],
    "study init": lambda ws: ["study", "init", "--folder", ws / "study", "--name", "x", "--cases", _study_csv(ws)],
    "study reader add": lambda ws: ["study", "reader", "add", "--study", ws / "study", "--reader", "r1", "--role",
                                    "reviewer"],
    "study assign": lambda ws: ["study", "assign", "--study", ws / "study", "--reader", "r1", "--cases", "nope"],
    "study submit": lambda ws: ["study", "submit", "--study", ws / "study", "--reader", "r1", "--case", "c1",
                                "--sequence", "T2", "--content", "ROI", "--mask", ws / "src/mask2.nii.gz"],
    "study status": lambda ws: ["study", "status", "--study", ws / "study", "--reader", "ghost"],
    "study verify": lambda ws: ["study", "verify", "--study", ws / "no_such"],
}


@pytest.mark.parametrize("command", list(TOOL_ROWS))
def test_installed_command_refuses(ws, command):
    (ws / "bad").mkdir(exist_ok=True)
    refuse(TOOL_ROWS[command](ws), existing=[ws / "session", ws / "study"], absent=[ws / "new/session.json"],
           no_temps_in=[ws], tool=True)
