"""The loop's network: training a round and pre-labelling the pool with uncertainty.

The network, its model bundle (safetensors + checksummed manifest), loading and inference
with uncertainty live in :mod:`ClinicalMRICommonLib.segmentation_model`, which every module
using a trained loop model reads (``stroke-lesion candidate --loop-model`` calls its
``propose``); this module trains (and writes the bundle through it) and applies it to the
loop's pool.

Training is built on MONAI: a ``monai.networks.nets`` UNet (default; dropout in every
convolution, so Monte-Carlo dropout samples the network) or SegResNet; ``DiceCELoss`` (soft
Dice + cross entropy on the softmax); ``NormalizeIntensityd`` (z-score per case and channel
over the non-zero voxels), ``SpatialPadd`` + ``RandCropByPosNegLabeld`` (patches centred on
lesion and on background voxels 1:1), flips on the three axes and random intensity
scaling/shifting as augmentation; ``sliding_window_inference`` (Gaussian-weighted, 25 %
overlap) for validation and prediction. The images are used on the case's voxel grid (no
resampling to a common spacing: the loop's cases come from one protocol).

Patient-level internal validation (:func:`split_patients`): all cases of a patient are on
one side. The split is stable: a patient stays on its side in every later round (the train
record lists both sides), and new patients, taken in the order of a hash of (seed, patient
id), fill the validation side up to ``val_fraction`` of all patients (at least one patient
each side). Rounds are therefore compared on the same validation patients plus new ones.
The round's model is the epoch with the best validation Dice; the loop's audit trail holds
the manifest's own SHA-256, so an edited manifest is found too.

torch and MONAI are imported inside the functions (the Slicer start-up rule).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
import warnings as _warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from ClinicalMRICommonLib import segmentation_model as sm
from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.files import sha256_file, verify_image_file, write_json_atomic

from . import ranking
from .store import LoopFolder, round_name

DEFAULT_PATCH = {"cpu": 32, "cuda": 96}
DEFAULT_FEATURES = {"cpu": 8, "cuda": 16}

# The shared model's names as this module had them (benchmarks/bench_loop.py, older callers).
FORMAT, FORMAT_VERSION, MANIFEST, WEIGHTS = sm.FORMAT, sm.FORMAT_VERSION, sm.MANIFEST, sm.WEIGHTS
read_manifest, load_model, propose = sm.read_manifest, sm.load_model, sm.propose
_normalise, _channels, _infer = sm.normalise, sm.image_channels, sm.sliding_window_probabilities


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

    dev, amp = sm.select_device(device)
    patch_zyx = _patch(patch, dev.type)
    features = features or DEFAULT_FEATURES[dev.type]
    n_classes = len(loop.labels.get("keys", [None])) + 1
    settings = sm.network_settings(network, len(loop.sequences), n_classes, features)
    round_no = loop.latest_round(state) + 1

    def load(s):
        mask = sitk.GetArrayFromImage(sitk.ReadImage(str(s["mask"]))).astype(np.uint8)
        return {"image": sm.image_channels(loop.read_images(s["case_id"])), "label": mask[None], "case_id": s["case_id"]}

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
    net = sm.build_network(settings).to(dev)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    val_inputs = [(torch.as_tensor(sm.normalise(it["image"]))[None].to(dev), it["label"][0], it["case_id"])
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
            pred = sm.sliding_window_probabilities(net, x, patch_zyx, dev, amp).argmax(1)[0].cpu().numpy().astype(np.uint8)
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
    manifest = {"network": settings, "sequences": loop.sequences, "labels": loop.labels, "n_classes": n_classes,
                "patch_zyx": patch_zyx, "normalisation": sm.NORMALISATION, "training": training}
    return _commit_round(loop, best[2], manifest, by)


def _commit_round(loop: LoopFolder, state_dict: dict, manifest: dict, by: str) -> dict:
    """Under the folder lock: the next round's number, its bundle written by the shared
    writer (a new folder, never a replaced one), then the train record; a bundle whose
    record could not be appended is removed again."""
    from .audit import folder_lock

    with folder_lock(loop.folder):
        round_no = loop.latest_round(loop.state()) + 1
        target = loop.model_dir(round_no)
        if target.exists():
            raise UserError(f"{target} exists without a record in the loop's audit trail; it is left untouched - "
                            "move it away and retrain")
        written = sm.write_bundle(target, state_dict, {**manifest, "round": round_no})
        tr = manifest["training"]
        try:
            rec = loop.audit.append("train", by or "loop", {
                "round": round_no, "model": target.relative_to(loop.folder).as_posix(),
                "manifest_sha256": sha256_file(target / sm.MANIFEST), "weights_sha256": written["files"][sm.WEIGHTS],
                "network": manifest["network"]["name"], "train_cases": tr["train_cases"], "val_cases": tr["val_cases"],
                "val_patients": tr["val_patients"], "train_patients": tr["train_patients"],
                "val_dice": tr["val_dice"], "val_dice_per_case": tr["val_dice_per_case"], "best_epoch": tr["best_epoch"],
                "epochs": tr["epochs"], "seconds": tr["seconds"], "seconds_per_epoch": tr["seconds_per_epoch"],
                "device": tr["device"], "amp": tr["amp"], "seed": tr["seed"]})
        except BaseException:
            shutil.rmtree(target, ignore_errors=True)
            raise
    return {"round": round_no, "model": str(target), **{k: rec["data"][k] for k in (
        "val_dice", "best_epoch", "epochs", "seconds", "seconds_per_epoch", "device", "amp", "train_cases",
        "val_cases", "val_dice_per_case")}}


# ---------------------------------------------------------------------------------------
# Pre-labelling the pool


def predict(net, manifest: dict, channels: np.ndarray, dev, amp: bool, uncertainty: str = "mc-dropout",
            samples: int = 8) -> dict:
    """:func:`ClinicalMRICommonLib.segmentation_model.predict` plus the case's diversity
    descriptor for the queue (ranking.descriptor) in ``stats``."""
    res = sm.predict(net, manifest, channels, dev, amp, uncertainty, samples)
    res["stats"]["descriptor"] = ranking.descriptor(res.pop("normalised"), res["proposal"])
    return res


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
    net, manifest, dev, amp = sm.load_model(loop.folder / train["model"], device, train["manifest_sha256"])
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
            res = predict(net, manifest, sm.image_channels(images), dev, amp, uncertainty, samples)
            prop_path, unc_path = loop.proposal_paths(cid, r)
            p_tmp, u_tmp = tmp / prop_path.name, tmp / unc_path.name
            for img, path in ((sm.on_grid(res["proposal"], images[0], sitk.sitkUInt8), p_tmp),
                              (sm.on_grid(res["variance"], images[0], sitk.sitkFloat32), u_tmp)):
                sitk.WriteImage(img, str(path), True)
                # read back before the staged folder is published: SimpleITK reports no short write
                verify_image_file(path, img, final=out_dir / path.name, what="proposal")
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
