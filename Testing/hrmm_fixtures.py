"""A small trained HRMM model for tests: a synthetic cohort, a reduced pyradiomics parameter
file (same pipeline, fewer features, so training takes seconds) and a bundle."""

from __future__ import annotations

from pathlib import Path

import pytest

SMALL_PARAMS = """\
imageType:
  Original: {}
  LoG:
    sigma: [2.0]
    binCount: 32
featureClass:
  shape: [VoxelVolume, Sphericity, Elongation]
  firstorder: [Mean, Median, Variance, Skewness, Kurtosis, Entropy, Uniformity, 10Percentile, 90Percentile]
  glcm: [Contrast, Correlation, JointEntropy, Idm, ClusterShade]
  glszm: [ZoneEntropy, SmallAreaEmphasis]
setting:
  normalize: true
  normalizeScale: 100
  removeOutliers: 3
  binWidth: 5
  voxelArrayShift: 300
  label: 1
  preCrop: true
  padDistance: 10
  minimumROIDimensions: 2
  minimumROISize: 20
"""

SHAPE = (8, 80, 96)
SPACING = (1.0, 1.0, 4.8)


@pytest.fixture(scope="session")
def small_params(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("params") / "small.yaml"
    p.write_text(SMALL_PARAMS)
    return p


@pytest.fixture(scope="session")
def small_cohort(tmp_path_factory) -> Path:
    from HRMMPredictLib.synthetic import generate_cohort

    out = tmp_path_factory.mktemp("cohort")
    return generate_cohort(out, n_patients=16, seed=7, effect_size=1.5, shape=SHAPE, spacing=SPACING,
                           multi_lesion_fraction=0.25)


@pytest.fixture(scope="session")
def small_config():
    from HRMMPredictLib.model import TrainConfig

    return TrainConfig(seed=0, validation_fraction=0.25, mrmr_k=10, lasso_cv=3, cv_folds=3, icc_threshold=0.6)


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory, small_cohort, small_params, small_config) -> tuple[Path, dict]:
    from HRMMPredictLib.training import train_bundle

    out = tmp_path_factory.mktemp("model") / "bundle"
    summary = train_bundle(small_cohort, out, small_params, small_config, n_jobs=1)
    return out, summary
