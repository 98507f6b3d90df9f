"""The HRMM deep model: MONAI's 2D DenseNet169 on the 3-channel 2.5D crops.

- :func:`build_densenet169`: ``monai.networks.nets.DenseNet169(spatial_dims=2,
  in_channels=3, out_channels=2)``, optionally initialised from ImageNet weights in a
  *local* file (torchvision's ``densenet169`` state dict, as .pth/.pt via
  ``torch.load(weights_only=True)`` or as .safetensors). Nothing is downloaded.
- :func:`select_device`: CUDA when available, else CPU; ``"cuda"`` without a GPU is a
  UserError saying why.
- :class:`DeepTrainConfig` / :func:`train_deep_model`: the paper's settings (Adamax,
  lr 1e-4, batch 16, 300 epochs, cross-entropy) with the epoch chosen on an internal
  validation split carved out of the training set (stratified, by patient), never on the
  held-out set. All images live in memory as one uint8 tensor on the training device;
  augmentation runs batched on that device, so a GPU never waits on a loader.
- :func:`predict_proba`, :func:`deep_features` (the pooled 1664-d output before the
  classifier), :func:`save_model` / :func:`load_model` (safetensors, no pickles).

Input convention: uint8 arrays (N, 3, H, W), channels T1WI, T2WI, FS-T2WI as made by
:func:`HRMMPredictLib.deep.input.stack_25d`; the network sees ``(x / 255 - mean) / std``
with ImageNet's channel means/SDs (so ImageNet initialisation sees what it expects). The
network is fully convolutional up to an adaptive pool, so any H, W >= 32 works (tests use
64 x 64); the method uses 224 x 224.

Reproducibility: a run is a pure function of (data, config, seed) on the CPU for a given
number of torch threads (the reduction order of the CPU kernels depends on it). On CUDA,
cuDNN autotuning and atomics make runs close but not bit-identical.
"""

from __future__ import annotations

import json
import math
import re
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.files import atomic_path, json_safe
from HRMMPredictLib.evaluation.stats import rank_auc
from HRMMPredictLib.sequences import CHANNEL_LABELS

N_FEATURES = 1664               # DenseNet169's channels after norm5
N_CLASSES = 2                   # 0 = SRMM, 1 = HRMM
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MODEL_FORMAT = "hrmm-densenet169"
MODEL_FORMAT_VERSION = "1"
ARCHITECTURE = "monai.networks.nets.DenseNet169(spatial_dims=2, in_channels=3, out_channels=2)"
MIN_SIZE = 32

_HEAD_KEYS = ("class_layers.out.weight", "class_layers.out.bias")
_TORCHVISION_LAYER = re.compile(
    r"^(.*\.denselayer\d+)\.(norm|relu|conv)\.?([12])\.(weight|bias|running_mean|running_var|num_batches_tracked)$")


# ---------------------------------------------------------------------------------------
# Network


def _densenet169(out_channels: int = N_CLASSES) -> nn.Module:
    from monai.networks.nets import DenseNet169

    return DenseNet169(spatial_dims=2, in_channels=3, out_channels=out_channels, pretrained=False)


def build_densenet169(pretrained_weights: str | Path | None = None) -> nn.Module:
    """MONAI DenseNet169 (2D, 3 input channels, 2 classes), randomly initialised (from
    torch's global RNG) or with its backbone loaded from a local ImageNet weights file.

    The classifier is always 2-class: the ImageNet head (1000 classes) in a torchvision
    file is left out and the new head keeps its fresh initialisation.
    """
    model = _densenet169()
    if pretrained_weights is not None:
        load_pretrained_weights(model, pretrained_weights)
    return model


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"pretrained weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path), device="cpu")
        else:
            sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt file, pickle with code in it, ...
        msg = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise UserError(f"pretrained weights file {path} could not be read as a state dict ({msg}); "
                        "give a .safetensors file or a PyTorch state dict (.pth/.pt) of plain tensors") from None
    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(sd, Mapping) and wrapper in sd and isinstance(sd[wrapper], Mapping):
            sd = sd[wrapper]
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"pretrained weights file {path} does not hold a state dict (name -> tensor)")
    return dict(sd)


def to_monai_key(key: str) -> str:
    """Map a torchvision DenseNet key onto MONAI's naming (``module.`` prefixes dropped).

    torchvision ``features.denseblock1.denselayer1.norm1.weight`` (and the older
    ``...norm.1.weight`` of the original checkpoints) become MONAI's
    ``features.denseblock1.denselayer1.layers.norm1.weight``, the same rename as MONAI's
    own ``monai.networks.nets.densenet._load_state_dict``; ``classifier.*`` becomes
    ``class_layers.out.*``. Other keys (conv0, norm0, transitions, norm5) are the same.
    """
    while key.startswith("module."):
        key = key[len("module."):]
    m = _TORCHVISION_LAYER.match(key)
    if m:
        return f"{m.group(1)}.layers.{m.group(2)}{m.group(3)}.{m.group(4)}"
    if key.startswith("classifier."):
        return "class_layers.out." + key[len("classifier."):]
    return key


def _example(keys, n=3) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")


def load_pretrained_weights(model: nn.Module, path: str | Path) -> dict:
    """Load a local ImageNet (or other) DenseNet169 state dict into ``model``'s backbone.

    Every backbone tensor must be present with the right shape and nothing else may be in
    the file, otherwise a UserError names the file and the first mismatches. The head is
    loaded only when its shape fits (a 2-class head saved from this model); an ImageNet
    head is skipped. Returns a small report.
    """
    path = Path(path)
    raw = _read_state_dict(path)
    sd = {to_monai_key(k): v for k, v in raw.items()}
    own = model.state_dict()
    head = {k: sd.pop(k) for k in _HEAD_KEYS if k in sd}
    expected = {k for k in own if k not in _HEAD_KEYS}
    missing = {k for k in expected - set(sd) if not k.endswith("num_batches_tracked")}
    unexpected = set(sd) - expected
    shapes = {k for k in expected & set(sd) if tuple(sd[k].shape) != tuple(own[k].shape)}
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"{len(missing)} tensors missing ({_example(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors ({_example(unexpected)})")
        if shapes:
            k = sorted(shapes)[0]
            parts.append(f"{len(shapes)} tensors with other shapes (e.g. {k}: file {tuple(sd[k].shape)}, "
                         f"model {tuple(own[k].shape)})")
        raise UserError(f"pretrained weights file {path} does not match a 3-channel DenseNet169: "
                        + "; ".join(parts) + ". Use torchvision's ImageNet densenet169 weights "
                        "(densenet169-b2777c0a.pth) or a file saved from this model")
    head_loaded = all(k in head and tuple(head[k].shape) == tuple(own[k].shape) for k in _HEAD_KEYS)
    if head_loaded:
        sd.update(head)
    for k, v in own.items():   # num_batches_tracked (absent from old checkpoints), a skipped head
        if k not in sd:
            sd[k] = v
    model.load_state_dict({k: v.to(own[k].dtype) for k, v in sd.items()}, strict=True)
    return {"file": str(path), "tensors": len(raw), "head_loaded": head_loaded}


# ---------------------------------------------------------------------------------------
# Device


def select_device(requested: str | torch.device | None = "auto") -> tuple[torch.device, str]:
    """``auto`` -> the first CUDA GPU when one is usable, else the CPU. ``cpu``, ``cuda``
    and ``cuda:N`` are honoured or refused with the reason. Returns (device, description)."""
    req = str(requested if requested is not None else "auto").strip().lower()
    if req == "auto":
        if torch.cuda.is_available():
            return select_device("cuda")
        return torch.device("cpu"), (f"cpu ({torch.get_num_threads()} threads; no CUDA GPU visible, "
                                     "so training is slow)")
    if req == "cpu":
        return torch.device("cpu"), f"cpu ({torch.get_num_threads()} threads)"
    if req == "cuda" or req.startswith("cuda:"):
        if torch.version.cuda is None:
            raise UserError(f"device 'cuda' requested, but this PyTorch ({torch.__version__}) is a CPU-only build; "
                            "install a CUDA build of PyTorch or use --device cpu/auto")
        if not torch.cuda.is_available():
            raise UserError(f"device 'cuda' requested, but PyTorch (CUDA {torch.version.cuda}) sees no usable GPU "
                            "(no NVIDIA driver, or CUDA_VISIBLE_DEVICES hides it); use --device cpu/auto")
        index = 0
        if ":" in req:
            try:
                index = int(req.split(":", 1)[1])
            except ValueError:
                raise UserError(f"device {requested!r} is not valid; use auto, cpu, cuda or cuda:N") from None
        if not 0 <= index < torch.cuda.device_count():
            raise UserError(f"device {requested!r} requested, but only {torch.cuda.device_count()} GPU(s) are visible")
        props = torch.cuda.get_device_properties(index)
        return torch.device("cuda", index), (f"cuda:{index} ({props.name}, {props.total_memory / 2**30:.0f} GiB, "
                                             f"CUDA {torch.version.cuda})")
    raise UserError(f"device {requested!r} is not valid; use auto, cpu, cuda or cuda:N")


def _device(device) -> torch.device:
    return device if isinstance(device, torch.device) else select_device(device)[0]


# ---------------------------------------------------------------------------------------
# Training


@dataclass
class DeepTrainConfig:
    """Deep-model training settings. Defaults: the paper (Adamax, lr 1e-4, batch 16,
    300 epochs, cross-entropy) plus what the paper leaves open.

    Epoch selection: the epoch with the best AUC on the internal validation split
    (``selection_metric="auc"``; ties go to the lower validation loss, then the earlier
    epoch), or the lowest validation loss (``"loss"``). When the split holds one class
    only, the loss is used; with ``val_fraction=0`` the last epoch is kept.

    Augmentation (small cohort, sagittal spine crops), all on the training device:
    rotation within +/- ``rotation_degrees``; a random resized crop keeping
    ``crop_scale`` of the area at aspect ``crop_ratio`` (mild zoom/shift: the crop is
    already tight around the ROI, so large crops would cut the lesion out); a mirror of
    the cranio-caudal axis with probability ``flip_probability`` (a vertebral body is
    nearly symmetric top-bottom, but not front-back: the posterior wall, the basivertebral
    vein and the canal sit on one side, so there is no antero-posterior flip, and
    left-right is not an in-plane axis of a sagittal slice). ``flip_dim`` names the picture
    axis that carries cranio-caudal: ``"height"`` for the default upright crops of
    :mod:`HRMMPredictLib.deep.input` (``quarter_turns=0``: rows superior->inferior, columns
    anterior->posterior, whatever the storage order), ``"width"`` only with ``quarter_turns=1``. Per-channel contrast/brightness jitter of
    +/- ``intensity_jitter`` (MR intensities have no absolute scale).
    """

    epochs: int = 300
    batch_size: int = 16
    learning_rate: float = 1e-4
    optimizer: str = "adamax"
    weight_decay: float = 0.0
    loss: str = "cross_entropy"
    seed: int = 0
    val_fraction: float = 0.2
    selection_metric: str = "auc"
    augment: bool = True
    rotation_degrees: float = 10.0
    crop_scale: tuple[float, float] = (0.85, 1.0)
    crop_ratio: tuple[float, float] = (0.9, 1.1)
    flip_probability: float = 0.5
    flip_dim: str = "height"
    intensity_jitter: float = 0.1
    amp: bool = True              # mixed precision on CUDA (bfloat16 where supported); never on CPU
    channels_last: bool = True    # memory format on CUDA; never on CPU
    pretrained_weights: str | None = None
    eval_batch_size: int = 64

    def validate(self) -> "DeepTrainConfig":
        def bad(name, why):
            raise UserError(f"training setting {name}={getattr(self, name)!r} is not valid: {why}")

        if int(self.epochs) < 1:
            bad("epochs", "must be >= 1")
        if int(self.batch_size) < 2:
            bad("batch_size", "must be >= 2 (batch normalisation)")
        if not self.learning_rate > 0:
            bad("learning_rate", "must be > 0")
        if self.optimizer.lower() not in ("adamax", "adam", "adamw", "sgd"):
            bad("optimizer", "use adamax (the paper), adam, adamw or sgd")
        if self.loss != "cross_entropy":
            bad("loss", "only cross_entropy (the paper) is implemented")
        if not 0 <= self.val_fraction < 0.5:
            bad("val_fraction", "must be in [0, 0.5)")
        if self.selection_metric not in ("auc", "loss"):
            bad("selection_metric", "use auc or loss")
        if not (0 < self.crop_scale[0] <= self.crop_scale[1] <= 1):
            bad("crop_scale", "need 0 < low <= high <= 1")
        if not (0 < self.crop_ratio[0] <= self.crop_ratio[1]):
            bad("crop_ratio", "need 0 < low <= high")
        if not 0 <= self.flip_probability <= 1:
            bad("flip_probability", "must be in [0, 1]")
        if self.flip_dim not in ("width", "height"):
            bad("flip_dim", "use width or height")
        if not 0 <= self.intensity_jitter < 1:
            bad("intensity_jitter", "must be in [0, 1)")
        return self

    def to_dict(self) -> dict:
        return json_safe(asdict(self))

    @classmethod
    def from_dict(cls, d: Mapping | None) -> "DeepTrainConfig":
        d = dict(d or {})
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise UserError(f"unknown training setting(s): {', '.join(unknown)}")
        for k in ("crop_scale", "crop_ratio"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d).validate()


def _check_stacks(stacks, what="stacks") -> np.ndarray:
    a = np.asarray(stacks)
    if a.ndim != 4 or a.shape[1] != 3 or a.dtype != np.uint8:
        raise UserError(f"{what} must be a uint8 array (N, 3, H, W) of 2.5D crops, got {a.dtype} {a.shape}")
    if a.shape[0] < 1 or min(a.shape[2:]) < MIN_SIZE:
        raise UserError(f"{what} must hold at least one image of at least {MIN_SIZE} x {MIN_SIZE} pixels, "
                        f"got {a.shape}")
    return np.ascontiguousarray(a)


def internal_validation_split(labels, patient_ids=None, val_fraction: float = 0.2,
                              seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split the *training* set into (fit, validation) index arrays for epoch selection.

    Stratified by label and grouped by patient (no patient on both sides) with
    scikit-learn's ``StratifiedGroupKFold``: the first of ``round(1 / val_fraction)``
    shuffled folds is the validation part. ``val_fraction=0`` gives no validation part.
    """
    y = np.asarray(labels).astype(int)
    n = len(y)
    if val_fraction <= 0:
        return np.arange(n), np.array([], dtype=int)
    groups = np.arange(n) if patient_ids is None else np.unique(np.asarray(patient_ids).astype(str),
                                                                return_inverse=True)[1]
    n_splits = max(2, int(round(1.0 / val_fraction)))
    if len(np.unique(groups)) < n_splits:
        raise UserError(f"an internal validation fraction of {val_fraction} needs at least {n_splits} patients "
                        f"in the training set, got {len(np.unique(groups))}; lower val_fraction or set it to 0")
    from sklearn.model_selection import StratifiedGroupKFold

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "least populated class has only k members"
        cv = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        fit_idx, val_idx = next(iter(cv.split(np.zeros(n), y, groups)))
    if len(np.unique(y[fit_idx])) < 2:
        raise UserError("the internal validation split left one class only in the fitting part; "
                        "the training set needs more patients of each class (or val_fraction=0)")
    return np.sort(fit_idx), np.sort(val_idx)


def _normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return (x - mean) / std


def _augment(x: torch.Tensor, cfg: DeepTrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Random rotation + resized crop + cranio-caudal flip (one affine resampling) and
    intensity jitter, for a float batch in [0, 1]. Random numbers come from a CPU
    generator, so they are the same on every device."""
    b = x.shape[0]
    u = torch.rand((b, 8), generator=gen, dtype=torch.float64)
    angle = (u[:, 0] * 2 - 1) * math.radians(cfg.rotation_degrees)
    area = cfg.crop_scale[0] + u[:, 1] * (cfg.crop_scale[1] - cfg.crop_scale[0])
    log_r = math.log(cfg.crop_ratio[0]) + u[:, 2] * (math.log(cfg.crop_ratio[1]) - math.log(cfg.crop_ratio[0]))
    r = torch.exp(log_r)
    sx = torch.clamp(torch.sqrt(area * r), max=1.0)
    sy = torch.clamp(torch.sqrt(area / r), max=1.0)
    tx = (u[:, 3] * 2 - 1) * (1 - sx)
    ty = (u[:, 4] * 2 - 1) * (1 - sy)
    flip = torch.where(u[:, 5] < cfg.flip_probability, -1.0, 1.0).to(torch.float64)
    fx, fy = (flip, torch.ones_like(flip)) if cfg.flip_dim == "width" else (torch.ones_like(flip), flip)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([
        torch.stack([cos * sx * fx, -sin * sy * fy, tx], dim=1),
        torch.stack([sin * sx * fx, cos * sy * fy, ty], dim=1),
    ], dim=1).to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    j = cfg.intensity_jitter
    if j > 0:
        v = torch.rand((b, x.shape[1], 2), generator=gen, dtype=torch.float64).to(device=x.device, dtype=x.dtype)
        contrast = 1 + (v[..., 0] * 2 - 1) * j
        bright = (v[..., 1] * 2 - 1) * (j / 2)
        mean = x.mean(dim=(2, 3))
        x = (x - mean[..., None, None]) * contrast[..., None, None] + (mean + bright)[..., None, None]
        x = x.clamp(0, 1)
    return x


def _optimizer(cfg: DeepTrainConfig, params):
    name = cfg.optimizer.lower()
    if name == "adamax":
        return torch.optim.Adamax(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.learning_rate, momentum=0.9, weight_decay=cfg.weight_decay)


class _Runner:
    """Holds the device-side constants shared by training and inference."""

    def __init__(self, device: torch.device, channels_last: bool, amp: bool):
        self.device = device
        self.cuda = device.type == "cuda"
        self.channels_last = channels_last and self.cuda
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        self.amp_dtype = None
        if amp and self.cuda:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def prepare(self, xb_uint8: torch.Tensor, cfg: DeepTrainConfig | None = None,
                gen: torch.Generator | None = None) -> torch.Tensor:
        x = xb_uint8.to(torch.float32) / 255.0
        if cfg is not None and gen is not None:
            x = _augment(x, cfg, gen)
        x = _normalise(x, self.mean, self.std)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def autocast(self):
        if self.amp_dtype is None:
            return torch.autocast(device_type=self.device.type, enabled=False)
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)


@torch.inference_mode()
def _logits(model: nn.Module, x_dev: torch.Tensor, runner: _Runner, batch_size: int) -> torch.Tensor:
    out = []
    for s in range(0, x_dev.shape[0], batch_size):
        with runner.autocast():
            out.append(model(runner.prepare(x_dev[s:s + batch_size])).float())
    return torch.cat(out)


def train_deep_model(stacks, labels, patient_ids=None, config: DeepTrainConfig | None = None,
                     device: str | torch.device = "auto",
                     progress: Callable[[int, int, dict], None] | None = None) -> tuple[nn.Module, dict]:
    """Train DenseNet169 on 2.5D stacks (uint8 (N, 3, H, W)) with labels 0/1.

    ``patient_ids`` (one per stack) keep a patient's lesions on one side of the internal
    validation split. ``progress(epoch, epochs, metrics)`` is called after every epoch
    (1-based). Returns ``(model, history)``: the model (in eval mode, on ``device``) holds
    the weights of the selected epoch; ``history`` records per-epoch losses/AUCs, the
    selected epoch and why, the split, the device and the throughput.
    """
    cfg = (config or DeepTrainConfig()).validate()
    x = _check_stacks(stacks)
    y = np.asarray(labels)
    if y.shape != (x.shape[0],) or not np.isin(y, (0, 1)).all():
        raise UserError(f"labels must be {x.shape[0]} values of 0 (SRMM) or 1 (HRMM)")
    y = y.astype(np.int64)
    if patient_ids is not None and len(patient_ids) != len(y):
        raise UserError(f"patient_ids has {len(patient_ids)} entries for {len(y)} stacks")
    if len(np.unique(y)) < 2:
        raise UserError("the training set holds one class only; the deep model needs HRMM and SRMM lesions")
    dev, dev_desc = select_device(device) if not isinstance(device, torch.device) else (device, str(device))
    fit_idx, val_idx = internal_validation_split(y, patient_ids, cfg.val_fraction, cfg.seed)
    runner = _Runner(dev, cfg.channels_last, cfg.amp)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = build_densenet169(cfg.pretrained_weights)
    model.to(dev)
    if runner.channels_last:
        model.to(memory_format=torch.channels_last)
    opt = _optimizer(cfg, model.parameters())
    scaler = torch.amp.GradScaler("cuda") if runner.amp_dtype == torch.float16 else None
    loss_fn = nn.CrossEntropyLoss()

    x_dev = torch.from_numpy(x).to(dev)                       # all images in memory, uint8
    y_dev = torch.from_numpy(y).to(dev)
    rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    has_val = len(val_idx) > 0
    metric = cfg.selection_metric
    if has_val and metric == "auc" and len(np.unique(y[val_idx])) < 2:
        metric = "loss"
    val_x = x_dev[torch.from_numpy(val_idx).to(dev)] if has_val else None

    old_bench = torch.backends.cudnn.benchmark
    if runner.cuda:
        torch.backends.cudnn.benchmark = True
    history: dict = {"epochs": [], "device": dev_desc, "n_fit": int(len(fit_idx)), "n_val": int(len(val_idx)),
                     "fit_indices": fit_idx.tolist(), "val_indices": val_idx.tolist(),
                     "config": cfg.to_dict(), "amp": str(runner.amp_dtype).replace("torch.", "") if runner.amp_dtype
                     else "off", "channels_last": runner.channels_last}
    best = None
    best_key = None
    n_seen = 0
    t_train = 0.0
    t0 = time.perf_counter()
    try:
        for epoch in range(1, cfg.epochs + 1):
            te = time.perf_counter()
            model.train()
            perm = rng.permutation(fit_idx)
            loss_sum = torch.zeros((), device=dev)
            for s in range(0, len(perm), cfg.batch_size):
                bi = perm[s:s + cfg.batch_size]
                if len(bi) < 2:            # batch normalisation cannot train on one image
                    continue
                idx = torch.from_numpy(bi).to(dev)
                xb = runner.prepare(x_dev[idx], cfg if cfg.augment else None, gen if cfg.augment else None)
                with runner.autocast():
                    loss = loss_fn(model(xb).float(), y_dev[idx])
                opt.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(opt)
                    scaler.update()
                else:
                    loss.backward()
                    opt.step()
                loss_sum += loss.detach() * len(bi)
                n_seen += len(bi)
            if runner.cuda:
                torch.cuda.synchronize(dev)
            t_train += time.perf_counter() - te
            row = {"epoch": epoch, "train_loss": float(loss_sum.item()) / max(len(fit_idx), 1)}
            if has_val:
                model.eval()
                logits = _logits(model, val_x, runner, cfg.eval_batch_size)
                yv = y_dev[torch.from_numpy(val_idx).to(dev)]
                row["val_loss"] = float(F.cross_entropy(logits, yv).item())
                row["val_auc"] = rank_auc(y[val_idx], torch.softmax(logits, 1)[:, 1].cpu().numpy())
                key = ((row["val_auc"] if metric == "auc" else 0.0), -row["val_loss"])
                if best_key is None or key > best_key:
                    best_key = key
                    best = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    history["best_epoch"] = epoch
            row["seconds"] = time.perf_counter() - te
            history["epochs"].append(row)
            if progress is not None:
                progress(epoch, cfg.epochs, row)
    finally:
        torch.backends.cudnn.benchmark = old_bench
    if best is not None:
        model.load_state_dict(best)
        history["selection"] = (f"epoch {history['best_epoch']} of {cfg.epochs}: best internal-validation "
                                + ("AUC (ties: lower loss)" if metric == "auc" else "loss"))
        sel = history["epochs"][history["best_epoch"] - 1]
        history["best_val_auc"], history["best_val_loss"] = sel.get("val_auc"), sel.get("val_loss")
    else:
        history["best_epoch"] = cfg.epochs
        history["selection"] = "last epoch (no internal validation split)"
    history["selection_metric"] = metric if has_val else "none"
    history["seconds"] = time.perf_counter() - t0
    history["train_images_per_second"] = n_seen / t_train if t_train > 0 else None
    model.eval()
    return model, history


# ---------------------------------------------------------------------------------------
# Inference


def _run_inference(model: nn.Module, stacks, device, batch_size: int, head: bool) -> np.ndarray:
    x = _check_stacks(stacks)
    dev = _device(device)
    runner = _Runner(dev, channels_last=True, amp=False)      # fp32: features feed PCA, keep them exact
    model.to(dev).eval()
    if runner.channels_last:
        model.to(memory_format=torch.channels_last)
    out = []
    with torch.inference_mode():
        for s in range(0, x.shape[0], batch_size):
            xb = runner.prepare(torch.from_numpy(x[s:s + batch_size]).to(dev))
            if head:
                out.append(torch.softmax(model(xb).float(), dim=1))
            else:
                out.append(pooled_features(model, xb).float())
    return torch.cat(out).cpu().numpy().astype(np.float64)


def pooled_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The network's pooled output before the classifier: MONAI DenseNet's ``features``
    (ending in norm5), then ``class_layers`` without its last Linear (ReLU, global average
    pool, flatten) -> (B, 1664)."""
    cl = model.class_layers
    return cl.flatten(cl.pool(cl.relu(model.features(x))))


def predict_proba(model: nn.Module, stacks, device: str | torch.device = "auto", batch_size: int = 32) -> np.ndarray:
    """Class probabilities (N, 2): column 0 SRMM, column 1 HRMM (softmax of the logits)."""
    return _run_inference(model, stacks, device, batch_size, head=True)


def deep_features(model: nn.Module, stacks, device: str | torch.device = "auto", batch_size: int = 32) -> np.ndarray:
    """Deep features (N, 1664): the pooled output before the classifier (see
    :func:`pooled_features`); PCA to 256 is the caller's, fitted on training data only."""
    return _run_inference(model, stacks, device, batch_size, head=False)


# ---------------------------------------------------------------------------------------
# Files


def _versions() -> dict:
    import monai

    return {"torch": torch.__version__, "monai": monai.__version__}


def save_model(model: nn.Module, path: str | Path, metadata: Mapping | None = None) -> Path:
    """Write the network's weights as safetensors (cannot execute code when loaded), with
    the architecture, input normalisation, package versions and ``metadata`` (JSON-able:
    e.g. the training history summary) in the header. Written atomically."""
    from safetensors.torch import save_file

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    header = {
        "format": MODEL_FORMAT, "format_version": MODEL_FORMAT_VERSION, "architecture": ARCHITECTURE,
        "input": json.dumps({"channels": list(CHANNEL_LABELS), "dtype": "uint8", "scale": 255.0,
                             "mean": IMAGENET_MEAN, "std": IMAGENET_STD}),
        "versions": json.dumps(_versions()),
        "metadata": json.dumps(json_safe(dict(metadata or {}))),
    }
    final = Path(path)
    with atomic_path(final) as tmp:
        save_file(state, str(tmp), metadata=header)
    return final


def read_model_metadata(path: str | Path) -> dict:
    """The header of a file written by :func:`save_model` (format, architecture, input
    normalisation, versions, and the caller's metadata), checked for the format."""
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise UserError(f"deep model file not found: {p}")
    try:
        with safe_open(str(p), framework="pt") as f:
            header = dict(f.metadata() or {})
    except Exception as exc:
        raise UserError(f"deep model file {p} is not a readable safetensors file "
                        f"({str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__})") from None
    if header.get("format") != MODEL_FORMAT:
        raise UserError(f"deep model file {p} was not written by HRMMPredict (format {header.get('format')!r}, "
                        f"expected {MODEL_FORMAT!r})")
    if header.get("format_version") != MODEL_FORMAT_VERSION:
        raise UserError(f"deep model file {p} has format version {header.get('format_version')!r}; this "
                        f"HRMMPredict reads version {MODEL_FORMAT_VERSION}")
    out = {k: header[k] for k in ("format", "format_version", "architecture")}
    for k in ("input", "versions", "metadata"):
        out[k] = json.loads(header.get(k, "{}"))
    return out


def load_model(path: str | Path, device: str | torch.device = "cpu") -> nn.Module:
    """Load a model written by :func:`save_model` onto ``device`` (eval mode)."""
    from safetensors.torch import load_file

    p = Path(path)
    meta = read_model_metadata(p)
    if meta["architecture"] != ARCHITECTURE:
        raise UserError(f"deep model file {p} holds {meta['architecture']}, expected {ARCHITECTURE}")
    state = load_file(str(p), device="cpu")
    model = _densenet169()
    own = model.state_dict()
    missing, unexpected = set(own) - set(state), set(state) - set(own)
    shapes = {k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape)}
    if missing or unexpected or shapes:
        raise UserError(f"deep model file {p} does not match DenseNet169: {len(missing)} missing, "
                        f"{len(unexpected)} unexpected, {len(shapes)} mis-shaped tensors "
                        f"({_example(missing | unexpected | shapes)}); the file is damaged or from another version")
    model.load_state_dict(state, strict=True)
    return model.to(_device(device)).eval()


__all__ = [
    "N_FEATURES", "DeepTrainConfig", "build_densenet169", "load_pretrained_weights", "to_monai_key", "select_device",
    "internal_validation_split", "train_deep_model", "predict_proba", "deep_features", "pooled_features",
    "save_model", "load_model", "read_model_metadata",
]
