"""Image input: one reader for every image path the tools take, with one set of checks.

:func:`read_image` reads NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd)
and DICOM series folders (:mod:`ClinicalMRICommonLib.dicom`), and refuses, with a UserError
naming the file and saying what to do:

- a missing path, an empty file, a file that is not an image, a folder without one DICOM series;
- an incomplete file: a truncated gzip stream, an uncompressed NIfTI shorter than its header
  says (ITK fills the missing voxels with zeros without a word);
- a NIfTI whose header gives a zero, negative or missing (NaN) voxel size ``pixdim`` (ITK
  silently reads 0 as 1 mm) -- the 348-byte NIfTI-1 / 540-byte NIfTI-2 header is parsed here,
  no nibabel needed;
- an image of the wrong dimension (``dims``, default 3: 2-D, 4-D refused with their size) or a
  vector/RGB image where a scalar one is needed;
- NaN or infinite voxels (``finite``), checked on the NIfTI file's raw data too, because ITK's
  NIfTI reader turns NaN into 0;
- a direction matrix that is not orthogonal (a sheared grid: physical positions would be wrong
  in every tool that assumes a rotation).

:func:`read_grid` gives the grid from the header only (DICOM folders too), with the same
header checks.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import UserError
from .grids import Grid

#: What the readers accept, for messages.
IMAGE_FORMATS = "NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd) or a DICOM series folder"

#: A direction matrix D is accepted when max |D^T D - I| is below this (NIfTI stores it as a
#: float32 quaternion; a sheared NRRD/MHA header is off by far more).
ORTHOGONALITY_TOLERANCE = 1e-3

_FINITE_MARK = "_clinicalmri_checked_finite"
_RAW_NONFINITE = "_clinicalmri_raw_nonfinite"


def read_image(path: str | os.PathLike, what: str = "image", *, dims: int | tuple | None = 3,
               finite: bool = True, scalar: bool = True) -> sitk.Image:
    """Read an image file or DICOM series folder and check it (see the module docstring).

    ``dims``: the accepted dimension(s): ``3`` (default), a tuple such as ``(3, 4)`` for a tool
    that takes 4-D series, or ``None`` for any. ``finite``: refuse NaN/inf voxels (default).
    ``scalar``: refuse images with several components per voxel (default).
    """
    p = _existing(path, what)
    if p.is_dir():
        from .dicom import read_series

        img = read_series(p, what)
        nifti = None
    else:
        _check_not_empty(p, what)
        _check_not_dicom_slice(p, what)
        nifti = _nifti_header(p, what)
        if nifti is not None:
            _check_pixdim(p, nifti, what)
        try:
            img = sitk.ReadImage(str(p))
        except RuntimeError as exc:
            raise _read_failure(p, exc, what, nifti) from None
        _check_complete(p, nifti, what)
    check_image(img, p, what, dims=dims, scalar=scalar)
    if finite:
        _check_finite(img, p, what, nifti)
    elif nifti is not None:
        with contextlib.suppress(AttributeError):
            setattr(img, _RAW_NONFINITE, (str(p), int(nifti.get("nonfinite", 0))))
    return img


def check_image(img, path, what: str = "image", *, dims: int | tuple | None = 3, scalar: bool = True) -> None:
    """The shape checks of :func:`read_image` for an image (or :class:`Grid`) from elsewhere:
    dimension, scalar voxels, positive spacing, orthogonal direction."""
    size = tuple(img.GetSize())
    shown = " x ".join(str(s) for s in size)
    ok_dims = None if dims is None else ((dims,) if isinstance(dims, int) else tuple(dims))
    if ok_dims is not None and len(size) not in ok_dims:
        want = " or ".join(f"{d}-D" for d in ok_dims)
        kind, todo = "", ""
        if len(size) == 4 and 3 in ok_dims:
            kind, todo = "a series of volumes, e.g. time points or b-values; ", ": give one 3-D volume"
        elif len(size) == 2:
            kind, todo = "a single slice, ", ": give the whole volume"
        raise UserError(f"{what} {path} is a {len(size)}-D image ({kind}size {shown}); expected a {want} image{todo}")
    if scalar and isinstance(img, sitk.Image) and img.GetNumberOfComponentsPerPixel() != 1:
        raise UserError(f"{what} {path} has {img.GetNumberOfComponentsPerPixel()} components per voxel (a vector or "
                        f"RGB image, size {shown}); expected a scalar (grey-value) image")
    spacing = np.asarray(img.GetSpacing(), float)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise UserError(f"{what} {path} has a zero, negative or missing voxel size {tuple(spacing)}; fix the header")
    n = len(size)
    d = np.asarray(img.GetDirection(), float).reshape(n, n)
    if not np.all(np.isfinite(d)) or np.abs(d.T @ d - np.eye(n)).max() > ORTHOGONALITY_TOLERANCE:
        raise UserError(f"{what} {path} has a non-orthogonal direction matrix (a sheared grid, "
                        f"{tuple(round(float(x), 4) for x in d.ravel())}); physical positions would be wrong: "
                        "resample it to a regular grid or fix its header")


def check_finite(img: sitk.Image, path: str | os.PathLike, what: str = "image") -> None:
    """Refuse images with NaN or infinite voxels.

    ITK's NIfTI reader turns NaN voxels into 0 without a word, so NIfTI files are checked on
    their raw data as well. An image that :func:`read_image` already checked is not checked
    again."""
    if getattr(img, _FINITE_MARK, None) == str(path):
        return
    p = Path(path)
    nifti = None
    if p.is_file():
        try:
            nifti = _nifti_header(p, what)
        except UserError:
            nifti = None
    _check_finite(img, p, what, nifti)


def read_grid(path: str | os.PathLike, what: str = "image", *, dims: int | tuple | None = 3,
              scalar: bool = True, components: bool = False):
    """The grid of an image file or DICOM series folder from its header(s), without reading
    its voxels; the header checks of :func:`read_image` (pixdim, an uncompressed file's size,
    dimension, scalar voxels, direction) apply.

    With ``components=True`` the result is ``(grid, number of components per voxel)``, so a
    caller that accepts vector images here (``scalar=False``, e.g. a validation that reports
    every problem at once) can still refuse or report them up front (1 for a scalar image; a
    DICOM series folder: ``SamplesPerPixel`` of its series, e.g. 3 for RGB)."""
    p = _existing(path, what)
    n_components = 1
    if p.is_dir():
        from .dicom import series_grid

        grid = series_grid(p, what)
        n_components = _dicom_samples_per_pixel(p)
        if scalar and n_components != 1:
            raise UserError(f"{what} {p} has {n_components} components per voxel (a colour DICOM series); "
                            "expected a scalar (grey-value) image")
    else:
        _check_not_empty(p, what)
        nifti = _nifti_header(p, what, scan=False)
        if nifti is not None:
            _check_pixdim(p, nifti, what)
            _check_complete(p, nifti, what)  # an uncompressed file's size (no voxels read)
        r = sitk.ImageFileReader()
        r.SetFileName(str(p))
        try:
            r.ReadImageInformation()
        except RuntimeError as exc:
            raise _read_failure(p, exc, what, nifti) from None
        grid = Grid(tuple(r.GetSize()), tuple(r.GetSpacing()), tuple(r.GetOrigin()), tuple(r.GetDirection()))
        n_components = int(r.GetNumberOfComponents())
        if scalar and n_components != 1:
            raise UserError(f"{what} {p} has {n_components} components per voxel (a vector or RGB "
                            f"image, size {' x '.join(map(str, grid.size))}); expected a scalar (grey-value) image")
    check_image(grid, p, what, dims=dims, scalar=False)
    return (grid, n_components) if components else grid


def _dicom_samples_per_pixel(folder: Path) -> int:
    """SamplesPerPixel (0028,0002) of the first DICOM file in ``folder`` (1 when absent)."""
    import pydicom

    for f in sorted(folder.iterdir()):
        if not f.is_file():
            continue
        try:
            ds = pydicom.dcmread(str(f), stop_before_pixels=True, specific_tags=["SamplesPerPixel"])
        except Exception:  # noqa: BLE001 - not a DICOM file: look at the next one
            continue
        return int(getattr(ds, "SamplesPerPixel", 1) or 1)
    return 1


# ---------------------------------------------------------------------------------------
# checks


def _existing(path, what: str) -> Path:
    if path is None or str(path).strip() in ("", "."):
        raise UserError(f"no {what} path given")
    p = Path(path)
    if not p.exists():
        raise UserError(f"{what} file not found: {p}")
    return p


def _check_not_empty(p: Path, what: str) -> None:
    if p.stat().st_size == 0:
        raise UserError(f"{what} file {p} is empty (0 bytes); copy or export it again")


def _check_not_dicom_slice(p: Path, what: str) -> None:
    """A single DICOM file of a multi-file series would be read as one slice: say so."""
    from .dicom import is_dicom_file, series_of_file

    if is_dicom_file(p):
        n = len(series_of_file(p))
        if n > 1:
            raise UserError(f"{what} {p} is one slice of a DICOM series of {n} files; give the folder "
                            f"{p.parent} instead to read the whole series")


def _read_failure(p: Path, exc: RuntimeError, what: str, nifti: dict | None = None) -> UserError:
    text = str(exc)
    if nifti is not None and nifti.get("version") == 2:
        return UserError(f"{what} file {p} is a NIfTI-2 file, which ITK (and so Slicer and these tools) cannot read; "
                         "save it as NIfTI-1 (e.g. with nibabel or dcm2niix)")
    if "Unable to determine ImageIO reader" in text:
        return UserError(f"{what} file {p} is not an image file that can be read ({IMAGE_FORMATS} expected); "
                         "check the path and the file")
    if "Zero-valued spacing" in text:
        return UserError(f"{what} file {p} has a zero voxel size in its header; fix the header")
    if "orthonormal" in text:
        return UserError(f"{what} file {p} has a non-orthogonal (sheared) orientation in its header; resample it to "
                         "a regular grid or fix its header")
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("Reason:")]
    hint = lines[-1].split("ITK ERROR:")[-1].strip() if lines else "unreadable"
    return UserError(f"{what} file {p} could not be read as an image: it is damaged or truncated ({hint[:120]}); "
                     "copy or export it again")


def _check_complete(p: Path, nifti: dict | None, what: str) -> None:
    """ITK fills a truncated file's missing voxels silently; refuse such files.

    Gzip-compressed files must decompress to the end; a NIfTI file must hold the voxel
    bytes its header announces."""
    name = p.name.lower()
    problem = None
    if nifti is not None:
        if nifti["available"] < nifti["needed"]:
            problem = (f"is truncated: it holds {nifti['available']} of the {nifti['needed']} voxel bytes "
                       "its header announces")
    elif name.endswith(".gz") and not gzip_complete(p):
        problem = "is truncated or damaged (the compressed data ends early)"
    if problem:
        raise UserError(f"{what} file {p} {problem}; copy or export it again")


def gzip_complete(path: str | os.PathLike) -> bool:
    """True when a gzip file decompresses to its end (a cut-short stream is not complete)."""
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 22):
                pass
    except (EOFError, OSError, zlib.error):
        return False
    return True


def _check_pixdim(p: Path, nifti: dict, what: str) -> None:
    n_spatial = max(1, min(3, nifti["ndim"]))
    pixdim = nifti["pixdim"][1:1 + n_spatial]
    bad = [float(x) for x in pixdim if not np.isfinite(x) or x <= 0]
    if bad:
        shown = ", ".join(f"{x:g}" for x in pixdim)
        raise UserError(f"{what} file {p} has a zero, negative or missing voxel size in its NIfTI header "
                        f"(pixdim {shown}); ITK would silently read it as 1 mm: fix the header or export "
                        "the image again")


def _check_finite(img: sitk.Image, p: Path, what: str, nifti: dict | None) -> None:
    bad = _count_nonfinite(img, nifti)
    if bad:
        raise UserError(f"{what} file {p} has {bad} NaN/infinite voxels; fix or mask them before use")
    with contextlib.suppress(AttributeError):
        setattr(img, _FINITE_MARK, str(p))


def _count_nonfinite(img: sitk.Image, nifti: dict | None) -> int:
    arr = sitk.GetArrayViewFromImage(img)
    bad = int(np.count_nonzero(~np.isfinite(arr))) if np.issubdtype(arr.dtype, np.floating) else 0
    return bad or (int(nifti.get("nonfinite", 0)) if nifti is not None else 0)


def nonfinite_voxels(img: sitk.Image, path: str | os.PathLike | None = None) -> int:
    """The number of NaN/inf voxels of an image, counting a NIfTI file's raw data as well
    (ITK's reader turns NaN into 0): what :func:`read_image` refuses with ``finite=True``;
    for callers such as the mask reader that say in their own words what NaN means."""
    known = getattr(img, _RAW_NONFINITE, None)
    if known is not None and (path is None or known[0] == str(path)):
        return _count_nonfinite(img, None) or known[1]
    nifti = None
    if path is not None and Path(path).is_file():
        with contextlib.suppress(UserError):
            nifti = _nifti_header(Path(path), "image")
    return _count_nonfinite(img, nifti)


# ---------------------------------------------------------------------------------------
# the NIfTI header, read here (ITK hides what it repairs)

_NIFTI_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 64: "f8", 256: "i1", 512: "u2", 768: "u4",
                 1024: "i8", 1280: "u8", 1536: "f16"}


def _open_maybe_gz(p: Path):
    with open(p, "rb") as f:
        magic = f.read(2)
    return gzip.open(p, "rb") if magic == b"\x1f\x8b" else open(p, "rb")


def _nifti_header(p: Path, what: str, scan: bool = True) -> dict | None:
    """The fields of a NIfTI-1/-2 header the checks need, or None for a non-NIfTI file.

    With ``scan`` the voxel data is streamed once: ``available`` is the number of voxel bytes
    present after ``vox_offset`` (a gzip stream that ends early is a truncated file) and, for
    floating-point data, ``nonfinite`` counts the NaN/inf voxels of the raw data (ITK's reader
    turns NaN into 0). Without ``scan`` (header-only reads) only an uncompressed file's size is
    compared."""
    name = p.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return None
    try:
        with _open_maybe_gz(p) as f:
            head = f.read(540)
            if len(head) < 348:
                raise UserError(f"{what} file {p} is truncated (its NIfTI header is incomplete); copy or export it again")
            info = _parse_nifti(head)
            if info is None:
                return None  # not a NIfTI header: let ITK say what it is
            info["nonfinite"] = 0
            compressed = isinstance(f, gzip.GzipFile)
            if not scan:
                info["available"] = info["needed"] if compressed else max(0, p.stat().st_size - info["vox_offset"])
                return info
            floating = info["dtype"] is not None and np.issubdtype(info["dtype"], np.floating)
            if not compressed and not floating:
                info["available"] = max(0, p.stat().st_size - info["vox_offset"])
                return info
            f.seek(info["vox_offset"]) if compressed else f.seek(min(info["vox_offset"], p.stat().st_size))
            total, carry = 0, b""
            item = info["dtype"].itemsize if floating else 1
            while True:
                chunk = f.read(1 << 22)
                if not chunk:
                    break
                start, total = total, total + len(chunk)
                if floating and start < info["needed"]:
                    buf = carry + chunk[:info["needed"] - start]
                    usable = len(buf) - len(buf) % item
                    values = np.frombuffer(buf[:usable], dtype=info["dtype"])
                    info["nonfinite"] += int(np.count_nonzero(~np.isfinite(values)))
                    carry = buf[usable:]
            info["available"] = total
    except (EOFError, OSError, zlib.error):
        raise UserError(f"{what} file {p} is truncated or damaged (the compressed data ends early); copy or "
                        "export it again") from None
    return info


def _parse_nifti(head: bytes) -> dict | None:
    for endian in "<>":
        size = struct.unpack(endian + "i", head[:4])[0]
        if size == 348:
            dim = struct.unpack(endian + "8h", head[40:56])
            datatype, bitpix = struct.unpack(endian + "2h", head[70:74])
            pixdim = struct.unpack(endian + "8f", head[76:108])
            vox_offset = struct.unpack(endian + "f", head[108:112])[0]
            vox_offset = int(vox_offset) if np.isfinite(vox_offset) and vox_offset >= 348 else 352
            version = 1
            break
        if size == 540 and len(head) >= 540:
            datatype, bitpix = struct.unpack(endian + "2h", head[12:16])
            dim = struct.unpack(endian + "8q", head[16:80])
            pixdim = struct.unpack(endian + "8d", head[104:168])
            vox_offset = max(540, int(struct.unpack(endian + "q", head[168:176])[0]))
            version = 2
            break
    else:
        return None
    ndim = int(dim[0])
    if not 1 <= ndim <= 7:
        return None
    shape = [max(1, int(d)) for d in dim[1:1 + ndim]]
    code = _NIFTI_DTYPES.get(int(datatype))
    dtype = np.dtype(endian + code) if code else None
    n_vox = int(np.prod(shape, dtype=np.int64))
    return {"version": version, "ndim": ndim, "shape": shape, "pixdim": list(pixdim), "dtype": dtype,
            "vox_offset": vox_offset, "needed": n_vox * max(1, int(bitpix)) // 8}
