"""`hrmm compare-auc` and `hrmm dca` (HRMMPredictLib.cli.stats_commands) on the pROC aSAH and dcurves
famhistory data: the JSON contract, the reference values, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ClinicalMRICommonLib.cli import tool_parser
from HRMMPredictLib.cli import stats_commands
from HRMMPredictLib.cli.main import main as hrmm_main

ROOT = Path(__file__).resolve().parents[3]  # the project (Testing/hrmm/cli/this file)


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "HRMMPredictLib.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def asah_csv(shared_data) -> Path:
    return shared_data / "stats" / "pROC_aSAH.csv"


@pytest.fixture(scope="module")
def famhistory(shared_data):
    return shared_data / "stats" / "dcurves_df_binary.csv", shared_data / "stats" / "dcurves_r_dca_famhistory.csv"


def test_compare_auc_json_matches_pROC(asah_csv):
    r = run_module("compare-auc", "--input", str(asah_csv), "--label", "outcome", "--positive", "Poor",
                   "--scores", "wfns,s100b", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)  # exactly one JSON object on stdout
    assert set(out) == {"auc", "delong"}
    assert list(out["auc"]) == ["wfns", "s100b"]
    assert out["auc"]["wfns"]["auc"] == pytest.approx(0.823678861788618, abs=1e-9)
    assert out["auc"]["s100b"]["auc"] == pytest.approx(0.731368563685637, abs=1e-9)
    assert len(out["auc"]["wfns"]["ci95"]) == 2
    d = out["delong"]
    assert set(d) == {"z", "p", "diff_ci95"}
    assert d["z"] == pytest.approx(2.20898359144091, abs=1e-9)
    assert d["p"] == pytest.approx(0.0271757822291882, abs=1e-9)
    assert d["diff_ci95"] == pytest.approx([0.0104061769564846, 0.174214419249478], abs=1e-9)


def test_compare_auc_in_process_ndka_vs_s100b_and_table(asah_csv, capsys):
    assert hrmm_main(["compare-auc", "--input", str(asah_csv), "--label", "outcome", "--positive", "Poor",
                           "--scores", "ndka,s100b", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["delong"]["z"] == pytest.approx(-1.39077002573558, abs=1e-9)
    assert out["delong"]["p"] == pytest.approx(0.164295175223054, abs=1e-9)
    assert out["auc"]["ndka"]["ci95"] == pytest.approx([0.501244999271703, 0.722670989888189], abs=1e-9)
    # readable table without --json
    assert hrmm_main(["compare-auc", "--input", str(asah_csv), "--label", "outcome", "--positive", "Poor",
                           "--scores", "wfns,ndka"]) == 0
    text = capsys.readouterr().out
    assert "113 cases, 41 positive" in text
    assert "0.8237" in text and "0.6120" in text and "p = 0.0051" in text


def test_register_on_a_host_parser_behaves_identically(asah_csv, capsys):
    # How HRMMPredictLib.cli.main wires it: the tool parser, stats_commands.register(sub), args.func(args).
    parser, sub = tool_parser(prog="hrmm", description="statistics")
    stats_commands.register(sub)
    args = parser.parse_args(["compare-auc", "--input", str(asah_csv), "--label", "outcome", "--positive",
                              "Poor", "--scores", "wfns,ndka", "--json"])
    assert args.func(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["delong"]["z"] == pytest.approx(2.79777591868904, abs=1e-9)
    assert out["delong"]["p"] == pytest.approx(0.00514557970691098, abs=1e-9)


def test_dca_json_matches_r_dcurves_at_every_threshold(famhistory):
    data, ref = famhistory
    r_out = pd.read_csv(ref)
    fam = r_out[r_out["variable"] == "famhistory"]
    all_ = r_out[r_out["variable"] == "all"]
    thr = ",".join(repr(float(t)) for t in fam["threshold"])
    r = run_module("dca", "--input", str(data), "--label", "cancer", "--positive", "TRUE",
                   "--score", "famhistory", "--thresholds", thr, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) == {"threshold", "net_benefit", "treat_all"}
    np.testing.assert_allclose(out["threshold"], fam["threshold"], rtol=0, atol=0)
    np.testing.assert_allclose(out["net_benefit"], fam["net_benefit"], rtol=0, atol=1e-12)
    np.testing.assert_allclose(out["treat_all"], all_["net_benefit"], rtol=0, atol=1e-12)


def test_dca_table_and_range_syntax(famhistory, capsys):
    data, _ = famhistory
    assert hrmm_main(["dca", "--input", str(data), "--label", "cancer", "--positive", "TRUE",
                           "--score", "famhistory", "--thresholds", "0:0.3:0.1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["threshold"] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    assert out["net_benefit"] == pytest.approx([0.032, 0.018518519, 0.001666667, -0.02], abs=1e-9)
    assert out["treat_all"] == pytest.approx([0.14, 0.044444444, -0.075, -0.228571429], abs=1e-9)
    assert hrmm_main(["dca", "--input", str(data), "--label", "cancer", "--positive", "TRUE",
                           "--score", "famhistory", "--thresholds", "0.05"]) == 0
    text = capsys.readouterr().out
    assert "750 cases" in text and "0.02561" in text and "0.09474" in text


# ---------------------------------------------------------------------------------------
# Bad input: exit status 2, exactly one line on stderr, no traceback


@pytest.fixture()
def bad_files(asah_csv, tmp_path):
    d = pd.read_csv(asah_csv, dtype=str, keep_default_na=False)
    files = {}
    f = d.copy()
    f["const"] = "1.5"
    files["constant"] = f
    f = d.copy()
    f.loc[[3, 10], "ndka"] = ["", "NaN"]
    files["nan"] = f
    f = d.copy()
    f.loc[5, "outcome"] = "Unknown"
    files["three_classes"] = f
    f = d[d["outcome"] == "Good"].copy()
    f = pd.concat([f, d[d["outcome"] == "Poor"].head(1)])
    files["one_positive"] = f
    paths = {}
    for k, v in files.items():
        paths[k] = tmp_path / f"{k}.csv"
        v.to_csv(paths[k], index=False)
    return paths


def _check_one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert "Traceback" not in err
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.mark.parametrize("case, args, needles", [
    ("constant", ["--scores", "wfns,const"], ["'const'", "constant"]),
    ("nan", ["--scores", "wfns,ndka"], ["'ndka'", "2 empty, non-numeric or NaN", "lines 5, 12"]),
    ("three_classes", ["--scores", "wfns,ndka"], ["3 distinct values", "'Unknown'"]),
    ("one_positive", ["--scores", "wfns,ndka"], ["1 positive", "at least 2"]),
    (None, ["--positive-override", "poor"], ["'poor' not found", "'Good' and 'Poor'"]),
    (None, ["--scores", "wfns,missing_col"], ["column 'missing_col' not found", "s100b"]),
    (None, ["--scores", "wfns"], ["exactly two"]),
    ("missing_file", ["--scores", "wfns,ndka"], ["not found", "no_such.csv"]),
])
def test_compare_auc_bad_input(case, args, needles, bad_files, asah_csv, tmp_path, capsys):
    if case == "missing_file":
        path = tmp_path / "no_such.csv"
    else:
        path = bad_files[case] if case else asah_csv
    positive = "Poor"
    if args[0] == "--positive-override":
        positive, args = args[1], ["--scores", "wfns,ndka"]
    rc = hrmm_main(["compare-auc", "--input", str(path), "--label", "outcome", "--positive", positive,
                         *args, "--json"])
    cap = capsys.readouterr()
    assert cap.out == ""
    _check_one_line_error(rc, cap.err, *needles)


def test_bad_input_as_a_process(bad_files):
    r = run_module("compare-auc", "--input", str(bad_files["constant"]), "--label", "outcome", "--positive", "Poor",
                   "--scores", "const,wfns", "--json")
    _check_one_line_error(r.returncode, r.stderr, "constant")
    assert r.stdout == ""


@pytest.mark.parametrize("score, thresholds, needles", [
    ("marker", "0.1,0.2", ["'marker'", "[0, 1]"]),  # marker is not a probability (max 6.7)
    ("famhistory", "0.1,1.0", ["[0, 1)"]),
    ("famhistory", "0.1,abc", ["'abc' is not a number"]),
])
def test_dca_bad_input(score, thresholds, needles, famhistory, capsys):
    data, _ = famhistory
    rc = hrmm_main(["dca", "--input", str(data), "--label", "cancer", "--positive", "TRUE", "--score", score,
                         "--thresholds", thresholds])
    cap = capsys.readouterr()
    assert cap.out == ""
    _check_one_line_error(rc, cap.err, *needles)
