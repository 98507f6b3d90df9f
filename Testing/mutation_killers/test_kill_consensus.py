"""Consensus (ClinicalMRICommonLib.agreement.consensus) at its edges, from the survivors of
mutation testing: vector masks, an empty reader list, negative labels, the vote-count voxel
type at 255/256 readers, majority ties with 6 readers, the STAPLE threshold bounds and the
grid every output carries (mask 1's, also when readers differ within the grid tolerance).
Every expected value is counted by hand on masks of a few voxels."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from ClinicalMRICommonLib.agreement import consensus as C
from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.grids import GRID_TOLERANCE

SPACING = (0.8, 0.8, 3.0)
ORIGIN = (1.0, 2.0, 3.0)


def img(values, dtype=np.uint8, origin=ORIGIN):
    """A 1 x 1 x n image holding ``values`` along x."""
    x = sitk.GetImageFromArray(np.asarray(values, dtype=dtype).reshape(1, 1, -1))
    x.SetSpacing(SPACING)
    x.SetOrigin(origin)
    return x


def row(image):
    return sitk.GetArrayFromImage(image).reshape(-1).tolist()


def test_vector_mask_refused():
    vec = sitk.Image([3, 1, 1], sitk.sitkVectorUInt8, 2)
    vec.SetSpacing(SPACING)
    vec.SetOrigin(ORIGIN)
    scalar = img([0, 1, 1])
    with pytest.raises(UserError, match="mask 2 has 2 components per voxel"):
        C.majority_vote([scalar, vec])
    with pytest.raises(UserError, match="mask 1 has 2 components per voxel"):
        C.vote_count([vec])


def test_vote_count_needs_one_mask_and_accepts_one():
    with pytest.raises(UserError, match="at least 1 reader masks, got 0"):
        C.vote_count([])
    assert row(C.vote_count([img([0, 2, 1])])) == [0, 1, 1]


def test_negative_labels_are_foreground_like_any_non_zero_value():
    # "every non-zero voxel counts as foreground": a label -1 (signed label maps) is drawn
    a = img([0, -1, -1, 0], np.int16)
    b = img([0, 1, 0, 0], np.int16)
    c = img([0, 3, -2, 0], np.int16)
    assert row(C.vote_count([a, b, c])) == [0, 3, 2, 0]
    assert row(C.majority_vote([a, b, c])) == [0, 1, 1, 0]
    assert row(C.disagreement_map([a, b, c])) == [0, 2, 1, 0]


def test_vote_count_type_holds_255_and_256_readers():
    # voxel 0: nobody, voxel 1: every reader, voxel 2: every second reader (1st, 3rd, ...)
    def readers(n):
        return [img([0, 1, 1 if i % 2 == 0 else 0]) for i in range(n)]

    few = C.vote_count(readers(3))
    assert few.GetPixelID() == sitk.sitkUInt8 and row(few) == [0, 3, 2]
    c255 = C.vote_count(readers(255))
    assert c255.GetPixelID() == sitk.sitkUInt8 and row(c255) == [0, 255, 128]
    c256 = C.vote_count(readers(256))  # 256 does not fit in 8 bits
    assert c256.GetPixelID() == sitk.sitkUInt16 and row(c256) == [0, 256, 128]


def test_majority_of_six_readers_needs_four():
    # voxel k is labelled by the first k of 6 readers: counts 0..6; more than half = 4, 5, 6
    rs = [img([1 if k > i else 0 for k in range(7)]) for i in range(6)]
    assert row(C.vote_count(rs)) == [0, 1, 2, 3, 4, 5, 6]
    assert row(C.majority_vote(rs)) == [0, 0, 0, 0, 1, 1, 1]
    assert row(C.disagreement_map(rs)) == [0, 1, 1, 1, 1, 1, 2]
    # readers 2..6 alone: counts 0, 0, 1, 2, 3, 4, 5; 3 of 5 is a majority
    assert row(C.vote_count(rs[1:])) == [0, 0, 1, 2, 3, 4, 5]
    assert row(C.majority_vote(rs[1:])) == [0, 0, 0, 0, 1, 1, 1]


@pytest.mark.parametrize("bad", [-0.5, 0.0, 1.0, float("nan")])
def test_staple_threshold_must_lie_strictly_between_0_and_1(bad):
    rs = [img([0, 1, 1, 0]), img([0, 1, 0, 0])]
    with pytest.raises(UserError, match="threshold must be between 0 and 1"):
        C.staple(rs, threshold=bad)


def _readers_with_origins(off):
    return [img([0, 1, 1, 1, 0]), img([0, 1, 1, 0, 0], origin=off), img([0, 0, 1, 1, 0], origin=off)]


def test_outputs_take_mask_1_grid_when_readers_differ_within_tolerance():
    # readers 2 and 3 were saved with an origin off by half the grid tolerance: the same grid
    # (same_grid), but every output must carry mask 1's grid exactly, so that the outputs of
    # one call agree with each other
    rs = _readers_with_origins(tuple(o + GRID_TOLERANCE / 2 for o in ORIGIN))
    counts, maj, dis = C.vote_count(rs), C.majority_vote(rs), C.disagreement_map(rs)
    for out in (counts, maj, dis):
        assert out.GetOrigin() == ORIGIN and out.GetSpacing() == SPACING
    assert row(counts) == [0, 2, 3, 2, 0]
    assert row(maj) == [0, 1, 1, 1, 0]
    assert row(dis) == [0, 1, 2, 1, 0]


def test_staple_outputs_take_mask_1_grid():
    # an origin difference ITK's own check (1e-6 x spacing) still accepts
    rs = _readers_with_origins(tuple(o + 4e-7 for o in ORIGIN))
    cons, prob, _ = C.staple(rs)
    assert cons.GetOrigin() == ORIGIN and prob.GetOrigin() == ORIGIN
    assert cons.GetSpacing() == SPACING and prob.GetSpacing() == SPACING
    # the two-of-three voxels are foreground, the one-reader and no-reader voxels background
    assert row(cons) == [0, 1, 1, 1, 0]


def test_staple_accepts_masks_on_the_same_grid_within_the_grid_tolerance():
    """Masks that _check_masks accepts (origins 5e-5 mm apart, within GRID_TOLERANCE) used to
    crash in ITK's stricter same-space check (RuntimeError, a traceback from the CLI)."""
    rs = _readers_with_origins(tuple(o + GRID_TOLERANCE / 2 for o in ORIGIN))
    cons, prob, _ = C.staple(rs)
    assert cons.GetOrigin() == ORIGIN and prob.GetOrigin() == ORIGIN
    assert row(cons) == [0, 1, 1, 1, 0]
