"""Model bundles (issue 12): what loading and ``hrmm info`` verify, with the same checks.

The bundles are the session fixtures trained by the current code (radiomics-only and fused);
each test works on a copy it changes the way a careless or malicious person would, re-signing
the checksum where that is the point (a valid checksum must not make a bad file acceptable).
"""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.files import sha256_file
from HRMMPredictLib.bundle import (
    BUNDLE_MANIFEST,
    TRUSTED_TYPES,
    VERSION_RULES,
    load_bundle,
    software_versions,
    verify_bundle,
    version_compatible,
)
from HRMMPredictLib.cli.main import main as hrmm


def _copy(bundle, tmp_path) -> Path:
    path, _ = bundle
    copy = tmp_path / "bundle"
    shutil.copytree(path, copy)
    return copy


def _manifest(copy: Path) -> dict:
    return json.loads((copy / BUNDLE_MANIFEST).read_text())


def _write_manifest(copy: Path, manifest) -> None:
    (copy / BUNDLE_MANIFEST).write_text(json.dumps(manifest) if not isinstance(manifest, str) else manifest)


def _resign(copy: Path, rel: str) -> None:
    man = _manifest(copy)
    man["files"][rel] = sha256_file(copy / rel)
    _write_manifest(copy, man)


def _info(copy: Path, capsys) -> tuple[int, str]:
    capsys.readouterr()
    code = hrmm(["info", "--model", str(copy)])
    err = capsys.readouterr().err
    return code, err


def _refused_everywhere(copy: Path, capsys, match: str) -> None:
    """load_bundle and `hrmm info` refuse it: one `error:` line, exit 2, the bundle unchanged."""
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    with pytest.raises(UserError, match=match):
        verify_bundle(copy)
    code, err = _info(copy, capsys)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before


# ---------------------------------------------------------------------------------------
# Bundles of the current code keep loading


@pytest.mark.parametrize("which", ["trained_bundle", "fused_bundle"])
def test_bundles_trained_by_this_code_load_and_pass_info(which, request, capsys):
    path, _ = request.getfixturevalue(which)
    bundle = verify_bundle(path)
    assert bundle.load_all_estimators()
    code = hrmm(["info", "--model", str(path)])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "manifest, checksums, models and versions checked" in out.out


# ---------------------------------------------------------------------------------------
# Checksums, listed and unlisted files, paths


def test_altered_bundle_is_refused(trained_bundle, tmp_path):
    copy = _copy(trained_bundle, tmp_path)
    p = copy / "models" / "radiomics.skops"
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))
    with pytest.raises(UserError, match="altered"):
        load_bundle(copy)
    (copy / "models" / "radiomics.skops").unlink()
    with pytest.raises(UserError, match="missing"):
        load_bundle(copy)


def test_empty_files_does_not_switch_the_checksums_off(trained_bundle, tmp_path, capsys):
    copy = _copy(trained_bundle, tmp_path)
    man = _manifest(copy)
    man["files"] = {}
    _write_manifest(copy, man)
    _refused_everywhere(copy, capsys, "'files' is empty")


def test_a_file_missing_from_the_list_is_refused(trained_bundle, tmp_path, capsys):
    copy = _copy(trained_bundle, tmp_path)
    man = _manifest(copy)
    del man["files"]["models/radiomics.skops"]
    _write_manifest(copy, man)
    _refused_everywhere(copy, capsys, "not listed with a checksum")


def test_an_unlisted_extra_file_is_refused(trained_bundle, tmp_path, capsys):
    copy = _copy(trained_bundle, tmp_path)
    (copy / "models" / "extra.skops").write_bytes((copy / "models" / "radiomics.skops").read_bytes())
    _refused_everywhere(copy, capsys, r"models/extra\.skops is not part of the bundle")


@pytest.mark.parametrize("field,value", [
    ("model", "../outside.skops"),
    ("params", "/etc/passwd"),
    ("params", "../outside.yaml"),
])
def test_paths_outside_the_bundle_are_refused_even_with_a_checksum(trained_bundle, tmp_path, capsys, field, value):
    copy = _copy(trained_bundle, tmp_path)
    man = _manifest(copy)
    outside = (copy / value).resolve() if not value.startswith("/") else Path(value)
    if not value.startswith("/"):
        source = copy / ("models/radiomics.skops" if field == "model" else "radiomics_params.yaml")
        outside.write_bytes(source.read_bytes())
    if field == "model":
        man["models"][man["primary_model"]]["file"] = value
    else:
        man["radiomics"]["params_file"] = value
    man["files"][value] = sha256_file(outside)
    _write_manifest(copy, man)
    _refused_everywhere(copy, capsys, "outside the bundle")


def test_a_link_leading_outside_is_refused(trained_bundle, tmp_path, capsys):
    copy = _copy(trained_bundle, tmp_path)
    target = tmp_path / "elsewhere.yaml"
    shutil.move(copy / "radiomics_params.yaml", target)
    (copy / "radiomics_params.yaml").symlink_to(target)
    _refused_everywhere(copy, capsys, "leads outside the bundle")


# ---------------------------------------------------------------------------------------
# The manifest's schema: one-line errors, never a traceback


def _deep(n: int):
    o: object = 1
    for _ in range(n):
        o = [o]
    return o


SCHEMA_CASES = {
    "a list": (lambda m: [m], "must be an object, not a list"),
    "deep nesting": (lambda m: {**m, "cohort": _deep(100)}, "nested deeper"),
    "very deep nesting": (lambda m: "[" * 100000 + "]" * 100000, "damaged|nested deeper"),
    "files as a list": (lambda m: {**m, "files": list(m["files"])}, "'files' must be an object, not a list"),
    "model without features": (lambda m: {**m, "models": {k: {kk: vv for kk, vv in v.items() if kk != "features"}
                                                          for k, v in m["models"].items()}},
                               r"features must be a list, not null"),
    "features not a list": (lambda m: {**m, "models": {k: {**v, "features": "abc"} for k, v in m["models"].items()}},
                            "features must be a list, not a string"),
    "threshold a string": (lambda m: {**m, "models": {k: {**v, "threshold": "0.5"} for k, v in m["models"].items()}},
                           "threshold must be a finite number"),
    "no models": (lambda m: {**m, "models": {}}, "'models' is empty"),
    "unknown primary model": (lambda m: {**m, "primary_model": "nope"}, "'nope' is not one of the bundle's models"),
    "a checksum that is not one": (lambda m: {**m, "files": {k: "abc" for k in m["files"]}}, "must be a SHA-256"),
    "software versions not text": (lambda m: {**m, "software": {"scikit-learn": 1.8}}, "must be a non-empty string"),
    "radiomics missing": (lambda m: {k: v for k, v in m.items() if k != "radiomics"}, "'radiomics' must be an object"),
    "not JSON": (lambda m: "{ not json", "damaged"),
}


@pytest.mark.parametrize("case", sorted(SCHEMA_CASES))
def test_malformed_manifests_are_one_line_errors(trained_bundle, tmp_path, capsys, case):
    change, match = SCHEMA_CASES[case]
    copy = _copy(trained_bundle, tmp_path)
    _write_manifest(copy, change(_manifest(copy)))
    _refused_everywhere(copy, capsys, match)


def _rewrite_safetensors_metadata(path: Path, key: str, value: str) -> None:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    header["__metadata__"][key] = value
    # keep the tensors' offsets: they are relative to the end of the header
    text = json.dumps(header, separators=(",", ":")).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + n:])


def test_safetensors_metadata_that_is_not_json_is_refused(fused_bundle, tmp_path, capsys):
    copy = _copy(fused_bundle, tmp_path)
    rel = _manifest(copy)["deep"]["file"]
    _rewrite_safetensors_metadata(copy / rel, "input", "{not json")
    _resign(copy, rel)
    _refused_everywhere(copy, capsys, "metadata 'input' is not JSON")


# ---------------------------------------------------------------------------------------
# The skops allow-list: exactly TRUSTED_TYPES


def test_bundle_with_disallowed_types_is_not_loaded(trained_bundle, tmp_path, capsys):
    """A .skops file holding a type outside the allow-list is refused even with a valid checksum."""
    import skops.io as sio
    from sklearn.svm import SVC

    copy = _copy(trained_bundle, tmp_path)
    sio.dump(SVC().fit([[0.0], [1.0]], [0, 1]), copy / "models" / "radiomics.skops")
    _resign(copy, "models/radiomics.skops")
    _refused_everywhere(copy, capsys, "not allowed")


def test_a_replaced_predict_proba_is_never_called(trained_bundle, tmp_path, capsys):
    """The estimator's predict_proba replaced by ``"{}".format`` (a method skops' own
    get_untrusted_types lists, and which the old loader therefore trusted and called)."""
    import skops.io as sio

    copy = _copy(trained_bundle, tmp_path)
    for rel in [e["file"] for e in _manifest(copy)["models"].values()]:
        p = copy / rel
        estimator = sio.load(p, trusted=sio.get_untrusted_types(file=p))
        estimator.predict_proba = "{}".format
        sio.dump(estimator, p)
        _resign(copy, rel)
        # what the old loader trusted: skops' whole list, the method included
        assert set(sio.get_untrusted_types(file=p)) - set(TRUSTED_TYPES)
    _refused_everywhere(copy, capsys, "not allowed|refused|replaces")


# ---------------------------------------------------------------------------------------
# Recorded package versions: one stated rule each


def test_every_recorded_package_has_a_rule():
    assert set(software_versions()) <= set(VERSION_RULES)
    assert VERSION_RULES["scikit-learn"] == "minor" and VERSION_RULES["pyradiomics"] == "exact"
    assert VERSION_RULES["torch"] == "major" and VERSION_RULES["numpy"] == "major"


@pytest.mark.parametrize("package,made,now,ok", [
    ("scikit-learn", "1.8.0", "1.8.2", True), ("scikit-learn", "1.8.0", "1.9.0", False),
    ("pyradiomics", "3.1.0", "3.1.0", True), ("pyradiomics", "3.1.0", "3.1.1", False),
    ("torch", "2.13.0", "2.1.0+cpu", True), ("torch", "2.13.0", "3.0.0", False),
    ("numpy", "2.3.1", "2.0.0", True), ("numpy", "1.26.4", "2.0.0", False),
    ("monai", "1.4.0", "1.5.0", False), ("pandas", "2.0.0", "3.0.0", True), ("python", "3.11.2", "3.13.1", True),
])
def test_version_rules(package, made, now, ok):
    assert version_compatible(package, made, now) is ok


def test_bundle_from_incompatible_version_is_refused(trained_bundle, tmp_path, capsys):
    copy = _copy(trained_bundle, tmp_path)
    man = _manifest(copy)
    man["software"]["scikit-learn"] = "0.24.2"
    _write_manifest(copy, man)
    _refused_everywhere(copy, capsys, r"scikit-learn 0\.24\.2 .*same major\.minor")
    man = _manifest(copy)
    man["software"]["scikit-learn"] = software_versions()["scikit-learn"]
    man["software"]["numpy"] = "1.0.0"
    _write_manifest(copy, man)
    _refused_everywhere(copy, capsys, r"numpy 1\.0\.0 .*same major version")
    man["software"]["numpy"] = software_versions()["numpy"]
    man["format_version"] = 99
    _write_manifest(copy, man)
    _refused_everywhere(copy, capsys, "format version 99")
