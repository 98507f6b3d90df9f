import enum
import logging
import pathlib

import vtk

import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import *
from slicer.util import VTKObservationMixin
from slicer.parameterNodeWrapper import parameterNodeWrapper

from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLTableNode

# MRML <-> SimpleITK bridge (numpy, SimpleITK, MRML only). The science (pyradiomics, torch)
# is imported when Predict runs, never when Slicer starts.
from HRMMPredictLib import mrml_bridge
from AnnotationQCLib.common import UserError


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
        # AnnotationQC ships AnnotationQCLib, which this module's library uses.
        self.parent.dependencies = ["AnnotationQC"]
        self.parent.contributors = ["ClinicalMRI extension developers"]
        self.parent.helpText = _("""
Predicts high-risk multiple myeloma (HRMM: high-risk cytogenetics or extramedullary disease)
versus standard-risk myeloma for one vertebral lesion from sagittal spine MRI.
Select the T1WI, T2WI and fat-suppressed T2WI volumes, the segment outlining the largest
involved vertebral body (drawn in Segment Editor on any of the three series; it is resampled
onto the other series' grids when they differ, and the result says so), and a model bundle
folder trained with <code>hrmm train</code>. Predict gives the probability of high risk and
the class at the model's stored threshold for each model in the bundle, and each selected
radiomics feature's value against its training range. The numbers are the same as
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

    # values are the library's device names (HRMMPredictLib.deep_model.select_device)
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
    summaryTable - probability and class per model (written by Predict).
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
    """

    def __init__(self, parent=None) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)  # needed for parameter node observation
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._updatingGui = False

    def setup(self) -> None:
        """Called when the user opens the module the first time and the widget is initialized."""
        ScriptedLoadableModuleWidget.setup(self)

        uiWidget = slicer.util.loadUI(self.resourcePath("UI/HRMMPredict.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        # The .ui connects the top-level widget's mrmlSceneChanged signal to every MRML widget.
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = HRMMPredictLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        # The segment selector has no parameter-node connector: keep it in sync by hand.
        self.ui.roiSegmentSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.onRoiSegmentationChanged)
        self.ui.roiSegmentSelector.connect("currentSegmentChanged(QString)", self.onRoiSegmentChanged)
        self.ui.predictButton.connect("clicked(bool)", self.onPredictButton)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        """Called when the application closes and the module widget is destroyed."""
        self.removeObservers()

    def enter(self) -> None:
        """Called each time the user opens this module."""
        self.initializeParameterNode()

    def exit(self) -> None:
        """Called each time the user opens a different module."""
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        """Called just before the scene is closed."""
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        """Called just after the scene is closed."""
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        """Ensure parameter node exists and observed."""
        self.setParameterNode(self.logic.getParameterNode())

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
        self._updateSegmentSelectorFromParameterNode()
        self._updateResultTableViews()
        self._checkCanApply()

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

    def _updateResultTableViews(self) -> None:
        for view, node in ((self.ui.summaryTableView, self._parameterNode.summaryTable if self._parameterNode else None),
                           (self.ui.featuresTableView, self._parameterNode.featureTable if self._parameterNode else None)):
            if view.mrmlTableNode() != node:
                view.setMRMLTableNode(node)

    def _setRoiFromSelector(self, segmentId) -> None:
        """Write the selector's segmentation and segment into the parameter node in one go
        (the selector is not re-synchronised from the half-written parameter node)."""
        if self._parameterNode is None or self._updatingGui:
            return
        self._updatingGui = True
        try:
            self._parameterNode.roiSegmentation = self.ui.roiSegmentSelector.currentNode()
            self._parameterNode.roiSegmentId = segmentId or ""
        finally:
            self._updatingGui = False
        self._checkCanApply()

    def onRoiSegmentationChanged(self, node) -> None:
        self._setRoiFromSelector(self.ui.roiSegmentSelector.currentSegmentID())

    def onRoiSegmentChanged(self, segmentId) -> None:
        self._setRoiFromSelector(segmentId)

    def _checkCanApply(self, caller=None, event=None) -> None:
        """Enable Predict only with complete inputs; the tooltip says what is missing."""
        reason = self.logic.missingInputs(self._parameterNode) if self._parameterNode else _("Initializing.")
        self.ui.predictButton.enabled = not reason
        self.ui.predictButton.toolTip = reason or _("Predict the risk class of the lesion outlined by the segment.")

    def _showProgress(self, message) -> None:
        self.ui.statusLabel.text = message
        slicer.util.showStatusMessage(message)
        slicer.app.processEvents()

    def onPredictButton(self) -> None:
        """Run the prediction when the user clicks Predict."""
        self.ui.resultLabel.text = ""
        self.ui.warningsLabel.text = ""
        with slicer.util.tryWithErrorDisplay(_("Prediction failed."), waitCursor=True):
            try:
                result = self.logic.predict(self._parameterNode, progress=self._showProgress)
            finally:
                self.ui.statusLabel.text = ""
            self.ui.resultLabel.text = _("{riskClass}: probability of high risk {probability:.3f} "
                                         "(threshold {threshold:.3f}, {model} model)").format(
                riskClass=result["class"], probability=result["probability"],
                threshold=result["threshold"], model=result["model"])
            if result.get("warnings"):
                self.ui.warningsLabel.text = "\n".join(result["warnings"])
            self._updateResultTableViews()


#
# HRMMPredictLogic
#


class HRMMPredictLogic(ScriptedLoadableModuleLogic):
    """Moves data between MRML nodes and HRMMPredictLib; no widgets.

    The work is done by HRMMPredictLib.mrml_bridge (tested on slicer-core) and
    HRMMPredictLib.predict (the library the command line also runs).
    """

    SEQUENCES = ("t1", "t2", "fst2")

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

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
        directory = parameterNode.modelDirectory
        if str(directory) in ("", ".") or not pathlib.Path(directory).is_dir():
            missing.append(_("model bundle folder"))
        if not missing:
            return ""
        return _("Select: {items}.").format(items=", ".join(missing))

    def volumesByKey(self, parameterNode) -> dict:
        return {"t1": parameterNode.t1Volume, "t2": parameterNode.t2Volume, "fst2": parameterNode.fst2Volume}

    def readCase(self, parameterNode, progress=None) -> "mrml_bridge.CaseImages":
        """The three sequences as SimpleITK images and the ROI exported onto each one's grid."""
        return mrml_bridge.case_images_from_nodes(
            self.volumesByKey(parameterNode), parameterNode.roiSegmentation, parameterNode.roiSegmentId,
            labels={"t1": "T1WI", "t2": "T2WI", "fst2": "FS-T2WI"}, progress=progress)

    def ensureResultTables(self, parameterNode) -> None:
        scene = slicer.mrmlScene
        if not parameterNode.summaryTable:
            parameterNode.summaryTable = scene.AddNewNodeByClass("vtkMRMLTableNode", _("HRMM prediction"))
        if not parameterNode.featureTable:
            parameterNode.featureTable = scene.AddNewNodeByClass("vtkMRMLTableNode", _("HRMM prediction features"))

    def predict(self, parameterNode, progress=None) -> dict:
        """Predict the case described by the parameter node; fills its result tables.

        Calls HRMMPredictLib.predict.predict_case through mrml_bridge.predict_from_nodes, so
        the numbers are those of ``hrmm predict``. Raises UserError for incomplete or bad input.
        """
        reason = self.missingInputs(parameterNode)
        if reason:
            raise UserError(reason)
        self.ensureResultTables(parameterNode)
        logging.info("HRMMPredict: predicting with model bundle %s", parameterNode.modelDirectory)
        return mrml_bridge.predict_from_nodes(
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
        self.test_ReadCaseWithRoiDrawnOnT2()
        self.setUp()
        self.test_EmptySegmentAndMissingInputs()

    def _volume(self, name, spacing, origin, seed):
        import numpy as np
        import SimpleITK as sitk

        rng = np.random.default_rng(seed)
        image = sitk.GetImageFromArray(rng.integers(0, 1000, (12, 40, 36)).astype(np.int16))
        image.SetSpacing(spacing)
        image.SetOrigin(origin)
        return image, mrml_bridge.sitk_to_volume_node(image, name, scene=slicer.mrmlScene)

    def _caseNodes(self):
        import numpy as np
        import SimpleITK as sitk

        t2, t2Node = self._volume("T2", (0.8, 0.8, 4.8), (0.0, 0.0, 0.0), 1)
        _t1, t1Node = self._volume("T1", (0.6, 0.6, 3.6), (0.3, -0.2, 1.0), 2)
        _fst2, fst2Node = self._volume("FS-T2", (0.8, 0.8, 4.8), (0.0, 0.0, 0.0), 3)
        roi = np.zeros((12, 40, 36), np.uint8)
        roi[4:8, 10:24, 12:26] = 1
        mask = sitk.GetImageFromArray(roi)
        mask.CopyInformation(t2)
        labelmap = mrml_bridge.sitk_to_volume_node(mask, "roi", scene=slicer.mrmlScene, labelmap=True)
        segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "ROI")
        slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, segmentation)
        slicer.mrmlScene.RemoveNode(labelmap)
        return t1Node, t2Node, fst2Node, segmentation, int(roi.sum())

    def test_ReadCaseWithRoiDrawnOnT2(self):
        self.delayDisplay("Reading a case whose ROI was drawn on T2WI while T1WI has another grid")
        t1Node, t2Node, fst2Node, segmentation, drawnVoxels = self._caseNodes()
        logic = HRMMPredictLogic()
        parameterNode = logic.getParameterNode()
        parameterNode.t1Volume, parameterNode.t2Volume, parameterNode.fst2Volume = t1Node, t2Node, fst2Node
        parameterNode.roiSegmentation = segmentation
        parameterNode.roiSegmentId = segmentation.GetSegmentation().GetNthSegmentID(0)

        case = logic.readCase(parameterNode)
        self.assertEqual(case.resampled, {"t1": True, "t2": False, "fst2": False})
        self.assertEqual(len(case.warnings), 1)
        import SimpleITK as sitk

        self.assertEqual(int(sitk.GetArrayViewFromImage(case.rois["t2"]).sum()), drawnVoxels)
        self.assertEqual(case.rois["t1"].GetSize(), case.images["t1"].GetSize())
        self.delayDisplay("Test passed")

    def test_EmptySegmentAndMissingInputs(self):
        self.delayDisplay("Empty segment and incomplete inputs give clear errors")
        t1Node, t2Node, fst2Node, segmentation, _voxels = self._caseNodes()
        logic = HRMMPredictLogic()
        parameterNode = logic.getParameterNode()
        self.assertIn("T1WI", logic.missingInputs(parameterNode))
        parameterNode.t1Volume, parameterNode.t2Volume, parameterNode.fst2Volume = t1Node, t2Node, fst2Node
        parameterNode.roiSegmentation = segmentation
        parameterNode.roiSegmentId = segmentation.GetSegmentation().AddEmptySegment("", "empty")
        with self.assertRaises(UserError):
            logic.readCase(parameterNode)
        self.delayDisplay("Test passed")
