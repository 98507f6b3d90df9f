"""MRML nodes <-> SimpleITK images and tables: the generic bridge the extension's Slicer
logics use (HRMMPredict, AnnotationQC, StrokeLesion).

This file and the modules' own bridges are the only library files that import ``slicer``.
They need MRML only (no Qt, no ``slicer.ScriptedLoadableModule``), so they run inside the
Slicer application and under ``slicer-core`` (Slicer's MRML without the application), where
the tests run them against real scenes.

Geometry: Slicer stores volumes in RAS (right, anterior, superior), ITK/SimpleITK in LPS
(left, posterior, superior). The voxel array is the same (numpy order k, j, i = z, y, x);
origin and direction flip the sign of their first two rows. A linear parent transform of a
node is part of its geometry (the image is where the user sees it); a non-linear one is
refused with a message saying to harden it.

Segments are exported onto a reference volume's grid by Slicer's own exporter
(``vtkSlicerSegmentationsModuleLogic.GenerateMergedLabelmapInReferenceGeometry``, the core
of ``ExportSegmentsToLabelmapNode``, without the temporary labelmap node), so the mask is
exactly what Slicer would export, transforms between the segmentation and the volume
included. Masks go into segments through Slicer's labelmap import (:func:`set_segment_mask`
replaces a segment's voxels and keeps its id, name, colour, terminology and tags). Bad input
(a node removed from the scene, an empty segment, an unknown segment id, a volume without
voxels) raises :class:`ClinicalMRICommonLib.errors.UserError` with a one-line message naming the
node and saying what to do.

The generic segment, view, layout and Segment Editor helpers of the three panels live here
(used by AnnotationQCLib.panel_logic, StrokeLesionLib.panel_logic, HRMMPredictLib.slicer.panel_logic
and the module files).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import slicer
import vtk
from vtk.util import numpy_support

from ClinicalMRICommonLib.errors import UserError

# RAS <-> LPS: flip the first two axes
_LPS_FROM_RAS = np.diag([-1.0, -1.0, 1.0])

# Tolerance (in voxels, and for direction cosines) below which two grids are the same lattice
_LATTICE_TOL = 1e-3

__all__ = [
    "lps_to_ras",
    "PanelLayout",
    "new_segmentation",
    "node_label",
    "nodes_by_class",
    "ras_to_lps",
    "register_layout",
    "require_in_scene",
    "results_to_table_node",
    "segment_editor_node",
    "segment_id_by_name",
    "segment_is_empty",
    "segment_to_sitk_mask",
    "set_segment_mask",
    "show_in_views",
    "sitk_to_volume_node",
    "slice_views_layout_xml",
    "table_node_or_new",
    "table_node_to_rows",
    "volume_node_to_sitk",
]


# ---------------------------------------------------------------------------------------
# Node checks


def node_label(node, what: str) -> str:
    """``what 'name'`` for messages (just ``what`` when the node has no name)."""
    name = node.GetName() if node is not None else None
    return f"{what} '{name}'" if name else what


def require_in_scene(node, what: str):
    """Refuse a missing node or one that has been removed from its scene (UserError naming
    it as ``what``, e.g. "T1WI volume"); returns the node."""
    if node is None:
        raise UserError(f"no {what} is selected; select one and try again")
    if node.GetScene() is None:
        raise UserError(f"{node_label(node, what)} is no longer in the scene (it was removed or the scene "
                        "was closed); select it again")
    return node


def nodes_by_class(scene, class_name: str) -> list:
    """The scene's nodes of a class (subclasses included), as a list.

    ``vtkMRMLScene::GetNodesByClass`` returns a new collection that the caller must delete
    (vtkMRMLScene.h: "You are responsible for deleting the returned collection"); in Python
    that is one ``UnRegister`` besides the wrapper's own reference, as
    ``slicer.util.getNodesByClass`` does. Without it the collection, and through it every
    node it holds, is never freed. (``slicer.util.getNodesByClass`` itself cannot be used:
    up to 5.12 it ignores its ``scene`` argument and lists ``slicer.mrmlScene``.)
    """
    collection = scene.GetNodesByClass(class_name)
    collection.UnRegister(None)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]


def _require_volume(node, what: str):
    require_in_scene(node, what)
    if not node.IsA("vtkMRMLScalarVolumeNode"):
        raise UserError(f"{node_label(node, what)} is a {node.GetClassName()}, not a scalar volume; "
                        "select a grey-level MRI volume")
    image = node.GetImageData()
    if image is None or image.GetNumberOfPoints() == 0 or image.GetPointData().GetScalars() is None:
        raise UserError(f"{node_label(node, what)} has no voxel data; load the series again")
    if image.GetNumberOfScalarComponents() != 1:
        raise UserError(f"{node_label(node, what)} has {image.GetNumberOfScalarComponents()} components per voxel; "
                        "expected a scalar (grey-level) volume")
    return node


# ---------------------------------------------------------------------------------------
# Geometry


def ras_to_lps(point) -> tuple[float, float, float]:
    """A point in Slicer's RAS mm as ITK's LPS mm (and back: the flip is its own inverse)."""
    return tuple(float(v) for v in _LPS_FROM_RAS @ np.asarray(point, float))


def lps_to_ras(point) -> tuple[float, float, float]:
    """A point in ITK's LPS mm as Slicer's RAS mm."""
    return ras_to_lps(point)


def _matrix(vtk_matrix: vtk.vtkMatrix4x4) -> np.ndarray:
    return np.array([[vtk_matrix.GetElement(r, c) for c in range(4)] for r in range(4)])


def _vtk_matrix(array: np.ndarray) -> vtk.vtkMatrix4x4:
    m = vtk.vtkMatrix4x4()
    for r in range(4):
        for c in range(4):
            m.SetElement(r, c, float(array[r, c]))
    return m


def _parent_to_world(node, what: str) -> np.ndarray:
    """4x4 matrix of the node's parent transforms (identity without any); refuses non-linear ones."""
    transform = node.GetParentTransformNode()
    if transform is None:
        return np.eye(4)
    if not transform.IsTransformToWorldLinear():
        raise UserError(f"{node_label(node, what)} is under the non-linear transform '{transform.GetName()}'; "
                        "harden the transform (Data module: right-click > Harden transform) and try again")
    m = vtk.vtkMatrix4x4()
    transform.GetMatrixTransformToWorld(m)
    return _matrix(m)


def _ijk_to_world(volume_node, what: str) -> np.ndarray:
    m = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(m)
    return _parent_to_world(volume_node, what) @ _matrix(m)


@dataclass(frozen=True)
class _Grid:
    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin_lps: tuple[float, float, float]
    direction_lps: tuple[float, ...]  # row-major 3x3, as SimpleITK wants it


def _grid_from_ijk_to_ras(ijk_to_ras: np.ndarray, size, what: str) -> _Grid:
    columns = ijk_to_ras[:3, :3]
    spacing = np.linalg.norm(columns, axis=0)
    if np.any(spacing <= 0):
        raise UserError(f"{what} has a zero voxel spacing; its geometry is invalid")
    direction_ras = columns / spacing
    if not np.allclose(direction_ras.T @ direction_ras, np.eye(3), atol=1e-4):
        raise UserError(f"{what} has a sheared or skewed voxel grid (after its transforms); resample it onto a "
                        "regular grid (Resample Scalar Volume module) and try again")
    origin = _LPS_FROM_RAS @ ijk_to_ras[:3, 3]
    direction = _LPS_FROM_RAS @ direction_ras
    return _Grid(tuple(int(s) for s in size), tuple(float(s) for s in spacing), tuple(float(o) for o in origin),
                 tuple(float(d) for d in direction.ravel()))


def _ijk_to_ras_from_image(image: sitk.Image) -> np.ndarray:
    direction_ras = _LPS_FROM_RAS @ np.array(image.GetDirection()).reshape(3, 3)
    m = np.eye(4)
    m[:3, :3] = direction_ras * np.array(image.GetSpacing())
    m[:3, 3] = _LPS_FROM_RAS @ np.array(image.GetOrigin())
    return m


def _apply_grid(image: sitk.Image, grid: _Grid) -> sitk.Image:
    image.SetSpacing(grid.spacing)
    image.SetOrigin(grid.origin_lps)
    image.SetDirection(grid.direction_lps)
    return image


def _same_lattice(ijk_to_world_a: np.ndarray, ijk_to_world_b: np.ndarray) -> bool:
    """True when voxel centres of grid a are voxel centres of grid b (same spacing and axes,
    origins an integer number of voxels apart): copying needs no interpolation."""
    a_in_b = np.linalg.inv(ijk_to_world_b) @ ijk_to_world_a
    if not np.allclose(a_in_b[:3, :3], np.eye(3), atol=_LATTICE_TOL):
        return False
    shift = a_in_b[:3, 3]
    return bool(np.allclose(shift, np.round(shift), atol=_LATTICE_TOL))


# ---------------------------------------------------------------------------------------
# Volumes


def volume_node_to_sitk(volume_node, what: str = "volume") -> sitk.Image:
    """Copy a scalar volume node (also a labelmap volume) into a SimpleITK image in LPS.

    The voxel type is kept; spacing, origin and direction come from the node's IJK-to-RAS
    matrix combined with its linear parent transforms. ``what`` names the volume in errors
    (e.g. "T1WI volume").
    """
    _require_volume(volume_node, what)
    array = slicer.util.arrayFromVolume(volume_node)
    grid = _grid_from_ijk_to_ras(_ijk_to_world(volume_node, what), array.shape[::-1], node_label(volume_node, what))
    image = sitk.GetImageFromArray(np.array(array, copy=True), isVector=False)
    return _apply_grid(image, grid)


def sitk_to_volume_node(image: sitk.Image, name: str | None = None, *, scene=None, node=None,
                        labelmap: bool = False):
    """Put a 3-D scalar SimpleITK image into a volume node; returns the node.

    With ``node``, that node's voxels and geometry are replaced (its parent transform is
    kept and accounted for, so the image lands where its LPS geometry says). Otherwise a new
    ``vtkMRMLScalarVolumeNode`` (``vtkMRMLLabelMapVolumeNode`` with ``labelmap``) named
    ``name`` is added to ``scene`` (default ``slicer.mrmlScene``) with default display nodes.
    """
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3-D image, got {image.GetDimension()}-D")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ValueError(f"expected a scalar image, got {image.GetNumberOfComponentsPerPixel()} components per voxel")
    array = sitk.GetArrayFromImage(image)
    if array.dtype.kind in "iu" and array.dtype.itemsize == 8:
        raise ValueError(f"64-bit integer voxels ({array.dtype}) are not supported by Slicer volumes; "
                         "cast the image to 32 bits first")
    created = node is None
    if created:
        scene = scene if scene is not None else getattr(slicer, "mrmlScene", None)
        if scene is None:
            raise ValueError("no scene given and slicer.mrmlScene is not set")
        node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode",
                                       name or "")
    else:
        require_in_scene(node, "volume")
        if name:
            node.SetName(name)
    world = _ijk_to_ras_from_image(image)
    local = np.linalg.inv(_parent_to_world(node, "volume")) @ world
    was_modifying = node.StartModify()
    try:
        node.SetIJKToRASMatrix(_vtk_matrix(local))
        slicer.util.updateVolumeFromArray(node, array)
    finally:
        node.EndModify(was_modifying)
    if created:
        node.CreateDefaultDisplayNodes()
    return node


# ---------------------------------------------------------------------------------------
# Segments


def _segment_name(segmentation_node, segment_id: str) -> str:
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    return segment.GetName() if segment is not None and segment.GetName() else segment_id


def _segment_voxel_count(segmentation_node, segment_id: str) -> int:
    """Voxels of the segment in its own (internal) binary labelmap."""
    labelmap = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
    if labelmap is None or labelmap.GetPointData() is None or labelmap.GetPointData().GetScalars() is None:
        return 0
    extent = labelmap.GetExtent()
    if extent[1] < extent[0] or extent[3] < extent[2] or extent[5] < extent[4]:
        return 0
    values = numpy_support.vtk_to_numpy(labelmap.GetPointData().GetScalars())
    label = segmentation_node.GetSegmentation().GetSegment(segment_id).GetLabelValue()
    return int(np.count_nonzero(values == label))


def _segment_ijk_to_world(segmentation_node, segment_id: str) -> np.ndarray | None:
    labelmap = segmentation_node.GetBinaryLabelmapInternalRepresentation(segment_id)
    if labelmap is None:
        return None
    m = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(m)
    return _parent_to_world(segmentation_node, "segmentation") @ _matrix(m)


def segment_to_sitk_mask(segmentation_node, segment_id: str, reference_volume_node,
                         what: str = "reference volume") -> tuple[sitk.Image, bool]:
    """Export one segment onto a reference volume's voxel grid as a 0/1 UInt8 SimpleITK mask.

    Returns ``(mask, resampled)``: ``resampled`` is True when the segment's own labelmap
    lies on another voxel lattice than the reference volume (other spacing, axes or a
    non-integer voxel offset, transforms included), or is not a labelmap at all (e.g. a
    closed surface), so Slicer had to resample (nearest neighbour) or rasterise it;
    the mask's boundary may then differ by up to a voxel from what was drawn. A segment
    drawn on the reference volume itself gives ``resampled == False`` and the drawn voxels.
    """
    require_in_scene(segmentation_node, "segmentation")
    if not segmentation_node.IsA("vtkMRMLSegmentationNode"):
        raise UserError(f"{node_label(segmentation_node, 'segmentation')} is a {segmentation_node.GetClassName()}, "
                        "not a segmentation")
    _require_volume(reference_volume_node, what)
    segmentation = segmentation_node.GetSegmentation()
    seg_label = node_label(segmentation_node, "segmentation")
    if not segment_id or segmentation.GetSegment(segment_id) is None:
        names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        have = ", ".join(f"'{n}'" for n in names) if names else "none"
        raise UserError(f"segment '{segment_id}' is not in {seg_label} (its segments: {have}); "
                        "select the ROI segment again")
    segment_label = f"segment '{_segment_name(segmentation_node, segment_id)}' of {seg_label}"
    ref_label = node_label(reference_volume_node, what)

    # Transforms must be linear for a well-defined grid (checked before any work)
    _parent_to_world(segmentation_node, "segmentation")
    ref_to_world = _ijk_to_world(reference_volume_node, what)

    labelmap_name = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    converted = segmentation.GetSourceRepresentationName() != labelmap_name
    if not segmentation.ContainsRepresentation(labelmap_name) and not segmentation.CreateRepresentation(labelmap_name):
        raise UserError(f"{segment_label} could not be converted to a labelmap; convert it in the Segmentations "
                        "module (Representations: Binary labelmap > Create) and try again")
    if _segment_voxel_count(segmentation_node, segment_id) == 0:
        raise UserError(f"{segment_label} is empty; draw the ROI (Segment Editor) and try again")

    segment_to_world = _segment_ijk_to_world(segmentation_node, segment_id)
    resampled = converted or segment_to_world is None or not _same_lattice(segment_to_world, ref_to_world)

    ids = vtk.vtkStringArray()
    ids.InsertNextValue(segment_id)
    exported = slicer.vtkOrientedImageData()
    slicer.vtkSlicerSegmentationsModuleLogic.GenerateMergedLabelmapInReferenceGeometry(
        segmentation_node, reference_volume_node, ids, slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY, exported,
        None)
    ref_image = reference_volume_node.GetImageData()
    scalars = exported.GetPointData().GetScalars() if exported.GetPointData() is not None else None
    if scalars is None or tuple(exported.GetExtent()) != tuple(ref_image.GetExtent()):
        raise RuntimeError(f"Slicer's segment export gave extent {exported.GetExtent()} instead of the "
                           f"extent {ref_image.GetExtent()} of {ref_label}")
    exported_matrix = vtk.vtkMatrix4x4()
    exported.GetImageToWorldMatrix(exported_matrix)
    local = vtk.vtkMatrix4x4()
    reference_volume_node.GetIJKToRASMatrix(local)
    if not np.allclose(_matrix(exported_matrix), _matrix(local), atol=1e-6):
        raise RuntimeError(f"Slicer's segment export is not on the grid of {ref_label}")

    dims = exported.GetDimensions()
    array = numpy_support.vtk_to_numpy(scalars).reshape(dims[2], dims[1], dims[0])
    mask_array = (array != 0).astype(np.uint8)
    if not mask_array.any():
        raise UserError(f"{segment_label} lies outside {ref_label} (no voxel of it falls inside that volume); "
                        "check that the ROI was drawn on this patient's series")
    mask = sitk.GetImageFromArray(mask_array)
    grid = _grid_from_ijk_to_ras(ref_to_world, dims, ref_label)
    return _apply_grid(mask, grid), bool(resampled)


def new_segmentation(scene, name: str, reference_volume_node=None):
    """A new segmentation node with display nodes; with ``reference_volume_node`` its
    reference geometry is that volume's grid (Segment Editor then draws on that grid)."""
    node = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
    node.CreateDefaultDisplayNodes()
    if reference_volume_node is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference_volume_node)
    return node


def _require_segment(segmentation_node, segment_id: str):
    segment = segmentation_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        raise UserError(f"segment '{segment_id}' is not in {node_label(segmentation_node, 'segmentation')}")
    return segment


def segment_id_by_name(segmentation_node, name: str) -> str:
    """The id of the segment called ``name`` (UserError when there is none)."""
    require_in_scene(segmentation_node, "segmentation")
    segment_id = segmentation_node.GetSegmentation().GetSegmentIdBySegmentName(name)
    if not segment_id:
        raise UserError(f"{node_label(segmentation_node, 'segmentation')} has no segment named '{name}'")
    return segment_id


def segment_is_empty(segmentation_node, segment_id: str) -> bool:
    """True when the segment labels no voxel (a segment that cannot be converted to a binary
    labelmap counts as empty)."""
    require_in_scene(segmentation_node, "segmentation")
    _require_segment(segmentation_node, segment_id)
    segmentation = segmentation_node.GetSegmentation()
    name = slicer.vtkSegmentationConverter.GetSegmentationBinaryLabelmapRepresentationName()
    if not segmentation.ContainsRepresentation(name) and not segmentation.CreateRepresentation(name):
        return True
    return _segment_voxel_count(segmentation_node, segment_id) == 0


def set_segment_mask(segmentation_node, segment_id: str, mask: sitk.Image) -> None:
    """Replace the voxels of an existing segment by a 0/1 mask (any grid; an empty mask
    clears it). The segment keeps its id, name, colour, terminology and tags, and the
    segmentation's other segments are untouched (overlaps included). Goes through Slicer's
    labelmap import, as ``slicer.util.updateSegmentBinaryLabelmapFromArray`` does."""
    require_in_scene(segmentation_node, "segmentation")
    _require_segment(segmentation_node, segment_id)
    scene = segmentation_node.GetScene()
    labelmap = sitk_to_volume_node(sitk.Cast(sitk.NotEqual(mask, 0), sitk.sitkUInt8), "__temporary mask__",
                                   scene=scene, labelmap=True)
    try:
        ids = vtk.vtkStringArray()
        ids.InsertNextValue(segment_id)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation_node,
                                                                                         ids):
            raise RuntimeError(f"Slicer could not import the mask into segment '{segment_id}'")
    finally:
        scene.RemoveNode(labelmap)


# ---------------------------------------------------------------------------------------
# Tables


def _is_number(value) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _is_bool(value) -> bool:
    return isinstance(value, (bool, np.bool_))


def results_to_table_node(rows: list[dict], table_node):
    """Write rows (dicts) into a table node, replacing its content; returns the node.

    Columns are the keys in order of first appearance. A column whose values are all
    numbers becomes a double column (missing -> NaN), all booleans a bit column (missing ->
    false), anything else a string column (lists/dicts as JSON, missing -> empty).
    """
    require_in_scene(table_node, "results table")
    columns: list[str] = []
    for row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    n = len(rows)
    arrays = []
    for name in columns:
        values = [row.get(name) for row in rows]
        present = [v for v in values if v is not None]
        if present and all(_is_bool(v) for v in present):
            array = vtk.vtkBitArray()
            array.SetNumberOfValues(n)
            for i, v in enumerate(values):
                array.SetValue(i, 1 if v else 0)
        elif present and all(_is_number(v) for v in present):
            array = vtk.vtkDoubleArray()
            array.SetNumberOfValues(n)
            for i, v in enumerate(values):
                array.SetValue(i, float(v) if v is not None else math.nan)
        else:
            array = vtk.vtkStringArray()
            array.SetNumberOfValues(n)
            for i, v in enumerate(values):
                if v is None:
                    text = ""
                elif isinstance(v, (list, tuple, dict)):
                    text = json.dumps(v, default=str)
                else:
                    text = str(v)
                array.SetValue(i, text)
        array.SetName(str(name))
        arrays.append(array)
    was_modifying = table_node.StartModify()
    try:
        table_node.RemoveAllColumns()
        for array in arrays:
            table_node.AddColumn(array)
    finally:
        table_node.EndModify(was_modifying)
    return table_node


def table_node_or_new(scene, node, name: str):
    """``node`` when it is still in the scene, else a new table node called ``name`` (a
    panel's result table: created on first use, reused afterwards)."""
    if node is not None and node.GetScene() is not None:
        return node
    return scene.AddNewNodeByClass("vtkMRMLTableNode", name)


def table_node_to_rows(table_node) -> list[dict]:
    """Read a table node back into rows (dicts): double columns as float (NaN as None),
    bit columns as bool, integer columns as int, anything else as text."""
    require_in_scene(table_node, "table")
    table = table_node.GetTable()
    rows: list[dict] = [{} for _ in range(table.GetNumberOfRows())]
    for c in range(table.GetNumberOfColumns()):
        column = table.GetColumn(c)
        name = column.GetName()
        for r in range(len(rows)):
            if isinstance(column, vtk.vtkBitArray):
                value = bool(column.GetValue(r))
            elif isinstance(column, (vtk.vtkDoubleArray, vtk.vtkFloatArray)):
                v = float(column.GetValue(r))
                value = None if math.isnan(v) else v
            elif isinstance(column, vtk.vtkDataArray):
                value = int(column.GetValue(r))
            else:
                value = column.GetValue(r)
            rows[r][name] = value
    return rows


# ---------------------------------------------------------------------------------------
# Views and the embedded Segment Editor (MRML side; the widgets call these)


def slice_views_layout_xml(views=("Red", "Yellow", "Green"), orientation: str = "Axial") -> str:
    """A Slicer layout description: the given slice views side by side, one orientation
    (register it with :func:`register_layout`)."""
    colours = {"Red": "#F34A33", "Yellow": "#EDD54C", "Green": "#6EB04B"}
    items = "".join(
        f'<item><view class="vtkMRMLSliceNode" singletontag="{v}">'
        f'<property name="orientation" action="default">{orientation}</property>'
        f'<property name="viewlabel" action="default">{v[0]}</property>'
        f'<property name="viewcolor" action="default">{colours.get(v, "#888888")}</property>'
        "</view></item>" for v in views)
    return f'<layout type="horizontal">{items}</layout>'


def register_layout(layout_node, layout_id: int, description: str) -> int:
    """Add (or update) a layout description in Slicer's layout node; returns its id."""
    if layout_node.IsLayoutDescription(layout_id):
        layout_node.SetLayoutDescription(layout_id, description)
    else:
        layout_node.AddLayoutDescription(layout_id, description)
    return layout_id


class PanelLayout:
    """A panel's own layout of slice views with a fixed orientation, shown on the MRML level
    exactly as ``qMRMLLayoutManager::setLayout`` does it (the layout node's view arrangement),
    and undone when the user switches to another layout.

    Why the orientation is set by hand: a layout description's ``<property name="orientation"
    action="default">`` is applied by ``vtkMRMLLayoutLogic::CreateMissingViews`` only to views
    the layout logic creates; Red, Yellow and Green exist from start-up (conventional layout:
    axial, sagittal, coronal), so they keep their orientation. :meth:`show` therefore sets the
    orientation of the existing slice nodes, and :meth:`layout_changed` (call it from the layout
    manager's ``layoutChanged(int)`` signal) puts each view it changed back to its default
    orientation (``vtkMRMLSliceNode::SetOrientationToDefault``) once another layout is shown,
    unless the user has re-oriented that view since.
    """

    def __init__(self, layout_id: int, views=("Red", "Yellow", "Green"), orientation: str = "Axial") -> None:
        self.layout_id = int(layout_id)
        self.views = tuple(views)
        self.orientation = orientation
        self.description = slice_views_layout_xml(self.views, orientation)
        self._changed: dict[str, str] = {}  # view -> orientation this layout set (to be restored)

    def show(self, layout_node, scene, assignment: dict | None = None, link: bool = True) -> list[str]:
        """Register and switch to the layout, orient its views and put the volumes of
        ``assignment`` (see :func:`show_in_views`) into them. Returns the views shown."""
        register_layout(layout_node, self.layout_id, self.description)
        layout_node.RemoveAllMaximizedViewNodes()
        layout_node.SetViewArrangement(self.layout_id)  # the layout logic creates missing views
        slices = {n.GetLayoutName(): n for n in nodes_by_class(scene, "vtkMRMLSliceNode")}
        for view in self.views:
            node = slices.get(view)
            if node is None:
                continue
            if node.GetOrientation() != self.orientation:
                if not node.SetOrientation(self.orientation):
                    raise RuntimeError(f"slice view {view} has no '{self.orientation}' orientation preset")
                self._changed.setdefault(view, self.orientation)
        return show_in_views(scene, dict(assignment or {}), link=link)

    def layout_changed(self, scene, view_arrangement: int) -> list[str]:
        """After a layout switch: when the new layout is not this one, views this layout
        re-oriented (and still so oriented) go back to their default orientation. Returns the
        views restored."""
        if int(view_arrangement) == self.layout_id or not self._changed:
            return []
        slices = {n.GetLayoutName(): n for n in nodes_by_class(scene, "vtkMRMLSliceNode")}
        restored = []
        for view, orientation in self._changed.items():
            node = slices.get(view)
            if node is not None and node.GetOrientation() == orientation and node.SetOrientationToDefault():
                restored.append(view)
        self._changed.clear()
        return restored


def show_in_views(scene, assignment: dict, link: bool = True) -> list[str]:
    """Put volumes into slice views by layout name: ``{"Red": {"background": node,
    "foreground": node, "label": node, "opacity": 0.4, "orientation": "Sagittal"}, ...}``;
    linked views scroll and zoom together. Works on the views' slice and slice composite
    nodes (MRML), so the layout must be set first. Returns the views that were found."""
    composites = {n.GetLayoutName(): n for n in nodes_by_class(scene, "vtkMRMLSliceCompositeNode")}
    slices = {n.GetLayoutName(): n for n in nodes_by_class(scene, "vtkMRMLSliceNode")}
    done = []
    for view, layers in assignment.items():
        composite = composites.get(view)
        if composite is None:
            continue
        for key, setter in (("background", composite.SetBackgroundVolumeID),
                            ("foreground", composite.SetForegroundVolumeID), ("label", composite.SetLabelVolumeID)):
            if key in layers:
                node = layers[key]
                setter(node.GetID() if node is not None else None)
        if "opacity" in layers:
            composite.SetForegroundOpacity(float(layers["opacity"]))
        if "orientation" in layers and view in slices:
            slices[view].SetOrientation(str(layers["orientation"]))
        composite.SetLinkedControl(bool(link))
        composite.SetHotLinkedControl(bool(link))
        done.append(view)
    return done


def segment_editor_node(scene, tag: str):
    """A panel's own Segment Editor parameter node: a scene singleton with ``tag``, so an
    embedded editor keeps its state with the scene without sharing the Segment Editor
    module's (created on first use, the same node afterwards)."""
    node = scene.GetSingletonNode(tag, "vtkMRMLSegmentEditorNode")
    if node is None:
        node = scene.CreateNodeByClass("vtkMRMLSegmentEditorNode")
        node.UnRegister(None)
        node.SetSingletonTag(tag)
        node = scene.AddNode(node)
    return node
