"""``hrmm``: the command line of HRMMPredict.

Every subcommand calls the same library functions as the Slicer module, so the numbers
agree. The parser follows the extension's one convention (:mod:`ClinicalMRICommonLib.cli`):
``--version``; ``--json`` wherever a command prints data; ``--overwrite`` wherever it writes
a file, with :func:`ClinicalMRICommonLib.files.check_output_path` deciding (an existing
output is refused without it; an output that is an input, or two outputs with one name, are
always refused); help text on every option; exit status 0 done, 2 bad input (one
``error: ...`` line on stderr, never a traceback). Progress goes to stderr, data to stdout.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from ClinicalMRICommonLib.cli import EXIT_OK, add_command, add_json, add_overwrite, emit, tool_parser
from ClinicalMRICommonLib.errors import UserError, run_cli
from ClinicalMRICommonLib.files import atomic_path, check_output_path

DESCRIPTION = ("High-risk multiple myeloma prediction from sagittal spine MRI (T1WI, T2WI, FS-T2WI + an ROI on "
               "the largest involved vertebral body): radiomics, a 2.5D DenseNet169 and their fusion; training "
               "from a cohort manifest (CSV), prediction, evaluation and statistics. The Slicer module "
               "HRMMPredict runs the same library.")

WORKFLOW = """\
workflow (a synthetic cohort here; give your own cohort manifest instead):
  hrmm generate-demo --out cohort --patients 30      # cohort/cohort.csv + NIfTI images
  hrmm validate --manifest cohort/cohort.csv         # every problem of the manifest at once, by row
  hrmm train --manifest cohort/cohort.csv --out model --epochs 2
                                                     # radiomics, DenseNet169 and fusion models
                                                     # (--no-deep: radiomics only, minutes)
  hrmm info --model model                            # what the bundle holds
  hrmm evaluate --model model --out report           # report/index.html + metrics.json
  hrmm predict --model model --t1 cohort/images/P001_L1_t1.nii.gz --t2 cohort/images/P001_L1_t2.nii.gz \\
      --fst2 cohort/images/P001_L1_fst2.nii.gz --roi cohort/images/P001_L1_roi.nii.gz
                                                     # one lesion: every model's P(HRMM), the features
all of it in one go: hrmm demo --out demo_output
Run 'hrmm COMMAND --help' for a command's options."""

DEVICES = ("auto", "cpu", "cuda")


def _eprint(*a) -> None:
    print(*a, file=sys.stderr, flush=True)


_T0 = time.perf_counter()


def _step(msg: str) -> None:
    """A progress line with the seconds since the command started."""
    _eprint(f"[hrmm {time.perf_counter() - _T0:5.0f}s] {msg}")


def _progress_bar(desc: str):
    """A progress callback (i, n, message) on stderr: a tqdm bar on a terminal, a line every
    10 % in logs."""
    state = {"bar": None, "last": -1}
    if not sys.stderr.isatty():  # logs and CI: a line every 10 %
        def plain(i: int, n: int, msg: str = "") -> None:
            step = int(10 * i / max(n, 1))
            if step != state["last"] or i >= n:
                state["last"] = step
                _step(f"{desc}: {i}/{n}")
        return plain

    from tqdm import tqdm

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


def _epoch_line(epoch: int, epochs: int, row: dict) -> None:
    val = "" if row.get("val_loss") is None else f"  internal-val loss {row['val_loss']:.4f}" + (
        "" if row.get("val_auc") is None else f" AUC {row['val_auc']:.3f}")
    _step(f"deep model epoch {epoch}/{epochs}: train loss {row['train_loss']:.4f}{val}  ({row['seconds']:.1f} s)")


# ---------------------------------------------------------------------------------------
# Commands


def cmd_demo(a) -> int:
    from HRMMPredictLib.cli.demo import run_demo

    res = run_demo(Path(a.out), n_patients=a.patients, jobs=a.jobs, seed=a.seed, progress=_step,
                   bar=_progress_bar, epochs=a.epochs, deep=not a.no_deep, device=a.device,
                   epoch_progress=_epoch_line, overwrite=a.overwrite, show=None if a.json else print)
    emit(res, a.json)
    return EXIT_OK


def cmd_generate_demo(a) -> int:
    from HRMMPredictLib.synthetic import generate_cohort

    shape = _shape(a.shape)
    path = generate_cohort(a.out, n_patients=a.patients, seed=a.seed, effect_size=a.effect_size, shape=shape,
                           progress=_progress_bar("generating cases"), overwrite=a.overwrite)
    emit({"cohort_manifest": str(path)}, a.json, str(path))
    return EXIT_OK


def _shape(text: str | None) -> tuple[int, int, int]:
    if not text:
        return (12, 160, 160)
    try:
        shape = tuple(int(x) for x in text.lower().split("x"))
    except ValueError:
        shape = ()
    if len(shape) != 3:
        raise UserError(f"--shape {text!r} is not SLICESxROWSxCOLS (e.g. 12x160x160)")
    return shape


def cmd_validate(a) -> int:
    from HRMMPredictLib.cohort import load_cohort_manifest, summarize

    rows = summarize(load_cohort_manifest(a.manifest))
    text = "\n".join(f"{a.manifest}: OK - {r['patients']} patients, {r['lesions']} lesions "
                     f"({r['positives']} HRMM, {r['negatives']} SRMM)" for r in rows)
    emit({"cohort_manifest": str(a.manifest), "ok": True, "summary": rows}, a.json, text)
    return EXIT_OK


def _check_params_file(path) -> None:
    """A --params file must be a UTF-8 text (YAML) file: a binary file is refused in one line
    before pyradiomics' loader sees it (the loader itself reads only text)."""
    if path is None:
        return
    p = Path(path)
    if p.is_file():
        try:
            with open(p, "rb") as f:
                head = f.read(1 << 20)
            head.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"radiomics parameter file {p} is not a text (YAML) file; give the pyradiomics "
                            "parameter file (.yaml)") from None
        if b"\0" in head:
            raise UserError(f"radiomics parameter file {p} is not a text (YAML) file (it holds NUL bytes); give "
                            "the pyradiomics parameter file (.yaml)")


def cmd_extract(a) -> int:
    import pandas as pd

    from ClinicalMRICommonLib.images import check_finite, read_image
    from ClinicalMRICommonLib.masks import read_mask
    from HRMMPredictLib.radiomics import features as rf
    from HRMMPredictLib.roi import MIN_ROI_VOXELS, mask_on_grid

    out = check_output_path(a.out, overwrite=a.overwrite, what="--out", inputs=[a.image, a.mask, a.params])
    _check_params_file(a.params)
    params = rf.load_params(a.params)
    img = read_image(a.image, "image")
    check_finite(img, a.image)
    # the mask's values checked (and --label chosen) first, then put on the image's grid: an ROI on the
    # same physical grid stored in another voxel order is reordered exactly (roi.mask_on_grid)
    roi = a.mask if a.label is None else read_mask(a.mask, what="mask", min_voxels=MIN_ROI_VOXELS, label=a.label)
    mask, _ = mask_on_grid(roi, img, image_what="image", resample=a.resample_roi, min_voxels=MIN_ROI_VOXELS,
                           what="mask" if a.label is None else f"mask file {a.mask}")
    t0 = time.perf_counter()
    feats = rf.extract_radiomics(img, mask, params, rf.PreprocessConfig(n4=not a.no_n4), diagnostics=a.diagnostics)
    _step(f"{sum(1 for k in feats if not k.startswith('diagnostics_'))} features in {time.perf_counter() - t0:.1f} s")
    with atomic_path(out) as tmp:
        pd.DataFrame([feats]).to_csv(tmp, index=False)
    return EXIT_OK


def cmd_extract_cohort(a) -> int:
    from HRMMPredictLib.cohort import ROI_COLUMNS, load_cohort_manifest
    from HRMMPredictLib.radiomics import features as rf
    from HRMMPredictLib.radiomics.executors import check_scheduler
    from HRMMPredictLib.training import default_cache_dir

    check_scheduler(a.scheduler)  # a malformed address or no dask: refused before any work
    cohort = load_cohort_manifest(a.manifest)
    kinds = [k for k in ROI_COLUMNS if k in cohort.columns]
    out = check_output_path(a.out, overwrite=True, what="--out", folder=True, inputs=[a.manifest])
    files = {kind: out / f"features_{kind}.csv" for kind in kinds}
    for f in files.values():  # refused before the extraction, not after it
        check_output_path(f, overwrite=a.overwrite, what="feature table", inputs=[a.manifest, a.params])
    _check_params_file(a.params)
    params = rf.load_params(a.params)
    cache = a.cache or default_cache_dir(a.manifest)
    tables = rf.extract_cohort(cohort, cache, params, rf.PreprocessConfig(), roi_kinds=kinds, n_jobs=a.jobs,
                               progress=_progress_bar("extracting"), scheduler=a.scheduler)
    for kind, df in tables.items():
        with atomic_path(files[kind]) as tmp:
            df.to_csv(tmp)
    written = [str(files[k]) for k in tables]
    emit({"feature_tables": written}, a.json, "\n".join(written))
    return EXIT_OK


def deep_options_from_args(a):
    """DeepOptions from ``hrmm train``'s deep-model arguments (paper defaults)."""
    from HRMMPredictLib.fusion import DeepOptions

    if a.no_deep:
        return DeepOptions(enabled=False)
    from HRMMPredictLib.deep.model import DeepTrainConfig

    dcfg = DeepTrainConfig(epochs=a.epochs, batch_size=a.batch_size, seed=a.seed, val_fraction=a.deep_val_fraction,
                           pretrained_weights=a.weights)
    return DeepOptions(train=dcfg, device=a.device, fusion_fit=a.fusion_fit, threads=a.threads,
                       deep_cv=getattr(a, "deep_cv", None))


def cmd_train(a) -> int:
    from HRMMPredictLib.radiomics.executors import check_scheduler
    from HRMMPredictLib.radiomics.model import RadiomicsTrainConfig
    from HRMMPredictLib.training import format_training_summary, train_bundle

    check_scheduler(a.scheduler)
    _check_params_file(a.params)
    cfg = RadiomicsTrainConfig(seed=a.seed, validation_fraction=a.validation_fraction,
                               icc_threshold=a.icc_threshold, mrmr_k=a.mrmr_k, tune=a.tune)
    t0 = time.perf_counter()
    summary = train_bundle(a.manifest, a.out, a.params, cfg, cache_dir=a.cache, n_jobs=a.jobs, progress=_step,
                           extraction_progress=_progress_bar("extracting features"), overwrite=a.overwrite,
                           deep=deep_options_from_args(a), epoch_progress=_epoch_line, scheduler=a.scheduler)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    emit(summary, a.json, None if a.json else format_training_summary(summary))
    return EXIT_OK


def cmd_predict(a) -> int:
    from HRMMPredictLib.predict import format_prediction, predict_case

    inputs = [a.t1, a.t2, a.fst2, a.roi]
    if a.preview:
        check_output_path(a.preview, overwrite=a.overwrite, what="--preview", inputs=inputs)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    res = predict_case({"t1": a.t1, "t2": a.t2, "fst2": a.fst2}, a.roi, a.model, resample_roi=a.resample_roi,
                       device=a.device, progress=None if a.json else _step, preview=False, preview_path=a.preview)
    emit(res, a.json, None if a.json else format_prediction(res))
    return EXIT_OK


def cmd_evaluate(a) -> int:
    from HRMMPredictLib.evaluation.evaluate import evaluate_bundle

    res = evaluate_bundle(a.model, a.out, a.manifest or (), progress=_step, bar=_progress_bar("predicting"),
                          overwrite=a.overwrite, data_source=a.data_source)
    for w in res.get("warnings", ()):  # the same warnings as the report's
        print(f"warning: {w}", file=sys.stderr)
    lines = [f"Report: {res['report']}"] + [
        f"  {set_name:<28} " + "  ".join(f"{m} AUC {v:.3f}" for m, v in aucs.items())
        for set_name, aucs in res["sets"].items()]
    if not a.json:
        for note in res["notes"]:
            _step(note)
    emit(res, a.json, "\n".join(lines))
    return EXIT_OK


def cmd_info(a) -> int:
    from HRMMPredictLib.bundle import verify_bundle
    from HRMMPredictLib.slicer.panel_results import bundle_summary_lines

    # the full verification of loading (schema, every file's checksum, nothing unlisted or
    # outside, versions) plus every estimator loaded with the strict allow-list
    summary = verify_bundle(a.model).summary()
    emit(summary, a.json, "\n".join([f"Model bundle {summary['path']} (manifest, checksums, models and versions "
                                      "checked)"]
                                    + bundle_summary_lines(summary)))
    return EXIT_OK


# ---------------------------------------------------------------------------------------
# Parser


def _device_option(p, what: str) -> None:
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help=f"where {what} runs: auto (CUDA when a GPU is usable, else CPU), cpu or cuda")


def _threads_option(p) -> None:
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for torch (default: torch's choice)")


def _params_option(p) -> None:
    p.add_argument("--params", default=None, metavar="YAML",
                   help="pyradiomics parameter file (default: the shipped 1197-feature file "
                        "Resources/hrmm_radiomics.yaml, the study's settings)")


def _jobs_option(p) -> None:
    p.add_argument("--jobs", type=int, default=None, metavar="N",
                   help="parallel feature-extraction processes (default: all cores)")


def _scheduler_option(p) -> None:
    p.add_argument("--scheduler", default=None, metavar="ADDRESS|local",
                   help="run the feature extraction on a Dask cluster: the scheduler's address tcp://HOST:PORT "
                        "(workers started by the site; see docs/hrmm_method.md), or 'local' for a Dask "
                        "LocalCluster of --jobs workers (default 2) on this machine; same cache and results as "
                        "without (needs pip install \"dask[distributed]\")")


def _manifest_option(p) -> None:
    p.add_argument("--manifest", required=True, metavar="CSV",
                   help="cohort manifest (CSV): one row per lesion with patient_id, lesion_id, label (1 HRMM, "
                        "0 SRMM) and the t1, t2, fst2, roi image paths")


def _cohort_options(p, out_metavar: str, out_help: str) -> None:
    """The options of the commands that extract a cohort's features: the cohort manifest,
    the output, the radiomics settings, parallel jobs and the cache."""
    _manifest_option(p)
    p.add_argument("--out", required=True, metavar=out_metavar, help=out_help)
    _params_option(p)
    _jobs_option(p)
    _scheduler_option(p)
    p.add_argument("--cache", default=None, metavar="DIR",
                   help="cache folder for features and 2.5D stacks (default: .hrmm_cache beside the cohort manifest)")


def build_parser():
    ap, sub = tool_parser(prog="hrmm", description=DESCRIPTION, epilog=WORKFLOW)
    sub.required = True

    p = add_command(sub, "demo", "generate a synthetic cohort, train, predict a held-out lesion, write the report")
    p.add_argument("--out", default="demo_output", metavar="DIR",
                   help="output folder (default: demo_output): cohort/, model/, report/, prediction.json")
    p.add_argument("--patients", type=int, default=20, metavar="N", help="synthetic patients (default: 20)")
    _jobs_option(p)
    p.add_argument("--seed", type=int, default=0, help="random seed of the cohort and the training (default: 0)")
    p.add_argument("--epochs", type=int, default=2, metavar="N",
                   help="deep-model epochs (default 2 for the demo; the paper: 300)")
    _device_option(p, "the deep model")
    p.add_argument("--no-deep", action="store_true", help="radiomics models only (no DenseNet169, no fusion)")
    add_overwrite(p)
    add_json(p, "the outputs, the training summary and the held-out prediction")
    p.set_defaults(func=cmd_demo)

    p = add_command(sub, "generate-demo", "write a deterministic synthetic spine MRI cohort and its cohort manifest")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (cohort.csv and images/)")
    p.add_argument("--patients", type=int, default=30, metavar="N",
                   help="patients (default: 30; some have 2-3 lesions)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0); the same seed gives the same files")
    p.add_argument("--effect-size", type=float, default=1.0, metavar="E",
                   help="how much HRMM lesions differ from SRMM lesions (default: 1.0; 0: not at all)")
    p.add_argument("--shape", default=None, metavar="SxRxC", help="image size SLICESxROWSxCOLS (default: 12x160x160)")
    add_overwrite(p)
    add_json(p, "the cohort manifest's path")
    p.set_defaults(func=cmd_generate_demo)

    p = add_command(sub, "validate", "check a cohort manifest and report every problem at once, with row numbers")
    _manifest_option(p)
    add_json(p, "the cohort summary")
    p.set_defaults(func=cmd_validate)

    p = add_command(sub, "extract", "radiomics features of one image + mask -> one CSV row")
    p.add_argument("--image", required=True, metavar="IMAGE", help="image file (NIfTI, NRRD, MHA) or DICOM series folder")
    p.add_argument("--mask", required=True, metavar="MASK", help="ROI mask on the image's grid (any non-zero voxel)")
    _params_option(p)
    p.add_argument("--out", required=True, metavar="CSV", help="output CSV (one row, one column per feature)")
    p.add_argument("--label", type=int, default=None, help="mask label to use (default: any non-zero voxel)")
    p.add_argument("--diagnostics", action="store_true", help="also write pyradiomics' diagnostics columns")
    p.add_argument("--no-n4", action="store_true", help="skip N4 bias-field correction")
    p.add_argument("--resample-roi", action="store_true", help="resample the mask onto the image (nearest neighbour)")
    add_overwrite(p)
    p.set_defaults(func=cmd_extract)

    p = add_command(sub, "extract-cohort", "features of every lesion, sequence and reader ROI of a cohort (cached)")
    _cohort_options(p, "DIR", "folder for features_<roi>.csv (one per ROI column)")
    add_overwrite(p)
    add_json(p, "the feature tables written")
    p.set_defaults(func=cmd_extract_cohort)

    p = add_command(sub, "train", "train the models of a cohort and write a model bundle")
    _cohort_options(p, "MODEL_DIR", "model bundle folder (written when complete)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the selection and the models (default: 0)")
    p.add_argument("--validation-fraction", type=float, default=0.2, metavar="F",
                   help="share of patients held out for validation, stratified by class (default: 0.2)")
    p.add_argument("--icc-threshold", type=float, default=0.75, metavar="ICC",
                   help="keep features with inter- and intra-reader ICC at least this (default: 0.75)")
    p.add_argument("--mrmr-k", type=int, default=100, metavar="K", help="features kept by mRMR (default: 100)")
    p.add_argument("--tune", action="store_true", help="tune ExtraTrees by patient-grouped CV on the training set")
    g = p.add_argument_group("deep model and fusion (defaults: the paper's settings)")
    g.add_argument("--no-deep", action="store_true", help="radiomics models only (no DenseNet169, no fusion)")
    g.add_argument("--epochs", type=int, default=300, metavar="N",
                   help="DenseNet169 training epochs (default: 300, the paper)")
    g.add_argument("--batch-size", type=int, default=16, metavar="N",
                   help="training batch size (default: 16, the paper)")
    g.add_argument("--device", choices=DEVICES, default="auto",
                   help="auto: CUDA when available, else CPU (slow: ~3 images/s on 2 cores, so the paper's "
                        "300 epochs on ~170 images take ~5 h)")
    g.add_argument("--weights", default=None, metavar="LOCAL_FILE",
                   help="ImageNet DenseNet169 weights to start from (torchvision .pth or .safetensors, downloaded "
                        "by you; nothing is downloaded at run time)")
    _threads_option(g)
    g.add_argument("--deep-val-fraction", type=float, default=0.2, metavar="F",
                   help="share of the training patients held out inside the training set: with --fusion-fit "
                        "paper they choose the epoch; with internal the network never sees them and the fusion "
                        "is fitted on them (default 0.2; e.g. 0.34, a third, with --fusion-fit internal)")
    g.add_argument("--fusion-fit", choices=["paper", "internal"], default="paper",
                   help="lesions the fusion selection/classifier are fitted on: paper = all training lesions "
                        "(their deep features are in-sample for the network: no training estimate without "
                        "--deep-cv, CV AUC not available, threshold 0.5); internal = the network is trained for "
                        "a fixed number of epochs without its internal-validation lesions and the fusion is "
                        "fitted and cross-validated on those (honest, fewer lesions). See docs/fusion.md")
    g.add_argument("--deep-cv", type=int, default=None, metavar="K",
                   help="honest out-of-fold estimates of the deep model and the fusion: one network per outer "
                        "fold (K folds by patient; network, PCA, radiomics selection and fusion refitted per "
                        "fold; K + 1 trainings: practical on a GPU)")
    add_overwrite(p)
    add_json(p, "the training summary")
    p.set_defaults(func=cmd_train)

    p = add_command(sub, "predict", "predict one lesion with a model bundle")
    p.add_argument("--t1", required=True, metavar="IMAGE", help="sagittal T1-weighted image (T1WI)")
    p.add_argument("--t2", required=True, metavar="IMAGE", help="sagittal T2-weighted image (T2WI)")
    p.add_argument("--fst2", required=True, metavar="IMAGE", help="sagittal fat-suppressed T2-weighted image (FS-T2WI)")
    p.add_argument("--roi", required=True, metavar="MASK",
                   help="ROI mask on the largest involved vertebral body, on the images' grid")
    p.add_argument("--model", required=True, metavar="MODEL_DIR", help="model bundle folder (written by hrmm train)")
    p.add_argument("--resample-roi", action="store_true", help="resample the ROI onto each image (nearest neighbour)")
    _device_option(p, "the deep model")
    _threads_option(p)
    p.add_argument("--preview", default=None, metavar="PNG",
                   help="write the 2.5D input (T1WI, T2WI, FS-T2WI crops + composite, ROI outlined) to this PNG")
    add_overwrite(p)
    add_json(p, "the prediction (every model, the features against their training range)")
    p.set_defaults(func=cmd_predict)

    p = add_command(sub, "evaluate", "ROC/AUC + DeLong, metrics at the stored threshold, calibration and decision "
                    "curves for every model of a bundle -> HTML report + metrics.json")
    p.add_argument("--model", required=True, metavar="MODEL_DIR", help="model bundle folder")
    p.add_argument("--manifest", action="append", default=[], metavar="CSV",
                   help="cohort manifest to evaluate besides the bundle's own training/validation split "
                        "(e.g. an external cohort); repeatable")
    p.add_argument("--out", required=True, metavar="DIR", help="report folder (index.html, metrics.json)")
    p.add_argument("--data-source", metavar="TEXT", default=None,
                   help="what the training data were (e.g. 'Site A 2019-2023', 'synthetic'); shown in the report's "
                        "title, summary and model card (the demo's synthetic cohort is recognised without it)")
    add_overwrite(p)
    add_json(p, "the report's paths, every set's AUCs with their CIs, and the warnings")
    p.set_defaults(func=cmd_evaluate)

    p = add_command(sub, "info", "verify a model bundle as loading does (manifest schema, every file's checksum, "
                                 "nothing unlisted or outside, the models, package versions) and show its summary")
    p.add_argument("--model", required=True, metavar="MODEL_DIR", help="model bundle folder")
    add_json(p, "the bundle summary")
    p.set_defaults(func=cmd_info)

    from HRMMPredictLib.cli import stats_commands

    stats_commands.register(sub)
    return ap


def _main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or EXIT_OK)


def main(argv: list[str] | None = None) -> int:
    """The ``hrmm`` entry point: exit status 0 done, 2 bad input (one ``error:`` line)."""
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
