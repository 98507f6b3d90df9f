"""Benchmark of cohort radiomics extraction (issue 14 "Cohort scale"): HRMMPredict's
``extract_cohort`` against pyradiomics' own batch command on the same synthetic demo cohort,
the same parameter file and the same number of worker processes, in one run.

A *lesion* here is everything a training lesion needs: 3 sequences x 3 reads (reader 1,
reader 2, repeat) = 9 image + ROI extractions. HRMM reads and reorients each image once for
its three reads, then runs its full preprocessing per read (canonical orientation, crop to
the ROI + anatomical margin, N4 on the crop) before pyradiomics; the batch command runs
pyradiomics alone on the whole images (its ``preCrop`` crops before filtering). The two do
not compute the same values -- HRMM normalises and corrects the bias field on its crop --
so the script reports the rates and their ratio, and the agreement of the shape features,
which no preprocessing changes (voxel count, diameters: they must agree exactly).

    python benchmarks/bench_cohort_extraction.py --patients 4 --jobs 2 [--params FILE] [--json out.json]

Timings, not a test.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--patients", type=int, default=4)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--shape", default="12x160x160", help="SLICESxROWSxCOLS of the synthetic images")
    ap.add_argument("--params", default=None, help="pyradiomics YAML (default: the study's 1197-feature settings)")
    ap.add_argument("--work", default=None, help="folder for the cohort and outputs (default: a temporary one)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)

    from HRMMPredictLib.cohort import load_cohort_manifest
    from HRMMPredictLib.radiomics.features import DEFAULT_PARAMS, extract_cohort, load_params
    from HRMMPredictLib.roi import ROI_KINDS
    from HRMMPredictLib.sequences import SEQUENCES
    from HRMMPredictLib.synthetic import generate_cohort

    work = Path(a.work or tempfile.mkdtemp(prefix="bench_cohort_"))
    work.mkdir(parents=True, exist_ok=True)
    shape = tuple(int(x) for x in a.shape.lower().split("x"))
    manifest = work / "cohort" / "cohort.csv"
    if not manifest.is_file():
        manifest = generate_cohort(work / "cohort", n_patients=a.patients, seed=3, shape=shape)
    cohort = load_cohort_manifest(manifest)
    n_lesions = len(cohort)
    params_path = Path(a.params) if a.params else DEFAULT_PARAMS
    params = load_params(params_path)

    t0 = time.perf_counter()
    ours = extract_cohort(cohort, None, params, roi_kinds=ROI_KINDS, n_jobs=a.jobs)
    t_ours = time.perf_counter() - t0

    batch = work / "batch.csv"
    with batch.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["ID", "Image", "Mask"])
        for _, r in cohort.iterrows():
            for kind in ROI_KINDS:
                for seq in SEQUENCES:
                    w.writerow([f"{r['lesion_id']}|{kind}|{seq}", r[seq], r[kind]])
    out_csv = work / "pyradiomics_out.csv"
    exe = Path(sys.executable).with_name("pyradiomics")
    cmd = [str(exe), str(batch), "--param", str(params_path), "--jobs", str(a.jobs), "-o", str(out_csv), "-f", "csv"]
    env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS="1")
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t_batch = time.perf_counter() - t0

    theirs = pd.read_csv(out_csv)
    shape_cols = ["original_shape_VoxelVolume", "original_shape_Maximum3DDiameter", "original_shape_MeshVolume"]
    worst = 0.0
    for _, r in theirs.iterrows():
        lid, kind, seq = r["ID"].split("|")
        for c in shape_cols:
            col = f"{seq}_{c}"
            if col in ours[kind].columns:
                v_ours, v_theirs = float(ours[kind].loc[lid, col]), float(r[c])
                worst = max(worst, abs(v_ours - v_theirs) / max(abs(v_theirs), 1e-12))
    res = {"lesions": n_lesions, "extractions": 9 * n_lesions, "jobs": a.jobs, "shape": list(shape),
           "params": str(params_path), "hrmm_s": t_ours, "pyradiomics_batch_s": t_batch,
           "hrmm_lesions_per_min": 60 * n_lesions / t_ours, "pyradiomics_lesions_per_min": 60 * n_lesions / t_batch,
           "speed_ratio_hrmm_over_pyradiomics": t_batch / t_ours, "shape_features_max_rel_diff": worst,
           "features_per_extraction": int(len(ours["roi"].columns) / 3)}
    for k, v in res.items():
        print(f"{k:36} {v:.4g}" if isinstance(v, float) else f"{k:36} {v}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
