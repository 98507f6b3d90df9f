"""The CI rule of Testing/conftest.py, tested on a tiny test folder run in a subprocess with
the real conftest: with CI=true a missing ../shared/data and any skip not on the allow-list
fail the run; without CI skips stay skips with their reason."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parents[1]  # Testing/

TESTS = {
    "test_plain.py": """
import pytest

def test_passes():
    assert 1 + 1 == 2

def test_skips_for_no_good_reason():
    pytest.skip("needs the frobnicator")

def test_skips_without_cuda():
    pytest.skip("CUDA not available on this machine")

def test_skips_without_gpu_later_in_words():
    pytest.skip("the GPU path is not available here (no CUDA device)")

def test_skips_with_no_cuda_gpu_here():
    pytest.skip("no CUDA GPU here: the GPU path (AMP) is not run")

def test_skips_mentioning_gpu_for_another_reason():
    pytest.skip("GPU driver log is too long")

@pytest.mark.xfail(reason="known limitation", strict=True)
def test_known_failure():
    assert False

def test_uses_reference_data(shared_data):
    assert shared_data.is_dir()
""",
    "test_missing_module.py": """
import pytest
pytest.importorskip("no_such_module_for_the_ci_rule_test")

def test_never_runs():
    pass
""",
    "test_slicer_app.py": """
import pytest
pytest.skip("Slicer application not available (run with Slicer --python-script)", allow_module_level=True)

def test_never_runs():
    pass
""",
}


@pytest.fixture()
def tiny_suite(tmp_path):
    suite = tmp_path / "suite"
    suite.mkdir()
    shutil.copy(HERE / "conftest.py", suite / "conftest.py")
    shutil.copy(HERE / "hrmm_fixtures.py", suite / "hrmm_fixtures.py")  # the conftest imports it
    (suite / "pytest.ini").write_text("[pytest]\n")
    for name, text in TESTS.items():
        (suite / name).write_text(text)
    data = tmp_path / "data"
    data.mkdir()
    return suite, data


def run(suite: Path, *args, ci: bool, shared: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS", "PYTHONPATH")}
    env["SHARED_DATA"] = str(shared)
    if ci:
        env["CI"] = "true"
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", *args],
                          cwd=suite, env=env, capture_output=True, text=True, timeout=120)


def test_locally_skips_stay_skips_with_their_reason(tiny_suite):
    suite, data = tiny_suite
    res = run(suite, ci=False, shared=data)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "needs the frobnicator" in res.stdout
    assert "no_such_module_for_the_ci_rule_test" in res.stdout
    assert "2 passed, 7 skipped, 1 xfailed" in res.stdout
    missing = run(suite, ci=False, shared=data.parent / "absent")
    assert missing.returncode == 0, missing.stdout
    assert "reference data folder" in missing.stdout and "1 passed, 8 skipped, 1 xfailed" in missing.stdout


def test_ci_fails_unexpected_skips_and_keeps_the_allowed_ones(tiny_suite):
    suite, data = tiny_suite
    res = run(suite, ci=True, shared=data)
    out = res.stdout
    assert res.returncode == 1, out + res.stderr
    assert "FAILED test_plain.py::test_skips_for_no_good_reason" in out
    assert "skip not allowed in CI (CI=true): needs the frobnicator" in out
    assert "FAILED test_plain.py::test_skips_mentioning_gpu_for_another_reason" in out
    assert "no CUDA GPU here" in out and "FAILED test_plain.py::test_skips_with_no_cuda_gpu_here" not in out
    # the allowed reasons stay skips; xfail is not a skip
    assert "CUDA not available on this machine" in out
    assert "the GPU path is not available here" in out
    assert "Slicer application not available" in out
    assert "2 passed" in out and "1 xfailed" in out and "5 skipped" in out and "2 failed" in out
    # a module skipped at import is not a test report: it is listed and the run fails
    assert "CI: skipped modules (not allowed in CI)" in out
    assert "test_missing_module.py: could not import 'no_such_module_for_the_ci_rule_test'" in out


def test_ci_fails_when_the_reference_data_is_missing(tiny_suite):
    suite, data = tiny_suite
    res = run(suite, "test_plain.py", ci=True, shared=data.parent / "absent")
    assert res.returncode == 1, res.stdout
    assert "ERROR test_plain.py::test_uses_reference_data" in res.stdout
    assert "in CI (CI=true) it must be there" in res.stdout
    # even a selection that does not use the data fails the run, and says why
    only = run(suite, "test_plain.py::test_passes", ci=True, shared=data.parent / "absent")
    assert only.returncode == 1, only.stdout
    assert "1 passed" in only.stdout and "CI: reference data missing" in only.stdout


def test_ci_passes_when_nothing_is_skipped(tiny_suite):
    suite, data = tiny_suite
    res = run(suite, "test_plain.py::test_passes", "test_plain.py::test_skips_without_cuda", ci=True, shared=data)
    assert res.returncode == 0, res.stdout
    assert "1 passed, 1 skipped" in res.stdout
