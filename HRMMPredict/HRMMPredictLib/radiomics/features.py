"""Radiomics extraction for HRMMPredict: preprocessing (canonical orientation, crop, N4),
pyradiomics driven by a YAML parameter file, selective extraction of a model's features, and
cached cohort extraction in parallel.

The preprocessing is one function (:func:`preprocess`) used by training and prediction
alike, so a feature means the same thing in both. Its first step puts image and ROI into the
extension's canonical orientation (:func:`ClinicalMRICommonLib.orientation.canonical`,
``PIR``: numpy axis 0 = the sagittal slice axis, running to the patient's right; rows
superior -> inferior; columns anterior -> posterior), so the crop margins are anatomical
(``margin_mm`` = anterior-posterior, superior-inferior, right-left) and pyradiomics' wavelet
sub-bands and 2-D shape features follow anatomical axes: the same lesion gives the same
features whatever order its file stores the voxels in (preprocessing version 2; version 1
cropped and filtered along the storage axes).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import re
import warnings
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk
import yaml

from ClinicalMRICommonLib.errors import InputWarning, UserError
from ClinicalMRICommonLib.files import json_safe, sha256_file
from ClinicalMRICommonLib.grids import GRID_TOLERANCE
from ClinicalMRICommonLib.images import check_finite, read_image
from ClinicalMRICommonLib.orientation import CANONICAL_ORIENTATION, canonical
from HRMMPredictLib.roi import mask_on_grid, roi_voxels, roi_warnings
from HRMMPredictLib.sequences import SEQUENCES, sequence_label

RESOURCES = Path(__file__).resolve().parents[1] / "Resources"
#: The study's settings (1197 features per sequence).
DEFAULT_PARAMS = RESOURCES / "hrmm_radiomics.yaml"
#: A small settings file (a few features) for the module's self-test and the test suite.
SMALL_PARAMS = RESOURCES / "hrmm_radiomics_small.yaml"

logging.getLogger("radiomics").setLevel(logging.ERROR)


# ---------------------------------------------------------------------------------------
# Parameters


def load_params(path: str | os.PathLike | None = None) -> dict:
    """Load and validate a pyradiomics parameter file (YAML). ``None`` gives the default."""
    p = Path(path) if path is not None else DEFAULT_PARAMS
    if not p.is_file():
        raise UserError(f"radiomics parameter file not found: {p}")
    try:
        params = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"radiomics parameter file {p} is not valid YAML ({str(exc).splitlines()[0]})") from None
    except UnicodeDecodeError:
        raise UserError(f"radiomics parameter file {p} is not a text (YAML) file; give a pyradiomics YAML "
                        "settings file") from None
    if not isinstance(params, dict):
        raise UserError(f"radiomics parameter file {p} must hold a mapping (imageType/featureClass/setting)")
    try:
        _extractor_for(params)   # validated once per process and parameter set
    except Exception as exc:  # pyradiomics raises assorted errors for bad schemas
        raise UserError(f"radiomics parameter file {p} is not accepted by pyradiomics: "
                        f"{str(exc).splitlines()[0][:200]}") from None
    return params


def params_text(params: Mapping) -> str:
    """Canonical text of a parameter set (for hashing and for the model bundle)."""
    return yaml.safe_dump(json_safe(dict(params)), sort_keys=True)


def _make_extractor(params: Mapping):
    from radiomics import featureextractor

    ex = featureextractor.RadiomicsFeatureExtractor(copy.deepcopy(dict(params)))
    ex.settings["additionalInfo"] = False
    # image and mask grids are compared with the extension's one tolerance (ClinicalMRICommonLib.grids)
    ex.settings["geometryTolerance"] = GRID_TOLERANCE
    return ex


_EXTRACTORS: "OrderedDict[str, object]" = OrderedDict()


def _extractor_for(params: Mapping):
    """A fresh copy of the extractor of ``params`` (validated once per process: pyradiomics'
    schema check takes ~0.1 s, as long as a selected-feature extraction)."""
    key = json.dumps(params, sort_keys=True, default=str)
    ex = _EXTRACTORS.get(key)
    if ex is None:
        ex = _make_extractor(params)
        _EXTRACTORS[key] = ex
        while len(_EXTRACTORS) > 8:
            _EXTRACTORS.popitem(last=False)
    out = copy.copy(ex)
    out.settings = copy.deepcopy(ex.settings)
    out.enabledImagetypes = copy.deepcopy(ex.enabledImagetypes)
    out.enabledFeatures = copy.deepcopy(ex.enabledFeatures)
    return out


# ---------------------------------------------------------------------------------------
# Preprocessing


#: Version of :func:`preprocess`. 1: crop margins and filters along the storage axes (a
#: lesion's features depended on its file's voxel order); 2: canonical orientation first;
#: 3: N4 tuned for one crop (wider bias-field FWHM, quadratic B-spline, one fitting level):
#: 5-9x faster than v2 and it removes more of an imposed gain ramp (benchmarks/bench_n4.py).
#: v2 bundles keep their recorded N4 settings and give the same values as before.
PREPROCESS_VERSION = 3
SUPPORTED_PREPROCESS_VERSIONS = (2, 3)

#: N4 settings that version 2 used implicitly (ITK's defaults): a v2 bundle's record lacks them.
_N4_V2_DEFAULTS = {"n4_fwhm": 0.15, "n4_control_points": 4, "n4_spline_order": 3,
                   "n4_shrink": 6, "n4_iterations": (50, 50), "n4_fitting_levels": 2}


@dataclass(frozen=True)
class PreprocessConfig:
    """Orientation + crop + N4 settings. Image and ROI are put into the canonical orientation
    (``PIR``), then the crop keeps ``margin_mm`` = (anterior-posterior, superior-inferior,
    right-left) millimetres around the ROI's bounding box (at least ``min_margin_voxels``
    voxels on each side), and N4 runs on that crop only."""

    version: int = PREPROCESS_VERSION
    orientation: str = CANONICAL_ORIENTATION
    margin_mm: tuple[float, float, float] = (16.0, 16.0, 10.0)
    min_margin_voxels: int = 2
    n4: bool = True
    # N4 on a 6x shrunken copy of the crop (in-plane; thick slices are not shrunk), the field
    # applied at full resolution. Version 3 (measured in benchmarks/bench_n4.py on real lumbar
    # and cervical spine T2 crops with an imposed 0.7-1.3 gain ramp, and the test phantom):
    # one level of 10 iterations with a quadratic B-spline on 4 control points and a bias FWHM
    # of 0.5 corrects more of the ramp than v2's two levels of 50 iterations with ITK's
    # defaults (cubic, FWHM 0.15), in a fraction of the time.
    n4_shrink: int = 6
    n4_iterations: tuple[int, ...] = (10,)
    n4_fitting_levels: int = 1
    n4_fwhm: float = 0.5
    n4_control_points: int = 4
    n4_spline_order: int = 2

    def to_dict(self) -> dict:
        d = asdict(self)
        d["margin_mm"] = list(self.margin_mm)
        d["n4_iterations"] = list(self.n4_iterations)
        return d

    @classmethod
    def from_dict(cls, d: Mapping | None) -> "PreprocessConfig":
        if not d:
            return cls()
        d = dict(d)
        d.setdefault("version", 1)          # recorded since version 2
        if int(d["version"]) <= 2:
            for k, v in _N4_V2_DEFAULTS.items():
                d.setdefault(k, v)
        d.setdefault("orientation", "")     # version 1: the storage order
        if "margin_mm" in d:
            d["margin_mm"] = tuple(float(x) for x in d["margin_mm"])
        if "n4_iterations" in d:
            d["n4_iterations"] = tuple(int(x) for x in d["n4_iterations"])
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in known})


def require_current_preprocessing(prep: Mapping | None, where: str) -> None:
    """Refuse a model bundle whose features were computed by an older :func:`preprocess`
    (``prep``: the bundle manifest's ``radiomics.preprocess``)."""
    version = int((prep or {}).get("version", 1))
    if version not in SUPPORTED_PREPROCESS_VERSIONS:
        detail = " (storage-order dependent)" if version == 1 else ""
        raise UserError(f"model bundle {where} was trained with preprocessing v{version}{detail}; this software "
                        f"reads v{SUPPORTED_PREPROCESS_VERSIONS[0]}-v{SUPPORTED_PREPROCESS_VERSIONS[-1]} (canonical "
                        "orientation): retrain with hrmm train")


def roi_bounding_box(mask: sitk.Image) -> tuple[list[int], list[int]]:
    """(index, size) of the mask's bounding box in SimpleITK (x, y, z) order."""
    inside = roi_voxels(mask)
    lo, hi = [], []
    for axis in range(inside.ndim):       # projections: faster than np.nonzero on a whole image
        idx = np.flatnonzero(inside.any(axis=tuple(a for a in range(inside.ndim) if a != axis)))
        lo.append(int(idx[0]))
        hi.append(int(idx[-1]))
    lo, hi = lo[::-1], hi[::-1]
    return lo, [h - l + 1 for l, h in zip(lo, hi)]


def crop_box(mask: sitk.Image, cfg: PreprocessConfig) -> tuple[list[int], list[int]]:
    """(start, size) in SimpleITK (x, y, z) index order of the ROI's bounding box plus the
    configured margin, clipped to the image (margins per index axis: give a canonical mask)."""
    lo, size = roi_bounding_box(mask)
    spacing = mask.GetSpacing()
    img_size = mask.GetSize()
    start, extent = [], []
    for d in range(3):
        m = max(cfg.min_margin_voxels, int(np.ceil(cfg.margin_mm[d] / spacing[d])))
        a = max(0, lo[d] - m)
        b = min(img_size[d], lo[d] + size[d] + m)
        start.append(a)
        extent.append(b - a)
    return start, extent


def union_box(boxes: Sequence[tuple[list[int], list[int]]]) -> tuple[list[int], list[int]]:
    """The smallest box (start, size) holding every one of ``boxes``."""
    lo = [min(b[0][d] for b in boxes) for d in range(3)]
    hi = [max(b[0][d] + b[1][d] for b in boxes) for d in range(3)]
    return lo, [h - l for l, h in zip(lo, hi)]


def crop_to_roi(image: sitk.Image, mask: sitk.Image, cfg: PreprocessConfig) -> tuple[sitk.Image, sitk.Image]:
    """Crop image and mask to the ROI's bounding box plus the configured margin."""
    start, extent = crop_box(mask, cfg)
    return (sitk.RegionOfInterest(image, extent, start), sitk.RegionOfInterest(mask, extent, start))


def n4_correct(image: sitk.Image, cfg: PreprocessConfig) -> sitk.Image:
    """N4 bias-field correction of a (cropped) image; the field is fitted on a shrunken copy
    and applied at full resolution. Deterministic (N4 has no random sampling)."""
    img = sitk.Cast(image, sitk.sitkFloat32)
    arr = sitk.GetArrayViewFromImage(img)
    lo = float(np.min(arr))
    if lo <= 0:  # N4 works on log intensities: shift to strictly positive values
        img = img + (1.0 - lo)
    shrink = [max(1, cfg.n4_shrink if img.GetSize()[d] >= 4 * cfg.n4_shrink else 1) for d in range(3)]
    # do not shrink the thick-slice axis
    sp = img.GetSpacing()
    shrink = [1 if sp[d] > 2.5 * min(sp) else shrink[d] for d in range(3)]
    small = sitk.Shrink(img, shrink)
    corrector = sitk.N4BiasFieldCorrectionImageFilter()
    corrector.SetMaximumNumberOfIterations(list(cfg.n4_iterations)[: cfg.n4_fitting_levels]
                                           + [cfg.n4_iterations[-1]] * max(0, cfg.n4_fitting_levels
                                                                            - len(cfg.n4_iterations)))
    corrector.SetNumberOfThreads(1)
    corrector.SetBiasFieldFullWidthAtHalfMaximum(float(cfg.n4_fwhm))
    corrector.SetNumberOfControlPoints([int(cfg.n4_control_points)] * 3)
    corrector.SetSplineOrder(int(cfg.n4_spline_order))
    head = sitk.Image(small.GetSize(), sitk.sitkUInt8)
    head.CopyInformation(small)
    head = head + 1
    corrector.Execute(small, head)
    log_field = corrector.GetLogBiasFieldAsImage(img)
    corrected = img / sitk.Exp(log_field)
    if lo <= 0:
        corrected = corrected - (1.0 - lo)
    return sitk.Cast(corrected, sitk.sitkFloat32)


def to_canonical(image: sitk.Image, mask: sitk.Image | None = None,
                 cfg: PreprocessConfig | None = None):
    """Image (and mask) in the preprocessing's orientation (voxels permuted/flipped only)."""
    cfg = cfg or PreprocessConfig()
    if cfg.version < 2:
        raise UserError(f"preprocessing v{cfg.version} (storage-order dependent) is no longer supported; "
                        "retrain with hrmm train")
    require_volume(image)
    image = canonical(image, cfg.orientation)
    return image if mask is None else (image, canonical(mask, cfg.orientation))


def require_volume(image: sitk.Image, what: str = "image") -> None:
    """Refuse a single-slice image (or one voxel thick along any axis): N4 and 3-D texture
    need a volume (a single-slice series gave N4's 'Zero-valued spacing' error)."""
    size = tuple(image.GetSize())
    if image.GetDimension() != 3 or min(size) < 2:
        shown = " x ".join(str(s) for s in size)
        raise UserError(f"{what} has a single slice (size {shown}); the radiomics features and N4 need a 3-D "
                        "volume: give the whole series (all its slices)")


def preprocess(image: sitk.Image, mask: sitk.Image, cfg: PreprocessConfig | None = None,
               on_warning: Callable[[str], None] | None = None) -> tuple[sitk.Image, sitk.Image]:
    """Canonical orientation, crop to ROI + anatomical margin, then N4. Used identically for
    training and prediction. What the user should know about the ROI (it touches the edge of
    the field of view, covers most of it) goes to ``on_warning`` (default: an InputWarning)."""
    cfg = cfg or PreprocessConfig()
    image, mask = to_canonical(image, mask, cfg)
    for w in roi_warnings(mask):
        _warn(w, on_warning)
    img_c, mask_c = crop_to_roi(image, mask, cfg)
    if cfg.n4:
        img_c = n4_correct(img_c, cfg)
    else:
        img_c = sitk.Cast(img_c, sitk.sitkFloat32)
    return img_c, mask_c


def _warn(message: str, on_warning: Callable[[str], None] | None) -> None:
    if on_warning is not None:
        on_warning(message)
    else:
        warnings.warn(message, InputWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------
# Extraction


_FEATURE_RE = re.compile(r"^(?P<itype>[^_]+)_(?P<cls>[^_]+)_(?P<name>.+)$")


def parse_feature_name(name: str) -> tuple[str, str, str]:
    """Split a pyradiomics feature name into (image type, class, feature):
    ``wavelet-LLH_glcm_Contrast`` -> (``wavelet-LLH``, ``glcm``, ``Contrast``)."""
    m = _FEATURE_RE.match(name)
    if not m:
        raise UserError(f"not a pyradiomics feature name: {name!r}")
    return m.group("itype"), m.group("cls"), m.group("name")


def _feature_values(result: Mapping) -> "OrderedDict[str, float]":
    out: OrderedDict[str, float] = OrderedDict()
    for k, v in result.items():
        if k.startswith("diagnostics_"):
            continue
        out[k] = float(v)
    return out


def extract_radiomics(image: sitk.Image, mask: sitk.Image, params: Mapping | None = None,
                     preprocess_cfg: PreprocessConfig | None = None,
                     feature_names: Iterable[str] | None = None,
                     diagnostics: bool = False, already_preprocessed: bool = False,
                     on_warning: Callable[[str], None] | None = None) -> "OrderedDict[str, float]":
    """Extract radiomics features of one image/ROI pair.

    With ``feature_names`` only those features are computed (grouped by image type so each
    filter runs once): the values are identical to a full extraction's, because pyradiomics
    computes every image type and feature independently of the others.
    """
    params = dict(params) if params is not None else load_params(None)
    if not already_preprocessed:
        image, mask = preprocess(image, mask, preprocess_cfg, on_warning)
    if feature_names is None:
        ex = _extractor_for(params)
        ex.settings["additionalInfo"] = bool(diagnostics)
        res = _execute(ex, image, mask)
        if diagnostics:
            return OrderedDict((k, v) for k, v in res.items())
        return _feature_values(res)

    wanted = list(dict.fromkeys(feature_names))
    out = _extract_selected(image, mask, params, wanted)
    missing = [k for k in wanted if k not in out]
    if missing:
        raise UserError(f"the radiomics settings do not produce feature(s) {', '.join(missing[:5])}"
                        + (" ..." if len(missing) > 5 else "") + "; the model and the settings do not match")
    return OrderedDict((k, out[k]) for k in wanted)


def _execute(ex, image: sitk.Image, mask: sitk.Image):
    try:
        return ex.execute(image, mask)
    except ValueError as exc:
        raise UserError(f"pyradiomics refused the ROI: {str(exc).splitlines()[0][:200]}") from None


_SHAPE_CLASSES = ("shape", "shape2D")


def _image_type_key(itype: str, enabled: Mapping) -> str | None:
    """The pyradiomics image-type key (as spelled in ``enabled``) that makes the filtered
    image named ``itype``: original, wavelet-LLH / wavelet2-LLH, log-sigma-1-0-mm-3D /
    log-sigma-1-mm-3D, square, squareroot, logarithm, exponential, gradient, lbp-2D,
    lbp-3D-m1 / lbp-3D-k."""
    low = itype.lower()
    if low.startswith("wavelet"):
        key = "wavelet"
    elif low.startswith("log-sigma-"):
        key = "log"
    elif low.startswith("lbp-2d"):
        key = "lbp2d"
    elif low.startswith("lbp-3d"):
        key = "lbp3d"
    else:
        key = low
    return next((k for k in enabled if k.lower() == key), None)


def _log_image_name(sigma) -> str:
    """pyradiomics' name of the LoG image of ``sigma`` (its getLoGImage spelling)."""
    return "log-sigma-%s-mm-3D" % (str(sigma).replace(".", "-"))


def _produced(ex, cls: str, feat: str) -> bool:
    """Whether the extractor's settings enable feature ``feat`` of class ``cls`` (an empty
    list or None enables the whole class, as in pyradiomics)."""
    if cls not in ex.enabledFeatures:
        return False
    names = ex.enabledFeatures[cls]
    return not names or feat in names


def _extract_selected(image: sitk.Image, mask: sitk.Image, params: Mapping, wanted: Sequence[str]) -> dict:
    """Only the features ``wanted``, through pyradiomics' own steps in the order of its
    ``execute`` (load + normalise + pre-crop, mask check, shape on the original image, each
    filter's images cropped to the ROI, one feature class at a time): a filter family runs
    once and only the filtered images that carry a wanted feature (e.g. 1 of the 8 wavelet
    sub-bands) get their feature classes computed. Values are those of a full extraction:
    pyradiomics computes every image type and feature class independently. A wanted feature
    the settings do not produce is left out (the caller names it)."""
    from radiomics import featureextractor, imageoperations

    ex = _extractor_for(params)
    settings = ex.settings
    try:
        if settings.get("resegmentRange") is not None:   # resegmentation: pyradiomics' own execute per family
            out: dict[str, float] = {}
            for sub_params in _selective_params(params, wanted, ex):
                res = _feature_values(_execute(_extractor_for(sub_params), image, mask))
                out.update({k: res[k] for k in wanted if k in res})
            return out
        by_image: dict[str, dict[str, list[str]]] = {}
        for name in wanted:
            itype, cls, feat = parse_feature_name(name)
            if _produced(ex, cls, feat):
                by_image.setdefault(itype, {}).setdefault(cls, []).append(feat)
        if featureextractor.geometryTolerance != settings.get("geometryTolerance"):
            ex._setTolerance()      # what execute() does first: image/mask grid tolerance for SimpleITK
        img_n, mask_n = ex.loadImage(image, mask, None, **settings)
        bb, corrected = imageoperations.checkMask(img_n, mask_n, **settings)
        if corrected is not None:
            mask_n = corrected
        if bb is None:
            raise UserError("pyradiomics refused the ROI: no bounding box (is the ROI empty after the crop?)")
        out = {}
        original = by_image.get("original", {})
        shape = {c: original.pop(c) for c in _SHAPE_CLASSES if c in original}
        if shape:                                  # shape and shape2D: on the original image, as execute
            ex.enabledFeatures = shape
            out.update(_feature_values(ex.computeShape(img_n, mask_n, bb, **settings)))
        if "original" in by_image and not original:
            del by_image["original"]
        families: dict[str, set[str]] = {}
        for itype in by_image:
            key = _image_type_key(itype, ex.enabledImagetypes)
            if key is not None:                    # an image type the settings lack: left out
                families.setdefault(key, set()).add(itype)
        for key, names in families.items():
            args = dict(settings)
            args.update(copy.deepcopy(ex.enabledImagetypes[key] or {}))
            if key.lower() == "log":               # only the sigmas whose image is wanted
                args["sigma"] = [sg for sg in (args.get("sigma") or []) if _log_image_name(sg) in names]
            for filtered, itype_name, kwargs in getattr(imageoperations, f"get{key}Image")(img_n, mask_n, **args):
                classes = by_image.get(itype_name)
                if not classes:
                    continue
                f_img, f_mask = imageoperations.cropToTumorMask(filtered, mask_n, bb, padDistance=0)
                ex.enabledFeatures = {c: list(f) for c, f in classes.items()}
                out.update(_feature_values(ex.computeFeatures(f_img, f_mask, itype_name, **kwargs)))
        return out
    except ValueError as exc:
        raise UserError(f"pyradiomics refused the ROI: {str(exc).splitlines()[0][:200]}") from None
    except LookupError as exc:
        raise UserError(f"the radiomics settings do not produce a feature the model needs ({exc}); the model "
                        "and the settings do not match") from None


def _selective_params(params: Mapping, wanted: Sequence[str], ex) -> list[dict]:
    """Parameter sets that together compute exactly the image types and feature classes
    ``wanted`` needs: one set per image type (original, wavelet, LoG sigmas ...); features
    the settings do not produce are left out."""
    by_type: dict[str, dict[str, set[str]]] = {}
    log_names: set[str] = set()
    for name in wanted:
        itype, cls, feat = parse_feature_name(name)
        if not _produced(ex, cls, feat):
            continue
        key = "shape" if itype == "original" and cls in _SHAPE_CLASSES else _image_type_key(itype, ex.enabledImagetypes)
        if key is None:
            continue
        if key.lower() == "log":
            log_names.add(itype)
        by_type.setdefault(key, {}).setdefault(cls, set()).add(feat)
    out = []
    for key, classes in by_type.items():
        p = copy.deepcopy(dict(params))
        if key == "shape":
            p["imageType"] = {"Original": {}}
            p["featureClass"] = {c: sorted(f) for c, f in classes.items()}
            out.append(p)
            continue
        custom = copy.deepcopy(ex.enabledImagetypes[key] or {})
        if key.lower() == "log":
            sig = custom.get("sigma", (params.get("setting") or {}).get("sigma")) or []
            custom["sigma"] = [sg for sg in sig if _log_image_name(sg) in log_names]
        p["imageType"] = {key: custom}
        p["featureClass"] = {c: sorted(f) for c, f in classes.items() if c not in _SHAPE_CLASSES}
        out.append(p)
    return out


def extract_case_sequence(image_path: str | os.PathLike, roi_path: str | os.PathLike, params: Mapping,
                          preprocess_cfg: PreprocessConfig, feature_names: Iterable[str] | None = None,
                          resample_roi: bool = False, what: str = "image",
                          on_warning: Callable[[str], None] | None = None) -> "OrderedDict[str, float]":
    """Read, check and extract one image/ROI pair given by file paths (DICOM series folders too)."""
    img = read_image(image_path, what)
    check_finite(img, image_path, what)
    require_volume(img, f"{what} {image_path}")
    mask, _ = mask_on_grid(roi_path, img, image_what=what, resample=resample_roi)
    return extract_radiomics(img, mask, params, preprocess_cfg, feature_names, on_warning=on_warning)


# ---------------------------------------------------------------------------------------
# Cohort extraction with a cache


def file_sha256(path: str | os.PathLike, _cache: dict = {}) -> str:  # noqa: B006 - per-process memo
    """SHA-256 of a file's content; of a folder (a DICOM series): of its files' relative
    names and contents, in sorted order."""
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file())
        h = hashlib.sha256(b"folder\0")
        for f in files:
            h.update(f.relative_to(p).as_posix().encode() + b"\0" + file_sha256(f).encode() + b"\0")
        return h.hexdigest()
    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _cache:
        _cache[key] = sha256_file(p)
    return _cache[key]


def _pyradiomics_version() -> str:
    import radiomics

    return str(radiomics.__version__)


def extraction_key(image_path, roi_path, params: Mapping, cfg: PreprocessConfig) -> str:
    """Cache key: content of image and ROI, settings, preprocessing and pyradiomics version."""
    h = hashlib.sha256()
    for part in (file_sha256(image_path), file_sha256(roi_path), params_text(params),
                 json.dumps(cfg.to_dict(), sort_keys=True), _pyradiomics_version(), sitk.Version_VersionString()):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


@dataclass
class ExtractionTask:
    lesion_id: str
    sequence: str
    roi_kind: str
    image: str
    roi: str


def _run_group(args) -> list[tuple[int, dict | None, str | None]]:
    """Extract every ROI (reader 1, reader 2, repeat) of one image: the image is read, checked
    and put into the canonical orientation once, then each ROI goes through the same
    :func:`preprocess` as a single extraction (so the values are those of separate
    extractions, exactly)."""
    items, params, cfg_dict = args
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    cfg = PreprocessConfig.from_dict(cfg_dict)
    first = items[0][1]
    what = f"{sequence_label(first.sequence)} image"
    out = []
    try:
        img = read_image(first.image, what)
        check_finite(img, first.image, what)
        require_volume(img, f"{what} {first.image}")
        img_k = to_canonical(img, None, cfg)
    except UserError as exc:
        return [(idx, None, f"{t.lesion_id} {t.sequence} {t.roi_kind}: {exc}") for idx, t, _ in items]
    for idx, task, cache_file in items:
        try:
            mask, _ = mask_on_grid(task.roi, img, image_what=what)
            feats = extract_radiomics(img_k, canonical(mask, cfg.orientation), params, cfg,
                                      on_warning=lambda m: None)  # warned by the manifest's validation
        except UserError as exc:
            out.append((idx, None, f"{task.lesion_id} {task.sequence} {task.roi_kind}: {exc}"))
            continue
        if cache_file:
            from ClinicalMRICommonLib.files import write_json_atomic

            write_json_atomic(cache_file, feats, indent=None)
        out.append((idx, dict(feats), None))
    return out


def extract_cohort(cohort, cache_dir: str | os.PathLike | None, params: Mapping | None = None,
                   preprocess_cfg: PreprocessConfig | None = None, roi_kinds: Sequence[str] = ("roi",),
                   sequences: Sequence[str] = SEQUENCES, n_jobs: int | None = None,
                   progress: Callable[[int, int, str], None] | None = None, lesion_ids: Iterable[str] | None = None,
                   scheduler: str | None = None):
    """Extract features for every lesion, sequence and ROI kind of a cohort.

    ``cohort`` is a cohort manifest as :func:`HRMMPredictLib.cohort.load_cohort_manifest`
    returns it: absolute paths in columns named after ``sequences`` and ``roi_kinds``. Results are cached per
    (image, ROI, settings) in ``cache_dir``; a rerun only computes what changed. The ROIs of
    one image (reader 1, reader 2, repeat) are extracted together: the image is read,
    checked and reoriented once (values identical to separate extractions).

    ``n_jobs`` local processes, or ``scheduler`` (see :mod:`HRMMPredictLib.radiomics.executors`).

    Returns ``{roi_kind: DataFrame}`` indexed by lesion_id with columns ``<seq>_<feature>``.
    """
    import pandas as pd

    params = dict(params) if params is not None else load_params(None)
    cfg = preprocess_cfg or PreprocessConfig()
    cache = Path(cache_dir) if cache_dir else None
    if cache:
        cache.mkdir(parents=True, exist_ok=True)
    rows = cohort if lesion_ids is None else cohort[cohort["lesion_id"].isin(set(lesion_ids))]
    tasks: list[ExtractionTask] = []
    for _, r in rows.iterrows():
        for kind in roi_kinds:
            if kind not in r or not isinstance(r[kind], str) or not r[kind]:
                continue
            for seq in sequences:
                tasks.append(ExtractionTask(str(r["lesion_id"]), seq, kind, r[seq], r[kind]))
    results: list[dict | None] = [None] * len(tasks)
    groups: dict[str, list] = {}          # image path -> its ROIs still to extract
    for i, t in enumerate(tasks):
        cache_file = None
        if cache:
            cache_file = cache / f"{extraction_key(t.image, t.roi, params, cfg)}.json"
            if cache_file.is_file():
                try:
                    results[i] = json.loads(cache_file.read_text())
                    continue
                except (OSError, json.JSONDecodeError):
                    pass  # damaged cache entry: recompute
        groups.setdefault(t.image, []).append((i, t, str(cache_file) if cache_file else None))
    todo = [(items, params, cfg.to_dict()) for items in groups.values()]
    n_todo = sum(len(items) for items in groups.values())
    n_cached = len(tasks) - n_todo
    errors = []
    done = n_cached
    if progress:
        progress(done, len(tasks), f"{n_cached} cached")
    from HRMMPredictLib.radiomics.executors import iter_map

    for group in iter_map(_run_group, todo, n_jobs=n_jobs, scheduler=scheduler):
        for idx, feats, err in group:
            done += 1
            if err:
                errors.append(err)
            else:
                results[idx] = feats
            if progress:
                t = tasks[idx]
                progress(done, len(tasks), f"{t.lesion_id} {t.sequence} {t.roi_kind}")
    if errors:
        raise UserError(f"feature extraction failed for {len(errors)} image(s): " + "; ".join(errors[:5])
                        + (" ..." if len(errors) > 5 else ""))
    tables: dict[str, dict[str, dict[str, float]]] = {}
    for t, feats in zip(tasks, results):
        row = tables.setdefault(t.roi_kind, {}).setdefault(t.lesion_id, {})
        for k, v in feats.items():
            row[f"{t.sequence}_{k}"] = v
    out = {}
    for kind, rows_ in tables.items():
        df = pd.DataFrame.from_dict(rows_, orient="index")
        df.index.name = "lesion_id"
        out[kind] = df
    return out


def split_sequence_feature(column: str, sequences: Sequence[str] = SEQUENCES) -> tuple[str, str]:
    """``fst2_wavelet-LLH_glcm_Contrast`` -> (``fst2``, ``wavelet-LLH_glcm_Contrast``)."""
    for s in sorted(sequences, key=len, reverse=True):
        if column.startswith(s + "_"):
            return s, column[len(s) + 1:]
    raise UserError(f"feature column {column!r} does not start with a sequence name ({', '.join(sequences)})")
