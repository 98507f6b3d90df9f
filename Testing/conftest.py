"""Shared pytest fixtures for tests that run without the Slicer application, and the CI
rule on skips.

CI rule (``CI=true``, as the CI runner sets it): a skipped test is a test that did not run,
so in CI

* a missing ``../shared/data`` (the published reference values) fails the run: the
  ``shared_data`` fixture fails instead of skipping, and the session ends non-zero even if
  no selected test asked for it;
* any other skip fails too, unless its reason is on :data:`CI_ALLOWED_SKIPS` (hardware or
  an application the CI machine cannot have): a skipped test is reported as failed
  ("skip not allowed in CI"), a skipped module (``importorskip`` at import time) is listed
  at the end and the exit status is 1.

Locally (``CI`` unset or not true) skips stay skips with their reason (``-rs`` lists them).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))

#: Skip reasons accepted in CI (regular expressions searched in the reason, case-insensitive):
#: the CI machine has no GPU and no Slicer application, so tests that need them may skip there.
CI_ALLOWED_SKIPS: tuple[tuple[str, re.Pattern], ...] = (
    ("GPU/CUDA not available",
     re.compile(r"\b(GPU|CUDA)\b.*\b(not available|unavailable|is absent)\b|\bno (CUDA|GPU)\b", re.I)),
    ("Slicer application not available",
     re.compile(r"\bSlicer application\b.*\b(not available|unavailable|is absent)\b", re.I)),
)


def ci_strict() -> bool:
    """True when the run is CI's (environment variable CI=true, as GitHub/GitLab set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def skip_allowed_in_ci(reason: str) -> bool:
    return any(rx.search(reason or "") for _, rx in CI_ALLOWED_SKIPS)


def _skip_reason(report) -> str:
    lr = report.longrepr
    reason = lr[2] if isinstance(lr, tuple) and len(lr) == 3 else str(lr)
    return reason[len("Skipped: "):] if reason.startswith("Skipped: ") else reason


_CI_REFUSED_COLLECTION_SKIPS: list[tuple[str, str]] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if ci_strict() and rep.skipped and not hasattr(rep, "wasxfail"):
        reason = _skip_reason(rep)
        if not skip_allowed_in_ci(reason):
            rep.outcome = "failed"
            rep.longrepr = (f"skip not allowed in CI (CI=true): {reason}\n"
                            f"allowed skip reasons: {'; '.join(name for name, _ in CI_ALLOWED_SKIPS)}")


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    rep = outcome.get_result()
    if ci_strict() and rep.skipped:
        reason = _skip_reason(rep)
        if not skip_allowed_in_ci(reason):
            _CI_REFUSED_COLLECTION_SKIPS.append((rep.nodeid, reason))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if not ci_strict():
        return
    if not SHARED_DATA.is_dir():
        terminalreporter.write_sep("=", "CI: reference data missing", red=True)
        terminalreporter.write_line(f"{SHARED_DATA} is absent: CI must run the published-reference tests "
                                    "(copy shared/data beside the project or set SHARED_DATA)")
    if _CI_REFUSED_COLLECTION_SKIPS:
        terminalreporter.write_sep("=", "CI: skipped modules (not allowed in CI)", red=True)
        for nodeid, reason in _CI_REFUSED_COLLECTION_SKIPS:
            terminalreporter.write_line(f"{nodeid}: {reason}")


def pytest_sessionfinish(session, exitstatus):
    if ci_strict() and (_CI_REFUSED_COLLECTION_SKIPS or not SHARED_DATA.is_dir()) \
            and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED

# Keep the test machine's 2 cores for the test process itself.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of small public reference datasets (../shared/data). Tests that need it
    skip with a reason where a user's checkout does not have it; in CI they fail."""
    if not SHARED_DATA.is_dir():
        if ci_strict():
            pytest.fail(f"reference data folder {SHARED_DATA} is absent; in CI (CI=true) it must be there "
                        "(copy shared/data beside the project or set SHARED_DATA)", pytrace=False)
        pytest.skip(f"reference data folder {SHARED_DATA} is absent (it ships beside the project in CI)")
    return SHARED_DATA


# Session fixtures shared by several test files (a small trained HRMM model).
from hrmm_fixtures import fused_bundle, small_cohort, small_config, small_params, trained_bundle  # noqa: E402,F401


@pytest.fixture(scope="session", autouse=True)
def test_site_key(tmp_path_factory):
    """Every test signs study, session and loop folders with a site key of its own (in the test
    session's temporary folder), never with the key of the user running the tests
    (``~/.config/clinicalmri/site.key``); subprocesses of the installed commands inherit it."""
    from ClinicalMRICommonLib.audit import SITE_KEY_ENV

    path = tmp_path_factory.mktemp("site_key") / "site.key"
    old = os.environ.get(SITE_KEY_ENV)
    os.environ[SITE_KEY_ENV] = str(path)
    yield path
    if old is None:
        os.environ.pop(SITE_KEY_ENV, None)
    else:
        os.environ[SITE_KEY_ENV] = old
