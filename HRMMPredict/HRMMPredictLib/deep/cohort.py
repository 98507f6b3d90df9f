"""2.5D inputs of the deep model for a cohort and for one case, cached like the radiomics.

One function, :func:`lesion_stack`, turns a lesion's T1WI, T2WI, FS-T2WI and ROI into the
network's uint8 (3, size, size) stack with :func:`HRMMPredictLib.deep.input.stack_25d`;
training (:func:`cohort_stacks`) and prediction (:func:`HRMMPredictLib.predict.predict_case`)
both call it, with the crop settings stored in the model bundle (:class:`DeepInputConfig`).

The images are used as stored (no N4, no radiomics normalisation): the paper builds the
crops from the PNG-exported slices and rescales each crop to 0-255 by itself.

Cache (in the cohort cache folder beside the radiomics entries)::

    <cache>/stacks_25d/<key>.npz                 stack (uint8 3 x S x S) + roi (bool S x S),
                                                 read with allow_pickle=False
    <cache>/stacks_25d/<key>.json                where each crop came from (slice, box, orientation)
    <cache>/stacks_25d/<lesion id>_<key16>.png   preview for people (3 channels + RGB composite,
                                                 ROI outlined)

``key`` hashes the four files' contents (SHA-256, as the radiomics cache), the crop
settings and the Pillow/SimpleITK/numpy versions that compute the crop, so a changed image,
ROI or setting is recomputed and nothing else is.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import pandas as pd
import SimpleITK as sitk

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.files import atomic_path, write_json_atomic
from ClinicalMRICommonLib.images import check_finite, read_image
from ClinicalMRICommonLib.masks import read_mask
from HRMMPredictLib.deep.input import (DEFAULT_MARGIN, DEFAULT_SIZE, DEFAULT_UNSHARP, crop_25d, save_preview_png,
                                       stack_25d)
from HRMMPredictLib.roi import MIN_ROI_VOXELS
from HRMMPredictLib.sequences import CHANNEL_LABELS, SEQUENCES, sequence_label

CACHE_SUBDIR = "stacks_25d"
STACK_FORMAT = "hrmm-stack25d-v2"          # bump when lesion_stack's output changes for the same inputs


@dataclass(frozen=True)
class DeepInputConfig:
    """Settings of the 2.5D crop (defaults: the paper; see :mod:`HRMMPredictLib.deep.input`)."""

    margin: int = DEFAULT_MARGIN
    size: int = DEFAULT_SIZE
    intensity: str = "minmax"
    unsharp: tuple[float, int, int] | None = DEFAULT_UNSHARP
    quarter_turns: int = 0              # upright sagittal input: rows S->I, columns A->P

    def crop_kwargs(self) -> dict:
        return {"margin": int(self.margin), "size": int(self.size), "intensity": self.intensity,
                "unsharp": None if self.unsharp is None else tuple(self.unsharp),
                "quarter_turns": int(self.quarter_turns)}

    def to_dict(self) -> dict:
        d = asdict(self)
        d["unsharp"] = None if self.unsharp is None else [float(self.unsharp[0]), int(self.unsharp[1]),
                                                          int(self.unsharp[2])]
        return d

    @classmethod
    def from_dict(cls, d: Mapping | None) -> "DeepInputConfig":
        d = dict(d or {})
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(d) - known)
        if unknown:
            raise UserError(f"unknown 2.5D input setting(s) {', '.join(unknown)}; the model bundle is from "
                            "another version")
        if d.get("unsharp") is not None:
            r, p, t = d["unsharp"]
            d["unsharp"] = (float(r), int(p), int(t))
        return cls(**d)


def _versions() -> str:
    import PIL

    return f"{STACK_FORMAT}|Pillow {PIL.__version__}|SimpleITK {sitk.Version_VersionString()}|numpy {np.__version__}"


def stack_key(paths: Mapping[str, str | os.PathLike], cfg: DeepInputConfig) -> str:
    """Cache key of one lesion's stack: file contents (t1, t2, fst2, roi), settings, versions."""
    from HRMMPredictLib.radiomics.features import file_sha256  # one owner of file hashing (memoised)

    h = hashlib.sha256()
    for part in [file_sha256(paths[k]) for k in (*SEQUENCES, "roi")] + [
            json.dumps(cfg.to_dict(), sort_keys=True), _versions()]:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


# ---------------------------------------------------------------------------------------
# One lesion


def lesion_stack(images: Mapping[str, sitk.Image], roi: sitk.Image | Mapping[str, sitk.Image],
                 cfg: DeepInputConfig | None = None) -> tuple[np.ndarray, dict]:
    """The network input of one lesion: uint8 (3, size, size), channels T1WI, T2WI, FS-T2WI.

    ``images``: ``{"t1", "t2", "fst2"}`` -> image; ``roi``: one mask on the images' common
    grid (the cohort case: :func:`HRMMPredictLib.deep.input.stack_25d`), or ``{sequence:
    mask}`` with each mask on its own sequence's grid (Slicer scenes whose series differ in
    geometry): then each channel is :func:`~HRMMPredictLib.deep.input.crop_25d` of its own
    sequence and mask, which is what ``stack_25d`` does with one shared mask.

    Returns ``(stack, info)``; ``info`` holds ``roi`` (bool (size, size), the T1WI crop's ROI,
    for previews) and ``crops``: per sequence the slice, box and orientation (JSON-able).
    """
    cfg = cfg or DeepInputConfig()
    for s in SEQUENCES:
        if images.get(s) is None:
            raise UserError(f"the {sequence_label(s)} image is missing; the 2.5D input "
                            "needs T1WI, T2WI and FS-T2WI")
    if isinstance(roi, Mapping):
        crops = [crop_25d(images[s], roi[s], what=name, **cfg.crop_kwargs())
                 for s, name in zip(SEQUENCES, CHANNEL_LABELS)]
        stack = np.stack([c["array"] for c in crops]).astype(np.uint8)
    else:
        stack, crops = stack_25d(*(images[s] for s in SEQUENCES), roi, return_crops=True,
                                 **cfg.crop_kwargs())
    return stack, {"roi": crops[0]["roi"], "crops": crop_records(crops)}


def crop_records(crops: Iterable[dict]) -> dict:
    """JSON-able summary of :func:`crop_25d` results, keyed by sequence name."""
    out = {}
    for name, c in zip(CHANNEL_LABELS, crops):
        out[name] = {"slice_axis": int(c["slice_axis"]), "slice_index": int(c["slice_index"]),
                     "plane": c["plane"], "roi_area": int(c["roi_area"]), "bbox": [int(v) for v in c["bbox"]],
                     "orientation": c["orientation"], "slice_axis_rule": c["slice_axis_rule"]}
    return out


def preview_png_bytes(stack: np.ndarray, roi: np.ndarray | None = None, orientation: str | None = None) -> bytes:
    """The :func:`save_preview_png` picture as PNG bytes (for a JSON answer or a panel)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        p = save_preview_png(stack, Path(tmp) / "preview.png", roi=roi, orientation=orientation)
        return p.read_bytes()


def preview_base64(stack: np.ndarray, roi: np.ndarray | None = None, orientation: str | None = None) -> str:
    return base64.b64encode(preview_png_bytes(stack, roi, orientation)).decode("ascii")


def read_lesion_images(paths: Mapping[str, str | os.PathLike]) -> tuple[dict[str, sitk.Image], sitk.Image]:
    """Read a cohort row's three sequences and its ROI (checked, on the first sequence's grid:
    the cohort manifest guarantees that the three share it)."""
    images = {}
    for s in SEQUENCES:
        img = read_image(paths[s], f"{sequence_label(s)} image")
        check_finite(img, paths[s], f"{sequence_label(s)} image")
        images[s] = img
    mask = read_mask(paths["roi"], images[SEQUENCES[0]], what="ROI", min_voxels=MIN_ROI_VOXELS)
    return images, mask


# ---------------------------------------------------------------------------------------
# A cohort, cached


def _safe_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", str(s))[:80] or "lesion"


def _load_entry(npz: Path, size: int) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with np.load(npz, allow_pickle=False) as z:
            stack, roi = np.asarray(z["stack"]), np.asarray(z["roi"])
    except (OSError, ValueError, KeyError, EOFError):
        return None  # damaged entry: recompute
    if stack.shape != (3, size, size) or stack.dtype != np.uint8 or roi.shape != (size, size):
        return None
    return stack, roi.astype(bool)


def cohort_stacks(cohort: pd.DataFrame, cache_dir: str | os.PathLike | None, cfg: DeepInputConfig | None = None,
                  progress: Callable[[int, int, str], None] | None = None,
                  lesion_ids: Iterable[str] | None = None) -> tuple[np.ndarray, pd.DataFrame]:
    """2.5D stacks of a cohort's lesions (rows in the manifest's order, or ``lesion_ids``'
    order), computed once and then read from ``cache_dir`` (see the module docstring).

    Returns ``(stacks uint8 (N, 3, S, S), info)`` where ``info`` has one row per lesion:
    ``lesion_id``, ``key``, ``preview`` (PNG path or empty without a cache), ``cached``
    and, per sequence, the slice index used.
    """
    cfg = cfg or DeepInputConfig()
    rows = cohort.set_index(cohort["lesion_id"].astype(str), drop=False)
    ids = [str(i) for i in (lesion_ids if lesion_ids is not None else rows.index)]
    missing = [i for i in ids if i not in rows.index]
    if missing:
        raise UserError(f"lesion(s) {', '.join(missing[:5])} are not in the cohort manifest")
    folder = Path(cache_dir) / CACHE_SUBDIR if cache_dir else None
    if folder:
        folder.mkdir(parents=True, exist_ok=True)
    stacks = np.zeros((len(ids), 3, cfg.size, cfg.size), dtype=np.uint8)
    records = []
    n_cached = 0
    for i, lid in enumerate(ids):
        r = rows.loc[lid]
        paths = {k: r[k] for k in (*SEQUENCES, "roi")}
        key = stack_key(paths, cfg) if folder else ""
        entry = _load_entry(folder / f"{key}.npz", cfg.size) if folder and (folder / f"{key}.npz").is_file() else None
        meta_file = folder / f"{key}.json" if folder else None
        if entry is not None and meta_file.is_file():
            stack, roi = entry
            crops = json.loads(meta_file.read_text(encoding="utf-8"))
            n_cached += 1
            cached = True
        else:
            try:
                images, mask = read_lesion_images(paths)
                stack, info = lesion_stack(images, mask, cfg)
            except UserError as exc:
                raise UserError(f"2.5D input of lesion {lid}: {exc}") from None
            roi, crops = info["roi"], info["crops"]
            cached = False
            if folder:
                with atomic_path(folder / f"{key}.npz") as tmp:
                    np.savez_compressed(tmp, stack=stack, roi=roi)
                write_json_atomic(meta_file, crops)
        preview = ""
        if folder:
            p = folder / f"{_safe_name(lid)}_{key[:16]}.png"
            if not p.is_file():
                save_preview_png(stack, p, roi=roi, orientation=next(iter(crops.values()))["orientation"])
            preview = str(p)
        stacks[i] = stack
        rec = {"lesion_id": lid, "key": key, "preview": preview, "cached": cached}
        for name, c in crops.items():
            rec[f"slice_{name}"] = c["slice_index"]
        rec["orientation"] = next(iter(crops.values()))["orientation"]
        records.append(rec)
        if progress:
            progress(i + 1, len(ids), f"{lid}{' (cached)' if cached else ''}")
    return stacks, pd.DataFrame(records)
