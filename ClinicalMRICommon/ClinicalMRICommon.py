"""ClinicalMRICommon: the hidden library module of the ClinicalMRI extension.

It has no panel. It ships ClinicalMRICommonLib, the one owner of what HRMMPredict,
AnnotationQC and StrokeLesion share: user-facing errors and the command-line conventions,
image input (NIfTI, NRRD, MHA, DICOM series) with one set of checks, masks, voxel grids,
atomic file writes and the overwrite policy, the MRML bridge, image-quality measures and the
agreement metrics (ICC, overlap and surface distances, lesion matching, STAPLE). The other
modules list it in ``dependencies`` so Slicer loads it (and puts its folder on ``sys.path``)
first, in the way Slicer's own DICOMLib-style library modules work.

Only the standard library and Slicer's own modules are imported here, at start-up.
"""

from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.ScriptedLoadableModule import ScriptedLoadableModule


class ClinicalMRICommon(ScriptedLoadableModule):
    """Hidden library module (no widget): see the module docstring."""

    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Clinical MRI Common")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Quantification")]
        self.parent.dependencies = []
        self.parent.contributors = ["ClinicalMRI extension developers"]
        self.parent.helpText = _("Shared library of the ClinicalMRI extension (image input, files, errors, "
                                 "agreement metrics, MRML helpers). It has no user interface.")
        self.parent.acknowledgementText = _("Built on 3D Slicer and SimpleITK.")
        self.parent.hidden = True
