"""The segmentation network every module uses: its model bundle (safetensors weights + a
checksummed manifest), loading it safely, and inference with uncertainty.

AnnotationQC's pre-annotation loop trains the network (``annotation-qc loop train``,
``AnnotationQCLib.loop.model``) and writes the bundle with :func:`write_bundle`; everything
that uses a trained model reads it here: the loop's ``prelabel`` and :func:`propose`, which
``stroke-lesion candidate --loop-model DIR`` calls. No module needs another module's
library for it.

Model bundle (the rules of the HRMM bundles)::

    MODEL_DIR/model.safetensors   the weights: tensors only (no pickle, no code)
    MODEL_DIR/manifest.json       format/version, software versions, the network's settings,
                                  sequences, label set, normalisation, patch size, the
                                  trainer's record, and the SHA-256 of every other file

Loading (:func:`read_manifest`, :func:`load_model`) checks the format and version, that the
manifest holds what inference needs, every file against its checksum with
:func:`verify_manifest_files` (every listed file present and unchanged, none outside the
folder, no file the manifest does not list), optionally the manifest's own SHA-256 against a
trusted record (the loop's audit trail), and that the weights fit the network; each failure
is one :class:`~ClinicalMRICommonLib.errors.UserError` naming the folder and what is wrong.
:func:`verify_manifest_files` and :func:`manifest_files` take any folder and manifest with a
``files`` mapping (relative POSIX path -> SHA-256), so other bundles can use them too.

Inference (:func:`predict`, :func:`propose`): the images are z-scored per channel over their
non-zero voxels (MONAI ``NormalizeIntensity``, as in training), the network runs with MONAI's
``sliding_window_inference`` (Gaussian weighting, 25 % overlap) and the proposal is the argmax
label map. The uncertainty comes from T stochastic predictions of the foreground probability
p_t (1 - background probability): Monte-Carlo dropout (dropout kept on: epistemic
uncertainty) or test-time augmentation (flips: how much the prediction depends on
orientation). :func:`sample_statistics` gives the voxel-wise variance map (0..0.25) and the
case score ``1 - mean pairwise Dice`` of the thresholded predictions (docs/active_learning.md).

The bundles keep the format name ``annotationqc-loop-model`` they have had since the loop
wrote the first ones, so every bundle written before this module existed still loads.

Module level: the standard library, numpy, SimpleITK and ClinicalMRICommonLib; torch, MONAI
and safetensors are imported inside the functions that need them (the Slicer start-up rule).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import UserError
from .files import sha256_file, write_bytes_atomic, write_json_atomic

FORMAT = "annotationqc-loop-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
NETWORKS = ("unet", "segresnet")
UNCERTAINTIES = ("mc-dropout", "tta")
#: test-time augmentations: flips of the (z, y, x) axes of a (N, C, z, y, x) tensor
TTA_FLIPS = ((), (4,), (3,), (2,), (3, 4), (2, 4), (2, 3), (2, 3, 4))
NORMALISATION = {"transform": "monai.transforms.NormalizeIntensity", "nonzero": True, "channel_wise": True}
#: what inference reads from a manifest
REQUIRED_KEYS = ("network", "sequences", "labels", "n_classes", "patch_zyx")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def software_versions() -> dict[str, str]:
    """The versions a bundle records (those installed; absent packages are left out)."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("numpy", "SimpleITK", "torch", "monai", "safetensors", "slicer-clinical-mri"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def select_device(device: str = "auto"):
    """(torch.device, use AMP). ``auto`` takes a CUDA GPU when PyTorch sees one (with AMP),
    else the CPU in float32."""
    import torch

    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"device {device!r} unknown; use auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available to PyTorch; use --device cpu or auto")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu"), False
    return torch.device("cuda"), True


# ---------------------------------------------------------------------------------------
# The network


def network_settings(name: str, in_channels: int, out_channels: int, features: int, dropout: float = 0.2) -> dict:
    """The manifest's ``network`` entry: a MONAI UNet (channels f-2f-4f-8f, strides 2, one
    residual unit, dropout in every convolution) or SegResNet."""
    if name not in NETWORKS:
        raise UserError(f"network {name!r} unknown; use {' or '.join(NETWORKS)}")
    if features < 2 or features % 2:
        raise UserError(f"--features must be an even number >= 2 (got {features})")
    if name == "unet":
        kwargs = {"spatial_dims": 3, "in_channels": in_channels, "out_channels": out_channels,
                  "channels": [features, 2 * features, 4 * features, 8 * features], "strides": [2, 2, 2],
                  "num_res_units": 1, "dropout": dropout}
    else:
        kwargs = {"spatial_dims": 3, "in_channels": in_channels, "out_channels": out_channels,
                  "init_filters": features, "dropout_prob": dropout, "blocks_down": [1, 2, 2, 4],
                  "blocks_up": [1, 1, 1], "norm": ["GROUP", {"num_groups": min(8, features)}]}
    return {"name": name, "kwargs": kwargs, "downsampling": 8}


def build_network(settings: dict):
    """The untrained network of a manifest's ``network`` entry."""
    from monai.networks.nets import SegResNet, UNet

    if settings.get("name") not in NETWORKS:
        raise UserError(f"network {settings.get('name')!r} unknown; this software builds {' or '.join(NETWORKS)}")
    kw = dict(settings["kwargs"])
    if settings["name"] == "unet":
        return UNet(**kw)
    if "norm" in kw and isinstance(kw["norm"], list):
        kw["norm"] = tuple(kw["norm"])
    return SegResNet(**kw)


def image_channels(images: list[sitk.Image]) -> np.ndarray:
    """(C, z, y, x) float32 from images on one grid."""
    return np.stack([sitk.GetArrayFromImage(im).astype(np.float32) for im in images])


def normalise(channels: np.ndarray) -> np.ndarray:
    """The network's input normalisation (:data:`NORMALISATION`), as in training."""
    from monai.transforms import NormalizeIntensity

    t = NormalizeIntensity(nonzero=NORMALISATION["nonzero"], channel_wise=NORMALISATION["channel_wise"])
    return np.asarray(t(np.asarray(channels, dtype=np.float32)), dtype=np.float32)


def sliding_window_probabilities(net, x, patch, device, amp: bool):
    """Softmax probabilities (N, classes, z, y, x) of ``net`` on ``x`` by MONAI's
    ``sliding_window_inference`` (patches of ``patch`` (z, y, x), Gaussian, 25 % overlap)."""
    import torch
    from monai.inferers import sliding_window_inference

    with torch.no_grad(), torch.autocast(device_type=device.type, enabled=amp):
        logits = sliding_window_inference(x, patch, 4, net, overlap=0.25, mode="gaussian")
    return torch.softmax(logits.float(), dim=1)


def enable_dropout(net) -> int:
    """Dropout layers to training mode (Monte-Carlo dropout); returns how many there are."""
    import torch

    n = 0
    for m in net.modules():
        if isinstance(m, (torch.nn.Dropout, torch.nn.Dropout2d, torch.nn.Dropout3d, torch.nn.AlphaDropout)):
            m.train()
            n += 1
    return n


# ---------------------------------------------------------------------------------------
# Uncertainty statistics (numpy)


def sample_statistics(probabilities: np.ndarray) -> dict:
    """Statistics of T foreground-probability maps (T, z, y, x): ``variance`` (voxel-wise,
    population, 0..0.25), ``score`` = 1 - mean pairwise Dice of the maps thresholded at 0.5
    (0 when every prediction outlines the same voxels or all are empty), the mean variance
    inside the union of the predictions, and counts."""
    p = np.asarray(probabilities, dtype=np.float32)
    t = p.shape[0]
    variance = p.var(axis=0)
    masks = p > 0.5
    sizes = masks.reshape(t, -1).sum(axis=1).astype(np.float64)
    flat = masks.reshape(t, -1).astype(np.float32)
    inter = flat @ flat.T
    dices = []
    for i in range(t):
        for j in range(i + 1, t):
            s = sizes[i] + sizes[j]
            dices.append(1.0 if s == 0 else 2.0 * inter[i, j] / s)
    union = masks.any(axis=0)
    return {"variance": variance,
            "score": float(1.0 - np.mean(dices)) if dices else 0.0,
            "mean_pairwise_dice": float(np.mean(dices)) if dices else 1.0,
            "mean_variance_in_lesion": float(variance[union].mean()) if union.any() else 0.0,
            "samples": int(t), "empty_samples": int(np.count_nonzero(sizes == 0)),
            "sample_voxels_mean": float(sizes.mean())}


def uncertainty_reason(stats: dict) -> str:
    """Why a case is (or is not) uncertain, in words (from :func:`sample_statistics`)."""
    t = stats["samples"]
    if stats["empty_samples"] == t:
        return f"all {t} predictions are empty (the model sees no lesion; uncertainty cannot flag a missed lesion)"
    text = (f"the {t} predictions outline the lesion differently (mean pairwise Dice "
            f"{stats['mean_pairwise_dice']:.2f})")
    if stats["empty_samples"]:
        text += f"; {stats['empty_samples']} of them find no lesion"
    return text


# ---------------------------------------------------------------------------------------
# Checksummed folders (any manifest with a "files" mapping)


def manifest_files(folder: str | os.PathLike, exclude: tuple[str, ...] = (MANIFEST,)) -> dict[str, str]:
    """Every file under ``folder`` (relative POSIX path -> SHA-256), except ``exclude``
    (relative paths): the ``files`` entry a manifest written into that folder carries."""
    root = Path(folder)
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if (p.is_file() or p.is_symlink()) and rel not in exclude:
            out[rel] = sha256_file(p)
    return out


def manifest_file_problems(folder: str | os.PathLike, files, exclude: tuple[str, ...] = (MANIFEST,)) -> list[str]:
    """What is wrong with ``folder`` against a manifest's ``files`` mapping (empty when all
    is well): a listed file missing, altered (checksum differs), outside the folder (an
    absolute path, ``..``, or a link leading out), a damaged entry, or a file in the folder
    that the manifest does not list (``exclude`` aside: the manifest itself)."""
    from .audit import inside_folder  # the extension's one path-confinement rule

    root = Path(folder)
    if not isinstance(files, dict) or not files:
        return ["the manifest lists no files (its 'files' entry is missing or damaged)"]
    problems, listed = [], set()
    for rel, digest in files.items():
        listed.add(str(rel))  # named once, as listed, even when it is refused
        try:
            f = inside_folder(root, rel if isinstance(rel, str) else "", "file")
        except UserError:
            problems.append(f"{rel!r} is not a path inside the folder (absolute, '..' or a link leading out)")
            continue
        listed.add(f.relative_to(root).as_posix())
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            problems.append(f"{rel} has no valid SHA-256 in the manifest")
        elif not f.is_file():
            problems.append(f"{rel} is missing")
        elif sha256_file(f) != digest:
            problems.append(f"{rel} was altered (checksum differs)")
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if (p.is_file() or p.is_symlink()) and rel not in listed and rel not in exclude:
            problems.append(f"{rel} is not listed in the manifest")
    return problems


def verify_manifest_files(folder: str | os.PathLike, manifest: dict, *, what: str = "model folder",
                          remedy: str = "restore the original folder", exclude: tuple[str, ...] = (MANIFEST,)) -> None:
    """UserError "<what> <folder> failed its integrity check: <problems> - <remedy>" unless
    every file the manifest lists is in ``folder`` with its SHA-256, none lies outside it and
    the folder holds no file the manifest does not list (:func:`manifest_file_problems`)."""
    problems = manifest_file_problems(folder, manifest.get("files") if isinstance(manifest, dict) else None, exclude)
    if problems:
        more = f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        raise UserError(f"{what} {folder} failed its integrity check: {'; '.join(problems[:5])}{more} - {remedy}")


# ---------------------------------------------------------------------------------------
# Writing and reading a bundle


def write_bundle(target: str | os.PathLike, state_dict: dict, manifest: dict) -> dict:
    """Write a new bundle folder ``target``: the weights (safetensors) and the manifest with
    the format, version, creation time, software versions and every file's SHA-256 added to
    ``manifest`` (which must hold :data:`REQUIRED_KEYS`). Built in a hidden folder beside
    ``target``, read back with :func:`read_manifest`, then renamed into place; an existing
    ``target`` is never replaced (callers pick a new folder, under their own lock when
    several processes may write). Returns the manifest as written."""
    from safetensors.torch import save

    target = Path(target)
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise ValueError(f"a bundle manifest needs {', '.join(missing)}")
    if target.exists():
        raise UserError(f"{target} exists already; a model bundle is never replaced - choose a new folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        data = save({k: v.detach().cpu().contiguous() for k, v in state_dict.items()}, metadata={"format": FORMAT})
        write_bytes_atomic(tmp / WEIGHTS, data, what="model weights")
        full = {"format": FORMAT, "format_version": FORMAT_VERSION,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "software": software_versions(), **manifest}
        full["files"] = manifest_files(tmp)
        write_json_atomic(tmp / MANIFEST, full, what="model manifest")
        read_manifest(tmp)
        if target.exists():
            raise UserError(f"{target} was created by another process meanwhile; it is left untouched")
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return full


def read_manifest(model_dir: str | os.PathLike, manifest_sha256: str | None = None) -> dict:
    """The checked manifest of a bundle folder (see the module docstring).
    ``manifest_sha256``: the manifest's SHA-256 from a trusted record (the loop's audit
    trail); an edited manifest is then refused even when its file list was edited to match."""
    d = Path(model_dir)
    if not d.is_dir():
        raise UserError(f"loop model folder not found: {d}")
    mf = d / MANIFEST
    if not mf.is_file():
        raise UserError(f"{d} is not a loop model (no {MANIFEST}); give a rounds/round-NNN/model folder written by "
                        "'annotation-qc loop train'")
    if manifest_sha256 is not None and sha256_file(mf) != manifest_sha256:
        raise UserError(f"model manifest {mf} was altered after training (its checksum differs from the loop's audit "
                        "trail); restore the original model folder or retrain")
    try:
        manifest = json.loads(mf.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"model manifest {mf} is damaged (not JSON); restore the model folder or retrain") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"{mf} is not a loop model manifest (format {FORMAT!r} expected)")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"loop model {d} has format version {manifest.get('format_version')}; this software reads "
                        f"version {FORMAT_VERSION}: retrain the round with this version")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing:
        raise UserError(f"model manifest {mf} lacks {', '.join(missing)}; the model folder is incomplete - retrain")
    if WEIGHTS not in (manifest.get("files") or {}):
        raise UserError(f"model manifest {mf} lists no {WEIGHTS}; the model folder is incomplete - retrain")
    verify_manifest_files(d, manifest, what="loop model", remedy="restore the original model folder or retrain")
    return manifest


def load_model(model_dir: str | os.PathLike, device: str = "auto", manifest_sha256: str | None = None):
    """(network in eval mode on its device, manifest, torch.device, use AMP) after the checks
    of :func:`read_manifest`; weights that are not safetensors or do not fit the network are
    a UserError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    manifest = read_manifest(model_dir, manifest_sha256)
    dev, amp = select_device(device)
    weights = Path(model_dir) / WEIGHTS
    try:
        state = load_file(str(weights))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"model weights {weights} are not a readable safetensors file ({exc}); restore the model "
                        "folder or retrain") from None
    net = build_network(manifest["network"])
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        made = manifest.get("software", {}).get("monai")
        now = software_versions().get("monai")
        raise UserError(f"model weights {weights} do not fit the {manifest['network']['name']} network "
                        f"({str(exc).splitlines()[0][:160]}); made with MONAI {made}, installed {now}: install that "
                        "version or retrain") from None
    return net.to(dev).eval(), manifest, dev, amp


# ---------------------------------------------------------------------------------------
# Inference


def predict(net, manifest: dict, channels: np.ndarray, dev, amp: bool, uncertainty: str = "mc-dropout",
            samples: int = 8) -> dict:
    """``proposal`` (uint8 label map, the network in eval mode), ``variance`` (float32, the
    voxel-wise variance of the foreground probability over ``samples`` stochastic
    predictions), ``stats`` (:func:`sample_statistics` without the map, plus ``reason`` and
    ``method``) and ``normalised`` (the network's input) for channels (C, z, y, x)."""
    import torch

    if uncertainty not in UNCERTAINTIES:
        raise UserError(f"uncertainty {uncertainty!r} unknown; use {' or '.join(UNCERTAINTIES)}")
    if samples < 2 or (uncertainty == "tta" and samples > len(TTA_FLIPS)):
        raise UserError(f"--samples must lie between 2 and {len(TTA_FLIPS) if uncertainty == 'tta' else 'any'} for "
                        f"{uncertainty} (got {samples})")
    norm = normalise(channels)
    x = torch.as_tensor(norm)[None].to(dev)
    patch = manifest["patch_zyx"]
    net.eval()
    probs = sliding_window_probabilities(net, x, patch, dev, amp)
    proposal = probs.argmax(1)[0].cpu().numpy().astype(np.uint8)
    fg = []
    try:
        if uncertainty == "mc-dropout":
            if not enable_dropout(net):
                raise UserError(f"the {manifest['network']['name']} network has no dropout layer; use --uncertainty tta")
            for _ in range(samples):
                fg.append(1.0 - sliding_window_probabilities(net, x, patch, dev, amp)[0, 0].cpu().numpy())
        else:
            for axes in TTA_FLIPS[:samples]:
                xi = torch.flip(x, axes) if axes else x
                p = sliding_window_probabilities(net, xi, patch, dev, amp)
                p = torch.flip(p, axes) if axes else p
                fg.append(1.0 - p[0, 0].cpu().numpy())
    finally:
        net.eval()
    stats = sample_statistics(np.stack(fg))
    variance = stats.pop("variance").astype(np.float32)
    stats["reason"] = uncertainty_reason(stats)
    stats["method"] = uncertainty
    return {"proposal": proposal, "variance": variance, "stats": stats, "normalised": norm}


def on_grid(array: np.ndarray, reference: sitk.Image, pixel) -> sitk.Image:
    """``array`` (z, y, x) as an image of pixel type ``pixel`` on ``reference``'s grid."""
    img = sitk.Cast(sitk.GetImageFromArray(array), pixel)
    img.CopyInformation(reference)
    return img


def order_images(model_dir, sequences: list[str], images) -> tuple[list[sitk.Image], list[str]]:
    """``images`` (a dict sequence -> image, names case-insensitive, or a list in the model's
    order) in the model's sequence order, every one on the first one's grid (resampled,
    linear, and said in the warnings)."""
    from .grids import grid_difference, same_grid

    if isinstance(images, dict):
        by_lower = {str(k).lower(): v for k, v in images.items()}
        missing = [s for s in sequences if s.lower() not in by_lower]
        if missing:
            raise UserError(f"loop model {model_dir} needs the sequence(s) {', '.join(sequences)}; missing: "
                            f"{', '.join(missing)}")
        ordered = [by_lower[s.lower()] for s in sequences]
    else:
        ordered = list(images)
        if len(ordered) != len(sequences):
            raise UserError(f"loop model {model_dir} needs {len(sequences)} image(s) ({', '.join(sequences)}); got "
                            f"{len(ordered)}")
    for s, im in zip(sequences, ordered):
        if not isinstance(im, sitk.Image) or im.GetDimension() != 3 or im.GetNumberOfComponentsPerPixel() != 1:
            kind = (f"{im.GetDimension()}-D with {im.GetNumberOfComponentsPerPixel()} component(s)"
                    if isinstance(im, sitk.Image) else type(im).__name__)
            raise UserError(f"the {s} image for loop model {model_dir} is {kind}; the model needs 3-D scalar images")
        if not np.isfinite(sitk.GetArrayViewFromImage(im)).all():
            raise UserError(f"the {s} image for loop model {model_dir} holds NaN or infinite voxels")
    warnings = []
    ref = ordered[0]
    aligned = [ref]
    for s, im in zip(sequences[1:], ordered[1:]):
        if not same_grid(im, ref):
            warnings.append(f"{s} image resampled onto the {sequences[0]} grid ({grid_difference(im, ref)})")
            im = sitk.Resample(im, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        aligned.append(im)
    return aligned, warnings


def propose(model_dir: str | os.PathLike, images, *, uncertainty: str = "mc-dropout", samples: int = 8,
            device: str = "auto") -> dict:
    """A trained model's proposal for one case.

    ``images``: a dict sequence -> SimpleITK image (names as the model's sequences,
    case-insensitive) or a list in the model's sequence order; 3-D, finite. Images on another
    grid than the first are resampled onto it (linear; listed in ``warnings``). ``device``:
    auto, cpu or cuda. Returns ``mask`` (UInt8 label map on the first image's grid: 0
    background, k the k-th label), ``uncertainty`` (Float32 variance map on that grid),
    ``score`` (case uncertainty, 0..1), ``reason``, ``method``, ``round`` (the loop round
    that trained the model, or None), ``sequences``, ``labels`` and ``warnings``. The model
    folder is checked first (:func:`read_manifest`)."""
    net, manifest, dev, amp = load_model(model_dir, device)
    seqs = manifest["sequences"]
    aligned, warnings = order_images(model_dir, seqs, images)
    res = predict(net, manifest, image_channels(aligned), dev, amp, uncertainty, samples)
    ref = aligned[0]
    return {"mask": on_grid(res["proposal"], ref, sitk.sitkUInt8),
            "uncertainty": on_grid(res["variance"], ref, sitk.sitkFloat32),
            "score": res["stats"]["score"], "reason": res["stats"]["reason"], "method": uncertainty,
            "round": manifest.get("round"), "sequences": seqs, "labels": manifest["labels"], "warnings": warnings}
