"""2.5D inputs for the HRMM deep model: one 8-bit crop per sequence, stacked as 3 channels.

The paper (see docs/fusion.md, "1. Inputs") builds, per lesion and sequence:

1. the slice with the largest ROI area,
2. the ROI's bounding box on that slice expanded by 5 pixels,
3. the crop,
4. rescaled to 8-bit 0-255,
5. sharpened with an unsharp mask,
6. rotated 90 degrees clockwise,
7. resized to 224 x 224,

and stacks T1WI, T2WI and FS-T2WI as the three channels. This module does exactly that,
with the details the paper leaves open decided as follows (one place, used by training and
prediction alike):

Slice axis (``choose_slice_axis``)
    "Slice" means the acquisition's slice direction. Rule, in order:

    a. an axis whose spacing exceeds every other axis's by more than 20 % (the paper's
       images: 4 mm slices + 0.8 mm gap against ~0.8 mm pixels) -- the thick-slice axis;
    b. otherwise (near-isotropic voxels) the axis most aligned with the patient's
       left-right direction, i.e. sagittal slices, the plane the method works in;
    c. when the file carries no geometry at all (unit spacing and an axis-aligned
       identity orientation, what a NIfTI with an identity affine gives) the axis with the
       fewest voxels: multi-slice 2D acquisitions have fewer slices than in-plane pixels.

    The axis is returned as a numpy axis of ``sitk.GetArrayFromImage`` (0 = the last ITK
    index axis k, 2 = the first ITK index axis i). Callers may pass ``slice_axis``
    explicitly.

Storage order, in-plane orientation and the 90 degree rotation
    Image and ROI are first put into the extension's canonical orientation
    (:func:`ClinicalMRICommonLib.orientation.canonical`, ``PIR``: numpy axis 0 the sagittal
    slice axis running to the patient's right, rows superior->inferior, columns
    anterior->posterior), so the slice choice (ties: the lowest canonical index, i.e. the
    most right-hand of equal slices), ``slice_index`` and ``bbox`` are anatomical and the same
    for every storage order of the file. Files without geometry (unit spacing, identity
    affine) are used as stored: their anatomy is unknown.

    The slice is then brought into the radiological display orientation from the direction
    cosines (sagittal: rows superior->inferior, columns anterior->posterior; coronal: rows
    S->I, columns patient right->left; axial: rows anterior->posterior, columns
    right->left), only by flips/transposes (no resampling). That *is* the network's input:
    **upright, rows S->I (head at the top), columns A->P (anterior on the left)** for the
    sagittal slices of the method. The paper's "rotate 90 degrees clockwise" is the step
    that turned its PNG exports, which lay on their side as stored, upright; here the
    upright view comes from the geometry itself, so no further turn is applied
    (``quarter_turns=0``, the default since preprocessing version 2; version 1 applied one
    more clockwise turn and gave sideways crops, rows A->P, columns I->S). ``quarter_turns``
    still adds clockwise turns for experiments; the returned ``orientation`` string states
    the rows and columns of every crop, and the preview shows them.

Intensity
    Min-max of the crop mapped to 0-255 (the paper). ``intensity="percentile"`` uses the
    0.5th-99.5th percentiles of the crop instead (robust against a single bright vessel
    or fat spot), clipping beyond them.

Unsharp mask
    Pillow's ``ImageFilter.UnsharpMask`` on the 8-bit crop with radius 2 px (Gaussian
    sigma), percent 150 (amount 1.5) and threshold 3 grey levels -- Pillow's defaults,
    the usual choice of PNG-based 2.5D pipelines. ``unsharp=None`` skips it.

Resize
    Pillow bilinear resampling to ``size`` x ``size`` (the aspect ratio of the box is not
    kept, as in the paper). Pillow's bilinear filter widens its support when shrinking,
    so large boxes are low-pass filtered rather than aliased.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk
from PIL import Image, ImageDraw, ImageFilter

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.files import atomic_path
from ClinicalMRICommonLib.grids import grid_difference, same_grid
from ClinicalMRICommonLib.orientation import canonical
from HRMMPredictLib.roi import roi_voxels
from HRMMPredictLib.sequences import CHANNEL_LABELS
DEFAULT_MARGIN = 5
DEFAULT_SIZE = 224
DEFAULT_UNSHARP = (2.0, 150, 3)  # Pillow UnsharpMask(radius, percent, threshold)
DEFAULT_PERCENTILES = (0.5, 99.5)

# Display orientation targets in LPS (ITK's physical frame): (row direction, column direction).
# Rows run top -> bottom of the picture, columns left -> right.
_DISPLAY = {
    "sagittal": ((0.0, 0.0, -1.0), (0.0, 1.0, 0.0)),   # superior->inferior, anterior->posterior
    "coronal": ((0.0, 0.0, -1.0), (1.0, 0.0, 0.0)),    # superior->inferior, right->left
    "axial": ((0.0, 1.0, 0.0), (1.0, 0.0, 0.0)),       # anterior->posterior, right->left
}
_AXIS_LETTERS = {0: ("R", "L"), 1: ("A", "P"), 2: ("I", "S")}  # LPS +x is L, +y is P, +z is S


def _direction(image: sitk.Image) -> np.ndarray:
    return np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)


def _geometry_unknown(image: sitk.Image) -> bool:
    """Unit spacing with an axis-aligned, unrotated orientation: the header of a file whose
    geometry was lost (identity NIfTI affine -> ITK direction diag(-1, -1, 1))."""
    d = _direction(image)
    return (np.allclose(image.GetSpacing(), 1.0) and np.allclose(np.abs(d), np.eye(3))
            and np.allclose(np.diag(d)[2], 1.0))


def choose_slice_axis(image: sitk.Image) -> tuple[int, str]:
    """The numpy axis (of ``sitk.GetArrayFromImage``) that is the acquisition's slice
    direction, and the rule that decided it (see the module docstring)."""
    if image.GetDimension() != 3:
        raise UserError(f"expected a 3D image for the 2.5D crop, got {image.GetDimension()}D")
    spacing = np.asarray(image.GetSpacing(), dtype=float)
    order = np.argsort(spacing)[::-1]
    if spacing[order[0]] > 1.2 * spacing[order[1]]:
        itk_axis = int(order[0])
        reason = f"largest spacing ({spacing[itk_axis]:.3g} mm)"
    elif _geometry_unknown(image):
        size = np.asarray(image.GetSize())
        itk_axis = int(np.argmin(size))
        reason = "no geometry in the header (unit spacing, identity orientation): axis with the fewest voxels"
    else:
        lr = np.abs(_direction(image)[0, :])  # x (left-right) component of each index axis
        itk_axis = int(np.argmax(lr))
        reason = "near-isotropic voxels: the axis closest to left-right (sagittal slices)"
    return 2 - itk_axis, reason


def _plane_of(image: sitk.Image, slice_axis: int) -> str:
    normal = _direction(image)[:, 2 - slice_axis]
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(normal)))]


def _display_ops(image: sitk.Image, slice_axis: int) -> tuple[bool, bool, bool, tuple[str, str], tuple[str, str]]:
    """(transpose, flip_rows, flip_cols) that bring a numpy slice (rows, cols) taken along
    ``slice_axis`` into display orientation, plus the row/column anatomical directions
    after that (as (start, end) letters)."""
    d = _direction(image)
    rest = [a for a in range(3) if a != slice_axis]      # numpy axes left in the 2D slice
    row_dir, col_dir = d[:, 2 - rest[0]], d[:, 2 - rest[1]]
    target_row, target_col = (np.asarray(v) for v in _DISPLAY[_plane_of(image, slice_axis)])
    transpose = abs(float(col_dir @ target_row)) > abs(float(row_dir @ target_row))
    if transpose:
        row_dir, col_dir = col_dir, row_dir
    flip_rows = float(row_dir @ target_row) < 0
    flip_cols = float(col_dir @ target_col) < 0
    return transpose, flip_rows, flip_cols, _letters(target_row), _letters(target_col)


def _letters(v) -> tuple[str, str]:
    v = np.asarray(v, dtype=float)
    k = int(np.argmax(np.abs(v)))
    neg, pos = _AXIS_LETTERS[k]
    return (neg, pos) if v[k] > 0 else (pos, neg)


def _rotate_labels(rows: tuple[str, str], cols: tuple[str, str], quarter_turns: int) -> str:
    for _ in range(quarter_turns % 4):  # one clockwise quarter turn
        rows, cols = cols, (rows[1], rows[0])
    return f"rows {rows[0]}->{rows[1]}, columns {cols[0]}->{cols[1]}"


def _to_uint8(crop: np.ndarray, intensity: str, percentiles: Sequence[float]) -> np.ndarray:
    crop = crop.astype(np.float64)
    if intensity == "minmax":
        lo, hi = float(crop.min()), float(crop.max())
    elif intensity == "percentile":
        lo, hi = (float(v) for v in np.percentile(crop, list(percentiles)))
    else:
        raise UserError(f"unknown intensity scaling {intensity!r}; use 'minmax' or 'percentile'")
    if not hi > lo:
        return np.zeros(crop.shape, dtype=np.uint8)
    scaled = (crop - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _geometry(arr: np.ndarray, ops: tuple[bool, bool, bool], quarter_turns: int) -> np.ndarray:
    transpose, flip_rows, flip_cols = ops
    if transpose:
        arr = arr.T
    if flip_rows:
        arr = arr[::-1, :]
    if flip_cols:
        arr = arr[:, ::-1]
    return np.ascontiguousarray(np.rot90(arr, k=-(quarter_turns % 4)))


def crop_25d(image: sitk.Image, mask: sitk.Image, margin: int = DEFAULT_MARGIN, size: int = DEFAULT_SIZE, *,
             label: int | None = None, slice_axis: int | None = None, intensity: str = "minmax",
             percentiles: Sequence[float] = DEFAULT_PERCENTILES,
             unsharp: tuple[float, int, int] | None = DEFAULT_UNSHARP, quarter_turns: int = 0,
             what: str = "image") -> dict:
    """The paper's 2.5D crop of one sequence (see the module docstring for every choice).

    ``mask`` must be on the image's grid; with ``label`` only that label is the ROI,
    otherwise every non-zero voxel. Returns a dict:

    - ``array``: uint8 (size, size), the network input channel;
    - ``roi``: bool (size, size), the ROI pushed through the same crop/orient/rotate/resize
      (bilinear, > 0.5), for previews and checks;
    - ``slice_axis`` (numpy axis), ``slice_index`` (both of the canonical array, see the
      module docstring), ``slice_axis_rule``, ``plane``,
      ``roi_area`` (ROI voxels on the chosen slice);
    - ``bbox``: (row_start, row_stop, col_start, col_stop), half-open, of the crop in the
      numpy slice ``sitk.GetArrayFromImage(canonical(image)).take(slice_index, axis=slice_axis)``
      (ROI box + margin, clipped to the image); ``roi_bbox`` the same without the margin;
    - ``orientation``: anatomical directions of the rows and columns of ``array``.
    """
    if margin < 0 or size < 8:
        raise UserError(f"crop margin must be >= 0 and size >= 8 (got margin={margin}, size={size})")
    if not same_grid(image, mask):
        raise UserError(f"ROI mask and {what} are on different grids ({grid_difference(mask, image)}); "
                        "resample the ROI onto the image first (nearest neighbour)")
    if not _geometry_unknown(image):
        image, mask = canonical(image), canonical(mask)
    arr = sitk.GetArrayViewFromImage(image)
    marr = sitk.GetArrayViewFromImage(mask)
    roi = roi_voxels(marr, f"ROI mask for the {what}", label=label)
    if slice_axis is None:
        slice_axis, rule = choose_slice_axis(image)
    else:
        if slice_axis not in (0, 1, 2):
            raise UserError(f"slice_axis must be 0, 1 or 2 (a numpy axis), got {slice_axis!r}")
        rule = "given by the caller"
    other = tuple(a for a in range(3) if a != slice_axis)
    areas = roi.sum(axis=other)
    idx = int(np.argmax(areas))   # ties: the lowest slice index
    roi2d = np.take(roi, idx, axis=slice_axis)
    img2d = np.take(arr, idx, axis=slice_axis)
    if not np.all(np.isfinite(img2d)):
        raise UserError(f"{what} has NaN/infinite voxels on slice {idx}; fix or mask them before use")
    rows = np.flatnonzero(roi2d.any(axis=1))
    cols = np.flatnonzero(roi2d.any(axis=0))
    roi_bbox = (int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1)
    h, w = roi2d.shape
    bbox = (max(roi_bbox[0] - margin, 0), min(roi_bbox[1] + margin, h),
            max(roi_bbox[2] - margin, 0), min(roi_bbox[3] + margin, w))
    crop = img2d[bbox[0]:bbox[1], bbox[2]:bbox[3]]
    roi_crop = roi2d[bbox[0]:bbox[1], bbox[2]:bbox[3]]

    transpose, flip_rows, flip_cols, row_l, col_l = _display_ops(image, slice_axis)
    ops = (transpose, flip_rows, flip_cols)
    u8 = _geometry(_to_uint8(crop, intensity, percentiles), ops, quarter_turns)
    pil = Image.fromarray(u8)
    if unsharp is not None:
        radius, percent, threshold = unsharp
        pil = pil.filter(ImageFilter.UnsharpMask(radius=float(radius), percent=int(percent),
                                                 threshold=int(threshold)))
    out = np.asarray(pil.resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)
    roi_img = Image.fromarray(_geometry(roi_crop.astype(np.float32), ops, quarter_turns))
    roi_out = np.asarray(roi_img.resize((size, size), Image.Resampling.BILINEAR)) > 0.5
    return {
        "array": out,
        "roi": roi_out,
        "slice_axis": int(slice_axis),
        "slice_axis_rule": rule,
        "slice_index": idx,
        "plane": _plane_of(image, slice_axis),
        "roi_area": int(areas[idx]),
        "bbox": bbox,
        "roi_bbox": roi_bbox,
        "orientation": _rotate_labels(row_l, col_l, quarter_turns),
    }


def stack_25d(t1: sitk.Image, t2: sitk.Image, fst2: sitk.Image, mask: sitk.Image, *,
              return_crops: bool = False, **crop_kwargs):
    """Stack the 2.5D crops of T1WI, T2WI and FS-T2WI (in that channel order) into a
    uint8 array (3, size, size).

    The three sequences share one grid (the cohort manifest guarantees it) and the ROI is
    on that grid; the slice is chosen for each sequence from the mask (the same slice
    when the grids agree). ``crop_kwargs`` go to :func:`crop_25d`. With
    ``return_crops=True`` the three crop dicts come back too: ``(stack, crops)``.
    """
    crops = []
    for name, img in zip(CHANNEL_LABELS, (t1, t2, fst2)):
        if img is None:
            raise UserError(f"the {name} image is missing; the 2.5D input needs T1WI, T2WI and FS-T2WI")
        crops.append(crop_25d(img, mask, what=name, **crop_kwargs))
    stack = np.stack([c["array"] for c in crops]).astype(np.uint8)
    return (stack, crops) if return_crops else stack


def save_preview_png(stack: np.ndarray, path: str | os.PathLike, roi: np.ndarray | None = None,
                     names: Sequence[str] = CHANNEL_LABELS, orientation: str | None = None) -> Path:
    """Write a PNG for people: the three channels side by side (grey, named) and their RGB
    composite (R = T1WI, G = T2WI, B = FS-T2WI). ``roi`` (bool, size x size, e.g. the
    ``roi`` of :func:`crop_25d`) is outlined in red on the grey panels; ``orientation`` (the
    crops' ``orientation``, e.g. "rows S->I, columns A->P") is written under the panels.
    Written atomically.
    """
    stack = np.asarray(stack)
    if stack.ndim != 3 or stack.shape[0] != 3 or stack.dtype != np.uint8:
        raise UserError(f"preview needs a uint8 array of shape (3, H, W), got {stack.dtype} {stack.shape}")
    _, h, w = stack.shape
    gap, top = 4, 14
    bottom = 14 if orientation else 0
    canvas = Image.new("RGB", (4 * w + 3 * gap, h + top + bottom), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    edge = None
    if roi is not None:
        roi = np.asarray(roi, dtype=bool)
        if roi.shape != (h, w):
            raise UserError(f"preview ROI shape {roi.shape} does not match the crops ({h}, {w})")
        inner = roi.copy()
        inner[1:, :] &= roi[:-1, :]
        inner[:-1, :] &= roi[1:, :]
        inner[:, 1:] &= roi[:, :-1]
        inner[:, :-1] &= roi[:, 1:]
        edge = roi & ~inner
    for k in range(3):
        panel = np.repeat(stack[k][:, :, None], 3, axis=2)
        if edge is not None:
            panel[edge] = (255, 0, 0)
        canvas.paste(Image.fromarray(panel), (k * (w + gap), top))
        draw.text((k * (w + gap) + 2, 1), str(names[k]), fill=(255, 255, 255))
    canvas.paste(Image.fromarray(np.moveaxis(stack, 0, 2)), (3 * (w + gap), top))
    draw.text((3 * (w + gap) + 2, 1), "RGB", fill=(255, 255, 255))
    if orientation:
        draw.text((2, h + top + 1), f"network input: {orientation}", fill=(255, 255, 255))
    final = Path(path)
    with atomic_path(final) as tmp:
        canvas.save(tmp, format="PNG")
    return final
