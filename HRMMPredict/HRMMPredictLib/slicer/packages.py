"""The Python packages the HRMMPredict panel needs in Slicer's Python; no Qt, no MRML (the
panel does the asking and installing).

Slicer ships numpy, SimpleITK and VTK. The rest is installed on first use, after the user
confirms, never when Slicer starts, by :func:`ClinicalMRICommonLib.slicer_packages.ensure_packages`
(``slicer.packaging.pip_ensure`` on Slicer 5.12+, ``slicer.util.pip_install`` on 5.10).
PyTorch (:data:`TORCH`, only for bundles with a deep model) goes the same way: pip, without
importing it into Slicer's process (the PyTorch extension's ``installTorch`` imports torch
there; the deep model and the GPU probe run in the worker process only). A torch that is
already installed and meets the bound (e.g. the CUDA build the PyTorch extension chose) is
kept. The lower bounds are those of the project's pyproject.toml (a test keeps them in step).

This module holds HRMMPredict's requirement sets only; the requirement type and the check
(:func:`ClinicalMRICommonLib.slicer_packages.missing_requirements`: ``find_spec`` for the
import name, ``importlib.metadata.version`` against the bound, without importing the
package) are the extension's one copy in ``ClinicalMRICommonLib.slicer_packages``.
"""

from __future__ import annotations

from ClinicalMRICommonLib.slicer_packages import Missing, Requirement
from ClinicalMRICommonLib.slicer_packages import missing_requirements as _missing

__all__ = [
    "DEEP_REQUIREMENTS",
    "REQUIREMENTS",
    "TORCH",
    "missing_requirements",
    "requirements_for",
]

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


def requirements_for(model_kinds=("radiomics",)) -> list[Requirement]:
    """The requirements for a bundle whose models have these kinds (its bundle manifest's
    ``models[*].kind``): torch and the deep-learning packages only when a model is not
    radiomics-only."""
    kinds = set(model_kinds)
    needed = list(REQUIREMENTS)
    if kinds - {"radiomics"}:
        needed.append(TORCH)
        needed += DEEP_REQUIREMENTS
    return needed


def missing_requirements(requirements=None) -> list[Missing]:
    """The requirements (default: the radiomics models' :data:`REQUIREMENTS`) that are not
    importable or too old."""
    return _missing(REQUIREMENTS if requirements is None else requirements)
