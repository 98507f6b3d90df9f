"""Shared pytest fixtures for tests that run without the Slicer application."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SHARED_DATA", PROJECT_ROOT.parent / "shared" / "data"))

# Keep the test machine's 2 cores for the test process itself.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of small public reference datasets (../shared/data). Tests that need it
    skip with a reason where a user's checkout does not have it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"reference data folder {SHARED_DATA} is absent (it ships beside the project in CI)")
    return SHARED_DATA


# Session fixtures shared by several test files (a small trained HRMM model).
from hrmm_fixtures import fused_bundle, small_cohort, small_config, small_params, trained_bundle  # noqa: E402,F401
