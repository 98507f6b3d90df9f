"""A small synthetic DWI/ADC pair and a study built on it, for tests that need the two-reader
workflow but not the real ISLES'22 data (fault rows, tampering, blinding): a 10 x 24 x 24
phantom (1.5 x 1.5 x 3 mm) with one ADC-dark, DWI-bright lesion of 18 voxels, ADC in
10^-6 mm2/s, a dcm2niix-style sidecar (with identifying keys to be removed on export) and a
NIfTI comment extension holding a patient name."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SHAPE = (10, 24, 24)                      # numpy z, y, x
SPACING = (1.5, 1.5, 3.0)                 # ITK x, y, z
LESION = (slice(4, 6), slice(10, 13), slice(10, 13))
READERS = [("ann1", "attending", 8, 3), ("ann2", "attending", 6, 2), ("rev1", "associate_chief", 14, 9),
           ("arb1", "chief", 25, 18), ("junior", "resident", 3, 1)]
SIDECAR = {"MagneticFieldStrength": 3.0, "EchoTime": 0.055, "RepetitionTime": 9.9, "Manufacturer": "Acme",
           "InstitutionName": "St Elsewhere Hospital", "ProcedureStepDescription": "MRI HEAD Zhang San",
           "SiteNote": "ward 7, bed 12", "PatientName": "Zhang^San"}
EXTENSION_TEXT = b"PatientName=Zhang^San PatientID=H123456789"


def _image(arr: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(SPACING)
    img.SetOrigin((-20.0, -30.0, 10.0))
    return img


def arrays(seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dwi, adc, lesion mask) arrays."""
    rng = np.random.default_rng(seed)
    dwi = np.zeros(SHAPE, np.float32)
    adc = np.zeros(SHAPE, np.float32)
    inside = (slice(1, SHAPE[0] - 1), slice(3, SHAPE[1] - 3), slice(3, SHAPE[2] - 3))
    n = dwi[inside].shape
    dwi[inside] = 400 + rng.normal(0, 10, n)
    adc[inside] = 800 + rng.normal(0, 20, n)
    dwi[LESION], adc[LESION] = 900, 450
    mask = np.zeros(SHAPE, np.uint8)
    mask[LESION] = 1
    return dwi, adc, mask


def write_images(folder: Path, *, sidecars: bool = True, extension: bool = True, suffix: str = ".nii.gz") -> dict:
    """DWI, ADC (+ JSON sidecars, + a NIfTI comment extension) and the lesion mask in ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    dwi, adc, mask = arrays()
    out = {}
    for name, arr in (("dwi", dwi), ("adc", adc)):
        p = folder / f"ph_{name}{suffix}"
        sitk.WriteImage(_image(arr), str(p))
        out[name] = p
        if sidecars:
            meta = dict(SIDECAR, **({"DiffusionBValue": 1000} if name == "dwi" else
                                    {"ImageType": ["DERIVED", "PRIMARY", "DIFFUSION", "ADC"]}))
            (folder / f"ph_{name}.json").write_text(json.dumps(meta))
        if extension:
            import nibabel as nib
            img = nib.load(str(p))
            img.header.extensions.append(nib.nifti1.Nifti1Extension(6, EXTENSION_TEXT))
            img.header["descrip"] = b"PatientName=Zhang"
            nib.save(img, str(p))
    out["mask"] = folder / "mask.nii.gz"
    sitk.WriteImage(_image(mask), str(out["mask"]))
    other = mask.copy()
    other[4, 10, 13] = 1                  # B draws one voxel more
    out["mask_b"] = folder / "mask_b.nii.gz"
    sitk.WriteImage(_image(other), str(out["mask_b"]))
    return out


def build_study(root: Path, images: dict, *, until: str = "final", case: str = "c1") -> "Study":  # noqa: F821
    """A study with the five readers and one case, taken ``until`` "created" (readers
    assigned), "annotated" (A and B saved), "compared" or "final" (reviewer signed off)."""
    from StrokeLesionLib.workflow import Reader, Study
    s = Study.create(root, by="coord", name="phantom study")
    for rid, title, years, neuro in READERS:
        s.add_reader(Reader(rid, title, years, neuro, name=f"Dr {rid.title()} Realname"), by="coord")
    s.init_case(case, dwi=images["dwi"], adc=images["adc"], by="coord",
                assignments={"annotatorA": "ann1", "annotatorB": "ann2", "reviewer": "rev1", "arbitrator": "arb1"})
    if until == "created":
        return s
    s.annotate(case, "ann1", images["mask"])
    s.annotate(case, "ann2", images["mask_b"])
    if until == "annotated":
        return s
    s.compare(case, by="coord")
    if until == "compared":
        return s
    st = s.state(case)
    if st.status == "signoff":
        s.review(case, "rev1", accept_proposed=True, why="checked")
    else:
        s.review(case, "rev1", default="A", why="A is right")
    return s


def copy_study(template: Path, dst: Path) -> Path:
    """A copy of a template study (read-only files stay read-only, as in a real study)."""
    shutil.copytree(template, dst, symlinks=True)
    return dst
