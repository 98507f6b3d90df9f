"""AnnotationQC's tests sign their study and session folders with a site key of their own (in
the test session's temporary folder), never with the key of the user running the tests
(``~/.config/clinicalmri/site.key``); subprocesses of the installed commands inherit it."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def test_site_key(tmp_path_factory):
    from ClinicalMRICommonLib.audit import SITE_KEY_ENV

    path = tmp_path_factory.mktemp("site_key") / "site.key"
    old = os.environ.get(SITE_KEY_ENV)
    os.environ[SITE_KEY_ENV] = str(path)
    yield path
    if old is None:
        os.environ.pop(SITE_KEY_ENV, None)
    else:
        os.environ[SITE_KEY_ENV] = old
