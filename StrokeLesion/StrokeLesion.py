import slicer
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import *
from slicer.parameterNodeWrapper import parameterNodeWrapper


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
        # AnnotationQC ships AnnotationQCLib (agreement metrics, shared helpers) used by this module's library.
        self.parent.dependencies = ["AnnotationQC"]
        self.parent.contributors = ["ClinicalMRI extension developers"]
        self.parent.helpText = _("""
Annotation of acute ischaemic stroke lesions on diffusion MRI, following the two-reader workflow of the
expert consensus. Already on the command line (<code>stroke-lesion --help</code>): a semi-automatic
candidate mask (ADC below 620 x 10<sup>-6</sup> mm<sup>2</sup>/s and DWI hyperintense within the brain,
with ADC units detected and eADC computed) and ISLES'22 metrics of a mask against a reference.
This panel will add: DWI, ADC (and FLAIR) with linked views, the one-click candidate, Segment Editor to
refine it, annotator identity and blinding, a review view with readers A and B side by side and their
disagreement, arbitration, and export to BIDS.
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


@parameterNodeWrapper
class StrokeLesionParameterNode:
    """
    The parameters of the StrokeLesion panel, saved with the scene.
    The panel has no inputs yet; DWI/ADC/FLAIR volumes, the reader and the lesion segmentation
    are added here together with their widgets.
    """


#
# StrokeLesionWidget
#


class StrokeLesionWidget(ScriptedLoadableModuleWidget):
    """Uses ScriptedLoadableModuleWidget base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        self.logic = None

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/StrokeLesion.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = StrokeLesionLogic()

        self.ui.descriptionLabel.text = _(
            "<p>Annotation of acute ischaemic stroke lesions on DWI/ADC:</p>"
            "<ul><li>semi-automatic candidate mask (ADC &lt; 620 x 10<sup>-6</sup> mm<sup>2</sup>/s, DWI high),</li>"
            "<li>refinement in Segment Editor by two blinded readers,</li>"
            "<li>review of their disagreement and arbitration,</li>"
            "<li>export to BIDS.</li></ul>")
        self.ui.statusLabel.text = _(
            "The panel's controls are not available in this version. The candidate mask and the "
            "ISLES'22 metrics already run on the command line: open a terminal with the extension's "
            "Python environment and run 'stroke-lesion --help'.")


#
# StrokeLesionLogic
#


class StrokeLesionLogic(ScriptedLoadableModuleLogic):
    """MRML side of StrokeLesion; the computations live in StrokeLesionLib (no widgets here)."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)

    def getParameterNode(self):
        return StrokeLesionParameterNode(super().getParameterNode())


#
# StrokeLesionTest
#


class StrokeLesionTest(ScriptedLoadableModuleTest):
    """
    Checks, inside Slicer, that the module's library is installed with the consensus settings.
    Uses ScriptedLoadableModuleTest base class, available at:
    https://github.com/Slicer/Slicer/blob/main/Base/Python/slicer/ScriptedLoadableModule.py
    """

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_ConsensusCandidateSettings()

    def test_ConsensusCandidateSettings(self):
        self.delayDisplay("Candidate settings follow the stroke annotation consensus")
        from StrokeLesionLib.candidate import CandidateParams

        params = CandidateParams().check()
        self.assertAlmostEqual(params.adc_threshold_mm2s, 620e-6, places=12)
        self.assertEqual(params.connectivity, 26)
        self.assertIsNotNone(StrokeLesionLogic().getParameterNode())
        self.delayDisplay("Test passed")
