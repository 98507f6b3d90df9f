"""Table-driven bad-input rows for every ``hrmm`` command (issue 12): each applicable bad
input class (faultlib generators: images, masks, CSVs, cohort manifests, model bundles,
outputs that exist / equal an input / sit in a read-only folder / on a full disk, option
values) is refused with exit 2, exactly one ``error:`` line, no traceback, and the inputs and
existing files byte-identical afterwards.

Most rows run ``hrmm``'s own ``main`` in this process (the same argument parsing and
``run_cli`` as the console command; an exception it lets through is a traceback); a few run
the installed console command in a subprocess to show it is the same there. The totals
(attempts, refused cleanly, tracebacks, data damaged) are written to
``hrmm_fault_totals.json`` in pytest's base temporary folder at the end of the module and
printed with ``-s``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import traceback
from pathlib import Path

import pytest

import faultlib as fl
from faultlib import full_disk, read_only_dir  # noqa: F401  (pytest fixtures)

from ClinicalMRICommonLib.images import read_grid
from HRMMPredictLib.bundle import BUNDLE_MANIFEST
from HRMMPredictLib.cli.main import main as hrmm_main

TOTALS = {"attempts": 0, "refused cleanly": 0, "tracebacks": 0, "data damaged": 0, "other": 0}
FAILURES: list[str] = []


@pytest.fixture(scope="module", autouse=True)
def _totals(tmp_path_factory):
    yield
    out = tmp_path_factory.getbasetemp() / "hrmm_fault_totals.json"
    out.write_text(json.dumps({**TOTALS, "failures": FAILURES}, indent=1))
    print(f"\nhrmm fault rows: {TOTALS}")


def run_hrmm(argv: list, *, watch=()) -> fl.Result:
    """``hrmm argv`` in this process (argparse's exit 2 included), with every existing path
    of the command line and of ``watch`` hashed first."""
    argv = [os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in argv]
    before = fl.snapshot(list(argv) + list(watch))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = hrmm_main(argv)
        except SystemExit as exc:  # argparse
            rc = exc.code if isinstance(exc.code, int) else 2
            if not isinstance(exc.code, int) and exc.code:
                print(exc.code, file=err)
        except BaseException:  # noqa: BLE001 - what a user would see as a traceback
            traceback.print_exc(file=err)
            rc = 1
    return fl.Result(["hrmm"] + argv, rc, out.getvalue(), err.getvalue(), before)


def refused(res: fl.Result, **kwargs) -> str:
    """fl.assert_refused, counted: argparse's usage line is allowed before the error line."""
    TOTALS["attempts"] += 1
    try:
        line = fl.assert_refused(res, **kwargs)
    except AssertionError as exc:
        text = str(exc)
        kind = ("tracebacks" if text.startswith("traceback") else
                "data damaged" if " changed" in text or "was created" in text or "temporary files left" in text
                else "other")
        TOTALS[kind] += 1
        FAILURES.append(f"{kind}: {' '.join(res.argv)[:200]} -> {text.splitlines()[0][:200]}")
        raise
    TOTALS["refused cleanly"] += 1
    return line


# ---------------------------------------------------------------------------------------
# inputs shared by the rows


@pytest.fixture
def case(tmp_path):
    """Good T1WI / T2WI / FS-T2WI images and ROI (faultlib's small grid)."""
    d = tmp_path / "case"
    d.mkdir()
    return {"t1": fl.good_image(d, "t1.nii.gz", 1), "t2": fl.good_image(d, "t2.nii.gz", 2),
            "fst2": fl.good_image(d, "fst2.nii.gz", 3), "roi": fl.good_mask(d, "roi.nii.gz")}


def _predict_argv(case, bundle, **override):
    paths = {**case, "model": bundle, **override}
    return ["predict", "--t1", paths["t1"], "--t2", paths["t2"], "--fst2", paths["fst2"], "--roi", paths["roi"],
            "--model", paths["model"], "--device", "cpu"]


def _inputs(*paths):
    return [p for p in paths if Path(p).exists()]


def _cohort_with(tmp_path: Path, column: str, bad: Path) -> Path:
    """A one-patient cohort manifest whose ``column`` file is ``bad`` (the others good)."""
    d = tmp_path / "cohort"
    d.mkdir(exist_ok=True)
    files = {k: fl.good_image(d, f"{k}.nii.gz", i) for i, k in enumerate(("t1", "t2", "fst2"), 1)}
    files["roi"] = fl.good_mask(d, "roi.nii.gz")
    files[column] = bad
    csv = d / "cohort.csv"
    csv.write_text("patient_id,lesion_id,label,t1,t2,fst2,roi\n"
                   + f"p1,p1_l1,1,{files['t1']},{files['t2']},{files['fst2']},{files['roi']}\n")
    return csv


# ---------------------------------------------------------------------------------------
# extract


@pytest.mark.parametrize("kind", fl.IMAGE_FAULTS)
def test_extract_refuses_bad_image(tmp_path, kind):
    mask = fl.good_mask(tmp_path)
    bad = fl.make(kind, tmp_path)
    out = tmp_path / "features.csv"
    res = run_hrmm(["extract", "--image", bad, "--mask", mask, "--out", out])
    refused(res, inputs=_inputs(mask, bad), absent=[out], no_temps_in=[tmp_path])


@pytest.mark.parametrize("kind", fl.MASK_FAULTS + ["missing file", "2-D image", "4-D image", "truncated .nii",
                                                   "binary garbage"])
def test_extract_refuses_bad_mask(tmp_path, kind):
    image = fl.good_image(tmp_path)
    bad = fl.make(kind, tmp_path)
    out = tmp_path / "features.csv"
    res = run_hrmm(["extract", "--image", image, "--mask", bad, "--out", out])
    refused(res, inputs=_inputs(image, bad), absent=[out], no_temps_in=[tmp_path])


@pytest.mark.parametrize("kind", ["binary garbage", "empty file", "missing file", "folder instead of file",
                                  "semicolon CSV"])
def test_extract_refuses_bad_params(tmp_path, kind):
    image, mask = fl.good_image(tmp_path), fl.good_mask(tmp_path)
    bad = fl.make(kind, tmp_path)
    out = tmp_path / "features.csv"
    res = run_hrmm(["extract", "--image", image, "--mask", mask, "--params", bad, "--out", out])
    refused(res, inputs=_inputs(image, mask, bad), absent=[out], no_temps_in=[tmp_path])


def test_extract_keeps_an_existing_output(tmp_path):
    image, mask = fl.good_image(tmp_path), fl.good_mask(tmp_path)
    out = tmp_path / "features.csv"
    out.write_text("kept\n")
    res = run_hrmm(["extract", "--image", image, "--mask", mask, "--out", out])
    refused(res, inputs=[image, mask], existing=[out], no_temps_in=[tmp_path])


@pytest.mark.parametrize("which", ["image", "mask"])
def test_extract_output_equal_to_an_input_is_refused_even_with_overwrite(tmp_path, which):
    image, mask = fl.good_image(tmp_path), fl.good_mask(tmp_path)
    out = image if which == "image" else mask
    res = run_hrmm(["extract", "--image", image, "--mask", mask, "--out", out, "--overwrite"])
    refused(res, inputs=[image, mask], no_temps_in=[tmp_path])


def test_extract_into_a_read_only_folder(tmp_path, read_only_dir):
    image, mask = fl.good_image(tmp_path), fl.good_mask(tmp_path)
    folder = read_only_dir.seal()
    out = folder / "features.csv"
    res = run_hrmm(["extract", "--image", image, "--mask", mask, "--out", out])
    refused(res, inputs=[image, mask], absent=[out], no_temps_in=[folder])


def test_extract_onto_a_full_disk(tmp_path, full_disk):
    image, mask = fl.good_image(tmp_path), fl.good_mask(tmp_path)
    full_disk.fill()
    out = full_disk.path / "features.csv"
    res = fl.run_tool(["hrmm", "extract", "--image", image, "--mask", mask, "--out", out])
    refused(res, inputs=[image, mask], absent=[out], no_temps_in=[full_disk.path])


# ---------------------------------------------------------------------------------------
# predict


@pytest.mark.parametrize("kind", fl.IMAGE_FAULTS)
def test_predict_refuses_bad_t1(tmp_path, case, trained_bundle, kind):
    bundle, _ = trained_bundle
    bad = fl.make(kind, tmp_path)
    res = run_hrmm(_predict_argv(case, bundle, t1=bad), watch=[bundle, *case.values()])
    refused(res, inputs=_inputs(bad, *case.values()) + [bundle], no_temps_in=[tmp_path])


@pytest.mark.parametrize("kind", fl.MASK_FAULTS + ["missing file", "2-D image", "4-D image", "truncated .nii"])
def test_predict_refuses_bad_roi(tmp_path, case, trained_bundle, kind):
    bundle, _ = trained_bundle
    bad = fl.make(kind, tmp_path)
    res = run_hrmm(_predict_argv(case, bundle, roi=bad), watch=[bundle, *case.values()])
    refused(res, inputs=_inputs(bad, *case.values()) + [bundle], no_temps_in=[tmp_path])


def _bad_bundle(tmp_path: Path, source: Path, kind: str) -> Path:
    copy = tmp_path / f"bundle_{''.join(c if c.isalnum() else '_' for c in kind)}"
    if kind == "missing folder":
        return copy
    if kind == "a file instead of a folder":
        copy.write_text("not a bundle\n")
        return copy
    shutil.copytree(source, copy)
    mf = copy / BUNDLE_MANIFEST
    man = json.loads(mf.read_text())
    if kind == "no manifest":
        mf.unlink()
    elif kind == "manifest not JSON":
        mf.write_text("{ nope")
    elif kind == "manifest a list":
        mf.write_text(json.dumps([man]))
    elif kind == "files emptied":
        man["files"] = {}
        mf.write_text(json.dumps(man))
    elif kind == "params outside":
        man["radiomics"]["params_file"] = "/etc/passwd"
        mf.write_text(json.dumps(man))
    elif kind == "model altered":
        p = copy / next(iter(man["models"].values()))["file"]
        data = bytearray(p.read_bytes())
        data[len(data) // 2] ^= 0xFF
        p.write_bytes(bytes(data))
    elif kind == "extra file":
        (copy / "models" / "extra.skops").write_bytes(b"PK\x03\x04")
    else:
        raise KeyError(kind)
    return copy


BUNDLE_FAULTS = ["missing folder", "a file instead of a folder", "no manifest", "manifest not JSON", "manifest a list",
                 "files emptied", "params outside", "model altered", "extra file"]


@pytest.mark.parametrize("kind", BUNDLE_FAULTS)
def test_predict_refuses_bad_bundle(tmp_path, case, trained_bundle, kind):
    bad = _bad_bundle(tmp_path, trained_bundle[0], kind)
    res = run_hrmm(_predict_argv(case, bad), watch=[bad])
    refused(res, inputs=_inputs(bad, *case.values()), no_temps_in=[tmp_path])


@pytest.mark.parametrize("kind", BUNDLE_FAULTS)
def test_info_refuses_bad_bundle(tmp_path, trained_bundle, kind):
    bad = _bad_bundle(tmp_path, trained_bundle[0], kind)
    res = run_hrmm(["info", "--model", bad], watch=[bad])
    refused(res, inputs=_inputs(bad), no_temps_in=[tmp_path])


@pytest.mark.parametrize("kind", ["missing folder", "files emptied", "model altered"])
def test_evaluate_refuses_bad_bundle(tmp_path, trained_bundle, kind):
    bad = _bad_bundle(tmp_path, trained_bundle[0], kind)
    out = tmp_path / "report"
    res = run_hrmm(["evaluate", "--model", bad, "--out", out], watch=[bad])
    refused(res, inputs=_inputs(bad), absent=[out], no_temps_in=[tmp_path])


def test_predict_preview_equal_to_an_input_is_refused(tmp_path, case, trained_bundle):
    bundle, _ = trained_bundle
    res = run_hrmm(_predict_argv(case, bundle) + ["--preview", case["t2"], "--overwrite"], watch=[bundle])
    refused(res, inputs=list(case.values()) + [bundle], no_temps_in=[tmp_path])


def test_predict_keeps_an_existing_preview(tmp_path, case, trained_bundle):
    bundle, _ = trained_bundle
    preview = tmp_path / "preview.png"
    preview.write_bytes(b"kept")
    res = run_hrmm(_predict_argv(case, bundle) + ["--preview", preview], watch=[bundle])
    refused(res, inputs=list(case.values()) + [bundle], existing=[preview], no_temps_in=[tmp_path])


def test_predict_bad_image_in_a_real_process(tmp_path, case, trained_bundle):
    bundle, _ = trained_bundle
    bad = fl.make("4-D image", tmp_path)
    res = fl.run_tool(["hrmm"] + _predict_argv(case, bundle, fst2=bad), watch=[bundle, *case.values()])
    refused(res, inputs=[bad, *case.values(), bundle], no_temps_in=[tmp_path])


# ---------------------------------------------------------------------------------------
# validate, extract-cohort, train: cohort manifests


@pytest.mark.parametrize("kind", fl.IMAGE_FAULTS)
def test_validate_refuses_a_cohort_with_a_bad_image(tmp_path, kind):
    bad = fl.make(kind, tmp_path)
    csv = _cohort_with(tmp_path, "t2", bad)
    res = run_hrmm(["validate", "--manifest", csv], watch=[csv.parent, bad])
    refused(res, inputs=_inputs(csv, bad), no_temps_in=[tmp_path])


@pytest.mark.parametrize("kind", fl.MASK_FAULTS)
def test_validate_refuses_a_cohort_with_a_bad_roi(tmp_path, kind):
    bad = fl.make(kind, tmp_path)
    csv = _cohort_with(tmp_path, "roi", bad)
    res = run_hrmm(["validate", "--manifest", csv], watch=[csv.parent, bad])
    refused(res, inputs=_inputs(csv, bad), no_temps_in=[tmp_path])


MANIFEST_FAULTS = fl.CSV_FAULTS + ["missing file", "empty file", "folder instead of file"]


@pytest.mark.parametrize("command", ["validate", "extract-cohort", "train"])
@pytest.mark.parametrize("kind", MANIFEST_FAULTS)
def test_cohort_commands_refuse_a_bad_manifest(tmp_path, command, kind):
    bad = fl.make(kind, tmp_path)
    out = tmp_path / "out"
    argv = [command, "--manifest", bad] + (["--out", out] if command != "validate" else [])
    res = run_hrmm(argv)
    refused(res, inputs=_inputs(bad), absent=[out], no_temps_in=[tmp_path])


def test_train_keeps_an_existing_model_folder(tmp_path, small_cohort):
    out = tmp_path / "model"
    out.mkdir()
    (out / "notes.txt").write_text("kept\n")
    res = run_hrmm(["train", "--manifest", small_cohort, "--out", out], watch=[out])
    refused(res, inputs=[small_cohort], existing=[out], no_temps_in=[tmp_path])


def test_train_into_the_cohort_folder_is_refused(tmp_path, small_cohort):
    folder = Path(small_cohort).parent
    res = run_hrmm(["train", "--manifest", small_cohort, "--out", folder, "--overwrite"], watch=[folder])
    refused(res, inputs=[folder], no_temps_in=[folder])


# ---------------------------------------------------------------------------------------
# extract-cohort, train: --scheduler (a Dask cluster for the extraction, issue 14)

SCHEDULER_FAULTS = {
    "nothing listening": "tcp://127.0.0.1:1",
    "unknown host": "tcp://no-such-host.invalid:8786",
    "no port": "tcp://head-node",
    "port out of range": "tcp://127.0.0.1:99999",
    "not an address": "my cluster",
}


@pytest.mark.parametrize("command", ["extract-cohort", "train"])
@pytest.mark.parametrize("kind", list(SCHEDULER_FAULTS))
def test_cohort_commands_refuse_a_bad_scheduler(tmp_path, small_cohort, command, kind):
    address = SCHEDULER_FAULTS[kind]
    # train: a cohort it can split; extract-cohort: a one-lesion cohort. A fresh cache, so the
    # extraction needs the scheduler.
    csv = small_cohort if command == "train" else _cohort_with(tmp_path, "roi", fl.good_mask(tmp_path, "roi_good.nii.gz"))
    out = tmp_path / "out"
    argv = [command, "--manifest", csv, "--out", out, "--cache", tmp_path / "cache", "--scheduler", address]
    res = run_hrmm(argv + (["--no-deep"] if command == "train" else []))
    refused(res, inputs=[csv], absent=[out], mentions=[address], no_temps_in=[tmp_path])
    assert not list((tmp_path / "cache").glob("*.json"))  # nothing extracted, nothing cached


# ---------------------------------------------------------------------------------------
# generate-demo, compare-auc, dca: option values and tables


@pytest.mark.parametrize("option", [["--shape", "abc"], ["--shape", "0x80x96"], ["--shape", "8x80"],
                                    ["--patients", "-3"], ["--patients", "abc"], ["--effect-size", "nan"]])
def test_generate_demo_refuses_bad_options(tmp_path, option):
    out = tmp_path / "demo"
    res = run_hrmm(["generate-demo", "--out", out] + option)
    refused(res, absent=[out], no_temps_in=[tmp_path])


def test_generate_demo_keeps_an_existing_cohort(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "cohort.csv").write_text("patient_id\np1\n")
    res = run_hrmm(["generate-demo", "--out", out, "--patients", "6", "--shape", "8x40x48"], watch=[out])
    refused(res, existing=[out], no_temps_in=[tmp_path])


def test_generate_demo_onto_a_file(tmp_path):
    out = tmp_path / "a_file"
    out.write_text("kept\n")
    res = run_hrmm(["generate-demo", "--out", out, "--patients", "6"], watch=[out])
    refused(res, existing=[out], no_temps_in=[tmp_path])


@pytest.mark.parametrize("command", ["compare-auc", "dca"])
@pytest.mark.parametrize("kind", fl.CSV_FAULTS + ["missing file", "binary garbage"])
def test_stats_commands_refuse_bad_tables(tmp_path, command, kind):
    bad = fl.make(kind, tmp_path)
    argv = [command, "--input", bad, "--label", "label", "--positive", "1"]
    argv += ["--scores", "a,b"] if command == "compare-auc" else ["--score", "a"]
    res = run_hrmm(argv)
    refused(res, inputs=_inputs(bad), no_temps_in=[tmp_path])


# ---------------------------------------------------------------------------------------
# the shared header reader: vector images seen up front


def test_read_grid_reports_the_components_of_a_vector_image(tmp_path):
    bad = fl.make("vector image", tmp_path)
    grid, components = read_grid(bad, "T2WI image", scalar=False, components=True)
    assert components == 3 and grid.size == fl.SIZE
    good = fl.good_image(tmp_path)
    assert read_grid(good, components=True)[1] == 1
