"""The README's demo (``hrmm demo``): generate a synthetic cohort, train the radiomics, deep
and fusion models, predict one held-out lesion, write the evaluation report.

The deep model trains for DEMO_EPOCHS epochs only (the paper: 300), with torch using every
core, so the whole demo stays under 5 minutes on a 2-core CPU; its numbers show the
pipeline working, not the method's accuracy.

This module uses the library only (not :mod:`HRMMPredictLib.cli.main`, which calls it).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Callable

from ClinicalMRICommonLib.files import check_output_path, write_json_atomic

DEMO_EPOCHS = 2


def run_demo(out: Path, n_patients: int = 20, jobs: int | None = None, seed: int = 0,
             progress: Callable[[str], None] = print, bar=None, epochs: int = DEMO_EPOCHS, deep: bool = True,
             device: str = "auto", epoch_progress=None, overwrite: bool = False,
             show: Callable[[str], None] | None = print) -> dict:
    """Run the demo into ``out`` (new or empty, or replaced with ``overwrite``): cohort/,
    model/, report/, prediction.json and, with the deep model, prediction_input.png.

    ``progress`` gets the steps, ``bar(description)`` makes progress-bar callbacks, ``show``
    gets the texts people read (the training summary, the prediction; None: quiet).
    Returns the paths written, the training summary and the held-out prediction."""
    import pandas as pd

    from HRMMPredictLib.evaluation.evaluate import evaluate_bundle
    from HRMMPredictLib.fusion import DeepOptions
    from HRMMPredictLib.predict import format_prediction, predict_case
    from HRMMPredictLib.radiomics.model import RadiomicsTrainConfig
    from HRMMPredictLib.sequences import SEQUENCES
    from HRMMPredictLib.synthetic import generate_cohort
    from HRMMPredictLib.training import format_training_summary, train_bundle

    say = show or (lambda text: None)
    t0 = time.perf_counter()
    out = check_output_path(out, overwrite=overwrite, what="demo folder", folder=True)
    cohort_dir = out / "cohort"
    progress(f"1/3 generating a synthetic cohort of {n_patients} patients in {cohort_dir}")
    manifest = generate_cohort(cohort_dir, n_patients=n_patients, seed=seed,
                               progress=bar("generating cases") if bar else None, overwrite=True)
    if deep:
        from HRMMPredictLib.deep.model import DeepTrainConfig

        deep_opts = DeepOptions(train=DeepTrainConfig(epochs=epochs, seed=seed), device=device,
                                threads=os.cpu_count() or 1)
        progress(f"2/3 training: radiomics (reader-agreement filter, selection, ExtraTrees + logistic regression), "
                 f"DenseNet169 on 2.5D crops ({epochs} epochs for the demo; the paper: 300), radiomics + deep fusion")
    else:
        deep_opts = DeepOptions(enabled=False)
        progress("2/3 training (radiomics, reader-agreement filter, selection, ExtraTrees + logistic regression)")
    summary = train_bundle(manifest, out / "model", cfg=RadiomicsTrainConfig(seed=seed), n_jobs=jobs,
                           progress=progress, extraction_progress=bar("extracting features") if bar else None,
                           overwrite=True, deep=deep_opts, epoch_progress=epoch_progress)
    say(format_training_summary(summary))

    preds = pd.read_csv(Path(summary["model_dir"]) / "training" / "predictions.csv")
    held_out = preds[preds["split"] == "validation"].iloc[0]
    cohort = pd.read_csv(manifest, dtype=str)
    row = cohort[cohort["lesion_id"] == held_out["lesion_id"]].iloc[0]
    base = Path(manifest).parent
    progress(f"3/3 predicting held-out lesion {row['lesion_id']} (patient {row['patient_id']}, "
             f"never seen in training)")
    preview = out / "prediction_input.png" if deep else None
    result = predict_case({s: base / row[s] for s in SEQUENCES}, base / row["roi"], summary["model_dir"],
                          device=device, preview=False, preview_path=preview)
    say(format_prediction(result))
    truth = "HRMM" if str(row["label"]) == "1" else "SRMM"
    say(f"True class of {row['lesion_id']}: {truth}")
    prediction = {"lesion_id": row["lesion_id"], "true_class": truth, **result}
    write_json_atomic(out / "prediction.json", prediction)

    progress("writing the evaluation report (ROC/DeLong, calibration, decision curves)")
    ev = evaluate_bundle(summary["model_dir"], out / "report", overwrite=True)
    say(f"Evaluation report: {ev['report']}")
    seconds = time.perf_counter() - t0
    progress(f"demo finished in {seconds:.0f} s; outputs in {out}")
    return {"out": str(out), "cohort_manifest": str(manifest), "model_dir": summary["model_dir"],
            "report": ev["report"], "prediction_file": str(out / "prediction.json"), "seconds": round(seconds, 1),
            "training": summary, "prediction": prediction}
