"""Bad inputs and faults for the table-driven suite (issue 12): every command x every bad
input class must be refused cleanly -- exit 2, exactly one ``error:`` line on stderr, no
traceback, inputs and existing files byte-identical afterwards, nothing half-written.

What is here
------------
1. **Generators** of bad inputs as real files: ``make(kind, folder)`` for every name in
   :data:`BAD_INPUTS` (grouped as :data:`IMAGE_FAULTS`, :data:`MASK_FAULTS`,
   :data:`CSV_FAULTS`, :data:`DICOM_FAULTS`), plus good inputs to pair them with
   (:func:`good_image`, :func:`good_mask`, :func:`good_csv`, :func:`write_dicom_series`).
2. **Runners**: :func:`run_tool` runs a console command (``hrmm``, ``annotation-qc``,
   ``stroke-lesion``; the entry points of this virtual environment) in a subprocess;
   :func:`run_in_process` calls a library function through ``errors.run_cli`` (what the
   tools do). Both hash every existing path of the command line (and ``watch=``) first.
   :func:`assert_refused` then checks exit 2, one ``error:`` line, no traceback, no hidden
   temporary name in the message, the listed ``inputs``/``existing`` files unchanged,
   ``absent`` paths not created and no temporary files left in ``no_temps_in``.
3. **Fixtures**: ``full_disk`` (a small tmpfs mounted by the test when running as root;
   skipped with the reason otherwise) and ``read_only_dir`` (a read-only tmpfs as root, a
   chmod 555 folder otherwise).

Adding rows for a command (in your own file, e.g. ``Testing/faults/test_faults_hrmm.py``)::

    import pytest
    import faultlib as fl
    from faultlib import full_disk  # noqa: F401  (pytest fixture)

    @pytest.mark.parametrize("kind", fl.IMAGE_FAULTS)
    def test_extract_refuses_bad_image(tmp_path, kind):
        mask = fl.good_mask(tmp_path)
        bad = fl.make(kind, tmp_path)
        out = tmp_path / "features.csv"
        res = fl.run_tool(["hrmm", "extract", "--image", bad, "--mask", mask, "--out", out])
        fl.assert_refused(res, inputs=[mask] + ([bad] if bad.exists() else []), absent=[out],
                          no_temps_in=[tmp_path])

    def test_extract_on_full_disk(tmp_path, full_disk):
        image, mask = fl.good_image(tmp_path), fl.good_mask(tmp_path)
        full_disk.fill()                       # 0 bytes left
        out = full_disk.path / "features.csv"
        res = fl.run_tool(["hrmm", "extract", "--image", image, "--mask", mask, "--out", out])
        fl.assert_refused(res, inputs=[image, mask], absent=[out], no_temps_in=[full_disk.path])

Test files in Testing/faults/ import ``faultlib`` directly (pytest's prepend import mode puts
their folder on ``sys.path``); elsewhere add ``Testing/faults`` to ``sys.path`` first.
Keep each row fast: the generated images are a few kB.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import shutil
import struct
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pytest
import SimpleITK as sitk

#: The grid of the generated images (ITK order x, y, z), anisotropic and not at the origin so
#: that a wrong axis order or spacing shows.
SIZE = (14, 12, 10)
SPACING = (0.8, 0.9, 3.0)
ORIGIN = (-10.0, 20.0, 5.0)


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _on_grid(arr: np.ndarray, spacing=SPACING, origin=ORIGIN, direction=None, vector=False) -> sitk.Image:
    img = sitk.GetImageFromArray(arr, isVector=vector)
    n = img.GetDimension()
    img.SetSpacing(tuple(spacing)[:n] + (1.0,) * max(0, n - len(spacing)))
    img.SetOrigin(tuple(origin)[:n] + (0.0,) * max(0, n - len(origin)))
    if direction is not None:
        img.SetDirection(direction)
    return img


def image_array(seed: int = 0) -> np.ndarray:
    """A smooth positive float32 'MR' volume, numpy order (z, y, x) of :data:`SIZE`."""
    z, y, x = np.meshgrid(*[np.linspace(-1, 1, s) for s in SIZE[::-1]], indexing="ij")
    base = 200 + 100 * np.exp(-(x ** 2 + y ** 2 + z ** 2) * 2)
    return (base + 5 * _rng(seed).standard_normal(base.shape)).astype(np.float32)


def mask_array() -> np.ndarray:
    """A binary blob (uint8) inside :func:`image_array`'s volume."""
    m = np.zeros(SIZE[::-1], np.uint8)
    m[3:7, 4:9, 4:10] = 1
    return m


def good_image(folder: Path, name: str = "image.nii.gz", seed: int = 0) -> Path:
    p = Path(folder) / name
    sitk.WriteImage(_on_grid(image_array(seed)), str(p))
    return p


def good_mask(folder: Path, name: str = "mask.nii.gz") -> Path:
    p = Path(folder) / name
    sitk.WriteImage(_on_grid(mask_array()), str(p))
    return p


def good_csv(folder: Path, name: str = "table.csv") -> Path:
    return _text(folder, name, "case_id,feature_a,feature_b\nc1,1.0,2.0\nc2,1.5,2.5\nc3,0.5,3.5\n")


# ---------------------------------------------------------------------------------------
# bad inputs: each takes a folder and returns the path to give to the command


def missing_file(folder: Path) -> Path:
    return Path(folder) / "does_not_exist.nii.gz"


def folder_instead_of_file(folder: Path) -> Path:
    p = Path(folder) / "a_folder.nii.gz"
    p.mkdir()
    return p


def empty_file(folder: Path) -> Path:
    p = Path(folder) / "empty.nii.gz"
    p.write_bytes(b"")
    return p


def binary_garbage(folder: Path) -> Path:
    p = Path(folder) / "garbage.nii.gz"
    p.write_bytes(_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    return p


def truncated_nii_gz(folder: Path) -> Path:
    p = good_image(folder, "truncated.nii.gz")
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    return p


def truncated_nii(folder: Path) -> Path:
    p = Path(folder) / "truncated.nii"
    sitk.WriteImage(_on_grid(image_array()), str(p))
    data = p.read_bytes()
    p.write_bytes(data[: 352 + (len(data) - 352) // 2])
    return p


def image_2d(folder: Path) -> Path:
    p = Path(folder) / "slice_2d.nii.gz"
    sitk.WriteImage(_on_grid(image_array()[5]), str(p))
    return p


def image_4d(folder: Path) -> Path:
    p = Path(folder) / "series_4d.nii.gz"
    arr = np.stack([image_array(s) for s in range(3)])
    sitk.WriteImage(_on_grid(arr), str(p))
    return p


def vector_image(folder: Path) -> Path:
    p = Path(folder) / "rgb.nrrd"
    arr = np.stack([image_array(s) for s in range(3)], axis=-1)
    sitk.WriteImage(_on_grid(arr, vector=True), str(p))
    return p


def nan_voxels(folder: Path) -> Path:
    p = Path(folder) / "nan.nii.gz"
    arr = image_array()
    arr[5, 6, 7] = np.nan
    arr[1, 1, 1] = np.inf
    sitk.WriteImage(_on_grid(arr), str(p))
    return p


def _patch_pixdim(p: Path, index: int, value: float) -> None:
    """Set pixdim[index] in the header of an uncompressed or gzipped NIfTI-1 file."""
    raw = p.read_bytes()
    gz = raw[:2] == b"\x1f\x8b"
    data = bytearray(gzip.decompress(raw) if gz else raw)
    endian = "<" if struct.unpack("<i", data[:4])[0] == 348 else ">"
    struct.pack_into(endian + "f", data, 76 + 4 * index, value)
    p.write_bytes(gzip.compress(bytes(data)) if gz else bytes(data))


def zero_pixdim(folder: Path) -> Path:
    p = good_image(folder, "zero_pixdim.nii.gz")
    _patch_pixdim(p, 2, 0.0)
    return p


def negative_pixdim(folder: Path) -> Path:
    p = good_image(folder, "negative_pixdim.nii")
    _patch_pixdim(p, 3, -3.0)
    return p


def non_orthogonal_direction(folder: Path) -> Path:
    p = Path(folder) / "sheared.nrrd"
    sitk.WriteImage(_on_grid(image_array(), direction=(1, 0.5, 0, 0, 1, 0, 0, 0, 1)), str(p))
    return p


def intensity_as_mask(folder: Path) -> Path:
    p = Path(folder) / "intensity_as_mask.nii.gz"
    sitk.WriteImage(_on_grid((image_array() * 10).astype(np.int16)), str(p))
    return p


def float_mask_half(folder: Path) -> Path:
    p = Path(folder) / "soft_mask.nii.gz"
    m = mask_array().astype(np.float32)
    m[3:5] *= 0.5
    sitk.WriteImage(_on_grid(m), str(p))
    return p


def negative_labels(folder: Path) -> Path:
    p = Path(folder) / "negative_labels.nii.gz"
    m = mask_array().astype(np.int16)
    m[0, 0, :3] = -1
    sitk.WriteImage(_on_grid(m), str(p))
    return p


def nan_mask(folder: Path) -> Path:
    p = Path(folder) / "nan_mask.nii.gz"
    m = mask_array().astype(np.float32)
    m[0, 0, 0] = np.nan
    sitk.WriteImage(_on_grid(m), str(p))
    return p


def empty_mask(folder: Path) -> Path:
    p = Path(folder) / "empty_mask.nii.gz"
    sitk.WriteImage(_on_grid(np.zeros(SIZE[::-1], np.uint8)), str(p))
    return p


def _text(folder: Path, name: str, text: str) -> Path:
    p = Path(folder) / name
    p.write_text(text, encoding="utf-8")
    return p


def semicolon_csv(folder: Path) -> Path:
    return _text(folder, "semicolon.csv", "case_id;feature_a;feature_b\nc1;1,0;2,0\nc2;1,5;2,5\n")


def tab_csv(folder: Path) -> Path:
    return _text(folder, "tabs.csv", "case_id\tfeature_a\tfeature_b\nc1\t1.0\t2.0\nc2\t1.5\t2.5\n")


def duplicate_column_csv(folder: Path) -> Path:
    return _text(folder, "duplicate_columns.csv", "case_id,feature_a,feature_a\nc1,1.0,2.0\nc2,1.5,2.5\n")


def header_only_csv(folder: Path) -> Path:
    return _text(folder, "header_only.csv", "case_id,feature_a\n")


def binary_csv(folder: Path) -> Path:
    p = Path(folder) / "binary.csv"
    p.write_bytes(b"\x00\x01\x02" + _rng(3).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    return p


def write_dicom_series(folder: Path, array: np.ndarray, *, spacing=(0.8, 0.9, 3.0), origin=(0.0, 0.0, 0.0),
                       direction=(1, 0, 0, 0, 1, 0, 0, 0, 1), series_uid: str = "1.2.826.0.1.3680043.2.1125.1",
                       description: str = "T2 SAG", prefix: str = "slice", positions=None,
                       names: Callable[[int], str] | None = None) -> list[Path]:
    """Write ``array`` (numpy z, y, x; int16) as a DICOM MR series, one file per slice.

    ``positions`` overrides the slice positions (mm along the slice normal) to make gaps or
    duplicates; ``names(i)`` the file name of slice i (to store them out of order)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    d = np.asarray(direction, float).reshape(3, 3)
    # DICOM has no slice direction of its own: it is row x column, so the grid must be right-handed
    assert np.allclose(np.cross(d[:, 0], d[:, 1]), d[:, 2]), "DICOM needs a right-handed direction"
    iop = "\\".join(f"{v:.6f}" for v in list(d[:, 0]) + list(d[:, 1]))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    study_uid = series_uid.rsplit(".", 1)[0] + ".9"
    files = []
    n = array.shape[0]
    for i in range(n):
        z = positions[i] if positions is not None else i * spacing[2]
        pos = np.asarray(origin, float) + d[:, 2] * z
        sl = sitk.GetImageFromArray(array[i].astype(np.int16))
        sl.SetSpacing(spacing[:2])
        tags = {
            "0008|0060": "MR", "0008|0016": "1.2.840.10008.5.1.4.1.1.4",
            "0008|0018": f"{series_uid}.{i + 1}", "0020|000d": study_uid, "0020|000e": series_uid,
            "0008|103e": description, "0020|0011": "1", "0020|0013": str(i + 1),
            "0020|0032": "\\".join(f"{v:.6f}" for v in pos), "0020|0037": iop,
            "0028|0030": f"{spacing[1]:.6f}\\{spacing[0]:.6f}", "0018|0050": f"{spacing[2]:.6f}",
            "0010|0010": "Faults^Test", "0010|0020": "FAULT01",
        }
        for k, v in tags.items():
            sl.SetMetaData(k, v)
        p = folder / (names(i) if names else f"{prefix}_{i:03d}.dcm")
        writer.SetFileName(str(p))
        writer.Execute(sl)
        files.append(p)
    return files


def dicom_array(n: int = 6) -> np.ndarray:
    return (image_array()[:n] * 4).astype(np.int16)


def dicom_two_series(folder: Path) -> Path:
    p = Path(folder) / "two_series"
    write_dicom_series(p, dicom_array(), series_uid="1.2.826.0.1.3680043.2.1125.11", description="T1 SAG", prefix="t1")
    write_dicom_series(p, dicom_array(), series_uid="1.2.826.0.1.3680043.2.1125.22", description="T2 SAG", prefix="t2")
    return p


def dicom_missing_slice(folder: Path) -> Path:
    p = Path(folder) / "missing_slice"
    write_dicom_series(p, dicom_array(), positions=[0, 3, 6, 12, 15, 18])
    return p


def dicom_empty_folder(folder: Path) -> Path:
    p = Path(folder) / "no_dicom"
    p.mkdir()
    (p / "notes.txt").write_text("not an image\n")
    return p


IMAGE_FAULTS = ["missing file", "folder instead of file", "empty file", "binary garbage", "truncated .nii.gz",
                "truncated .nii", "2-D image", "4-D image", "vector image", "NaN voxels", "zero pixdim",
                "negative pixdim", "non-orthogonal direction"]
MASK_FAULTS = ["intensity image as mask", "float mask 0.5", "negative labels", "NaN mask", "empty mask"]
CSV_FAULTS = ["semicolon CSV", "tab CSV", "duplicate-column CSV", "binary CSV", "header-only CSV"]
DICOM_FAULTS = ["DICOM folder with two series", "DICOM series with a missing slice", "folder without DICOM"]

BAD_INPUTS: dict[str, Callable[[Path], Path]] = {
    "missing file": missing_file, "folder instead of file": folder_instead_of_file, "empty file": empty_file,
    "binary garbage": binary_garbage, "truncated .nii.gz": truncated_nii_gz, "truncated .nii": truncated_nii,
    "2-D image": image_2d, "4-D image": image_4d, "vector image": vector_image, "NaN voxels": nan_voxels,
    "zero pixdim": zero_pixdim, "negative pixdim": negative_pixdim,
    "non-orthogonal direction": non_orthogonal_direction,
    "intensity image as mask": intensity_as_mask, "float mask 0.5": float_mask_half,
    "negative labels": negative_labels, "NaN mask": nan_mask, "empty mask": empty_mask,
    "semicolon CSV": semicolon_csv, "tab CSV": tab_csv, "duplicate-column CSV": duplicate_column_csv,
    "binary CSV": binary_csv, "header-only CSV": header_only_csv,
    "DICOM folder with two series": dicom_two_series, "DICOM series with a missing slice": dicom_missing_slice,
    "folder without DICOM": dicom_empty_folder,
}


def make(kind: str, folder: Path) -> Path:
    """The bad input ``kind`` (a key of :data:`BAD_INPUTS`) created in ``folder``."""
    sub = Path(folder) / ("bad_" + "".join(c if c.isalnum() else "_" for c in kind))
    sub.mkdir(parents=True, exist_ok=True)
    return BAD_INPUTS[kind](sub)


# ---------------------------------------------------------------------------------------
# running commands and checking the refusal


def _digest(p: Path):
    if p.is_dir():
        return {str(c.relative_to(p)): _digest(c) for c in sorted(p.rglob("*")) if c.is_file()}
    if p.is_file():
        return hashlib.sha256(p.read_bytes()).hexdigest()
    return None


def snapshot(paths: Iterable) -> dict:
    """{path: sha256 (files) / {relative: sha256} (folders)} of the paths that exist."""
    out = {}
    for a in paths:
        p = Path(os.fspath(a)) if isinstance(a, (str, os.PathLike)) else None
        try:
            if p is not None and str(p) and p.exists():
                out[str(p.resolve())] = _digest(p)
        except OSError:  # e.g. a name too long to exist
            continue
    return out


@dataclass
class Result:
    argv: list
    rc: int
    stdout: str
    stderr: str
    before: dict = field(default_factory=dict)
    seconds: float = 0.0

    def error_lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.startswith("error:")]


def _tool_command(name: str) -> list[str]:
    script = Path(sys.executable).parent / name
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    from importlib.metadata import entry_points

    for ep in entry_points(group="console_scripts"):
        if ep.name == name:
            mod, func = ep.value.split(":")
            return [sys.executable, "-c", f"import sys; sys.argv[0] = {name!r}; from {mod} import {func} as m; "
                                          "sys.exit(m())"]
    if name in ("python", "python3"):
        return [sys.executable]
    raise LookupError(f"no console command {name!r} in this environment")


def run_tool(argv: list, *, cwd=None, env: dict | None = None, timeout: float = 180, watch: Iterable = (),
             stdin: str | None = None) -> Result:
    """Run ``argv`` (``argv[0]`` a console command of this environment, e.g. ``"hrmm"``) in
    a subprocess; every argument that is an existing path, and every path of ``watch``, is
    hashed before the run (see :func:`assert_refused`)."""
    argv = [os.fspath(a) if isinstance(a, os.PathLike) else str(a) for a in argv]
    before = snapshot(list(argv[1:]) + list(watch))
    full_env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "PYTHONDONTWRITEBYTECODE": "1",
                "OMP_NUM_THREADS": "1", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1", **(env or {})}
    t0 = time.monotonic()
    proc = subprocess.run(_tool_command(argv[0]) + argv[1:], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=timeout, input=stdin)
    return Result(argv, proc.returncode, proc.stdout, proc.stderr, before, time.monotonic() - t0)


def run_in_process(fn: Callable, *args, watch: Iterable = (), **kwargs) -> Result:
    """Call ``fn(*args, **kwargs)`` through ``errors.run_cli`` in this process (what every
    tool's ``main`` does), capturing stdout/stderr; an exception run_cli lets through is
    recorded as a traceback (and fails :func:`assert_refused`)."""
    from ClinicalMRICommonLib.errors import run_cli

    paths = [a for a in list(args) + list(kwargs.values()) if isinstance(a, (str, os.PathLike))]
    before = snapshot(paths + list(watch))
    out, err = io.StringIO(), io.StringIO()
    t0 = time.monotonic()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = run_cli(lambda _argv: (fn(*args, **kwargs), 0)[1], [])
        except BaseException:  # noqa: BLE001 - what a user would see as a traceback
            traceback.print_exc(file=err)
            rc = 1
    return Result([getattr(fn, "__name__", str(fn))] + [str(a) for a in args], rc, out.getvalue(), err.getvalue(),
                  before, time.monotonic() - t0)


def assert_refused(result: Result, *, inputs: Iterable = (), existing: Iterable = (), absent: Iterable = (),
                   no_temps_in: Iterable = (), mentions: Iterable = ()) -> str:
    """The command was refused cleanly; returns its one error line.

    - exit status 2, exactly one ``error:`` line on stderr, no ``Traceback`` anywhere;
    - the error line names no hidden temporary file and contains every text of ``mentions``
      (e.g. the bad file's name);
    - every path of ``inputs`` and ``existing`` (hashed before the run: on the command line
      or in ``watch=``) is byte-identical afterwards;
    - no path of ``absent`` exists (nothing was published) and no temporary file of the atomic
      writer is left in the folders of ``no_temps_in``."""
    where = f"\ncommand: {result.argv}\nexit: {result.rc}\nstdout: {result.stdout[-2000:]}\nstderr: {result.stderr[-4000:]}"
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout, "traceback" + where
    assert result.rc == 2, f"exit status {result.rc}, expected 2" + where
    lines = result.error_lines()
    assert len(lines) == 1, f"{len(lines)} 'error:' lines, expected exactly one" + where
    line = lines[0]
    assert ".tmp-" not in line and ".tmp." not in line, "the message names a hidden temporary file" + where
    for text in mentions:
        assert str(text) in line, f"the error line does not mention {text!r}" + where
    for p in list(inputs) + list(existing):
        key = str(Path(os.fspath(p)).resolve())
        assert key in result.before, f"{p} was not hashed before the run: pass it in watch=" + where
        assert _digest(Path(key)) == result.before[key], f"{p} changed" + where
    for p in absent:
        with contextlib.suppress(OSError):
            assert not Path(os.fspath(p)).exists(), f"{p} was created" + where
    for folder in no_temps_in:
        left = [c.name for c in Path(os.fspath(folder)).rglob(".tmp*")] if Path(os.fspath(folder)).is_dir() else []
        assert not left, f"temporary files left in {folder}: {left}" + where
    return line


# ---------------------------------------------------------------------------------------
# fixtures: a full disk and a read-only folder


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def _mount_tmpfs(path: Path, size: str, options: str = "") -> str | None:
    """Mount a tmpfs on ``path``; None on success, else the reason."""
    if not _is_root():
        return "needs root to mount a small tmpfs (run the suite as root, e.g. in the CI container)"
    if shutil.which("mount") is None:
        return "no mount command"
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (f",{options}" if options else "")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        return f"mount -t tmpfs failed: {proc.stderr.strip()[:200]}"
    return None


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


class FullDisk:
    """A small mounted tmpfs: ``path`` (a folder on it), ``fill(leave)`` to use up all but
    ``leave`` bytes, ``free()`` the bytes left."""

    def __init__(self, path: Path):
        self.path = path
        self._filler = path / "filler.bin"

    def free(self) -> int:
        st = os.statvfs(self.path)
        return st.f_bavail * st.f_frsize

    def fill(self, leave: int = 0) -> int:
        """Fill the disk until at most ``leave`` bytes are free; returns the bytes free."""
        with open(self._filler, "ab") as f:
            while self.free() > leave:
                chunk = max(1, min(1 << 20, self.free() - leave))
                try:
                    f.write(b"\0" * chunk)
                    f.flush()
                except OSError:
                    break
        return self.free()

    def empty(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._filler.unlink()


@pytest.fixture
def full_disk(tmp_path):
    """A 1 MiB tmpfs mounted in the test's tmp folder (root only; skipped otherwise)."""
    mnt = tmp_path / "small_disk"
    why = _mount_tmpfs(mnt, "1m")
    if why:
        pytest.skip(f"full-disk test skipped: {why}")
    try:
        yield FullDisk(mnt)
    finally:
        _umount(mnt)


class ReadOnlyDir:
    def __init__(self, path: Path, mounted: bool):
        self.path, self.mounted = path, mounted

    def seal(self) -> Path:
        """Make the folder read-only (after putting files in it); returns it."""
        if self.mounted:
            proc = subprocess.run(["mount", "-o", "remount,ro", str(self.path)], capture_output=True, text=True)
            if proc.returncode != 0:
                pytest.skip(f"read-only remount failed: {proc.stderr.strip()[:200]}")
        else:
            for p in [self.path] + [c for c in self.path.rglob("*") if c.is_dir()]:
                p.chmod(0o555)
        return self.path


@pytest.fixture
def read_only_dir(tmp_path):
    """A folder that becomes read-only on ``.seal()``: a tmpfs remounted read-only as root
    (EROFS), a chmod 555 folder otherwise (EACCES)."""
    mnt = tmp_path / "read_only"
    mounted = _mount_tmpfs(mnt, "1m") is None
    if not mounted:
        mnt.mkdir(exist_ok=True)
    try:
        yield ReadOnlyDir(mnt, mounted)
    finally:
        if mounted:
            _umount(mnt)
        else:
            for p in [mnt] + [c for c in mnt.rglob("*") if c.is_dir()]:
                with contextlib.suppress(OSError):
                    p.chmod(0o755)
