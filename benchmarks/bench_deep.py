"""Benchmark of the HRMM deep model (MONAI DenseNet169 on 3 x 224 x 224 2.5D stacks).

Measures, per device (the CPU, and the GPU when torch sees one):

- training throughput in images/second through ``train_deep_model`` itself (batch 16,
  augmentation on, the device's AMP / channels-last settings), the first epoch being
  warm-up and not counted;
- single-case inference latency (one stack -> probabilities) after the model has been
  loaded from its safetensors file, median and 90th percentile over repeated calls.

It also projects the paper's schedule (~210 training lesions, 80 % of them fitted,
300 epochs) from the measured throughput; ``--paper-schedule`` runs that schedule for
real on the GPU (the issue's target: under 5 minutes) instead of projecting it.

    python benchmarks/bench_deep.py                       # cpu (+ cuda when present)
    python benchmarks/bench_deep.py --devices cuda --paper-schedule --json out.json

Numbers are timings, not a test; random uint8 stacks stand in for crops (the cost of a
forward/backward pass does not depend on the pixel values).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from HRMMPredictLib.deep.model import (DeepTrainConfig, load_model, predict_proba, save_model, select_device,
                                       train_deep_model)

SIZE = 224


def _stacks(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, SIZE, SIZE), dtype=np.uint8), np.arange(n) % 2


def bench_training(device: str, n_images: int, epochs: int) -> dict:
    x, y = _stacks(n_images)
    cfg = DeepTrainConfig(epochs=epochs, val_fraction=0.0)
    t0 = time.perf_counter()
    model, hist = train_deep_model(x, y, config=cfg, device=device)
    wall = time.perf_counter() - t0
    steady = hist["epochs"][1:] or hist["epochs"]
    secs = sum(r["seconds"] for r in steady)
    imgs = n_images * len(steady)
    return {"model": model, "device": hist["device"], "amp": hist["amp"], "channels_last": hist["channels_last"],
            "train_images_per_second": imgs / secs, "train_wall_s": wall, "n_images": n_images, "epochs": epochs}


def bench_inference(model, device: str, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = save_model(model, Path(tmp) / "deep.safetensors")
        t0 = time.perf_counter()
        loaded = load_model(path, device)
        load_s = time.perf_counter() - t0
    x, _ = _stacks(1, seed=1)
    for _ in range(3):                                  # warm-up (allocator, cuDNN plans)
        predict_proba(loaded, x, device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predict_proba(loaded, x, device)               # returns numpy: includes the copy back
        times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"load_s": load_s, "latency_ms_median": statistics.median(times),
            "latency_ms_p90": times[min(len(times) - 1, int(0.9 * len(times)))], "repeats": repeats}


def paper_schedule(device: str, n_lesions: int = 210) -> dict:
    x, y = _stacks(n_lesions)
    t0 = time.perf_counter()
    _, hist = train_deep_model(x, y, patient_ids=[f"p{i // 2}" for i in range(n_lesions)],
                               config=DeepTrainConfig(), device=device,
                               progress=lambda e, n, r: print(f"  epoch {e}/{n} {r['seconds']:.2f}s",
                                                              file=sys.stderr) if e % 50 == 0 else None)
    return {"lesions": n_lesions, "epochs": len(hist["epochs"]), "wall_s": time.perf_counter() - t0,
            "n_fit": hist["n_fit"], "n_val": hist["n_val"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, and cuda if present)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--cpu-images", type=int, default=16, help="training images per epoch on the CPU")
    ap.add_argument("--gpu-images", type=int, default=256, help="training images per epoch on the GPU")
    ap.add_argument("--epochs", type=int, default=None, help="epochs (first is warm-up); default 2 cpu / 4 gpu")
    ap.add_argument("--repeats", type=int, default=None, help="inference repeats; default 5 cpu / 50 gpu")
    ap.add_argument("--paper-schedule", action="store_true", help="on cuda: run 300 epochs on 210 lesions for real")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])

    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}")
    rows = []
    for dev in devices:
        _, desc = select_device(dev)
        gpu = dev.startswith("cuda")
        print(f"[{dev}] {desc}", file=sys.stderr)
        tr = bench_training(dev, args.gpu_images if gpu else args.cpu_images, args.epochs or (4 if gpu else 2))
        inf = bench_inference(tr.pop("model"), dev, args.repeats or (50 if gpu else 5))
        row = {"device": desc, **tr, **inf}
        fit_images = round(0.8 * 210)
        row["paper_schedule_projected_s"] = 300 * fit_images / row["train_images_per_second"]
        if args.paper_schedule and gpu:
            row["paper_schedule"] = paper_schedule(dev)
        rows.append(row)

    print()
    print(f"{'device':<44} {'train img/s':>11} {'infer ms (median/p90)':>22} {'load s':>7} "
          f"{'300 ep x 168 img':>17}")
    for r in rows:
        proj = r["paper_schedule_projected_s"]
        proj_txt = f"{proj / 60:.1f} min" if proj < 6000 else f"{proj / 3600:.1f} h"
        print(f"{r['device'][:44]:<44} {r['train_images_per_second']:>11.1f} "
              f"{r['latency_ms_median']:>12.1f} / {r['latency_ms_p90']:<7.1f} {r['load_s']:>7.2f} {proj_txt:>17}")
        if "paper_schedule" in r:
            ps = r["paper_schedule"]
            print(f"   paper schedule run for real: {ps['epochs']} epochs, {ps['n_fit']} fitted + {ps['n_val']} "
                  f"internal-validation lesions, {ps['wall_s']:.1f} s")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
