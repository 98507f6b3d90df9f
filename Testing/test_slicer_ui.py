"""The extension's Qt Designer files, checked without the Slicer application.

Every .ui file is loaded with PySide6's QUiLoader on the offscreen platform. Slicer's and
CTK's widgets (qMRMLNodeComboBox, ctkCollapsibleButton, ...) are not available there;
QUiLoader creates the base class named in the file's <customwidgets> instead, which keeps
every object name, layout and Qt property. On top of loading, the tests check what would
otherwise only fail inside Slicer:

- every ``ui.<name>`` the module code uses is an object in its .ui files;
- every Slicer/CTK widget property set in a .ui exists on the real class (names taken from
  the class headers, see KNOWN_PROPERTIES) or on its Qt base class;
- every ``SlicerParameterName`` names a field of the module's @parameterNodeWrapper class,
  and Slicer has a GUI connector for that widget class and field type (the pairs come from
  Slicer's Base/Python/slicer/parameterNodeWrapper/guiConnectors.py); an unconnectable
  pair makes ``connectGui`` raise when the module opens;
- every MRML widget gets the scene (a mrmlSceneChanged -> setMRMLScene connection in the
  .ui, or a setMRMLScene call in the code); without it a node selector stays empty;
- every number field of a parameter node has a range (``Annotated[float, WithinRange(...)]``
  or Minimum and Maximum): the spin-box connector sets the widget's range from it and to
  -inf..inf without one (guiConnectors.py ``QDoubleSpinBoxCtkSliderWidgetToFloatIntConnector``),
  replacing the .ui's range (issue 11, defect 3);
- every path field with a ``settingKey`` (a drop-down history) records its history: nothing
  but ``addCurrentPathToHistory()`` writes it (CTK ctkPathLineEdit.cpp; defect 10).
"""

from __future__ import annotations

import ast
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
QtWidgets = pytest.importorskip("PySide6.QtWidgets", reason="PySide6 is not installed (pip install PySide6-Essentials)")
QtUiTools = pytest.importorskip("PySide6.QtUiTools")
QtCore = pytest.importorskip("PySide6.QtCore")

ROOT = Path(__file__).resolve().parents[1]
MODULES = ("HRMMPredict", "AnnotationQC", "StrokeLesion")
UI_FILES = sorted(p for top in ROOT.iterdir() if top.is_dir() and not top.name.startswith(".")
                  and top.name not in ("build", "node_modules") for p in top.rglob("*.ui")
                  if not any(part.startswith(".") for part in p.relative_to(ROOT).parts))

# Q_PROPERTY names of the Slicer/CTK widget classes the .ui files use, from their headers
# (Slicer Libs/MRML/Widgets/<class>.h, Modules/Loadable/*/Widgets/<class>.h, CTK Libs/Widgets/<class>.h; Slicer main 2026-08,
# CTK main). Their Qt base class's properties are taken from PySide6 at run time.
# A class used in a .ui but missing here fails the test: add its header's Q_PROPERTY names.
KNOWN_PROPERTIES = {
    "qMRMLWidget": ("QWidget", set()),
    "qMRMLNodeComboBox": ("QWidget", {
        "currentNodeID", "currentNodeId", "nodeTypes", "showHidden", "showChildNodeTypes", "hideChildNodeTypes",
        "baseName", "noneEnabled", "addEnabled", "removeEnabled", "editEnabled", "renameEnabled",
        "interactionNodeSingletonTag", "selectNodeUponCreation", "noneDisplay", "sizeAdjustPolicy"}),
    "qMRMLSegmentSelectorWidget": ("QWidget", {
        "noneEnabled", "editEnabled", "segmentationNodeSelectorVisible", "multiSelection", "horizontalLayout",
        "selectNodeUponCreation"}),
    "qMRMLTableView": ("QTableView", {"transposed", "firstRowLocked", "firstColumnLocked"}),
    # Modules/Loadable/Segmentations/Widgets/qMRMLSegmentEditorWidget.h
    "qMRMLSegmentEditorWidget": ("QWidget", {
        "segmentationNodeSelectorVisible", "sourceVolumeNodeSelectorVisible", "maskingSectionVisible",
        "specifyGeometryButtonVisible", "show3DButtonVisible", "addRemoveSegmentButtonsVisible",
        "autoShowSourceVolumeNode", "masterVolumeNodeSelectorVisible", "autoShowMasterVolumeNode",
        "switchToSegmentationsButtonVisible", "undoEnabled", "maximumNumberOfUndoStates", "readOnly",
        "effectButtonStyle", "effectColumnCount", "unorderedEffectsVisible", "defaultTerminologyEntrySettingsKey",
        "defaultTerminologyEntry", "jumpToSelectedSegmentEnabled"}),
    "ctkCollapsibleButton": ("QAbstractButton", {
        "collapsed", "collapsedHeight", "flat", "contentsFrameShape", "contentsFrameShadow", "contentsLineWidth",
        "contentsMidLineWidth", "buttonTextAlignment", "indicatorAlignment"}),
    "ctkPathLineEdit": ("QWidget", {
        "label", "filters", "currentPath", "options", "settingKey", "showBrowseButton", "showHistoryButton",
        "sizeAdjustPolicy", "minimumContentsLength", "nameFilters"}),
}

# Widget class -> what a @parameterNodeWrapper field bound to it may be, after Slicer's
# guiConnectors.py (the connector classes' canRepresent).
NODE = "node"
ENUM = "enum"
CONNECTABLE = {
    "qMRMLNodeComboBox": {NODE},
    "ctkPathLineEdit": {"pathlib.Path", "Path"},
    "ctkDirectoryButton": {"pathlib.Path", "Path"},
    "QComboBox": {ENUM, "choice"},
    "ctkComboBox": {ENUM, "choice"},
    "QCheckBox": {"bool"},
    "ctkCheckBox": {"bool"},
    "QPushButton": {"bool"},
    "ctkCheckablePushButton": {"bool"},
    "QLineEdit": {"str"},
    "QLabel": {"str"},
    "QTextEdit": {"str"},
    "QSpinBox": {"int"},
    "QSlider": {"int"},
    "QDoubleSpinBox": {"float", "int"},
    "ctkSliderWidget": {"float", "int"},
    "ctkDoubleSpinBox": {"float", "int"},
    "qMRMLSliderWidget": {"float", "int"},
    "qMRMLSpinBox": {"float", "int"},
}


@pytest.fixture(scope="module")
def qapp():
    return QtWidgets.QApplication.instance() or QtWidgets.QApplication([])


def load_ui(path: Path):
    loader = QtUiTools.QUiLoader()
    widget = loader.load(str(path))
    return widget, loader.errorString()


def object_names(widget) -> set[str]:
    names = {widget.objectName()}
    names |= {child.objectName() for child in widget.findChildren(QtCore.QObject) if child.objectName()}
    return names


def ui_xml(path: Path) -> ET.Element:
    return ET.parse(path).getroot()


def custom_widgets(root: ET.Element) -> dict[str, str]:
    return {cw.findtext("class"): cw.findtext("extends") for cw in root.iter("customwidget")}


def module_ui_files(module: str) -> list[Path]:
    return [p for p in UI_FILES if p.relative_to(ROOT).parts[0] == module]


def module_source(module: str) -> str:
    return (ROOT / module / f"{module}.py").read_text(encoding="utf-8")


def used_ui_names(source: str) -> set[str]:
    """Names accessed as ``ui.<name>`` / ``self.ui.<name>`` in module code."""
    return set(re.findall(r"\bui\.([A-Za-z_]\w*)", source))


def qt_property_names(class_name: str) -> set[str]:
    meta = getattr(QtWidgets, class_name).staticMetaObject
    return {meta.property(i).name() for i in range(meta.propertyCount())}


def test_there_are_ui_files_for_every_module():
    for module in MODULES:
        assert (ROOT / module / "Resources" / "UI" / f"{module}.ui") in UI_FILES


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_ui_file_loads(qapp, path):
    widget, error = load_ui(path)
    assert widget is not None, f"{path}: QUiLoader could not load it ({error})"
    assert error == "", f"{path}: {error}"
    root = ui_xml(path)
    top = root.find("widget")
    assert top.get("name") == path.stem == root.findtext("class"), \
        f"{path}: the top-level widget and <class> must be named {path.stem}"
    if path.parent.parent.parent.name in MODULES:
        assert top.get("class") == "qMRMLWidget", f"{path}: a module panel's top-level widget must be a qMRMLWidget"
    # object names are unique (Slicer's childWidgetVariables keeps only the last of duplicates)
    names = [w.get("name") for w in root.iter() if w.tag in ("widget", "layout", "spacer", "action")]
    dupes = sorted({n for n in names if names.count(n) > 1})
    assert not dupes, f"{path}: duplicate object names {dupes}"


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_slicer_widgets_fall_back_to_their_declared_base(qapp, path):
    root = ui_xml(path)
    declared = custom_widgets(root)
    available = set(QtUiTools.QUiLoader().availableWidgets())
    widget, _ = load_ui(path)
    loaded = {w.objectName(): w for w in widget.findChildren(QtWidgets.QWidget)}
    loaded[widget.objectName()] = widget
    for element in root.iter("widget"):
        cls, name = element.get("class"), element.get("name")
        if cls in available:
            continue
        assert cls in declared, f"{path}: widget {name} of class {cls} is not declared in <customwidgets>"
        base = cls
        while base in declared:  # follow the <extends> chain to a Qt class
            base = declared[base]
        assert base in available, f"{path}: {cls} extends {declared[cls]}, which does not lead to a Qt class"
        assert type(loaded[name]).__name__ == base, f"{path}: {name} loaded as {type(loaded[name]).__name__}"


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_slicer_widget_properties_exist(path):
    problems = []
    root = ui_xml(path)
    for element in root.iter("widget"):
        cls = element.get("class")
        if cls not in custom_widgets(root):
            continue
        if cls not in KNOWN_PROPERTIES:
            problems.append(f"{cls}: unknown to this test; add its Q_PROPERTY names to KNOWN_PROPERTIES")
            continue
        qt_base, own = KNOWN_PROPERTIES[cls]
        allowed = own | qt_property_names(qt_base)
        for prop in element.findall("property"):
            if prop.get("stdset") == "0":  # dynamic property, e.g. SlicerParameterName
                continue
            if prop.get("name") not in allowed:
                problems.append(f"{element.get('name')} ({cls}) has no property '{prop.get('name')}'")
    assert not problems, f"{path}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("module", MODULES)
def test_module_code_uses_only_names_in_its_ui(qapp, module):
    source = module_source(module)
    for ref in re.findall(r"resourcePath\(\s*[\"']([^\"']+\.ui)[\"']\s*\)", source):
        assert (ROOT / module / "Resources" / ref).is_file(), f"{module}.py loads Resources/{ref}, which is absent"
    names: set[str] = set()
    for path in module_ui_files(module):
        widget, _ = load_ui(path)
        names |= object_names(widget)
    used = used_ui_names(source)
    assert used, f"{module}.py uses no ui.<name>; the check would be empty"
    missing = sorted(used - names)
    assert not missing, f"{module}.py uses ui.{', ui.'.join(missing)}, not in {module}'s .ui files"


def _parameter_fields(module: str) -> tuple[dict[str, str], set[str]]:
    """(field -> annotation text) of the module's @parameterNodeWrapper class, and the names
    of enum classes defined in the module."""
    tree = ast.parse(module_source(module))
    enums = {node.name for node in tree.body if isinstance(node, ast.ClassDef)
             and any(ast.unparse(b) in ("enum.Enum", "Enum") for b in node.bases)}
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(ast.unparse(d) == "parameterNodeWrapper" for d in node.decorator_list):
            fields = {st.target.id: ast.unparse(st.annotation) for st in node.body if isinstance(st, ast.AnnAssign)}
            return fields, enums
    raise AssertionError(f"{module}.py has no @parameterNodeWrapper class")


def _unannotated(annotation: str) -> str:
    """``Annotated[float, WithinRange(0, 1)]`` -> ``float`` (the connectors look at the
    unannotated type: parameterNodeWrapper's ``unannotatedType``)."""
    match = re.fullmatch(r"(?:typing\.)?Annotated\[\s*([^,\]]+)\s*,.*\]", annotation, flags=re.S)
    return match.group(1).strip() if match else annotation


def _kind(annotation: str, enums: set[str]) -> str:
    annotation = _unannotated(annotation)
    if annotation in enums:
        return ENUM
    if "Choice(" in annotation:
        return "choice"
    if re.fullmatch(r"(slicer\.)?vtkMRML\w+Node", annotation) or re.fullmatch(r"(Union\[|Optional\[)?(\s*(slicer\.)?vtkMRML\w+Node\s*[,|\]]?)+", annotation):
        return NODE
    return annotation


@pytest.mark.parametrize("module", MODULES)
def test_parameter_names_in_ui_are_connectable_fields(module):
    fields, enums = _parameter_fields(module)
    problems = []
    for path in module_ui_files(module):
        for element in ui_xml(path).iter("widget"):
            for prop in element.findall("property"):
                if prop.get("name") != "SlicerParameterName":
                    continue
                field = prop.findtext("string")
                cls, name = element.get("class"), element.get("name")
                if field not in fields:
                    problems.append(f"{name}: SlicerParameterName '{field}' is not a field of {module}ParameterNode")
                    continue
                kind = _kind(fields[field], enums)
                if cls not in CONNECTABLE or kind not in CONNECTABLE[cls]:
                    problems.append(f"{name} ({cls}) cannot be connected to {field}: {fields[field]} "
                                    "(no connector in Slicer's parameterNodeWrapper)")
    assert not problems, "\n  ".join([f"{module}:"] + problems)


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_mrml_widgets_receive_the_scene(path):
    root = ui_xml(path)
    top = root.find("widget").get("name")
    connected = {c.findtext("receiver") for c in root.iter("connection")
                 if c.findtext("sender") == top and c.findtext("signal") == "mrmlSceneChanged(vtkMRMLScene*)"
                 and c.findtext("slot") == "setMRMLScene(vtkMRMLScene*)"}
    module = path.relative_to(ROOT).parts[0]
    source = module_source(module) if module in MODULES else ""
    in_code = set(re.findall(r"\bui\.(\w+)\.setMRMLScene\(", source))
    mrml_widgets = [w.get("name") for w in root.find("widget").iter("widget")
                    if w.get("class", "").startswith("qMRML") and w.get("name") != top]
    missing = [name for name in mrml_widgets if name not in connected | in_code]
    assert not missing, f"{path}: MRML widgets without a scene: {missing}"


# --------------------------------------------------------------------------------------
# Number ranges (defect 3) and path history (defect 10)

RANGE_VALIDATORS = ("WithinRange", "Minimum", "Maximum")


def _parameter_class(module: str) -> ast.ClassDef:
    tree = ast.parse(module_source(module))
    return next(n for n in tree.body if isinstance(n, ast.ClassDef)
                and any(ast.unparse(d) == "parameterNodeWrapper" for d in n.decorator_list))


def _numeric_fields(module: str) -> dict[str, tuple[ast.expr, ast.expr | None]]:
    """Number fields (float or int, annotated or not): name -> (annotation, default)."""
    out = {}
    for st in _parameter_class(module).body:
        if isinstance(st, ast.AnnAssign) and _unannotated(ast.unparse(st.annotation)) in ("float", "int"):
            out[st.target.id] = (st.annotation, st.value)
    return out


def _range(annotation: ast.expr) -> tuple[float, float] | None:
    """(minimum, maximum) from WithinRange or Minimum + Maximum in ``Annotated[...]``."""
    if not (isinstance(annotation, ast.Subscript) and ast.unparse(annotation.value).endswith("Annotated")):
        return None
    calls = {ast.unparse(c.func).split(".")[-1]: [ast.literal_eval(a) for a in c.args]
             for c in annotation.slice.elts[1:] if isinstance(c, ast.Call)}
    if "WithinRange" in calls:
        return tuple(float(v) for v in calls["WithinRange"])
    if "Minimum" in calls and "Maximum" in calls:
        return float(calls["Minimum"][0]), float(calls["Maximum"][0])
    return None


def _spin_box_ranges(module: str) -> dict[str, tuple[float, float]]:
    """field -> (minimum, maximum) of the spin box the .ui binds to it."""
    out = {}
    for path in module_ui_files(module):
        for element in ui_xml(path).iter("widget"):
            props = {p.get("name"): p for p in element.findall("property")}
            if "SlicerParameterName" in props and "minimum" in props and "maximum" in props:
                value = lambda p: float(next(iter(p)).text)  # noqa: E731 - <double> or <number>
                out[props["SlicerParameterName"].findtext("string")] = (value(props["minimum"]),
                                                                       value(props["maximum"]))
    return out


def test_parameter_node_validators_exist_in_slicer():
    """The validators the modules use are exported by slicer.parameterNodeWrapper (5.10 and
    5.12: Base/Python/slicer/parameterNodeWrapper/validators.py ``__all__``, re-exported by its
    ``__init__``), checked in the source text of every module that imports them."""
    for module in MODULES:
        tree = ast.parse(module_source(module))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "slicer.parameterNodeWrapper":
                names = {a.name for a in node.names}
                assert names <= {"parameterNodeWrapper", "WithinRange", "Minimum", "Maximum", "Choice", "Decimals",
                                 "SingleStep"}, f"{module}.py imports {names} from slicer.parameterNodeWrapper"


@pytest.mark.parametrize("module", MODULES)
def test_every_number_field_has_a_range(module):
    fields = _numeric_fields(module)
    ui_ranges = _spin_box_ranges(module)
    problems = []
    for name, (annotation, default) in fields.items():
        bounds = _range(annotation)
        if bounds is None:
            problems.append(f"{name}: {ast.unparse(annotation)} has no range; the spin box would accept -inf..inf "
                            "(use Annotated[float, WithinRange(min, max)])")
            continue
        if default is not None and not bounds[0] <= float(ast.literal_eval(default)) <= bounds[1]:
            problems.append(f"{name}: default {ast.unparse(default)} is outside {bounds}")
        if name in ui_ranges and ui_ranges[name] != bounds:
            problems.append(f"{name}: range {bounds} differs from its spin box's {ui_ranges[name]} in the .ui")
    if module != "HRMMPredict":
        assert fields, f"{module}ParameterNode has no number field; the check would be empty"
    assert not problems, f"{module}ParameterNode:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("module", MODULES)
def test_path_fields_with_history_record_it(module):
    source = module_source(module)
    problems = []
    with_history = [w.get("name") for path in module_ui_files(module) for w in ui_xml(path).iter("widget")
                    if w.get("class") == "ctkPathLineEdit" and any(p.get("name") == "settingKey"
                                                                  for p in w.findall("property"))]
    for name in with_history:
        if not re.search(rf"remember_path\(self\.ui\.{name}\)|ui\.{name}\.addCurrentPathToHistory\(", source):
            problems.append(f"{name} has a settingKey but its history is never written "
                            f"(call panel_support.remember_path(self.ui.{name}) after the path was used)")
    if problems and module == "HRMMPredict":
        pytest.xfail("HRMMPredict.py is changed by its owner later: " + "; ".join(problems))
    assert not problems, f"{module}.py:\n  " + "\n  ".join(problems)


# --------------------------------------------------------------------------------------
# AnnotationQC's "Pre-annotation review" section (issue 16)

#: widget -> (class, parameter-node field or None)
REVIEW_WIDGETS = {
    "loopPathLineEdit": ("ctkPathLineEdit", "loopFolder"),
    "loopReaderLineEdit": ("QLineEdit", "loopReader"),
    "reviewReasonLineEdit": ("QLineEdit", "loopRejectReason"),
    "reviewNextButton": ("QPushButton", None),
    "reviewAcceptButton": ("QPushButton", None),
    "reviewRedrawButton": ("QPushButton", None),
    "reviewRejectButton": ("QPushButton", None),
    "reviewCaseLabel": ("QLabel", None),
    "reviewStatusLabel": ("QLabel", None),
}


def test_annotationqc_review_section_has_its_widgets_fields_and_handlers(qapp):
    path = ROOT / "AnnotationQC" / "Resources" / "UI" / "AnnotationQC.ui"
    section = next(w for w in ui_xml(path).iter("widget") if w.get("name") == "reviewCollapsibleButton")
    assert section.get("class") == "ctkCollapsibleButton"
    assert section.find("property[@name='text']").findtext("string") == "Pre-annotation review"
    inside = {w.get("name"): w for w in section.iter("widget")}
    fields, _enums = _parameter_fields("AnnotationQC")
    source = module_source("AnnotationQC")
    for name, (cls, field) in REVIEW_WIDGETS.items():
        assert name in inside, f"{name} is not in the review section"
        assert inside[name].get("class") == cls, f"{name} is a {inside[name].get('class')}, expected {cls}"
        props = {p.get("name"): p for p in inside[name].findall("property")}
        if field is not None:
            assert props["SlicerParameterName"].findtext("string") == field
            assert field in fields
        if cls == "QPushButton":
            handler = re.search(rf'ui\.{name}\.connect\("clicked\(bool\)", self\.(on\w+)\)', source)
            assert handler, f"{name} is not connected in AnnotationQC.py"
            assert re.search(rf"\n    def {handler.group(1)}\(self\)", source), f"{handler.group(1)} is not defined"
        if cls == "QLabel":
            assert props["wordWrap"].findtext("bool") == "true"  # the reason can be long
    folder = {p.get("name"): p for p in inside["loopPathLineEdit"].findall("property")}
    filters = folder["filters"].findtext("set")
    assert "ctkPathLineEdit::Dirs" in filters and "ctkPathLineEdit::Files" not in filters
    assert folder["settingKey"].findtext("string") == "AnnotationQC/LoopFolder"
    assert _unannotated(fields["loopFolder"]) in ("pathlib.Path", "Path")
    # loaded with Qt: the widgets sit inside the section (collapsing it hides them)
    widget, _ = load_ui(path)
    box = widget.findChild(QtWidgets.QWidget, "reviewCollapsibleButton")
    for name in REVIEW_WIDGETS:
        child = widget.findChild(QtWidgets.QWidget, name)
        assert child is not None and box.isAncestorOf(child), name
