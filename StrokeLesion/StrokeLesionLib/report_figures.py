"""Pictures of the dataset quality report (acceptance.render_html): a thumbnail per case (the
consensus filled, annotators A and B outlined, on the DWI at the consensus' largest-lesion
slice) and the dataset's distributions of lesion volume, lesion count and A-vs-B Dice.

Both return PNG bytes (matplotlib's Agg backend, imported here, inside the functions: the
Slicer module's start-up does not load matplotlib). Images are shown in LPS voxel order
(ClinicalMRICommonLib.orientation.canonical): axial slices, anterior at the top, the
patient's left on the right (radiological convention).
"""

from __future__ import annotations

import io
import os

import numpy as np

#: Cases outside Tukey's fences (Q1 - 1.5 IQR, Q3 + 1.5 IQR) are named on the plots; for Dice
#: also every case below LOW_DICE (reader agreement this low needs a second look whatever the
#: rest of the dataset does; the study's default review threshold is 0.80).
TUKEY_K = 1.5
LOW_DICE = 0.5


def _pyplot():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def _read_lps(path: str | os.PathLike):
    import SimpleITK as sitk

    from ClinicalMRICommonLib.orientation import canonical
    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(canonical(img, "LPS"))


def largest_lesion_slice(consensus: np.ndarray, others: list[np.ndarray] = ()) -> int:
    """Index (numpy axis 0) of the slice where the consensus' largest lesion (26-connected)
    has its largest area; without a consensus lesion, the slice with most A or B voxels; the
    middle slice when all are empty."""
    from scipy import ndimage as ndi
    if consensus.any():
        lab, n = ndi.label(consensus, structure=np.ones((3, 3, 3), bool))
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        big = lab == int(np.argmax(sizes))
        return int(np.argmax(big.sum(axis=(1, 2))))
    union = np.zeros_like(consensus, dtype=bool)
    for o in others:
        if o is not None:
            union |= o
    if union.any():
        return int(np.argmax(union.sum(axis=(1, 2))))
    return consensus.shape[0] // 2


def case_thumbnail_png(dwi_path, consensus_path=None, a_path=None, b_path=None, title: str = "") -> bytes:
    """The DWI at the largest-lesion slice with the consensus filled (red, translucent) and
    the outlines of annotators A (cyan) and B (yellow)."""
    plt = _pyplot()
    dwi = _read_lps(dwi_path).astype(np.float64)
    if dwi.ndim == 4:
        dwi = dwi[..., -1]

    def mask(p):
        if p is None or not os.path.exists(p):
            return None
        m = _read_lps(p) != 0
        return m if m.shape == dwi.shape else None
    cons, a, b = mask(consensus_path), mask(a_path), mask(b_path)
    k = largest_lesion_slice(cons if cons is not None else np.zeros(dwi.shape, bool), [a, b])
    sl = dwi[k]
    lo, hi = np.percentile(sl[np.isfinite(sl)], (1, 99.5)) if np.isfinite(sl).any() else (0, 1)
    fig, ax = plt.subplots(figsize=(3.2, 3.2))
    ax.imshow(sl, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
    if cons is not None and cons[k].any():
        ax.imshow(np.ma.masked_where(~cons[k], cons[k]), cmap="autumn", alpha=0.45, interpolation="nearest")
    for m, colour, name in ((a, "cyan", "A"), (b, "yellow", "B")):
        if m is not None and m[k].any():
            ax.contour(m[k].astype(float), levels=[0.5], colors=colour, linewidths=0.8)
            ax.plot([], [], color=colour, label=name)
    if cons is not None and cons[k].any():
        ax.plot([], [], color="red", alpha=0.6, linewidth=6, label="consensus")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize=6, framealpha=0.6)
    ax.set_title(f"{title} slice {k}".strip(), fontsize=8)
    ax.set_axis_off()
    return _png(fig)


def flagged(values: dict[str, float], low: float | None = None) -> set[str]:
    """Names of the values outside Tukey's fences (and below ``low``, when given)."""
    v = {k: x for k, x in values.items() if x is not None and np.isfinite(x)}
    out = {k for k, x in v.items() if low is not None and x < low}
    if len(v) >= 4:
        q1, q3 = np.percentile(list(v.values()), (25, 75))
        iqr = q3 - q1
        out |= {k for k, x in v.items() if x < q1 - TUKEY_K * iqr or x > q3 + TUKEY_K * iqr}
    return out


def distributions_png(volumes: dict[str, float], counts: dict[str, float], dice: dict[str, float]) -> tuple[bytes, dict]:
    """Three dot plots (one dot per case): consensus lesion volume (mL), lesion count and
    A-vs-B Dice. Cases outside Tukey's fences (Dice: also below LOW_DICE) are red and named.
    Returns (PNG bytes, {panel: sorted names of the flagged cases})."""
    plt = _pyplot()
    panels = (("lesion volume (mL)", volumes, None), ("lesion count", counts, None), ("Dice A vs B", dice, LOW_DICE))
    fig, axes = plt.subplots(1, 3, figsize=(10, 2.6))
    rng = np.random.default_rng(0)                     # fixed jitter: the same report twice is the same picture
    marks = {}
    for ax, (name, values, low) in zip(axes, panels):
        v = {k: x for k, x in values.items() if x is not None and np.isfinite(x)}
        bad = flagged(v, low)
        marks[name] = sorted(bad)
        keys = sorted(v)
        xs = np.array([v[k] for k in keys], float)
        ys = rng.uniform(-0.3, 0.3, len(keys))
        if keys:
            colours = ["#b42318" if k in bad else "#1f4e79" for k in keys]
            ax.scatter(xs, ys, c=colours, s=18)
            for x, y, k in zip(xs, ys, keys):
                if k in bad:
                    ax.annotate(k, (x, y), fontsize=6, xytext=(3, 3), textcoords="offset points")
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        if low is not None:
            ax.axvline(low, color="#b54708", linestyle=":", linewidth=1)
        ax.set_title(f"{name} (n={len(keys)})", fontsize=9)
        ax.set_yticks([])
        ax.set_ylim(-1, 1)
    fig.tight_layout()
    return _png(fig), marks
