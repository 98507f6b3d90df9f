"""Cohort extraction (issue 14 "Cohort scale"): the three reads of a lesion (reader 1,
reader 2, repeat) share one image, read and reoriented once; their features equal separate
extractions of each image + ROI pair."""

from __future__ import annotations

import numpy as np

from HRMMPredictLib.cohort import load_cohort_manifest
from HRMMPredictLib.radiomics.features import (SMALL_PARAMS, PreprocessConfig, extract_case_sequence, extract_cohort,
                                               load_params)
from HRMMPredictLib.roi import ROI_KINDS
from HRMMPredictLib.sequences import SEQUENCES


def test_shared_image_extraction_equals_separate_extractions(small_cohort, tmp_path):
    cohort = load_cohort_manifest(small_cohort)
    ids = list(cohort["lesion_id"][:2])
    params = load_params(SMALL_PARAMS)
    tables = extract_cohort(cohort, tmp_path / "cache", params, roi_kinds=ROI_KINDS, n_jobs=1, lesion_ids=ids)
    assert set(tables) == set(ROI_KINDS)
    for lid in ids:
        row = cohort.set_index("lesion_id").loc[lid]
        for kind in ROI_KINDS:
            for seq in SEQUENCES:
                alone = extract_case_sequence(row[seq], row[kind], params, PreprocessConfig())
                got = tables[kind].loc[lid, [f"{seq}_{k}" for k in alone]].to_numpy(float)
                np.testing.assert_allclose(got, np.array(list(alone.values())), rtol=1e-6, atol=0)
    # the reads differ (otherwise the test would prove nothing)
    assert not np.allclose(tables["roi"].loc[ids].to_numpy(float), tables["roi_reader2"].loc[ids].to_numpy(float))
