import enum
import logging
import pathlib
import shutil
import tempfile
import time
from typing import Annotated

import qt
import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import *
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import WithinRange, parameterNodeWrapper

from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode

# Start-up imports: the standard library, qt, vtk and slicer, plus standard-library-only
# helpers of ClinicalMRICommonLib (Testing/slicer_layer/test_startup_imports.py checks it). The
# logic's work is in StrokeLesionLib.panel_logic (MRML, numpy, SimpleITK; tested on
# slicer-core), imported on first use; the export's packages are installed on first use.
from ClinicalMRICommonLib import panel_support, segment_editor
from ClinicalMRICommonLib.process_runner import ProcessRunner, RunState


def _panelLogic():
    from StrokeLesionLib import panel_logic

    return panel_logic


#
# StrokeLesion
#


class StrokeLesion(ScriptedLoadableModule):
    """Uses ScriptedLoadableModule base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Stroke Lesion")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        # ClinicalMRICommon (hidden) ships ClinicalMRICommonLib: agreement metrics, image I/O, MRML bridge.
        self.parent.dependencies = ["ClinicalMRICommon"]
        self.parent.contributors = ["ClinicalMRI extension developers"]
        self.parent.helpText = _("""
Annotation of acute ischaemic stroke lesions on diffusion MRI, following the two-reader workflow of the
expert consensus:
<ol>
<li>load DWI, ADC and FLAIR (files or a session folder) in three linked views; the ADC units are detected
and FLAIR is resampled onto the DWI grid;</li>
<li>one-click candidate: ADC below 620 x 10<sup>-6</sup> mm<sup>2</sup>/s and DWI hyperintense within the
brain (a "lesion candidate" segment), with DWI-bright but ADC-normal voxels in a separate "T2 shine-through"
segment, and a table of per-lesion checks;</li>
<li>each annotator opens the case under their reader id (seeing only their own mask), refines the lesion in
Segment Editor and submits a new version (every version is kept);</li>
<li>the reviewer compares A and B, sees them side by side with their disagreement, decides lesion by lesion
(A, B, union, intersection, edited) with notes, or sends the case to the arbitrator;</li>
<li>export to BIDS (checked with the official validator) and the dataset acceptance report.</li>
</ol>
The same steps run on the command line: <code>stroke-lesion --help</code>.
Research use only.
""")
        self.parent.acknowledgementText = _("""
Workflow, ADC threshold, reader roles, review and arbitration and BIDS export follow the "Expert consensus
on MRI annotation of acute ischemic stroke" (Emergency Imaging Committee, Chinese Association of
Radiologists). Built on 3D Slicer, SimpleITK and MONAI.
""")


#
# StrokeLesionParameterNode
#


class StrokeLesionAdcUnits(enum.Enum):
    """Units of the ADC map; values are the library's names (StrokeLesionLib.diffusion.ADC_UNITS)."""

    AUTO = "auto"
    MM2_PER_S = "mm2/s"
    MILLI_MM2_PER_S = "1e-3mm2/s"
    MICRO_MM2_PER_S = "1e-6mm2/s"

    def label(self):
        return {
            StrokeLesionAdcUnits.AUTO: _("Detect from the brain's median"),
            StrokeLesionAdcUnits.MM2_PER_S: _("mm2/s"),
            StrokeLesionAdcUnits.MILLI_MM2_PER_S: _("10^-3 mm2/s"),
            StrokeLesionAdcUnits.MICRO_MM2_PER_S: _("10^-6 mm2/s"),
        }[self]


@parameterNodeWrapper
class StrokeLesionParameterNode:
    """
    The parameters of the StrokeLesion panel, saved with the scene.

    sessionFolder, dwiFile, adcFile, flairFile - where the images are loaded from.
    adcUnits - the ADC map's units (auto: detected).
    dwiVolume, adcVolume, flairVolume - the loaded (or selected) volumes.
    adcThreshold (10^-6 mm2/s), dwiK, minLesionMl - the candidate's settings.
    candidateSegmentation, candidateTable - the candidate and its per-lesion checks.
    studyDirectory, caseId, readerId - the two-reader study, the case and who is working.
    lesionSegmentation - the reader's own lesion segment (annotators).
    reviewTable - one row per lesion of the comparison.
    exportDirectory, datasetName, authors, license, validateExport - BIDS export.
    """

    sessionFolder: pathlib.Path
    dwiFile: pathlib.Path
    adcFile: pathlib.Path
    flairFile: pathlib.Path
    adcUnits: StrokeLesionAdcUnits = StrokeLesionAdcUnits.AUTO
    dwiVolume: vtkMRMLScalarVolumeNode
    adcVolume: vtkMRMLScalarVolumeNode
    flairVolume: vtkMRMLScalarVolumeNode
    adcThreshold: Annotated[float, WithinRange(100.0, 2000.0)] = 620.0
    dwiK: Annotated[float, WithinRange(0.0, 20.0)] = 3.0
    minLesionMl: Annotated[float, WithinRange(0.0, 10.0)] = 0.01
    candidateSegmentation: vtkMRMLSegmentationNode
    candidateTable: vtkMRMLTableNode
    studyDirectory: pathlib.Path
    caseId: str = ""
    readerId: str = ""
    lesionSegmentation: vtkMRMLSegmentationNode
    reviewTable: vtkMRMLTableNode
    exportDirectory: pathlib.Path
    datasetName: str = ""
    authors: str = ""
    license: str = ""
    validateExport: bool = True


#
# StrokeLesionWidget
#


class StrokeLesionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py

    Widget wiring only: buttons call StrokeLesionLogic, which calls StrokeLesionLib.panel_logic.
    The BIDS export and the acceptance report run in a separate process (a ProcessRunner
    polled by a QTimer on the main thread) with a progress bar and Cancel; meanwhile the
    buttons that start work are disabled.
    """

    CHOICE_COLUMN = 4
    POLL_INTERVAL_MS = 200

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._caseOpenedAt = None
        self.segmentEditorWidget = None
        self.panelLayout = None
        self.runner = None
        self.pollTimer = None
        self._job = None  # (kind, job folder) of the running export/acceptance job

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/StrokeLesion.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        # The .ui connects the top-level widget's mrmlSceneChanged signal to every MRML widget.
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = StrokeLesionLogic()

        self.ui.descriptionLabel.text = _(
            "Acute stroke lesions on DWI/ADC: candidate, two blinded readers, review, arbitration, BIDS export. "
            "Every step is recorded in the study's audit trail.")

        # Segment Editor embedded in the panel (its own parameter node, a scene singleton)
        self.segmentEditorWidget = segment_editor.setup(slicer.qMRMLSegmentEditorWidget(), slicer.mrmlScene,
                                                        selectors_visible=True)
        self.ui.segmentEditorLayout.addWidget(self.segmentEditorWidget)

        self.ui.lesionTable.setColumnCount(5)
        self.ui.lesionTable.setHorizontalHeaderLabels([_("Lesion"), _("Volume (mL)"), _("Drawn by"), _("Notes"),
                                                       _("Choice")])
        self.ui.lesionTable.horizontalHeader().setStretchLastSection(True)
        self.ui.defaultChoiceComboBox.addItems(list(self.logic.arbitrationChoices()))

        self.runner = ProcessRunner()
        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(self.POLL_INTERVAL_MS)
        self.pollTimer.connect("timeout()", self._onPollTimer)
        self.ui.jobProgressBar.hide()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        layoutManager = slicer.app.layoutManager()
        if layoutManager is not None:
            layoutManager.connect("layoutChanged(int)", self._onLayoutChanged)

        for button, handler in (
                (self.ui.loadSessionButton, self.onLoadSession), (self.ui.loadFilesButton, self.onLoadFiles),
                (self.ui.candidateButton, self.onCandidate), (self.ui.openCaseButton, self.onOpenCase),
                (self.ui.startFromCandidateButton, self.onStartFromCandidate),
                (self.ui.submitButton, self.onSubmitAnnotation), (self.ui.compareButton, self.onCompare),
                (self.ui.loadReviewButton, self.onLoadReview), (self.ui.addNoteButton, self.onAddNote),
                (self.ui.submitReviewButton, self.onSubmitReview),
                (self.ui.submitArbitrationButton, self.onSubmitArbitration),
                (self.ui.exportButton, self.onExport), (self.ui.acceptButton, self.onAccept),
                (self.ui.cancelJobButton, self.onCancelJob)):
            button.connect("clicked(bool)", handler)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        if self.pollTimer:
            self.pollTimer.stop()
        if self.runner:
            self.runner.close()  # never leave an export process behind
        self._removeJobFolder()
        if self.segmentEditorWidget:
            self.segmentEditorWidget.setActiveEffect(None)

    def enter(self) -> None:
        self.initializeParameterNode()
        segment_editor.enter(self.segmentEditorWidget, slicer.mrmlScene, self.logic.segmentEditorTag())
        self._updateSegmentEditor()

    def exit(self) -> None:
        segment_editor.exit(self.segmentEditorWidget)
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)
        segment_editor.release(self.segmentEditorWidget)

    def onSceneEndClose(self, caller, event) -> None:
        self.logic.study = None
        if self.parent.isEntered:
            self.initializeParameterNode()
            segment_editor.enter(self.segmentEditorWidget, slicer.mrmlScene, self.logic.segmentEditorTag())

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
        if self._parameterNode is None:
            return
        if self.ui.candidateTableView.mrmlTableNode() != self._parameterNode.candidateTable:
            self.ui.candidateTableView.setMRMLTableNode(self._parameterNode.candidateTable)
        self._updateButtons()

    def _updateButtons(self) -> None:
        busy = bool(self.runner and self.runner.state.busy)
        for button, action, idle in (
                (self.ui.candidateButton, "candidate", _("Compute the candidate lesion mask.")),
                (self.ui.openCaseButton, "case", _("Open the case as this reader.")),
                (self.ui.submitButton, "submit", _("Save your lesion segment as a new version of your mask."))):
            reason = self.logic.missingInputs(self._parameterNode, action) if self._parameterNode else ""
            button.enabled = not reason
            button.toolTip = reason or idle
        for button in (self.ui.exportButton, self.ui.acceptButton):
            button.enabled = not busy
        self.ui.cancelJobButton.enabled = bool(self.runner and self.runner.state == RunState.RUNNING)
        self.ui.jobProgressBar.visible = busy

    def _updateSegmentEditor(self) -> None:
        if self._parameterNode and self.segmentEditorWidget:
            segment_editor.bind(self.segmentEditorWidget, slicer.mrmlScene, self.logic.segmentEditorTag(),
                                self._parameterNode.lesionSegmentation, self._parameterNode.dwiVolume)

    def _progress(self, message) -> None:
        self.ui.statusLabel.text = message
        slicer.util.showStatusMessage(message)
        slicer.app.processEvents()

    def _run(self, title, function, *args, **kwargs):
        """Run a logic call for a button: its result, or None after the error was shown."""
        try:
            ok, result = panel_support.run_action(title, function, *args, **kwargs)
        finally:
            self.ui.statusLabel.text = ""
        return result if ok else None

    def _showLayout(self, assignment) -> None:
        if self.panelLayout is None:
            self.panelLayout = self.logic.panelLayout()
        layoutNode = slicer.app.layoutManager().layoutLogic().GetLayoutNode()
        self.panelLayout.show(layoutNode, slicer.mrmlScene, assignment)
        slicer.util.resetSliceViews()

    def _onLayoutChanged(self, layoutId) -> None:
        if self.panelLayout is not None:
            self.panelLayout.layout_changed(slicer.mrmlScene, layoutId)

    # -- load and candidate ----------------------------------------------------------

    def _afterLoad(self, loaded) -> bool:
        if loaded is None:
            return False
        self._showLayout(self.logic.readingViews(loaded))
        summary = loaded.summary()
        self.ui.loadInfoLabel.text = _("ADC units: {units} ({how}; brain median {median:.4g}).").format(
            units=summary["adc_units"], how=_("detected") if summary["adc_units_detected"] else _("as stated"),
            median=summary["brain_median_adc_raw"]) + "".join("\n" + w for w in summary["warnings"])
        return True

    def onLoadSession(self) -> None:
        if self._afterLoad(self._run(_("Loading failed."), self.logic.loadSession, self._parameterNode,
                                     self._progress)):
            panel_support.remember_path(self.ui.sessionFolderPathLineEdit)

    def onLoadFiles(self) -> None:
        self._afterLoad(self._run(_("Loading failed."), self.logic.loadFiles, self._parameterNode, self._progress))

    def onCandidate(self) -> None:
        summary = self._run(_("Candidate failed."), self.logic.runCandidate, self._parameterNode, self._progress)
        if summary is None:
            return
        self.ui.candidateResultLabel.text = _(
            "Candidate: {volume:.2f} mL in {n} lesion(s) ({removed} island(s) below the minimum removed). "
            "T2 shine-through (DWI high, ADC not low; not lesion): {st:.2f} mL. ADC units: {units}.").format(
            volume=summary["volume_ml"], n=summary["n_lesions"], removed=summary["islands_removed"],
            st=summary["shine_through_volume_ml"], units=summary["adc_units"])

    # -- annotate --------------------------------------------------------------------

    def onOpenCase(self) -> None:
        result = self._run(_("Opening the case failed."), self.logic.openCase, self._parameterNode, self._progress)
        if result is None:
            return
        loaded, segmentation, view = result
        panel_support.remember_path(self.ui.studyPathLineEdit)
        self._caseOpenedAt = time.monotonic()
        self._showLayout(self.logic.readingViews(loaded))
        self._updateSegmentEditor()
        self.ui.caseStatusLabel.text = _("Case {case}: {status} ({next}). You are {slot}.").format(
            case=view["case_id"], status=view["status"], next=view["next"], slot=view["slot"]) + (
            "\n" + _("Blinded: you see only your own mask until the case is final.") if view["blinded"] else "")

    def onStartFromCandidate(self) -> None:
        self._run(_("Could not copy the candidate."), self.logic.startFromCandidate, self._parameterNode)

    def onSubmitAnnotation(self) -> None:
        spent = time.monotonic() - self._caseOpenedAt if self._caseOpenedAt else None
        what = self._run(_("Submitting failed."), self.logic.submitAnnotation, self._parameterNode,
                         noLesion=self.ui.noLesionCheckBox.checked, why=self.ui.annotationWhyLineEdit.text,
                         timeSpentS=spent, progress=self._progress)
        if what is not None:
            self.ui.caseStatusLabel.text = _("Saved version {version} of your mask ({volume:.2f} mL).").format(
                version=what["version"], volume=what["volume_ml"]) + "".join("\n" + w for w in what["warnings"])

    # -- review ----------------------------------------------------------------------

    def onCompare(self) -> None:
        what = self._run(_("Comparison failed."), self.logic.compare, self._parameterNode)
        if what is not None:
            self.onLoadReview()

    def onLoadReview(self) -> None:
        review = self._run(_("Could not show the review."), self.logic.loadReview, self._parameterNode, self._progress)
        if review is None:
            return
        self._showLayout(self.logic.reviewViews(self._parameterNode, review))
        ag, det = review.compare["agreement"], review.compare["detection_B_vs_A"]
        self.ui.compareLabel.text = _(
            "Dice {dice:.3f}; volume A {va:.2f} mL, B {vb:.2f} mL; lesions A {na} / B {nb} (matched {m}). "
            "{route}").format(dice=ag["dice"], va=ag["volume_ref_ml"], vb=ag["volume_test_ml"],
                              na=det["n_reference"], nb=det["n_test"], m=det["matched"],
                              route=(_("Needs review: ") + "; ".join(review.compare["reasons"]))
                              if review.compare["needs_review"] else _("Within the thresholds."))
        self._fillLesionTable(review.lesions)

    def _fillLesionTable(self, rows) -> None:
        table = self.ui.lesionTable
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate((str(row["lesion"]), f"{row['volume_ml']:.3f}", row["drawn_by"], row["notes"])):
                table.setItem(r, c, qt.QTableWidgetItem(text))
            combo = qt.QComboBox()
            combo.addItems([_("(other lesions)")] + list(self.logic.arbitrationChoices()))
            table.setCellWidget(r, self.CHOICE_COLUMN, combo)
        table.resizeColumnsToContents()

    def _lesionChoices(self) -> dict:
        choices = {}
        table = self.ui.lesionTable
        for r in range(table.rowCount):
            combo = table.cellWidget(r, self.CHOICE_COLUMN)
            if combo is not None and combo.currentIndex > 0:
                choices[int(table.item(r, 0).text())] = combo.currentText
        return choices

    def _editedSegment(self):
        node = self.ui.editedSegmentSelector.currentNode()
        segmentId = self.ui.editedSegmentSelector.currentSegmentID()
        return (node, segmentId) if node and segmentId else None

    def onAddNote(self) -> None:
        what = self._run(_("Could not add the note."), self.logic.addNote, self._parameterNode,
                         self.ui.noteLesionSpinBox.value, self.ui.noteLineEdit.text)
        if what is not None:
            self.ui.noteLineEdit.text = ""
            self.onLoadReview()

    def onSubmitReview(self) -> None:
        what = self._run(_("Review failed."), self.logic.submitReview, self._parameterNode,
                         choices=self._lesionChoices(), default=self.ui.defaultChoiceComboBox.currentText,
                         editedSegment=self._editedSegment(), dispute=self.ui.disputeCheckBox.checked,
                         acceptProposed=self.ui.acceptProposedCheckBox.checked, why=self.ui.decisionWhyLineEdit.text)
        if what is not None:
            self.ui.compareLabel.text = _("Review recorded: {outcome}.").format(outcome=what["outcome"])

    def onSubmitArbitration(self) -> None:
        what = self._run(_("Arbitration failed."), self.logic.submitArbitration, self._parameterNode,
                         choices=self._lesionChoices(), default=self.ui.defaultChoiceComboBox.currentText,
                         editedSegment=self._editedSegment(), why=self.ui.decisionWhyLineEdit.text)
        if what is not None:
            self.ui.compareLabel.text = _("Final decision recorded ({voxels} voxels).").format(voxels=what["n_voxels"])

    # -- export and acceptance: a separate process with progress and Cancel ------------

    def _startJob(self, kind, title, start) -> None:
        if self.runner.state.busy:
            return
        self._removeJobFolder()
        folder = tempfile.mkdtemp(prefix="StrokeLesion-", dir=slicer.app.temporaryPath)
        ok, _started = panel_support.run_action(title, start, self._parameterNode, self.runner, folder)
        if not ok:
            shutil.rmtree(folder, ignore_errors=True)
            self._updateButtons()
            return
        self._job = (kind, folder)
        self.ui.exportResultLabel.text = ""
        self._progress(_("Started; Slicer stays usable (Cancel stops it)."))
        self.pollTimer.start()
        self._updateButtons()

    def onExport(self) -> None:
        self._startJob("export", _("Export could not start."), self.logic.startExport)

    def onAccept(self) -> None:
        self._startJob("accept", _("The acceptance check could not start."), self.logic.startAcceptance)

    def onCancelJob(self) -> None:
        if self.runner.state == RunState.RUNNING:
            self.runner.cancel()
            self.ui.statusLabel.text = _("Cancelling...")
        self._updateButtons()

    def _onPollTimer(self) -> None:
        self.runner.poll()
        message, fraction = self.runner.progress
        if message and self.runner.state == RunState.RUNNING:
            self.ui.statusLabel.text = message
        self.ui.jobProgressBar.toolTip = _("{seconds:.0f} s").format(seconds=self.runner.elapsed)
        state = self.runner.state
        if state == RunState.IMPORTING:
            self._jobDone()
        elif state == RunState.IDLE and self.runner.cancelled:
            self.ui.statusLabel.text = _("Cancelled.")
            self._removeJobFolder()
        elif state == RunState.FAILED:
            self.ui.statusLabel.text = ""
            self._removeJobFolder()
            slicer.util.errorDisplay(_("Failed: {error}").format(error=self.runner.error),
                                     detailedText="\n".join(self.runner.log))
        if not self.runner.state.busy:
            self.pollTimer.stop()
        self._updateButtons()

    def _jobDone(self) -> None:
        kind = self._job[0] if self._job else ""
        try:
            rep = self.logic.jobResult(self.runner)
        except Exception as exc:  # a damaged result file: one line, the job is over
            logging.exception("StrokeLesion: reading the job's result failed")
            self.runner.finish_import(str(exc))
            self._removeJobFolder()
            slicer.util.errorDisplay(_("Failed: {error}").format(error=self.runner.error))
            return
        self.runner.finish_import()
        self._removeJobFolder()
        self.ui.statusLabel.text = _("Done in {seconds:.0f} s.").format(seconds=self.runner.elapsed)
        if kind == "export":
            panel_support.remember_path(self.ui.exportPathLineEdit)
            v = rep["validator"]
            self.ui.exportResultLabel.text = _("Wrote {n} files for {cases} case(s). {valid}").format(
                n=rep["files"], cases=len(rep["cases"]),
                valid=(_("BIDS validator: {e} error(s).").format(e=v["n_errors"]) if v else "")
                + ("" if not rep["generated_by_problems"] else " " + "; ".join(rep["generated_by_problems"]))) \
                + "".join("\n" + w for w in rep["warnings"])
        else:
            s = rep["summary"]
            self.ui.exportResultLabel.text = _("{verdict}: {passed}/{total} session(s) pass. Report: {html}").format(
                verdict=_("ACCEPTED") if rep["accepted"] else _("NOT ACCEPTED"), passed=s["sessions_passed"],
                total=s["sessions"], html=rep["report_html"])
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(rep["report_html"]))

    def _removeJobFolder(self) -> None:
        if self._job:
            shutil.rmtree(self._job[1], ignore_errors=True)
            self._job = None


#
# StrokeLesionLogic
#


class StrokeLesionLogic(ScriptedLoadableModuleLogic):
    """Moves values between the parameter node and StrokeLesionLib.panel_logic (tested on
    slicer-core with the ISLES'22 case); no widgets and no computation of its own, so the
    numbers are those of the ``stroke-lesion`` command line."""

    EXPORT_JOB = "StrokeLesionLib.panel_logic:export_job"
    ACCEPTANCE_JOB = "StrokeLesionLib.panel_logic:acceptance_job"

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.study = None

    def getParameterNode(self):
        return StrokeLesionParameterNode(super().getParameterNode())

    @staticmethod
    def _tableNode(node, name):
        """``node`` while it is in the scene, else a new table node (ClinicalMRICommonLib.mrml_bridge)."""
        from ClinicalMRICommonLib.mrml_bridge import table_node_or_new

        return table_node_or_new(slicer.mrmlScene, node, name)

    def segmentEditorTag(self) -> str:
        return _panelLogic().SEGMENT_EDITOR_TAG

    def panelLayout(self):
        return _panelLogic().panel_layout()

    def readingViews(self, loaded) -> dict:
        return _panelLogic().reading_views(loaded)

    def reviewViews(self, parameterNode, review) -> dict:
        return _panelLogic().review_views(parameterNode.dwiVolume, review)

    def arbitrationChoices(self):
        from StrokeLesionLib.workflow import ARBITRATION_CHOICES

        return ARBITRATION_CHOICES

    def missingInputs(self, parameterNode, action) -> str:
        """Why ``action`` (candidate, case, submit) cannot run yet ("" when it can)."""
        p = parameterNode
        missing = _panelLogic().missing_inputs(action, dwi=p.dwiVolume, adc=p.adcVolume,
                                               study_folder=p.studyDirectory, case_id=p.caseId, reader_id=p.readerId,
                                               lesion_segmentation=p.lesionSegmentation)
        return _("Missing: {items}.").format(items=", ".join(missing)) if missing else ""

    def _require(self, parameterNode, action) -> None:
        reason = self.missingInputs(parameterNode, action)
        if reason:
            from ClinicalMRICommonLib.errors import UserError

            raise UserError(reason)

    def _study(self, parameterNode):
        folder = pathlib.Path(parameterNode.studyDirectory)
        if self.study is None or pathlib.Path(self.study.root).resolve() != folder.resolve():
            self.study = _panelLogic().open_study(folder)
        return self.study

    def _setLoaded(self, parameterNode, loaded) -> None:
        for field, node in _panelLogic().loaded_fields(loaded).items():
            setattr(parameterNode, field, node)

    def loadSession(self, parameterNode, progress=None):
        loaded = _panelLogic().load_session_folder_field(parameterNode.sessionFolder,
                                                         adc_units=parameterNode.adcUnits.value, progress=progress)
        self._setLoaded(parameterNode, loaded)
        return loaded

    def loadFiles(self, parameterNode, progress=None):
        p = parameterNode
        loaded = _panelLogic().load_case_file_fields(p.dwiFile, p.adcFile, p.flairFile, adc_units=p.adcUnits.value,
                                                     progress=progress)
        self._setLoaded(parameterNode, loaded)
        return loaded

    def runCandidate(self, parameterNode, progress=None) -> dict:
        p = parameterNode
        self._require(p, "candidate")
        pl = _panelLogic()
        p.candidateTable = self._tableNode(p.candidateTable, _("Stroke candidate lesions"))
        summary = pl.run_candidate(p.dwiVolume, p.adcVolume, adc_units=p.adcUnits.value,
                                   params=pl.candidate_params(p.adcThreshold, p.dwiK, p.minLesionMl),
                                   segmentation_node=p.candidateSegmentation, flair_node=p.flairVolume,
                                   table_node=p.candidateTable, progress=progress)
        p.candidateSegmentation = slicer.mrmlScene.GetNodeByID(summary["segmentation_node_id"])
        logging.info("StrokeLesion candidate: %.3f mL, %d lesion(s)", summary["volume_ml"], summary["n_lesions"])
        return summary

    def openCase(self, parameterNode, progress=None):
        p = parameterNode
        self._require(p, "case")
        loaded, segmentation, view = _panelLogic().load_study_case(
            self._study(p), p.caseId.strip(), p.readerId.strip(), adc_units=p.adcUnits.value, progress=progress)
        self._setLoaded(p, loaded)
        p.lesionSegmentation = segmentation
        return loaded, segmentation, view

    def startFromCandidate(self, parameterNode) -> str:
        p = parameterNode
        return _panelLogic().start_from_candidate(p.candidateSegmentation, p.lesionSegmentation, p.dwiVolume)

    def submitAnnotation(self, parameterNode, *, noLesion=False, why="", timeSpentS=None, progress=None) -> dict:
        p = parameterNode
        self._require(p, "submit")
        pl = _panelLogic()
        return pl.submit_annotation(self._study(p), p.caseId.strip(), p.readerId.strip(), p.lesionSegmentation,
                                    pl.lesion_segment_id(p.lesionSegmentation), p.dwiVolume, no_lesion=noLesion,
                                    time_spent_s=timeSpentS, why=why, progress=progress)

    def compare(self, parameterNode) -> dict:
        self._require(parameterNode, "case")
        return _panelLogic().compare_case(self._study(parameterNode), parameterNode.caseId.strip(),
                                          by=parameterNode.readerId.strip())

    def loadReview(self, parameterNode, progress=None):
        p = parameterNode
        self._require(p, "case")
        pl = _panelLogic()
        p.reviewTable = self._tableNode(p.reviewTable, _("Stroke review"))
        return pl.load_review(self._study(p), p.caseId.strip(), p.readerId.strip(), p.dwiVolume,
                              table_node=p.reviewTable, progress=progress)

    def addNote(self, parameterNode, lesion, text) -> dict:
        self._require(parameterNode, "case")
        return _panelLogic().add_note(self._study(parameterNode), parameterNode.caseId.strip(),
                                      parameterNode.readerId.strip(), text, lesion=int(lesion))

    def submitReview(self, parameterNode, *, choices, default, editedSegment, dispute, acceptProposed, why) -> dict:
        p = parameterNode
        self._require(p, "case")
        return _panelLogic().submit_review(
            self._study(p), p.caseId.strip(), p.readerId.strip(), choices=None if acceptProposed else choices,
            default=None if acceptProposed else default, edited_segment=editedSegment, dwi_node=p.dwiVolume,
            accept_proposed=acceptProposed, dispute=dispute, why=why)

    def submitArbitration(self, parameterNode, *, choices, default, editedSegment, why) -> dict:
        p = parameterNode
        self._require(p, "case")
        return _panelLogic().submit_arbitration(
            self._study(p), p.caseId.strip(), p.readerId.strip(), choices=choices, default=default,
            edited_segment=editedSegment, dwi_node=p.dwiVolume, why=why)

    # -- export and acceptance (separate process)

    def exportKwargs(self, parameterNode) -> dict:
        p = parameterNode
        return _panelLogic().export_job_kwargs(p.studyDirectory, p.exportDirectory, name=p.datasetName,
                                               authors=p.authors, license=p.license, validate=p.validateExport)

    def startExport(self, parameterNode, runner, folder) -> None:
        """Install what the export needs (first use), then start it in a worker process."""
        _panelLogic().prepare_export(parameterNode.validateExport)
        self._startJob(runner, folder, self.EXPORT_JOB, self.exportKwargs(parameterNode))

    def startAcceptance(self, parameterNode, runner, folder) -> None:
        _panelLogic().prepare_acceptance()
        self._startJob(runner, folder, self.ACCEPTANCE_JOB,
                       _panelLogic().acceptance_job_kwargs(parameterNode.exportDirectory))

    def _startJob(self, runner, folder, function, kwargs) -> None:
        from ClinicalMRICommonLib import job_worker
        from ClinicalMRICommonLib.errors import UserError

        request = job_worker.write_request(folder, function, kwargs)
        command = job_worker.job_command(request, job_worker.package_folders("ClinicalMRICommonLib", "StrokeLesionLib"))
        if not runner.start(command, base_env=self.childEnvironment()):
            raise UserError(runner.error)

    def jobResult(self, runner) -> dict:
        from ClinicalMRICommonLib import job_worker

        return job_worker.read_result(runner.result["path"])

    @staticmethod
    def childEnvironment():
        """The environment Slicer started with (what launchConsoleProcess gives external processes)."""
        startup = getattr(slicer.util, "startupEnvironment", None)
        return startup() if startup else None

    def exportDataset(self, parameterNode, folder, progress=None) -> dict:
        """The panel's export without the panel: the same worker process, waited for (scripts, the module test)."""
        from ClinicalMRICommonLib import job_worker

        _panelLogic().prepare_export(parameterNode.validateExport)
        return job_worker.run_job(self.EXPORT_JOB, self.exportKwargs(parameterNode), folder,
                                  packages=("StrokeLesionLib",), progress=progress, base_env=self.childEnvironment())

    def acceptDataset(self, parameterNode, folder, progress=None) -> dict:
        from ClinicalMRICommonLib import job_worker

        _panelLogic().prepare_acceptance()
        return job_worker.run_job(self.ACCEPTANCE_JOB, _panelLogic().acceptance_job_kwargs(parameterNode.exportDirectory),
                                  folder, packages=("StrokeLesionLib",), progress=progress,
                                  base_env=self.childEnvironment())


#
# StrokeLesionTest
#


class StrokeLesionTest(ScriptedLoadableModuleTest):
    """
    The manual test script of the panel (docs/slicer_layer.md): every button's logic on a
    generated DWI/ADC/FLAIR phantom inside Slicer, through StrokeLesionLogic as the buttons
    call it, and the panel's layout on the application's own views. Run with
    ``Slicer --testing`` (ctest: slicer_add_python_unittest) or Reload and Test. Testing mode
    never installs packages: the export step says so and is skipped when they are missing.
    Uses ScriptedLoadableModuleTest base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_ConsensusCandidateSettings, self.test_CandidateFromNodesMatchesLibrary,
                     self.test_LoadFilesThreeAxialViewsAndRestore, self.test_TwoReadersReviewArbitrationExport):
            self.setUp()
            test()

    # -- generated data

    def _phantom(self, extraLesion=False):
        """A brain-like ellipsoid (DWI 400, ADC 0.8e-3 mm2/s stored in 10^-3 mm2/s) with a 6x6x4
        lesion (DWI 900, ADC 0.45); FLAIR = DWI / 2. Returns SimpleITK images."""
        import numpy as np
        import SimpleITK as sitk

        shape = (20, 48, 48)
        zz, yy, xx = np.mgrid[:shape[0], :shape[1], :shape[2]]
        brain = ((zz - 10) / 9.0) ** 2 + ((yy - 24) / 20.0) ** 2 + ((xx - 24) / 20.0) ** 2 <= 1
        rng = np.random.default_rng(0)
        dwi = np.where(brain, 400 + rng.normal(0, 10, shape), 0).astype(np.float32)
        adc = np.where(brain, 0.8 + rng.normal(0, 0.02, shape), 0).astype(np.float32)
        dwi[8:12, 20:26, 20:26] = 900
        adc[8:12, 20:26, 20:26] = 0.45
        images = {}
        for key, array in (("dwi", dwi), ("adc", adc), ("flair", dwi / 2)):
            image = sitk.GetImageFromArray(array)
            image.SetSpacing((2.0, 2.0, 2.0))
            images[key] = image
        return images

    def _files(self, folder):
        import SimpleITK as sitk

        paths = {}
        for key, image in self._phantom().items():
            paths[key] = os.path.join(folder, f"sub-01_ses-01_{key}.nii.gz")
            sitk.WriteImage(image, paths[key])
        return paths

    def _folder(self):
        return tempfile.mkdtemp(prefix="StrokeLesionTest", dir=slicer.app.temporaryPath)

    # -- the buttons

    def test_ConsensusCandidateSettings(self):
        self.delayDisplay("Candidate settings follow the stroke annotation consensus; the fields have ranges")
        from StrokeLesionLib.candidate import CandidateParams

        params = CandidateParams().check()
        self.assertAlmostEqual(params.adc_threshold_mm2s, 620e-6, places=12)
        self.assertEqual(params.connectivity, 26)
        parameterNode = StrokeLesionLogic().getParameterNode()
        self.assertAlmostEqual(parameterNode.adcThreshold * 1e-6, params.adc_threshold_mm2s, places=12)
        with self.assertRaises(ValueError):  # WithinRange(100, 2000): a threshold of 7 is refused
            parameterNode.adcThreshold = 7.0
        self.delayDisplay("Test passed")

    def test_CandidateFromNodesMatchesLibrary(self):
        self.delayDisplay("Compute candidate on a phantom: the segment is the library's candidate")
        import numpy as np
        import SimpleITK as sitk

        from ClinicalMRICommonLib.mrml_bridge import segment_id_by_name, segment_to_sitk_mask, sitk_to_volume_node
        from StrokeLesionLib.candidate import candidate_mask
        from StrokeLesionLib.diffusion import diffusion_from_images

        images = self._phantom()
        dwiNode = sitk_to_volume_node(images["dwi"], "DWI")
        adcNode = sitk_to_volume_node(images["adc"], "ADC")
        logic = StrokeLesionLogic()
        parameterNode = logic.getParameterNode()
        self.assertIn("DWI", logic.missingInputs(parameterNode, "candidate"))
        parameterNode.dwiVolume, parameterNode.adcVolume = dwiNode, adcNode
        summary = logic.runCandidate(parameterNode)
        self.assertEqual(summary["adc_units"], "1e-3mm2/s")
        expected = candidate_mask(diffusion_from_images(images["dwi"], images["adc"])).mask
        segmentation = parameterNode.candidateSegmentation
        mask, resampled = segment_to_sitk_mask(
            segmentation, segment_id_by_name(segmentation, _panelLogic().CANDIDATE_SEGMENT), dwiNode)
        self.assertFalse(resampled)
        self.assertTrue(np.array_equal(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(expected)))
        self.assertEqual(int(sitk.GetArrayFromImage(mask).sum()), 6 * 6 * 4)
        self.assertEqual(parameterNode.candidateTable.GetNumberOfRows(), 1)
        self.delayDisplay("Test passed")

    def test_LoadFilesThreeAxialViewsAndRestore(self):
        self.delayDisplay("Load files: DWI | ADC | FLAIR in three axial views; Four-Up gets its orientations back")
        folder = self._folder()
        paths = self._files(folder)
        logic = StrokeLesionLogic()
        parameterNode = logic.getParameterNode()
        parameterNode.dwiFile, parameterNode.adcFile = pathlib.Path(paths["dwi"]), pathlib.Path(paths["adc"])
        parameterNode.flairFile = pathlib.Path(paths["flair"])
        loaded = logic.loadFiles(parameterNode)
        self.assertEqual((parameterNode.dwiVolume, parameterNode.adcVolume, parameterNode.flairVolume),
                         (loaded.dwi, loaded.adc, loaded.flair))
        layoutManager = slicer.app.layoutManager()
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
        layout = logic.panelLayout()
        shown = layout.show(layoutManager.layoutLogic().GetLayoutNode(), slicer.mrmlScene, logic.readingViews(loaded))
        self.assertEqual(shown, ["Red", "Yellow", "Green"])
        for view, volume in (("Red", loaded.dwi), ("Yellow", loaded.adc), ("Green", loaded.flair)):
            self.assertEqual(slicer.app.layoutManager().sliceWidget(view).mrmlSliceNode().GetOrientation(), "Axial")
            composite = slicer.app.layoutManager().sliceWidget(view).mrmlSliceCompositeNode()
            self.assertEqual(composite.GetBackgroundVolumeID(), volume.GetID())
        layoutManager.setLayout(slicer.vtkMRMLLayoutNode.SlicerLayoutFourUpView)
        layout.layout_changed(slicer.mrmlScene, layoutManager.layout)
        self.assertEqual([layoutManager.sliceWidget(v).mrmlSliceNode().GetOrientation() for v in ("Red", "Yellow", "Green")],
                         ["Axial", "Sagittal", "Coronal"])
        self.delayDisplay("Test passed")

    def test_TwoReadersReviewArbitrationExport(self):
        self.delayDisplay("Open case, Start from the candidate, Submit (A and B), Compare, Review, Note, "
                          "Arbitration, Export to BIDS, Acceptance report")
        from ClinicalMRICommonLib.mrml_bridge import set_segment_mask
        from StrokeLesionLib.workflow import Reader, Study

        folder = self._folder()
        paths = self._files(folder)
        study = Study.create(os.path.join(folder, "study"), by="coord", name="module test")
        for reader in (Reader("ann1", "attending", 8, 3), Reader("ann2", "resident", 5, 2),
                       Reader("rev1", "associate_chief", 14, 9), Reader("arb1", "chief", 25, 18)):
            study.add_reader(reader, by="coord")
        study.init_case("c1", dwi=paths["dwi"], adc=paths["adc"], others={"flair": paths["flair"]}, subject="01",
                        session="01", by="coord")
        for slot, readerId in (("annotatorA", "ann1"), ("annotatorB", "ann2"), ("reviewer", "rev1"),
                               ("arbitrator", "arb1")):
            study.assign("c1", slot, readerId, by="coord")

        logic = StrokeLesionLogic()
        parameterNode = logic.getParameterNode()
        parameterNode.studyDirectory, parameterNode.caseId = pathlib.Path(study.root), "c1"
        for readerId, extra in (("ann1", False), ("ann2", True)):
            slicer.mrmlScene.Clear()  # annotators are blinded to each other: one scene each
            parameterNode = logic.getParameterNode()
            parameterNode.studyDirectory, parameterNode.caseId, parameterNode.readerId = \
                pathlib.Path(study.root), "c1", readerId
            loaded, segmentation, view = logic.openCase(parameterNode)
            self.assertTrue(view["blinded"])
            logic.runCandidate(parameterNode)
            logic.startFromCandidate(parameterNode)
            if extra:  # B also draws a 27-voxel lesion elsewhere
                import numpy as np
                import SimpleITK as sitk

                from ClinicalMRICommonLib.mrml_bridge import segment_to_sitk_mask

                sid = _panelLogic().lesion_segment_id(segmentation)
                mask, _resampled = segment_to_sitk_mask(segmentation, sid, loaded.dwi)
                array = sitk.GetArrayFromImage(mask)
                array[4:7, 30:33, 30:33] = 1
                more = sitk.GetImageFromArray(array.astype(np.uint8))
                more.CopyInformation(mask)
                set_segment_mask(segmentation, sid, more)
            what = logic.submitAnnotation(parameterNode, why="module test")
            self.assertEqual(what["version"], 1)

        slicer.mrmlScene.Clear()
        parameterNode = logic.getParameterNode()
        parameterNode.studyDirectory, parameterNode.caseId, parameterNode.readerId = pathlib.Path(study.root), "c1", "rev1"
        logic.openCase(parameterNode)
        compared = logic.compare(parameterNode)
        self.assertTrue(compared["needs_review"])
        review = logic.loadReview(parameterNode)
        self.assertEqual(parameterNode.reviewTable.GetNumberOfRows(), len(review.lesions))
        extra = next(r for r in review.lesions if r["drawn_by"] == "B only")
        logic.addNote(parameterNode, extra["lesion"], "small, not restricted on ADC?")
        outcome = logic.submitReview(parameterNode, choices={extra["lesion"]: "none"}, default="A", editedSegment=None,
                                     dispute=True, acceptProposed=False, why="B's extra lesion")
        self.assertEqual(outcome["outcome"], "disputed")
        parameterNode.readerId = "arb1"
        final = logic.submitArbitration(parameterNode, choices={}, default="review", editedSegment=None,
                                        why="the reviewer's proposal")
        self.assertTrue(final["final"])
        self.assertEqual(final["n_voxels"], 6 * 6 * 4)

        from ClinicalMRICommonLib.slicer_packages import missing_requirements, requirements_for

        missing = missing_requirements(requirements_for("bids"))
        if missing:
            self.delayDisplay("Export skipped: packages not installed ({names})".format(names=", ".join(map(str, missing))))
            return
        for series in ("dwi", "adc", "flair"):
            study.record_quality("c1", series, reader_id="rev1", likert=4, snr=20.0, cnr=6.0)
        parameterNode.exportDirectory = pathlib.Path(folder, "bids")
        parameterNode.datasetName, parameterNode.authors, parameterNode.validateExport = "module test", "A. Reader", False
        seen = []
        rep = logic.exportDataset(parameterNode, os.path.join(folder, "export-job"), progress=seen.append)
        self.assertIn("writing the BIDS dataset", seen)  # progress came from the worker process
        self.assertEqual(rep["generated_by_problems"], [])
        acceptance = logic.acceptDataset(parameterNode, os.path.join(folder, "accept-job"))
        self.assertTrue(acceptance["accepted"])
        self.delayDisplay("Test passed")
