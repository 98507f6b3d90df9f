"""2.5D stacks of a cohort (HRMMPredictLib.deep.cohort): the same function for training and
prediction, the cache (arrays keyed by file contents and settings, no pickles) and the
previews for people."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from ClinicalMRICommonLib.errors import UserError
from HRMMPredictLib.deep.cohort import (CACHE_SUBDIR, DeepInputConfig, cohort_stacks, lesion_stack,
                                        read_lesion_images, stack_key)
from HRMMPredictLib.deep.input import stack_25d
from HRMMPredictLib.cohort import load_cohort_manifest

CFG = DeepInputConfig(size=64)


def test_cohort_stacks_cache_and_one_function(small_cohort, tmp_path):
    cohort = load_cohort_manifest(small_cohort).iloc[:3]
    stacks, info = cohort_stacks(cohort, tmp_path, CFG)
    assert stacks.shape == (3, 3, 64, 64) and stacks.dtype == np.uint8
    assert not info["cached"].any() and list(info["lesion_id"]) == list(cohort["lesion_id"])
    folder = tmp_path / CACHE_SUBDIR
    for key, preview in zip(info["key"], info["preview"]):
        with np.load(folder / f"{key}.npz", allow_pickle=False) as z:     # plain arrays, no pickle
            assert z["stack"].dtype == np.uint8 and z["roi"].dtype == bool
        assert json.loads((folder / f"{key}.json").read_text())["T1WI"]["orientation"]
        assert preview.endswith(".png") and open(preview, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # a second run reads everything from the cache, identically
    again, info2 = cohort_stacks(cohort, tmp_path, CFG)
    assert info2["cached"].all() and np.array_equal(again, stacks)
    # the same function as prediction: read the files, one mask -> stack_25d; one mask per sequence -> same
    r = cohort.iloc[0]
    images, mask = read_lesion_images(r)
    direct, meta = lesion_stack(images, mask, CFG)
    assert np.array_equal(direct, stacks[0])
    assert np.array_equal(direct, stack_25d(images["t1"], images["t2"], images["fst2"], mask, **CFG.crop_kwargs()))
    per_seq, _ = lesion_stack(images, {s: mask for s in ("t1", "t2", "fst2")}, CFG)
    assert np.array_equal(per_seq, direct)
    # the slice is the one with the largest ROI area along the thick (4.8 mm) axis, numpy axis 0
    areas = sitk.GetArrayFromImage(mask).sum(axis=(1, 2))
    assert meta["crops"]["T1WI"]["slice_index"] == int(np.argmax(areas)) == info.loc[0, "slice_T1WI"]


def test_cache_key_follows_contents_and_settings(small_cohort, tmp_path):
    cohort = load_cohort_manifest(small_cohort).iloc[:1]
    _, info = cohort_stacks(cohort, tmp_path, CFG)
    other = DeepInputConfig(size=64, margin=2)
    assert stack_key(cohort.iloc[0], other) != info.loc[0, "key"]
    s2, info2 = cohort_stacks(cohort, tmp_path, other)
    assert not info2["cached"].any()
    # a damaged cache entry is recomputed, not trusted
    npz = tmp_path / CACHE_SUBDIR / f"{info.loc[0, 'key']}.npz"
    good, _ = cohort_stacks(cohort, tmp_path, CFG)
    npz.write_bytes(b"not an npz file")
    s3, info3 = cohort_stacks(cohort, tmp_path, CFG)
    assert not info3["cached"].any() and np.array_equal(s3, good)


def test_settings_round_trip_and_errors(small_cohort, tmp_path):
    d = DeepInputConfig(size=96, unsharp=None).to_dict()
    assert DeepInputConfig.from_dict(json.loads(json.dumps(d))) == DeepInputConfig(size=96, unsharp=None)
    assert DeepInputConfig.from_dict(DeepInputConfig().to_dict()) == DeepInputConfig()
    with pytest.raises(UserError, match="unknown 2.5D input setting"):
        DeepInputConfig.from_dict({"size": 64, "zoom": 2})
    cohort = load_cohort_manifest(small_cohort).iloc[:1]
    with pytest.raises(UserError, match="not in the cohort manifest"):
        cohort_stacks(cohort, tmp_path, CFG, lesion_ids=["nope"])
    images, mask = read_lesion_images(cohort.iloc[0])
    with pytest.raises(UserError, match="FS-T2WI image is missing"):
        lesion_stack({"t1": images["t1"], "t2": images["t2"]}, mask, CFG)
