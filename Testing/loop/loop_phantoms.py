"""Generated 3-D phantoms for the loop tests and the benchmark: bright ellipsoidal lesions
in a smoothly varying background with Gaussian noise; the truth of every case is kept
aside (the 'hidden truth' the loop never sees for pool cases)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import SimpleITK as sitk

SIZE = 32
SPACING = (1.5, 1.5, 2.0)
ORIGIN = (-20.0, 12.5, -31.0)


def phantom(rng: np.random.Generator, contrast: float = 60.0, noise: float = 12.0, size: int = SIZE,
            lesions: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(image, truth) arrays (z, y, x): 1-2 ellipsoids brighter by ``contrast`` over a
    background of ~100 with a smooth ramp, plus Gaussian noise of SD ``noise``."""
    zz, yy, xx = np.mgrid[:size, :size, :size].astype(np.float32)
    img = 100.0 + 10.0 * np.sin(xx / 7.0 + rng.uniform(0, 6)) + 6.0 * np.cos(zz / 9.0 + rng.uniform(0, 6))
    truth = np.zeros((size,) * 3, bool)
    for _ in range(lesions or int(rng.integers(1, 3))):
        c = rng.uniform(0.28 * size, 0.72 * size, 3)
        r = rng.uniform(0.09 * size, 0.2 * size, 3)
        truth |= (((zz - c[0]) / r[0]) ** 2 + ((yy - c[1]) / r[1]) ** 2 + ((xx - c[2]) / r[2]) ** 2) <= 1.0
    img = img + contrast * truth + rng.normal(0.0, noise, img.shape)
    return img.astype(np.float32), truth.astype(np.uint8)


def to_image(array: np.ndarray, spacing=SPACING, origin=ORIGIN) -> sitk.Image:
    im = sitk.GetImageFromArray(array)
    im.SetSpacing(spacing)
    im.SetOrigin(origin)
    return im


def write_cases(folder: Path, specs: list[dict], seed: int = 0, two_sequences: bool = False,
                size: int = SIZE) -> tuple[Path, dict]:
    """Write phantom cases and a cases CSV. ``specs``: dicts with case_id, standard (bool:
    the truth goes into the CSV's mask column), optional contrast, noise. Returns the CSV
    path and case_id -> truth mask path (the hidden truth)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    truths, rows = {}, []
    for spec in specs:
        img, truth = phantom(rng, spec.get("contrast", 60.0), spec.get("noise", 12.0), size=size)
        cid = spec["case_id"]
        row = {"case_id": cid}
        if two_sequences:
            second = 0.5 * img + rng.normal(0.0, 5.0, img.shape).astype(np.float32)
            for seq, arr in (("flair", img), ("t2", second)):
                p = folder / f"{cid}_{seq}.nii.gz"
                sitk.WriteImage(to_image(arr), str(p))
                row[f"image_{seq}"] = p.name
        else:
            p = folder / f"{cid}_image.nii.gz"
            sitk.WriteImage(to_image(img), str(p))
            row["image"] = p.name
        tp = folder / "truth" / f"{cid}_truth.nii.gz"
        tp.parent.mkdir(exist_ok=True)
        sitk.WriteImage(to_image(truth), str(tp))
        truths[cid] = tp
        row["mask"] = f"truth/{tp.name}" if spec.get("standard") else ""
        rows.append(row)
    csv_path = folder / "cases.csv"
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    return csv_path, truths


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a) != 0, np.asarray(b) != 0
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2.0 * (a & b).sum() / s)


def run_loop_cli(argv: list[str]) -> int:
    """``annotation-qc loop ...`` through a parser built as the tool builds it (tool_parser +
    add_loop_commands) and the tools' runner (one-line errors, exit 2)."""
    from AnnotationQCLib.loop.cli import add_loop_commands
    from ClinicalMRICommonLib.cli import tool_parser
    from ClinicalMRICommonLib.errors import run_cli

    parser, sub = tool_parser("annotation-qc", "test parser")
    add_loop_commands(sub)

    def main(args):
        ns = parser.parse_args(args)
        return ns.func(ns)

    return run_cli(main, ["loop", *argv])
