"""Shared plumbing for the three libraries: user-facing errors, image reading with clear
messages, grid checks and atomic writes.

AnnotationQCLib is the bottom of the extension's dependency graph (HRMMPredictLib and
StrokeLesionLib both call its agreement functions), so the small helpers every library
needs live here, once.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import SimpleITK as sitk


class UserError(Exception):
    """A problem with the user's input, reported as one line without a traceback.

    The message names the file or value and says what to do.
    """


def fail(message: str) -> UserError:
    """Build a UserError (``raise fail("...")`` reads well at call sites)."""
    return UserError(message)


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Run a command-line entry point; turn UserError (and a few common OS errors) into
    a one-line ``error: ...`` on stderr and exit status 2."""
    try:
        return int(main(argv) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which closed early
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except (FileNotFoundError, PermissionError, IsADirectoryError) as exc:
        print(f"error: {exc.filename or ''}: {exc.strerror or exc}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------------------------
# Images


def read_image(path: str | os.PathLike, what: str = "image") -> sitk.Image:
    """Read an image (NIfTI, NRRD, MHA, ...) or raise a UserError naming the file."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{what} file not found: {p}")
    if p.is_dir():
        raise UserError(f"{what} path is a folder, expected an image file: {p}")
    try:
        img = sitk.ReadImage(str(p))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        hint = first[-1] if first else "unreadable"
        raise UserError(f"{what} file {p} could not be read as an image ({hint[:120]}); "
                        "check that it is a complete NIfTI/NRRD file") from None
    _check_complete(p, img, what)
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise UserError(f"{what} file {p} has {img.GetNumberOfComponentsPerPixel()} components per voxel; "
                        "expected a scalar image")
    return img


def _check_complete(p: Path, img: sitk.Image, what: str) -> None:
    """ITK fills a truncated file's missing voxels silently; refuse such files.

    Gzip-compressed files (.nii.gz, .mha/.nrrd with .gz) must decompress to the end; an
    uncompressed NIfTI must hold at least the voxel bytes its header announces."""
    name = p.name.lower()
    problem = None
    if name.endswith(".gz"):
        try:
            with gzip.open(p, "rb") as fh:
                while fh.read(1 << 22):
                    pass
        except (EOFError, OSError, zlib.error):
            problem = "is truncated or damaged (the compressed data ends early)"
    elif name.endswith(".nii"):
        n_bytes = int(np.prod(img.GetSize())) * img.GetNumberOfComponentsPerPixel() * \
            sitk.GetArrayViewFromImage(img).dtype.itemsize
        if p.stat().st_size < 348 + n_bytes:
            problem = "is truncated (smaller than its header announces)"
    if problem:
        raise UserError(f"{what} file {p} {problem}; copy or export it again")


def check_finite(img: sitk.Image, path: str | os.PathLike, what: str = "image") -> None:
    """Refuse images with NaN or infinite voxels.

    ITK's NIfTI reader turns NaN voxels into 0 without a word, so NIfTI files are checked
    on their raw data (nibabel) as well."""
    arr = sitk.GetArrayViewFromImage(img)
    name = str(path).lower()
    if name.endswith((".nii", ".nii.gz")) and Path(path).is_file():
        import nibabel as nib

        try:
            raw = np.asanyarray(nib.load(str(path)).dataobj)
        except Exception:  # unreadable for nibabel: ITK read it; keep ITK's view
            raw = None
        if raw is not None and np.issubdtype(raw.dtype, np.floating):
            arr = raw
    if np.issubdtype(arr.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        if bad:
            raise UserError(f"{what} file {path} has {bad} NaN/infinite voxels; fix or mask them before use")


def same_grid(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> bool:
    """True when two images share size, spacing, origin and direction (within tol)."""
    if a.GetSize() != b.GetSize():
        return False
    for x, y in ((a.GetSpacing(), b.GetSpacing()), (a.GetOrigin(), b.GetOrigin()),
                 (a.GetDirection(), b.GetDirection())):
        if not np.allclose(x, y, atol=tol, rtol=tol):
            return False
    return True


def grid_difference(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> str:
    """Describe how two grids differ (empty string when they match)."""
    parts = []
    if a.GetSize() != b.GetSize():
        parts.append(f"size {a.GetSize()} vs {b.GetSize()}")
    if not np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tol, rtol=tol):
        parts.append("spacing " + _fmt(a.GetSpacing()) + " vs " + _fmt(b.GetSpacing()))
    if not np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tol, rtol=tol):
        parts.append("origin " + _fmt(a.GetOrigin()) + " vs " + _fmt(b.GetOrigin()))
    if not np.allclose(a.GetDirection(), b.GetDirection(), atol=tol, rtol=tol):
        parts.append("direction differs")
    return ", ".join(parts)


def _fmt(v) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"


def resample_mask_to(mask: sitk.Image, reference: sitk.Image) -> sitk.Image:
    """Resample a label mask onto a reference grid with nearest-neighbour interpolation."""
    return sitk.Resample(mask, reference, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                         mask.GetPixelID())


def read_mask(path: str | os.PathLike, reference: sitk.Image | None = None, *, what: str = "ROI",
              resample: bool = False, min_voxels: int = 1, label: int | None = None) -> sitk.Image:
    """Read a binary/label mask and check it against a reference image.

    Returns a UInt8 mask (1 inside). With ``label`` only that label counts; otherwise any
    non-zero voxel. Raises UserError for other grids (unless ``resample``), empty masks
    and masks smaller than ``min_voxels``.
    """
    m = read_image(path, what)
    if reference is not None and not same_grid(m, reference):
        if not resample:
            raise UserError(f"{what} file {path} is on a different grid than the image "
                            f"({grid_difference(m, reference)}); pass --resample-roi to resample it "
                            "onto the image (nearest neighbour)")
        m = resample_mask_to(m, reference)
    arr = sitk.GetArrayFromImage(m)
    binary = (arr == label) if label is not None else (arr != 0)
    n = int(binary.sum())
    if n == 0:
        raise UserError(f"{what} file {path} is empty (no voxel labelled); draw the ROI and save it again")
    if n < min_voxels:
        raise UserError(f"{what} file {path} has only {n} voxels (at least {min_voxels} needed for "
                        "texture features); check that the right mask was given")
    out = sitk.GetImageFromArray(binary.astype(np.uint8))
    out.CopyInformation(m)
    return out


# ---------------------------------------------------------------------------------------
# Files


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    A crash or error leaves the original file untouched and removes the temporary one.
    The temporary name keeps the final suffix(es) so writers that look at the extension
    (SimpleITK, pandas) still work.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(final.suffixes) or ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name.split('.')[0]}.", suffix=suffix, dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    # mkstemp makes the file private (0600); give it the mode a normal open() would
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)
    try:
        yield tmp_path
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (hex), read in 1 MiB chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj, indent: int = 2) -> None:
    write_text_atomic(path, json.dumps(obj, indent=indent, sort_keys=False, default=_json_default) + "\n")


def write_image_atomic(img: sitk.Image, path: str | os.PathLike, compress: bool = True) -> None:
    with atomic_path(path) as tmp:
        sitk.WriteImage(img, str(tmp), compress)


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def json_safe(obj):
    """Plain JSON values from numpy scalars/arrays, with NaN and +/-inf as None (strict JSON:
    ``json.dumps(..., allow_nan=False)`` accepts the result), tuples as lists, paths as strings."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [json_safe(v) for v in obj.tolist()]
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if np.isfinite(f) else None
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    return obj


to_jsonable = json_safe  # older name, kept for callers
