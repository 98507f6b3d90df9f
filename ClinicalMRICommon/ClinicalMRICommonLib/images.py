"""Image input: one reader for every image path the tools take, with one set of checks."""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import UserError
from .grids import Grid


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


def read_grid(path: str | os.PathLike, what: str = "image") -> Grid:
    """The grid of an image file from its header, without reading its voxels."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{what} file not found: {p}")
    r = sitk.ImageFileReader()
    r.SetFileName(str(p))
    try:
        r.ReadImageInformation()
    except RuntimeError:
        raise UserError(f"{what} file {p} could not be read as an image; check that it is a complete "
                        "NIfTI/NRRD file") from None
    return Grid(tuple(r.GetSize()), tuple(r.GetSpacing()), tuple(r.GetOrigin()), tuple(r.GetDirection()))
