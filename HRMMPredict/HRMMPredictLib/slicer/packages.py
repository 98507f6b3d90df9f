"""The Python packages the HRMMPredict panel needs in Slicer's Python, and the check whether
they are there; no Qt, no MRML (the panel does the asking and installing).

Slicer ships numpy, SimpleITK and VTK. The rest is installed on first use, after the user
confirms, never when Slicer starts: with ``slicer.packaging.pip_ensure`` (Slicer 5.12+) or
``slicer.util.pip_install`` (earlier). PyTorch is not in :data:`REQUIREMENTS`: the right
build (CUDA or CPU) depends on the computer, so the panel installs it through the PyTorch
extension (``PyTorchUtils``) when that is installed, which picks the CUDA build that matches
the driver (light-the-torch). The lower bounds are those of the project's pyproject.toml
(a test keeps them in step).

The check itself is :func:`missing_requirements`: ``importlib.util.find_spec`` for the import
name (is it importable at all?) and ``importlib.metadata.version`` against the version
specifier (is it new enough?), without importing the package (importing torch or
pyradiomics takes seconds).
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from dataclasses import dataclass

__all__ = [
    "DEEP_REQUIREMENTS",
    "REQUIREMENTS",
    "TORCH",
    "Missing",
    "Requirement",
    "missing_requirements",
    "requirements_for",
]


@dataclass(frozen=True)
class Requirement:
    """A pip requirement (``spec``, e.g. "scikit-learn>=1.8") and the name it is imported by."""

    spec: str
    module: str

    @property
    def distribution(self) -> str:
        return re.split(r"[<>=!~;\[ ]", self.spec, maxsplit=1)[0]


# What predict_case needs for the radiomics models (numpy and SimpleITK come with Slicer).
REQUIREMENTS = (
    Requirement("scipy>=1.10", "scipy"),
    Requirement("pandas>=2.0", "pandas"),
    Requirement("PyYAML>=6.0", "yaml"),
    Requirement("pyradiomics>=3.0.1", "radiomics"),
    Requirement("scikit-learn>=1.8", "sklearn"),
    Requirement("skops>=0.10", "skops"),
)

# Added when the bundle has a deep (2.5D DenseNet169) or fused model.
TORCH = Requirement("torch>=2.1", "torch")
DEEP_REQUIREMENTS = (
    Requirement("monai>=1.3", "monai"),
    Requirement("safetensors>=0.4", "safetensors"),
    Requirement("Pillow>=9.1", "PIL"),
)


@dataclass(frozen=True)
class Missing:
    """A requirement that is not satisfied, and why ("not installed", "version 1.2 is
    installed, >=1.8 is needed")."""

    requirement: Requirement
    reason: str

    def __str__(self) -> str:
        return f"{self.requirement.spec} ({self.reason})"


def requirements_for(model_kinds=("radiomics",)) -> list[Requirement]:
    """The requirements for a bundle whose models have these kinds (its manifest's
    ``models[*].kind``): torch and the deep-learning packages only when a model is not
    radiomics-only."""
    kinds = set(model_kinds)
    needed = list(REQUIREMENTS)
    if kinds - {"radiomics"}:
        needed.append(TORCH)
        needed += DEEP_REQUIREMENTS
    return needed


def _specifier_ok(installed: str, spec: str) -> bool | None:
    """True/False when ``packaging`` can judge the version; None when it is absent."""
    try:
        from packaging.requirements import Requirement as PackagingRequirement
        from packaging.version import InvalidVersion
    except ImportError:
        return None
    req = PackagingRequirement(spec)
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


def missing_requirements(requirements=None) -> list[Missing]:
    """The requirements (default: :data:`REQUIREMENTS`) that are not importable or too old."""
    missing = []
    for req in REQUIREMENTS if requirements is None else requirements:
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
            # importable but without metadata (e.g. a bundled copy): trust it
            continue
        ok = _specifier_ok(installed, req.spec)
        if ok is None:
            ok = _fallback_ok(installed, req.spec)
        if not ok:
            bound = req.spec[len(req.distribution):]
            missing.append(Missing(req, f"version {installed} is installed, {bound} is needed"))
    return missing
