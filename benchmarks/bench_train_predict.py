"""Benchmark of HRMM training and prediction with the deep model and the fusion.

Per device (the CPU, and CUDA when torch sees a GPU):

- deep-model training throughput, images/second through ``train_deep_model`` (batch 16,
  augmentation on; first epoch is warm-up), and single-case inference latency after the
  model is loaded from its safetensors file (``bench_deep.py``'s measurements, reused);

and on one synthetic 20 x 384 x 384 case (``generate_case(shape=(20, 384, 384))``):

- end-to-end ``predict_case`` latency with a loaded bundle (radiomics with only the
  selected features + 2.5D stack + DenseNet169 + PCA + fusion), median over repeats, with
  its parts;
- the same prediction if all 3 x 1197 = 3591 radiomics features were extracted instead
  (full extraction of the three sequences + the same deep part), and the ratio
  (issue 2's target: selected-feature prediction >= 5x faster and < 2 s).

The bundle: ``--model DIR`` (e.g. the demo's ``demo_output/model``, trained with the full
1197-feature settings), or one trained here on a small synthetic cohort (12 patients, the
shipped 1197-feature settings, reader-1 ROIs only, 1 deep epoch; cached under ``--work``).

    python benchmarks/bench_train_predict.py                    # cpu (+ cuda when present)
    python benchmarks/bench_train_predict.py --model demo_output/model --json bench.json

Timings, not a test.
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

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_deep import bench_inference, bench_training  # noqa: E402  (one owner of the deep-model timings)

from HRMMPredictLib.bundle import load_bundle  # noqa: E402
from HRMMPredictLib.predict import predict_case  # noqa: E402
from HRMMPredictLib.radiomics.features import PreprocessConfig, extract_radiomics, load_params  # noqa: E402
from HRMMPredictLib.sequences import SEQUENCES  # noqa: E402


def bench_bundle(work: Path, n_patients: int) -> Path:
    """A bundle trained with the shipped 1197-feature settings on a small synthetic cohort."""
    from HRMMPredictLib.deep.model import DeepTrainConfig
    from HRMMPredictLib.fusion import DeepOptions
    from HRMMPredictLib.radiomics.model import RadiomicsTrainConfig
    from HRMMPredictLib.synthetic import generate_cohort
    from HRMMPredictLib.training import train_bundle

    model = work / "model"
    if (model / "manifest.json").is_file():
        return model
    cohort_csv = work / "cohort" / "cohort.csv"
    if not cohort_csv.is_file():
        generate_cohort(work / "cohort", n_patients=n_patients, seed=3, effect_size=1.5, overwrite=True)  # our cache
    # reader-1 ROIs only: the agreement filter is not what is timed here, and it triples extraction
    one_reader = work / "cohort" / "cohort_reader1.csv"
    pd.read_csv(cohort_csv, dtype=str).drop(columns=["roi_reader2", "roi_repeat"], errors="ignore").to_csv(
        one_reader, index=False)
    print(f"training a benchmark bundle in {model} (full 1197-feature settings; cached for reruns)", file=sys.stderr)
    deep = DeepOptions(train=DeepTrainConfig(epochs=1), device="cpu")
    train_bundle(one_reader, model, cfg=RadiomicsTrainConfig(seed=0, cv_folds=3, lasso_cv=3), deep=deep,
                 progress=lambda s: print(f"  {s}", file=sys.stderr))
    return model


def _median(xs) -> float:
    return float(statistics.median(xs))


def bench_prediction(bundle_dir: Path, device: str, repeats: int) -> dict:
    from HRMMPredictLib.synthetic import generate_case

    case = generate_case(12345, label=1, shape=(20, 384, 384))
    images = {s: case[s] for s in SEQUENCES}
    roi = case["roi"]
    t0 = time.perf_counter()
    bundle = load_bundle(bundle_dir)
    cold = predict_case(images, roi, bundle, device=device, preview=False)       # loads network + estimators
    cold_s = time.perf_counter() - t0
    runs = [predict_case(images, roi, bundle, device=device, preview=False) for _ in range(repeats)]
    total = [r["timings"]["total_s"] for r in runs]
    rad = [r["timings"]["radiomics_s"] for r in runs]
    deep = [r["timings"].get("deep_s", 0.0) for r in runs]
    spread = max(abs(r["models"][m]["probability"] - runs[0]["models"][m]["probability"])
                 for r in runs for m in runs[0]["models"])
    # ITK's multi-threaded filters (N4) can differ in the last bits between calls
    assert spread < 1e-9, f"prediction is not repeatable (spread {spread:g})"

    man = bundle.manifest
    params = load_params(bundle.params_path)
    prep = PreprocessConfig.from_dict(man["radiomics"].get("preprocess"))
    full = []
    n_full = 0
    # like for like: the full extraction runs its sequences in threads as predict_case does
    from concurrent.futures import ThreadPoolExecutor

    for _ in range(max(1, min(repeats, 2))):
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=min(3, os.cpu_count() or 1)) as pool:
            n_full = sum(pool.map(lambda s: len(extract_radiomics(images[s], roi, params, prep)), SEQUENCES))
        full.append(time.perf_counter() - t0)
    from HRMMPredictLib.radiomics.features import preprocess

    prep_s = []
    for _ in range(2):
        t0 = time.perf_counter()
        for s in SEQUENCES:
            preprocess(images[s], roi, prep)
        prep_s.append((time.perf_counter() - t0) / 3)
    needed = sorted({f["name"] for m in man["models"].values() if m.get("kind") in ("radiomics", "fusion")
                     for f in m["features"] if not f["name"].startswith("deep_pc")})
    other = _median(total) - _median(rad) - _median(deep)          # loading images, masks, classifiers
    full_e2e = _median(full) + _median(deep) + other
    return {"case_shape": [20, 384, 384], "repeats": repeats, "primary": cold["model"],
            "models": {k: round(v["probability"], 4) for k, v in cold["models"].items()},
            "selected_features": len(needed), "full_features": n_full,
            "cold_first_call_s": cold_s, "predict_total_s": _median(total), "predict_radiomics_s": _median(rad),
            "predict_deep_s": _median(deep), "predict_other_s": other,
            "full_extraction_s": _median(full), "full_predict_estimate_s": full_e2e,
            "ratio_full_over_selected": full_e2e / _median(total),
            "ratio_radiomics_only": _median(full) / _median(rad) if _median(rad) > 0 else None,
            "probability_spread_between_calls": spread,
            "preprocess_per_sequence_s": _median(prep_s),
            "sequences_needed": sorted({n.split("_", 1)[0] for n in needed})}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--devices", nargs="+", default=None, help="cpu and/or cuda (default: cpu, and cuda if present)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: every core)")
    ap.add_argument("--model", type=Path, default=None, help="a trained bundle (default: train a small one)")
    ap.add_argument("--work", type=Path, default=None, help="folder for the benchmark cohort/bundle "
                    "(default: a temporary folder)")
    ap.add_argument("--patients", type=int, default=12)
    ap.add_argument("--cpu-images", type=int, default=16, help="training images per epoch on the CPU")
    ap.add_argument("--gpu-images", type=int, default=256, help="training images per epoch on the GPU")
    ap.add_argument("--repeats", type=int, default=5, help="prediction repeats")
    ap.add_argument("--skip-training", action="store_true", help="only the prediction benchmark")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    devices = args.devices or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    print(f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
          f"torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}")

    tmp = None
    if args.model is None:
        work = args.work
        if work is None:
            tmp = tempfile.TemporaryDirectory(prefix="hrmm_bench_")
            work = Path(tmp.name)
        model_dir = bench_bundle(work, args.patients)
    else:
        model_dir = args.model

    results = {"threads": torch.get_num_threads(), "devices": {}}
    for dev in devices:
        row: dict = {}
        gpu = dev.startswith("cuda")
        if not args.skip_training:
            tr = bench_training(dev, args.gpu_images if gpu else args.cpu_images, 4 if gpu else 2)
            inf = bench_inference(tr.pop("model"), dev, 50 if gpu else 10)
            row.update(tr)
            row.update(inf)
        row["prediction"] = bench_prediction(model_dir, dev, args.repeats)
        results["devices"][dev] = row

    print()
    print(f"{'device':<8} {'train img/s':>11} {'net ms (med/p90)':>17} {'predict s':>10} {'radiomics s':>12} "
          f"{'deep s':>7} {'full-extraction predict s':>26} {'ratio':>6}")
    for dev, r in results["devices"].items():
        p = r["prediction"]
        tr_txt = f"{r['train_images_per_second']:.1f}" if "train_images_per_second" in r else "-"
        inf_txt = (f"{r['latency_ms_median']:.0f} / {r['latency_ms_p90']:.0f}" if "latency_ms_median" in r else "-")
        print(f"{dev:<8} {tr_txt:>11} {inf_txt:>17} {p['predict_total_s']:>10.2f} {p['predict_radiomics_s']:>12.2f} "
              f"{p['predict_deep_s']:>7.2f} {p['full_predict_estimate_s']:>26.2f} {p['ratio_full_over_selected']:>5.1f}x")
    for dev, r in results["devices"].items():
        p = r["prediction"]
        print(f"[{dev}] {p['selected_features']} selected radiomics features vs {p['full_features']} in a full "
              f"extraction ({p['full_extraction_s']:.2f} s vs {p['predict_radiomics_s']:.2f} s: "
              f"{p['ratio_radiomics_only']:.1f}x); first call with loading {p['cold_first_call_s']:.2f} s; "
              f"probabilities {p['models']}")
        print(f"[{dev}] crop + N4 per sequence {p['preprocess_per_sequence_s']:.2f} s, done for every sequence "
              f"a model uses ({', '.join(p['sequences_needed'])}) in both paths; without it: full "
              f"~{max(0.0, p['full_extraction_s'] - 3 * p['preprocess_per_sequence_s']):.2f} s vs selected "
              f"~{max(0.0, p['predict_radiomics_s'] - len(p['sequences_needed']) * p['preprocess_per_sequence_s']):.2f}"
              " s (timed separately: rough)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
