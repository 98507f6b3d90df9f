import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import *
from slicer.parameterNodeWrapper import parameterNodeWrapper


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
        self.parent.dependencies = []
        self.parent.contributors = ["ClinicalMRI extension developers"]
        self.parent.helpText = _("""
Quality control of MRI annotations: whether readers agree, and whether a trainee is ready.
The agreement library behind it already runs on the command line (<code>annotation-qc --help</code>):
intraclass correlation (all six McGraw and Wong forms, with Koo and Li interpretation), per-feature
ICC tables for radiomics between readers and sessions, spacing-aware mask agreement in millimetres
(Dice, Jaccard, HD95, mean surface distance, surface Dice, volume difference, lesion-wise detection),
and the consensus of several readers (STAPLE, majority vote, disagreement map).
This panel will add: reader login and blinded reading sessions, an embedded Segment Editor bound to
the reader's own segmentation, a comparison of two segmentations (metrics table and disagreement
overlay), the ICC table and plot of a study, training sessions with pass/fail reports, and
image-quality grading (grade 1-3, Likert 1-5, SNR/CNR).
Research use only.
""")
        self.parent.acknowledgementText = _("""
Annotation rules, reader qualification and consistency checks follow the "Expert consensus on MR images
annotation of central nervous system tumors" (Chinese Association of Radiologists, Internet Plus Medical
Imaging Group) and the reader-agreement design of the high-risk multiple myeloma study (inter- and
intra-reader ICC &gt;= 0.75). Built on 3D Slicer, SimpleITK and MONAI.
""")


#
# AnnotationQCParameterNode
#


@parameterNodeWrapper
class AnnotationQCParameterNode:
    """
    The parameters of the AnnotationQC panel, saved with the scene.
    The panel has no inputs yet; reader, study and segmentation selections are added here
    together with their widgets.
    """


#
# AnnotationQCWidget
#


class AnnotationQCWidget(ScriptedLoadableModuleWidget):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/AnnotationQC.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = AnnotationQCLogic()

        self.ui.descriptionLabel.text = _(
            "<p>Measures how well readers agree on MRI annotations and whether a trainee is ready:</p>"
            "<ul><li>ICC between readers and sessions (radiomics features),</li>"
            "<li>Dice, HD95 and surface distances between two segmentations,</li>"
            "<li>consensus of several readers (STAPLE, majority vote),</li>"
            "<li>training sessions and image-quality grading.</li></ul>")
        self.ui.statusLabel.text = _(
            "The panel's controls are not available in this version. The computations already run "
            "on the command line: open a terminal with the extension's Python environment and run "
            "'annotation-qc --help'.")


#
# AnnotationQCLogic
#


class AnnotationQCLogic(ScriptedLoadableModuleLogic):
    """MRML side of AnnotationQC; the computations live in AnnotationQCLib (no widgets here)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return AnnotationQCParameterNode(super().getParameterNode())


#
# AnnotationQCTest
#


class AnnotationQCTest(ScriptedLoadableModuleTest):
    """
    Checks, inside Slicer, that the module's library is installed and computes agreement.
    Uses ScriptedLoadableModuleTest base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_CompareTwoBoxes()

    def test_CompareTwoBoxes(self):
        self.delayDisplay("Comparing two boxes shifted by two voxels")
        import numpy as np
        import SimpleITK as sitk

        from AnnotationQCLib.segmentation_metrics import compare_masks

        def box(x0):
            array = np.zeros((20, 20, 20), np.uint8)
            array[5:15, 5:15, x0:x0 + 10] = 1
            image = sitk.GetImageFromArray(array)
            image.SetSpacing((0.5, 0.5, 0.5))
            return image

        result = compare_masks(box(5), box(7))
        # 10x10x10 boxes overlapping on 10x10x8 voxels: Dice = 2*800/2000, Jaccard = 800/1200
        self.assertAlmostEqual(result["dice"], 0.8, places=12)
        self.assertAlmostEqual(result["jaccard"], 800 / 1200, places=12)
        self.assertAlmostEqual(result["volume_diff_ml"], 0.0, places=12)
        self.assertIsNotNone(AnnotationQCLogic().getParameterNode())
        self.delayDisplay("Test passed")
