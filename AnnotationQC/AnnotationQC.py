import enum
import logging
import os
import pathlib

import vtk

import qt
import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import *
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import parameterNodeWrapper

from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode

# The panel's MRML logic (numpy, SimpleITK, pandas, MRML). pyradiomics and matplotlib are
# imported only when an ICC is computed or a training report is written.
from AnnotationQCLib import panel_logic
from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.mrml_bridge import segment_editor_node


#
# AnnotationQC
#


class AnnotationQC(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Annotation QC")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = ["Terminologies", "Segmentations"]
        self.parent.contributors = ["ClinicalMRI extension developers"]
        self.parent.helpText = _("""
Quality control of MRI annotations: whether readers agree, and whether a trainee is ready.
<b>Reading</b>: log in to a reader study with your id and role, pick a case from your blinded case list
(other readers' masks and the case's label are never loaded for annotators), draw in the embedded
Segment Editor (CNS-tumour labels with standard names, colours and codes for the sequence: whole tumour on
FLAIR, tumour body on T2WI, enhancing and non-enhancing tumour on contrast T1WI) and save a draft or submit;
masks are stored as &lt;patient&gt;_&lt;sequence&gt;_&lt;content&gt;.nii.gz on the source image's grid and never
overwritten. <b>Compare</b> two segmentations (Dice, Jaccard, HD95, surface distances, volumes, lesion-wise
detection, disagreement overlay). <b>Feature ICC</b> between readers or sessions of a study or two feature tables,
with the ICC distribution per feature class. <b>Training sessions</b>: an instructor defines reference cases,
trainees annotate, the report gives per-case scores, over- and under-segmentation and pass/fail.
<b>Image quality</b>: grade 1-3 or Likert 1-5 with the reason and SNR/CNR from ROIs; flagged series are not offered.
The same library runs on the command line (<code>annotation-qc --help</code>). Research use only.
""")
        self.parent.acknowledgementText = _("""
Annotation rules, labels, reader qualification and consistency checks follow the "Expert consensus on MR images
annotation of central nervous system tumors" (Chinese Association of Radiologists, Internet Plus Medical
Imaging Group) and the reader-agreement design of the high-risk multiple myeloma study (inter- and
intra-reader ICC &gt;= 0.75). Built on 3D Slicer, SimpleITK, pyradiomics and MONAI.
""")
        slicer.app.connect("startupCompleted()", loadCnsTerminology)


def loadCnsTerminology():
    """Make the CNS-tumour terminology available in Slicer's terminology selector."""
    from AnnotationQCLib.terminology import TERMINOLOGY_FILE

    try:
        terminologies = slicer.modules.terminologies.logic()
    except AttributeError:
        logging.warning("AnnotationQC: the Terminologies module is not available; segments still get their "
                        "names, colours and codes")
        return ""
    return terminologies.LoadTerminologyFromFile(str(TERMINOLOGY_FILE))


#
# AnnotationQCParameterNode
#


class ReaderRole(enum.Enum):
    ANNOTATOR = "annotator"
    REVIEWER = "reviewer"
    ARBITRATOR = "arbitrator"

    def label(self):
        return {ReaderRole.ANNOTATOR: _("Annotator"), ReaderRole.REVIEWER: _("Reviewer"),
                ReaderRole.ARBITRATOR: _("Arbitrator")}[self]


class LabelSet(enum.Enum):
    # values are AnnotationQCLib.terminology.VARIANTS ("none": one "lesion" segment)
    INTRA_AXIAL = "intra-axial"
    MENINGEAL = "meningeal"
    NONE = "none"

    def label(self):
        return {LabelSet.INTRA_AXIAL: _("CNS tumour, intra-axial"), LabelSet.MENINGEAL: _("CNS tumour, meningeal"),
                LabelSet.NONE: _("One 'lesion' segment")}[self]


class IccSource(enum.Enum):
    STUDY = "study"
    CSV = "csv"

    def label(self):
        return {IccSource.STUDY: _("Reader study (above)"), IccSource.CSV: _("Two feature tables (CSV)")}[self]


class IccForm(enum.Enum):
    # values are AnnotationQCLib.icc's McGraw & Wong names
    A1 = "ICC(A,1)"
    C1 = "ICC(C,1)"
    ONE_1 = "ICC(1,1)"
    AK = "ICC(A,k)"
    CK = "ICC(C,k)"
    ONE_K = "ICC(1,k)"

    def label(self):
        return self.value


class QualityGrade(enum.Enum):
    NONE = "none"
    G1 = "1"
    G2 = "2"
    G3 = "3"

    def label(self):
        return {QualityGrade.NONE: _("not graded"), QualityGrade.G1: _("1 - not diagnostic"),
                QualityGrade.G2: _("2 - minor artefacts"), QualityGrade.G3: _("3 - clear")}[self]


class QualityLikert(enum.Enum):
    NONE = "none"
    L1 = "1"
    L2 = "2"
    L3 = "3"
    L4 = "4"
    L5 = "5"

    def label(self):
        return _("not scored") if self is QualityLikert.NONE else self.value


@parameterNodeWrapper
class AnnotationQCParameterNode:
    """
    The parameters of the AnnotationQC panel, saved with the scene.

    Reading: studyFolder, readerId, readerRole, readingSession, labelSet.
    Compare: compareReferenceVolume, toleranceMm; results in compareTable and disagreementSegmentation.
    ICC: iccSource, iccReaderA/B, iccSessionA/B, iccSequence, iccContent, iccCsvA/B, iccIdColumn, iccForm,
    iccThreshold; results in iccTable and iccClassTable.
    Training: trainingFolder, trainingCasesFile, trainingName, traineeId; results in trainingTable.
    Quality: qualityVolume, qualityRois, rayleighCorrection, qualityGrade, qualityLikert, qualityReason.
    """

    studyFolder: pathlib.Path
    readerId: str = ""
    readerRole: ReaderRole = ReaderRole.ANNOTATOR
    readingSession: str = "first"
    labelSet: LabelSet = LabelSet.INTRA_AXIAL
    compareReferenceVolume: vtkMRMLScalarVolumeNode
    toleranceMm: float = 1.0
    compareTable: vtkMRMLTableNode
    disagreementSegmentation: vtkMRMLSegmentationNode
    iccSource: IccSource = IccSource.STUDY
    iccReaderA: str = ""
    iccSessionA: str = "first"
    iccReaderB: str = ""
    iccSessionB: str = "first"
    iccSequence: str = ""
    iccContent: str = ""
    iccCsvA: pathlib.Path
    iccCsvB: pathlib.Path
    iccIdColumn: str = "case_id"
    iccForm: IccForm = IccForm.A1
    iccThreshold: float = 0.75
    iccTable: vtkMRMLTableNode
    iccClassTable: vtkMRMLTableNode
    trainingFolder: pathlib.Path
    trainingCasesFile: pathlib.Path
    trainingName: str = ""
    traineeId: str = ""
    trainingTable: vtkMRMLTableNode
    qualityVolume: vtkMRMLScalarVolumeNode
    qualityRois: vtkMRMLSegmentationNode
    rayleighCorrection: bool = False
    qualityGrade: QualityGrade = QualityGrade.NONE
    qualityLikert: QualityLikert = QualityLikert.NONE
    qualityReason: str = ""


#
# AnnotationQCWidget
#


class AnnotationQCWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    CASE_COLUMNS = ("case_id", "patient_id", "sequence", "status")

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.study = None           # ReaderStudy of the logged-in reader
        self.reading = None         # panel_logic.Reading open in the Segment Editor
        self.trainingSession = None
        self.trainingReading = None
        self.segmentEditorWidget = None
        self._tooltips = {}

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/AnnotationQC.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        # The .ui connects the top-level widget's mrmlSceneChanged signal to every MRML widget.
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = AnnotationQCLogic()
        loadCnsTerminology()  # also after "Reload" (startupCompleted has fired already)

        # Segment Editor bound to the reader's own segmentation: no segmentation or volume selector.
        self.segmentEditorWidget = slicer.qMRMLSegmentEditorWidget()
        self.segmentEditorWidget.setMaximumNumberOfUndoStates(10)
        self.segmentEditorWidget.setMRMLScene(slicer.mrmlScene)
        self.segmentEditorWidget.setSegmentationNodeSelectorVisible(False)
        self.segmentEditorWidget.setSourceVolumeNodeSelectorVisible(False)
        self.segmentEditorWidget.setSwitchToSegmentationsButtonVisible(False)
        self.ui.segmentEditorLayout.addWidget(self.segmentEditorWidget)
        self.ui.segmentEditorFrame.setVisible(False)

        self.ui.caseTableWidget.setColumnCount(len(self.CASE_COLUMNS))
        self.ui.caseTableWidget.setHorizontalHeaderLabels([_("Case"), _("Patient"), _("Sequence"), _("Status")])
        self.ui.caseTableWidget.horizontalHeader().setStretchLastSection(True)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.loginButton.connect("clicked(bool)", self.onLogin)
        self.ui.caseTableWidget.connect("itemSelectionChanged()", self._updateButtonStates)
        self.ui.openCaseButton.connect("clicked(bool)", self.onOpenCase)
        self.ui.saveDraftButton.connect("clicked(bool)", lambda: self.onSave(final=False))
        self.ui.submitButton.connect("clicked(bool)", lambda: self.onSave(final=True))
        self.ui.compareButton.connect("clicked(bool)", self.onCompare)
        self.ui.iccComputeButton.connect("clicked(bool)", self.onComputeIcc)
        self.ui.trainingCreateButton.connect("clicked(bool)", self.onTrainingCreate)
        self.ui.trainingPathLineEdit.connect("currentPathChanged(QString)", self.onTrainingFolderChanged)
        self.ui.trainingLoadButton.connect("clicked(bool)", self.onTrainingLoad)
        self.ui.trainingSubmitButton.connect("clicked(bool)", self.onTrainingSubmit)
        self.ui.trainingReportButton.connect("clicked(bool)", self.onTrainingReport)
        self.ui.qualityCreateRoisButton.connect("clicked(bool)", self.onQualityCreateRois)
        self.ui.qualityMeasureButton.connect("clicked(bool)", self.onQualityMeasure)
        self.ui.qualityRecordButton.connect("clicked(bool)", self.onQualityRecord)
        self.qualityMeasurement = None

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.segmentEditorWidget.installKeyboardShortcuts()

    def exit(self) -> None:
        self.segmentEditorWidget.setActiveEffect(None)
        self.segmentEditorWidget.uninstallKeyboardShortcuts()
        self.segmentEditorWidget.removeViewObservations()
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        self.segmentEditorWidget.setSegmentationNode(None)
        self.reading = self.trainingReading = None

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        self._selectSegmentEditorNode()

    def _selectSegmentEditorNode(self) -> None:
        """The module's own Segment Editor parameter node (not shared with the Segment Editor module)."""
        self.segmentEditorWidget.setMRMLSegmentEditorNode(segment_editor_node(slicer.mrmlScene, "AnnotationQC"))

    def setParameterNode(self, inputParameterNode) -> None:
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
        p = self._parameterNode
        if not p:
            return
        study = p.iccSource == IccSource.STUDY
        self.ui.iccStudyFrame.setVisible(study)
        self.ui.iccCsvFrame.setVisible(not study)
        for view, node in ((self.ui.compareTableView, p.compareTable), (self.ui.iccTableView, p.iccTable),
                           (self.ui.iccClassTableView, p.iccClassTable), (self.ui.trainingTableView, p.trainingTable)):
            if view.mrmlTableNode() != node:
                view.setMRMLTableNode(node)
        self._updateButtonStates()

    def _selectedCase(self):
        rows = self.ui.caseTableWidget.selectionModel().selectedRows() if self.ui.caseTableWidget.selectionModel() else []
        if not rows:
            return None
        r = rows[0].row()
        return {key: self.ui.caseTableWidget.item(r, c).text() for c, key in enumerate(self.CASE_COLUMNS)}

    def _updateButtonStates(self) -> None:
        """Enable each action only when it can run; the tooltip says what is missing."""
        selected = self._selectedCase()
        self._enable(self.ui.openCaseButton, self.study is not None and selected is not None
                     and selected["status"] != "submitted",
                     _("Log in and select a case that is not submitted yet."))
        open_reading = self.reading is not None
        for button in (self.ui.saveDraftButton, self.ui.submitButton):
            self._enable(button, open_reading, _("Open a case first."))
        self._enable(self.ui.qualityRecordButton, self.study is not None and selected is not None,
                     _("Log in and select the graded series in the case list."))
        trainingReady = self.trainingSession is not None and bool(self._parameterNode and self._parameterNode.traineeId)
        self._enable(self.ui.trainingLoadButton, trainingReady and self.ui.trainingCaseComboBox.count > 0,
                     _("Choose a training session folder and enter your trainee id."))
        self._enable(self.ui.trainingSubmitButton, self.trainingReading is not None, _("Load a training case first."))
        self._enable(self.ui.trainingReportButton, trainingReady, _("Choose a training session and a trainee id."))

    def _enable(self, button, enabled, whyNot) -> None:
        """Enable a button or say in its tooltip why it is disabled (the .ui tooltip otherwise)."""
        name = button.objectName
        if name not in self._tooltips:
            self._tooltips[name] = button.toolTip
        button.enabled = bool(enabled)
        button.toolTip = self._tooltips[name] if enabled else whyNot

    def _bindEditor(self, reading) -> None:
        """Show the series and bind the Segment Editor to the reader's own segmentation."""
        self.segmentEditorWidget.setSegmentationNode(reading.segmentation_node)
        self.segmentEditorWidget.setSourceVolumeNode(reading.volume_node)
        self.ui.segmentEditorFrame.setVisible(True)
        slicer.util.setSliceViewerLayers(background=reading.volume_node, foreground=None, label=None, fit=True)
        if self._parameterNode:
            self._parameterNode.qualityVolume = reading.volume_node

    def _closeOpenReadings(self) -> None:
        """Only one case is in the scene at a time (so nothing of the previous case stays visible)."""
        self.segmentEditorWidget.setSegmentationNode(None)
        for reading in (self.reading, self.trainingReading):
            if reading is not None:
                panel_logic.close_nodes(reading.nodes())
        self.reading = self.trainingReading = None

    # ---- reading ---------------------------------------------------------------------

    def onLogin(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Login failed."), waitCursor=True):
            p = self._parameterNode
            self.study = self.logic.login(p.studyFolder, p.readerId, p.readerRole.value)
            self.ui.readerInfoLabel.text = _("{reader} ({role}) in study '{study}'.").format(
                reader=p.readerId.strip(), role=self.study.role(p.readerId.strip()), study=self.study.meta["name"])
            self.refreshCaseList()

    def refreshCaseList(self) -> None:
        p = self._parameterNode
        rows = panel_logic.case_rows(self.study, p.readerId.strip(), p.readingSession or "first")
        table = self.ui.caseTableWidget
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, key in enumerate(self.CASE_COLUMNS):
                table.setItem(r, c, qt.QTableWidgetItem(str(row[key])))
        self._updateButtonStates()

    def onOpenCase(self) -> None:
        selected = self._selectedCase()
        with slicer.util.tryWithErrorDisplay(_("The case could not be opened."), waitCursor=True):
            self._closeOpenReadings()
            p = self._parameterNode
            variant = None if p.labelSet == LabelSet.NONE else p.labelSet.value
            self.reading = panel_logic.open_reading(self.study, p.readerId.strip(), selected["case_id"],
                                                    selected["sequence"], p.readingSession or "first", variant=variant)
            self._bindEditor(self.reading)
            self.ui.readingStatusLabel.text = _("Reading {case} {sequence}: draw {segments}.").format(
                case=selected["case_id"], sequence=selected["sequence"],
                segments=", ".join(self.reading.segmentation_node.GetSegmentation().GetSegment(s).GetName()
                                   for s in self.reading.segments.values()))
            self.refreshCaseList()

    def onSave(self, final: bool) -> None:
        if final and not slicer.util.confirmOkCancelDisplay(
                _("Submit this case? Submitted masks are locked and never overwritten.")):
            return
        with slicer.util.tryWithErrorDisplay(_("Saving failed; nothing was overwritten."), waitCursor=True):
            paths = panel_logic.save_reading(self.study, self.reading.segmentation_node, self.reading.volume_node,
                                             final=final, notes=self.ui.notesLineEdit.text)
            self.ui.readingStatusLabel.text = (_("Submitted: {files}.") if final else _("Draft saved: {files}.")).format(
                files=", ".join(path.name for path in paths))
            self.refreshCaseList()

    # ---- compare ------------------------------------------------------------------------

    def onCompare(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Comparison failed."), waitCursor=True):
            result = self.logic.compare(self._parameterNode, self.ui.segmentASelector.currentNode(),
                                        self.ui.segmentASelector.currentSegmentID(),
                                        self.ui.segmentBSelector.currentNode(),
                                        self.ui.segmentBSelector.currentSegmentID())
            m = result["metrics"]
            text = _("Dice {dice:.3f}; {dis} voxels where the readers disagree (red), {agree} where both agree "
                     "(green).").format(dice=m["dice"], dis=result["disagreement_voxels"],
                                        agree=result["agreement_voxels"])
            if any(result["resampled"]):
                text += " " + _("A segment was resampled onto the chosen volume's grid.")
            self.ui.compareStatusLabel.text = text

    # ---- ICC ----------------------------------------------------------------------------

    def onComputeIcc(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("ICC could not be computed."), waitCursor=True):
            plotPath = os.path.join(slicer.app.temporaryPath, "AnnotationQC_icc_by_class.png")
            result = self.logic.computeIcc(self._parameterNode, self.study, plotPath)
            self.ui.iccStatusLabel.text = _("{passing} of {n} features reach {form} >= {threshold:g}.").format(
                passing=result["n_passing"], n=result["n_features"], form=self._parameterNode.iccForm.value,
                threshold=self._parameterNode.iccThreshold) + (" " + result["note"] if result.get("note") else "")
            pixmap = qt.QPixmap(result["plot"])
            self.ui.iccPlotLabel.setPixmap(pixmap.scaledToWidth(min(pixmap.width(), 480), qt.Qt.SmoothTransformation))

    # ---- training -----------------------------------------------------------------------

    def onTrainingFolderChanged(self, path) -> None:
        self.trainingSession = None
        self.ui.trainingCaseComboBox.clear()
        if path and os.path.isfile(os.path.join(path, "session.json")):
            with slicer.util.tryWithErrorDisplay(_("The training session could not be opened.")):
                self.trainingSession = self.logic.openTrainingSession(path)
                for row in panel_logic.training_case_rows(self.trainingSession):
                    self.ui.trainingCaseComboBox.addItem(f"{row['case_id']} ({row['sequence']})", row["case_id"])
        self._updateButtonStates()

    def onTrainingCreate(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("The training session could not be created."), waitCursor=True):
            session = self.logic.createTrainingSession(self._parameterNode)
            warnings = session.meta.get("warnings", [])
            self.ui.trainingResultLabel.text = _("Session '{name}' with {n} cases created.").format(
                name=session.meta["name"], n=len(session.case_ids)) + "".join("\n" + w for w in warnings)
            self.onTrainingFolderChanged(str(session.folder))

    def onTrainingLoad(self) -> None:
        caseId = self.ui.trainingCaseComboBox.currentData
        with slicer.util.tryWithErrorDisplay(_("The training case could not be loaded."), waitCursor=True):
            self._closeOpenReadings()
            p = self._parameterNode
            variant = None if p.labelSet == LabelSet.NONE else p.labelSet.value
            self.trainingReading = panel_logic.open_training_case(self.trainingSession, p.traineeId.strip(), caseId,
                                                                  variant=variant)
            self._bindEditor(self.trainingReading)
            self.ui.trainingResultLabel.text = _("Draw the lesion of {case}, then Submit case.").format(case=caseId)
            self._updateButtonStates()

    def onTrainingSubmit(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Submission failed; nothing was overwritten."), waitCursor=True):
            path = panel_logic.submit_training_case(self.trainingSession, self.trainingReading.segmentation_node,
                                                    self.trainingReading.volume_node)
            self._closeOpenReadings()
            self.ui.trainingResultLabel.text = _("Submitted {file}.").format(file=path.name)
            self._updateButtonStates()

    def onTrainingReport(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("The report could not be written."), waitCursor=True):
            report = self.logic.trainingReport(self._parameterNode, self.trainingSession)
            self.ui.trainingResultLabel.text = panel_logic.training_summary(report) + "\n" + _(
                "Report: {path}").format(path=report["files"]["html"])
            self._onParameterNodeModified()
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(report["files"]["html"]))

    # ---- quality ------------------------------------------------------------------------

    def onQualityCreateRois(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("The ROI segmentation could not be created.")):
            volume = self._parameterNode.qualityVolume
            if volume is None:
                raise UserError(_("Select the series to grade first."))
            rois = panel_logic.quality_roi_segmentation(volume)
            self._parameterNode.qualityRois = rois
            self.segmentEditorWidget.setSegmentationNode(rois)
            self.segmentEditorWidget.setSourceVolumeNode(volume)
            self.ui.segmentEditorFrame.setVisible(True)
            self.ui.qualityMeasureLabel.text = _("Draw the signal, background (noisy air) and optionally tissue ROIs.")

    def onQualityMeasure(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("SNR/CNR could not be measured."), waitCursor=True):
            p = self._parameterNode
            self.qualityMeasurement = self.logic.measureQuality(p)
            m = self.qualityMeasurement
            text = _("SNR {snr:.1f}").format(snr=m["snr"])
            if m["cnr"] is not None:
                text += "; " + _("CNR {cnr:.1f}").format(cnr=m["cnr"])
            self.ui.qualityMeasureLabel.text = text + " " + _("(noise SD {sd:.4g} from {n} background voxels)").format(
                sd=m["noise_sd"], n=m["n_background"])

    def onQualityRecord(self) -> None:
        selected = self._selectedCase()
        with slicer.util.tryWithErrorDisplay(_("The grade could not be recorded."), waitCursor=True):
            record = self.logic.recordQuality(self._parameterNode, self.study, selected["case_id"],
                                              selected["sequence"], self.qualityMeasurement)
            if record["flagged"]:
                self.ui.qualityStatusLabel.text = _("{case} {sequence} flagged ({why}); it is no longer offered for "
                                                    "annotation.").format(case=selected["case_id"],
                                                                          sequence=selected["sequence"],
                                                                          why="; ".join(record["flag_reasons"]))
            else:
                self.ui.qualityStatusLabel.text = _("Recorded for {case} {sequence}.").format(
                    case=selected["case_id"], sequence=selected["sequence"])
            self.qualityMeasurement = None
            self.refreshCaseList()


#
# AnnotationQCLogic
#


class AnnotationQCLogic(ScriptedLoadableModuleLogic):
    """Moves data between the parameter node, MRML nodes and AnnotationQCLib; no widgets.

    The work is done by AnnotationQCLib.panel_logic (tested on slicer-core) and the library
    the command line also runs.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return AnnotationQCParameterNode(super().getParameterNode())

    @staticmethod
    def _path(value) -> str:
        return "" if value is None or str(value) in ("", ".") else str(value)

    def login(self, studyFolder, readerId, role):
        return panel_logic.login(self._path(studyFolder), readerId, role)

    def _table(self, parameterNode, field, name):
        if getattr(parameterNode, field) is None:
            setattr(parameterNode, field, slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", name))
        return getattr(parameterNode, field)

    def compare(self, parameterNode, segmentationA, segmentA, segmentationB, segmentB) -> dict:
        missing = [label for node, sid, label in ((segmentationA, segmentA, _("segment A")),
                                                  (segmentationB, segmentB, _("segment B"))) if not node or not sid]
        if parameterNode.compareReferenceVolume is None:
            missing.append(_("the volume whose grid is used"))
        if missing:
            raise UserError(_("Select: {items}.").format(items=", ".join(missing)))
        table = self._table(parameterNode, "compareTable", _("Segmentation agreement"))
        if parameterNode.disagreementSegmentation is None:
            parameterNode.disagreementSegmentation = slicer.mrmlScene.AddNewNodeByClass(
                "vtkMRMLSegmentationNode", _("Disagreement"))
        return panel_logic.compare_segments(segmentationA, segmentA, segmentationB, segmentB,
                                            parameterNode.compareReferenceVolume,
                                            tolerance_mm=parameterNode.toleranceMm, table_node=table,
                                            disagreement_node=parameterNode.disagreementSegmentation)

    def computeIcc(self, parameterNode, study, plotPath) -> dict:
        p = parameterNode
        note = ""
        if p.iccSource == IccSource.STUDY:
            if study is None:
                raise UserError(_("Log in to a reader study first (Reading section), or use two feature tables."))
            if not p.iccReaderA.strip() or not p.iccReaderB.strip():
                raise UserError(_("Enter reader A and reader B (the same reader with sessions 'first' and 'repeat' "
                                  "for the intra-reader ICC)."))
            result = study.feature_icc(p.iccReaderA.strip(), p.iccReaderB.strip(), p.iccSessionA or "first",
                                       p.iccSessionB or "first", sequence=p.iccSequence.strip() or None,
                                       content=p.iccContent.strip() or None, form=p.iccForm.value)
            table = result["table"]
            if result["skipped_empty"]:
                note = _("Left out for an empty mask: {cases}.").format(cases=", ".join(result["skipped_empty"]))
        else:
            table = panel_logic.feature_icc_from_csv(self._path(p.iccCsvA), self._path(p.iccCsvB), p.iccIdColumn,
                                                     form=p.iccForm.value)
        out = panel_logic.icc_to_nodes(table, threshold=p.iccThreshold,
                                       table_node=self._table(p, "iccTable", _("Feature ICC")),
                                       class_table_node=self._table(p, "iccClassTable", _("Feature ICC by class")),
                                       plot_png=plotPath, title=_("{form} per feature class").format(form=p.iccForm.value))
        out["note"] = note
        return out

    def openTrainingSession(self, folder):
        from AnnotationQCLib.training import TrainingSession

        return TrainingSession.open(folder)

    def createTrainingSession(self, parameterNode):
        from AnnotationQCLib.training import TrainingSession, cases_from_csv

        p = parameterNode
        folder, casesFile = self._path(p.trainingFolder), self._path(p.trainingCasesFile)
        if not folder or not casesFile or not p.trainingName.strip():
            raise UserError(_("Choose the new session folder, the reference cases table and a name."))
        return TrainingSession.create(folder, p.trainingName.strip(), cases_from_csv(casesFile))

    def trainingReport(self, parameterNode, session) -> dict:
        return panel_logic.training_report(session, parameterNode.traineeId.strip(),
                                           table_node=self._table(parameterNode, "trainingTable", _("Training report")))

    def measureQuality(self, parameterNode) -> dict:
        if parameterNode.qualityVolume is None or parameterNode.qualityRois is None:
            raise UserError(_("Select the series and its ROI segmentation (Create ROIs) first."))
        return panel_logic.measure_snr_cnr(parameterNode.qualityVolume, parameterNode.qualityRois,
                                           rayleigh_correction=parameterNode.rayleighCorrection)

    def recordQuality(self, parameterNode, study, caseId, sequence, measurement) -> dict:
        p = parameterNode
        grade = None if p.qualityGrade == QualityGrade.NONE else int(p.qualityGrade.value)
        likert = None if p.qualityLikert == QualityLikert.NONE else int(p.qualityLikert.value)
        return panel_logic.record_series_quality(study, caseId, sequence, p.readerId.strip(), grade=grade,
                                                 likert=likert, reason=p.qualityReason, measurement=measurement)


#
# AnnotationQCTest
#


class AnnotationQCTest(ScriptedLoadableModuleTest):
    """
    Runs the panel's logic inside Slicer on generated data (ctest).
    Uses ScriptedLoadableModuleTest base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_CompareTwoBoxes()
        self.setUp()
        self.test_ReadAndSaveWithTerminology()

    def _box(self, reference, x0):
        import numpy as np
        import SimpleITK as sitk

        array = np.zeros(sitk.GetArrayViewFromImage(reference).shape, np.uint8)
        array[5:15, 5:15, x0:x0 + 10] = 1
        mask = sitk.GetImageFromArray(array)
        mask.CopyInformation(reference)
        return mask

    def _image(self):
        import numpy as np
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(np.random.default_rng(0).normal(300, 50, (20, 20, 24)).astype(np.float32))
        image.SetSpacing((0.5, 0.5, 0.5))
        return image

    def test_CompareTwoBoxes(self):
        self.delayDisplay("Comparing two boxes shifted by two voxels")
        from ClinicalMRICommonLib.mrml_bridge import sitk_to_volume_node

        image = self._image()
        volume = sitk_to_volume_node(image, "reference", scene=slicer.mrmlScene)
        segmentations = []
        for name, x0 in (("A", 5), ("B", 7)):
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
            sid = panel_logic.add_segment(node, "lesion")
            panel_logic.set_segment_mask(node, sid, self._box(image, x0))
            segmentations.append((node, sid))
        logic = AnnotationQCLogic()
        parameterNode = logic.getParameterNode()
        parameterNode.compareReferenceVolume = volume
        result = logic.compare(parameterNode, *segmentations[0], *segmentations[1])
        # 10x10x10 boxes overlapping on 10x10x8 voxels: Dice = 2*800/2000, Jaccard = 800/1200
        self.assertAlmostEqual(result["metrics"]["dice"], 0.8, places=12)
        self.assertAlmostEqual(result["metrics"]["jaccard"], 800 / 1200, places=12)
        self.assertEqual((result["disagreement_voxels"], result["agreement_voxels"]), (400, 800))
        self.assertEqual(parameterNode.compareTable.GetNumberOfRows(), 14)
        self.delayDisplay("Test passed")

    def test_ReadAndSaveWithTerminology(self):
        self.delayDisplay("Reading a FLAIR series: whole-tumour segment with the CNS terminology, saved on the source grid")
        import tempfile

        import SimpleITK as sitk

        from AnnotationQCLib.sessions import ReaderStudy

        folder = tempfile.mkdtemp(prefix="AnnotationQCTest")
        image = self._image()
        source = os.path.join(folder, "P001_FLAIR.nii.gz")
        sitk.WriteImage(image, source)
        study = ReaderStudy.create(os.path.join(folder, "study"), "test study")
        study.add_case("c1", "P001", {"FLAIR": source}, label="secret")
        study = AnnotationQCLogic().login(study.folder, "reader-1", "annotator")
        reading = panel_logic.open_reading(study, "reader-1", "c1", "FLAIR")
        segment = reading.segmentation_node.GetSegmentation().GetSegment(reading.segments["whole-tumour"])
        self.assertEqual(segment.GetName(), "Whole tumour")
        self.assertTrue(loadCnsTerminology())
        panel_logic.set_segment_mask(reading.segmentation_node, reading.segments["whole-tumour"], self._box(image, 6))
        (path,) = panel_logic.save_reading(study, reading.segmentation_node, reading.volume_node, final=True)
        self.assertEqual(os.path.basename(path), "P001_FLAIR_whole-tumour.nii.gz")
        saved = sitk.ReadImage(str(path))
        self.assertEqual(saved.GetSize(), image.GetSize())
        self.assertEqual(int(sitk.GetArrayViewFromImage(saved).sum()), 1000)
        self.delayDisplay("Test passed")
