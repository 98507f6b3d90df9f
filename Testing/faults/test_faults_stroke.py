"""The fault table of ``stroke-lesion`` (issue 12): every command x every bad-input class that
applies to it (faultlib's generated files, images, masks, CSVs and DICOM folders; bad numbers,
ids and study descriptions; outputs that exist, equal an input, sit in a read-only folder or on
a full disk; two annotators saving at once; a process killed while it writes).

A refusal must be clean: exit 2, one ``error:`` line, no traceback, inputs and the study
byte-identical, nothing published, no temporary file left (faultlib.assert_refused). Rows
that must succeed (concurrent saves, the command after a killed one) must lose nothing and
leave a study that ``verify`` passes. Each row is tallied; the totals (attempts, refused
cleanly, tracebacks, data damaged, accepted although bad) are printed at the end of the module
and written to ``stroke_fault_totals.json`` in pytest's base temporary folder.

Most rows call the command line in-process (``run_cli`` of ``stroke-lesion``'s own parser,
what the console script does, without a Python start per row); the concurrency, kill and
full-disk rows run the installed ``stroke-lesion`` in subprocesses. The study is the small
synthetic one of Testing/stroke/stroke_phantom.py (10 x 24 x 24 voxels)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import faultlib as fl
from faultlib import full_disk, read_only_dir  # noqa: F401  (pytest fixtures)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "stroke"))
import stroke_phantom as sp  # noqa: E402

from ClinicalMRICommonLib.audit import SITE_KEY_ENV  # noqa: E402
from StrokeLesionLib.cli import _main  # noqa: E402

#: Files every row hashes before it runs (the phantom's images; set by the ``images`` fixture).
ALWAYS_WATCHED: list[Path] = []

TALLY = {"attempts": 0, "refused cleanly": 0, "tracebacks": 0, "data damaged": 0, "accepted although bad": 0,
         "survived (nothing lost)": 0}
ROWS: list[dict] = []


@pytest.fixture(scope="module", autouse=True)
def totals(request, tmp_path_factory):
    yield TALLY
    out = tmp_path_factory.getbasetemp() / "stroke_fault_totals.json"
    out.write_text(json.dumps({"totals": TALLY, "rows": ROWS}, indent=1))
    rep = request.config.pluginmanager.get_plugin("terminalreporter")
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    if rep is not None and capman is not None:
        with capman.global_and_fixture_disabled():
            rep.write_line("\nstroke-lesion fault table: " + ", ".join(f"{k} {v}" for k, v in TALLY.items())
                           + f" ({out})")


@pytest.fixture(scope="module", autouse=True)
def site_key(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        key = tmp_path_factory.mktemp("site") / "site.key"
        mp.setenv(SITE_KEY_ENV, str(key))
        yield key


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    im = sp.write_images(tmp_path_factory.mktemp("phantom"))
    ALWAYS_WATCHED[:] = [im[k] for k in ("dwi", "adc", "mask", "mask_b")]
    return im


@pytest.fixture(scope="module")
def templates(tmp_path_factory, images, site_key):
    """Template studies in each state (copied per row)."""
    root = tmp_path_factory.mktemp("templates")
    return {until: sp.build_study(root / until, images, until=until).root
            for until in ("created", "annotated", "compared", "final")}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, templates):
    """A BIDS export of the final study."""
    out = tmp_path_factory.mktemp("export") / "ds"
    assert _main(["export-bids", str(templates["final"]), str(out), "--name", "x", "--author", "y"]) == 0
    return out


def study_copy(templates, tmp_path, state="created") -> Path:
    return sp.copy_study(templates[state], tmp_path / f"study_{state}")


# ---------------------------------------------------------------------------------------
# running and judging a row


def _damage(res: fl.Result, inputs, existing, absent, no_temps_in) -> list[str]:
    bad = []
    for p in list(inputs) + list(existing):
        key = str(Path(os.fspath(p)).resolve())
        if key in res.before and fl._digest(Path(key)) != res.before[key]:
            bad.append(f"{p} changed")
    bad += [f"{p} created" for p in absent if Path(os.fspath(p)).exists()]
    for folder in no_temps_in:
        f = Path(os.fspath(folder))
        if f.is_dir():
            bad += [f"temporary {c} left" for c in f.rglob(".tmp*")]
    return bad


def refused(res: fl.Result, row: str, *, inputs=(), existing=(), absent=(), no_temps_in=(), mentions=()) -> str:
    """Tally the row, then faultlib.assert_refused (exit 2, one error line, nothing changed).
    A listed input or existing path that did not exist before the run must not exist after it."""
    def was(p):
        return str(Path(os.fspath(p)).resolve()) in res.before
    absent = list(absent) + [p for p in list(inputs) + list(existing) if not was(p)]
    inputs, existing = [p for p in inputs if was(p)], [p for p in existing if was(p)]
    TALLY["attempts"] += 1
    tb = "Traceback" in res.stderr or "Traceback" in res.stdout
    damage = _damage(res, inputs, existing, absent, no_temps_in)
    if tb:
        outcome = "tracebacks"
    elif damage:
        outcome = "data damaged"
    elif res.rc == 2 and len(res.error_lines()) == 1:
        outcome = "refused cleanly"
    else:
        outcome = "accepted although bad"
    TALLY[outcome] += 1
    ROWS.append({"row": row, "outcome": outcome, "rc": res.rc, "error": (res.error_lines() or [""])[0][:300],
                 "damage": damage})
    return fl.assert_refused(res, inputs=inputs, existing=existing, absent=absent, no_temps_in=no_temps_in,
                             mentions=mentions)


def survived(row: str, ok: bool, detail: str = "") -> None:
    """Tally a row that must succeed without losing anything."""
    TALLY["attempts"] += 1
    TALLY["survived (nothing lost)" if ok else "data damaged"] += 1
    ROWS.append({"row": row, "outcome": "survived" if ok else "data damaged", "detail": detail[:300]})
    assert ok, detail


def run(argv, *, watch=()) -> fl.Result:
    """``stroke-lesion ARGV`` in this process, through run_cli (every existing path of the
    command line and of ``watch`` hashed first)."""
    argv = [os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in argv]
    paths = [a for a in argv if len(a) < 4096 and os.path.exists(a)]
    res = fl.run_in_process(_main, argv, watch=paths + list(watch) + ALWAYS_WATCHED)
    res.argv = ["stroke-lesion"] + argv
    return res


def verify_ok(study: Path) -> tuple[bool, str]:
    res = run(["verify", study, "--json"])
    try:
        rep = json.loads(res.stdout)
    except json.JSONDecodeError:
        return False, res.stderr
    return rep["ok"], json.dumps(rep)[:2000]


# ---------------------------------------------------------------------------------------
# images and masks


IMAGE_ROWS = fl.IMAGE_FAULTS
MASK_ROWS = fl.IMAGE_FAULTS + fl.MASK_FAULTS


@pytest.mark.parametrize("which", ["dwi", "adc"])
@pytest.mark.parametrize("kind", IMAGE_ROWS)
def test_candidate_bad_image(tmp_path, images, which, kind):
    bad = fl.make(kind, tmp_path)
    args = {"dwi": images["dwi"], "adc": images["adc"], which: bad}
    out = tmp_path / "cand.nii.gz"
    res = run(["candidate", "--dwi", args["dwi"], "--adc", args["adc"], "--out", out])
    refused(res, f"candidate --{which} {kind}", inputs=[images["dwi"], images["adc"]], absent=[out],
            no_temps_in=[tmp_path])


@pytest.mark.parametrize("which", ["dwi", "adc", "flair"])
@pytest.mark.parametrize("kind", IMAGE_ROWS)
def test_case_init_bad_image(tmp_path, templates, images, which, kind):
    study = study_copy(templates, tmp_path)
    bad = fl.make(kind, tmp_path)
    args = {"dwi": images["dwi"], "adc": images["adc"], which: bad}
    res = run(["case", "init", study, "c2", "--dwi", args["dwi"], "--adc", args["adc"]]
              + (["--flair", args["flair"]] if "flair" in args else []), watch=[study])
    refused(res, f"case init --{which} {kind}", inputs=[images["dwi"], images["adc"]], existing=[study],
            absent=[study / "cases" / "c2"], no_temps_in=[study])


@pytest.mark.parametrize("kind", MASK_ROWS)
def test_annotate_bad_mask(tmp_path, templates, kind):
    study = study_copy(templates, tmp_path)
    bad = fl.make(kind, tmp_path)
    res = run(["annotate", study, "c1", "--reader", "ann1", "--mask", bad], watch=[study])
    refused(res, f"annotate --mask {kind}", existing=[study], no_temps_in=[study],
            absent=[study / "cases" / "c1" / "masks" / "annotatorA"])


@pytest.mark.parametrize("kind", MASK_ROWS)
def test_review_bad_edited_mask(tmp_path, templates, kind):
    study = study_copy(templates, tmp_path, "compared")
    bad = fl.make(kind, tmp_path)
    res = run(["review", study, "c1", "--reader", "rev1", "--all", "A", "--lesion", "1=edited", "--edited", bad,
               "--why", "redrawn"], watch=[study])
    refused(res, f"review --edited {kind}", existing=[study], no_temps_in=[study])


@pytest.mark.parametrize("kind", IMAGE_ROWS + ["empty mask", "NaN mask", "float mask 0.5", "negative labels"])
def test_quality_bad_roi(tmp_path, templates, kind):
    study = study_copy(templates, tmp_path)
    bad = fl.make(kind, tmp_path)
    res = run(["quality", study, "c1", "--series", "dwi", "--reader", "rev1", "--likert", "4", "--roi", bad],
              watch=[study])
    refused(res, f"quality --roi {kind}", existing=[study], no_temps_in=[study])


@pytest.mark.parametrize("which", ["reference", "test"])
@pytest.mark.parametrize("kind", fl.IMAGE_FAULTS + [k for k in fl.MASK_FAULTS if k != "empty mask"])
def test_metrics_bad_mask(tmp_path, images, which, kind):
    bad = fl.make(kind, tmp_path)
    args = {"reference": images["mask"], "test": images["mask_b"], which: bad}
    res = run(["metrics", "--reference", args["reference"], "--test", args["test"]])
    refused(res, f"metrics --{which} {kind}", inputs=[images["mask"], images["mask_b"]])


# ---------------------------------------------------------------------------------------
# CSVs


@pytest.mark.parametrize("kind", fl.CSV_FAULTS + ["missing file", "empty file"])
def test_case_import_bad_csv(tmp_path, templates, kind):
    study = study_copy(templates, tmp_path)
    bad = fl.make(kind, tmp_path)
    if kind in ("missing file", "empty file"):
        bad = bad.with_suffix(".csv") if kind == "missing file" else bad.rename(bad.with_name("empty.csv"))
    res = run(["case", "import", study, "--from", bad], watch=[study])
    refused(res, f"case import --from {kind}", existing=[study], no_temps_in=[study])


@pytest.mark.parametrize("kind", fl.CSV_FAULTS + ["missing file", "empty file"])
def test_review_bad_choices_csv(tmp_path, templates, kind):
    study = study_copy(templates, tmp_path, "compared")
    bad = fl.make(kind, tmp_path)
    res = run(["review", study, "c1", "--reader", "rev1", "--choices", bad, "--why", "x"], watch=[study])
    refused(res, f"review --choices {kind}", existing=[study], no_temps_in=[study])


# ---------------------------------------------------------------------------------------
# numbers, ids, study descriptions

LONG = "a" * 300

BAD_ARGS = {
    "quality --snr nan": ["quality", "{study}", "c1", "--series", "dwi", "--reader", "rev1", "--likert", "4",
                          "--snr", "nan"],
    "quality --cnr inf": ["quality", "{study}", "c1", "--series", "dwi", "--reader", "rev1", "--likert", "4",
                          "--cnr", "inf"],
    "quality --snr -1": ["quality", "{study}", "c1", "--series", "dwi", "--reader", "rev1", "--likert", "4",
                         "--snr", "-1"],
    "quality --likert 9": ["quality", "{study}", "c1", "--series", "dwi", "--reader", "rev1", "--likert", "9"],
    "quality unknown series": ["quality", "{study}", "c1", "--series", "pet", "--reader", "rev1", "--likert", "4"],
    "quality --min-snr nan": ["quality", "{study}", "c1", "--series", "dwi", "--reader", "rev1", "--likert", "4",
                              "--snr", "3", "--min-snr", "nan"],
    "reader add --id 300 chars": ["reader", "add", "{study}", "--id", LONG, "--title", "chief", "--years", "20",
                                  "--neuro-years", "12"],
    "reader add --id ../x": ["reader", "add", "{study}", "--id", "../x", "--title", "chief", "--years", "20",
                             "--neuro-years", "12"],
    "reader add --years nan": ["reader", "add", "{study}", "--id", "r9", "--title", "chief", "--years", "nan",
                               "--neuro-years", "12"],
    "reader add --years 200": ["reader", "add", "{study}", "--id", "r9", "--title", "chief", "--years", "200",
                               "--neuro-years", "12"],
    "reader add neuro > years": ["reader", "add", "{study}", "--id", "r9", "--title", "chief", "--years", "5",
                                 "--neuro-years", "12"],
    "reader add --by 300 chars": ["reader", "add", "{study}", "--id", "r9", "--title", "chief", "--years", "20",
                                  "--neuro-years", "12", "--by", LONG],
    "case init case id 300 chars": ["case", "init", "{study}", LONG, "--dwi", "{dwi}", "--adc", "{adc}"],
    "case init case id ../x": ["case", "init", "{study}", "../x", "--dwi", "{dwi}", "--adc", "{adc}"],
    "case init --subject 300 chars": ["case", "init", "{study}", "c2", "--dwi", "{dwi}", "--adc", "{adc}",
                                      "--subject", LONG],
    "case init --session ---": ["case", "init", "{study}", "c2", "--dwi", "{dwi}", "--adc", "{adc}",
                                "--session=---"],
    "case init same subject and session": ["case", "init", "{study}", "c2", "--dwi", "{dwi}", "--adc", "{adc}",
                                           "--subject", "c1"],
    "case init unqualified annotator": ["case", "init", "{study}", "c2", "--dwi", "{dwi}", "--adc", "{adc}",
                                        "--annotator-a", "junior"],
    "case init --adc-units bogus": ["case", "init", "{study}", "c2", "--dwi", "{dwi}", "--adc", "{adc}",
                                    "--adc-units", "furlongs"],
    "case init DWI given as ADC": ["case", "init", "{study}", "c2", "--dwi", "{dwi}", "--adc", "{dwi}"],
    "case assign unknown reader": ["case", "assign", "{study}", "c1", "--reviewer", "nobody"],
    "annotate --reader 300 chars": ["annotate", "{study}", "c1", "--reader", LONG, "--mask", "{mask}"],
    "annotate by the reviewer": ["annotate", "{study}", "c1", "--reader", "rev1", "--mask", "{mask}"],
    "annotate unknown case": ["annotate", "{study}", "c9", "--reader", "ann1", "--mask", "{mask}"],
    "annotate case id ../../x": ["annotate", "{study}", "../../x", "--reader", "ann1", "--mask", "{mask}"],
    "annotate --no-lesion with a mask": ["annotate", "{study}", "c1", "--reader", "ann1", "--mask", "{mask}",
                                         "--no-lesion"],
    "annotate --minutes nan": ["annotate", "{study}", "c1", "--reader", "ann1", "--mask", "{mask}",
                               "--minutes", "nan"],
    "note --point-ras 1,2": ["note", "{study}", "c1", "--reader", "ann1", "--text", "t", "--point-ras", "1,2"],
    "note point outside the image": ["note", "{study}", "c1", "--reader", "ann1", "--text", "t", "--point-ras",
                                     "900,900,900"],
    "compare before both annotations": ["compare", "{study}", "c1"],
    "review before the comparison": ["review", "{study}", "c1", "--reader", "rev1", "--all", "A", "--why", "x"],
    "arbitrate an undisputed case": ["arbitrate", "{study}", "c1", "--reader", "arb1", "--all", "A", "--why", "x"],
    "status --reader 300 chars": ["status", "{study}", "c1", "--reader", LONG],
    "status --reader and --coordinator": ["status", "{study}", "c1", "--reader", "ann1", "--coordinator"],
    "verify unknown case": ["verify", "{study}", "--case", "c9"],
    "candidate --threshold 620": ["candidate", "--dwi", "{dwi}", "--adc", "{adc}", "--out", "{tmp}/o.nii.gz",
                                  "--threshold", "620"],
    "candidate --b-value inf": ["candidate", "--dwi", "{dwi}", "--adc", "{adc}", "--out", "{tmp}/o.nii.gz",
                                "--b-value", "inf", "--eadc-out", "{tmp}/e.nii.gz"],
    "study init --min-dice 2": ["study", "init", "{tmp}/new", "--min-dice", "2"],
    "study init --by 300 chars": ["study", "init", "{tmp}/new", "--by", LONG],
    "study init in an existing study": ["study", "init", "{study}"],
}


@pytest.mark.parametrize("row", list(BAD_ARGS))
def test_bad_numbers_ids_and_states(tmp_path, templates, images, row):
    study = study_copy(templates, tmp_path)
    argv = [a.format(study=study, dwi=images["dwi"], adc=images["adc"], mask=images["mask"], tmp=tmp_path)
            for a in BAD_ARGS[row]]
    res = run(argv, watch=[study])
    refused(res, row, inputs=[images["dwi"], images["adc"], images["mask"]], existing=[study],
            absent=[tmp_path / "o.nii.gz", tmp_path / "new", study / "cases" / "c2"], no_temps_in=[study, tmp_path])


STUDY_JSON = {
    "a JSON list": "[1, 2]",
    "thresholds a list": lambda d: d["settings"].update(thresholds=[1, 2]),
    "min_dice a string": lambda d: d["settings"]["thresholds"].update(min_dice="abc"),
    "min_dice true": lambda d: d["settings"]["thresholds"].update(min_dice=True),
    "max_unmatched_lesions 1.5": lambda d: d["settings"]["thresholds"].update(max_unmatched_lesions=1.5),
    "signoff_agreed 'no'": lambda d: d["settings"].update(signoff_agreed="no"),
    "lesion_connectivity '26'": lambda d: d["settings"].update(lesion_connectivity="26"),
    "settings a string": lambda d: d.update(settings="fast"),
    "format missing": lambda d: d.pop("format"),
    "binary garbage": b"\xff\xfe\x00garbage",
    "not JSON": "{settings: ",
    "empty file": "",
}


@pytest.mark.parametrize("row", list(STUDY_JSON))
@pytest.mark.parametrize("command", [["status", "{study}"], ["annotate", "{study}", "c1", "--reader", "ann1",
                                                                "--mask", "{mask}"]])
def test_damaged_study_json(tmp_path, templates, images, row, command):
    study = study_copy(templates, tmp_path)
    meta = study / "study.json"
    os.chmod(meta, 0o644)
    change = STUDY_JSON[row]
    if callable(change):
        d = json.loads(meta.read_text())
        change(d)
        meta.write_text(json.dumps(d))
    elif isinstance(change, bytes):
        meta.write_bytes(change)
    else:
        meta.write_text(change)
    res = run([a.format(study=study, mask=images["mask"]) for a in command], watch=[study])
    refused(res, f"{command[0]} on study.json: {row}", existing=[study], no_temps_in=[study], mentions=["study.json"])


@pytest.mark.parametrize("what", ["missing", "a file", "a folder without study.json"])
@pytest.mark.parametrize("command", ["status", "verify", "reader list", "annotate", "export-bids"])
def test_not_a_study(tmp_path, images, what, command):
    study = tmp_path / "study"
    if what == "a file":
        study.write_text("x")
    elif what != "missing":
        study.mkdir()
    argv = {"status": ["status", study], "verify": ["verify", study], "reader list": ["reader", "list", study],
            "annotate": ["annotate", study, "c1", "--reader", "ann1", "--mask", images["mask"]],
            "export-bids": ["export-bids", study, tmp_path / "ds", "--name", "x", "--author", "y"]}[command]
    res = run(argv, watch=[study])
    refused(res, f"{command} on a study that is {what}", inputs=[images["mask"]], existing=[study],
            absent=[tmp_path / "ds"])


# ---------------------------------------------------------------------------------------
# outputs


def test_candidate_outputs(tmp_path, images, read_only_dir):
    existing = tmp_path / "cand.nii.gz"
    existing.write_bytes(b"an earlier result")
    base = ["candidate", "--dwi", images["dwi"], "--adc", images["adc"]]
    inputs = [images["dwi"], images["adc"]]
    rows = {
        "--out exists": (base + ["--out", existing], [existing], []),
        "--out is the ADC (--overwrite)": (base + ["--out", images["adc"], "--overwrite"], [], []),
        "--brain-out equals --out": (base + ["--out", tmp_path / "o.nii.gz", "--brain-out", tmp_path / "o.nii.gz"],
                                     [], [tmp_path / "o.nii.gz"]),
        "--out is a folder": (base + ["--out", tmp_path], [], []),
        "--out below a file": (base + ["--out", existing / "x.nii.gz"], [existing], []),
        "--out name too long": (base + ["--out", tmp_path / ("x" * 300 + ".nii.gz")], [], []),
    }
    for row, (argv, existing_files, absent) in rows.items():
        refused(run(argv, watch=existing_files), f"candidate {row}", inputs=inputs, existing=existing_files,
                absent=absent,
                no_temps_in=[tmp_path])
    ro = read_only_dir.seal()
    refused(run(base + ["--out", ro / "o.nii.gz"]), "candidate --out in a read-only folder", inputs=inputs,
            absent=[ro / "o.nii.gz"])


def test_export_outputs(tmp_path, templates, read_only_dir):
    study = templates["final"]
    base = ["export-bids", study]
    tail = ["--name", "x", "--author", "y"]
    full = tmp_path / "full"
    full.mkdir()
    (full / "notes.txt").write_text("mine")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    rows = {
        "OUT not empty": ([full], [full]),
        "OUT not empty, --overwrite, no earlier export": ([full, "--overwrite"], [full]),
        "OUT is the study": ([study], []),
        "OUT inside the study": ([study / "cases" / "ds"], []),
        "OUT is a file": ([a_file], [a_file]),
        "unknown --case": ([tmp_path / "ds", "--case", "c9"], []),
    }
    for row, (args, existing) in rows.items():
        refused(run(base + args[:1] + tail + args[1:], watch=[study]), f"export-bids {row}",
                existing=[study] + existing, absent=[tmp_path / "ds", study / "cases" / "ds"], no_temps_in=[tmp_path])
    ro = read_only_dir.seal()
    refused(run(base + [ro / "ds"] + tail, watch=[study]), "export-bids into a read-only folder", existing=[study],
            absent=[ro / "ds"])


def test_tampered_study_is_not_exported(tmp_path, templates):
    study = study_copy(templates, tmp_path, "final")
    img = study / "cases" / "c1" / "images"
    os.chmod(img / "c1_dwi.nii.gz", 0o644)
    (img / "c1_dwi.nii.gz").write_bytes((img / "c1_adc.nii.gz").read_bytes())
    res = run(["export-bids", study, tmp_path / "ds", "--name", "x", "--author", "y"], watch=[study])
    refused(res, "export-bids of a case whose DWI was replaced by its ADC", existing=[study],
            absent=[tmp_path / "ds"], mentions=["SHA-256"])


@pytest.mark.parametrize("what", ["missing", "a file", "a study folder", "a folder without dataset_description"])
@pytest.mark.parametrize("command", ["validate-bids", "accept"])
def test_not_a_dataset(tmp_path, templates, what, command):
    ds = {"missing": tmp_path / "nothere", "a file": tmp_path / "f.txt", "a study folder": templates["final"],
          "a folder without dataset_description": tmp_path / "empty"}[what]
    if what == "a file":
        ds.write_text("x")
    elif what == "a folder without dataset_description":
        ds.mkdir()
    res = run([command, ds], watch=[ds])
    refused(res, f"{command} on {what}", existing=[ds], absent=[Path(str(ds) + "-acceptance")])


def test_accept_report_exists(tmp_path, dataset):
    rep = tmp_path / "report"
    rep.mkdir()
    (rep / "acceptance_report.json").write_text("{}")
    res = run(["accept", dataset, "--report-dir", rep], watch=[dataset, rep])
    refused(res, "accept --report-dir with an earlier report", existing=[dataset, rep])


# ---------------------------------------------------------------------------------------
# de-identification


def _dicom(folder: Path, **flags) -> Path:
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("dicomanonymizer")
    from test_stroke_deid import make_dicom
    folder.mkdir(parents=True, exist_ok=True)
    p = make_dicom(folder / "a.dcm")
    if flags:
        ds = pydicom.dcmread(str(p))
        for k, v in flags.items():
            setattr(ds, k, v)
        ds.save_as(str(p))
    return p


def test_deid_refusals(tmp_path):
    good = tmp_path / "good"
    _dicom(good)
    rows = {
        "burned-in annotation": _dicom(tmp_path / "burned", BurnedInAnnotation="YES").parent,
        "secondary capture with recognizable features": _dicom(
            tmp_path / "sc", SOPClassUID="1.2.840.10008.5.1.4.1.1.7", RecognizableVisualFeatures="YES").parent,
        "secondary capture without the burned-in flag": _dicom(
            tmp_path / "sc2", SOPClassUID="1.2.840.10008.5.1.4.1.1.7", BurnedInAnnotation="").parent,
        "folder without DICOM": fl.make("folder without DICOM", tmp_path),
        "missing folder": tmp_path / "nothere",
    }
    for row, src in rows.items():
        out = tmp_path / f"out_{abs(hash(row))}"
        refused(run(["deid", "dicom", src, out], watch=[src]), f"deid dicom {row}", inputs=[src], absent=[out],
                no_temps_in=[tmp_path])
    for kind in ("binary garbage", "empty file", "missing file"):
        bad = fl.make(kind, tmp_path)
        refused(run(["deid", "dicom", bad, tmp_path / "o.dcm"]), f"deid dicom file {kind}",
                inputs=[bad], absent=[tmp_path / "o.dcm"])
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "x.dcm").write_text("earlier")
    refused(run(["deid", "dicom", good, existing], watch=[good, existing]), "deid dicom into a non-empty folder",
            inputs=[good], existing=[existing])
    refused(run(["deid", "dicom", good, good / "inside"], watch=[good]), "deid dicom into the input folder",
            inputs=[good], absent=[good / "inside"])
    sidecar = tmp_path / "s.json"
    sidecar.write_text(json.dumps({"PatientName": "x", "EchoTime": 0.05}))
    refused(run(["deid", "sidecar", sidecar, sidecar, "--overwrite"]), "deid sidecar onto itself", inputs=[sidecar])
    for row, text in {"a JSON list": "[1]", "not JSON": "{", "binary": "\udcff"}.items():
        p = tmp_path / f"bad_{len(text)}_{row[0]}.json"
        p.write_bytes(text.encode("utf-8", "surrogateescape"))
        refused(run(["deid", "sidecar", p, tmp_path / "clean.json"]), f"deid sidecar {row}", inputs=[p],
                absent=[tmp_path / "clean.json"])


# ---------------------------------------------------------------------------------------
# full disk, read-only study


def test_full_disk(tmp_path, images, full_disk):
    """The study on a 1 MiB tmpfs, filled: annotate (nearly full: room for the lock, not for
    the mask and its record; and completely full), case init, export, candidate, deid."""
    study = sp.copy_study(sp.build_study(tmp_path / "template", images, until="created").root,
                          full_disk.path / "study")
    for leave in (6000, 0):
        full_disk.empty()
        full_disk.fill(leave)
        res = fl.run_tool(["stroke-lesion", "annotate", study, "c1", "--reader", "ann1", "--mask", images["mask"]],
                          watch=[study] + ALWAYS_WATCHED)
        refused(res, f"annotate on a full disk ({leave} bytes free)", inputs=[images["mask"]], existing=[study],
                no_temps_in=[study])
    full_disk.fill(0)
    rows = {
        "case init": (["case", "init", study, "c2", "--dwi", images["dwi"], "--adc", images["adc"]],
                      [study / "cases" / "c2"]),
        "export-bids": (["export-bids", study, full_disk.path / "ds", "--name", "x", "--author", "y"],
                        [full_disk.path / "ds"]),
        "candidate": (["candidate", "--dwi", images["dwi"], "--adc", images["adc"], "--out",
                       full_disk.path / "c.nii.gz"], [full_disk.path / "c.nii.gz"]),
        "reader add": (["reader", "add", study, "--id", "r9", "--title", "chief", "--years", "20",
                        "--neuro-years", "12"], []),
    }
    for row, (argv, absent) in rows.items():
        refused(run(argv, watch=[study]), f"{row} on a full disk", inputs=[images["dwi"], images["adc"]],
                existing=[study], absent=absent, no_temps_in=[full_disk.path])
    full_disk.empty()
    assert run(["annotate", study, "c1", "--reader", "ann1", "--mask", images["mask"]]).rc == 0  # space again: fine
    ok, detail = verify_ok(study)
    survived("annotate after the disk was full again has space", ok, detail)


def test_annotate_whatever_the_free_space(tmp_path, images, full_disk):
    """From 0 bytes free up to enough: annotate either is refused and leaves the study as it
    was, or saves the mask and its record and the study verifies (a head file that could not
    be updated is a notice, repaired by the next change); never a success without the mask."""
    from StrokeLesionLib.workflow import Study
    study = sp.copy_study(sp.build_study(tmp_path / "template", images, until="created").root,
                          full_disk.path / "study")
    for leave in (2048, 4096, 8192, 12288, 16384, 20480, 28672, 40960):
        full_disk.empty()
        full_disk.fill(leave)
        before = fl.snapshot([study])
        n = len(Study(study).state("c1").records)
        res = run(["annotate", study, "c1", "--reader", "ann1", "--mask", images["mask"]], watch=[study])
        if res.rc == 0:
            full_disk.empty()
            st = Study(study).state("c1")
            ok, detail = verify_ok(study)
            saved = st.annotations["annotatorA"][-1]
            survived(f"annotate with {leave} bytes free: saved", ok and len(st.records) == n + 1 and
                     (study / "cases" / "c1" / saved["file"]).stat().st_size > 0, detail + res.stderr)
        else:
            refused(res, f"annotate with {leave} bytes free: refused", existing=[study], no_temps_in=[study])
            assert fl.snapshot([study]) == before


def test_read_only_study(tmp_path, images, read_only_dir):
    study = sp.copy_study(sp.build_study(tmp_path / "template", images, until="created").root,
                          read_only_dir.path / "study")
    read_only_dir.seal()
    for row, argv in {"annotate": ["annotate", study, "c1", "--reader", "ann1", "--mask", images["mask"]],
                      "reader add": ["reader", "add", study, "--id", "r9", "--title", "chief", "--years", "20",
                                     "--neuro-years", "12"],
                      "quality": ["quality", study, "c1", "--series", "dwi", "--reader", "rev1", "--likert", "4",
                                  "--snr", "20", "--cnr", "5"]}.items():
        refused(run(argv, watch=[study]), f"{row} on a read-only study", inputs=[images["mask"]], existing=[study])


# ---------------------------------------------------------------------------------------
# concurrency and a process killed while it writes


def _parallel(commands: list[list]) -> list[fl.Result]:
    results: list = [None] * len(commands)

    def go(i):
        results[i] = fl.run_tool(commands[i])

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(commands))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def test_two_annotators_save_at_once(tmp_path, templates, images):
    from StrokeLesionLib.workflow import Study
    study = study_copy(templates, tmp_path)
    res = _parallel([["stroke-lesion", "annotate", study, "c1", "--reader", r, "--mask", images[m]]
                     for r, m in (("ann1", "mask"), ("ann2", "mask_b"))])
    st = Study(study).state("c1")
    ok, detail = verify_ok(study)
    survived("two annotators save at once: both masks kept", all(r.rc == 0 for r in res) and ok and
             st.status == "ready_to_compare" and all(len(st.annotations[s]) == 1 for s in st.annotations),
             detail + "".join(r.stderr for r in res))
    # the same annotator twice at once: two versions, none lost
    res = _parallel([["stroke-lesion", "annotate", study, "c1", "--reader", "ann1", "--mask", images[m]]
                     for m in ("mask", "mask_b")])
    st = Study(study).state("c1")
    ok, detail = verify_ok(study)
    survived("one annotator saves twice at once: both versions kept", all(r.rc == 0 for r in res) and ok and
             [v["version"] for v in st.annotations["annotatorA"]] == [1, 2, 3], detail)
    # two comparisons at once: exactly one wins, the other is refused cleanly
    res = _parallel([["stroke-lesion", "compare", study, "c1"]] * 2)
    assert sorted(r.rc for r in res) == [0, 2], [r.stderr for r in res]
    loser = next(r for r in res if r.rc == 2)
    loser.before = {}
    refused(loser, "two comparisons at once: the second", no_temps_in=[study])
    assert "already compared" in loser.stderr or "being written" in loser.stderr
    assert len(list((study / "cases" / "c1" / "compare").glob("*_compare_v*.json"))) == 1


_KILLED_WRITER = """
import os, signal, sys
from pathlib import Path
from ClinicalMRICommonLib.locks import folder_lock
from ClinicalMRICommonLib.files import atomic_path
case = Path(sys.argv[1])
with folder_lock(case):
    with atomic_path(case / "masks" / "annotatorA" / "c1_dwi_lesion-annotatorA_v001.nii.gz") as tmp:
        tmp.write_bytes(b"half a mask")
        os.kill(os.getpid(), signal.SIGKILL)
"""


def test_killed_while_writing(tmp_path, templates, images):
    from StrokeLesionLib.workflow import Study
    study = study_copy(templates, tmp_path)
    case = study / "cases" / "c1"
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITER, str(case)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL and (case / ".lock").exists()
    assert list((case / "masks" / "annotatorA").glob(".tmp-*"))
    t0 = time.monotonic()
    res = fl.run_tool(["stroke-lesion", "annotate", study, "c1", "--reader", "ann1", "--mask", images["mask"]])
    rec = Study(study).state("c1").records[-1]
    ok, detail = verify_ok(study)
    survived("annotate after a process was killed holding the case lock mid-write",
             res.rc == 0 and "took over the stale lock" in res.stderr and time.monotonic() - t0 < 14 and ok and
             not list(case.rglob(".tmp-*")) and rec["what"].get("recovered", {}).get("leftovers_removed"),
             res.stderr + detail)
    # real commands killed at several moments: the next command works and nothing recorded is lost
    for delay in (0.6, 1.2):
        n_before = len(Study(study).state("c1").records)
        p = subprocess.Popen(fl._tool_command("stroke-lesion") + ["annotate", str(study), "c1", "--reader", "ann1",
                                                                  "--mask", str(images["mask"])],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        res = fl.run_tool(["stroke-lesion", "annotate", study, "c1", "--reader", "ann2", "--mask", images["mask_b"]])
        st = Study(study).state("c1")
        ok, detail = verify_ok(study)
        survived(f"annotate killed after {delay} s, then another annotate", res.rc == 0 and ok and
                 len(st.records) >= n_before + 1, res.stderr + detail)
    # an export killed half-way leaves only its hidden staging folder, removed by the next export
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".ds.partial-{int(gone.stdout)}-abcd"             # left by a process that is gone
    (stale / "sub-c1").mkdir(parents=True)
    st = Study(study)
    assert st.state("c1").status == "ready_to_compare"
    res = run(["export-bids", study, tmp_path / "ds", "--name", "x", "--author", "y"])
    survived("export after a killed export", res.rc == 0 and not stale.exists() and
             (tmp_path / "ds" / "dataset_description.json").exists(), res.stderr)
