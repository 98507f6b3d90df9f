"""Small trained HRMM models for tests: a synthetic cohort, a reduced pyradiomics parameter
file (same pipeline, fewer features, so training takes seconds), a radiomics-only bundle
(``trained_bundle``) and one with the deep model and the fusion (``fused_bundle``)."""

from __future__ import annotations

from pathlib import Path

import pytest

SHAPE = (8, 80, 96)
SPACING = (1.0, 1.0, 4.8)


@pytest.fixture(scope="session")
def small_params(tmp_path_factory) -> Path:
    from HRMMPredictLib.radiomics.features import SMALL_PARAMS

    p = tmp_path_factory.mktemp("params") / "small.yaml"
    p.write_text(SMALL_PARAMS.read_text())
    return p


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory) -> Path:
    from HRMMPredictLib.synthetic import generate_cohort

    out = tmp_path_factory.mktemp("cohort")
    return generate_cohort(out, n_patients=16, seed=7, effect_size=1.5, shape=SHAPE, spacing=SPACING,
                           multi_lesion_fraction=0.25)


@pytest.fixture(scope="session")
def small_config():
    from HRMMPredictLib.radiomics.model import RadiomicsTrainConfig

    return RadiomicsTrainConfig(seed=0, validation_fraction=0.25, mrmr_k=10, lasso_cv=3, cv_folds=3, icc_threshold=0.6)


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory, small_cohort, small_params, small_config) -> tuple[Path, dict]:
    """Radiomics models only (``hrmm train --no-deep``)."""
    from HRMMPredictLib.fusion import DeepOptions
    from HRMMPredictLib.training import train_bundle

    out = tmp_path_factory.mktemp("model") / "bundle"
    summary = train_bundle(small_cohort, out, small_params, small_config, n_jobs=1, deep=DeepOptions(enabled=False))
    return out, summary


# Tiny deep-model settings for tests: 64 x 64 crops, one epoch, batch 4, one torch thread
# (the network, the selection and the fusion are the real ones; only the sizes shrink).
DEEP_TEST_SIZE = 64


def tiny_deep_options(**overrides):
    from HRMMPredictLib.deep.cohort import DeepInputConfig
    from HRMMPredictLib.deep.model import DeepTrainConfig
    from HRMMPredictLib.fusion import DeepOptions

    train = DeepTrainConfig(epochs=1, batch_size=4, val_fraction=0.25, eval_batch_size=8)
    opts = dict(train=train, input=DeepInputConfig(size=DEEP_TEST_SIZE), device="cpu", threads=1)
    opts.update(overrides)
    return DeepOptions(**opts)


@pytest.fixture(scope="session")
def fused_bundle(tmp_path_factory, small_cohort, small_params, small_config) -> tuple[Path, dict]:
    """The same cohort and settings as ``trained_bundle`` plus the deep model and the fusion
    (``trained_bundle`` stays radiomics-only: the ``--no-deep`` path)."""
    from HRMMPredictLib.training import train_bundle

    out = tmp_path_factory.mktemp("fused") / "bundle"
    summary = train_bundle(small_cohort, out, small_params, small_config, n_jobs=1, deep=tiny_deep_options())
    return out, summary
