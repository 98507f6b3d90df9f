"""Deterministic synthetic sagittal spine MRI cohorts for the HRMM demo and tests.

Each case is one examined spine region of a myeloma patient: T1WI, T2WI and fat-suppressed
T2WI on one anisotropic grid (in-plane 0.8 x 0.8 mm, 4 mm slices + 0.8 mm gap by default),
with 4-6 (or more, in a larger field of view) vertebral bodies, intervertebral discs, the
spinal canal and cord, posterior elements, muscle, fat and air behind the back. One vertebral
body (the "largest involved vertebral body" on which the paper's readers drew their ROI)
carries a marrow infiltration: T1 hypointense, FS-T2 hyperintense.

What the risk class changes (every difference is multiplied by ``effect_size``; at 0 the
two classes are generated bit-for-bit identically from the same seed):

* pattern: HRMM infiltration is more patchy/variegated (multifocal), SRMM more focal;
* texture: HRMM lesion tissue has a coarser grain and a larger texture amplitude;
* mean: HRMM lesion tissue is slightly brighter on FS-T2/T2 and darker on T1.

Patient-level random variation of the same parameters (shared by all lesions of one
patient, with smaller per-lesion jitter) makes the classes overlap, so a model trained on
about 30 patients finds the signal but not perfectly.

Each case also carries three ROIs of the whole involved vertebral body, drawn slice by
slice: reader 1, reader 2 (boundary differences, Dice about 0.85-0.93 against reader 1)
and reader 1's repeat a month later (smaller differences, Dice about 0.92-0.97).

Geometry of the arrays (numpy order): axis 0 = slices (left-right), axis 1 = rows
(head -> feet), axis 2 = columns (anterior -> posterior). The SimpleITK direction encodes
that sagittal orientation in LPS (columns -> posterior, rows -> inferior, slices -> right),
so Slicer shows the images the right way up in its sagittal view.

Randomness: every case draws from its own ``numpy.random.SeedSequence``; in a cohort the
case seed depends only on (cohort seed, patient number, lesion number), so a case does not
change when ``n_patients`` changes. Labels follow a seeded low-discrepancy sequence, so a
patient's label does not depend on ``n_patients`` either and every prefix of the cohort has
close to ``positive_fraction`` positives.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Callable

import numpy as np
import SimpleITK as sitk
from scipy import ndimage as ndi

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.files import atomic_path, check_output_path, write_image_atomic, write_json_atomic
from HRMMPredictLib.roi import ROI_KINDS
from HRMMPredictLib.sequences import SEQUENCES

__all__ = ["generate_cohort", "generate_case", "MANIFEST_COLUMNS", "SAGITTAL_DIRECTION", "TISSUE_LABELS"]

#: Columns of the cohort manifest the generator writes.
MANIFEST_COLUMNS = ("patient_id", "lesion_id", "label") + SEQUENCES + ROI_KINDS
MANIFEST_NAME = "cohort.csv"
PROVENANCE_NAME = "synthetic.json"
GENERATOR_VERSION = 1

# Columns -> posterior (+y in LPS), rows -> inferior (-z), slices -> right (-x); det = +1.
SAGITTAL_DIRECTION = (0.0, 0.0, -1.0,
                      1.0, 0.0, 0.0,
                      0.0, -1.0, 0.0)

# Tissue labels of the internal label map (returned with ``with_truth=True``).
AIR, SOFT, FAT, MUSCLE, MARROW, CORTEX, ANNULUS, NUCLEUS, CSF, CORD, POST_MARROW, VESSEL = range(12)
TISSUE_LABELS = {"air": AIR, "soft_tissue": SOFT, "fat": FAT, "muscle": MUSCLE, "marrow": MARROW,
                 "cortex": CORTEX, "disc_annulus": ANNULUS, "disc_nucleus": NUCLEUS, "csf": CSF,
                 "cord": CORD, "posterior_element_marrow": POST_MARROW, "vessel": VESSEL}

# Signal of each tissue on (T1, T2, FS-T2), arbitrary MR units. Marrow labels are computed
# from a fat / haematopoietic / tumour mixture instead (rows of _MIX).
_TISSUE_SIGNAL = np.zeros((12, 3), dtype=np.float32)
_TISSUE_SIGNAL[AIR] = (0, 0, 0)
_TISSUE_SIGNAL[SOFT] = (480, 420, 380)
_TISSUE_SIGNAL[FAT] = (1050, 880, 70)
_TISSUE_SIGNAL[MUSCLE] = (430, 260, 280)
_TISSUE_SIGNAL[CORTEX] = (70, 60, 60)
_TISSUE_SIGNAL[ANNULUS] = (330, 380, 330)
_TISSUE_SIGNAL[NUCLEUS] = (380, 1150, 1050)
_TISSUE_SIGNAL[CSF] = (200, 1400, 1350)
_TISSUE_SIGNAL[CORD] = (560, 600, 520)
_TISSUE_SIGNAL[VESSEL] = (60, 80, 70)  # flow void
_MIX = {"fat": np.array((1050, 880, 70), np.float32),
        "cellular": np.array((420, 330, 260), np.float32),
        "tumour": np.array((340, 640, 820), np.float32)}

# Class effect at effect_size = 1 (HRMM minus SRMM is twice each value; see _lesion_params).
_EFFECT = {"patchiness": 0.30,     # added to the patchy/focal mixing weight h
           "log_texture": 0.60,    # log of tumour texture amplitude
           "log_grain": 0.30,      # log of tumour texture grain (correlation length)
           "log_mean": 0.08}       # log of tumour signal (T2/FS-T2 up, T1 down)
# Patient-to-patient spread of the same quantities (standard deviations).
_SPREAD = {"patchiness": 0.22, "log_texture": 0.30, "log_grain": 0.18, "log_mean": 0.07}
_LESION_JITTER = 0.5  # per-lesion jitter relative to the patient spread


# ---------------------------------------------------------------------------------------
# Seeds


def _seed_sequence(seed) -> np.random.SeedSequence:
    if isinstance(seed, np.random.SeedSequence):
        return seed
    if isinstance(seed, (int, np.integer)):
        if seed < 0:
            raise UserError(f"seed must be a non-negative integer, got {seed}")
        return np.random.SeedSequence(int(seed))
    if isinstance(seed, (list, tuple)) and all(isinstance(s, (int, np.integer)) and s >= 0 for s in seed):
        return np.random.SeedSequence([int(s) for s in seed])
    raise UserError(f"seed must be a non-negative integer, got {seed!r}")


def _child(ss: np.random.SeedSequence, *key: int) -> np.random.SeedSequence:
    """A child seed that depends only on (ss, key); unlike ss.spawn() it is repeatable."""
    return np.random.SeedSequence(entropy=ss.entropy, spawn_key=tuple(ss.spawn_key) + tuple(key))


def _rng(ss: np.random.SeedSequence, *key: int) -> np.random.Generator:
    return np.random.default_rng(_child(ss, *key))


def _patient_seed(seed: int, patient_index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(entropy=seed, spawn_key=(0, patient_index))


def _case_seed(seed: int, patient_index: int, lesion_index: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(entropy=seed, spawn_key=(1, patient_index, lesion_index))


def _labels(seed: int, n: int, positive_fraction: float) -> list[int]:
    """Low-discrepancy 0/1 sequence with a seeded phase: label i does not depend on n and
    the first k labels hold floor(k * p + phase) positives."""
    phase = float(np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(2,))).random())
    return [int(math.floor((i + 1) * positive_fraction + phase) - math.floor(i * positive_fraction + phase))
            for i in range(n)]


def _lesion_count(seed: int, patient_index: int, multi_lesion_fraction: float) -> int:
    rng = np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(3, patient_index)))
    u, k = rng.random(), rng.integers(2, 4)
    return int(k) if u < multi_lesion_fraction else 1


# ---------------------------------------------------------------------------------------
# Small helpers


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.clip(x, -40, 40)))


def _smooth_noise(rng: np.random.Generator, shape, sigma_vox) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit SD (float32)."""
    n = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma_vox, mode="wrap", truncate=3.0)
    sd = float(n.std())
    return n / sd if sd > 0 else n


def _lowres_noise(rng: np.random.Generator, shape, cell_vox) -> np.ndarray:
    """Large-scale in-plane noise (unit SD) made cheaply: a coarse random grid per slice,
    smoothed and upsampled; ``cell_vox`` is the grid spacing in voxels along (rows, cols)."""
    S, R, C = shape
    gr, gc = max(int(R / cell_vox[0]) + 3, 4), max(int(C / cell_vox[1]) + 3, 4)
    grid = rng.standard_normal((S, gr, gc)).astype(np.float32)
    grid = ndi.gaussian_filter(grid, (0.6, 0.7, 0.7), mode="wrap")
    up = ndi.zoom(grid, (1, R / (gr - 2), C / (gc - 2)), order=1, mode="nearest", grid_mode=True)[:, :R, :C]
    if up.shape != (S, R, C):
        up = np.pad(up, [(0, 0), (0, R - up.shape[1]), (0, C - up.shape[2])], mode="edge")
    sd = float(up.std())
    return up / sd if sd > 0 else up


def _check_args(shape, spacing, effect_size):
    try:
        shape = tuple(int(s) for s in shape)
        spacing = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        raise UserError(f"shape and spacing must be three numbers each, got {shape!r} and {spacing!r}") from None
    if len(shape) != 3 or len(spacing) != 3:
        raise UserError(f"shape (slices, rows, cols) and spacing (x, y, z) need three values each, "
                        f"got {shape} and {spacing}")
    if not all(math.isfinite(s) and s > 0 for s in spacing):
        raise UserError(f"spacing must be positive, got {spacing}")
    s, r, c = shape
    sx, sy, sz = spacing
    if s < 3 or r * sy < 48 or c * sx < 60:
        raise UserError(f"shape {shape} with spacing {spacing} is too small for a spine region: need at least "
                        f"3 slices, 48 mm head-feet ({r * sy:.0f} mm given) and 60 mm anterior-posterior "
                        f"({c * sx:.0f} mm given)")
    if s * r * c > 64_000_000:
        raise UserError(f"shape {shape} is too large ({s * r * c} voxels); use at most 64 million voxels")
    try:
        effect_size = float(effect_size)
    except (TypeError, ValueError):
        raise UserError(f"effect_size must be a number >= 0, got {effect_size!r}") from None
    if not math.isfinite(effect_size) or effect_size < 0:
        raise UserError(f"effect_size must be a number >= 0, got {effect_size}")
    return shape, spacing, effect_size


# ---------------------------------------------------------------------------------------
# Parameters


def _patient_params(ss: np.random.SeedSequence) -> dict:
    """Patient-level draws: the random part of the lesion phenotype and the marrow fat."""
    rng = np.random.default_rng(ss)
    z = rng.standard_normal(4)
    return {"z": {k: float(v) for k, v in zip(_EFFECT, z)}, "fat_fraction": float(rng.uniform(0.45, 0.70))}


def _lesion_params(patient: dict, rng: np.random.Generator, label: int, effect_size: float) -> dict:
    """Lesion phenotype = class effect (scaled by effect_size) + patient spread + jitter.

    The same random numbers are drawn whatever the label, so with effect_size = 0 both
    classes give identical cases from the same seed.
    """
    sign = 1.0 if label == 1 else -1.0
    jitter = rng.standard_normal(4)
    val = {}
    for (k, eff), j in zip(_EFFECT.items(), jitter):
        zk = (patient["z"][k] + _LESION_JITTER * j) / math.sqrt(1 + _LESION_JITTER ** 2)
        val[k] = sign * effect_size * eff + _SPREAD[k] * zk
    return {"h": float(np.clip(0.45 + val["patchiness"], 0.02, 0.98)),
            "texture": 0.12 * math.exp(val["log_texture"]),
            "grain_mm": 1.3 * math.exp(val["log_grain"]),
            "log_mean": val["log_mean"],
            "fat_fraction": float(np.clip(patient["fat_fraction"] + 0.03 * rng.standard_normal(), 0.3, 0.8))}


def _anatomy_params(rng: np.random.Generator, fov) -> dict:
    fx, fy, fz = fov  # mm: anterior-posterior, head-feet, left-right
    a = {}
    a["height"] = min(rng.uniform(22, 29), 0.55 * fy)
    a["depth"] = rng.uniform(27, 34)
    a["half_width"] = rng.uniform(10.5, 14)
    a["disc"] = rng.uniform(6, 10)
    a["p"] = rng.uniform(3.5, 5.0)
    a["waist"] = rng.uniform(0.04, 0.10)
    a["curve_amp"] = rng.uniform(2, 6)
    a["curve_len"] = rng.uniform(250, 400)
    a["curve_phase"] = rng.uniform(0, 2 * math.pi)
    a["y_inv"] = fy / 2 + rng.uniform(-0.08, 0.08) * fy
    a["z_shift"] = rng.uniform(-2.0, 2.0)
    a["skin"] = min(rng.uniform(65, 85), 0.6 * fx)
    margin = float(np.clip(0.06 * fx, 3, 20))
    a["x_body"] = fx - a["skin"] - margin
    a["anterior_skin"] = rng.uniform(120, 170)
    a["prevertebral_fat"] = rng.uniform(2.0, 5.0)
    a["anterior_fat"] = rng.uniform(10, 25)
    a["sc_fat"] = rng.uniform(0.10, 0.22)
    a["canal_ap"] = rng.uniform(13, 17)
    a["canal_hw"] = rng.uniform(7.5, 9.5)
    a["cord_ap"] = rng.uniform(7, 9)
    a["cord_lat"] = rng.uniform(4.5, 6)
    a["spinous_hw"] = rng.uniform(3.0, 4.5)
    a["aorta_z"] = rng.choice([-1, 1]) * rng.uniform(6, 12)
    a["aorta_r"] = rng.uniform(7, 10)
    a["growth"] = rng.uniform(0.0, 0.025)  # vertebrae grow towards the feet
    a["tilt_noise"] = rng.normal(0, 0.03, size=64)
    a["disc_degeneration"] = rng.uniform(0.35, 1.0, size=64)
    a["other_foci"] = rng.random(size=64)
    a["focus_pos"] = rng.uniform(-0.45, 0.45, size=(64, 3))
    a["focus_r"] = rng.uniform(2.5, 5.0, size=64)
    a["focus_amp"] = rng.uniform(0.5, 0.9, size=64)
    return a


# ---------------------------------------------------------------------------------------
# Geometry


class _Geometry:
    """Tissue label map on a slice-thickness-supersampled grid (3 samples across each 4 mm
    slice, for partial-volume averaging) plus the vertebral bodies' local coordinates."""

    NSUB = 3

    def __init__(self, shape, spacing, anat):
        S, R, C = shape
        sx, sy, sz = spacing
        self.shape, self.spacing, self.anat = shape, spacing, anat
        thickness = sz / 1.2  # 4 mm slice + 0.8 mm gap at the default 4.8 mm spacing
        offs = thickness * (np.arange(self.NSUB) - (self.NSUB - 1) / 2) / self.NSUB
        zc = (np.arange(S) - (S - 1) / 2) * sz - anat["z_shift"]
        self.z_centre = zc.astype(np.float32)[:, None, None]                              # (S,1,1)
        self.z_sub = (zc[:, None] + offs[None, :]).astype(np.float32)[:, :, None, None]   # (S,N,1,1)
        self.y = (np.arange(R) * sy).astype(np.float32)[:, None]                          # (R,1)
        self.x = (np.arange(C) * sx).astype(np.float32)[None, :]                          # (1,C)
        self.lab = np.full((S, self.NSUB, R, C), SOFT, dtype=np.uint8)
        self.nucleus_scale = np.ones((R, C), dtype=np.float32)
        self.bodies = []
        self._build()

    # -- centre line (gentle lordosis/kyphosis) ------------------------------------------
    def x_centre(self, y):
        an = self.anat
        w = 2 * np.pi / an["curve_len"]
        return an["x_body"] + an["curve_amp"] * (np.sin(w * (y - an["y_inv"]) + an["curve_phase"])
                                                 - math.sin(an["curve_phase"]))

    def slope(self, y):
        an = self.anat
        w = 2 * np.pi / an["curve_len"]
        return an["curve_amp"] * w * np.cos(w * (y - an["y_inv"]) + an["curve_phase"])

    # -- vertebral body shape ---------------------------------------------------------------
    @staticmethod
    def _front_back(z, half_width, b):
        """Anterior and posterior half-depth at lateral position z (a D-shaped axial section)."""
        t = np.minimum(np.abs(z) / half_width, 1.0)
        front = b * np.sqrt(np.maximum(1 - t ** 2, 0)) + 1e-3
        back = b * np.sqrt(np.maximum(1 - t ** 6, 0)) + 1e-3
        return front, back

    def box(self, body, z, margin=1.0):
        """(slices, rows, cols) bounding the body at lateral positions z (S,...) , or None."""
        sx, sy, _ = self.spacing
        S, R, C = self.shape
        s, c = abs(math.sin(body["theta"])), abs(math.cos(body["theta"]))
        hy = body["a"] * c + body["b"] * s + margin
        hx = body["b"] * c + body["a"] * s + margin
        r0, r1 = max(int((body["y"] - hy) / sy) - 1, 0), min(int((body["y"] + hy) / sy) + 2, R)
        c0, c1 = max(int((body["x"] - hx) / sx) - 1, 0), min(int((body["x"] + hx) / sx) + 2, C)
        zmin = np.abs(z).reshape(S, -1).min(axis=1)
        ks = np.nonzero(zmin < body["half_width"] + margin)[0]
        if r0 >= r1 or c0 >= c1 or len(ks) == 0:
            return None
        return slice(int(ks[0]), int(ks[-1]) + 1), slice(r0, r1), slice(c0, c1)

    def body_level(self, body, z, rows, cols):
        """Superellipse level r (<= 1 inside) of one vertebral body, with its local
        head-feet (u) and anterior-posterior (v) coordinates in mm, on a box."""
        dy, dx = self.y[rows] - body["y"], self.x[:, cols] - body["x"]
        c, s = math.cos(body["theta"]), math.sin(body["theta"])
        u = dy * c + dx * s
        v = -dy * s + dx * c
        front, back = self._front_back(z, body["half_width"], body["b"])
        waist = 1 - body["waist"] * (1 - np.minimum((u / body["a"]) ** 2, 1))
        vn = np.where(v < 0, v / (front * waist), v / back)
        p = body["p"]
        r = (np.abs(u / body["a"]) ** p + np.abs(vn) ** p) ** (1 / p)
        r = np.where(np.abs(z) < body["half_width"], r, np.float32(10.0))
        return r.astype(np.float32), u, v

    # -- build ----------------------------------------------------------------------------
    def _build(self):
        an = self.anat
        lab = self.lab
        S, R, C = self.shape
        sy = self.spacing[1]
        fy = R * sy
        y, zs = self.y, self.z_sub
        v2 = self.x - self.x_centre(y)  # (R,C) anterior-posterior offset from the centre line
        H, b = an["height"], an["depth"] / 2
        period = H + an["disc"]
        P = an["skin"] - b  # from the back of the bodies to the skin
        zz = np.abs(zs)

        # Trunk: soft tissue in front, muscle behind, fat under the skin, air outside.
        canal0, canal1 = b + 1.5, b + 1.5 + min(an["canal_ap"], 0.3 * P)
        fat0 = an["skin"] - an["sc_fat"] * P
        lab[:] = np.where(v2 > canal1, MUSCLE, SOFT)[None, None]
        lab[..., (v2 > fat0) & (v2 <= an["skin"])] = FAT
        pre_fat = an["prevertebral_fat"] * (1 + 0.5 * np.sin(y / 17.0 + an["curve_phase"]))
        lab[..., (v2 > -b - pre_fat) & (v2 < -b + 3)] = FAT  # prevertebral / retroperitoneal fat
        aorta = (((v2 - (-b - 4 - an["aorta_r"])) / an["aorta_r"]) ** 2
                 + ((zs - an["aorta_z"]) / an["aorta_r"]) ** 2) < 1
        lab[aorta] = VESSEL
        lab[..., (v2 < -an["anterior_skin"] + an["anterior_fat"])] = FAT
        lab[..., (v2 > an["skin"]) | (v2 < -an["anterior_skin"])] = AIR

        # Vertebral bodies along the centre line, the involved one at y_inv.
        n_lo = int(math.ceil(an["y_inv"] / period)) + 1
        n_hi = int(math.ceil((fy - an["y_inv"]) / period)) + 1
        for i in range(-n_lo, n_hi + 1):
            g = 1 + an["growth"] * i
            yi = an["y_inv"] + i * period * (1 + an["growth"] * i / 2)
            xi = float(self.x_centre(yi))
            theta = math.atan(float(self.slope(yi))) + an["tilt_noise"][i % 64]
            self.bodies.append({"index": i, "y": yi, "x": xi, "theta": theta, "a": H * g / 2, "b": b * g,
                                "half_width": an["half_width"] * g, "p": an["p"], "waist": an["waist"]})
        self.involved = next(bd for bd in self.bodies if bd["index"] == 0)

        # Discs: the column band between bodies (annulus) with a nucleus in each gap.
        front, back = self._front_back(zs, an["half_width"], b * 1.02)
        lab[(v2 >= -front) & (v2 <= back) & (zz < an["half_width"])] = ANNULUS
        for k in range(len(self.bodies) - 1):
            b0, b1 = self.bodies[k], self.bodies[k + 1]
            yd = (b0["y"] + b0["a"] + b1["y"] - b1["a"]) / 2
            hd = max((b1["y"] - b1["a"] - b0["y"] - b0["a"]) / 2, 0.5)
            rows = self._rows(yd, hd + 1.0)
            if rows is None:
                continue
            nuc = (((y[rows] - yd) / (0.85 * hd)) ** 2 + ((v2[rows] - 0.1 * b) / (0.72 * b)) ** 2
                   + (zs / (0.75 * an["half_width"])) ** 2) < 1
            sub = lab[:, :, rows]
            sub[nuc & (sub == ANNULUS)] = NUCLEUS
            self.nucleus_scale[rows] = an["disc_degeneration"][k % 64]
        cortex_mm = 1.0
        for body in self.bodies:
            bx = self.box(body, zs)
            if bx is None:
                continue
            ks, rows, cols = bx
            r, _, _ = self.body_level(body, zs[ks], rows, cols)
            sub = lab[ks, :, rows, cols]
            sub[r <= 1] = CORTEX
            sub[r <= 1 - cortex_mm / min(body["a"], body["b"])] = MARROW

        # Spinal canal (CSF, cord), foraminal fat, pedicles, laminae, spinous processes.
        canal_hw = min(an["canal_hw"], an["half_width"] - 2)
        in_canal_ap = (v2 > canal0) & (v2 <= canal1)
        lateral = (zz >= canal_hw) & (zz < an["half_width"] + 2)
        lab[in_canal_ap & lateral] = FAT
        lab[in_canal_ap & (zz < canal_hw)] = CSF
        cord_c = (canal0 + canal1) / 2
        cord_ap = min(an["cord_ap"], 0.6 * (canal1 - canal0))
        cord = (((v2 - cord_c) / (cord_ap / 2)) ** 2 + (zs / an["cord_lat"]) ** 2) < 1
        lab[cord & in_canal_ap] = CORD
        lam_t = min(6.0, 0.15 * P)
        sp_end = b + 0.8 * P
        sx = self.spacing[0]
        for body in self.bodies:
            rows = self._rows(body["y"], 1.6 * body["a"] + 0.3 * P)
            if rows is None:
                continue
            xc = self.x_centre(y[rows])
            c0 = max(int((float(xc.min()) + canal0 - 2) / sx), 0)
            c1 = min(int((float(xc.max()) + sp_end + 2) / sx) + 2, C)
            if c0 >= c1:
                continue
            cols = slice(c0, c1)
            u = y[rows] - body["y"]
            vv = v2[rows, cols]
            a_ = body["a"]
            sub = lab[:, :, rows, cols]
            # pedicles: lateral to the canal, upper part of the vertebra
            ped = self._rrect(u, vv, -0.35 * a_, cord_c, 0.55 * a_, (canal1 - canal0) / 2 + 1.5)
            self._paint_bone(sub, ped, lateral)
            # lamina: behind the canal, across the midline
            lam = self._rrect(u, vv, 0.05 * a_, canal1 + lam_t / 2, 0.6 * a_, lam_t / 2)
            self._paint_bone(sub, lam, zz < canal_hw + 4)
            # spinous process, sloping towards the feet
            vs0 = canal1 + lam_t * 0.5
            uc = 0.15 * a_ + 0.3 * np.maximum(vv - vs0, 0)
            sp = self._rrect(u - uc, vv, 0, (vs0 + sp_end) / 2, 0.3 * a_, (sp_end - vs0) / 2)
            self._paint_bone(sub, sp, zz < an["spinous_hw"])

    def _rows(self, yc, half):
        sy, R = self.spacing[1], self.shape[1]
        lo, hi = max(int((yc - half) / sy) - 1, 0), min(int((yc + half) / sy) + 2, R)
        return slice(lo, hi) if lo < hi else None

    @staticmethod
    def _rrect(u, v, uc, vc, hu, hv):
        return (((u - uc) / hu) ** 4 + ((v - vc) / hv) ** 4) ** 0.25

    @staticmethod
    def _paint_bone(sub, level, zmask):
        sub[(level <= 1) & zmask] = CORTEX
        sub[(level <= 0.82) & zmask] = POST_MARROW


# ---------------------------------------------------------------------------------------
# Case


def generate_case(rng_seed, label: int, effect_size: float = 1.0, shape=(12, 160, 160),
                  spacing=(0.8, 0.8, 4.8), *, patient_seed=None, with_truth: bool = False) -> dict:
    """Generate one lesion's image set.

    Parameters
    ----------
    rng_seed : int, sequence of ints or numpy SeedSequence; the case's randomness.
    label : 1 = HRMM, 0 = SRMM.
    effect_size : scale of every class difference (0 = none, 1 = default).
    shape : (slices, rows, cols) in numpy order.
    spacing : (x, y, z) in SimpleITK order, i.e. (col, row, slice) spacing in mm.
    patient_seed : seed of the patient-level phenotype shared by a patient's lesions
        (default: derived from ``rng_seed``).
    with_truth : also return "tissue" (UInt8 tissue label map at the slice centres, see
        TISSUE_LABELS), "body" (UInt8 mask of the involved vertebral body at the slice
        centres) and "lesion" (Float32 tumour fraction, 0-1).

    Returns a dict of SimpleITK images on one grid: "t1", "t2", "fst2" (Float32) and
    "roi", "roi_reader2", "roi_repeat" (UInt8, 1 inside).
    """
    if isinstance(label, bool) or label not in (0, 1):
        raise UserError(f"label must be 0 (SRMM) or 1 (HRMM), got {label!r}")
    label = int(label)
    shape, spacing, effect_size = _check_args(shape, spacing, effect_size)
    ss = _seed_sequence(rng_seed)
    pss = _seed_sequence(patient_seed) if patient_seed is not None else _child(ss, 99)
    S, R, C = shape
    sx, sy, sz = spacing
    vox = np.array([sz, sy, sx], dtype=np.float64)

    anat = _anatomy_params(_rng(ss, 0), (C * sx, R * sy, S * sz))
    lesion = _lesion_params(_patient_params(pss), _rng(ss, 1), label, effect_size)
    geo = _Geometry(shape, spacing, anat)
    lab = geo.lab

    # Marrow fat fraction with a fine (trabecular) and a coarse component; soft-tissue and
    # muscle textures (muscle fibres run head-feet).
    tex_rng = _rng(ss, 2)
    fine = _smooth_noise(tex_rng, shape, 1.0 / vox)
    coarse = _smooth_noise(tex_rng, shape, 4.0 / vox)
    fat = np.clip(lesion["fat_fraction"] + 0.07 * fine + 0.05 * coarse, 0.05, 0.95)
    del fine
    # Marrow and soft tissue never overlap, so the coarse field serves both; the large-scale
    # mottling suggests bowel loops and vessels in the abdomen.
    soft_tex = 1 + 0.04 * coarse + 0.12 * _lowres_noise(tex_rng, shape, 10.0 / vox[1:])
    muscle_tex = 1 + 0.06 * _smooth_noise(tex_rng, shape, np.array([2.0, 5.0, 0.7]) / vox)

    # Tumour fraction in the involved body: focal blob + patchy infiltration + diffuse part,
    # computed on the body's bounding box.
    body = geo.involved
    ks, rows, cols = geo.box(body, geo.z_sub, margin=2.0)
    zc = geo.z_centre[ks]
    r_c, u_c, v_c = geo.body_level(body, zc, rows, cols)
    bshape = r_c.shape
    les_rng = _rng(ss, 3)
    pos = les_rng.uniform(-0.45, 0.45, size=3)
    radius = les_rng.uniform(7, 12)
    diffuse = les_rng.uniform(0.0, 0.2)
    depth = les_rng.uniform(0.75, 0.95)
    outline = _smooth_noise(les_rng, bshape, 3.0 / vox)
    patch_field = _smooth_noise(les_rng, bshape, 2.2 / vox)
    tumour_tex = np.zeros(shape, np.float32)
    tumour_tex[ks, rows, cols] = _smooth_noise(les_rng, bshape, lesion["grain_mm"] / vox)
    dist = np.sqrt((u_c - pos[0] * body["a"]) ** 2 + (v_c - pos[1] * body["b"]) ** 2
                   + (zc - pos[2] * body["half_width"]) ** 2) + 1.5 * outline
    focal = _sigmoid(radius - dist)
    patchy = _sigmoid((patch_field - 0.35) / 0.3)
    h = lesion["h"]
    tumour = np.zeros(shape, np.float32)
    tumour[ks, rows, cols] = (np.clip(diffuse + (1 - h) * focal + h * patchy, 0, 1) * depth
                              * _sigmoid((1 - r_c) / 0.03))
    # Smaller foci in some of the other vertebral bodies (class-independent).
    for k, other in enumerate(geo.bodies):
        if other is body or anat["other_foci"][k % 64] > 0.35:
            continue
        bx = geo.box(other, geo.z_sub)
        if bx is None:
            continue
        oks, orows, ocols = bx
        r_o, u_o, v_o = geo.body_level(other, geo.z_centre[oks], orows, ocols)
        fp = anat["focus_pos"][k % 64]
        d_o = np.sqrt((u_o - fp[0] * other["a"]) ** 2 + (v_o - fp[1] * other["b"]) ** 2
                      + (geo.z_centre[oks] - fp[2] * other["half_width"]) ** 2)
        blob = anat["focus_amp"][k % 64] * _sigmoid((anat["focus_r"][k % 64] - d_o) / 0.8) * (r_o < 1)
        tumour[oks, orows, ocols] = np.maximum(tumour[oks, orows, ocols], blob)

    # Partial-volume fractions of the tissues that carry a per-voxel signal.
    def frac(label_value):
        return (lab == label_value).mean(axis=1, dtype=np.float32)
    f_marrow, f_post, f_nucleus, f_soft, f_muscle = (frac(v) for v in (MARROW, POST_MARROW, NUCLEUS, SOFT, MUSCLE))
    per_voxel = np.zeros(12, bool)
    per_voxel[[MARROW, POST_MARROW, NUCLEUS, SOFT, MUSCLE]] = True

    mean_shift = np.exp(np.array([-1.0, 0.8, 1.0]) * lesion["log_mean"])
    noise_rng, bias_rng = _rng(ss, 4), _rng(ss, 5)
    images = {}
    for q, name in enumerate(SEQUENCES):
        table = np.where(per_voxel, 0, _TISSUE_SIGNAL[:, q]).astype(np.float32)
        img = table[lab].mean(axis=1, dtype=np.float32)
        F, Hc = float(_MIX["fat"][q]), float(_MIX["cellular"][q])
        T = float(_MIX["tumour"][q] * mean_shift[q])
        normal = fat * F + (1 - fat) * Hc
        img += f_marrow * (normal * (1 - tumour) + tumour * T * (1 + lesion["texture"] * tumour_tex))
        img += f_post * normal
        img += f_nucleus * (_TISSUE_SIGNAL[NUCLEUS, q] * (geo.nucleus_scale if q > 0 else 1.0))
        img += f_soft * (_TISSUE_SIGNAL[SOFT, q] * soft_tex)
        img += f_muscle * (_TISSUE_SIGNAL[MUSCLE, q] * muscle_tex)
        img = ndi.gaussian_filter(img, (0, 0.5, 0.5), mode="nearest")   # in-plane PSF
        img *= _bias_field(bias_rng, shape, spacing)
        img *= np.float32(bias_rng.uniform(0.85, 1.2))                   # receiver gain
        sigma = np.float32(bias_rng.uniform(15, 30))
        n1 = noise_rng.standard_normal(shape, dtype=np.float32) * sigma
        n2 = noise_rng.standard_normal(shape, dtype=np.float32) * sigma
        # Rician magnitude, stored as whole numbers like a scanner's integer pixel data
        images[name] = np.round(np.sqrt((img + n1) ** 2 + n2 ** 2)).astype(np.float32)

    # ROIs: reader 1 draws the whole involved body where it is visible on each slice.
    r_sub, _, _ = geo.body_level(body, geo.z_sub[ks], rows, cols)
    roi1 = np.zeros(shape, bool)
    roi1[ks, rows, cols] = (r_sub <= 1).mean(axis=1) >= 0.5
    if not roi1.any():  # cannot happen for valid shapes; keeps the contract "never empty"
        roi1[ks, rows, cols] = r_c <= 1
    roi2 = _redraw(roi1, _rng(ss, 6), bias_sd=1.2, amp=1.4, corr_px=5.0, limit=3.0, slice_drop=0.35)
    roi3 = _redraw(roi1, _rng(ss, 7), bias_sd=0.45, amp=0.8, corr_px=5.0, limit=2.0, slice_drop=0.0)

    origin = _origin(shape, spacing)
    out = {k: _to_image(v, spacing, origin) for k, v in images.items()}
    for k, v in zip(ROI_KINDS, (roi1, roi2, roi3)):
        out[k] = _to_image(v.astype(np.uint8), spacing, origin)
    if with_truth:
        mid = np.ascontiguousarray(lab[:, geo.NSUB // 2])
        body_mask = np.zeros(shape, np.uint8)
        body_mask[ks, rows, cols] = r_c <= 1
        out["tissue"] = _to_image(mid, spacing, origin)
        out["body"] = _to_image(body_mask, spacing, origin)
        out["lesion"] = _to_image(np.where((mid == MARROW) & (body_mask > 0), tumour, 0).astype(np.float32),
                                  spacing, origin)
    return out


def _bias_field(rng, shape, spacing):
    """Smooth multiplicative field: posterior (spine coil side) brighter, plus slow variation."""
    S, R, C = shape
    sx, sy, sz = spacing
    x = (np.arange(C) + 0.5) / C - 0.5
    y = (np.arange(R) + 0.5) / R - 0.5
    z = (np.arange(S) + 0.5) / S - 0.5
    beta = rng.uniform(0.25, 0.5)
    cx, cy, cz, cxy = rng.normal(0, 0.08, 4)
    px, py = rng.uniform(0, 2 * np.pi, 2)
    in_plane = np.exp(beta * x + cx * np.cos(np.pi * x + px))[None, :] * np.exp(cy * np.cos(np.pi * y + py))[:, None]
    in_plane = in_plane * np.exp(cxy * y[:, None] * x[None, :])
    return (np.exp(cz * z ** 2)[:, None, None] * in_plane[None]).astype(np.float32)


def _redraw(roi: np.ndarray, rng: np.random.Generator, bias_sd: float, amp: float, corr_px: float,
            limit: float, slice_drop: float) -> np.ndarray:
    """Another drawing of the same structure: the boundary moves in and out smoothly by
    about a voxel, at most ``limit`` voxels (a per-case tendency to draw tighter or looser
    plus smooth local wobble, per slice);
    with probability ``slice_drop`` the reader leaves out a small end slice."""
    out = np.zeros_like(roi)
    bias = rng.normal(0, bias_sd)
    drop_u = rng.random(2)
    slices = np.nonzero(roi.any(axis=(1, 2)))[0]
    areas = roi[slices].sum(axis=(1, 2))
    for k in slices:
        sl = roi[k]
        rows, cols = np.nonzero(sl)
        r0, r1 = max(rows.min() - 4, 0), min(rows.max() + 5, sl.shape[0])
        c0, c1 = max(cols.min() - 4, 0), min(cols.max() + 5, sl.shape[1])
        box = sl[r0:r1, c0:c1]
        sd = np.where(box, 0.5 - ndi.distance_transform_edt(box), ndi.distance_transform_edt(~box) - 0.5)
        wobble = ndi.gaussian_filter(rng.standard_normal(box.shape), corr_px, mode="wrap")
        wobble /= max(float(wobble.std()), 1e-6)
        offset = np.clip(bias + rng.normal(0, 0.2) + amp * wobble, -limit, limit)
        out[k, r0:r1, c0:c1] = sd < offset
    # End slices: a reader may leave out a partial-volume end slice (small area).
    if slice_drop > 0 and len(slices) > 2:
        for end, u in zip((slices[0], slices[-1]), drop_u):
            if u < slice_drop and roi[end].sum() < 0.5 * areas.max():
                out[end] = False
    if not out.any():
        out = roi.copy()
    return out


def _origin(shape, spacing):
    """Physical position of voxel (0,0,0) so that the image centre lies near (0,0,0) mm."""
    S, R, C = shape
    d = np.array(SAGITTAL_DIRECTION).reshape(3, 3)
    centre_index = np.array([(C - 1) / 2, (R - 1) / 2, (S - 1) / 2]) * np.array(spacing)
    o = -d @ centre_index + np.array([3.5, -12.0, 40.0])
    return tuple(float(round(v, 4)) for v in o)


def _to_image(arr: np.ndarray, spacing, origin) -> sitk.Image:
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(origin)
    img.SetDirection(SAGITTAL_DIRECTION)
    return img


# ---------------------------------------------------------------------------------------
# Cohort


def generate_cohort(out_dir, n_patients: int = 30, seed: int = 0, effect_size: float = 1.0,
                    shape=(12, 160, 160), spacing=(0.8, 0.8, 4.8), multi_lesion_fraction: float = 0.3,
                    positive_fraction: float = 0.45,
                    progress: Callable[[int, int, str], None] | None = None, overwrite: bool = False) -> Path:
    """Write a synthetic cohort (NIfTI images under ``out_dir/images`` and the cohort
    manifest ``out_dir/cohort.csv``) and return the manifest's path.

    ``out_dir`` must be new or empty unless ``overwrite`` (the extension's overwrite policy);
    a ``cohort.csv`` the generator did not write is never replaced.

    Patients P001.. get label 1 (HRMM) or 0 (SRMM); ``multi_lesion_fraction`` of them
    (in expectation) have 2-3 lesions, each its own image set (one examined spine region
    per sample) with the patient's label. ``progress(i, n, message)`` is called after each
    lesion. Manifest paths are relative to the manifest's folder.
    """
    try:
        n_patients = int(n_patients)
        seed = int(seed)
    except (TypeError, ValueError):
        raise UserError(f"n_patients and seed must be integers, got {n_patients!r} and {seed!r}") from None
    if n_patients < 1:
        raise UserError(f"n_patients must be at least 1, got {n_patients}")
    if seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed}")
    for name, val in (("multi_lesion_fraction", multi_lesion_fraction), ("positive_fraction", positive_fraction)):
        if not (isinstance(val, (int, float)) and 0 <= float(val) <= 1):
            raise UserError(f"{name} must be between 0 and 1, got {val!r}")
    shape, spacing, effect_size = _check_args(shape, spacing, effect_size)

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"output folder {out} is a file; choose a folder for the synthetic cohort")
    manifest = out / MANIFEST_NAME
    if manifest.exists() and not (out / PROVENANCE_NAME).exists():
        raise UserError(f"{manifest} already exists and was not written by the synthetic generator; "
                        "choose another output folder so that it is not overwritten")
    check_output_path(out, overwrite=overwrite, what="output folder", folder=True)
    if manifest.exists():
        # Our own earlier cohort: drop its manifest first so that an interrupted run never
        # leaves a manifest pointing at a mixture of old and new images.
        manifest.unlink()
    (out / "images").mkdir(parents=True, exist_ok=True)

    width = max(3, len(str(n_patients)))
    labels = _labels(seed, n_patients, float(positive_fraction))
    plan = []
    for i in range(n_patients):
        pid = f"P{i + 1:0{width}d}"
        for j in range(_lesion_count(seed, i, float(multi_lesion_fraction))):
            plan.append((i, j, pid, f"{pid}_L{j + 1}", labels[i]))

    rows = []
    for n_done, (i, j, pid, lid, label) in enumerate(plan, start=1):
        case = generate_case(_case_seed(seed, i, j), label, effect_size, shape, spacing,
                             patient_seed=_patient_seed(seed, i))
        row = {"patient_id": pid, "lesion_id": lid, "label": label}
        for key in SEQUENCES + ROI_KINDS:
            rel = f"images/{lid}_{key}.nii.gz"
            write_image_atomic(case[key], out / rel)
            row[key] = rel
        rows.append(row)
        if progress is not None:
            progress(n_done, len(plan), f"{lid} ({'HRMM' if label else 'SRMM'})")

    write_json_atomic(out / PROVENANCE_NAME, {
        "generator": "HRMMPredictLib.synthetic", "version": GENERATOR_VERSION, "seed": seed,
        "n_patients": n_patients, "n_lesions": len(rows), "effect_size": effect_size,
        "shape": list(shape), "spacing": list(spacing), "multi_lesion_fraction": float(multi_lesion_fraction),
        "positive_fraction": float(positive_fraction), "direction": list(SAGITTAL_DIRECTION)})
    with atomic_path(manifest) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, fieldnames=list(MANIFEST_COLUMNS), lineterminator="\n")
            w.writeheader()
            w.writerows(rows)
    return manifest
