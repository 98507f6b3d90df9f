import enum
import logging
import os
import pathlib
from typing import Annotated

import vtk

import qt
import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import *
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper

from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode

# Start-up imports: the standard library, qt, vtk and slicer, plus two standard-library-only
# helpers of ClinicalMRICommonLib (Testing/slicer_layer/test_startup_imports.py checks it). The
# panel's MRML logic (AnnotationQCLib.panel_logic: numpy, SimpleITK, MRML) is imported on
# first use; pandas, matplotlib and pyradiomics are installed on first use and imported only
# by the action that needs them.
from ClinicalMRICommonLib import panel_support, segment_editor


def _panelLogic():
    from AnnotationQCLib import panel_logic

    return panel_logic


def _reviewLogic():
    from AnnotationQCLib.loop import review_logic

    return review_logic


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
        # ClinicalMRICommon (hidden) ships ClinicalMRICommonLib: agreement metrics, image I/O, MRML bridge.
        self.parent.dependencies = ["ClinicalMRICommon", "Terminologies", "Segmentations"]
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
    Pre-annotation review: loopFolder, loopReader, loopRejectReason.
    """

    studyFolder: pathlib.Path
    readerId: str = ""
    readerRole: ReaderRole = ReaderRole.ANNOTATOR
    readingSession: str = "first"
    labelSet: LabelSet = LabelSet.INTRA_AXIAL
    compareReferenceVolume: vtkMRMLScalarVolumeNode
    toleranceMm: Annotated[float, WithinRange(0.0, 20.0)] = 1.0
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
    iccThreshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.75
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
    loopFolder: pathlib.Path
    loopReader: str = ""
    loopRejectReason: str = ""


#
# AnnotationQCWidget
#


class AnnotationQCWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py

    Widget wiring only: every button calls AnnotationQCLogic, which calls
    AnnotationQCLib.panel_logic (tested on slicer-core). Errors are shown once by
    panel_support.run_action (slicer.util.tryWithErrorDisplay re-raises after its dialog).
    """

    CASE_COLUMNS = ("case_id", "patient_id", "sequence", "status")
    SEGMENT_EDITOR_TAG = "AnnotationQC"

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
        self.qualityMeasurement = None
        self.review = None          # review_logic.Review open in the Segment Editor
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
        self.segmentEditorWidget = segment_editor.setup(slicer.qMRMLSegmentEditorWidget(), slicer.mrmlScene)
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
        self.ui.trainingLoadButton.connect("clicked(bool)", self.onTrainingLoad)
        self.ui.trainingSubmitButton.connect("clicked(bool)", self.onTrainingSubmit)
        self.ui.trainingReportButton.connect("clicked(bool)", self.onTrainingReport)
        self.ui.qualityCreateRoisButton.connect("clicked(bool)", self.onQualityCreateRois)
        self.ui.qualityMeasureButton.connect("clicked(bool)", self.onQualityMeasure)
        self.ui.qualityRecordButton.connect("clicked(bool)", self.onQualityRecord)
        self.ui.reviewNextButton.connect("clicked(bool)", self.onReviewNext)
        self.ui.reviewAcceptButton.connect("clicked(bool)", self.onReviewAccept)
        self.ui.reviewRedrawButton.connect("clicked(bool)", self.onReviewRedraw)
        self.ui.reviewRejectButton.connect("clicked(bool)", self.onReviewReject)

        self.initializeParameterNode()
        # connected after the parameter node: its first GUI update must not open a session
        self.ui.trainingPathLineEdit.connect("currentPathChanged(QString)", self.onTrainingFolderChanged)

    def cleanup(self) -> None:
        self.removeObservers()
        if self.segmentEditorWidget:
            self.segmentEditorWidget.setActiveEffect(None)

    def enter(self) -> None:
        self.initializeParameterNode()
        segment_editor.enter(self.segmentEditorWidget, slicer.mrmlScene, self.SEGMENT_EDITOR_TAG)

    def exit(self) -> None:
        segment_editor.exit(self.segmentEditorWidget)
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        segment_editor.release(self.segmentEditorWidget)
        self.reading = self.trainingReading = self.review = None

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()
            segment_editor.enter(self.segmentEditorWidget, slicer.mrmlScene, self.SEGMENT_EDITOR_TAG)

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())

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
        if self._parameterNode:
            p = self._parameterNode
            actions = self.logic.reviewActions(p, self.review)
            for key, button in (("next", self.ui.reviewNextButton), ("accept", self.ui.reviewAcceptButton),
                                ("redraw", self.ui.reviewRedrawButton), ("reject", self.ui.reviewRejectButton)):
                self._enable(button, *actions[key])

    def _enable(self, button, enabled, whyNot) -> None:
        """Enable a button or say in its tooltip why it is disabled (the .ui tooltip otherwise)."""
        name = button.objectName
        if name not in self._tooltips:
            self._tooltips[name] = button.toolTip
        button.enabled = bool(enabled)
        button.toolTip = self._tooltips[name] if enabled else whyNot

    def _bindEditor(self, segmentation, volume, layers=True) -> None:
        """Show the series and bind the Segment Editor to the segmentation (segmentation first).
        ``layers`` False: the views keep the layers the logic set (the review's heat map)."""
        segment_editor.bind(self.segmentEditorWidget, slicer.mrmlScene, self.SEGMENT_EDITOR_TAG, segmentation, volume)
        self.ui.segmentEditorFrame.setVisible(True)
        self.ui.readingCollapsibleButton.collapsed = False  # the embedded editor is in the Reading section
        if layers:
            slicer.util.setSliceViewerLayers(background=volume, foreground=None, label=None, fit=True)
        else:
            slicer.util.resetSliceViews()

    def _closeOpenReadings(self) -> None:
        """Only one case is in the scene at a time (so nothing of the previous case stays visible)."""
        self.segmentEditorWidget.setSegmentationNode(None)
        self.logic.closeReadings(self.reading, self.trainingReading)
        self.logic.closeReview(self.review)
        self.reading = self.trainingReading = self.review = None

    # ---- reading ---------------------------------------------------------------------

    def onLogin(self) -> None:
        p = self._parameterNode
        ok, study = panel_support.run_action(_("Login failed."), self.logic.login, p.studyFolder, p.readerId,
                                             p.readerRole.value)
        if not ok:
            return
        self.study = study
        panel_support.remember_path(self.ui.studyPathLineEdit)
        self.ui.readerInfoLabel.text = _("{reader} ({role}) in study '{study}'.").format(
            reader=p.readerId.strip(), role=study.role(p.readerId.strip()), study=study.meta["name"])
        self.refreshCaseList()

    def refreshCaseList(self) -> None:
        p = self._parameterNode
        rows = self.logic.caseRows(self.study, p.readerId, p.readingSession)
        table = self.ui.caseTableWidget
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, key in enumerate(self.CASE_COLUMNS):
                table.setItem(r, c, qt.QTableWidgetItem(str(row[key])))
        self._updateButtonStates()

    def onOpenCase(self) -> None:
        selected = self._selectedCase()
        self._closeOpenReadings()
        ok, reading = panel_support.run_action(_("The case could not be opened."), self.logic.openReading,
                                               self._parameterNode, self.study, selected["case_id"],
                                               selected["sequence"])
        if not ok:
            return
        self.reading = reading
        self._bindEditor(reading.segmentation_node, reading.volume_node)
        self._parameterNode.qualityVolume = reading.volume_node
        self.ui.readingStatusLabel.text = _("Reading {case} {sequence}: draw {segments}.").format(
            case=selected["case_id"], sequence=selected["sequence"], segments=", ".join(reading.segment_names()))
        self.refreshCaseList()

    def onSave(self, final: bool) -> None:
        if final and not slicer.util.confirmOkCancelDisplay(
                _("Submit this case? Submitted masks are locked and never overwritten.")):
            return
        ok, paths = panel_support.run_action(_("Saving failed; nothing was overwritten."), self.logic.saveReading,
                                             self.study, self.reading, final=final, notes=self.ui.notesLineEdit.text)
        if not ok:
            return
        self.ui.readingStatusLabel.text = (_("Submitted: {files}.") if final else _("Draft saved: {files}.")).format(
            files=", ".join(path.name for path in paths))
        self.refreshCaseList()

    # ---- compare ------------------------------------------------------------------------

    def onCompare(self) -> None:
        ok, result = panel_support.run_action(_("Comparison failed."), self.logic.compare, self._parameterNode,
                                              self.ui.segmentASelector.currentNode(),
                                              self.ui.segmentASelector.currentSegmentID(),
                                              self.ui.segmentBSelector.currentNode(),
                                              self.ui.segmentBSelector.currentSegmentID())
        if not ok:
            return
        m = result["metrics"]
        text = _("Dice {dice:.3f}; {dis} voxels where the readers disagree (red), {agree} where both agree "
                 "(green).").format(dice=m["dice"], dis=result["disagreement_voxels"], agree=result["agreement_voxels"])
        if any(result["resampled"]):
            text += " " + _("A segment was resampled onto the chosen volume's grid.")
        self.ui.compareStatusLabel.text = text

    # ---- ICC ----------------------------------------------------------------------------

    def onComputeIcc(self) -> None:
        plotPath = os.path.join(slicer.app.temporaryPath, "AnnotationQC_icc_by_class.png")
        ok, result = panel_support.run_action(_("ICC could not be computed."), self.logic.computeIcc,
                                              self._parameterNode, self.study, plotPath)
        if not ok:
            return
        p = self._parameterNode
        self.ui.iccStatusLabel.text = _("{passing} of {n} features reach {form} >= {threshold:g}.").format(
            passing=result["n_passing"], n=result["n_features"], form=p.iccForm.value,
            threshold=p.iccThreshold) + (" " + result["note"] if result.get("note") else "")
        pixmap = qt.QPixmap(result["plot"])
        self.ui.iccPlotLabel.setPixmap(pixmap.scaledToWidth(min(pixmap.width(), 480), qt.Qt.SmoothTransformation))

    # ---- training -----------------------------------------------------------------------

    def onTrainingFolderChanged(self, path) -> None:
        self.trainingSession = None
        self.ui.trainingCaseComboBox.clear()
        ok, session = panel_support.run_action(_("The training session could not be opened."),
                                               self.logic.openTrainingSession, path)
        if ok and session is not None:
            self.trainingSession = session
            panel_support.remember_path(self.ui.trainingPathLineEdit)
            for row in self.logic.trainingCaseRows(session):
                self.ui.trainingCaseComboBox.addItem(f"{row['case_id']} ({row['sequence']})", row["case_id"])
        self._updateButtonStates()

    def onTrainingCreate(self) -> None:
        ok, session = panel_support.run_action(_("The training session could not be created."),
                                               self.logic.createTrainingSession, self._parameterNode)
        if not ok:
            return
        warnings = session.meta.get("warnings", [])
        self.ui.trainingResultLabel.text = _("Session '{name}' with {n} cases created.").format(
            name=session.meta["name"], n=len(session.case_ids)) + "".join("\n" + w for w in warnings)
        self.onTrainingFolderChanged(str(session.folder))

    def onTrainingLoad(self) -> None:
        caseId = self.ui.trainingCaseComboBox.currentData
        self._closeOpenReadings()
        ok, reading = panel_support.run_action(_("The training case could not be loaded."),
                                               self.logic.openTrainingCase, self._parameterNode,
                                               self.trainingSession, caseId)
        if not ok:
            return
        self.trainingReading = reading
        self._bindEditor(reading.segmentation_node, reading.volume_node)
        self.ui.trainingResultLabel.text = _("Draw the lesion of {case}, then Submit case.").format(case=caseId)
        self._updateButtonStates()

    def onTrainingSubmit(self) -> None:
        ok, path = panel_support.run_action(_("Submission failed; nothing was overwritten."),
                                            self.logic.submitTrainingCase, self.trainingSession, self.trainingReading)
        if not ok:
            return
        self._closeOpenReadings()
        self.ui.trainingResultLabel.text = _("Submitted {file}.").format(file=path.name)
        self._updateButtonStates()

    def onTrainingReport(self) -> None:
        ok, report = panel_support.run_action(_("The report could not be written."), self.logic.trainingReport,
                                              self._parameterNode, self.trainingSession)
        if not ok:
            return
        self.ui.trainingResultLabel.text = self.logic.trainingSummary(report) + "\n" + _("Report: {path}").format(
            path=report["files"]["html"])
        self._onParameterNodeModified()
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(report["files"]["html"]))

    # ---- quality ------------------------------------------------------------------------

    def onQualityCreateRois(self) -> None:
        ok, rois = panel_support.run_action(_("The ROI segmentation could not be created."),
                                            self.logic.createQualityRois, self._parameterNode, wait_cursor=False)
        if not ok:
            return
        self._bindEditor(rois, self._parameterNode.qualityVolume)
        self.ui.qualityMeasureLabel.text = _("Draw the signal, background (noisy air) and optionally tissue ROIs.")

    def onQualityMeasure(self) -> None:
        ok, m = panel_support.run_action(_("SNR/CNR could not be measured."), self.logic.measureQuality,
                                         self._parameterNode)
        if not ok:
            return
        self.qualityMeasurement = m
        text = _("SNR {snr:.1f}").format(snr=m["snr"])
        if m["cnr"] is not None:
            text += "; " + _("CNR {cnr:.1f}").format(cnr=m["cnr"])
        self.ui.qualityMeasureLabel.text = text + " " + _("(noise SD {sd:.4g} from {n} background voxels)").format(
            sd=m["noise_sd"], n=m["n_background"])

    def onQualityRecord(self) -> None:
        selected = self._selectedCase()
        ok, record = panel_support.run_action(_("The grade could not be recorded."), self.logic.recordQuality,
                                              self._parameterNode, self.study, selected["case_id"],
                                              selected["sequence"], self.qualityMeasurement)
        if not ok:
            return
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

    # ---- pre-annotation review ----------------------------------------------------------

    def onReviewNext(self) -> None:
        if self.review is not None and not slicer.util.confirmOkCancelDisplay(
                _("Close case {case} without a decision? Your edits of it are discarded.").format(
                    case=self.review.case_id)):
            return
        self._closeOpenReadings()
        ok, review = panel_support.run_action(_("No case could be opened for review."), self.logic.openReview,
                                              self._parameterNode)
        if ok:
            self.review = review
            panel_support.remember_path(self.ui.loopPathLineEdit)
            self._bindEditor(review.segmentation_node, review.volume_nodes[0], layers=False)
            self.ui.reviewCaseLabel.text = self.logic.reviewText(review)
            self.ui.reviewStatusLabel.text = ""
        self._updateButtonStates()

    def onReviewAccept(self) -> None:
        ok, record = panel_support.run_action(_("The review could not be recorded; the standard set is unchanged."),
                                              self.logic.acceptReview, self._parameterNode, self.review)
        if ok:
            self._finishReview(self.logic.decisionText(self.review, record))

    def onReviewRedraw(self) -> None:
        if not slicer.util.confirmOkCancelDisplay(_("Clear the proposal's segments and draw case {case} from "
                                                    "scratch?").format(case=self.review.case_id)):
            return
        ok, _unused = panel_support.run_action(_("The segments could not be cleared."), self.logic.startRedraw,
                                               self.review, wait_cursor=False)
        if ok:
            self.ui.reviewStatusLabel.text = _("Segments cleared: draw the case in the Segment Editor, then Accept.")
        self._updateButtonStates()

    def onReviewReject(self) -> None:
        if not slicer.util.confirmOkCancelDisplay(_("Reject the proposal of case {case}? It is sent back to be drawn "
                                                    "from scratch.").format(case=self.review.case_id)):
            return
        ok, record = panel_support.run_action(_("The rejection could not be recorded."), self.logic.rejectReview,
                                              self._parameterNode, self.review)
        if ok:
            self._parameterNode.loopRejectReason = ""
            self._finishReview(self.logic.decisionText(self.review, record))

    def _finishReview(self, text) -> None:
        """The decision is recorded: the case leaves the scene, the panel says what happened."""
        self._closeOpenReadings()
        self.ui.segmentEditorFrame.setVisible(False)
        self.ui.reviewCaseLabel.text = ""
        self.ui.reviewStatusLabel.text = text
        self._updateButtonStates()


#
# AnnotationQCLogic
#


class AnnotationQCLogic(ScriptedLoadableModuleLogic):
    """Moves values between the parameter node and AnnotationQCLib.panel_logic; no widgets
    and no computation of its own (panel_logic is tested on slicer-core, and installs the
    Python packages an action needs on first use)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return AnnotationQCParameterNode(super().getParameterNode())

    @staticmethod
    def _tableNode(node, name):
        """``node`` while it is in the scene, else a new table node (ClinicalMRICommonLib.mrml_bridge)."""
        from ClinicalMRICommonLib.mrml_bridge import table_node_or_new

        return table_node_or_new(slicer.mrmlScene, node, name)

    # reading
    def login(self, studyFolder, readerId, role):
        return _panelLogic().login(studyFolder, readerId, role)

    def caseRows(self, study, readerId, session):
        return _panelLogic().case_rows(study, readerId.strip(), session or "first")

    def openReading(self, parameterNode, study, caseId, sequence):
        p = parameterNode
        return _panelLogic().open_reading(study, p.readerId.strip(), caseId, sequence, p.readingSession or "first",
                                          variant=_panelLogic().label_variant(p.labelSet.value))

    def saveReading(self, study, reading, final=False, notes=""):
        return _panelLogic().save_reading(study, reading.segmentation_node, reading.volume_node, final=final,
                                          notes=notes)

    def closeReadings(self, *readings):
        for reading in readings:
            if reading is not None:
                _panelLogic().close_nodes(reading.nodes())

    # compare
    def compare(self, parameterNode, segmentationA, segmentA, segmentationB, segmentB) -> dict:
        p = parameterNode
        result = _panelLogic().compare_selected(segmentationA, segmentA, segmentationB, segmentB,
                                                p.compareReferenceVolume, tolerance_mm=p.toleranceMm,
                                                scene=slicer.mrmlScene, table_node=p.compareTable,
                                                disagreement_node=p.disagreementSegmentation)
        p.compareTable, p.disagreementSegmentation = result["table_node"], result["disagreement_node"]
        return result

    # ICC
    def computeIcc(self, parameterNode, study, plotPath) -> dict:
        p = parameterNode
        result = _panelLogic().panel_icc(
            p.iccSource.value, study=study, reader_a=p.iccReaderA, reader_b=p.iccReaderB, session_a=p.iccSessionA,
            session_b=p.iccSessionB, sequence=p.iccSequence, content=p.iccContent, csv_a=p.iccCsvA, csv_b=p.iccCsvB,
            id_column=p.iccIdColumn, form=p.iccForm.value, threshold=p.iccThreshold, scene=slicer.mrmlScene,
            table_node=p.iccTable, class_table_node=p.iccClassTable, plot_png=plotPath)
        p.iccTable, p.iccClassTable = result["table_node"], result["class_table_node"]
        return result

    # training
    def openTrainingSession(self, folder):
        return _panelLogic().training_session_in(folder)

    def trainingCaseRows(self, session):
        return _panelLogic().training_case_rows(session)

    def createTrainingSession(self, parameterNode):
        p = parameterNode
        return _panelLogic().create_training_session(p.trainingFolder, p.trainingCasesFile, p.trainingName)

    def openTrainingCase(self, parameterNode, session, caseId):
        p = parameterNode
        return _panelLogic().open_training_case(session, p.traineeId.strip(), caseId,
                                                variant=_panelLogic().label_variant(p.labelSet.value))

    def submitTrainingCase(self, session, reading):
        return _panelLogic().submit_training_case(session, reading.segmentation_node, reading.volume_node)

    def trainingReport(self, parameterNode, session) -> dict:
        pl = _panelLogic()
        parameterNode.trainingTable = self._tableNode(parameterNode.trainingTable,
                                                           _("Training report"))
        return pl.training_report(session, parameterNode.traineeId.strip(), table_node=parameterNode.trainingTable)

    def trainingSummary(self, report) -> str:
        return _panelLogic().training_summary(report)

    # quality
    def createQualityRois(self, parameterNode):
        rois = _panelLogic().quality_roi_segmentation(parameterNode.qualityVolume)
        parameterNode.qualityRois = rois
        return rois

    def measureQuality(self, parameterNode) -> dict:
        return _panelLogic().measure_snr_cnr(parameterNode.qualityVolume, parameterNode.qualityRois,
                                             rayleigh_correction=parameterNode.rayleighCorrection)

    # pre-annotation review (AnnotationQCLib.loop.review_logic)
    def reviewActions(self, parameterNode, review) -> dict:
        p = parameterNode
        return _reviewLogic().panel_actions(p.loopFolder, p.loopReader, review, p.loopRejectReason)

    def openReview(self, parameterNode):
        return _reviewLogic().open_review(parameterNode.loopFolder, scene=slicer.mrmlScene)

    def reviewText(self, review) -> str:
        return _reviewLogic().review_text(review)

    def acceptReview(self, parameterNode, review) -> dict:
        return _reviewLogic().accept_review(review, parameterNode.loopReader.strip())

    def startRedraw(self, review) -> None:
        _reviewLogic().start_redraw(review)

    def rejectReview(self, parameterNode, review) -> dict:
        p = parameterNode
        return _reviewLogic().reject_review(review, p.loopReader.strip(), p.loopRejectReason.strip())

    def decisionText(self, review, record) -> str:
        return _reviewLogic().decision_text(review, record)

    def closeReview(self, review) -> None:
        if review is not None:
            _reviewLogic().close_review(review)

    def recordQuality(self, parameterNode, study, caseId, sequence, measurement) -> dict:
        p = parameterNode
        pl = _panelLogic()
        if study is None:
            from ClinicalMRICommonLib.errors import UserError

            raise UserError(_("Log in to the reader study first."))
        grade, likert = pl.quality_scores(p.qualityGrade.value, p.qualityLikert.value)
        return pl.record_series_quality(study, caseId, sequence, p.readerId.strip(), grade=grade, likert=likert,
                                        reason=p.qualityReason, measurement=measurement)


#
# AnnotationQCTest
#


class AnnotationQCTest(ScriptedLoadableModuleTest):
    """
    The manual test script of the panel (docs/slicer_layer.md): every button's logic on
    generated data inside Slicer, through AnnotationQCLogic as the buttons call it. Run with
    ``Slicer --testing`` (ctest: slicer_add_python_unittest) or Reload and Test. Testing mode
    never installs packages: a test whose packages are missing says so and is skipped.
    Uses ScriptedLoadableModuleTest base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_PathFieldsUnset, self.test_LoginOpenSaveSubmit, self.test_CompareTwoBoxes,
                     self.test_IccFromTwoTables, self.test_IccFromReaderStudy, self.test_TrainingSession,
                     self.test_QualityRoisMeasureRecord, self.test_PreAnnotationReview):
            self.setUp()
            test()

    # -- generated data

    def _missing(self, *features):
        """Why a test cannot run here (packages not installed), or ""."""
        from ClinicalMRICommonLib.slicer_packages import missing_requirements, requirements_for

        missing = missing_requirements(requirements_for(*features))
        if missing:
            logging.warning("AnnotationQCTest: skipped, packages not installed: %s", ", ".join(map(str, missing)))
            self.delayDisplay("Skipped: packages not installed (testing mode never installs them)")
        return missing

    def _image(self, seed=0):
        import numpy as np
        import SimpleITK as sitk

        image = sitk.GetImageFromArray(np.random.default_rng(seed).normal(300, 50, (20, 20, 24)).astype(np.float32))
        image.SetSpacing((0.5, 0.5, 0.5))
        return image

    def _box(self, reference, x0, size=10):
        import numpy as np
        import SimpleITK as sitk

        array = np.zeros(sitk.GetArrayViewFromImage(reference).shape, np.uint8)
        array[5:5 + size, 5:5 + size, x0:x0 + size] = 1
        mask = sitk.GetImageFromArray(array)
        mask.CopyInformation(reference)
        return mask

    def _study(self, folder, nCases=1):
        """A reader study with FLAIR cases P001.. and readers r1, r2 (annotators)."""
        import SimpleITK as sitk

        from AnnotationQCLib.sessions import ReaderStudy

        study = ReaderStudy.create(os.path.join(folder, "study"), "test study")
        for r in ("r1", "r2"):
            study.add_reader(r, "annotator")
        for i in range(1, nCases + 1):
            source = os.path.join(folder, f"P00{i}_FLAIR.nii.gz")
            sitk.WriteImage(self._image(seed=i), source)
            study.add_case(f"c{i}", f"P00{i}", {"FLAIR": source}, label="secret")
        return study

    def _folder(self):
        import tempfile

        return tempfile.mkdtemp(prefix="AnnotationQCTest", dir=slicer.app.temporaryPath)

    @staticmethod
    def _writeCsv(path, rows):
        import csv

        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    # -- the buttons

    def test_PathFieldsUnset(self):
        self.delayDisplay("Empty path fields ('.') are unset: login refuses, no training session is looked up")
        from ClinicalMRICommonLib.errors import UserError

        logic = AnnotationQCLogic()
        parameterNode = logic.getParameterNode()
        self.assertEqual(str(parameterNode.studyFolder), ".")  # what Slicer's Path serializer stores for unset
        with self.assertRaisesRegex(UserError, "choose the reader study folder"):
            logic.login(parameterNode.studyFolder, "r1", "annotator")
        self.assertIsNone(logic.openTrainingSession("."))
        self.assertEqual(str(parameterNode.loopFolder), ".")
        self.assertFalse(logic.reviewActions(parameterNode, None)["next"][0])
        with self.assertRaisesRegex(UserError, "choose the loop folder first"):
            logic.openReview(parameterNode)
        self.delayDisplay("Test passed")

    def test_LoginOpenSaveSubmit(self):
        self.delayDisplay("Log in, Open selected case, Save draft, Submit: CNS terminology, source grid")
        if self._missing("tables"):
            return
        import SimpleITK as sitk

        from ClinicalMRICommonLib.mrml_bridge import set_segment_mask

        folder = self._folder()
        study = self._study(folder)
        logic = AnnotationQCLogic()
        parameterNode = logic.getParameterNode()
        parameterNode.studyFolder, parameterNode.readerId = pathlib.Path(study.folder), "r1"
        study = logic.login(parameterNode.studyFolder, parameterNode.readerId, "annotator")
        self.assertEqual([(r["case_id"], r["status"]) for r in logic.caseRows(study, "r1", "first")],
                         [("c1", "not started")])
        reading = logic.openReading(parameterNode, study, "c1", "FLAIR")
        self.assertIn("Whole tumour", reading.segment_names())
        self.assertTrue(loadCnsTerminology())
        image = self._image(seed=1)
        set_segment_mask(reading.segmentation_node, reading.segments["whole-tumour"], self._box(image, 6))
        (draft,) = logic.saveReading(study, reading, final=False)
        self.assertEqual(logic.caseRows(study, "r1", "first")[0]["status"], "in progress")
        (path,) = logic.saveReading(study, reading, final=True)
        self.assertEqual(os.path.basename(path), "P001_FLAIR_whole-tumour.nii.gz")
        saved = sitk.ReadImage(str(path))
        self.assertEqual(saved.GetSize(), image.GetSize())
        self.assertEqual(int(sitk.GetArrayViewFromImage(saved).sum()), 1000)
        self.assertEqual(logic.caseRows(study, "r1", "first")[0]["status"], "submitted")
        logic.closeReadings(reading)
        self.delayDisplay("Test passed")

    def test_CompareTwoBoxes(self):
        self.delayDisplay("Compare: two boxes shifted by two voxels")
        from ClinicalMRICommonLib.mrml_bridge import set_segment_mask, sitk_to_volume_node

        image = self._image()
        volume = sitk_to_volume_node(image, "reference", scene=slicer.mrmlScene)
        segmentations = []
        for name, x0 in (("A", 5), ("B", 7)):
            node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
            sid = _panelLogic().add_segment(node, "lesion")
            set_segment_mask(node, sid, self._box(image, x0))
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
        self.assertIsNotNone(parameterNode.disagreementSegmentation)
        self.delayDisplay("Test passed")

    def test_IccFromTwoTables(self):
        self.delayDisplay("Compute ICC from two feature tables: table nodes and the plot")
        if self._missing("tables", "plots"):
            return
        import numpy as np

        folder = self._folder()
        rng = np.random.default_rng(1)
        truth = rng.normal(1000, 200, 8)
        for name, noise in (("a.csv", 0.0), ("b.csv", 5.0)):
            self._writeCsv(os.path.join(folder, name), [
                {"case_id": f"c{i}", "original_shape_VoxelVolume": v + noise * rng.normal(),
                 "original_firstorder_Mean": 300 + 40 * rng.normal()} for i, v in enumerate(truth)])
        logic = AnnotationQCLogic()
        parameterNode = logic.getParameterNode()
        parameterNode.iccSource = IccSource.CSV
        parameterNode.iccCsvA = pathlib.Path(folder, "a.csv")
        parameterNode.iccCsvB = pathlib.Path(folder, "b.csv")
        result = logic.computeIcc(parameterNode, None, os.path.join(folder, "icc.png"))
        self.assertEqual(result["n_features"], 2)
        self.assertGreaterEqual(result["n_passing"], 1)  # the volume agrees within 5 of SD 200
        self.assertEqual(parameterNode.iccTable.GetNumberOfRows(), 2)
        self.assertTrue(os.path.getsize(result["plot"]) > 0)
        self.delayDisplay("Test passed")

    def test_IccFromReaderStudy(self):
        self.delayDisplay("Compute ICC between two readers of a study (pyradiomics features)")
        if self._missing("tables", "plots", "radiomics"):
            return
        folder = self._folder()
        study = self._study(folder, nCases=5)
        for i in range(1, 6):
            image = self._image(seed=i)
            study.save_mask("r1", f"c{i}", "FLAIR", "lesion", self._box(image, 4 + i, size=8), final=True)
            study.save_mask("r2", f"c{i}", "FLAIR", "lesion", self._box(image, 5 + i, size=8), final=True)
        logic = AnnotationQCLogic()
        parameterNode = logic.getParameterNode()
        parameterNode.iccSource = IccSource.STUDY
        parameterNode.iccReaderA, parameterNode.iccReaderB = "r1", "r2"
        result = logic.computeIcc(parameterNode, study, os.path.join(folder, "icc.png"))
        self.assertGreater(result["n_features"], 10)
        self.assertEqual(parameterNode.iccTable.GetNumberOfRows(), result["n_features"])
        self.delayDisplay("Test passed")

    def test_TrainingSession(self):
        self.delayDisplay("Training: Create session, Load case, Submit case, Report")
        if self._missing("tables", "plots", "radiomics"):
            return
        import SimpleITK as sitk

        from ClinicalMRICommonLib.mrml_bridge import set_segment_mask

        folder = self._folder()
        rows = []
        for i, size in enumerate((4, 6, 8, 10, 12), start=1):
            image = self._image(seed=i)
            sitk.WriteImage(image, os.path.join(folder, f"T00{i}.nii.gz"))
            sitk.WriteImage(self._box(image, 5, size=size), os.path.join(folder, f"T00{i}_ref.nii.gz"))
            rows.append({"case_id": f"t{i}", "patient_id": f"T00{i}", "sequence": "FLAIR",
                         "image": f"T00{i}.nii.gz", "reference": f"T00{i}_ref.nii.gz", "site": "ab"[i % 2]})
        self._writeCsv(os.path.join(folder, "cases.csv"), rows)
        logic = AnnotationQCLogic()
        parameterNode = logic.getParameterNode()
        parameterNode.trainingFolder = pathlib.Path(folder, "session")
        parameterNode.trainingCasesFile = pathlib.Path(folder, "cases.csv")
        parameterNode.trainingName, parameterNode.traineeId = "test session", "trainee1"
        parameterNode.labelSet = LabelSet.NONE
        session = logic.createTrainingSession(parameterNode)
        self.assertEqual(logic.openTrainingSession(str(session.folder)).case_ids, session.case_ids)
        for row in logic.trainingCaseRows(session):
            reading = logic.openTrainingCase(parameterNode, session, row["case_id"])
            self.assertEqual(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode"), 1)  # no reference
            size = 4 + 2 * (int(row["case_id"][1:]) - 1)
            set_segment_mask(reading.segmentation_node, reading.segments["lesion"],
                             self._box(self._image(seed=int(row["case_id"][1:])), 5, size=size))
            logic.submitTrainingCase(session, reading)
            logic.closeReadings(reading)
        report = logic.trainingReport(parameterNode, session)
        self.assertAlmostEqual(report["overall"]["mean_dice"], 1.0, places=9)
        self.assertTrue(logic.trainingSummary(report).startswith("trainee1: PASSED"))
        self.assertEqual(parameterNode.trainingTable.GetNumberOfRows(), 5)
        self.delayDisplay("Test passed")

    def test_QualityRoisMeasureRecord(self):
        self.delayDisplay("Quality: Create ROIs, Measure SNR / CNR, Record grade (a flagged series is hidden)")
        if self._missing("tables"):
            return
        import numpy as np
        import SimpleITK as sitk

        from ClinicalMRICommonLib.mrml_bridge import set_segment_mask, sitk_to_volume_node

        folder = self._folder()
        study = self._study(folder)
        rng = np.random.default_rng(7)
        array = rng.normal(20.0, 4.0, (20, 20, 24))
        array[2:8, 2:8, 2:8] = 400.0
        image = sitk.GetImageFromArray(array.astype(np.float32))
        image.SetSpacing((0.5, 0.5, 0.5))
        logic = AnnotationQCLogic()
        parameterNode = logic.getParameterNode()
        parameterNode.readerId = "r1"
        parameterNode.qualityVolume = sitk_to_volume_node(image, "graded FLAIR", scene=slicer.mrmlScene)
        rois = logic.createQualityRois(parameterNode)
        ids = _panelLogic().content_segments(rois)
        signal = np.zeros(array.shape, np.uint8)
        signal[2:8, 2:8, 2:8] = 1
        background = np.zeros(array.shape, np.uint8)
        background[12:20, 12:20, 12:24] = 1
        for name, arr in (("signal", signal), ("background", background)):
            mask = sitk.GetImageFromArray(arr)
            mask.CopyInformation(image)
            set_segment_mask(rois, ids[name], mask)
        m = logic.measureQuality(parameterNode)
        self.assertAlmostEqual(m["snr"], array[2:8, 2:8, 2:8].mean() / array[background == 1].std(ddof=1), delta=0.5)
        parameterNode.qualityGrade, parameterNode.qualityReason = QualityGrade.G1, "motion"
        record = logic.recordQuality(parameterNode, study, "c1", "FLAIR", m)
        self.assertTrue(record["flagged"])
        self.assertEqual(logic.caseRows(study, "r1", "first"), [])  # the flagged series is not offered
        self.delayDisplay("Test passed")

    def test_PreAnnotationReview(self):
        self.delayDisplay("Pre-annotation review: Next case, Accept unchanged, Next case, Reject with a reason")
        import importlib.util

        missing = [m for m in ("torch", "monai", "safetensors") if importlib.util.find_spec(m) is None]
        if missing:
            logging.warning("AnnotationQCTest: review test skipped, packages not installed: %s", ", ".join(missing))
            self.delayDisplay("Skipped: the loop's model needs " + ", ".join(missing))
            return
        import numpy as np
        import SimpleITK as sitk

        from AnnotationQCLib.loop import model
        from AnnotationQCLib.loop.store import LoopFolder

        folder = self._folder()
        rng = np.random.default_rng(0)
        rows = []
        for i in range(5):
            array = rng.normal(100.0, 8.0, (24, 24, 24)).astype(np.float32)
            lesion = np.zeros(array.shape, np.uint8)
            lesion[6 + i:14 + i, 8:16, 5:13] = 1
            image = sitk.GetImageFromArray(array + 60.0 * lesion)
            sitk.WriteImage(image, os.path.join(folder, f"L{i}.nii.gz"))
            mask = ""
            if i < 3:  # the standard set; L3 and L4 are the pool
                truth = sitk.GetImageFromArray(lesion)
                truth.CopyInformation(image)
                sitk.WriteImage(truth, os.path.join(folder, f"L{i}_mask.nii.gz"))
                mask = f"L{i}_mask.nii.gz"
            rows.append({"case_id": f"L{i}", "image": f"L{i}.nii.gz", "mask": mask})
        self._writeCsv(os.path.join(folder, "cases.csv"), rows)
        loop, _summary = LoopFolder.create(os.path.join(folder, "loop"), os.path.join(folder, "cases.csv"))
        model.train_round(loop, epochs=2, device="cpu", seed=0, patch=16)
        model.prelabel(loop, samples=2, device="cpu")
        logic = AnnotationQCLogic()
        parameterNode = logic.getParameterNode()
        parameterNode.loopFolder = pathlib.Path(loop.folder)
        self.assertTrue(logic.reviewActions(parameterNode, None)["next"][0])
        review = logic.openReview(parameterNode)
        self.assertIn(review.case_id, ("L3", "L4"))
        self.assertIn("model proposal, round 1", review.segmentation_node.GetName())
        self.assertFalse(logic.reviewActions(parameterNode, review)["accept"][0])  # no reader id yet
        parameterNode.loopReader = "expert-1"
        record = logic.acceptReview(parameterNode, review)
        self.assertEqual((record["verdict"], record["changed_fraction"], record["by"]), ("accepted", 0.0, "expert-1"))
        self.assertTrue(logic.decisionText(review, record).startswith(f"{review.case_id} accepted as proposed"))
        logic.closeReview(review)
        review = logic.openReview(parameterNode)
        self.assertFalse(logic.reviewActions(parameterNode, review)["reject"][0])  # no reason yet
        parameterNode.loopRejectReason = "lesion missed"
        record = logic.rejectReview(parameterNode, review)
        self.assertEqual(record["reason"], "lesion missed")
        logic.closeReview(review)
        self.assertEqual(LoopFolder(loop.folder).state()["cases"][review.case_id]["status"], "redraw")
        self.delayDisplay("Test passed")
