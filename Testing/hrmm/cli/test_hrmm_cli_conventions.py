"""``hrmm`` follows the extension's one command-line convention (ClinicalMRICommonLib.cli):
``--version``, help text on every option, a workflow example in ``hrmm --help``, usage
errors as one ``error:`` line with exit status 2, ``--json`` on the commands that print
data, and the one overwrite policy (ClinicalMRICommonLib.files.check_output_path) on every
command that writes a file: an existing output is refused without ``--overwrite`` (and left
as it was), an output that is one of the command's inputs is refused even with it."""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from ClinicalMRICommonLib import __version__
from ClinicalMRICommonLib.cli import iter_options
from HRMMPredictLib.cli.main import build_parser

HRMM = [sys.executable, "-m", "HRMMPredictLib.cli"]
#: Commands that write files, and those that print data.
WRITING = {"demo", "generate-demo", "extract", "extract-cohort", "train", "predict", "evaluate"}
PRINTING = {"demo", "generate-demo", "validate", "extract-cohort", "train", "predict", "evaluate", "info",
            "compare-auc", "dca"}


def run(*args, **kw):
    return subprocess.run(HRMM + [str(a) for a in args], capture_output=True, text=True, timeout=600, **kw)


def assert_refused(r, *needles):
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    err = r.stderr.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err, err
    for n in needles:
        assert n in err, (n, err)


def _commands(parser) -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


# ---------------------------------------------------------------------------------------
# The parser


def test_every_option_and_positional_has_help():
    missing = [f"{' '.join(path) or 'hrmm'}: {'/'.join(a.option_strings) or a.dest}"
               for path, a in iter_options(build_parser())
               if not (a.help and a.help.strip()) or a.help == argparse.SUPPRESS]
    assert not missing, "options without help text:\n  " + "\n  ".join(missing)


def test_json_and_overwrite_where_the_convention_wants_them():
    commands = _commands(build_parser())
    assert set(commands) >= WRITING | PRINTING
    for name, p in commands.items():
        flags = {s for a in p._actions for s in a.option_strings}
        assert ("--overwrite" in flags) == (name in WRITING), name
        assert ("--json" in flags) == (name in PRINTING), name


def test_version_from_the_module_and_the_entry_point():
    r = run("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"hrmm {__version__}", (r.stdout, r.stderr)
    script = Path(sys.executable).with_name("hrmm")
    if not script.is_file():
        pytest.skip(f"no installed hrmm entry point beside {sys.executable} (pip install -e . makes it)")
    r = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == f"hrmm {__version__}", (r.stdout, r.stderr)


def test_help_ends_with_a_workflow_and_the_exit_codes():
    r = run("--help")
    assert r.returncode == 0
    tail = r.stdout[r.stdout.index("workflow"):]
    for step in ("hrmm generate-demo", "hrmm validate", "hrmm train", "hrmm evaluate", "hrmm predict", "hrmm demo"):
        assert step in tail, step
    assert "exit status: 0 done" in tail and "2 bad input" in tail


@pytest.mark.parametrize("args, needles", [
    ([], ["required: COMMAND"]),
    (["no-such-command"], ["invalid choice", "no-such-command"]),
    (["train", "--out", "x"], ["--manifest"]),
    (["predict", "--t1", "a"], ["required"]),
    (["evaluate", "--model", "m", "--out", "r", "--bogus"], ["unrecognized arguments: --bogus"]),
    (["generate-demo", "--out", "x", "--patients", "many"], ["invalid int value"]),
])
def test_usage_errors_are_one_error_line(args, needles):
    assert_refused(run(*args), *needles)


# ---------------------------------------------------------------------------------------
# The overwrite policy, command by command


def test_extract_overwrite_policy(small_cohort, small_params, tmp_path):
    base = Path(small_cohort).parent
    row = pd.read_csv(small_cohort, dtype=str).iloc[0]
    image, mask = base / row["t2"], base / row["roi"]
    out = tmp_path / "features.csv"
    out.write_text("precious\n")
    assert_refused(run("extract", "--image", image, "--mask", mask, "--params", small_params, "--out", out),
                   str(out), "already exists", "--overwrite")
    assert out.read_text() == "precious\n"
    r = run("extract", "--image", image, "--mask", mask, "--params", small_params, "--out", out, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert len(pd.read_csv(out)) == 1
    # an output that is an input: refused even with --overwrite, the input untouched
    before = Path(mask).read_bytes()
    assert_refused(run("extract", "--image", image, "--mask", mask, "--params", small_params, "--out", mask,
                       "--overwrite"), "also an input")
    assert Path(mask).read_bytes() == before
    # --out a folder: the user's path is named, never the writer's hidden temporary file
    r = run("extract", "--image", image, "--mask", mask, "--params", small_params, "--out", tmp_path, "--overwrite")
    assert_refused(r, str(tmp_path), "folder")
    assert ".tmp" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features.csv"]


def test_extract_cohort_overwrite_policy(small_cohort, small_params, tmp_path):
    one = pd.read_csv(small_cohort, dtype=str).head(1)
    base = Path(small_cohort).parent
    for c in ("t1", "t2", "fst2", "roi", "roi_reader2", "roi_repeat"):
        one[c] = [str(base / v) for v in one[c]]
    manifest = tmp_path / "one.csv"
    one.to_csv(manifest, index=False)
    out = tmp_path / "features"
    out.mkdir()
    (out / "features_roi.csv").write_text("precious\n")
    args = ["extract-cohort", "--manifest", manifest, "--params", small_params, "--out", out, "--jobs", 1,
            "--cache", tmp_path / "cache"]
    assert_refused(run(*args), "features_roi.csv", "already exists")
    assert (out / "features_roi.csv").read_text() == "precious\n"
    assert not (tmp_path / "cache").exists()  # refused before any extraction
    r = run(*args, "--overwrite", "--json")
    assert r.returncode == 0, r.stderr
    written = json.loads(r.stdout)["feature_tables"]
    assert sorted(Path(p).name for p in written) == ["features_roi.csv", "features_roi_reader2.csv",
                                                     "features_roi_repeat.csv"]
    assert len(pd.read_csv(out / "features_roi.csv")) == 1
    assert_refused(run("extract-cohort", "--manifest", manifest, "--out", manifest, "--overwrite"), "also an input")


def test_generate_demo_overwrite_policy(tmp_path):
    out = tmp_path / "cohort"
    args = ["generate-demo", "--out", out, "--patients", 1, "--shape", "8x80x96"]
    r = run(*args, "--json")
    assert r.returncode == 0, r.stderr
    manifest = Path(json.loads(r.stdout)["cohort_manifest"])
    first = manifest.read_text()
    again = ["generate-demo", "--out", out, "--patients", 2, "--shape", "8x80x96"]
    assert_refused(run(*again), str(out), "already exists")
    assert manifest.read_text() == first  # the earlier cohort is left as it was
    r = run(*again, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "synthetic.json").read_text())["n_patients"] == 2
    # a cohort manifest the generator did not write is never replaced, --overwrite or not
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "cohort.csv").write_text("patient_id,lesion_id,label\nX,X_L1,1\n")
    assert_refused(run("generate-demo", "--out", mine, "--patients", 1, "--overwrite"), "not written by the synthetic")
    assert (mine / "cohort.csv").read_text() == "patient_id,lesion_id,label\nX,X_L1,1\n"


def test_train_overwrite_policy(trained_bundle, small_cohort, small_params, tmp_path):
    path, _ = trained_bundle
    before = (path / "manifest.json").read_bytes()
    args = ["train", "--manifest", small_cohort, "--params", small_params, "--no-deep", "--jobs", 1]
    assert_refused(run(*args, "--out", path), str(path), "already exists", "--overwrite")
    assert (path / "manifest.json").read_bytes() == before
    # replacing a folder deletes what is in it: never the folder holding the cohort manifest
    cohort_dir = Path(small_cohort).parent
    assert_refused(run(*args, "--out", cohort_dir, "--overwrite"), "input")
    assert Path(small_cohort).is_file()
    assert_refused(run(*args, "--out", small_cohort, "--overwrite"), str(small_cohort))
    assert Path(small_cohort).is_file()


def test_evaluate_overwrite_policy(trained_bundle, tmp_path):
    path, _ = trained_bundle
    out = tmp_path / "report"
    r = run("evaluate", "--model", path, "--out", out, "--json")
    assert r.returncode == 0, r.stderr
    page = (out / "index.html").read_bytes()
    assert_refused(run("evaluate", "--model", path, "--out", out), "already exists", "--overwrite")
    assert (out / "index.html").read_bytes() == page
    r = run("evaluate", "--model", path, "--out", out, "--overwrite")
    assert r.returncode == 0, r.stderr
    # the report never goes into the model bundle itself
    copy = tmp_path / "bundle"
    shutil.copytree(path, copy)
    assert_refused(run("evaluate", "--model", copy, "--out", copy, "--overwrite"), "also an input")
    assert not (copy / "index.html").exists()


def test_predict_preview_overwrite_policy(trained_bundle, small_cohort, tmp_path):
    path, _ = trained_bundle
    base = Path(small_cohort).parent
    row = pd.read_csv(small_cohort, dtype=str).iloc[0]
    files = {k: base / row[k] for k in ("t1", "t2", "fst2", "roi")}
    case = ["predict", "--t1", files["t1"], "--t2", files["t2"], "--fst2", files["fst2"], "--roi", files["roi"],
            "--model", path]
    png = tmp_path / "input.png"
    png.write_bytes(b"precious")
    assert_refused(run(*case, "--preview", png), "--preview", "already exists")
    assert png.read_bytes() == b"precious"
    before = files["roi"].read_bytes()
    assert_refused(run(*case, "--preview", files["roi"], "--overwrite"), "also an input")
    assert files["roi"].read_bytes() == before


def test_demo_overwrite_policy(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "notes.txt").write_text("mine\n")
    assert_refused(run("demo", "--out", out, "--patients", 4), str(out), "already exists", "--overwrite")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # refused before any work


def test_validate_and_info_print_json(trained_bundle, small_cohort):
    r = run("validate", "--manifest", small_cohort, "--json")
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)
    assert v["ok"] is True and v["summary"][0]["lesions"] == len(pd.read_csv(small_cohort))
    path, _ = trained_bundle
    r = run("info", "--model", path, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["primary_model"] == "radiomics"
    r = run("info", "--model", path)
    assert r.returncode == 0 and "primary model: radiomics" in r.stdout and "validation AUC" in r.stdout, r.stdout
