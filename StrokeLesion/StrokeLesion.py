import enum
import logging
import pathlib
import time

import qt
import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import *
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import parameterNodeWrapper

from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.mrml_bridge import register_layout, segment_editor_node, segment_id_by_name, show_in_views

# The logic's work is in StrokeLesionLib.panel_logic (MRML only, tested on slicer-core); it
# is imported on first use, so Slicer's start-up does not load the stroke library. The
# generic view, layout and segment helpers are ClinicalMRICommonLib.mrml_bridge's.


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
    adcThreshold: float = 620.0
    dwiK: float = 3.0
    minLesionMl: float = 0.01
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


def _isSet(path) -> bool:
    return str(path) not in ("", ".")


#
# StrokeLesionWidget
#


class StrokeLesionWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    CHOICE_COLUMN = 4

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._caseOpenedAt = None
        self.segmentEditorWidget = None

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
        self.segmentEditorWidget = slicer.qMRMLSegmentEditorWidget()
        self.segmentEditorWidget.setMaximumNumberOfUndoStates(10)
        self.segmentEditorWidget.setMRMLScene(slicer.mrmlScene)
        self.ui.segmentEditorLayout.addWidget(self.segmentEditorWidget)

        self.ui.lesionTable.setColumnCount(5)
        self.ui.lesionTable.setHorizontalHeaderLabels([_("Lesion"), _("Volume (mL)"), _("Drawn by"), _("Notes"),
                                                       _("Choice")])
        self.ui.lesionTable.horizontalHeader().setStretchLastSection(True)
        from StrokeLesionLib.workflow import ARBITRATION_CHOICES

        self.ui.defaultChoiceComboBox.addItems(list(ARBITRATION_CHOICES))

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        for button, handler in (
                (self.ui.loadSessionButton, self.onLoadSession), (self.ui.loadFilesButton, self.onLoadFiles),
                (self.ui.candidateButton, self.onCandidate), (self.ui.openCaseButton, self.onOpenCase),
                (self.ui.startFromCandidateButton, self.onStartFromCandidate),
                (self.ui.submitButton, self.onSubmitAnnotation), (self.ui.compareButton, self.onCompare),
                (self.ui.loadReviewButton, self.onLoadReview), (self.ui.addNoteButton, self.onAddNote),
                (self.ui.submitReviewButton, self.onSubmitReview),
                (self.ui.submitArbitrationButton, self.onSubmitArbitration),
                (self.ui.exportButton, self.onExport), (self.ui.acceptButton, self.onAccept)):
            button.connect("clicked(bool)", handler)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        if self.segmentEditorWidget:
            self.segmentEditorWidget.setActiveEffect(None)

    def enter(self) -> None:
        self.initializeParameterNode()
        self.segmentEditorWidget.setMRMLSegmentEditorNode(segment_editor_node(slicer.mrmlScene,
                                                                              _panelLogic().SEGMENT_EDITOR_TAG))
        self._updateSegmentEditor()

    def exit(self) -> None:
        if self.segmentEditorWidget:
            self.segmentEditorWidget.setActiveEffect(None)
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        self.logic.study = None
        if self.parent.isEntered:
            self.initializeParameterNode()

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
        for button, action, idle in (
                (self.ui.candidateButton, "candidate", _("Compute the candidate lesion mask.")),
                (self.ui.openCaseButton, "case", _("Open the case as this reader.")),
                (self.ui.submitButton, "submit", _("Save your lesion segment as a new version of your mask."))):
            reason = self.logic.missingInputs(self._parameterNode, action)
            button.enabled = not reason
            button.toolTip = reason or idle

    def _updateSegmentEditor(self) -> None:
        if self._parameterNode and self.segmentEditorWidget:
            self.segmentEditorWidget.setSegmentationNode(self._parameterNode.lesionSegmentation)
            self.segmentEditorWidget.setSourceVolumeNode(self._parameterNode.dwiVolume)

    def _progress(self, message) -> None:
        self.ui.statusLabel.text = message
        slicer.util.showStatusMessage(message)
        slicer.app.processEvents()

    def _run(self, title, function, *args, **kwargs):
        """Run a logic call with errors shown in a dialog; returns its result (None on error)."""
        result = None
        with slicer.util.tryWithErrorDisplay(title, waitCursor=True):
            try:
                result = function(*args, **kwargs)
            finally:
                self.ui.statusLabel.text = ""
        return result

    def _showLayout(self, assignment) -> None:
        pl = _panelLogic()
        layoutManager = slicer.app.layoutManager()
        layoutId = register_layout(layoutManager.layoutLogic().GetLayoutNode(), pl.LAYOUT_ID, pl.LAYOUT_XML)
        layoutManager.setLayout(layoutId)
        show_in_views(slicer.mrmlScene, assignment)
        slicer.util.resetSliceViews()

    # -- load and candidate ----------------------------------------------------------

    def _afterLoad(self, loaded) -> None:
        if loaded is None:
            return
        self._showLayout(_panelLogic().reading_views(loaded))
        summary = loaded.summary()
        self.ui.loadInfoLabel.text = _("ADC units: {units} ({how}; brain median {median:.4g}).").format(
            units=summary["adc_units"], how=_("detected") if summary["adc_units_detected"] else _("as stated"),
            median=summary["brain_median_adc_raw"]) + "".join("\n" + w for w in summary["warnings"])

    def onLoadSession(self) -> None:
        self._afterLoad(self._run(_("Loading failed."), self.logic.loadSession, self._parameterNode, self._progress))

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
        self._caseOpenedAt = time.monotonic()
        self._showLayout(_panelLogic().reading_views(loaded))
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
        self._showLayout(_panelLogic().review_views(self._parameterNode.dwiVolume, review))
        ag, det = review.compare["agreement"], review.compare["detection_B_vs_A"]
        self.ui.compareLabel.text = _(
            "Dice {dice:.3f}; volume A {va:.2f} mL, B {vb:.2f} mL; lesions A {na} / B {nb} (matched {m}). "
            "{route}").format(dice=ag["dice"], va=ag["volume_ref_ml"], vb=ag["volume_test_ml"],
                              na=det["n_reference"], nb=det["n_test"], m=det["matched"],
                              route=(_("Needs review: ") + "; ".join(review.compare["reasons"]))
                              if review.compare["needs_review"] else _("Within the thresholds."))
        self._fillLesionTable(review.lesions)

    def _fillLesionTable(self, rows) -> None:
        from StrokeLesionLib.workflow import ARBITRATION_CHOICES

        table = self.ui.lesionTable
        table.setRowCount(len(rows))
        for r, row in enumerate(rows):
            for c, text in enumerate((str(row["lesion"]), f"{row['volume_ml']:.3f}", row["drawn_by"], row["notes"])):
                table.setItem(r, c, qt.QTableWidgetItem(text))
            combo = qt.QComboBox()
            combo.addItems([_("(other lesions)")] + list(ARBITRATION_CHOICES))
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

    # -- export ----------------------------------------------------------------------

    def _ensurePackages(self, validate) -> bool:
        missing = _panelLogic().missing_packages(validate=validate)
        if not missing:
            return True
        if not slicer.util.confirmOkCancelDisplay(
                _("Export needs these Python packages: {names}. Install them now?").format(names=", ".join(missing))):
            return False
        with slicer.util.tryWithErrorDisplay(_("Installing packages failed."), waitCursor=True):
            slicer.util.pip_install(" ".join(missing))
            return True
        return False

    def onExport(self) -> None:
        if not self._ensurePackages(self._parameterNode.validateExport):
            return
        rep = self._run(_("Export failed."), self.logic.exportDataset, self._parameterNode, self._progress)
        if rep is not None:
            v = rep["validator"]
            self.ui.exportResultLabel.text = _("Wrote {n} files for {cases} case(s). {valid}").format(
                n=rep["files"], cases=len(rep["cases"]),
                valid=(_("BIDS validator: {e} error(s).").format(e=v["n_errors"]) if v else "")
                + ("" if not rep["generated_by_problems"] else " " + "; ".join(rep["generated_by_problems"]))) \
                + "".join("\n" + w for w in rep["warnings"])

    def onAccept(self) -> None:
        if not self._ensurePackages(False):
            return
        rep = self._run(_("Acceptance check failed."), self.logic.acceptDataset, self._parameterNode)
        if rep is not None:
            s = rep["summary"]
            self.ui.exportResultLabel.text = _("{verdict}: {passed}/{total} session(s) pass. Report: {html}").format(
                verdict=_("ACCEPTED") if rep["accepted"] else _("NOT ACCEPTED"), passed=s["sessions_passed"],
                total=s["sessions"], html=rep["report_html"])
            qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(rep["report_html"]))


#
# StrokeLesionLogic
#


class StrokeLesionLogic(ScriptedLoadableModuleLogic):
    """Moves data between MRML nodes and StrokeLesionLib; no widgets.

    Every method delegates to StrokeLesionLib.panel_logic (tested on slicer-core with the
    ISLES'22 case), so the numbers are those of the ``stroke-lesion`` command line.
    """

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.study = None

    def getParameterNode(self):
        return StrokeLesionParameterNode(super().getParameterNode())

    def missingInputs(self, parameterNode, action) -> str:
        """Why ``action`` (candidate, case, submit) cannot run yet ("" when it can)."""
        missing = []
        if action in ("candidate",):
            if not parameterNode.dwiVolume:
                missing.append(_("DWI volume"))
            if not parameterNode.adcVolume:
                missing.append(_("ADC volume"))
        if action in ("case", "submit"):
            if not _isSet(parameterNode.studyDirectory):
                missing.append(_("study folder"))
            if not parameterNode.caseId.strip():
                missing.append(_("case"))
            if not parameterNode.readerId.strip():
                missing.append(_("reader id"))
        if action == "submit" and not parameterNode.lesionSegmentation:
            missing.append(_("an opened case (your lesion segment)"))
        return _("Missing: {items}.").format(items=", ".join(missing)) if missing else ""

    def _require(self, parameterNode, action) -> None:
        reason = self.missingInputs(parameterNode, action)
        if reason:
            raise UserError(reason)

    def _study(self, parameterNode):
        folder = pathlib.Path(parameterNode.studyDirectory)
        if self.study is None or pathlib.Path(self.study.root).resolve() != folder.resolve():
            self.study = _panelLogic().open_study(folder)
        return self.study

    def _setLoaded(self, parameterNode, loaded) -> None:
        parameterNode.dwiVolume = loaded.dwi
        parameterNode.adcVolume = loaded.adc
        parameterNode.flairVolume = loaded.flair

    def loadSession(self, parameterNode, progress=None):
        if not _isSet(parameterNode.sessionFolder):
            raise UserError(_("Choose a session folder first."))
        loaded = _panelLogic().load_session_folder(parameterNode.sessionFolder, adc_units=parameterNode.adcUnits.value,
                                                   progress=progress)
        self._setLoaded(parameterNode, loaded)
        return loaded

    def loadFiles(self, parameterNode, progress=None):
        if not _isSet(parameterNode.dwiFile) or not _isSet(parameterNode.adcFile):
            raise UserError(_("Choose the DWI and ADC files first."))
        flair = parameterNode.flairFile if _isSet(parameterNode.flairFile) else None
        loaded = _panelLogic().load_case_files(parameterNode.dwiFile, parameterNode.adcFile, flair,
                                               adc_units=parameterNode.adcUnits.value, progress=progress)
        self._setLoaded(parameterNode, loaded)
        return loaded

    def runCandidate(self, parameterNode, progress=None) -> dict:
        from StrokeLesionLib.candidate import CandidateParams

        self._require(parameterNode, "candidate")
        if not parameterNode.candidateTable:
            parameterNode.candidateTable = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode",
                                                                              _("Stroke candidate lesions"))
        params = CandidateParams(adc_threshold_mm2s=parameterNode.adcThreshold * 1e-6, dwi_k=parameterNode.dwiK,
                                 min_size_ml=parameterNode.minLesionMl)
        summary = _panelLogic().run_candidate(
            parameterNode.dwiVolume, parameterNode.adcVolume, adc_units=parameterNode.adcUnits.value, params=params,
            segmentation_node=parameterNode.candidateSegmentation, flair_node=parameterNode.flairVolume,
            table_node=parameterNode.candidateTable, progress=progress)
        parameterNode.candidateSegmentation = slicer.mrmlScene.GetNodeByID(summary["segmentation_node_id"])
        logging.info("StrokeLesion candidate: %.3f mL, %d lesion(s)", summary["volume_ml"], summary["n_lesions"])
        return summary

    def openCase(self, parameterNode, progress=None):
        self._require(parameterNode, "case")
        loaded, segmentation, view = _panelLogic().load_study_case(
            self._study(parameterNode), parameterNode.caseId.strip(), parameterNode.readerId.strip(),
            adc_units=parameterNode.adcUnits.value, progress=progress)
        self._setLoaded(parameterNode, loaded)
        parameterNode.lesionSegmentation = segmentation
        return loaded, segmentation, view

    def startFromCandidate(self, parameterNode) -> str:
        pl = _panelLogic()
        if not parameterNode.candidateSegmentation or not parameterNode.lesionSegmentation:
            raise UserError(_("Open the case and compute the candidate first."))
        source = segment_id_by_name(parameterNode.candidateSegmentation, pl.CANDIDATE_SEGMENT)
        return pl.copy_segment(parameterNode.candidateSegmentation, source, parameterNode.lesionSegmentation,
                               pl.LESION_SEGMENT, parameterNode.dwiVolume)

    def submitAnnotation(self, parameterNode, *, noLesion=False, why="", timeSpentS=None, progress=None) -> dict:
        pl = _panelLogic()
        self._require(parameterNode, "submit")
        segmentation = parameterNode.lesionSegmentation
        return pl.submit_annotation(self._study(parameterNode), parameterNode.caseId.strip(),
                                    parameterNode.readerId.strip(), segmentation,
                                    segment_id_by_name(segmentation, pl.LESION_SEGMENT), parameterNode.dwiVolume,
                                    no_lesion=noLesion, time_spent_s=timeSpentS, why=why, progress=progress)

    def compare(self, parameterNode) -> dict:
        self._require(parameterNode, "case")
        return _panelLogic().compare_case(self._study(parameterNode), parameterNode.caseId.strip(),
                                          by=parameterNode.readerId.strip())

    def loadReview(self, parameterNode, progress=None):
        self._require(parameterNode, "case")
        if not parameterNode.reviewTable:
            parameterNode.reviewTable = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", _("Stroke review"))
        return _panelLogic().load_review(self._study(parameterNode), parameterNode.caseId.strip(),
                                         parameterNode.readerId.strip(), parameterNode.dwiVolume,
                                         table_node=parameterNode.reviewTable, progress=progress)

    def addNote(self, parameterNode, lesion, text) -> dict:
        self._require(parameterNode, "case")
        return _panelLogic().add_note(self._study(parameterNode), parameterNode.caseId.strip(),
                                      parameterNode.readerId.strip(), text, lesion=int(lesion))

    def submitReview(self, parameterNode, *, choices, default, editedSegment, dispute, acceptProposed, why) -> dict:
        self._require(parameterNode, "case")
        return _panelLogic().submit_review(
            self._study(parameterNode), parameterNode.caseId.strip(), parameterNode.readerId.strip(),
            choices=None if acceptProposed else choices, default=None if acceptProposed else default,
            edited_segment=editedSegment, dwi_node=parameterNode.dwiVolume, accept_proposed=acceptProposed,
            dispute=dispute, why=why)

    def submitArbitration(self, parameterNode, *, choices, default, editedSegment, why) -> dict:
        self._require(parameterNode, "case")
        return _panelLogic().submit_arbitration(
            self._study(parameterNode), parameterNode.caseId.strip(), parameterNode.readerId.strip(),
            choices=choices, default=default, edited_segment=editedSegment, dwi_node=parameterNode.dwiVolume,
            why=why)

    def exportDataset(self, parameterNode, progress=None) -> dict:
        if not _isSet(parameterNode.studyDirectory) or not _isSet(parameterNode.exportDirectory):
            raise UserError(_("Choose the study folder and an output folder first."))
        authors = [a.strip() for a in parameterNode.authors.split(",") if a.strip()]
        return _panelLogic().export_dataset(
            self._study(parameterNode), parameterNode.exportDirectory, name=parameterNode.datasetName, authors=authors,
            license=parameterNode.license.strip() or None, validate=parameterNode.validateExport, progress=progress)

    def acceptDataset(self, parameterNode) -> dict:
        if not _isSet(parameterNode.exportDirectory):
            raise UserError(_("Choose the exported dataset's folder first."))
        return _panelLogic().acceptance_report(parameterNode.exportDirectory)


#
# StrokeLesionTest
#


class StrokeLesionTest(ScriptedLoadableModuleTest):
    """
    Checks, inside Slicer, the module's logic on a generated DWI/ADC phantom.
    Uses ScriptedLoadableModuleTest base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ConsensusCandidateSettings()
        self.setUp()
        self.test_CandidateFromNodesMatchesLibrary()

    def test_ConsensusCandidateSettings(self):
        self.delayDisplay("Candidate settings follow the stroke annotation consensus")
        from StrokeLesionLib.candidate import CandidateParams

        params = CandidateParams().check()
        self.assertAlmostEqual(params.adc_threshold_mm2s, 620e-6, places=12)
        self.assertEqual(params.connectivity, 26)
        parameterNode = StrokeLesionLogic().getParameterNode()
        self.assertAlmostEqual(parameterNode.adcThreshold * 1e-6, params.adc_threshold_mm2s, places=12)
        self.delayDisplay("Test passed")

    def test_CandidateFromNodesMatchesLibrary(self):
        self.delayDisplay("One-click candidate on a phantom: the segment is the library's candidate")
        import numpy as np
        import SimpleITK as sitk

        from ClinicalMRICommonLib.mrml_bridge import segment_to_sitk_mask, sitk_to_volume_node
        from StrokeLesionLib.candidate import candidate_mask
        from StrokeLesionLib.diffusion import diffusion_from_images

        # a brain-like ellipsoid (DWI 400, ADC 0.8e-3 mm2/s stored in 10^-3 mm2/s) with a 6x6x4 lesion
        shape = (20, 48, 48)
        zz, yy, xx = np.mgrid[:shape[0], :shape[1], :shape[2]]
        brain = ((zz - 10) / 9.0) ** 2 + ((yy - 24) / 20.0) ** 2 + ((xx - 24) / 20.0) ** 2 <= 1
        rng = np.random.default_rng(0)
        dwi = np.where(brain, 400 + rng.normal(0, 10, shape), 0).astype(np.float32)
        adc = np.where(brain, 0.8 + rng.normal(0, 0.02, shape), 0).astype(np.float32)
        dwi[8:12, 20:26, 20:26] = 900
        adc[8:12, 20:26, 20:26] = 0.45
        images = []
        for array in (dwi, adc):
            image = sitk.GetImageFromArray(array)
            image.SetSpacing((2.0, 2.0, 2.0))
            images.append(image)
        dwiNode = sitk_to_volume_node(images[0], "DWI")
        adcNode = sitk_to_volume_node(images[1], "ADC")

        logic = StrokeLesionLogic()
        parameterNode = logic.getParameterNode()
        self.assertIn("DWI", logic.missingInputs(parameterNode, "candidate"))
        parameterNode.dwiVolume, parameterNode.adcVolume = dwiNode, adcNode
        summary = logic.runCandidate(parameterNode)
        self.assertEqual(summary["adc_units"], "1e-3mm2/s")

        expected = candidate_mask(diffusion_from_images(images[0], images[1])).mask
        pl = _panelLogic()
        segmentation = parameterNode.candidateSegmentation
        mask, resampled = segment_to_sitk_mask(segmentation, segment_id_by_name(segmentation, pl.CANDIDATE_SEGMENT),
                                               dwiNode)
        self.assertFalse(resampled)
        self.assertTrue(np.array_equal(sitk.GetArrayFromImage(mask), sitk.GetArrayFromImage(expected)))
        self.assertEqual(int(sitk.GetArrayFromImage(mask).sum()), 6 * 6 * 4)
        self.delayDisplay("Test passed")
