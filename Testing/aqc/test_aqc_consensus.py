"""Consensus: STAPLE (checked by hand and against an independent EM implementation),
majority vote with its tie rule, vote counts and the disagreement map."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
from ClinicalMRICommonLib.agreement.consensus import disagreement_map, majority_vote, staple, vote_count
from ClinicalMRICommonLib.errors import UserError
from scipy import ndimage

SHAPE = (12, 30, 30)


def im(a, spacing=(0.8, 0.8, 3.0)):
    x = sitk.GetImageFromArray(np.asarray(a, dtype=np.uint8))
    x.SetSpacing(spacing)
    x.SetOrigin((1.0, 2.0, 3.0))
    return x


def arr(x):
    return sitk.GetArrayFromImage(x)


@pytest.fixture(scope="module")
def readers():
    truth = np.zeros(SHAPE, bool)
    truth[3:9, 8:22, 6:20] = True                      # 6 x 14 x 14 = 1176 voxels
    exact = truth.copy()
    under = ndimage.binary_erosion(truth)              # 4 x 12 x 12 = 576 voxels
    over = ndimage.binary_dilation(truth)              # 1176 + 2*196 + 4*84 = 1904 voxels
    return truth, exact, under, over


def test_staple_hand_computed(readers):
    """One exact reader, one that under- and one that over-segments: STAPLE recovers the
    truth, and each reader's sensitivity/specificity are the plain counts against it."""
    truth, exact, under, over = readers
    assert (under.sum(), over.sum()) == (576, 1904)
    consensus, prob, per_reader = staple([im(exact), im(under * 5), im(over)])  # any non-zero label
    np.testing.assert_array_equal(arr(consensus), truth.astype(np.uint8))
    n_bg = truth.size - truth.sum()
    assert [r["reader"] for r in per_reader] == [1, 2, 3]
    assert per_reader[0]["sensitivity"] == pytest.approx(1.0, abs=1e-6)
    assert per_reader[1]["sensitivity"] == pytest.approx(576 / 1176, abs=1e-6)
    assert per_reader[2]["sensitivity"] == pytest.approx(1.0, abs=1e-6)
    assert per_reader[0]["specificity"] == pytest.approx(1.0, abs=1e-6)
    assert per_reader[1]["specificity"] == pytest.approx(1.0, abs=1e-6)
    assert per_reader[2]["specificity"] == pytest.approx(1 - (1904 - 1176) / n_bg, abs=1e-6)
    assert prob.GetPixelID() == sitk.sitkFloat32
    assert prob.GetSpacing() == (0.8, 0.8, 3.0) and prob.GetOrigin() == (1.0, 2.0, 3.0)


def _staple_em(masks, tol=1e-12, max_iter=1000):
    """Independent STAPLE (Warfield 2004) EM in numpy: global prior = mean label,
    sensitivities/specificities start at 0.99999."""
    d = np.stack([m.ravel() for m in masks]).astype(float)
    g = d.mean()
    p = np.full(len(masks), 0.99999)
    q = np.full(len(masks), 0.99999)
    for _ in range(max_iter):
        a = g * np.prod(np.where(d == 1, p[:, None], 1 - p[:, None]), axis=0)
        b = (1 - g) * np.prod(np.where(d == 0, q[:, None], 1 - q[:, None]), axis=0)
        w = a / (a + b)
        pn = (w * d).sum(1) / w.sum()
        qn = ((1 - w) * (1 - d)).sum(1) / (1 - w).sum()
        done = np.abs(pn - p).sum() + np.abs(qn - q).sum() < tol
        p, q = pn, qn
        if done:
            break
    return w.reshape(masks[0].shape), p, q


def test_staple_matches_independent_em():
    rng = np.random.default_rng(4)
    base = ndimage.gaussian_filter(rng.normal(size=SHAPE), 2.0)
    masks = [(base + 0.01 * rng.normal(size=SHAPE) > t) for t in (0.0, 0.02, -0.015, 0.03)]
    _, prob, per_reader = staple([im(m) for m in masks])
    w, p, q = _staple_em(masks)
    assert np.abs(arr(prob) - w).max() < 1e-4
    np.testing.assert_allclose([r["sensitivity"] for r in per_reader], p, atol=1e-4)
    np.testing.assert_allclose([r["specificity"] for r in per_reader], q, atol=1e-4)


def test_majority_vote_counts_and_disagreement():
    a, b, c, d = (np.zeros((1, 1, 6), np.uint8) for _ in range(4))
    # voxel:      0  1  2  3  4  5
    a[0, 0] = [0, 1, 1, 1, 1, 0]
    b[0, 0] = [0, 0, 1, 1, 1, 0]
    c[0, 0] = [0, 0, 0, 1, 1, 1]
    d[0, 0] = [0, 0, 0, 0, 1, 0]
    three = [im(a), im(b), im(c)]
    np.testing.assert_array_equal(arr(vote_count(three))[0, 0], [0, 1, 2, 3, 3, 1])
    np.testing.assert_array_equal(arr(majority_vote(three))[0, 0], [0, 0, 1, 1, 1, 0])
    np.testing.assert_array_equal(arr(disagreement_map(three))[0, 0], [0, 1, 1, 2, 2, 1])
    four = three + [im(d)]
    # counts 0,1,2,3,4,1: a 2-of-4 tie goes to background
    np.testing.assert_array_equal(arr(majority_vote(four))[0, 0], [0, 0, 0, 1, 1, 0])
    np.testing.assert_array_equal(arr(disagreement_map(four))[0, 0], [0, 1, 1, 1, 2, 1])
    out = majority_vote(three)
    assert out.GetPixelID() == sitk.sitkUInt8 and out.GetSpacing() == (0.8, 0.8, 3.0)


def test_bad_input():
    m = np.zeros(SHAPE, np.uint8)
    m[2:4, 2:4, 2:4] = 1
    with pytest.raises(UserError, match="at least 2"):
        staple([im(m)])
    with pytest.raises(UserError, match="mask 2 is on a different grid"):
        majority_vote([im(m), im(m, spacing=(1, 1, 1))])
    with pytest.raises(UserError, match="all reader masks are empty"):
        staple([im(np.zeros(SHAPE)), im(np.zeros(SHAPE))])
    with pytest.raises(UserError, match="threshold"):
        staple([im(m), im(m)], threshold=1.5)


def test_cli_consensus_of_masks_within_the_grid_tolerance(tmp_path):
    """Readers' masks saved with origins 5e-5 mm apart (within GRID_TOLERANCE, e.g. written
    by different tools): `annotation-qc consensus` runs STAPLE (it printed an ITK traceback)."""
    import subprocess
    import sys

    from ClinicalMRICommonLib.grids import GRID_TOLERANCE

    a = np.zeros(SHAPE, np.uint8)
    a[3:9, 8:22, 6:20] = 1
    paths = []
    for i, shift in enumerate((0.0, GRID_TOLERANCE / 2, -GRID_TOLERANCE / 2)):
        m = im(a)
        m.SetOrigin(tuple(o + shift for o in m.GetOrigin()))
        paths.append(tmp_path / f"r{i}.nii.gz")
        sitk.WriteImage(m, str(paths[-1]))
    out = tmp_path / "consensus.nii.gz"
    r = subprocess.run([sys.executable, "-m", "AnnotationQCLib.cli", "consensus", "--masks", *map(str, paths),
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    res = sitk.ReadImage(str(out))
    assert np.array_equal(arr(res), a) and np.allclose(res.GetOrigin(), (1.0, 2.0, 3.0), atol=1e-6)
