"""Install-on-first-use (ClinicalMRICommonLib.slicer_packages; issue 11, defects 2, 7 and 15).

The decisions are pure functions, tested on this Python. The Slicer side
(:class:`SlicerInstaller`) calls the running application's API, which cannot run here; the
tests of :func:`ensure_packages` give it a stand-in for exactly that API surface (what
``slicer.app``, ``slicer.util`` and ``slicer.packaging`` offer in Slicer 5.10 and 5.12, after
Base/Python/slicer/util.py and packaging.py) and record what it was asked to do. Nothing is
installed by these tests.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from ClinicalMRICommonLib import slicer_packages as sp
from ClinicalMRICommonLib.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
ABSENT = sp.Requirement("clinicalmri-absent-package>=1.0", "clinicalmri_absent_package")


def test_requirement_bounds_follow_pyproject():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    bounds = {}
    for spec in deps["dependencies"] + [d for extra in deps["optional-dependencies"].values() for d in extra]:
        name = re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0].lower()
        bounds[name] = spec[len(name):]
    for feature, requirements in sp.REQUIREMENTS.items():
        for req in requirements:
            assert req.distribution.lower() in bounds, f"{feature}: {req.spec} is not a dependency in pyproject.toml"
            assert req.spec[len(req.distribution):] == bounds[req.distribution.lower()], \
                f"{feature}: {req.spec} differs from pyproject.toml's {req.distribution}{bounds[req.distribution.lower()]}"


def test_features_cover_the_panels_needs():
    assert [r.module for r in sp.requirements_for("tables")] == ["pandas"]
    assert {r.module for r in sp.requirements_for("bids", "bids-validator")} == \
        {"nibabel", "dicomanonymizer", "pydicom", "bids_validator_deno"}
    assert sp.requirements_for("tables", "tables") == sp.requirements_for("tables")  # each once
    with pytest.raises(KeyError, match="unknown feature"):
        sp.requirements_for("torch")


def test_missing_requirements_on_this_python_without_importing():
    import json
    import subprocess
    import sys

    code = ("import json, sys; from ClinicalMRICommonLib import slicer_packages as sp; "
            "m = sp.missing_requirements([r for reqs in sp.REQUIREMENTS.values() for r in reqs]); "
            "print(json.dumps([[str(x) for x in m], sorted({'pandas', 'nibabel', 'radiomics', 'matplotlib'} "
            "& set(sys.modules))]))")
    missing, imported = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                  check=True, timeout=120).stdout)
    assert missing == []  # the test environment has them all
    assert imported == []  # found with find_spec and metadata, never imported
    (missing,) = sp.missing_requirements([ABSENT])
    assert missing.reason == "not installed" and str(missing) == f"{ABSENT.spec} (not installed)"
    (old,) = sp.missing_requirements([sp.Requirement("numpy>=999", "numpy")])
    assert re.fullmatch(r"version \S+ is installed, >=999 is needed", old.reason)


def test_install_route_decisions():
    missing = [sp.Missing(ABSENT, "not installed")]
    assert sp.install_route([], in_application=True, testing=False, has_pip_ensure=True) == sp.ROUTE_NONE
    assert sp.install_route(missing, in_application=False, testing=False, has_pip_ensure=True) == \
        sp.ROUTE_NO_APPLICATION
    assert sp.install_route(missing, in_application=True, testing=True, has_pip_ensure=True) == sp.ROUTE_TESTING
    assert sp.install_route(missing, in_application=True, testing=False, has_pip_ensure=True) == sp.ROUTE_PIP_ENSURE
    assert sp.install_route(missing, in_application=True, testing=False, has_pip_ensure=False) == \
        sp.ROUTE_CONFIRM_PIP_INSTALL
    text, title, detail = sp.confirmation_text("Annotation QC", "compute the ICC", missing)
    assert "Annotation QC needs this Python package to compute the ICC" in text
    assert title == "Annotation QC - Install Python Packages" and detail == f"- {ABSENT.spec} (not installed)"


class SlicerApi(sp.SlicerInstaller):
    """Stand-in for the running application's package API (slicer.app.testingEnabled,
    slicer.packaging.pip_ensure in 5.12, slicer.util.confirmOkCancelDisplay and pip_install
    in 5.10); records the calls. ``installs``: requirements that become importable after an
    install (by adding a finder for their module)."""

    def __init__(self, *, version="5.12", testing=False, confirm=True, decline=False, fail=False, installs=()):
        self.version, self._testing, self._confirm = version, testing, confirm
        self._decline, self._fail, self._installs = decline, fail, installs
        self.calls = []

    def in_application(self):
        return True

    def testing(self):
        return self._testing

    def packaging(self):
        return object() if self.version == "5.12" else None

    def pip_ensure(self, specs, requester):
        self.calls.append(("pip_ensure", list(specs), requester))
        if self._decline:
            raise RuntimeError("User declined package installation")  # what 5.12's pip_ensure raises
        self._install()

    def confirm(self, text, title, detail):
        self.calls.append(("confirm", title))
        return self._confirm

    def pip_install(self, specs):
        self.calls.append(("pip_install", list(specs)))
        self._install()

    def _install(self):
        import subprocess

        if self._fail:
            raise subprocess.CalledProcessError(1, ["pip", "install"])
        for module in self._installs:  # a real package in a folder on sys.path, as pip would leave it
            folder = SITE / module
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "__init__.py").write_text("")


SITE = Path()


@pytest.fixture(autouse=True)
def _site(tmp_path, monkeypatch):
    """A folder on sys.path that the stand-in 'installs' into (no pip runs)."""
    global SITE
    SITE = tmp_path / "site-packages"
    SITE.mkdir()
    monkeypatch.syspath_prepend(str(SITE))
    yield


def test_nothing_missing_asks_nothing():
    api = SlicerApi()
    assert sp.ensure_packages(sp.requirements_for("tables"), "Annotation QC", "log in", installer=api) == []
    assert api.calls == []


def test_testing_mode_never_installs():
    api = SlicerApi(testing=True)
    with pytest.raises(UserError, match="testing mode, which never installs"):
        sp.ensure_packages([ABSENT], "Stroke Lesion", "export", installer=api)
    assert api.calls == []


def test_outside_the_application_nothing_is_installed():
    class Worker(SlicerApi):
        def in_application(self):
            return False

    api = Worker()
    with pytest.raises(UserError, match="install them in Slicer"):
        sp.ensure_packages([ABSENT], "Stroke Lesion", "export", installer=api)
    assert api.calls == []


def test_slicer_512_uses_pip_ensure_with_the_requester():
    api = SlicerApi(version="5.12", installs=[ABSENT.module])
    installed = sp.ensure_packages([ABSENT], "Annotation QC", "draw the plot", installer=api)
    assert [m.requirement for m in installed] == [ABSENT]
    assert api.calls == [("pip_ensure", [ABSENT.spec], "Annotation QC")]


def test_slicer_512_declined_is_a_user_error():
    api = SlicerApi(version="5.12", decline=True)
    with pytest.raises(UserError, match="not installed .User declined"):
        sp.ensure_packages([ABSENT], "Annotation QC", "draw the plot", installer=api)


def test_slicer_510_confirms_then_pip_installs():
    api = SlicerApi(version="5.10", installs=[ABSENT.module])
    sp.ensure_packages([ABSENT], "Stroke Lesion", "export", installer=api)
    assert api.calls == [("confirm", "Stroke Lesion - Install Python Packages"), ("pip_install", [ABSENT.spec])]


def test_slicer_510_declined_installs_nothing():
    api = SlicerApi(version="5.10", confirm=False)
    with pytest.raises(UserError, match="declined"):
        sp.ensure_packages([ABSENT], "Stroke Lesion", "export", installer=api)
    assert api.calls == [("confirm", "Stroke Lesion - Install Python Packages")]  # nothing installed


def test_failed_or_ineffective_install_says_what_to_do():
    with pytest.raises(UserError, match="installing .* failed .*network"):
        sp.ensure_packages([ABSENT], "Stroke Lesion", "export", installer=SlicerApi(version="5.10", fail=True))
    with pytest.raises(UserError, match="still missing after the installation.*restart Slicer"):
        sp.ensure_packages([ABSENT], "Stroke Lesion", "export", installer=SlicerApi(version="5.12"))


def test_slicer_core_has_no_application_and_no_packaging_module():
    """On slicer-core (no application) the real installer says so, and finds no
    slicer.packaging (5.12 has it as a sub-module that must be imported explicitly)."""
    pytest.importorskip("slicer")
    real = sp.SlicerInstaller()
    assert real.in_application() is False
    assert real.packaging() is None
