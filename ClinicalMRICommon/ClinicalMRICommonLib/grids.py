"""Voxel grids: one description of a grid, one tolerance for "the same grid", one
nearest-neighbour resampler."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk


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

    def image(self, pixel_id: int = sitk.sitkUInt8) -> sitk.Image:
        """An all-zero image on this grid."""
        img = sitk.Image([int(s) for s in self.size], pixel_id)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img
