"""Uncertainty statistics of a proposal and the active-learning queue (numpy).

The statistics are computed by :mod:`ClinicalMRICommonLib.segmentation_model`, the one
owner of the model's inference (:func:`sample_statistics` and :func:`reason` are its
functions, under the names the loop uses). Per case, from T stochastic predictions
(Monte-Carlo dropout samples or test-time augmentations) of the foreground probability p_t
(1 - background probability):

``variance`` map
    the voxel-wise variance of p_t over the T predictions (population variance, 0..0.25):
    where the predictions disagree about a voxel.
``score`` (the case score the queue ranks by)
    ``1 - mean pairwise Dice`` of the T thresholded predictions (p_t > 0.5): 0 when every
    prediction outlines the same voxels, towards 1 when they outline different ones. It is
    a fraction of the lesion, so a small lesion the model is unsure of ranks above a large
    one with an uncertain rim. When every prediction is empty the score is 0 (they agree
    there is nothing), and the reason says so: a lesion the model consistently misses is
    not found by uncertainty (the standard set must show such lesions).
``mean_variance_in_lesion``
    the mean variance over the voxels any prediction labels (for the report).

Diversity (:func:`diverse_queue`): each case has a descriptor, the z-scored image and the
proposal averaged over a coarse 4 x 4 x 4 grid of blocks (where the bright and the labelled
parts lie). Cases are taken greedily: the next one maximises
``score / max score x (1 - weight x max(0, similarity to the cases already queued))`` with the
cosine similarity of the descriptors, so near-identical cases are not all queued at once.
"""

from __future__ import annotations

import numpy as np
from ClinicalMRICommonLib.segmentation_model import sample_statistics
from ClinicalMRICommonLib.segmentation_model import uncertainty_reason as reason

__all__ = ["BLOCKS", "descriptor", "diverse_queue", "reason", "sample_statistics"]

BLOCKS = 4


def _block_means(a: np.ndarray, blocks: int = BLOCKS) -> np.ndarray:
    out = np.empty((blocks,) * a.ndim, dtype=np.float64)
    edges = [np.linspace(0, n, blocks + 1).astype(int) for n in a.shape]
    for idx in np.ndindex(*out.shape):
        sl = tuple(slice(e[i], max(e[i + 1], e[i] + 1)) for e, i in zip(edges, idx))
        out[idx] = float(a[sl].mean())
    return out.ravel()


def descriptor(channels: np.ndarray, proposal: np.ndarray) -> list[float]:
    """The case's diversity descriptor: block means of each z-scored channel (C, z, y, x) and
    of the proposal's foreground."""
    parts = []
    for ch in np.asarray(channels, dtype=np.float64):
        sd = ch.std()
        parts.append(_block_means((ch - ch.mean()) / (sd if sd > 0 else 1.0)))
    parts.append(_block_means((np.asarray(proposal) != 0).astype(np.float64)) * 4.0)
    return np.concatenate(parts).round(5).tolist()


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    return float(a @ b / (na * nb)) if na > 0 and nb > 0 else 0.0


def diverse_queue(items: list[dict], n: int, weight: float = 0.5) -> list[dict]:
    """The ``n`` cases to review next. ``items``: dicts with case_id, score, descriptor and
    reason. Returns rank, case_id, score (uncertainty), priority (with the diversity term),
    similar_to / similarity (most similar case already queued) and why."""
    if n < 1:
        raise ValueError("n must be at least 1")
    if not 0.0 <= weight <= 1.0:
        raise ValueError("weight must lie in [0, 1]")
    remaining = sorted(items, key=lambda it: (-it["score"], it["case_id"]))
    top = max((it["score"] for it in remaining), default=0.0)
    vecs = {it["case_id"]: np.asarray(it["descriptor"], dtype=np.float64) for it in remaining}
    chosen: list[dict] = []
    while remaining and len(chosen) < n:
        best = None
        for it in remaining:
            sim, like = 0.0, None
            for c in chosen:
                s = _cosine(vecs[it["case_id"]], vecs[c["case_id"]])
                if like is None or s > sim:
                    sim, like = s, c["case_id"]
            rel = it["score"] / top if top > 0 else 0.0
            priority = rel * (1.0 - weight * max(0.0, sim))
            if best is None or priority > best[1] + 1e-12:  # ties: the higher score, then the case id
                best = (it, priority, sim, like)
        it, priority, sim, like = best
        why = f"uncertainty {it['score']:.3f}: {it['reason']}"
        if like is not None:
            why += (f"; priority {priority:.2f} = {it['score'] / top if top > 0 else 0.0:.2f} of the top uncertainty x "
                    f"{1.0 - weight * max(0.0, sim):.2f} for its similarity {sim:.2f} to queued case {like}")
        chosen.append({"rank": len(chosen) + 1, "case_id": it["case_id"], "score": it["score"],
                       "priority": priority, "similar_to": like, "similarity": sim if like else None, "why": why,
                       **{k: it[k] for k in ("round", "proposal", "uncertainty") if k in it}})
        remaining.remove(it)
    return chosen
