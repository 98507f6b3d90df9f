"""Model bundles: a folder a clinician can load later, safely.

Layout::

    MODEL_DIR/
      manifest.json            the bundle manifest (not the cohort manifest CSV the bundle
                               was trained from): versions, settings, features (training mean/SD/range),
                               thresholds, cohort hash, SHA-256 of every other file
      radiomics_params.yaml    the pyradiomics settings the features were computed with
      models/*.skops           fitted scikit-learn estimators (skops: no pickle; only an
                               explicit list of scikit-learn/numpy types may be loaded):
                               radiomics*, fusion* classifiers and deep_pca (the PCA of the
                               deep features)
      models/deep.safetensors  DenseNet169 weights (safetensors: tensors only, no code)
      training/*.csv           predictions, selection, deep-training history and 2.5D input
                               records, for people and the evaluation report

Loading verifies the checksums and the versions first and says what is wrong.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import shutil
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.files import check_output_path, sha256_file, write_json_atomic

FORMAT = "hrmm-model-bundle"
FORMAT_VERSION = 1
BUNDLE_MANIFEST = "manifest.json"  # the bundle manifest's file name

# Types a bundle's .skops files may contain. Anything else is refused before loading.
TRUSTED_TYPES = [
    "builtins.dict", "builtins.list", "builtins.tuple", "builtins.int", "builtins.float", "builtins.str",
    "builtins.bool", "builtins.NoneType", "builtins.slice",
    "numpy.ndarray", "numpy.dtype", "numpy.float64", "numpy.float32", "numpy.int64", "numpy.int32",
    "numpy.intp", "numpy.uint8", "numpy.bool_", "numpy.random.mtrand.RandomState",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
    "sklearn.ensemble._forest.ExtraTreesClassifier", "sklearn.tree._classes.ExtraTreeClassifier",
    "sklearn.tree._tree.Tree", "sklearn.linear_model._logistic.LogisticRegression",
    "sklearn.preprocessing._data.StandardScaler", "sklearn.decomposition._pca.PCA",
]


def skops_types(path: str | os.PathLike) -> set[str]:
    """Every ``module.Class`` named in a .skops file's schema, read without loading anything.

    skops trusts scikit-learn estimators by default; the bundle's own allow-list is stricter
    (only the estimator types this software writes), so the schema is checked here first."""
    with zipfile.ZipFile(path) as z:
        schema = json.loads(z.read("schema.json"))
    found: set[str] = set()
    stack = [schema]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            if "__class__" in o and "__module__" in o:
                found.add(f"{o['__module__']}.{o['__class__']}")
            stack.extend(o.values())
        elif isinstance(o, list):
            stack.extend(o)
    return found


def software_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("numpy", "scipy", "scikit-learn", "pyradiomics", "SimpleITK", "skops", "pandas", "torch", "monai",
                "slicer-clinical-mri"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _major_minor(v: str) -> tuple[int, ...]:
    parts = []
    for p in str(v).lstrip("v").split(".")[:2]:
        digits = "".join(ch for ch in p if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


# Packages whose major.minor must match between training and loading: a different
# scikit-learn may not read the trees; a different pyradiomics may compute other values.
STRICT_PACKAGES = ("scikit-learn", "pyradiomics")


# ---------------------------------------------------------------------------------------
# Writing


class BundleWriter:
    """Collects files in a temporary folder beside the target and moves it into place at
    the end, so an interrupted training never leaves a half-written bundle.

    The extension's overwrite policy (:func:`ClinicalMRICommonLib.files.check_output_path`)
    decides on ``out_dir``: an existing non-empty folder is replaced only with ``overwrite``
    (kept as a backup until the new one is in place). Replacing a folder removes everything
    in it, so it is refused, even with ``overwrite``, when one of the command's ``inputs``
    (files or folders) is that folder or lies inside it."""

    def __init__(self, out_dir: str | os.PathLike, overwrite: bool = False, inputs=()):
        self.final = Path(out_dir).resolve()
        check_output_path(self.final, overwrite=overwrite, what="model folder", folder=True, inputs=inputs)
        for i in inputs:
            if i is not None and str(i) and self.final in Path(i).resolve().parents:
                raise UserError(f"model folder {self.final} holds {i}, an input of this training; writing the "
                                "bundle there would delete it: choose another output folder")
        self.final.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.", dir=self.final.parent))
        self.manifest: dict[str, Any] = {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "software": software_versions(),
        }

    def path(self, rel: str) -> Path:
        p = self.tmp / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def write_text(self, rel: str, text: str) -> None:
        self.path(rel).write_text(text, encoding="utf-8")

    def write_csv(self, rel: str, df: pd.DataFrame, index: bool = True) -> None:
        df.to_csv(self.path(rel), index=index)

    def write_estimator(self, rel: str, estimator) -> None:
        import skops.io as sio

        sio.dump(estimator, self.path(rel))
        untrusted = skops_types(self.path(rel)) - set(TRUSTED_TYPES)
        if untrusted:
            raise RuntimeError(f"estimator {rel} holds types outside the bundle's allow-list: {sorted(untrusted)}")

    def write_bytes(self, rel: str, data: bytes) -> None:
        self.path(rel).write_bytes(data)

    def commit(self) -> Path:
        files = {}
        for p in sorted(self.tmp.rglob("*")):
            if p.is_file() and p.name != BUNDLE_MANIFEST:
                files[p.relative_to(self.tmp).as_posix()] = sha256_file(p)
        self.manifest["files"] = files
        write_json_atomic(self.tmp / BUNDLE_MANIFEST, self.manifest)
        backup = None
        if self.final.exists():
            backup = self.final.with_name(f".{self.final.name}.previous")
            if backup.exists():
                shutil.rmtree(backup)
            os.replace(self.final, backup)
        os.replace(self.tmp, self.final)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
        return self.final

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return False


# ---------------------------------------------------------------------------------------
# Loading


@dataclass
class Bundle:
    path: Path
    manifest: dict
    _cache: dict = field(default_factory=dict)

    @property
    def params_path(self) -> Path:
        return self.path / self.manifest["radiomics"]["params_file"]

    def load_estimator(self, rel: str):
        if rel not in self._cache:
            import skops.io as sio

            p = self.path / rel
            try:
                bad = skops_types(p) - set(TRUSTED_TYPES)
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):
                raise UserError(f"model file {p} is not a readable skops file; restore the bundle") from None
            if bad:
                raise UserError(f"model file {p} contains types that are not allowed ({', '.join(sorted(bad)[:3])}); "
                                "it was not made by this software: do not use it")
            untrusted = sio.get_untrusted_types(file=p)  # skops' own list, all within our allow-list here
            self._cache[rel] = sio.load(p, trusted=sorted(untrusted))
        return self._cache[rel]

    def load_deep_model(self, rel: str, device="cpu"):
        """The bundle's DenseNet169 (safetensors, checked by ``load_bundle``) on ``device``;
        loaded once per device."""
        from HRMMPredictLib.deep.model import load_model, select_device

        dev = select_device(device)[0]
        key = (rel, str(dev))
        if key not in self._cache:
            self._cache[key] = load_model(self.path / rel, dev)
        return self._cache[key]

    def summary(self) -> dict:
        m = self.manifest
        models = {k: {kk: v.get(kk) for kk in ("kind", "classifier", "threshold", "cv_auc", "validation_auc")}
                  for k, v in m.get("models", {}).items()}
        out = {"path": str(self.path), "created": m.get("created"), "primary_model": m.get("primary_model"),
               "cohort": m.get("cohort", {}).get("summary"), "models": models}
        if "deep" in m:
            tr = m["deep"].get("training", {})
            out["deep"] = {k: tr.get(k) for k in ("device", "best_epoch", "selection", "epochs_run")}
            out["deep"]["pca_components"] = m["deep"].get("pca", {}).get("n_components")
        if "fusion" in m:
            out["fusion"] = {k: m["fusion"].get(k) for k in ("fit", "deep_features_in_sample", "selected")}
        return out


def load_bundle(path: str | os.PathLike, check_versions: bool = True) -> Bundle:
    """Open a model bundle after checking its manifest, checksums and versions."""
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"model folder not found: {p}")
    mf = p / BUNDLE_MANIFEST
    if not mf.is_file():
        raise UserError(f"{p} is not a model bundle (no {BUNDLE_MANIFEST}); give the folder written by 'hrmm train'")
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"model manifest {mf} is damaged ({exc.__class__.__name__}); retrain or restore the bundle") from None
    if manifest.get("format") != FORMAT:
        raise UserError(f"{mf} is not an HRMM model bundle manifest")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"model bundle {p} has format version {manifest.get('format_version')}; this software reads "
                        f"version {FORMAT_VERSION}: retrain the model with this version")
    from HRMMPredictLib.radiomics.features import require_current_preprocessing  # yaml: not at start-up

    require_current_preprocessing((manifest.get("radiomics") or {}).get("preprocess"), str(p))
    problems = []
    for rel, digest in (manifest.get("files") or {}).items():
        f = p / rel
        if not f.is_file():
            problems.append(f"{rel} is missing")
        elif sha256_file(f) != digest:
            problems.append(f"{rel} was altered (checksum differs)")
    if problems:
        raise UserError(f"model bundle {p} failed its integrity check: " + "; ".join(problems[:5])
                        + ("; ..." if len(problems) > 5 else "") + " - restore the original bundle")
    if check_versions:
        have = software_versions()
        for pkg in STRICT_PACKAGES:
            made = manifest.get("software", {}).get(pkg)
            now = have.get(pkg)
            if made and now and _major_minor(made) != _major_minor(now):
                raise UserError(f"model bundle {p} was made with {pkg} {made} but {now} is installed; "
                                f"install {pkg}=={made} or retrain the model")
    return Bundle(p, manifest)


def features_table(stats: pd.DataFrame) -> list[dict]:
    """Training statistics per feature in the manifest's form."""
    out = []
    for name, r in stats.iterrows():
        out.append({"name": str(name), "mean": float(r["mean"]), "sd": float(r["sd"]),
                    "min": float(r["min"]), "max": float(r["max"])})
    return out
