"""The README's demo: generate a synthetic cohort, train the radiomics, deep and fusion
models, predict one held-out lesion, write the evaluation report.

The deep model trains for DEMO_EPOCHS epochs only (the paper: 300), with torch using every
core, so the whole demo stays under 5 minutes on a 2-core CPU; its numbers show the
pipeline working, not the method's accuracy.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

import pandas as pd

from ClinicalMRICommonLib.files import write_json_atomic


DEMO_EPOCHS = 2


def run_demo(out: Path, n_patients: int = 20, jobs: int | None = None, seed: int = 0,
             progress: Callable[[str], None] = print, bar=None, epochs: int = DEMO_EPOCHS, deep: bool = True,
             device: str = "auto", epoch_progress=None) -> int:
    from HRMMPredictLib.cli import format_training_summary
    from HRMMPredictLib.deep_model import TrainConfig as DeepTrainConfig
    from HRMMPredictLib.fusion import DeepOptions
    from HRMMPredictLib.model import TrainConfig
    from HRMMPredictLib.predict import format_prediction, predict_case
    from HRMMPredictLib.synthetic import generate_cohort
    from HRMMPredictLib.training import train_bundle

    t0 = time.perf_counter()
    out = Path(out)
    cohort_dir = out / "cohort"
    progress(f"1/3 generating a synthetic cohort of {n_patients} patients in {cohort_dir}")
    manifest = generate_cohort(cohort_dir, n_patients=n_patients, seed=seed,
                               progress=bar("generating cases") if bar else None)
    if deep:
        deep_opts = DeepOptions(train=DeepTrainConfig(epochs=epochs, seed=seed), device=device,
                                threads=os.cpu_count() or 1)
        progress(f"2/3 training: radiomics (reader-agreement filter, selection, ExtraTrees + logistic regression), "
                 f"DenseNet169 on 2.5D crops ({epochs} epochs for the demo; the paper: 300), radiomics + deep fusion")
    else:
        deep_opts = DeepOptions(enabled=False)
        progress("2/3 training (radiomics, reader-agreement filter, selection, ExtraTrees + logistic regression)")
    summary = train_bundle(manifest, out / "model", cfg=TrainConfig(seed=seed), n_jobs=jobs, progress=progress,
                           extraction_progress=bar("extracting features") if bar else None, overwrite=True,
                           deep=deep_opts, epoch_progress=epoch_progress)
    print(format_training_summary(summary))

    preds = pd.read_csv(Path(summary["model_dir"]) / "training" / "predictions.csv")
    held_out = preds[preds["split"] == "validation"].iloc[0]
    cohort = pd.read_csv(manifest, dtype=str)
    row = cohort[cohort["lesion_id"] == held_out["lesion_id"]].iloc[0]
    base = Path(manifest).parent
    progress(f"3/3 predicting held-out lesion {row['lesion_id']} (patient {row['patient_id']}, "
             f"never seen in training)")
    result = predict_case({s: base / row[s] for s in ("t1", "t2", "fst2")}, base / row["roi"], summary["model_dir"],
                          device=device, preview=False, preview_path=out / "prediction_input.png" if deep else None)
    print(format_prediction(result))
    truth = "HRMM" if str(row["label"]) == "1" else "SRMM"
    print(f"True class of {row['lesion_id']}: {truth}")
    write_json_atomic(out / "prediction.json", {"lesion_id": row["lesion_id"], "true_class": truth, **result})
    from HRMMPredictLib.evaluate import evaluate_bundle

    progress("writing the evaluation report (ROC/DeLong, calibration, decision curves)")
    ev = evaluate_bundle(summary["model_dir"], out / "report")
    print(f"Evaluation report: {ev['report']}")
    progress(f"demo finished in {time.perf_counter() - t0:.0f} s; outputs in {out}")
    return 0
