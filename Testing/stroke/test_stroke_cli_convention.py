"""stroke-lesion follows the extension's one CLI convention (ClinicalMRICommonLib.cli):
help on every option, --version, old option names kept as aliases, the one overwrite policy,
exit codes 0/1/2."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import SimpleITK as sitk

from ClinicalMRICommonLib import __version__
from ClinicalMRICommonLib.cli import iter_options
from StrokeLesionLib.cli import build_parser, main

CASE = "sub-strokecase0009_ses-0001"


def cli(capsys, *args):
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def isles(shared_data):
    raw = shared_data / "isles22" / "rawdata" / "sub-strokecase0009" / "ses-0001"
    return {"dwi": raw / f"{CASE}_dwi.nii.gz", "adc": raw / f"{CASE}_adc.nii.gz",
            "truth": shared_data / "isles22" / "derivatives" / "sub-strokecase0009" / "ses-0001" / f"{CASE}_msk.nii.gz"}


def test_every_option_has_help():
    missing, n = [], 0
    for path, action in iter_options(build_parser()):
        n += 1
        if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
            missing.append(" ".join(path) + ": " + (", ".join(action.option_strings) or action.dest))
    assert n > 119                                   # every command walked (119 options before the convention)
    assert not missing, missing


def test_commands_printing_data_have_json_and_writers_have_overwrite():
    commands: dict[tuple, set] = {}
    for path, action in iter_options(build_parser()):
        commands.setdefault(path, set()).update(action.option_strings)
    for path, opts in commands.items():
        is_group = any(len(q) > len(path) and q[:len(path)] == path for q in commands)
        if path and not is_group:                      # every command prints something: --json everywhere
            assert "--json" in opts, path
    for path in (("candidate",), ("export-bids",), ("deid",), ("accept",)):
        assert "--overwrite" in commands[path], path


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"stroke-lesion {__version__}"


def test_help_ends_with_a_worked_example_and_the_exit_codes():
    text = build_parser().format_help()
    assert "worked example" in text and "stroke-lesion case init STUDY case1" in text
    assert text.rstrip().endswith("nothing half-written.")
    assert "1 done, with a negative verdict" in text


def test_usage_mistakes_are_one_line_exit_2(capsys):
    rc, out, err = cli(capsys)
    assert rc == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1
    rc, out, err = cli(capsys, "case")
    assert rc == 2 and "required" in err and len(err.strip().splitlines()) == 1
    rc, out, err = cli(capsys, "candidate", "--dwi", "x.nii.gz")
    assert rc == 2 and "--adc" in err and "usage" not in err


def test_reference_test_names_and_old_aliases(isles, capsys):
    rc, new, _ = cli(capsys, "metrics", "--reference", isles["truth"], "--test", isles["truth"], "--json")
    assert rc == 0 and json.loads(new)["dice"] == 1.0
    rc, old, _ = cli(capsys, "metrics", "--truth", isles["truth"], "--pred", isles["truth"], "--json")
    assert rc == 0 and json.loads(old) == json.loads(new)


def test_candidate_outputs_never_replace_inputs_or_each_other(isles, tmp_path, capsys):
    adc_bytes = isles["adc"].read_bytes()
    rc, _, err = cli(capsys, "candidate", "--dwi", isles["dwi"], "--adc", isles["adc"], "--out", isles["adc"],
                     "--overwrite")
    assert rc == 2 and "also an input" in err and isles["adc"].read_bytes() == adc_bytes
    out = tmp_path / "c.nii.gz"
    rc, _, err = cli(capsys, "candidate", "--dwi", isles["dwi"], "--adc", isles["adc"], "--out", out,
                     "--brain-out", out)
    assert rc == 2 and "two outputs" in err and not out.exists()
    rc, _, err = cli(capsys, "candidate", "--dwi", isles["dwi"], "--adc", isles["adc"], "--out", out,
                     "--brain-out", tmp_path / "brain.nii.gz")
    assert rc == 0, err
    assert sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "brain.nii.gz"))).sum() > 100000
    before = out.read_bytes()
    n620 = int(np.sum(sitk.GetArrayFromImage(sitk.ReadImage(str(out)))))
    rc, _, err = cli(capsys, "candidate", "--dwi", isles["dwi"], "--adc", isles["adc"], "--out", out)
    assert rc == 2 and "already exists" in err and "--overwrite" in err and out.read_bytes() == before
    rc, _, err = cli(capsys, "candidate", "--dwi", isles["dwi"], "--adc", isles["adc"], "--out", out,
                     "--overwrite", "--threshold", "500e-6")
    assert rc == 0, err
    assert 0 < int(np.sum(sitk.GetArrayFromImage(sitk.ReadImage(str(out))))) < n620   # replaced: stricter threshold


def test_slot_names_are_the_same_in_case_init_and_case_assign(isles, tmp_path, capsys):
    st = tmp_path / "study"
    assert cli(capsys, "study", "init", st, "--by", "coord")[0] == 0
    for rid, title, y, ny in (("ann1", "attending", 8, 3), ("ann2", "attending", 6, 2),
                              ("rev1", "associate_chief", 14, 9), ("arb1", "chief", 25, 18)):
        assert cli(capsys, "reader", "add", st, "--id", rid, "--title", title, "--years", y, "--neuro-years", ny,
                   "--by", "coord")[0] == 0
    rc, _, err = cli(capsys, "case", "init", st, "c1", "--dwi", isles["dwi"], "--adc", isles["adc"],
                     "--annotator-a", "ann1", "--by", "coord")
    assert rc == 0, err
    # case assign takes case init's option names ...
    rc, out, err = cli(capsys, "case", "assign", st, "c1", "--annotator-b", "ann2", "--reviewer", "rev1",
                       "--by", "coord", "--json")
    assert rc == 0, err
    assert json.loads(out)["assignments"] == {"annotatorA": "ann1", "annotatorB": "ann2", "reviewer": "rev1"}
    # ... and --slot takes both spellings (the old annotatorA/annotatorB and annotator-a/annotator-b)
    rc, out, err = cli(capsys, "case", "assign", st, "c1", "--slot", "arbitrator", "--reader", "arb1", "--by", "c")
    assert rc == 0, err
    rc, _, err = cli(capsys, "case", "assign", st, "c1", "--slot", "annotator-b", "--reader", "ann2", "--by", "c")
    assert rc == 0, err
    rc, _, err = cli(capsys, "case", "assign", st, "c1", "--slot", "annotatorC", "--reader", "ann2")
    assert rc == 2 and "unknown slot" in err
    rc, _, err = cli(capsys, "case", "assign", st, "c1", "--slot", "reviewer")
    assert rc == 2 and "--slot and --reader together" in err
    rc, _, err = cli(capsys, "case", "assign", st, "c1")
    assert rc == 2 and "nothing to assign" in err
