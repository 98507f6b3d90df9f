"""annotation-qc follows the extension's one command-line convention: --version, help text on
every option, the worked workflow at the end of --help, --json where a command prints data,
--overwrite where a command replaces a file, --reference/--test for mask pairs (old names as
aliases), one-line usage errors with exit 2."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
from AnnotationQCLib.cli import build_parser, main
from ClinicalMRICommonLib import __version__
from ClinicalMRICommonLib.cli import iter_options

SCRIPT = Path(sys.executable).parent / "annotation-qc"


def _commands(parser, path=()):
    """(path, parser) of every (sub)command, aliases once."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            seen = set()
            for name, child in action.choices.items():
                if id(child) not in seen:
                    seen.add(id(child))
                    yield path + (name,), child
                    yield from _commands(child, path + (name,))


def test_every_option_has_help_text():
    missing = [" ".join(path) + " " + (a.option_strings[0] if a.option_strings else a.dest)
               for path, a in iter_options(build_parser())
               if not isinstance(a, argparse._SubParsersAction) and not (a.help and a.help.strip())
               and a.help != argparse.SUPPRESS]
    assert missing == [], f"options without help text: {missing}"


def test_version(capsys):
    with pytest.raises(SystemExit) as done:
        build_parser().parse_args(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"annotation-qc {__version__}"
    if SCRIPT.exists():  # the installed console script, as a user runs it
        proc = subprocess.run([str(SCRIPT), "--version"], capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0 and proc.stdout.strip() == f"annotation-qc {__version__}"


def test_workflow_example_and_exit_codes_end_the_help():
    text = build_parser().format_help()
    tail = text[text.index("workflows:"):]
    assert "annotation-qc training-report" in tail and "annotation-qc compare --reference" in tail
    assert tail.rstrip().endswith("2 bad input or a fault: one 'error: ...' line on stderr, nothing half-written.")


def test_json_and_overwrite_where_expected():
    cmds = {" ".join(p): c for p, c in _commands(build_parser())}
    opts = {name: {o for a in c._actions for o in a.option_strings} for name, c in cmds.items()}
    printing = [n for n, c in cmds.items() if not any(isinstance(a, argparse._SubParsersAction) for a in c._actions)
                or n == "quality"]
    assert {"training-withdraw", "training-list", "training-summary", "study init", "study reader add",
            "study assign", "study submit", "study status", "quality grade"} <= set(printing)
    for name in printing:   # every command that runs (not a mere group of actions) prints data
        assert "--json" in opts[name], name
    for name in ("feature-icc", "consensus", "training-report", "training-summary"):
        assert "--overwrite" in opts[name], name
    assert {"--reference", "--truth", "--test", "--pred"} <= opts["compare"]
    for name in ("consensus", "feature-icc", "training-report", "training-summary", "training-create", "study init"):
        assert "--out" in opts[name], name


def test_old_mask_pair_names_still_work(tmp_path, capsys):
    import numpy as np
    import SimpleITK as sitk

    a = np.zeros((4, 6, 6), np.uint8)
    a[1:3, 1:4, 1:4] = 1
    for name in ("a", "b"):
        sitk.WriteImage(sitk.GetImageFromArray(a), str(tmp_path / f"{name}.nii.gz"))
    assert main(["compare", "--truth", str(tmp_path / "a.nii.gz"), "--pred", str(tmp_path / "b.nii.gz"),
                 "--json"]) == 0
    assert '"dice": 1.0' in capsys.readouterr().out


def test_usage_errors_are_one_line(capsys):
    assert main(["compare", "--reference", "x.nii.gz"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: annotation-qc compare:") and "--test" in err[0]
    assert main(["no-such-command"]) == 2
    assert capsys.readouterr().err.startswith("error: annotation-qc: argument COMMAND: invalid choice")


def test_library_modules_import_no_heavy_packages():
    """The Slicer start-up rule: AnnotationQC.py imports panel_logic, which may import these
    modules; importing them must not load pandas, matplotlib, pyradiomics and the like."""
    code = ("import sys\n"
            "import AnnotationQCLib.audit, AnnotationQCLib.quality, AnnotationQCLib.sessions\n"
            "import AnnotationQCLib.terminology, AnnotationQCLib.training, AnnotationQCLib.cli\n"
            "import ClinicalMRICommonLib.quality, ClinicalMRICommonLib.agreement.segmentation_metrics\n"
            "import ClinicalMRICommonLib.agreement.consensus\n"
            "heavy = ('pandas', 'matplotlib', 'radiomics', 'sklearn', 'torch', 'monai', 'yaml', 'nibabel')\n"
            "print(','.join(m for m in heavy if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""
