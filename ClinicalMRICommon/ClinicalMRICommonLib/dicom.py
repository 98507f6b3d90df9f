"""DICOM series folders as images: one series per folder, slices sorted by position, slice
spacing checked; used by :func:`ClinicalMRICommonLib.images.read_image` and
:func:`~ClinicalMRICommonLib.images.read_grid` wherever an image path is accepted.

GDCM (through SimpleITK's ``ImageSeriesReader``) groups the files by SeriesInstanceUID and
reads the voxels; the headers are read with pydicom (both ship with Slicer), which is ~15
times faster than GDCM for header-only reads. The checks here refuse what ITK would turn into
a wrong volume without a word: several series in one folder, slices of different orientation
or size (a localizer in the series), two slices at one position (echoes, time points),
missing slices or uneven spacing (ITK assumes even spacing), slices shifted in-plane (gantry
tilt: the volume would be sheared).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import UserError
from .grids import GRID_TOLERANCE, Grid

#: Slice positions may deviate from even spacing by this fraction of the step (plus 0.01 mm,
#: the precision DICOM positions are usually written with) before a series is refused.
SLICE_SPACING_TOLERANCE = 0.01
_POSITION_ABS_TOL = 0.01  # mm
_ORIENTATION_TOL = 1e-4


@dataclass
class DicomSeries:
    """One series of a folder: its UID, description, files sorted by slice position and the
    voxel grid its headers describe (``grid`` is None for a single multi-frame file)."""

    uid: str
    description: str
    files: list = field(default_factory=list)
    grid: Grid | None = None
    modality: str = ""

    def label(self) -> str:
        desc = self.description or "no description"
        uid = self.uid or "no SeriesInstanceUID"
        return f"'{desc}' ({len(self.files)} files, {self.modality + ', ' if self.modality else ''}UID {uid})"


def is_dicom_file(path: str | os.PathLike) -> bool:
    """True for a file with the DICOM preamble ('DICM' at byte 128)."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:132] == b"DICM"


def list_series(folder: str | os.PathLike) -> list[DicomSeries]:
    """The DICOM series directly in ``folder`` (not in subfolders), files in GDCM's order."""
    folder = Path(folder)
    with _quiet_itk():  # GDCM warns on stderr about a folder without series; the caller says it better
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
        groups = [(uid, list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))) for uid in ids]
    out = []
    for uid, files in groups:
        if not files:
            continue
        hdr = _header(files[0])
        out.append(DicomSeries(uid=str(uid), description=str(_get(hdr, "SeriesDescription", "")).strip(),
                               files=files, modality=str(_get(hdr, "Modality", "")).strip()))
    return out


def find_series(folder: str | os.PathLike, what: str = "image") -> DicomSeries:
    """The one series of a DICOM folder, its files sorted by position and its grid checked;
    UserError naming the folder for none, several (listed with description and UID) or a
    series that does not make one evenly spaced 3-D volume."""
    folder = Path(folder)
    series = list_series(folder)
    if not series:
        subdirs = [p.name for p in sorted(folder.iterdir()) if p.is_dir()][:5] if folder.is_dir() else []
        hint = (f"; it has subfolders ({', '.join(subdirs)}): give the folder of one series" if subdirs
                else "; give an image file (NIfTI .nii/.nii.gz, NRRD, MHA) or a folder of DICOM files")
        raise UserError(f"{what} folder {folder} holds no DICOM series{hint}")
    if len(series) > 1:
        listing = "; ".join(f"{i}) {s.label()}" for i, s in enumerate(series, start=1))
        raise UserError(f"{what} folder {folder} holds {len(series)} DICOM series: {listing}; "
                        "put each series in its own folder and give one")
    s = series[0]
    s.files, s.grid = _sorted_slices(s.files, folder, what)
    return s


def read_series(folder: str | os.PathLike, what: str = "image") -> sitk.Image:
    """The voxels of the one series of ``folder`` (rescale slope/intercept applied), on the
    grid its headers describe."""
    s = find_series(folder, what)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in s.files])
    try:
        img = reader.Execute()
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise UserError(f"{what} folder {folder}: the DICOM series could not be read "
                        f"({(lines[-1] if lines else 'unreadable')[:120]}); export the series again") from None
    if s.grid is not None:
        got = Grid.of(img)
        if len(got.size) == 3 and got.size == s.grid.size:
            # ITK derives the slice step from two slices; the checked header grid is the truth
            if not np.allclose(got.origin, s.grid.origin, atol=10 * GRID_TOLERANCE) or \
                    not np.allclose(got.direction, s.grid.direction, atol=10 * GRID_TOLERANCE):
                raise UserError(f"{what} folder {folder}: GDCM and the slice headers disagree on the geometry "
                                "of the series; export the series again")
            img.SetSpacing(s.grid.spacing)
    return img


def series_grid(folder: str | os.PathLike, what: str = "image") -> Grid:
    """The grid of the one series of ``folder`` from its headers (no voxels read)."""
    s = find_series(folder, what)
    if s.grid is not None:
        return s.grid
    r = sitk.ImageFileReader()
    r.SetFileName(str(s.files[0]))
    r.ReadImageInformation()
    return Grid(tuple(r.GetSize()), tuple(r.GetSpacing()), tuple(r.GetOrigin()), tuple(r.GetDirection()))


def series_of_file(path: str | os.PathLike) -> list[str]:
    """The files of the series a DICOM file belongs to, in its folder (itself included)."""
    p = Path(path)
    uid = str(_get(_header(p), "SeriesInstanceUID", ""))
    try:
        with _quiet_itk():
            return list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(p.parent), uid))
    except RuntimeError:
        return [str(p)]


# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_itk():
    """ITK's warnings off for a moment (they go to stderr, beside the one error line)."""
    was = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(was)


def _header(path):
    import pydicom

    try:
        return pydicom.dcmread(str(path), stop_before_pixels=True, force=True)
    except Exception:  # noqa: BLE001 - pydicom raises many kinds for a damaged file
        return None


def _get(ds, name, default=None):
    if ds is None:
        return default
    try:
        v = getattr(ds, name, default)
    except Exception:  # noqa: BLE001 - a malformed element
        return default
    return default if v is None else v


def _floats(v, n):
    try:
        out = [float(x) for x in v]
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(np.isfinite(out)) else None


def _sorted_slices(files: list, folder: Path, what: str) -> tuple[list, Grid | None]:
    """Files sorted along the slice normal, and the grid; UserError for an inconsistent series."""
    headers = [_header(f) for f in files]
    if len(files) == 1:
        return files, None  # one (possibly multi-frame) file: GDCM reads its geometry
    bad = [Path(f).name for f, h in zip(files, headers) if h is None]
    if bad:
        raise UserError(f"{what} folder {folder}: DICOM file {bad[0]} is damaged (its header cannot be read); "
                        "export the series again")
    frames = [int(_get(h, "NumberOfFrames", 1) or 1) for h in headers]
    if max(frames) > 1:
        raise UserError(f"{what} folder {folder} mixes {len(files)} files with multi-frame files; "
                        "give a folder with one multi-frame file or with single-slice files only")
    pos = [_floats(_get(h, "ImagePositionPatient"), 3) for h in headers]
    ori = [_floats(_get(h, "ImageOrientationPatient"), 6) for h in headers]
    pix = [_floats(_get(h, "PixelSpacing"), 2) for h in headers]
    for name, values in (("ImagePositionPatient", pos), ("ImageOrientationPatient", ori), ("PixelSpacing", pix)):
        missing = [Path(f).name for f, v in zip(files, values) if v is None]
        if missing:
            raise UserError(f"{what} folder {folder}: {len(missing)} of {len(files)} slices (e.g. {missing[0]}) have "
                            f"no valid {name}, so the slices cannot be stacked into a volume; export the series "
                            "with its geometry (or convert it to NIfTI with dcm2niix)")
    o = np.asarray(ori, float)
    if np.abs(o - o[0]).max() > _ORIENTATION_TOL:
        raise UserError(f"{what} folder {folder}: the slices do not all have the same orientation (a localizer or "
                        "a second stack in the series?); keep only the slices of one stack")
    sizes = {(int(_get(h, "Rows", 0) or 0), int(_get(h, "Columns", 0) or 0)) for h in headers}
    if len(sizes) > 1:
        raise UserError(f"{what} folder {folder}: the slices have different sizes {sorted(sizes)}; "
                        "keep only the slices of one stack")
    px = np.asarray(pix, float)
    if np.abs(px - px[0]).max() > GRID_TOLERANCE * max(1.0, px[0].max()):
        raise UserError(f"{what} folder {folder}: the slices have different pixel spacings; keep only the slices "
                        "of one stack")
    row, col = o[0, :3], o[0, 3:]
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    if abs(float(row @ col)) > 1e-3:
        raise UserError(f"{what} folder {folder}: ImageOrientationPatient is not orthogonal; the headers are damaged")
    normal = np.cross(row, col)
    p = np.asarray(pos, float)
    order = np.argsort(p @ normal, kind="stable")
    p = p[order]
    z = p @ normal
    steps = np.diff(z)
    if np.any(steps < _POSITION_ABS_TOL):
        n_pos = len(np.unique(np.round(z / _POSITION_ABS_TOL)))
        raise UserError(f"{what} folder {folder}: {len(files)} slices share {n_pos} positions (several echoes, "
                        "time points or acquisitions in one series); export one volume per folder")
    step = (z[-1] - z[0]) / (len(z) - 1)
    dev = np.abs(steps - step).max()
    if dev > SLICE_SPACING_TOLERANCE * step + _POSITION_ABS_TOL:
        worst = int(np.argmax(np.abs(steps - step)))
        raise UserError(f"{what} folder {folder}: the slices are not evenly spaced (step {steps[worst]:.3g} mm between "
                        f"slices {worst + 1} and {worst + 2}, {step:.3g} mm on average): a slice is missing or the "
                        "series mixes stacks; export the complete series")
    inplane = (p - p[0]) - np.outer(z - z[0], normal)
    if np.abs(inplane).max() > _POSITION_ABS_TOL + SLICE_SPACING_TOLERANCE * float(px[0].min()):
        raise UserError(f"{what} folder {folder}: the slices are shifted within their plane from one slice to the "
                        "next (gantry tilt?), so the volume would be sheared; resample it to a regular grid first "
                        "(e.g. dcm2niix corrects gantry tilt)")
    rows, cols = sizes.pop()
    direction = np.column_stack([row, col, normal])
    grid = Grid((cols, rows, len(files)), (float(px[0][1]), float(px[0][0]), float(step)),
                tuple(float(v) for v in p[0]), tuple(float(v) for v in direction.ravel()))
    return [files[i] for i in order], grid
