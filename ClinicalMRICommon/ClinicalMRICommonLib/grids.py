"""Voxel grids: one description of a grid (:class:`Grid`), one tolerance for "the same
grid" (:data:`GRID_TOLERANCE`, used by :func:`same_grid`, :func:`grid_difference` and given
to pyradiomics as ``geometryTolerance``), one nearest-neighbour resampler
(:func:`resample_mask_to`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .errors import UserError

#: The one tolerance for "the same grid": spacing, origin (mm) and direction cosines may differ
#: by this much (absolute, and relative to the value). NIfTI stores the direction as a float32
#: quaternion, so a grid written as NIfTI and read back differs by ~1e-7; two different
#: acquisitions differ by far more. pyradiomics gets it as ``geometryTolerance``.
GRID_TOLERANCE = 1e-4


def _close(x, y, tol: float) -> bool:
    return bool(np.allclose(x, y, atol=tol, rtol=tol))


def same_grid(a, b, tol: float = GRID_TOLERANCE) -> bool:
    """True when two images (or :class:`Grid` s) share size, spacing, origin and direction
    (within ``tol``)."""
    return not grid_difference(a, b, tol)


def grid_difference(a, b, tol: float = GRID_TOLERANCE) -> str:
    """Describe how two grids differ (empty string when they match)."""
    if len(a.GetSize()) != len(b.GetSize()):
        return f"dimension {len(a.GetSize())} vs {len(b.GetSize())}"
    parts = []
    if tuple(a.GetSize()) != tuple(b.GetSize()):
        parts.append(f"size {tuple(a.GetSize())} vs {tuple(b.GetSize())}")
    if not _close(a.GetSpacing(), b.GetSpacing(), tol):
        parts.append("spacing " + _fmt(a.GetSpacing()) + " vs " + _fmt(b.GetSpacing()))
    if not _close(a.GetOrigin(), b.GetOrigin(), tol):
        parts.append("origin " + _fmt(a.GetOrigin()) + " vs " + _fmt(b.GetOrigin()))
    if not _close(a.GetDirection(), b.GetDirection(), tol):
        parts.append("direction differs")
    return ", ".join(parts)


def require_same_grid(image, reference, what: str, reference_what: str, hint: str = "",
                      tol: float = GRID_TOLERANCE) -> None:
    """UserError ``"<what> is on a different grid than <reference_what> (<difference>); <hint>"``
    unless ``image`` and ``reference`` share a grid, e.g. ``what="ADC file a.nii.gz"``,
    ``reference_what="DWI file b.nii.gz"``."""
    diff = grid_difference(image, reference, tol)
    if diff:
        raise UserError(f"{what} is on a different grid than {reference_what} ({diff})" + (f"; {hint}" if hint else ""))


def _fmt(v) -> str:
    return "(" + ", ".join(f"{x:.4g}" for x in v) + ")"


def resample_mask_to(mask: sitk.Image, reference, default_value: float = 0) -> sitk.Image:
    """Resample a label mask onto a reference grid (an image or a :class:`Grid`) with
    nearest-neighbour interpolation; the labels and the voxel type are kept, voxels outside
    the mask's extent get ``default_value``.

    Nearest neighbour picks, for each reference voxel centre, the mask voxel whose centre is
    nearest in physical space, so a mask stored flipped or permuted relative to the reference
    comes out voxel-for-voxel right."""
    ref = reference.image() if isinstance(reference, Grid) else reference
    if mask.GetDimension() != ref.GetDimension():
        raise UserError(f"cannot resample a {mask.GetDimension()}-D mask onto a {ref.GetDimension()}-D image")
    return sitk.Resample(mask, ref, sitk.Transform(), sitk.sitkNearestNeighbor, default_value,
                         mask.GetPixelID())


@dataclass(frozen=True)
class Grid:
    """A voxel grid (size, spacing, LPS origin, row-major direction), without voxels.

    Duck-types the ``sitk.Image`` getters used by :func:`same_grid` and
    :func:`grid_difference`, so a grid read from a file header compares like an image."""

    size: tuple
    spacing: tuple
    origin: tuple
    direction: tuple

    @classmethod
    def of(cls, image) -> "Grid":
        return cls(tuple(int(s) for s in image.GetSize()), tuple(float(s) for s in image.GetSpacing()),
                   tuple(float(o) for o in image.GetOrigin()), tuple(float(d) for d in image.GetDirection()))

    def GetSize(self):  # noqa: N802 - mirrors sitk.Image
        return self.size

    def GetSpacing(self):  # noqa: N802
        return self.spacing

    def GetOrigin(self):  # noqa: N802
        return self.origin

    def GetDirection(self):  # noqa: N802
        return self.direction

    def GetDimension(self):  # noqa: N802
        return len(self.size)

    def image(self, pixel_id: int = sitk.sitkUInt8) -> sitk.Image:
        """An all-zero image on this grid."""
        img = sitk.Image([int(s) for s in self.size], pixel_id)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    def index_to_physical(self, index) -> np.ndarray:
        """Physical (LPS, mm) coordinates of voxel indices ``index`` (N x dim, ITK order x,y,z)."""
        n = len(self.size)
        d = np.asarray(self.direction, float).reshape(n, n)
        idx = np.atleast_2d(np.asarray(index, float))
        return np.asarray(self.origin, float) + (idx * np.asarray(self.spacing, float)) @ d.T

    def physical_to_index(self, points) -> np.ndarray:
        """Continuous voxel indices (ITK order) of physical points (N x dim)."""
        n = len(self.size)
        d = np.asarray(self.direction, float).reshape(n, n)
        p = np.atleast_2d(np.asarray(points, float)) - np.asarray(self.origin, float)
        return (p @ np.linalg.inv(d).T) / np.asarray(self.spacing, float)
