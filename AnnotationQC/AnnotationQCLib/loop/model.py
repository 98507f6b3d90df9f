"""The loop's network: training a round, its model bundle, pre-labelling with uncertainty and
:func:`propose` for other modules (``stroke-lesion candidate --loop-model``).

Built on MONAI: a ``monai.networks.nets`` UNet (default; dropout in every convolution, so
Monte-Carlo dropout samples the network) or SegResNet; ``DiceCELoss`` (soft Dice + cross
entropy on the softmax); ``NormalizeIntensityd`` (z-score per case and channel over the
non-zero voxels), ``SpatialPadd`` + ``RandCropByPosNegLabeld`` (patches centred on lesion and
on background voxels 1:1), flips on the three axes and random intensity scaling/shifting as
augmentation; ``sliding_window_inference`` (Gaussian-weighted, 25 % overlap) for validation
and prediction. The images are used on the case's voxel grid (no resampling to a common
spacing: the loop's cases come from one protocol).

Patient-level internal validation (:func:`split_patients`): all cases of a patient are on
one side. The split is stable: a patient stays on its side in every later round (the train
record lists both sides), and new patients, taken in the order of a hash of (seed, patient
id), fill the validation side up to ``val_fraction`` of all patients (at least one patient
each side). Rounds are therefore compared on the same validation patients plus new ones.
The round's model is the epoch with the best validation Dice.

Model bundle (``rounds/round-NNN/model/``; the rules of the HRMM bundles): ``model.safetensors``
(tensors only: no pickle, no code) and ``manifest.json`` with the format, the software
versions, the network's settings, the sequences and label set, the normalisation, patch
size, training history and the SHA-256 of every file. Loading checks format, checksums and
that the weights fit the network, and names what is wrong; the loop's audit trail also holds
the manifest's own SHA-256, so an edited manifest is found too.

torch and MONAI are imported inside the functions (the Slicer start-up rule).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
import time
import warnings as _warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.files import sha256_file, write_json_atomic

from . import ranking
from .audit import utc_now
from .store import LoopFolder, round_name

FORMAT = "annotationqc-loop-model"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
WEIGHTS = "model.safetensors"
NETWORKS = ("unet", "segresnet")
UNCERTAINTIES = ("mc-dropout", "tta")
#: test-time augmentations: flips of the (z, y, x) axes of a (N, C, z, y, x) tensor
TTA_FLIPS = ((), (4,), (3,), (2,), (3, 4), (2, 4), (2, 3), (2, 3, 4))
DEFAULT_PATCH = {"cpu": 32, "cuda": 96}
DEFAULT_FEATURES = {"cpu": 8, "cuda": 16}
NORMALISATION = {"transform": "monai.transforms.NormalizeIntensity", "nonzero": True, "channel_wise": True}


def software_versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("numpy", "SimpleITK", "torch", "monai", "safetensors", "slicer-clinical-mri"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def select_device(device: str = "auto"):
    """(torch.device, use AMP). ``auto`` takes a CUDA GPU when there is one."""
    import torch

    if device not in ("auto", "cpu", "cuda"):
        raise UserError(f"device {device!r} unknown; use auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available to PyTorch; use --device cpu or auto")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu"), False
    return torch.device("cuda"), True


def network_settings(name: str, in_channels: int, out_channels: int, features: int, dropout: float = 0.2) -> dict:
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
    from monai.networks.nets import SegResNet, UNet

    kw = dict(settings["kwargs"])
    if settings["name"] == "unet":
        return UNet(**kw)
    if "norm" in kw and isinstance(kw["norm"], list):
        kw["norm"] = tuple(kw["norm"])
    return SegResNet(**kw)


def _patch(patch, device_type: str) -> list[int]:
    """Patch size in (z, y, x) from a user's ``N`` or ``X,Y,Z``; multiples of 8."""
    if patch in (None, ""):
        return [DEFAULT_PATCH[device_type]] * 3
    try:
        parts = [int(v) for v in str(patch).split(",")]
    except ValueError:
        raise UserError(f"--patch {patch!r} is not N or X,Y,Z (whole numbers)") from None
    if len(parts) == 1:
        parts *= 3
    if len(parts) != 3 or any(p < 8 or p % 8 for p in parts):
        raise UserError(f"--patch {patch!r}: give one or three sizes, each a multiple of 8 (the network halves the "
                        "patch three times)")
    return parts[::-1]


def _normalise(channels: np.ndarray) -> np.ndarray:
    from monai.transforms import NormalizeIntensity

    t = NormalizeIntensity(nonzero=NORMALISATION["nonzero"], channel_wise=NORMALISATION["channel_wise"])
    return np.asarray(t(np.asarray(channels, dtype=np.float32)), dtype=np.float32)


def _channels(images: list[sitk.Image]) -> np.ndarray:
    return np.stack([sitk.GetArrayFromImage(im).astype(np.float32) for im in images])


def split_patients(patients: list[str], seed: int, val_fraction: float,
                   previous: dict | None = None) -> set[str]:
    """The validation patients (see the module docstring): the previous round's split is
    kept (``previous``: {"val": [...], "train": [...]}), and new patients, in the order of a
    hash of (seed, patient id), go to validation until it holds ``val_fraction`` of all
    patients (at least one), the others to training (at least one)."""
    uniq = sorted(set(patients))
    if len(uniq) < 2:
        raise UserError(f"the standard set holds {len(uniq)} patient(s); training needs at least 2 (one for internal "
                        "validation): add standard annotations first")

    def h(p):
        return hashlib.sha256(f"{seed}:{p}".encode()).hexdigest()

    prev = previous or {}
    val = set(prev.get("val", ())) & set(uniq)
    train = set(prev.get("train", ())) & set(uniq)
    target = max(1, round(val_fraction * len(uniq)))
    added = []
    for p in sorted(set(uniq) - val - train, key=h):
        if len(val) < target:
            val.add(p)
            added.append(p)
        else:
            train.add(p)
    if not train:  # every patient in validation: the last one added trains instead
        moved = added[-1] if added else max(val, key=h)
        val.discard(moved)
    return val


def _dice_labels(pred: np.ndarray, truth: np.ndarray, n_classes: int) -> float:
    """Mean Dice over the foreground labels (one label: the lesion Dice)."""
    from ClinicalMRICommonLib.agreement.segmentation_metrics import dice

    values = [dice(sitk.GetImageFromArray((truth == k).astype(np.uint8)),
                   sitk.GetImageFromArray((pred == k).astype(np.uint8))) for k in range(1, n_classes)]
    return float(np.mean(values))


def _infer(net, x, patch, device, amp: bool):
    import torch
    from monai.inferers import sliding_window_inference

    with torch.no_grad(), torch.autocast(device_type=device.type, enabled=amp):
        logits = sliding_window_inference(x, patch, 4, net, overlap=0.25, mode="gaussian")
    return torch.softmax(logits.float(), dim=1)


# ---------------------------------------------------------------------------------------
# Training a round


def train_round(loop: LoopFolder, *, epochs: int = 50, device: str = "auto", seed: int = 0, network: str = "unet",
                patch=None, features: int | None = None, val_fraction: float = 0.25, lr: float = 3e-3,
                samples_per_case: int = 2, cases_per_batch: int = 2, by: str = "",
                progress: Callable[[str], None] | None = None) -> dict:
    """Train the next round's network on the loop's standard set and store it in the loop
    folder; returns the round's summary (validation Dice, time per epoch, ...)."""
    say = progress or (lambda s: None)
    if epochs < 1:
        raise UserError(f"--epochs must be at least 1 (got {epochs})")
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"--val-fraction must lie between 0 and 1 (got {val_fraction})")
    _patch(patch, "cpu")  # the syntax, before the slow imports
    state = loop.state()
    standard = loop.standard_set(state)
    previous = None
    if state["rounds"]:
        last = state["rounds"][-1]["data"]
        previous = {"val": last.get("val_patients", []), "train": last.get("train_patients", [])}
    val_patients = split_patients([s["patient_id"] for s in standard], seed, val_fraction, previous)

    import torch
    from monai.data import DataLoader, Dataset
    from monai.losses import DiceCELoss
    from monai.transforms import (
        Compose,
        NormalizeIntensityd,
        RandCropByPosNegLabeld,
        RandFlipd,
        RandScaleIntensityd,
        RandShiftIntensityd,
        SpatialPadd,
    )
    from monai.utils import set_determinism

    dev, amp = select_device(device)
    patch_zyx = _patch(patch, dev.type)
    features = features or DEFAULT_FEATURES[dev.type]
    n_classes = len(loop.labels.get("keys", [None])) + 1
    settings = network_settings(network, len(loop.sequences), n_classes, features)
    round_no = loop.latest_round(state) + 1

    def load(s):
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(s["mask"]))).astype(np.uint8)
        return {"image": _channels(loop.read_images(s["case_id"])), "label": mask[None], "case_id": s["case_id"]}

    train_items = [load(s) for s in standard if s["patient_id"] not in val_patients]
    val_items = [load(s) for s in standard if s["patient_id"] in val_patients]
    say(f"round {round_no}: training a {network} on {len(train_items)} standard cases, validating on "
        f"{len(val_items)} (patients {', '.join(sorted(val_patients))}); device {dev.type}"
        f"{' with AMP' if amp else ''}, patch {patch_zyx[::-1]} (x,y,z), {epochs} epochs")

    set_determinism(seed=seed)
    torch.manual_seed(seed)
    keys = ["image", "label"]
    transforms = Compose([
        NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True),
        SpatialPadd(keys=keys, spatial_size=patch_zyx),
        RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=patch_zyx, pos=1, neg=1,
                               num_samples=samples_per_case),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=0), RandFlipd(keys=keys, prob=0.5, spatial_axis=1),
        RandFlipd(keys=keys, prob=0.5, spatial_axis=2),
        RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
        RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
    ])
    transforms.set_random_state(seed=seed)
    loader = DataLoader(Dataset([{k: it[k] for k in keys} for it in train_items], transforms),
                        batch_size=cases_per_batch, shuffle=True, num_workers=0,
                        generator=torch.Generator().manual_seed(seed))
    net = build_network(settings).to(dev)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    val_inputs = [(torch.as_tensor(_normalise(it["image"]))[None].to(dev), it["label"][0], it["case_id"])
                  for it in val_items]
    history, best = [], (-1.0, 0, None, {})
    t_all = time.perf_counter()
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        net.train()
        losses = []
        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore")  # MONAI warns for cases without foreground to sample
            for batch in loader:
                x, y = batch["image"].to(dev), batch["label"].to(dev)
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device_type=dev.type, enabled=amp):
                    loss = loss_fn(net(x), y)
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
                losses.append(float(loss.detach()))
        train_s = time.perf_counter() - t0
        net.eval()
        per_case = {}
        for x, truth, cid in val_inputs:
            pred = _infer(net, x, patch_zyx, dev, amp).argmax(1)[0].cpu().numpy().astype(np.uint8)
            per_case[cid] = _dice_labels(pred, truth, n_classes)
        vd = float(np.mean(list(per_case.values())))
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "val_dice": vd, "train_seconds": train_s,
                        "seconds": time.perf_counter() - t0})
        if vd >= best[0]:
            best = (vd, epoch, {k: v.detach().cpu().clone().contiguous() for k, v in net.state_dict().items()}, per_case)
        say(f"round {round_no} epoch {epoch}/{epochs}: loss {history[-1]['loss']:.4f}, validation Dice {vd:.3f} "
            f"(best {best[0]:.3f} at epoch {best[1]}), {history[-1]['seconds']:.1f} s")
    seconds = time.perf_counter() - t_all
    training = {"seed": seed, "epochs": epochs, "device": dev.type, "amp": amp, "lr": lr,
                "samples_per_case": samples_per_case, "cases_per_batch": cases_per_batch, "val_fraction": val_fraction,
                "train_cases": [it["case_id"] for it in train_items], "val_cases": [it["case_id"] for it in val_items],
                "val_patients": sorted(val_patients),
                "train_patients": sorted({s["patient_id"] for s in standard} - val_patients),
                "standard_sha256": {s["case_id"]: s["sha256"] for s in standard},
                "best_epoch": best[1], "val_dice": best[0], "val_dice_per_case": best[3], "history": history,
                "seconds": seconds, "seconds_per_epoch": float(np.mean([h["train_seconds"] for h in history]))}
    manifest = {"format": FORMAT, "format_version": FORMAT_VERSION, "created": utc_now(),
                "software": software_versions(), "network": settings, "sequences": loop.sequences,
                "labels": loop.labels, "n_classes": n_classes, "patch_zyx": patch_zyx, "normalisation": NORMALISATION,
                "training": training}
    return _commit_round(loop, best[2], manifest, by)


def _commit_round(loop: LoopFolder, state_dict: dict, manifest: dict, by: str) -> dict:
    from safetensors.torch import save_file

    from .audit import folder_lock

    rounds = loop.folder / "rounds"
    rounds.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".new-round.", dir=rounds))
    try:
        save_file(state_dict, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        with folder_lock(loop.folder):
            st = loop.state()
            round_no = loop.latest_round(st) + 1
            manifest["round"] = round_no
            manifest["files"] = {WEIGHTS: sha256_file(tmp / WEIGHTS)}
            write_json_atomic(tmp / MANIFEST, manifest)
            target = loop.model_dir(round_no)
            if target.exists():
                raise UserError(f"{target} exists without a record in the loop's audit trail; it is left untouched - "
                                "move it away and retrain")
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp, target)
            tr = manifest["training"]
            rec = loop.audit.append("train", by or "loop", {
                "round": round_no, "model": target.relative_to(loop.folder).as_posix(),
                "manifest_sha256": sha256_file(target / MANIFEST), "weights_sha256": manifest["files"][WEIGHTS],
                "network": manifest["network"]["name"], "train_cases": tr["train_cases"], "val_cases": tr["val_cases"],
                "val_patients": tr["val_patients"], "train_patients": tr["train_patients"],
                "val_dice": tr["val_dice"], "val_dice_per_case": tr["val_dice_per_case"], "best_epoch": tr["best_epoch"],
                "epochs": tr["epochs"], "seconds": tr["seconds"], "seconds_per_epoch": tr["seconds_per_epoch"],
                "device": tr["device"], "amp": tr["amp"], "seed": tr["seed"]})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"round": round_no, "model": str(target), **{k: rec["data"][k] for k in (
        "val_dice", "best_epoch", "epochs", "seconds", "seconds_per_epoch", "device", "amp", "train_cases",
        "val_cases", "val_dice_per_case")}}


# ---------------------------------------------------------------------------------------
# Loading a model


def read_manifest(model_dir: str | os.PathLike, manifest_sha256: str | None = None) -> dict:
    """The checked manifest of a loop model folder (format, version, every file's checksum)."""
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
    files = manifest.get("files") or {}
    if WEIGHTS not in files:
        raise UserError(f"model manifest {mf} lists no {WEIGHTS}; the model folder is incomplete - retrain")
    problems = []
    for rel, digest in files.items():
        f = d / rel
        if not f.is_file():
            problems.append(f"{rel} is missing")
        elif sha256_file(f) != digest:
            problems.append(f"{rel} was altered (checksum differs)")
    if problems:
        raise UserError(f"loop model {d} failed its integrity check: {'; '.join(problems)} - restore the original "
                        "model folder or retrain")
    return manifest


def load_model(model_dir: str | os.PathLike, device: str = "auto", manifest_sha256: str | None = None):
    """(network in eval mode on its device, manifest, device, use AMP) after the checks of
    :func:`read_manifest`; weights that do not fit the network are a UserError."""
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
# Prediction with uncertainty


def _enable_dropout(net) -> int:
    import torch

    n = 0
    for m in net.modules():
        if isinstance(m, (torch.nn.Dropout, torch.nn.Dropout2d, torch.nn.Dropout3d, torch.nn.AlphaDropout)):
            m.train()
            n += 1
    return n


def predict(net, manifest: dict, channels: np.ndarray, dev, amp: bool, uncertainty: str = "mc-dropout",
            samples: int = 8) -> dict:
    """Proposal (label map, the network in eval mode), the voxel-wise variance of the
    foreground probability over ``samples`` stochastic predictions, and the case statistics
    (ranking.sample_statistics) plus the diversity descriptor."""
    import torch

    if uncertainty not in UNCERTAINTIES:
        raise UserError(f"uncertainty {uncertainty!r} unknown; use {' or '.join(UNCERTAINTIES)}")
    if samples < 2 or (uncertainty == "tta" and samples > len(TTA_FLIPS)):
        raise UserError(f"--samples must lie between 2 and {len(TTA_FLIPS) if uncertainty == 'tta' else 'any'} for "
                        f"{uncertainty} (got {samples})")
    norm = _normalise(channels)
    x = torch.as_tensor(norm)[None].to(dev)
    patch = manifest["patch_zyx"]
    net.eval()
    probs = _infer(net, x, patch, dev, amp)
    proposal = probs.argmax(1)[0].cpu().numpy().astype(np.uint8)
    fg = []
    try:
        if uncertainty == "mc-dropout":
            if not _enable_dropout(net):
                raise UserError(f"the {manifest['network']['name']} network has no dropout layer; use --uncertainty tta")
            for _ in range(samples):
                fg.append(1.0 - _infer(net, x, patch, dev, amp)[0, 0].cpu().numpy())
        else:
            for axes in TTA_FLIPS[:samples]:
                xi = torch.flip(x, axes) if axes else x
                p = _infer(net, xi, patch, dev, amp)
                p = torch.flip(p, axes) if axes else p
                fg.append(1.0 - p[0, 0].cpu().numpy())
    finally:
        net.eval()
    stats = ranking.sample_statistics(np.stack(fg))
    stats["descriptor"] = ranking.descriptor(norm, proposal)
    stats["reason"] = ranking.reason(stats)
    stats["method"] = uncertainty
    return {"proposal": proposal, "variance": stats.pop("variance").astype(np.float32), "stats": stats}


def _on_grid(array: np.ndarray, reference: sitk.Image, pixel) -> sitk.Image:
    img = sitk.Cast(sitk.GetImageFromArray(array), pixel)
    img.CopyInformation(reference)
    return img


def prelabel(loop: LoopFolder, *, round_no: int | None = None, uncertainty: str = "mc-dropout", samples: int = 8,
             device: str = "auto", overwrite: bool = False, by: str = "",
             progress: Callable[[str], None] | None = None) -> dict:
    """Pre-label every pool case with a round's model (the latest by default): proposal
    masks, uncertainty maps and per-case scores under ``proposals/round-NNN/``. Cases in the
    standard set or sent back to be redrawn are never touched, nor is any human mask."""
    from .audit import folder_lock

    say = progress or (lambda s: None)
    st = loop.state()
    latest = loop.latest_round(st)
    if latest == 0:
        raise UserError(f"loop {loop.folder} has no trained model yet; run 'annotation-qc loop train' first")
    r = latest if round_no is None else int(round_no)
    if not 1 <= r <= latest:
        raise UserError(f"round {r} does not exist (rounds 1..{latest})")
    train = st["rounds"][r - 1]["data"]
    net, manifest, dev, amp = load_model(loop.folder / train["model"], device, train["manifest_sha256"])
    pool = sorted(c for c, v in st["cases"].items() if v["status"] == "pool")
    out_dir = loop.folder / "proposals" / round_name(r)
    if r in st["prelabels"]:
        reviewed = [rv for c in st["cases"].values() for rv in c["reviews"] if rv["data"].get("proposal_round") == r]
        if reviewed:
            raise UserError(f"the proposals of round {r} were already reviewed ({len(reviewed)} review(s) refer to them); "
                            "they are kept as the record of what was proposed - train a new round to pre-label again")
        if not overwrite:
            raise UserError(f"{out_dir} already holds the proposals of round {r}; pass --overwrite to replace them")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    entries, details = {}, {}
    t_all = time.perf_counter()
    try:
        for i, cid in enumerate(pool, start=1):
            t0 = time.perf_counter()
            images = loop.read_images(cid)
            res = predict(net, manifest, _channels(images), dev, amp, uncertainty, samples)
            prop_path, unc_path = loop.proposal_paths(cid, r)
            p_tmp, u_tmp = tmp / prop_path.name, tmp / unc_path.name
            sitk.WriteImage(_on_grid(res["proposal"], images[0], sitk.sitkUInt8), str(p_tmp), True)
            sitk.WriteImage(_on_grid(res["variance"], images[0], sitk.sitkFloat32), str(u_tmp), True)
            s = res["stats"]
            entries[cid] = {"proposal": prop_path.relative_to(loop.folder).as_posix(),
                            "proposal_sha256": sha256_file(p_tmp),
                            "uncertainty": unc_path.relative_to(loop.folder).as_posix(),
                            "uncertainty_sha256": sha256_file(u_tmp), "score": s["score"],
                            "proposal_voxels": int(np.count_nonzero(res["proposal"]))}
            details[cid] = {k: v for k, v in s.items()}
            say(f"prelabel round {r}: case {cid} ({i}/{len(pool)}): uncertainty {s['score']:.3f}, "
                f"{entries[cid]['proposal_voxels']} voxels proposed, {time.perf_counter() - t0:.1f} s")
        seconds = time.perf_counter() - t_all
        write_json_atomic(tmp / "prelabel.json", {"round": r, "method": uncertainty, "samples": samples,
                                                  "cases": details})
        with folder_lock(loop.folder):
            st2 = loop.state()
            if loop.latest_round(st2) < r or (r in st2["prelabels"] and not overwrite):
                raise UserError(f"the loop changed while pre-labelling (round {r} was pre-labelled by another command); "
                                "nothing was written")
            old = None
            if out_dir.exists():
                old = out_dir.with_name(f".{out_dir.name}.replaced")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(out_dir, old)
            os.replace(tmp, out_dir)
            rec = loop.audit.append("prelabel", by or "loop", {
                "round": r, "method": uncertainty, "samples": samples, "device": dev.type,
                "prelabel_sha256": sha256_file(out_dir / "prelabel.json"), "cases": entries,
                "seconds": seconds, "seconds_per_case": seconds / len(pool) if pool else None})
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"round": r, "method": uncertainty, "samples": samples, "cases": len(entries), "folder": str(out_dir),
            "seconds": seconds, "seconds_per_case": rec["data"]["seconds_per_case"],
            "scores": {c: e["score"] for c, e in entries.items()}}


def queue(loop: LoopFolder, n: int, diversity: float = 0.5) -> dict:
    """The active-learning sample: the ``n`` pool cases to review next from the latest
    round's proposals (ranking.diverse_queue)."""
    st = loop.state()
    r = loop.latest_round(st)
    if r == 0:
        raise UserError(f"loop {loop.folder} has no trained model yet; run 'loop train' and 'loop prelabel' first")
    if r not in st["prelabels"]:
        raise UserError(f"the latest model (round {r}) has not pre-labelled the pool yet; run 'loop prelabel' first")
    if n < 1:
        raise UserError(f"--n must be at least 1 (got {n})")
    if not 0.0 <= diversity <= 1.0:
        raise UserError(f"--diversity must lie between 0 and 1 (got {diversity})")
    pre = st["prelabels"][r]["data"]
    pj = loop.folder / "proposals" / round_name(r) / "prelabel.json"
    if not pj.is_file() or sha256_file(pj) != pre["prelabel_sha256"]:
        raise UserError(f"{pj} is missing or was altered after pre-labelling; run 'loop prelabel --overwrite' again")
    details = json.loads(pj.read_text(encoding="utf-8"))["cases"]
    items = []
    for cid, e in pre["cases"].items():
        if st["cases"][cid]["status"] != "pool":
            continue
        d = details[cid]
        items.append({"case_id": cid, "score": e["score"], "descriptor": d["descriptor"], "reason": d["reason"],
                      "round": r, "proposal": e["proposal"], "uncertainty": e["uncertainty"]})
    ranked = ranking.diverse_queue(items, n, diversity)
    return {"round": r, "method": pre["method"], "pool_left": len(items), "diversity": diversity, "queue": ranked}


# ---------------------------------------------------------------------------------------
# Other modules' use: one proposal from a loop model


def propose(model_dir: str | os.PathLike, images, *, uncertainty: str = "mc-dropout", samples: int = 8,
            device: str = "auto") -> dict:
    """A loop model's proposal for one case. ``images``: a dict sequence -> SimpleITK image
    (names as the model's sequences, case-insensitive) or a list in the model's sequence
    order. Images on another grid than the first are resampled onto it (linear; listed in
    ``warnings``). Returns ``mask`` (UInt8 label map on the first image's grid),
    ``uncertainty`` (Float32 variance map), ``score``, ``reason``, ``round``, ``sequences``,
    ``labels`` and ``warnings``."""
    from ClinicalMRICommonLib.grids import grid_difference, same_grid

    net, manifest, dev, amp = load_model(model_dir, device)
    seqs = manifest["sequences"]
    if isinstance(images, dict):
        by_lower = {str(k).lower(): v for k, v in images.items()}
        missing = [s for s in seqs if s.lower() not in by_lower]
        if missing:
            raise UserError(f"loop model {model_dir} needs the sequence(s) {', '.join(seqs)}; missing: {', '.join(missing)}")
        ordered = [by_lower[s.lower()] for s in seqs]
    else:
        ordered = list(images)
        if len(ordered) != len(seqs):
            raise UserError(f"loop model {model_dir} needs {len(seqs)} image(s) ({', '.join(seqs)}); got {len(ordered)}")
    warnings = []
    ref = ordered[0]
    aligned = [ref]
    for s, im in zip(seqs[1:], ordered[1:]):
        if not same_grid(im, ref):
            warnings.append(f"{s} image resampled onto the {seqs[0]} grid ({grid_difference(im, ref)})")
            im = sitk.Resample(im, ref, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        aligned.append(im)
    res = predict(net, manifest, _channels(aligned), dev, amp, uncertainty, samples)
    return {"mask": _on_grid(res["proposal"], ref, sitk.sitkUInt8),
            "uncertainty": _on_grid(res["variance"], ref, sitk.sitkFloat32),
            "score": res["stats"]["score"], "reason": res["stats"]["reason"], "round": manifest.get("round"),
            "sequences": seqs, "labels": manifest["labels"], "warnings": warnings}
