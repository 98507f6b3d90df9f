"""Uncertainty statistics and the diverse active-learning queue (AnnotationQCLib.loop.ranking),
checked against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from AnnotationQCLib.loop import ranking


def test_sample_statistics_by_hand():
    # three predictions of a 1 x 1 x 4 volume
    p = np.array([[[[0.9, 0.9, 0.1, 0.1]]], [[[0.9, 0.1, 0.1, 0.1]]], [[[0.9, 0.9, 0.9, 0.1]]]], np.float32)
    s = ranking.sample_statistics(p)
    # masks: {0,1}, {0}, {0,1,2}; pairwise Dice 2*1/3, 2*2/5, 2*1/4
    pairwise = np.mean([2 / 3, 4 / 5, 2 / 4])
    assert s["mean_pairwise_dice"] == pytest.approx(pairwise)
    assert s["score"] == pytest.approx(1 - pairwise)
    np.testing.assert_allclose(s["variance"].ravel(), np.var(p.reshape(3, 4), axis=0), rtol=1e-6)
    # union = voxels 0..2
    assert s["mean_variance_in_lesion"] == pytest.approx(np.var(p.reshape(3, 4), axis=0)[:3].mean(), rel=1e-6)
    assert s["empty_samples"] == 0 and s["samples"] == 3


def test_identical_and_empty_predictions_score_zero_and_say_why():
    same = np.repeat(np.random.default_rng(0).uniform(0, 1, (1, 4, 4, 4)), 5, axis=0)
    assert ranking.sample_statistics(same)["score"] == pytest.approx(0.0)
    empty = np.full((4, 3, 3, 3), 0.1)
    s = ranking.sample_statistics(empty)
    assert s["score"] == 0.0 and s["empty_samples"] == 4
    assert "all 4 predictions are empty" in ranking.reason(s)


def test_diversity_term_demotes_a_near_duplicate():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(1, 8, 8, 8))
    b = rng.normal(size=(1, 8, 8, 8))
    prop = np.zeros((8, 8, 8), np.uint8)
    da = ranking.descriptor(a, prop)
    da2 = ranking.descriptor(a + rng.normal(scale=0.01, size=a.shape), prop)  # near-identical to A
    db = ranking.descriptor(b, prop)
    items = [{"case_id": "A", "score": 1.0, "descriptor": da, "reason": "r"},
             {"case_id": "A2", "score": 0.95, "descriptor": da2, "reason": "r"},
             {"case_id": "B", "score": 0.7, "descriptor": db, "reason": "r"}]
    plain = ranking.diverse_queue(items, 3, weight=0.0)
    assert [q["case_id"] for q in plain] == ["A", "A2", "B"]
    diverse = ranking.diverse_queue(items, 3, weight=0.5)
    assert [q["case_id"] for q in diverse] == ["A", "B", "A2"]
    second = diverse[1]
    assert second["similar_to"] == "A" and second["similarity"] < 0.5
    assert diverse[2]["similarity"] > 0.99 and "similarity" in diverse[2]["why"]
    # the priority is the relative score times the diversity factor, as the reason says
    assert diverse[1]["priority"] == pytest.approx(0.7 * (1 - 0.5 * max(0.0, second["similarity"])))
    assert diverse[0]["priority"] == 1.0 and diverse[0]["similar_to"] is None


def test_queue_arguments_are_checked():
    with pytest.raises(ValueError):
        ranking.diverse_queue([], 0)
    with pytest.raises(ValueError):
        ranking.diverse_queue([], 1, weight=1.5)
    assert ranking.diverse_queue([], 3) == []


def test_validation_split_is_stable_between_rounds():
    from AnnotationQCLib.loop.model import split_patients
    from ClinicalMRICommonLib.errors import UserError

    first = ["p1", "p2", "p3", "p4"]
    val1 = split_patients(first, 0, 0.25)
    assert len(val1) == 1
    grown = first + ["p5", "p6", "p7", "p8"]
    previous = {"val": sorted(val1), "train": sorted(set(first) - val1)}
    val2 = split_patients(grown, 0, 0.25, previous)
    assert val1 <= val2 and len(val2) == 2 and not (set(first) - val1) & val2  # nobody changes side
    assert split_patients(grown, 0, 0.25, previous) == val2  # deterministic
    assert split_patients(first, 1, 0.25) != val1 or split_patients(first, 2, 0.25) != val1  # the seed matters
    assert len(split_patients(["a", "b"], 0, 0.9)) == 1  # one patient always trains
    with pytest.raises(UserError, match="at least 2"):
        split_patients(["a", "a"], 0, 0.25)
