"""``hrmm``: the command line of HRMMPredict.

Every subcommand calls the same library functions as the Slicer module, so numbers agree.
Errors in the user's input print one line (``error: ...``) and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from ClinicalMRICommonLib.errors import UserError, run_cli
from ClinicalMRICommonLib.files import atomic_path


def _eprint(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


def _progress_bar(desc: str):
    """A tqdm progress callback (i, n, message) writing to stderr."""
    from tqdm import tqdm

    state = {"bar": None, "last": -1}
    if not sys.stderr.isatty():  # logs and CI: a line every 10 %
        def plain(i: int, n: int, msg: str = "") -> None:
            step = int(10 * i / max(n, 1))
            if step != state["last"] or i >= n:
                state["last"] = step
                _eprint(f"[hrmm {time.perf_counter() - _T0:5.0f}s] {desc}: {i}/{n}")
        return plain

    def cb(i: int, n: int, msg: str = "") -> None:
        if state["bar"] is None:
            state["bar"] = tqdm(total=n, desc=desc, unit="img", file=sys.stderr, dynamic_ncols=True,
                                disable=None, mininterval=0.5)
        bar = state["bar"]
        bar.total = n
        bar.n = i
        bar.set_postfix_str(msg[:40], refresh=False)
        bar.refresh()
        if i >= n:
            bar.close()
            state["bar"] = None

    return cb


_T0 = time.perf_counter()


def _step(msg: str) -> None:
    """A progress line with the seconds since the command started."""
    _eprint(f"[hrmm {time.perf_counter() - _T0:5.0f}s] {msg}")


# ---------------------------------------------------------------------------------------
# Commands


def cmd_generate_demo(a) -> int:
    from HRMMPredictLib.synthetic import generate_cohort

    shape = tuple(int(x) for x in a.shape.split("x")) if a.shape else (12, 160, 160)
    path = generate_cohort(a.out, n_patients=a.patients, seed=a.seed, effect_size=a.effect_size, shape=shape,
                           progress=_progress_bar("generating cases"))
    print(path)
    return 0


def cmd_validate(a) -> int:
    from HRMMPredictLib.manifest import load_manifest, summarize

    df = load_manifest(a.manifest)
    for r in summarize(df):
        print(f"{a.manifest}: OK - {r['patients']} patients, {r['lesions']} lesions "
              f"({r['positives']} HRMM, {r['negatives']} SRMM)")
    return 0


def cmd_extract(a) -> int:
    import pandas as pd

    from HRMMPredictLib import radiomics_features as rf
    from ClinicalMRICommonLib.images import check_finite, read_image
    from ClinicalMRICommonLib.masks import read_mask

    params = rf.load_params(a.params)
    img = read_image(a.image, "image")
    check_finite(img, a.image)
    mask = read_mask(a.mask, img, what="mask", resample=a.resample_roi, min_voxels=rf.MIN_ROI_VOXELS,
                     label=a.label)
    prep = rf.PreprocessConfig(n4=not a.no_n4)
    t0 = time.perf_counter()
    feats = rf.extract_features(img, mask, params, prep, diagnostics=a.diagnostics)
    _step(f"{sum(1 for k in feats if not k.startswith('diagnostics_'))} features in {time.perf_counter() - t0:.1f} s")
    df = pd.DataFrame([feats])
    with atomic_path(a.out) as tmp:
        df.to_csv(tmp, index=False)
    return 0


def cmd_extract_cohort(a) -> int:
    from HRMMPredictLib import radiomics_features as rf
    from HRMMPredictLib.manifest import ROI_COLUMNS, load_manifest

    cohort = load_manifest(a.manifest)
    params = rf.load_params(a.params)
    kinds = [k for k in ROI_COLUMNS if k in cohort.columns]
    cache = a.cache or (Path(a.manifest).resolve().parent / ".hrmm_cache")
    tables = rf.extract_cohort(cohort, cache, params, rf.PreprocessConfig(), roi_kinds=kinds, n_jobs=a.jobs,
                               progress=_progress_bar("extracting"))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    for kind, df in tables.items():
        with atomic_path(out / f"features_{kind}.csv") as tmp:
            df.to_csv(tmp)
        print(out / f"features_{kind}.csv")
    return 0


def deep_options_from_args(a):
    """DeepOptions from ``hrmm train``'s deep-model arguments (paper defaults)."""
    from HRMMPredictLib.fusion import DeepOptions

    if a.no_deep:
        return DeepOptions(enabled=False)
    from HRMMPredictLib.deep_model import TrainConfig as DeepTrainConfig

    dcfg = DeepTrainConfig(epochs=a.epochs, batch_size=a.batch_size, seed=a.seed, val_fraction=a.deep_val_fraction,
                           pretrained_weights=a.weights)
    return DeepOptions(train=dcfg, device=a.device, fusion_fit=a.fusion_fit, threads=a.threads)


def _epoch_line(epoch: int, epochs: int, row: dict) -> None:
    val = "" if row.get("val_loss") is None else f"  internal-val loss {row['val_loss']:.4f}" + (
        "" if row.get("val_auc") is None else f" AUC {row['val_auc']:.3f}")
    _step(f"deep model epoch {epoch}/{epochs}: train loss {row['train_loss']:.4f}{val}  ({row['seconds']:.1f} s)")


def cmd_train(a) -> int:
    from HRMMPredictLib.model import TrainConfig
    from HRMMPredictLib.training import train_bundle

    cfg = TrainConfig(seed=a.seed, validation_fraction=a.validation_fraction, icc_threshold=a.icc_threshold,
                      mrmr_k=a.mrmr_k, tune=a.tune)
    deep = deep_options_from_args(a)
    t0 = time.perf_counter()
    summary = train_bundle(a.manifest, a.out, a.params, cfg, cache_dir=a.cache, n_jobs=a.jobs, progress=_step,
                           extraction_progress=_progress_bar("extracting features"), overwrite=a.overwrite,
                           deep=deep, epoch_progress=_epoch_line)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    if a.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_training_summary(summary))
    return 0


def format_training_summary(s: dict) -> str:
    lines = [f"Model bundle written to {s['model_dir']}"]
    for r in s["cohort"]:
        lines.append(f"  {r['split']:<10} {r['patients']:>4} patients {r['lesions']:>4} lesions "
                     f"({r['positives']} HRMM / {r['negatives']} SRMM)")
    lines.append("  features per selection step: " + ", ".join(f"{k} {v}" for k, v in s["selection"].items()))
    lines.append(f"  selected ({len(s['selected_features'])}): " + ", ".join(s["selected_features"][:8])
                 + (" ..." if len(s["selected_features"]) > 8 else ""))
    if s.get("deep"):
        d = s["deep"]
        lines.append(f"  deep model on {d['device']}: {d['selection']}; PCA to {d['pca_components']} components; "
                     f"fusion fitted on {d['fusion_fit']} lesions, selected: " + ", ".join(d["fusion_selected"][:6])
                     + (" ..." if len(d["fusion_selected"]) > 6 else ""))
    for name, m in s["models"].items():
        va = "n/a" if m["validation_auc"] is None else f"{m['validation_auc']:.3f}"
        cv = "n/a" if m["cv_auc"] is None else f"{m['cv_auc']:.3f}"
        mark = "*" if name == s.get("primary_model") else " "
        lines.append(f" {mark}{name:<22} CV AUC {cv}  validation AUC {va}  threshold {m['threshold']:.3f}")
    return "\n".join(lines)


def cmd_predict(a) -> int:
    from HRMMPredictLib.predict import format_prediction, predict_case

    if a.preview and Path(a.preview).exists():
        raise UserError(f"preview file {a.preview} already exists; choose another --preview path")
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    res = predict_case({"t1": a.t1, "t2": a.t2, "fst2": a.fst2}, a.roi, a.model, resample_roi=a.resample_roi,
                       device=a.device, progress=None if a.json else _step, preview=False, preview_path=a.preview)
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        print(format_prediction(res))
    return 0


def cmd_evaluate(a) -> int:
    from HRMMPredictLib.evaluate import evaluate_bundle

    res = evaluate_bundle(a.model, a.out, a.manifest or (), progress=_step, bar=_progress_bar("predicting"))
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        for note in res["notes"]:
            _step(note)
        print(f"Report: {res['report']}")
        for set_name, aucs in res["sets"].items():
            print(f"  {set_name:<28} " + "  ".join(f"{m} AUC {v:.3f}" for m, v in aucs.items()))
    return 0


def cmd_info(a) -> int:
    from HRMMPredictLib.bundle import load_bundle

    b = load_bundle(a.model)
    print(json.dumps(b.summary(), indent=2))
    return 0


def cmd_demo(a) -> int:
    from HRMMPredictLib.demo import run_demo

    return run_demo(Path(a.out), n_patients=a.patients, jobs=a.jobs, seed=a.seed, progress=_step,
                    bar=_progress_bar, epochs=a.epochs, deep=not a.no_deep, device=a.device,
                    epoch_progress=_epoch_line)


# ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="hrmm", description="High-risk multiple myeloma prediction from sagittal "
                                 "spine MRI (T1WI, T2WI, FS-T2WI + ROI): radiomics, training, prediction, statistics.")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("demo", help="generate a synthetic cohort, train, predict a held-out case")
    p.add_argument("--out", default="demo_output", help="output folder (default: demo_output)")
    p.add_argument("--patients", type=int, default=20)
    p.add_argument("--jobs", type=int, default=None, help="parallel extraction processes (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=2, help="deep-model epochs (default 2 for the demo; the paper: 300)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--no-deep", action="store_true", help="radiomics models only")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("generate-demo", help="write a deterministic synthetic spine MRI cohort + manifest")
    p.add_argument("--out", required=True)
    p.add_argument("--patients", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--effect-size", type=float, default=1.0)
    p.add_argument("--shape", default=None, help="SLICESxROWSxCOLS, e.g. 12x160x160")
    p.set_defaults(func=cmd_generate_demo)

    p = sub.add_parser("validate", help="check a cohort manifest and report every problem at once")
    p.add_argument("--manifest", required=True)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("extract", help="radiomics features of one image + mask -> one CSV row")
    p.add_argument("--image", required=True)
    p.add_argument("--mask", required=True)
    p.add_argument("--params", default=None, help="pyradiomics YAML (default: the shipped 1197-feature file)")
    p.add_argument("--out", required=True, help="output CSV (one row, one column per feature)")
    p.add_argument("--label", type=int, default=None, help="mask label to use (default: any non-zero voxel)")
    p.add_argument("--diagnostics", action="store_true", help="also write pyradiomics' diagnostics columns")
    p.add_argument("--no-n4", action="store_true", help="skip N4 bias-field correction")
    p.add_argument("--resample-roi", action="store_true", help="resample the mask onto the image (nearest neighbour)")
    p.set_defaults(func=cmd_extract)

    p = sub.add_parser("extract-cohort", help="features of every lesion, sequence and reader ROI (cached)")
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True, help="folder for features_<roi>.csv")
    p.add_argument("--params", default=None)
    p.add_argument("--jobs", type=int, default=None)
    p.add_argument("--cache", default=None, help="cache folder (default: .hrmm_cache beside the manifest)")
    p.set_defaults(func=cmd_extract_cohort)

    p = sub.add_parser("train", help="train the models of a cohort and write a model bundle")
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True, help="model bundle folder")
    p.add_argument("--params", default=None)
    p.add_argument("--jobs", type=int, default=None)
    p.add_argument("--cache", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--validation-fraction", type=float, default=0.2)
    p.add_argument("--icc-threshold", type=float, default=0.75)
    p.add_argument("--mrmr-k", type=int, default=100)
    p.add_argument("--tune", action="store_true", help="tune ExtraTrees by patient-grouped CV on the training set")
    g = p.add_argument_group("deep model and fusion (defaults: the paper's settings)")
    g.add_argument("--no-deep", action="store_true", help="radiomics models only (no DenseNet169, no fusion)")
    g.add_argument("--epochs", type=int, default=300, help="DenseNet169 training epochs (default: 300, the paper)")
    g.add_argument("--batch-size", type=int, default=16, help="training batch size (default: 16, the paper)")
    g.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: CUDA when available, else CPU (slow: ~3 images/s on 2 cores, so the paper's "
                        "300 epochs on ~170 images take ~5 h)")
    g.add_argument("--weights", default=None, metavar="LOCAL_FILE",
                   help="ImageNet DenseNet169 weights to start from (torchvision .pth or .safetensors, downloaded "
                        "by you; nothing is downloaded at run time)")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    g.add_argument("--deep-val-fraction", type=float, default=0.2,
                   help="share of the training patients held out inside the training set to choose the epoch "
                        "(default 0.2; e.g. 0.34, a third, with --fusion-fit internal)")
    g.add_argument("--fusion-fit", choices=["paper", "internal"], default="paper",
                   help="lesions the fusion selection/classifier are fitted on: paper = all training lesions "
                        "(their deep features are in-sample for the network: optimistic); internal = the "
                        "network's internal-validation lesions only (honest, fewer lesions). See docs/fusion.md")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model folder")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("predict", help="predict one lesion with a model bundle")
    p.add_argument("--t1", required=True)
    p.add_argument("--t2", required=True)
    p.add_argument("--fst2", required=True)
    p.add_argument("--roi", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--resample-roi", action="store_true", help="resample the ROI onto each image (nearest neighbour)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where the deep model runs (auto: CUDA when available)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice)")
    p.add_argument("--preview", default=None, metavar="PNG",
                   help="write the 2.5D input (T1WI, T2WI, FS-T2WI crops + composite, ROI outlined) to this PNG")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("evaluate", help="ROC/AUC + DeLong, metrics at the stored threshold, calibration and "
                       "decision curves for every model of a bundle -> HTML report + metrics.json")
    p.add_argument("--model", required=True, help="model bundle folder")
    p.add_argument("--manifest", action="append", default=[],
                   help="cohort manifest to evaluate besides the bundle's own training/validation split "
                        "(e.g. an external cohort); repeatable")
    p.add_argument("--out", required=True, help="report folder (index.html, metrics.json)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("info", help="show a model bundle's summary (after checking it)")
    p.add_argument("--model", required=True)
    p.set_defaults(func=cmd_info)

    from HRMMPredictLib import stats_cli

    stats_cli.register(sub)
    return ap


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
