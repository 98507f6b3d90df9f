"""One canonical voxel order, so that the same physical image gives the same array whatever
order its file stores the voxels in (flipped, axes permuted, NIfTI or NRRD or DICOM).

The canonical orientation is :data:`CANONICAL_ORIENTATION` = ``"PIR"`` (the DICOM convention
of SimpleITK's ``DICOMOrient``: each letter is the patient direction that ITK index axis
i, j, k *points to*; L, P, S are +x, +y, +z of ITK's LPS frame):

- i (ITK x, the last numpy axis: columns) runs anterior -> **P**osterior;
- j (ITK y, numpy axis 1: rows) runs superior -> **I**nferior;
- k (ITK z, numpy axis 0: the slice axis) runs left -> **R**ight.

Why this one:

- The project's images are sagittal spine MRI (4 mm slices, ~0.8 mm pixels). ``PIR`` is the
  orientation of a standard sagittal DICOM acquisition (ImageOrientationPatient
  ``[0, 1, 0, 0, 0, -1]``; the slice normal, row x column, points to the patient's right), so
  canonicalising such a series changes nothing, and the sagittal slices stay the slices:
  numpy ``array[k]`` (``sitk.GetArrayFromImage`` order z, y, x) is one acquired sagittal
  slice, upright as radiologists read it (head in row 0, anterior in column 0) in any
  plotting code that draws row 0 at the top. 2.5-D code (largest-ROI slice, crops) and
  texture settings that treat the slice axis specially (pyradiomics ``force2D``) see the
  acquisition's own slices, not reformats. ``LPS`` (ITK's identity, axial slices along numpy
  axis 0) would make numpy axis 0 the anterior-posterior axis of sagittal data.
- It is right-handed (a pure rotation of LPS, determinant +1), as every DICOM grid is (its
  slice axis is row x column); ``PIL`` would be a mirror image, which DICOM cannot store.

Canonicalising only permutes and flips voxels (no interpolation): voxel values and the
physical grid are unchanged. Oblique acquisitions are brought to the nearest canonical axes
(DICOMOrient does not rotate), so two storages of the same oblique image still agree exactly.
"""

from __future__ import annotations

import SimpleITK as sitk

#: The extension's canonical orientation (see the module docstring for why).
CANONICAL_ORIENTATION = "PIR"


def orientation_of(image) -> str:
    """The three-letter orientation (DICOM convention, as ``DICOMOrient`` takes it) of an
    image's (or :class:`~ClinicalMRICommonLib.grids.Grid`'s) direction matrix."""
    return sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(tuple(image.GetDirection()))


def canonical(image: sitk.Image, orientation: str = CANONICAL_ORIENTATION) -> sitk.Image:
    """The image with its voxels reordered (permuted and flipped, never interpolated) into the
    canonical orientation; its physical grid (every voxel's position and value) is unchanged.
    Works for images and label masks alike; 3-D only."""
    if image.GetDimension() != 3:
        from .errors import UserError

        raise UserError(f"canonical orientation needs a 3-D image; this one is {image.GetDimension()}-D")
    if orientation_of(image) == orientation:
        return image
    return sitk.DICOMOrient(image, orientation)
