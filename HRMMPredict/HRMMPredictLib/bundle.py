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

Loading (:func:`load_bundle`; ``hrmm info`` runs :func:`verify_bundle`, the same checks plus
every estimator loaded) verifies the manifest against its schema, that every file of the
folder is listed with its SHA-256 and matches it (no unlisted file, nothing outside the
folder), the estimators' types against the allow-list and the package versions against
:data:`VERSION_RULES`, and says in one line what is wrong.
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


# The compatibility rule of every package version a bundle records (manifest "software"),
# checked against what is installed when the bundle is opened:
#   exact  the same version (pyradiomics: feature values change between releases)
#   minor  the same major.minor (scikit-learn and skops: the estimators' stored form; monai:
#          the DenseNet169 definition the weights belong to)
#   major  the same major version (numpy, scipy, SimpleITK: arrays, statistics, resampling and
#          N4; torch: the weights' tensors)
#   any    recorded for the record only (python, pandas, this software: the bundle format
#          version decides what this software reads)
# A package not installed is not compared here (the step that needs it says it is missing).
VERSION_RULES = {
    "pyradiomics": "exact", "scikit-learn": "minor", "skops": "minor", "monai": "minor",
    "numpy": "major", "scipy": "major", "SimpleITK": "major", "torch": "major",
    "python": "any", "pandas": "any", "slicer-clinical-mri": "any",
}
STRICT_PACKAGES = tuple(k for k, v in VERSION_RULES.items() if v != "any")  # (kept for callers)


def _version_parts(v: str, n: int) -> tuple[int, ...]:
    parts = []
    for piece in str(v).lstrip("v").split(".")[:n]:
        digits = ""
        for ch in piece:
            if not ch.isdigit():
                break
            digits += ch
        parts.append(int(digits) if digits else 0)
    return tuple(parts + [0] * (n - len(parts)))


def version_compatible(package: str, made: str, now: str) -> bool:
    """Whether ``now`` (installed) may read a bundle made with ``made``, by :data:`VERSION_RULES`."""
    rule = VERSION_RULES.get(package, "any")
    if rule == "exact":
        return str(made).strip() == str(now).strip()
    if rule == "minor":
        return _version_parts(made, 2) == _version_parts(now, 2)
    if rule == "major":
        return _version_parts(made, 1) == _version_parts(now, 1)
    return True


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
        return _inside(self.path, self.manifest["radiomics"]["params_file"], "radiomics.params_file")

    def load_estimator(self, rel: str):
        """A fitted estimator of the bundle, loaded by skops trusting exactly
        :data:`TRUSTED_TYPES` (skops refuses anything else: functions and methods such as
        ``builtins.str.format`` included), then checked to be one of the classes this software
        writes with no method replaced by an attribute of the instance."""
        if rel not in self._cache:
            import skops.io as sio

            p = _inside(self.path, rel, "model file")
            try:
                bad = skops_types(p) - set(TRUSTED_TYPES)
            except (OSError, ValueError, KeyError, zipfile.BadZipFile):
                raise UserError(f"model file {p} is not a readable skops file; restore the bundle") from None
            if bad:
                raise UserError(f"model file {p} contains types that are not allowed ({', '.join(sorted(bad)[:3])}); "
                                "it was not made by this software: do not use it")
            try:
                estimator = sio.load(p, trusted=list(TRUSTED_TYPES))
            except Exception as exc:  # skops.io.exceptions.UntrustedTypesFoundException and damaged files
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
                raise UserError(f"model file {p} was refused ({first}); it was not made by this software: "
                                "do not use it") from None
            _check_estimator(estimator, p)
            self._cache[rel] = estimator
        return self._cache[rel]

    def load_all_estimators(self) -> list[str]:
        """Load every estimator the manifest names (what ``hrmm info`` and loading check)."""
        rels = [m["file"] for m in self.manifest["models"].values() if m["kind"] != "deep"]
        if "deep" in self.manifest:
            rels.append(self.manifest["deep"]["pca"]["file"])
        for rel in rels:
            self.load_estimator(rel)
        return rels

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
        # the honesty fields (cv_auc null with a reason when out-of-fold estimates are not honest) are
        # None for bundles trained before they were recorded ("not recorded")
        models = {k: {kk: v.get(kk) for kk in ("kind", "classifier", "threshold", "cv_auc", "cv_auc_ci",
                                              "cv_unavailable_reason", "oof_probabilities_honest", "cv_covers",
                                              "validation_auc")}
                  for k, v in m.get("models", {}).items()}
        out = {"path": str(self.path), "created": m.get("created"), "primary_model": m.get("primary_model"),
               "cohort": m.get("cohort", {}).get("summary"), "models": models}
        if "deep" in m:
            tr = m["deep"].get("training", {})
            out["deep"] = {k: tr.get(k) for k in ("device", "best_epoch", "selection", "epochs_run")}
            out["deep"]["pca_components"] = m["deep"].get("pca", {}).get("n_components")
        if "fusion" in m:
            out["fusion"] = {k: m["fusion"].get(k) for k in ("fit", "deep_features_in_sample", "selected", "deep_cv",
                                                             "training_estimate")}
        return out


#: the estimator classes a bundle may hold (the top-level object of each .skops file)
ESTIMATOR_CLASSES = ("sklearn.ensemble._forest.ExtraTreesClassifier",
                     "sklearn.linear_model._logistic.LogisticRegression", "sklearn.decomposition._pca.PCA")


def _check_estimator(estimator, path: Path) -> None:
    cls = type(estimator)
    name = f"{cls.__module__}.{cls.__qualname__}"
    if name not in ESTIMATOR_CLASSES:
        raise UserError(f"model file {path} holds a {name}, not one of the estimators this software writes; "
                        "do not use it")
    shadowed = sorted(k for k in vars(estimator) if callable(getattr(cls, k, None)) or callable(vars(estimator)[k]))
    if shadowed:
        raise UserError(f"model file {path} replaces the estimator's {', '.join(shadowed[:3])}; it was not made by "
                        "this software: do not use it")


MAX_MANIFEST_BYTES = 32 * 1024 * 1024
MAX_MANIFEST_DEPTH = 24
_HEX = frozenset("0123456789abcdef")


def _depth(o, limit: int) -> int:
    """Nesting depth of a JSON value (stops counting past ``limit``)."""
    stack, deepest = [(o, 1)], 0
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return deepest


def _inside(root: Path, rel, what: str) -> Path:
    """``root / rel`` for a relative path that stays inside the bundle folder (symbolic links
    resolved); anything else is refused."""
    if not isinstance(rel, str) or not rel or "\\" in rel or "\x00" in rel:
        raise UserError(f"model bundle {root}: {what} {rel!r} is not a relative path inside the bundle")
    parts = Path(rel).parts
    if Path(rel).is_absolute() or ".." in parts or rel.startswith("/"):
        raise UserError(f"model bundle {root}: {what} {rel!r} points outside the bundle folder; refused "
                        "(a bundle only uses its own files)")
    full = (root / rel)
    try:
        resolved = full.resolve()
        base = root.resolve()
    except (OSError, RuntimeError):
        raise UserError(f"model bundle {root}: {what} {rel!r} cannot be resolved") from None
    if resolved != base and base not in resolved.parents:
        raise UserError(f"model bundle {root}: {what} {rel!r} leads outside the bundle folder (a link); refused")
    return full


class _Schema:
    """The bundle manifest's schema, checked field by field with one-line messages."""

    def __init__(self, mf: Path):
        self.mf = mf

    def fail(self, where: str, what: str):
        raise UserError(f"model manifest {self.mf}: {where} {what}; the bundle is damaged or was not written by "
                        "'hrmm train' - restore or retrain it")

    def obj(self, v, where: str) -> dict:
        if not isinstance(v, dict):
            self.fail(where, f"must be an object, not {_json_kind(v)}")
        return v

    def text(self, v, where: str) -> str:
        if not isinstance(v, str) or not v:
            self.fail(where, f"must be a non-empty string, not {_json_kind(v)}")
        return v

    def number(self, v, where: str, optional: bool = False):
        if v is None and optional:
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v != v or v in (float("inf"), float("-inf")):
            self.fail(where, f"must be a finite number, not {_json_kind(v)}")
        return v

    def check(self, m) -> dict:
        m = self.obj(m, "the manifest")
        if m.get("format") != FORMAT:
            raise UserError(f"{self.mf} is not an HRMM model bundle manifest (format {m.get('format')!r})")
        if m.get("format_version") != FORMAT_VERSION:
            raise UserError(f"model bundle {self.mf.parent} has format version {m.get('format_version')!r}; this "
                            f"software reads version {FORMAT_VERSION}: retrain the model with this version")
        files = self.obj(m.get("files"), "'files'")
        if not files:
            self.fail("'files'", "is empty (every file of the bundle must be listed with its SHA-256)")
        for rel, digest in files.items():
            if not (isinstance(digest, str) and len(digest) == 64 and set(digest) <= _HEX):
                self.fail(f"files[{rel!r}]", "must be a SHA-256 (64 lower-case hex digits)")
        software = self.obj(m.get("software", {}), "'software'")
        for k, v in software.items():
            self.text(v, f"software[{k!r}]")
        seqs = m.get("sequences", list(_sequences()))
        if not isinstance(seqs, list) or not seqs or not all(isinstance(x, str) and x in _sequences() for x in seqs):
            self.fail("'sequences'", f"must be a list of {', '.join(_sequences())}")
        rad = self.obj(m.get("radiomics"), "'radiomics'")
        self.text(rad.get("params_file"), "radiomics.params_file")
        models = self.obj(m.get("models"), "'models'")
        if not models:
            self.fail("'models'", "is empty")
        for name, entry in models.items():
            where = f"models[{name!r}]"
            entry = self.obj(entry, where)
            kind = entry.get("kind")
            if kind not in ("radiomics", "fusion", "deep"):
                self.fail(f"{where}.kind", f"must be radiomics, fusion or deep, not {kind!r}")
            self.text(entry.get("file"), f"{where}.file")
            self.number(entry.get("threshold"), f"{where}.threshold")
            feats = entry.get("features")
            if not isinstance(feats, list):
                self.fail(f"{where}.features", f"must be a list, not {_json_kind(feats)}")
            if kind != "deep" and not feats:
                self.fail(f"{where}.features", "is empty (a radiomics or fusion model needs its features)")
            for i, f in enumerate(feats):
                f = self.obj(f, f"{where}.features[{i}]")
                self.text(f.get("name"), f"{where}.features[{i}].name")
                for k in ("mean", "sd", "min", "max"):
                    self.number(f.get(k), f"{where}.features[{i}].{k}")
            if kind != "deep":
                z = self.obj(entry.get("zscore"), f"{where}.zscore")
                for k in ("mean", "scale"):
                    vals = z.get(k)
                    if not isinstance(vals, list) or len(vals) != len(feats):
                        self.fail(f"{where}.zscore.{k}", f"must be a list of {len(feats)} numbers")
                    for v in vals:
                        self.number(v, f"{where}.zscore.{k}")
        primary = m.get("primary_model")
        if primary not in models:
            self.fail("'primary_model'", f"{primary!r} is not one of the bundle's models")
        kinds = {e["kind"] for e in models.values()}
        if "deep" in m or kinds - {"radiomics"}:
            deep = self.obj(m.get("deep"), "'deep'")
            self.text(deep.get("file"), "deep.file")
            self.text(self.obj(deep.get("pca"), "deep.pca").get("file"), "deep.pca.file")
            self.obj(deep.get("input", {}), "deep.input")
        for key in ("cohort", "training", "fusion", "predictions"):
            if key in m:
                self.obj(m[key], f"'{key}'")
        return m


def _json_kind(v) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}.get(
        type(v), "a number" if isinstance(v, (int, float)) else type(v).__name__)


def _sequences() -> tuple[str, ...]:
    from HRMMPredictLib.sequences import SEQUENCES

    return tuple(SEQUENCES)


def referenced_files(manifest: dict) -> dict[str, str]:
    """Every file the manifest points at -> what it is (all must be listed in ``files``)."""
    out = {manifest["radiomics"]["params_file"]: "radiomics.params_file"}
    for name, entry in manifest["models"].items():
        out.setdefault(entry["file"], f"models[{name!r}].file")
    if "deep" in manifest:
        out.setdefault(manifest["deep"]["file"], "deep.file")
        out.setdefault(manifest["deep"]["pca"]["file"], "deep.pca.file")
    pred = (manifest.get("predictions") or {}).get("file")
    if isinstance(pred, str):
        out.setdefault(pred, "predictions.file")
    return out


def check_safetensors_header(path: Path) -> dict:
    """The safetensors header of a deep-model file, read with the standard library (8-byte
    length + JSON), and its ``__metadata__`` values that hold JSON (input, versions,
    metadata) parsed: a damaged header is a one-line error, not a traceback later."""
    import struct

    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ValueError("shorter than a safetensors header")
            (n,) = struct.unpack("<Q", head)
            if n <= 0 or n > 100 * 1024 * 1024 or n > path.stat().st_size - 8:
                raise ValueError(f"header length {n} does not fit the file")
            header = json.loads(f.read(n).decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        meta = header.get("__metadata__") or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise ValueError("__metadata__ is not a map of strings")
        out = dict(meta)
        for k in ("input", "versions", "metadata"):
            if k in meta:
                try:
                    out[k] = json.loads(meta[k])
                except json.JSONDecodeError:
                    raise ValueError(f"metadata {k!r} is not JSON") from None
                if not isinstance(out[k], dict):
                    raise ValueError(f"metadata {k!r} is not a JSON object")
        return out
    except (OSError, ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise UserError(f"deep model file {path} is not a readable safetensors file ({exc}); restore the bundle") \
            from None


def _read_manifest(p: Path) -> tuple[Path, dict]:
    mf = p / BUNDLE_MANIFEST
    if not mf.is_file():
        raise UserError(f"{p} is not a model bundle (no {BUNDLE_MANIFEST}); give the folder written by 'hrmm train'")
    try:
        if mf.stat().st_size > MAX_MANIFEST_BYTES:
            raise UserError(f"model manifest {mf} is larger than {MAX_MANIFEST_BYTES // 2**20} MiB; it is not a "
                            "bundle manifest")
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise UserError(f"model manifest {mf} is damaged ({exc.__class__.__name__}); retrain or restore the "
                        "bundle") from None
    except OSError as exc:
        raise UserError(f"model manifest {mf} cannot be read ({exc.strerror or exc})") from None
    if _depth(manifest, MAX_MANIFEST_DEPTH) > MAX_MANIFEST_DEPTH:
        raise UserError(f"model manifest {mf} is nested deeper than {MAX_MANIFEST_DEPTH} levels; it is not a bundle "
                        "manifest")
    return mf, _Schema(mf).check(manifest)


def load_bundle(path: str | os.PathLike, check_versions: bool = True) -> Bundle:
    """Open a model bundle after its full verification (the same for ``hrmm info``, the
    panel and every command that loads one): the manifest against its schema; every file of
    the folder listed in ``files`` with its SHA-256 and matching it, nothing listed outside
    the folder, no unlisted file; every file the manifest points at listed; the .skops files'
    types within :data:`TRUSTED_TYPES`; the deep model's safetensors header readable; the
    recorded package versions compatible by :data:`VERSION_RULES`."""
    p = Path(path)
    if not p.is_dir():
        raise UserError(f"model folder not found: {p}")
    mf, manifest = _read_manifest(p)
    from HRMMPredictLib.radiomics.features import require_current_preprocessing  # yaml: not at start-up

    require_current_preprocessing((manifest.get("radiomics") or {}).get("preprocess"), str(p))
    listed = manifest["files"]
    for rel in listed:
        _inside(p, rel, "listed file")
    if BUNDLE_MANIFEST in listed:
        raise UserError(f"model manifest {mf} lists itself; the bundle is damaged - restore or retrain it")
    for rel, what in referenced_files(manifest).items():
        _inside(p, rel, what)
        if Path(rel).as_posix() not in listed:
            raise UserError(f"model bundle {p}: {what} {rel!r} is not listed with a checksum in the manifest's "
                            "'files'; refused - restore the original bundle")
    problems = []
    for rel, digest in listed.items():
        f = p / rel
        if not f.is_file():
            problems.append(f"{rel} is missing")
        elif sha256_file(f) != digest:
            problems.append(f"{rel} was altered (checksum differs)")
    present = {q.relative_to(p).as_posix() for q in p.rglob("*") if q.is_file() or q.is_symlink()}
    extra = sorted(present - set(listed) - {BUNDLE_MANIFEST})
    problems += [f"{rel} is not part of the bundle (not listed in its manifest)" for rel in extra]
    if problems:
        raise UserError(f"model bundle {p} failed its integrity check: " + "; ".join(problems[:5])
                        + ("; ..." if len(problems) > 5 else "") + " - restore the original bundle")
    for rel, entry in [(e["file"], e) for e in manifest["models"].values() if e["kind"] != "deep"] + (
            [(manifest["deep"]["pca"]["file"], None)] if "deep" in manifest else []):
        try:
            bad = skops_types(p / rel) - set(TRUSTED_TYPES)
        except (OSError, ValueError, KeyError, RecursionError, zipfile.BadZipFile):
            raise UserError(f"model file {p / rel} is not a readable skops file; restore the bundle") from None
        if bad:
            raise UserError(f"model file {p / rel} contains types that are not allowed "
                            f"({', '.join(sorted(bad)[:3])}); it was not made by this software: do not use it")
    if "deep" in manifest:
        check_safetensors_header(p / manifest["deep"]["file"])
    if check_versions:
        have = software_versions()
        for pkg, made in sorted(manifest.get("software", {}).items()):
            now = have.get(pkg)
            if now and not version_compatible(pkg, made, now):
                rule = {"exact": "the same version", "minor": "the same major.minor version",
                        "major": "the same major version"}[VERSION_RULES[pkg]]
                raise UserError(f"model bundle {p} was made with {pkg} {made} but {now} is installed ({pkg} must be "
                                f"{rule}); install {pkg}=={made} or retrain the model")
    return Bundle(p, manifest)


def verify_bundle(path: str | os.PathLike, check_versions: bool = True) -> Bundle:
    """:func:`load_bundle` plus every estimator loaded with the strict allow-list (what
    ``hrmm info`` runs: the checks of loading, nothing less)."""
    bundle = load_bundle(path, check_versions=check_versions)
    bundle.load_all_estimators()
    return bundle


def features_table(stats: pd.DataFrame) -> list[dict]:
    """Training statistics per feature in the manifest's form."""
    out = []
    for name, r in stats.iterrows():
        out.append({"name": str(name), "mean": float(r["mean"]), "sd": float(r["sd"]),
                    "min": float(r["min"]), "max": float(r["max"])})
    return out
