"""Install-on-first-use of the Python packages Slicer does not ship, for all three panels.

Slicer ships numpy, scipy, SimpleITK, VTK, pydicom, Pillow and requests. Everything else the
extension's panels use (pandas, matplotlib, pyradiomics, nibabel, dicom-anonymizer, the BIDS
validator, scikit-learn, ...) is installed the first time an action needs it, after the user
confirms, and never when Slicer starts:

- which packages are missing is decided without importing them (:func:`missing_requirements`:
  ``importlib.util.find_spec`` for the import name, ``importlib.metadata.version`` against the
  version bound), so the check itself is fast and never runs a package's import code;
- Slicer 5.12 and later: ``slicer.packaging`` is imported explicitly (it is a sub-module that
  ``import slicer`` does not load, so ``getattr(slicer, "packaging", None)`` is None until
  someone imports it) and ``slicer.packaging.pip_ensure(requirements, requester=...)`` asks,
  installs with progress and offers a restart when an already imported package was updated
  (Base/Python/slicer/packaging.py, v5.12.0);
- Slicer 5.10: a confirmation dialog (``slicer.util.confirmOkCancelDisplay``), then
  ``slicer.util.pip_install`` with the list of requirement strings (Base/Python/slicer/util.py,
  v5.10.0);
- in testing mode (``slicer.app.testingEnabled()``, e.g. ``Slicer --testing``) nothing is ever
  installed: a test must not change the Python environment (5.12's ``pip_ensure`` skips there
  too). Outside the application (a worker process, ``PythonSlicer``, the command line, where
  5.12's ``pip_ensure`` would install without asking) nothing is installed either. In both
  cases the caller gets a :class:`~ClinicalMRICommonLib.errors.UserError` naming what is missing.

After installing, the check runs again; a package that is still missing (or too old: a
version was already imported) gives a UserError that says to restart Slicer.

The decision logic is pure (:func:`missing_requirements`, :func:`install_route`,
:func:`confirmation_text`) and tested without Slicer; :func:`ensure_packages` calls Slicer's
API through :class:`SlicerInstaller`. Only the standard library is imported at module level.

The requirement sets of the panels are :data:`REQUIREMENTS` (by feature); their lower bounds
are those of the project's pyproject.toml (a test keeps them in step).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import re
from dataclasses import dataclass
from typing import Iterable, Sequence

__all__ = [
    "REQUIREMENTS",
    "Missing",
    "Requirement",
    "SlicerInstaller",
    "confirmation_text",
    "ensure_packages",
    "install_route",
    "missing_requirements",
    "requirements_for",
]


@dataclass(frozen=True)
class Requirement:
    """A pip requirement (``spec``, e.g. "pandas>=2.0") and the name it is imported by."""

    spec: str
    module: str

    @property
    def distribution(self) -> str:
        return re.split(r"[<>=!~;\[ ]", self.spec, maxsplit=1)[0]


@dataclass(frozen=True)
class Missing:
    """A requirement that is not satisfied, and why ("not installed", "version 1.2 is
    installed, >=1.8 is needed")."""

    requirement: Requirement
    reason: str

    def __str__(self) -> str:
        return f"{self.requirement.spec} ({self.reason})"


#: What each panel feature needs beyond what Slicer ships, by feature name.
REQUIREMENTS: dict[str, tuple[Requirement, ...]] = {
    # AnnotationQC: reader studies and training sessions keep their tables in pandas
    "tables": (Requirement("pandas>=2.0", "pandas"),),
    # AnnotationQC: the ICC-by-class plot and the training report's figures
    "plots": (Requirement("matplotlib>=3.7", "matplotlib"),),
    # AnnotationQC: feature ICC of a reader study and of a training session (pyradiomics features)
    "radiomics": (Requirement("pyradiomics>=3.0.1", "radiomics"), Requirement("PyYAML>=6.0", "yaml")),
    # StrokeLesion: BIDS export, de-identification and the acceptance report
    "bids": (Requirement("nibabel>=5.0", "nibabel"), Requirement("dicom-anonymizer>=2.1", "dicomanonymizer"),
             Requirement("pydicom>=3.0", "pydicom")),
    # StrokeLesion: the official BIDS validator (a Deno program shipped as a wheel)
    "bids-validator": (Requirement("bids-validator-deno", "bids_validator_deno"),),
}


def requirements_for(*features: str) -> list[Requirement]:
    """The requirements of the given features (see :data:`REQUIREMENTS`), each once."""
    out: list[Requirement] = []
    for feature in features:
        if feature not in REQUIREMENTS:
            raise KeyError(f"unknown feature {feature!r}; known: {', '.join(REQUIREMENTS)}")
        out += [r for r in REQUIREMENTS[feature] if r not in out]
    return out


# ---------------------------------------------------------------------------------------
# Which requirements are missing (without importing them)


def _specifier_ok(installed: str, spec: str) -> bool | None:
    """True/False when ``packaging`` can judge the version; None when it is absent."""
    try:
        from packaging.requirements import InvalidRequirement
        from packaging.requirements import Requirement as PackagingRequirement
        from packaging.version import InvalidVersion
    except ImportError:
        return None
    try:
        req = PackagingRequirement(spec)
    except InvalidRequirement:
        return None
    try:
        return req.specifier.contains(installed, prereleases=True)
    except InvalidVersion:
        return False


def _fallback_ok(installed: str, spec: str) -> bool:
    """Without ``packaging``: compare the leading numbers with a ``>=`` bound."""
    match = re.search(r">=\s*([0-9][0-9.]*)", spec)
    if not match:
        return True

    def numbers(text):
        return tuple(int(x) for x in re.findall(r"\d+", text)[:3])

    return numbers(installed) >= numbers(match.group(1))


def missing_requirements(requirements: Iterable[Requirement]) -> list[Missing]:
    """The requirements that are not importable or too old, without importing them."""
    missing = []
    for req in requirements:
        try:
            found = importlib.util.find_spec(req.module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(Missing(req, "not installed"))
            continue
        try:
            installed = importlib.metadata.version(req.distribution)
        except importlib.metadata.PackageNotFoundError:
            continue  # importable without metadata (e.g. a copy bundled with Slicer): trust it
        ok = _specifier_ok(installed, req.spec)
        if ok is None:
            ok = _fallback_ok(installed, req.spec)
        if not ok:
            bound = req.spec[len(req.distribution):]
            missing.append(Missing(req, f"version {installed} is installed, {bound} is needed"))
    return missing


# ---------------------------------------------------------------------------------------
# How to install them (pure decisions)

ROUTE_NONE = "nothing to install"
ROUTE_NO_APPLICATION = "not in the Slicer application: never install"
ROUTE_TESTING = "testing mode: never install"
ROUTE_PIP_ENSURE = "slicer.packaging.pip_ensure"
ROUTE_CONFIRM_PIP_INSTALL = "confirm, then slicer.util.pip_install"


def install_route(missing: Sequence[Missing], *, in_application: bool, testing: bool, has_pip_ensure: bool) -> str:
    """How the missing requirements are installed: not at all (nothing missing, not in the
    application, testing mode), with 5.12's ``pip_ensure``, or after our own confirmation
    with 5.10's ``pip_install``."""
    if not missing:
        return ROUTE_NONE
    if not in_application:
        return ROUTE_NO_APPLICATION
    if testing:
        return ROUTE_TESTING
    return ROUTE_PIP_ENSURE if has_pip_ensure else ROUTE_CONFIRM_PIP_INSTALL


def confirmation_text(requester: str, purpose: str, missing: Sequence[Missing]) -> tuple[str, str, str]:
    """(text, window title, detailed text) of the 5.10 confirmation dialog."""
    n = len(missing)
    text = (f"{requester} needs {'this Python package' if n == 1 else f'these {n} Python packages'} to "
            f"{purpose}, which {'is' if n == 1 else 'are'} not installed yet. Install now? This changes Slicer's "
            "Python environment and needs a network connection.")
    return text, f"{requester} - Install Python Packages", "\n".join(f"- {m}" for m in missing)


def _names(missing: Sequence[Missing]) -> str:
    return ", ".join(str(m) for m in missing)


# ---------------------------------------------------------------------------------------
# Slicer's side


class SlicerInstaller:
    """Slicer's package installation API (the running application's ``slicer`` module)."""

    def __init__(self, slicer_module=None) -> None:
        if slicer_module is None:
            import slicer as slicer_module
        self.slicer = slicer_module

    def in_application(self) -> bool:
        """The Slicer application (``slicer.app``), not PythonSlicer or a worker process."""
        return getattr(self.slicer, "app", None) is not None

    def testing(self) -> bool:
        app = getattr(self.slicer, "app", None)
        return bool(app is not None and app.testingEnabled())

    def packaging(self):
        """``slicer.packaging`` (Slicer 5.12+, imported explicitly) or None (5.10)."""
        try:
            if importlib.util.find_spec("slicer.packaging") is None:
                return None
        except (ImportError, ValueError):
            return None
        module = importlib.import_module("slicer.packaging")
        return module if hasattr(module, "pip_ensure") else None

    def pip_ensure(self, specs: list[str], requester: str) -> None:
        self.packaging().pip_ensure(specs, requester=requester)

    def confirm(self, text: str, title: str, detail: str) -> bool:
        return bool(self.slicer.util.confirmOkCancelDisplay(text, title, detailedText=detail))

    def pip_install(self, specs: list[str]) -> None:
        with self.slicer.util.WaitCursor():
            self.slicer.util.pip_install(specs)


def ensure_packages(requirements: Iterable[Requirement], requester: str, purpose: str, *,
                    installer: SlicerInstaller | None = None) -> list[Missing]:
    """Make sure ``requirements`` are importable before an action runs (call at the start of
    the action, then import the packages inside the function that needs them).

    Returns what was installed (empty when everything was there). Raises UserError when the
    user declines, in testing mode, when pip fails, or when something is still missing
    afterwards (then a restart of Slicer is needed)."""
    from .errors import UserError

    requirements = list(requirements)
    importlib.invalidate_caches()
    missing = missing_requirements(requirements)
    if not missing:
        return []
    installer = installer or SlicerInstaller()
    in_application = installer.in_application()
    route = install_route(missing, in_application=in_application, testing=in_application and installer.testing(),
                          has_pip_ensure=in_application and installer.packaging() is not None)
    specs = [m.requirement.spec for m in missing]
    if route == ROUTE_NO_APPLICATION:
        raise UserError(f"{requester} needs {_names(missing)} to {purpose}; install them in Slicer (the panel offers "
                        "to) or with pip in this Python")
    if route == ROUTE_TESTING:
        raise UserError(f"{requester} needs {_names(missing)} to {purpose}; Slicer runs in testing mode, which "
                        "never installs packages: install them first (pip_install in Slicer's Python console)")
    if route == ROUTE_PIP_ENSURE:
        try:
            installer.pip_ensure(specs, requester)
        except RuntimeError as exc:  # "User declined package installation"
            raise UserError(f"the Python packages were not installed ({exc}); {requester} cannot {purpose} "
                            "without them") from None
        except Exception as exc:  # subprocess.CalledProcessError from pip
            raise UserError(f"installing {', '.join(specs)} failed ({exc}); check the network connection and "
                            "the Python console, then try again") from None
    else:
        text, title, detail = confirmation_text(requester, purpose, missing)
        if not installer.confirm(text, title, detail):
            raise UserError(f"the Python packages were not installed (declined); {requester} cannot {purpose} "
                            "without them")
        try:
            installer.pip_install(specs)
        except Exception as exc:  # subprocess.CalledProcessError from pip
            raise UserError(f"installing {', '.join(specs)} failed ({exc}); check the network connection and "
                            "the Python console, then try again") from None
    importlib.invalidate_caches()
    still = missing_requirements(requirements)
    if still:
        raise UserError(f"still missing after the installation: {_names(still)}; restart Slicer and try again")
    return missing
