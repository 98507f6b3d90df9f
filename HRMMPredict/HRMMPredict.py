import enum
import importlib
import importlib.util
import logging
import pathlib
import shutil
import tempfile

import qt
import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import *
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import parameterNodeWrapper

from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode

# Start-up imports: the standard library, qt, vtk and slicer, plus standard-library-only
# helpers (Testing/slicer_layer/test_startup_imports.py checks it). The panel's MRML logic
# (HRMMPredictLib.slicer.panel_logic and panel_results, ClinicalMRICommonLib.mrml_bridge: numpy,
# SimpleITK, MRML) is imported on first use. The science (pyradiomics, scikit-learn, torch)
# runs in a separate process (HRMMPredictLib.slicer.predict_worker) and is imported in
# Slicer's process only by HRMMPredictLogic.predict (scripting), never when Slicer starts.
from ClinicalMRICommonLib import panel_support, segment_editor
from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.process_runner import ProcessRunner, RunState
from HRMMPredictLib.slicer import series_guess
from HRMMPredictLib.slicer.predict_worker import worker_command


def _panelLogic():
    from HRMMPredictLib.slicer import panel_logic

    return panel_logic


def _panelResults():
    from HRMMPredictLib.slicer import panel_results

    return panel_results


def _packages():
    from HRMMPredictLib.slicer import packages  # importlib.metadata: not at start-up

    return packages


def _mrmlBridge():
    from ClinicalMRICommonLib import mrml_bridge

    return mrml_bridge


#
# HRMMPredict
#


class HRMMPredict(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("HRMM Predict")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        # ClinicalMRICommon (hidden) ships ClinicalMRICommonLib: image I/O, files, errors, MRML bridge.
        self.parent.dependencies = ["ClinicalMRICommon"]
        self.parent.contributors = ["ClinicalMRI extension developers"]
        self.parent.helpText = _("""
Predicts high-risk multiple myeloma (HRMM: high-risk cytogenetics or extramedullary disease)
versus standard-risk myeloma for one vertebral lesion from sagittal spine MRI.
<ol>
<li>Load the study. The T1WI, T2WI and fat-suppressed T2WI series are guessed from their
series descriptions (check them).</li>
<li>Draw the ROI on the largest involved vertebral body: <i>Create ROI segment</i>, then paint
it slice by slice in the embedded Segment Editor on any of the three series (<i>Show side by
side</i> puts them next to each other). It is resampled onto the other series' grids when
they differ, and the result says so.</li>
<li>Choose a model bundle folder written by <code>hrmm train</code> (remembered); its date,
cohort and AUCs are shown.</li>
<li>Predict. The work runs in a separate process (Slicer stays usable; Cancel stops it). The
first time, the Python packages it needs (PyTorch too when the bundle has a deep model) are
installed with pip after you confirm; nothing is imported into Slicer for that. An already
installed PyTorch (e.g. a CUDA build from the PyTorch extension) is used as it is.</li>
</ol>
The result gives, for each model of the bundle (the fused model first), the probability of
high risk and the class at the model's stored threshold, each selected feature's value
against its training range, and the deep model's 2.5D input crops. It is stored in table
nodes saved with the scene and can be exported as JSON or CSV. The numbers are those of
<code>hrmm predict</code> on the command line.
Research use only; not for clinical decisions.
""")
        self.parent.acknowledgementText = _("""
Method from the study "Radiomics, deep learning and combined radiomics-deep learning models based on
multiparametric MRI for predicting high-risk multiple myeloma" (Affiliated Hospital of Qingdao University;
140 patients, 258 vertebral lesions; sagittal T1WI, T2WI and FS-T2WI; pyradiomics features with N4 bias-field
correction and mu +/- 3 sigma normalisation, reader-agreement filter ICC &gt;= 0.75, z-score, Mann-Whitney U,
Pearson, mRMR and LASSO selection, ExtraTrees; 2.5D DenseNet169 deep features; fused model).
Built on 3D Slicer, pyradiomics, SimpleITK, scikit-learn, PyTorch and MONAI.
""")


#
# HRMMPredictParameterNode
#


class HRMMPredictDevice(enum.Enum):
    """Where the deep model runs."""

    # values are the library's device names (HRMMPredictLib.deep.model.select_device)
    AUTO = "auto"
    CPU = "cpu"
    GPU = "cuda"

    def label(self):
        return {
            HRMMPredictDevice.AUTO: _("Auto (GPU when available)"),
            HRMMPredictDevice.CPU: _("CPU"),
            HRMMPredictDevice.GPU: _("GPU (CUDA)"),
        }[self]


@parameterNodeWrapper
class HRMMPredictParameterNode:
    """
    The parameters of one prediction, saved with the scene.

    t1Volume, t2Volume, fst2Volume - the three sagittal sequences.
    roiSegmentation, roiSegmentId - the segment outlining the largest involved vertebral body.
    modelDirectory - the model bundle folder (written by ``hrmm train``).
    device - where the deep model runs.
    summaryTable - probability and class per model (written by Predict; the whole result is
        kept as JSON in its "HRMMPredict.Result" attribute).
    featureTable - the selected features' values against their training range (written by Predict).
    """

    t1Volume: vtkMRMLScalarVolumeNode
    t2Volume: vtkMRMLScalarVolumeNode
    fst2Volume: vtkMRMLScalarVolumeNode
    roiSegmentation: vtkMRMLSegmentationNode
    roiSegmentId: str = ""
    modelDirectory: pathlib.Path
    device: HRMMPredictDevice = HRMMPredictDevice.AUTO
    summaryTable: vtkMRMLTableNode
    featureTable: vtkMRMLTableNode


#
# HRMMPredictWidget
#


class HRMMPredictWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py

    The prediction runs in a child process (HRMMPredictLib.slicer.predict_worker) watched by a
    ClinicalMRICommonLib.process_runner.ProcessRunner; a QTimer drains its output on the main
    thread, so the scene and the widgets are only touched here.
    """

    POLL_INTERVAL_MS = 200
    SEGMENT_EDITOR_TAG = "HRMMPredictSegmentEditor"
    LAYOUT_ID = 40510  # three sagittal views: T1WI | T2WI | FS-T2WI
    LAST_MODEL_SETTING = "HRMMPredict/LastModelDirectory"

    def __init__(self, parent=None) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingGui = False
        self.runner = None
        self.probeRunner = None
        self.pollTimer = None
        self._jobFolder = None
        self._deviceInfo = None
        self._guessPending = False
        self._shownResultKey = None
        self._bundleSummary = None
        self._bundleSummaryCache = {}
        self._summaryDirectory = None
        self._previewLabels = []
        self._storedResultCache = (None, None)  # ((table ID, table MTime), result)
        self._layoutManager = None

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/HRMMPredict.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        # The .ui connects the top-level widget's mrmlSceneChanged signal to every MRML widget.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = HRMMPredictLogic()
        self.runner = ProcessRunner()
        self.probeRunner = ProcessRunner()
        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(self.POLL_INTERVAL_MS)
        self.pollTimer.connect("timeout()", self._onPollTimer)
        self.ui.progressBar.hide()
        self.ui.previewLabel.hide()
        self.ui.previewFrame.hide()

        # The embedded Segment Editor has its own parameter node (a scene singleton, set by
        # segment_editor.enter/bind); the .ui keeps its selectors visible.
        segment_editor.setup(self.ui.segmentEditorWidget, slicer.mrmlScene, selectors_visible=True)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onNodeAdded)

        # The segment selector has no parameter-node connector: keep it in sync by hand.
        self.ui.roiSegmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onRoiSegmentationChanged)
        self.ui.roiSegmentSelector.connect("currentSegmentChanged(QString)", self.onRoiSegmentChanged)
        self.ui.segmentEditorWidget.connect("currentSegmentIDChanged(QString)", self.onEditorSegmentChanged)
        self.ui.guessSeriesButton.connect("clicked(bool)", self.onGuessSeries)
        self.ui.showSeriesButton.connect("clicked(bool)", self.onShowSeries)
        self.ui.createRoiButton.connect("clicked(bool)", self.onCreateRoi)
        self.ui.predictButton.connect("clicked(bool)", self.onPredictButton)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        # Side-by-side views are put back to their orientation when another layout is shown.
        self._layoutManager = slicer.app.layoutManager()
        if self._layoutManager is not None:
            self._layoutManager.connect("layoutChanged(int)", self.onLayoutChanged)

        self.initializeParameterNode()
        # Connected only now: while the parameter node is connected to the GUI the field
        # shows its unset Path() as "." (which would have been remembered as a folder).
        self.ui.modelDirectoryPathLineEdit.connect("currentPathChanged(QString)", self.onModelDirectoryChanged)

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self.removeObservers()
        if self.pollTimer:
            self.pollTimer.stop()
        for runner in (self.runner, self.probeRunner):
            if runner:
                runner.close()  # never leave a prediction process behind
        self._removeJobFolder()
        if self._layoutManager is not None:
            self._layoutManager.disconnect("layoutChanged(int)", self.onLayoutChanged)
        segment_editor.exit(self.ui.segmentEditorWidget)

    def enter(self) -> None:
        """Called each time the user opens this module."""
        segment_editor.enter(self.ui.segmentEditorWidget, slicer.mrmlScene, self.SEGMENT_EDITOR_TAG)
        self.initializeParameterNode()
        self.ui.segmentEditorWidget.updateWidgetFromMRML()
        self._updateSegmentEditorFromParameterNode()
        self._probeDevice()

    def exit(self) -> None:
        """Called each time the user opens a different module (a running prediction goes on)."""
        segment_editor.exit(self.ui.segmentEditorWidget)
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed."""
        if self.runner and self.runner.state == RunState.RUNNING:
            self.runner.cancel()  # its nodes are going away
        self.setParameterNode(None)
        segment_editor.release(self.ui.segmentEditorWidget)
        self._storedResultCache = (None, None)
        self._clearResults()

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        if self.parent.isEntered:
            segment_editor.enter(self.ui.segmentEditorWidget, slicer.mrmlScene, self.SEGMENT_EDITOR_TAG)
            self.initializeParameterNode()

    def onNodeAdded(self, caller, event) -> None:
        """A study being loaded: guess the sequences once the loading settles (empty selectors only)."""
        if not self._guessPending:
            self._guessPending = True
            qt.QTimer.singleShot(0, self._guessSeriesAfterLoad)

    # -- parameter node ----------------------------------------------------------------

    def initializeParameterNode(self) -> None:
        """Ensure parameter node exists and observed."""
        self.setParameterNode(self.logic.getParameterNode())
        if self._parameterNode and not panel_support.path_is_set(self._parameterNode.modelDirectory):
            last = qt.QSettings().value(self.LAST_MODEL_SETTING)
            if panel_support.path_is_set(last) and pathlib.Path(last).is_dir():
                self._parameterNode.modelDirectory = pathlib.Path(last)

    def setParameterNode(self, inputParameterNode) -> None:
        """Set and observe the parameter node; the GUI follows it."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            # Widgets with a "SlicerParameterName" property in the .ui are connected here.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        if self._parameterNode and str(self._parameterNode.modelDirectory) != self._summaryDirectory:
            self._updateModelSummary()  # e.g. a scene with another bundle was loaded
        self._updateSegmentSelectorFromParameterNode()
        self._updateSegmentEditorFromParameterNode()
        self._updateResultTableViews()
        self._showStoredResult()
        self._updateButtons()

    def _updateSegmentSelectorFromParameterNode(self) -> None:
        if not self._parameterNode or self._updatingGui:
            return
        self._updatingGui = True
        try:
            segmentation = self._parameterNode.roiSegmentation
            if self.ui.roiSegmentSelector.currentNode() != segmentation:
                self.ui.roiSegmentSelector.setCurrentNode(segmentation)
            segmentId = self._parameterNode.roiSegmentId
            if segmentation and segmentId and self.ui.roiSegmentSelector.currentSegmentID() != segmentId:
                self.ui.roiSegmentSelector.setCurrentSegmentID(segmentId)
        finally:
            self._updatingGui = False

    def _updateSegmentEditorFromParameterNode(self) -> None:
        """The embedded editor edits the selected ROI segmentation; it draws on T2WI unless
        the user picked another series as its source volume."""
        if not self._parameterNode or self._updatingGui:
            return
        editor = self.ui.segmentEditorWidget
        self._updatingGui = True
        try:
            segmentation = self._parameterNode.roiSegmentation
            source = None
            if segmentation and editor.sourceVolumeNode() is None:
                source = self._drawingVolume()
            if editor.segmentationNode() != segmentation or source is not None:
                # editor node, then segmentation, then source volume (the order the logic needs)
                segment_editor.bind(editor, slicer.mrmlScene, self.SEGMENT_EDITOR_TAG, segmentation, source)
            segmentId = self._parameterNode.roiSegmentId
            if segmentation and segmentId and editor.currentSegmentID() != segmentId:
                editor.setCurrentSegmentID(segmentId)
        finally:
            self._updatingGui = False

    def _drawingVolume(self):
        """The series the ROI is drawn on: T2WI, else the first selected one."""
        p = self._parameterNode
        return (p.t2Volume or p.t1Volume or p.fst2Volume) if p else None

    def _updateResultTableViews(self) -> None:
        for view, node in ((self.ui.summaryTableView, self._parameterNode.summaryTable if self._parameterNode else None),
                           (self.ui.featuresTableView, self._parameterNode.featureTable if self._parameterNode else None)):
            if view.mrmlTableNode() != node:
                view.setMRMLTableNode(node)

    def _setRoiInParameterNode(self, segmentation, segmentId) -> None:
        """Write the segmentation and segment into the parameter node in one go (the widgets
        are not re-synchronised from a half-written parameter node)."""
        if self._parameterNode is None or self._updatingGui:
            return
        self._updatingGui = True
        try:
            wasModifying = self._parameterNode.StartModify()
            self._parameterNode.roiSegmentation = segmentation
            self._parameterNode.roiSegmentId = segmentId or ""
            self._parameterNode.EndModify(wasModifying)
        finally:
            self._updatingGui = False
        self._onParameterNodeModified()

    def onRoiSegmentationChanged(self, node) -> None:
        self._setRoiInParameterNode(self.ui.roiSegmentSelector.currentNode(),
                                    self.ui.roiSegmentSelector.currentSegmentID())

    def onRoiSegmentChanged(self, segmentId) -> None:
        self._setRoiInParameterNode(self.ui.roiSegmentSelector.currentNode(), segmentId)

    def onEditorSegmentChanged(self, segmentId) -> None:
        if segmentId and self.ui.segmentEditorWidget.segmentationNode():
            self._setRoiInParameterNode(self.ui.segmentEditorWidget.segmentationNode(), segmentId)

    # -- inputs ------------------------------------------------------------------------

    def _seriesDescriptions(self) -> dict:
        """Node ID -> "name + DICOM series description" of every scalar volume (not labelmaps)."""
        descriptions = {}
        for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
            if node.IsA("vtkMRMLLabelMapVolumeNode"):
                continue
            text = node.GetName() or ""
            uids = (node.GetAttribute("DICOM.instanceUIDs") or "").split()
            database = getattr(slicer, "dicomDatabase", None)
            if uids and database:
                description = database.instanceValue(uids[0], "0008,103e")
                if description and description not in text:
                    text = f"{text} {description}"
            descriptions[node.GetID()] = text
        return descriptions

    def _guessSeriesAfterLoad(self) -> None:
        self._guessPending = False
        if self._parameterNode is None or (self.runner and self.runner.state.busy):
            return
        self.logic.guessSequences(self._parameterNode, self._seriesDescriptions(), overwrite=False)

    def onGuessSeries(self) -> None:
        guesses = self.logic.guessSequences(self._parameterNode, self._seriesDescriptions(), overwrite=True)
        missing = [label for key, label in HRMMPredictLogic.LABELS.items() if guesses.get(key) is None]
        self.ui.statusLabel.text = (_("No series looks like: {items}; select them by hand.").format(
            items=", ".join(missing)) if missing else _("Series chosen from their names; check them."))

    def onShowSeries(self) -> None:
        panel_support.run_action(_("Could not show the series."), self.logic.showSeriesSideBySide,
                                 self._parameterNode, self.LAYOUT_ID)

    def onLayoutChanged(self, layoutId) -> None:
        """Another layout: the side-by-side's sagittal Red and Green views go back to axial/coronal."""
        self.logic.layoutChanged(layoutId)

    def onCreateRoi(self) -> None:
        panel_support.run_action(_("Could not create the ROI segment."), self._createRoi)

    def _createRoi(self) -> None:
        segmentation, segmentId = self.logic.createRoiSegment(self._parameterNode)
        self._setRoiInParameterNode(segmentation, segmentId)
        editor = self.ui.segmentEditorWidget
        segment_editor.bind(editor, slicer.mrmlScene, self.SEGMENT_EDITOR_TAG, segmentation, self._drawingVolume())
        editor.setCurrentSegmentID(segmentId)
        self.ui.roiCollapsibleButton.collapsed = False
        editor.setActiveEffectByName("Paint")

    # -- model bundle and device -------------------------------------------------------

    def onModelDirectoryChanged(self, path) -> None:
        # (may run before the parameter node has the new path: use the signal's)
        if panel_support.path_is_set(path) and pathlib.Path(path).is_dir():
            qt.QSettings().setValue(self.LAST_MODEL_SETTING, path)
        self._updateModelSummary(path)

    def _updateModelSummary(self, directory=None) -> None:
        """Show the bundle's checked summary (``directory``: default the parameter node's)."""
        self._bundleSummary = None
        if directory is None:
            directory = self._parameterNode.modelDirectory if self._parameterNode else None
        self._summaryDirectory = str(directory) if directory is not None else None
        if not panel_support.path_is_set(directory):
            self.ui.modelSummaryLabel.text = _("No model bundle selected.")
            return
        try:
            manifest = pathlib.Path(directory) / "manifest.json"
            key = (str(directory), manifest.stat().st_mtime_ns if manifest.is_file() else None)
            if key not in self._bundleSummaryCache:  # checking the checksums reads the whole bundle
                self._bundleSummaryCache = {key: self.logic.bundleSummary(directory)}
            self._bundleSummary = self._bundleSummaryCache[key]
        except UserError as exc:
            self.ui.modelSummaryLabel.text = _("Not usable: {reason}").format(reason=str(exc))
        except ImportError as exc:
            self.ui.modelSummaryLabel.text = _(
                "The bundle can be checked once the Python packages are installed (Predict offers to install "
                "them; missing: {name}).").format(name=exc.name)
        else:
            self.ui.modelSummaryLabel.text = "\n".join(_panelResults().bundle_summary_lines(self._bundleSummary))
            if panel_support.path_or_none(self.ui.modelDirectoryPathLineEdit.currentPath) == pathlib.Path(directory):
                panel_support.remember_path(self.ui.modelDirectoryPathLineEdit)  # a verified bundle: into its history
        self._updateDeviceInfo()
        self._updateButtons()

    def _probeDevice(self) -> None:
        """Ask a worker process what PyTorch finds (importing torch here would freeze Slicer)."""
        if self._deviceInfo is not None or self.probeRunner.state.busy:
            return
        if importlib.util.find_spec("torch") is None:
            self._deviceInfo = {"torch": None, "gpu": None,
                                "gpu_unavailable": _("PyTorch is not installed yet (Predict installs it when the "
                                                     "bundle has a deep model)")}
            self._updateDeviceInfo()
            return
        self.ui.deviceInfoLabel.text = _("Checking PyTorch and the GPU...")
        if self.probeRunner.start(worker_command(probe=True), base_env=self.logic.childEnvironment()):
            self.pollTimer.start()
        else:
            self.ui.deviceInfoLabel.text = self.probeRunner.error

    def _updateDeviceInfo(self) -> None:
        info = self._deviceInfo
        if info is None:
            return
        needsTorch = self._bundleSummary is not None and _panelResults().bundle_has_deep_model(self._bundleSummary)
        if info.get("gpu"):
            text = _("GPU found: {gpu}.").format(gpu=info["gpu"])
        else:
            text = _("No GPU: {reason}.").format(reason=(info.get("gpu_unavailable") or "").rstrip("."))
            if needsTorch:
                text += " " + _("The deep model runs on the CPU, which is slower.")
        if info.get("torch"):
            text += " " + _("PyTorch {version}.").format(version=info["torch"])
        self.ui.deviceInfoLabel.text = text

    # -- predict / cancel --------------------------------------------------------------

    def _updateButtons(self) -> None:
        """Predict turns into Cancel while a prediction runs; disabled (tooltip says why)
        until the inputs are complete."""
        state = self.runner.state if self.runner else RunState.IDLE
        button = self.ui.predictButton
        if state == RunState.RUNNING:
            button.text = _("Cancel")
            button.enabled = True
            button.toolTip = _("Stop the prediction (its process is ended).")
        elif state in (RunState.CANCELLING, RunState.IMPORTING):
            button.text = _("Cancelling...") if state == RunState.CANCELLING else _("Importing...")
            button.enabled = False
            button.toolTip = ""
        else:
            reason = self.logic.missingInputs(self._parameterNode) if self._parameterNode else _("Initializing.")
            button.text = _("Predict")
            button.enabled = not reason
            button.toolTip = reason or _("Predict the risk class of the lesion outlined by the ROI segment.")
        busy = state.busy
        for widget in (self.ui.inputsCollapsibleButton, self.ui.modelCollapsibleButton, self.ui.createRoiButton):
            widget.enabled = not busy
        self.ui.progressBar.visible = busy
        self.ui.exportButton.enabled = not busy and self._storedResult() is not None

    def _showStatus(self, message) -> None:
        self.ui.statusLabel.text = message
        slicer.util.showStatusMessage(message)

    def _appendLog(self, text) -> None:
        self.ui.logTextEdit.appendPlainText(text)

    def onPredictButton(self) -> None:
        if self.runner.state == RunState.RUNNING:
            self.runner.cancel()
            self._showStatus(_("Cancelling..."))
            self._updateButtons()
            return
        if self.runner.state.busy:
            return
        ok, _started = panel_support.run_action(_("Prediction could not start."), self._startPrediction)
        if not ok and not self.runner.state.busy:
            self._removeJobFolder()  # nothing runs in it
        self._updateButtons()

    def _startPrediction(self) -> None:
        reason = self.logic.missingInputs(self._parameterNode)
        if reason:
            raise UserError(reason)
        # The packages first (the bundle's model kinds decide which), then the bundle's checks.
        self.logic.ensurePythonPackages(_panelResults().manifest_model_kinds(self._parameterNode.modelDirectory))
        if self._deviceInfo is not None and not self._deviceInfo.get("torch") and importlib.util.find_spec("torch"):
            self._deviceInfo = None  # PyTorch was just installed: ask again what it finds
            self._probeDevice()
        if self._bundleSummary is None:
            self._updateModelSummary()
            if self._bundleSummary is None:
                raise UserError(self.ui.modelSummaryLabel.text)
        self._removeJobFolder()
        self._jobFolder = tempfile.mkdtemp(prefix="HRMMPredict-", dir=slicer.app.temporaryPath)
        self.ui.logTextEdit.clear()
        # Reading the nodes is quick and must happen here (MRML is not thread-safe).
        request = self.logic.writeRequest(self._parameterNode, self._jobFolder, progress=self._showStatus)
        command = worker_command(request)
        self._appendLog(" ".join(command))
        if not self.runner.start(command, base_env=self.logic.childEnvironment()):
            raise UserError(self.runner.error)
        self._showStatus(_("Predicting..."))
        self.pollTimer.start()

    def _onPollTimer(self) -> None:
        for line in self.runner.poll():
            if line.message and line.message["kind"] == "progress":
                self._showStatus(line.message.get("message", ""))
                self._appendLog(line.message.get("message", ""))
            elif line.message is None:
                self._appendLog(line.text)
        for line in self.probeRunner.poll():
            if line.message and line.message["kind"] == "device":
                self._deviceInfo = line.message
        if self.probeRunner.state == RunState.IMPORTING:
            self.probeRunner.finish_import()
            self._updateDeviceInfo()
        elif self.probeRunner.state == RunState.FAILED and self._deviceInfo is None:
            self._deviceInfo = {"gpu": None, "gpu_unavailable": self.probeRunner.error}
            self._updateDeviceInfo()

        state = self.runner.state
        if state == RunState.IMPORTING:
            self._importResult()
        elif state == RunState.IDLE and self.runner.cancelled and self._jobFolder:
            self._showStatus(_("Prediction cancelled."))
            self._removeJobFolder()
        elif state == RunState.FAILED and self._jobFolder:
            self._showStatus(_("Prediction failed: {error}").format(error=self.runner.error))
            self._removeJobFolder()
            slicer.util.errorDisplay(_("Prediction failed: {error}").format(error=self.runner.error),
                                     detailedText="\n".join(self.runner.log))
        if self.runner.state.busy:
            self._showElapsed()
        elif not self.probeRunner.state.busy:
            self.pollTimer.stop()
        self._updateButtons()

    def _showElapsed(self) -> None:
        self.ui.progressBar.toolTip = _("{seconds:.0f} s").format(seconds=self.runner.elapsed)

    def _importResult(self) -> None:
        """The worker has finished: its result goes into the tables (main thread)."""
        self._updateButtons()
        try:
            if not self.runner.result or not self.runner.result.get("path"):
                raise UserError(_("the prediction process ended without a result"))
            result = self.logic.importResult(self._parameterNode, self.runner.result["path"])
        except Exception as exc:
            logging.exception("HRMMPredict: importing the result failed")
            self.runner.finish_import(str(exc))
            self._showStatus(_("Prediction failed: {error}").format(error=self.runner.error))
            self._removeJobFolder()
            slicer.util.errorDisplay(_("Prediction failed: {error}").format(error=self.runner.error))
            return
        self.runner.finish_import()
        self._removeJobFolder()
        self._showStatus(_("Prediction done in {seconds:.0f} s.").format(seconds=self.runner.elapsed or 0)
                         if self.runner.elapsed else _("Prediction done."))
        self._shownResultKey = None
        self._showResult(result)

    def _removeJobFolder(self) -> None:
        if self._jobFolder:
            shutil.rmtree(self._jobFolder, ignore_errors=True)
            self._jobFolder = None

    # -- results -----------------------------------------------------------------------

    def _storedResult(self):
        """The result kept in the summary table, parsed once per change of the table (it is
        asked for on every poll of a running prediction; the JSON carries the previews)."""
        table = self._parameterNode.summaryTable if self._parameterNode else None
        if table is None or table.GetScene() is None:
            return None
        key = (table.GetID(), table.GetMTime())  # SetAttribute and new rows modify the node
        cachedKey, cached = self._storedResultCache
        if key == cachedKey:
            return cached
        try:
            result = _panelLogic().result_from_table_node(table)
        except UserError:
            result = None
        self._storedResultCache = (key, result)
        return result

    def _showStoredResult(self) -> None:
        """Show the result kept in the summary table (e.g. after the scene was reloaded)."""
        table = self._parameterNode.summaryTable if self._parameterNode else None
        key = (table.GetID(), table.GetMTime()) if table is not None else None
        if key == self._shownResultKey:
            return
        self._shownResultKey = key
        result = self._storedResult()
        if result is None:
            self._clearResults()
        else:
            self._showResult(result)

    def _clearResults(self) -> None:
        self.ui.resultLabel.text = ""
        self.ui.warningsLabel.text = ""
        self._setPreviews([])

    def _showResult(self, result) -> None:
        panel_results = _panelResults()
        lines = panel_results.result_lines(result)
        self.ui.resultLabel.text = "\n".join(lines)
        self.ui.warningsLabel.text = "\n".join(_("Warning: {text}").format(text=w) for w in result.get("warnings", []))
        self._setPreviews(panel_results.preview_images(result))
        self._updateResultTableViews()
        self.ui.resultsCollapsibleButton.collapsed = False

    def _setPreviews(self, images) -> None:
        for label in self._previewLabels:
            self.ui.previewLayout.removeWidget(label)
            label.deleteLater()
        self._previewLabels = []
        for title, data in images:
            pixmap = qt.QPixmap()
            if not pixmap.loadFromData(qt.QByteArray(data), "PNG"):
                continue
            label = qt.QLabel()
            label.setPixmap(pixmap.scaledToWidth(min(pixmap.width(), 400), qt.Qt.SmoothTransformation))
            label.toolTip = title
            self.ui.previewLayout.addWidget(label)
            self._previewLabels.append(label)
        self.ui.previewLabel.visible = bool(self._previewLabels)
        self.ui.previewFrame.visible = bool(self._previewLabels)

    def onExport(self) -> None:
        result = self._storedResult()
        if result is None:
            return
        path = qt.QFileDialog.getSaveFileName(self.parent, _("Export the prediction"), "hrmm_prediction.json",
                                              _("JSON (*.json);;CSV (*.csv)"))
        if not path:
            return
        if pathlib.Path(path).suffix.lower() not in (".json", ".csv"):
            path += ".json"
        ok, _saved = panel_support.run_action(_("Export failed."), _panelResults().export_result, result, path)
        if ok:
            self._showStatus(_("Saved {path}").format(path=path))


#
# HRMMPredictLogic
#


class HRMMPredictLogic(ScriptedLoadableModuleLogic):
    """Moves data between MRML nodes and HRMMPredictLib; no widgets.

    The work is done by HRMMPredictLib.slicer.panel_logic (tested on slicer-core),
    HRMMPredictLib.slicer.predict_worker (the process the panel runs) and HRMMPredictLib.predict
    (the library the command line also runs).
    """

    SEQUENCES = ("t1", "t2", "fst2")
    LABELS = {"t1": "T1WI", "t2": "T2WI", "fst2": "FS-T2WI"}
    REQUESTER = "HRMM Predict"

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self._panelLayout = None  # the side-by-side layout, once shown

    def getParameterNode(self):
        return HRMMPredictParameterNode(super().getParameterNode())

    def missingInputs(self, parameterNode) -> str:
        """Why Predict cannot run yet ("" when it can)."""
        missing = []
        for node, label in ((parameterNode.t1Volume, _("T1WI volume")), (parameterNode.t2Volume, _("T2WI volume")),
                            (parameterNode.fst2Volume, _("FS-T2WI volume"))):
            if not node:
                missing.append(label)
        if not parameterNode.roiSegmentation or not parameterNode.roiSegmentId:
            missing.append(_("ROI segment"))
        directory = panel_support.path_or_none(parameterNode.modelDirectory)
        if directory is None or not directory.is_dir():
            missing.append(_("model bundle folder"))
        if not missing:
            return ""
        return _("Select: {items}.").format(items=", ".join(missing))

    def volumesByKey(self, parameterNode) -> dict:
        """``{"t1": node, "t2": node, "fst2": node}`` (HRMMPredictLib.slicer.panel_logic.volumes_by_key)."""
        return _panelLogic().volumes_by_key(parameterNode)

    def readCase(self, parameterNode, progress=None):
        """The three sequences as SimpleITK images and the ROI exported onto each one's grid
        (a HRMMPredictLib.slicer.panel_logic.CaseImages)."""
        return _panelLogic().case_images_from_nodes(
            self.volumesByKey(parameterNode), parameterNode.roiSegmentation, parameterNode.roiSegmentId,
            labels=self.LABELS, progress=progress)

    # -- inputs

    def guessSequences(self, parameterNode, descriptions: dict, overwrite: bool = False) -> dict:
        """Choose T1WI/T2WI/FS-T2WI from ``descriptions`` (node ID -> name/series
        description) with HRMMPredictLib.slicer.series_guess; only empty fields unless ``overwrite``.
        Returns role -> SeriesGuess or None."""
        guesses = series_guess.guess_sequences(descriptions)
        fields = _panelLogic().SEQUENCE_FIELDS
        wasModifying = parameterNode.StartModify()
        try:
            for role, guess in guesses.items():
                if guess is None or (getattr(parameterNode, fields[role]) and not overwrite):
                    continue
                node = slicer.mrmlScene.GetNodeByID(guess.key)
                if node is not None:
                    setattr(parameterNode, fields[role], node)
        finally:
            parameterNode.EndModify(wasModifying)
        return guesses

    def showSeriesSideBySide(self, parameterNode, layoutId: int) -> None:
        """T1WI | T2WI | FS-T2WI in three linked sagittal views (the existing Red, Yellow and
        Green slice nodes are oriented: a layout description's orientation only reaches views
        the layout logic creates; :meth:`layoutChanged` puts them back)."""
        pl = _panelLogic()
        assignment = pl.side_by_side_assignment(self.volumesByKey(parameterNode))
        if not assignment:
            raise UserError(_("Select the series first."))
        if self._panelLayout is None or self._panelLayout.layout_id != int(layoutId):
            self._panelLayout = pl.panel_layout(layoutId)
        layoutManager = slicer.app.layoutManager()
        self._panelLayout.show(layoutManager.layoutLogic().GetLayoutNode(), slicer.mrmlScene, assignment)
        slicer.util.resetSliceViews()

    def layoutChanged(self, layoutId: int) -> list:
        """After a layout switch (``layoutChanged(int)``): the views the side-by-side re-oriented
        go back to their default orientation; returns them."""
        if self._panelLayout is None:
            return []
        return self._panelLayout.layout_changed(slicer.mrmlScene, layoutId)

    def createRoiSegment(self, parameterNode):
        """A new segmentation with an empty "ROI" segment on the T2WI grid (or the first
        selected series); returns (segmentation node, segment ID)."""
        reference = parameterNode.t2Volume or parameterNode.t1Volume or parameterNode.fst2Volume
        if not reference:
            raise UserError(_("Select the series first: the ROI is drawn on one of them."))
        return _panelLogic().create_roi_segment(reference, scene=slicer.mrmlScene)

    # -- model bundle and packages

    def bundleSummary(self, directory) -> dict:
        """The bundle's checked summary (HRMMPredictLib.bundle.load_bundle(...).summary()).
        Raises UserError for a folder that is not a usable bundle, ImportError before the
        packages are installed."""
        from HRMMPredictLib.bundle import load_bundle

        return load_bundle(directory).summary()

    def ensurePythonPackages(self, modelKinds=("radiomics",)) -> None:
        """Install what the prediction process needs, after the user's confirmation (first
        use only; nothing is installed when everything is there), with the extension's one
        installer (ClinicalMRICommonLib.slicer_packages: ``slicer.packaging.pip_ensure`` on
        Slicer 5.12+, confirmation + ``slicer.util.pip_install`` on 5.10, never in testing
        mode). PyTorch is installed the same way, with pip, and is never imported into
        Slicer's process (PyTorchUtilsLogic.installTorch would import it there): the deep
        model and the GPU probe run in the worker process. An installed PyTorch that meets
        the bound (e.g. the CUDA build the PyTorch extension installed) is kept as it is;
        PyPI's wheel is a CUDA build on Linux and CPU-only on Windows and macOS."""
        from ClinicalMRICommonLib import slicer_packages

        slicer_packages.ensure_packages(_packages().requirements_for(modelKinds), self.REQUESTER,
                                        _("predict with this model bundle"))

    # -- prediction

    @staticmethod
    def childEnvironment():
        """The environment Slicer started with (what launchConsoleProcess gives external
        processes); None (this process's) where Slicer has no such function."""
        startup = getattr(slicer.util, "startupEnvironment", None)
        return startup() if startup else None

    def ensureResultTables(self, parameterNode) -> None:
        scene = slicer.mrmlScene
        if not parameterNode.summaryTable:
            parameterNode.summaryTable = scene.AddNewNodeByClass("vtkMRMLTableNode", _("HRMM prediction"))
        if not parameterNode.featureTable:
            parameterNode.featureTable = scene.AddNewNodeByClass("vtkMRMLTableNode", _("HRMM prediction features"))

    def writeRequest(self, parameterNode, folder, progress=None):
        """Read the case from the nodes and write the worker's request into ``folder``."""
        reason = self.missingInputs(parameterNode)
        if reason:
            raise UserError(reason)
        return _panelLogic().write_prediction_request(
            self.volumesByKey(parameterNode), parameterNode.roiSegmentation, parameterNode.roiSegmentId,
            parameterNode.modelDirectory, folder, device=parameterNode.device.value, progress=progress)

    def importResult(self, parameterNode, resultPath) -> dict:
        """Fill the result tables from the worker's result file; returns the result."""
        self.ensureResultTables(parameterNode)
        return _panelLogic().import_prediction_result(resultPath, parameterNode.summaryTable,
                                                    parameterNode.featureTable)

    def predictInBackground(self, parameterNode, folder, runner=None, timeout=600.0, progress=None) -> dict:
        """The panel's path without the panel: request, worker process, import (blocks; for
        scripts and the module test). Raises UserError with the worker's one-line error."""
        runner = runner or ProcessRunner()
        request = self.writeRequest(parameterNode, folder, progress=progress)
        if not runner.start(worker_command(request), base_env=self.childEnvironment()):
            raise UserError(runner.error)
        for line in runner.wait(timeout):
            if progress and line.message and line.message["kind"] == "progress":
                progress(line.message.get("message", ""))
        if runner.state == RunState.RUNNING:
            runner.cancel()
            runner.wait(30)
            raise UserError(_("The prediction took more than {seconds:.0f} s and was stopped.").format(seconds=timeout))
        if runner.state != RunState.IMPORTING:
            raise UserError(runner.error)
        try:
            result = self.importResult(parameterNode, runner.result["path"])
        except Exception as exc:
            runner.finish_import(str(exc))
            raise
        runner.finish_import()
        return result

    def predict(self, parameterNode, progress=None) -> dict:
        """Predict in Slicer's own process (blocks; imports pyradiomics here); fills the
        result tables. Same numbers as the panel's worker and ``hrmm predict``."""
        reason = self.missingInputs(parameterNode)
        if reason:
            raise UserError(reason)
        self.ensureResultTables(parameterNode)
        logging.info("HRMMPredict: predicting with model bundle %s", parameterNode.modelDirectory)
        return _panelLogic().predict_from_nodes(
            self.volumesByKey(parameterNode), parameterNode.roiSegmentation, parameterNode.roiSegmentId,
            parameterNode.modelDirectory, device=parameterNode.device.value,
            summary_table=parameterNode.summaryTable, feature_table=parameterNode.featureTable, progress=progress)


#
# HRMMPredictTest
#


class HRMMPredictTest(ScriptedLoadableModuleTest):
    """
    Exercises the logic on a generated case, in the Slicer application (ctest).
    Uses ScriptedLoadableModuleTest base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ReadGeneratedCaseWithRoiDrawnOnT2()
        self.setUp()
        self.test_EmptySegmentAndMissingInputs()
        self.setUp()
        self.test_GuessSequencesFromNodeNames()
        self.setUp()
        self.test_BackgroundProcessCancel()
        self.setUp()
        self.test_PredictGeneratedCaseLikeTheCommandLine()

    def _generatedCase(self, seed=3, label=1):
        """A synthetic sagittal spine case (HRMMPredictLib.synthetic.generate_case) in the
        scene: T1WI on a finer in-plane grid than T2WI/FS-T2WI, the ROI drawn on T2WI."""
        import SimpleITK as sitk
        from HRMMPredictLib.synthetic import generate_case

        case = generate_case(seed, label, shape=(8, 80, 96), spacing=(1.0, 1.0, 4.8))
        t1 = case["t1"]
        finerT1 = sitk.Resample(t1, [t1.GetSize()[0] * 2, t1.GetSize()[1] * 2, t1.GetSize()[2]], sitk.Transform(),
                                sitk.sitkLinear, t1.GetOrigin(), (0.5, 0.5, t1.GetSpacing()[2]), t1.GetDirection(),
                                0.0, t1.GetPixelID())
        nodes = {
            "t1": _mrmlBridge().sitk_to_volume_node(finerT1, "3: t1_tse_sag", scene=slicer.mrmlScene),
            "t2": _mrmlBridge().sitk_to_volume_node(case["t2"], "4: T2 TSE SAG", scene=slicer.mrmlScene),
            "fst2": _mrmlBridge().sitk_to_volume_node(case["fst2"], "5: t2_tirm_sag", scene=slicer.mrmlScene),
        }
        labelmap = _mrmlBridge().sitk_to_volume_node(case["roi"], "roi", scene=slicer.mrmlScene, labelmap=True)
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "ROI")
        slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, segmentation)
        slicer.mrmlScene.RemoveNode(labelmap)
        drawnVoxels = int(sitk.GetArrayViewFromImage(case["roi"]).sum())
        return nodes, segmentation, drawnVoxels

    def _parameterNode(self, logic, nodes, segmentation):
        parameterNode = logic.getParameterNode()
        parameterNode.t1Volume, parameterNode.t2Volume, parameterNode.fst2Volume = nodes["t1"], nodes["t2"], nodes["fst2"]
        parameterNode.roiSegmentation = segmentation
        parameterNode.roiSegmentId = segmentation.GetSegmentation().GetNthSegmentID(0)
        return parameterNode

    def test_ReadGeneratedCaseWithRoiDrawnOnT2(self):
        self.delayDisplay("Reading a generated case whose ROI was drawn on T2WI while T1WI has another grid")
        import SimpleITK as sitk

        nodes, segmentation, drawnVoxels = self._generatedCase()
        logic = HRMMPredictLogic()
        case = logic.readCase(self._parameterNode(logic, nodes, segmentation))
        self.assertEqual(case.resampled, {"t1": True, "t2": False, "fst2": False})
        self.assertEqual(case.warnings, ["the ROI was resampled onto the T1WI grid (it was drawn on another voxel grid)"])
        self.assertEqual(int(sitk.GetArrayViewFromImage(case.rois["t2"]).sum()), drawnVoxels)
        # 0.5 mm in-plane instead of 1 mm: four times the voxels, within a row of voxels around the edge
        t1Voxels = int(sitk.GetArrayViewFromImage(case.rois["t1"]).sum())
        self.assertAlmostEqual(t1Voxels / (4 * drawnVoxels), 1.0, delta=0.15)
        self.assertEqual(case.rois["t1"].GetSize(), case.images["t1"].GetSize())
        self.delayDisplay("Test passed")

    def test_EmptySegmentAndMissingInputs(self):
        self.delayDisplay("Empty segment and incomplete inputs give clear errors")
        nodes, segmentation, _voxels = self._generatedCase()
        logic = HRMMPredictLogic()
        parameterNode = logic.getParameterNode()
        self.assertIn("T1WI", logic.missingInputs(parameterNode))
        parameterNode = self._parameterNode(logic, nodes, segmentation)
        parameterNode.roiSegmentId = segmentation.GetSegmentation().AddEmptySegment("", "empty")
        with self.assertRaisesRegex(UserError, "segment 'empty' of segmentation 'ROI' is empty"):
            logic.readCase(parameterNode)
        slicer.mrmlScene.RemoveNode(nodes["fst2"])
        with self.assertRaisesRegex(UserError, "no longer in the scene|no volume selected"):
            logic.readCase(self._parameterNode(logic, nodes, segmentation))
        self.delayDisplay("Test passed")

    def test_GuessSequencesFromNodeNames(self):
        self.delayDisplay("Guessing T1WI/T2WI/FS-T2WI from series names")
        nodes, segmentation, _voxels = self._generatedCase()
        logic = HRMMPredictLogic()
        parameterNode = logic.getParameterNode()
        parameterNode.t1Volume = parameterNode.t2Volume = parameterNode.fst2Volume = None
        names = {node.GetID(): node.GetName() for node in nodes.values()}
        logic.guessSequences(parameterNode, names)
        self.assertEqual(parameterNode.t1Volume, nodes["t1"])
        self.assertEqual(parameterNode.t2Volume, nodes["t2"])
        self.assertEqual(parameterNode.fst2Volume, nodes["fst2"])
        self.delayDisplay("Test passed")

    def test_BackgroundProcessCancel(self):
        self.delayDisplay("A background process started from Slicer is stopped by Cancel")
        import sys
        import time

        runner = ProcessRunner()
        self.assertTrue(runner.start([sys.executable, "-c", "import time; print('started', flush=True); "
                                                            "time.sleep(60)"]))
        deadline = time.monotonic() + 30
        seen = []
        while not seen and time.monotonic() < deadline:
            seen = [line.text for line in runner.poll()]
            slicer.app.processEvents()
        self.assertEqual(seen, ["started"])
        runner.cancel()
        runner.wait(30)
        self.assertEqual(runner.state, RunState.IDLE)
        self.assertTrue(runner.cancelled)
        self.delayDisplay("Test passed")

    def test_PredictGeneratedCaseLikeTheCommandLine(self):
        """Train a tiny radiomics bundle on a generated cohort, then predict one case through
        the panel's worker process and with ``hrmm predict``: the same numbers. Needs the
        Python packages (never installed by a test: Slicer's testing mode skips pip_ensure)."""
        missing = _packages().missing_requirements()
        if missing:  # testing mode never installs packages; say so in the test log
            logging.warning("HRMMPredictTest: prediction test skipped, packages not installed: %s",
                            ", ".join(str(m) for m in missing))
            self.delayDisplay("Skipped: packages not installed")
            return
        self.delayDisplay("Predicting a generated case through the worker process and the command line")
        import csv
        import json
        import subprocess

        from HRMMPredictLib.radiomics.features import SMALL_PARAMS
        from HRMMPredictLib.radiomics.model import RadiomicsTrainConfig
        from HRMMPredictLib.synthetic import generate_cohort
        from HRMMPredictLib.training import train_bundle

        folder = pathlib.Path(tempfile.mkdtemp(prefix="HRMMPredictTest-", dir=slicer.app.temporaryPath))
        try:
            manifest = generate_cohort(folder / "cohort", n_patients=16, seed=7, effect_size=1.5,
                                       shape=(8, 80, 96), spacing=(1.0, 1.0, 4.8))
            params = folder / "small.yaml"
            params.write_text(SMALL_PARAMS.read_text())
            config = RadiomicsTrainConfig(seed=0, validation_fraction=0.25, mrmr_k=10, lasso_cv=3, cv_folds=3,
                                          icc_threshold=0.6)
            trainKwargs = {}
            try:
                from HRMMPredictLib.fusion import DeepOptions

                trainKwargs["deep"] = DeepOptions(enabled=False)  # radiomics only: seconds, not minutes
            except ImportError:
                pass
            bundle = folder / "bundle"
            train_bundle(manifest, bundle, params, config, n_jobs=1, **trainKwargs)

            with open(manifest, newline="") as f:
                row = next(csv.DictReader(f))
            files = {k: str(pathlib.Path(manifest).parent / row[k]) for k in ("t1", "t2", "fst2", "roi")}
            nodes = {k: slicer.util.loadVolume(files[k], {"name": self.LABEL_NAMES[k]}) for k in ("t1", "t2", "fst2")}
            segmentation = slicer.util.loadSegmentation(files["roi"])
            logic = HRMMPredictLogic()
            parameterNode = self._parameterNode(logic, nodes, segmentation)
            parameterNode.modelDirectory = bundle
            parameterNode.device = HRMMPredictDevice.CPU
            panel = logic.predictInBackground(parameterNode, folder / "job")

            # `hrmm predict --json` in Slicer's Python, with the module folders on sys.path
            from ClinicalMRICommonLib.process_runner import worker_python

            modulePaths = [str(pathlib.Path(__file__).resolve().parent),
                           str(pathlib.Path(importlib.import_module("ClinicalMRICommonLib").__file__).resolve().parents[1])]
            cliCode = ("import sys; sys.path[:0] = sys.argv[1:3]; from HRMMPredictLib.cli.main import main; "
                       "sys.exit(main(sys.argv[3:]))")
            cli = subprocess.run([worker_python(), "-c", cliCode, *modulePaths, "predict", "--t1", files["t1"],
                                  "--t2", files["t2"], "--fst2", files["fst2"], "--roi", files["roi"],
                                  "--model", str(bundle), "--device", "cpu", "--json"],
                                 capture_output=True, text=True, timeout=600)
            self.assertEqual(cli.returncode, 0, cli.stderr)
            expected = json.loads(cli.stdout)
            for key in ("model", "probability", "class", "threshold", "models", "features", "warnings"):
                self.assertEqual(panel[key], expected[key], key)
            rows = _mrmlBridge().table_node_to_rows(parameterNode.summaryTable)
            self.assertEqual(rows[0]["model"], expected["model"])
            self.assertEqual(rows[0]["probability"], expected["probability"])
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        self.delayDisplay("Test passed")

    LABEL_NAMES = {"t1": "t1_tse_sag", "t2": "t2_tse_sag", "fst2": "t2_tirm_sag"}


