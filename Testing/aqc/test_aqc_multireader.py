"""Four readers' outlines of one real structure: the project's Dice, majority vote and STAPLE
keep matching independent computations (numpy Dice and vote counts, SimpleITK's
STAPLEImageFilter called directly).

The readers are built from a real expert label (pyradiomics ``brain1``, a glioma on a 256 x
256 x 25 MRI, 4137 voxels), the way four radiologists differ in LIDC-IDRI-style data: one
draws it as the expert did, one a voxel wider in plane, one a voxel tighter, one shifted by a
voxel and without the last slice. (The repository holds no real four-reader data set; these
are perturbations of a real label, not four real readers.)"""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import SimpleITK as sitk
from AnnotationQCLib.cli import main
from ClinicalMRICommonLib.agreement.consensus import majority_vote, staple, vote_count
from ClinicalMRICommonLib.agreement.segmentation_metrics import compare_masks, dice
from scipy import ndimage as ndi

IN_PLANE = np.zeros((3, 3, 3), bool)
IN_PLANE[1] = ndi.generate_binary_structure(2, 1)


@pytest.fixture(scope="module")
def readers(shared_data):
    label = sitk.ReadImage(str(shared_data / "pyradiomics" / "brain1_label.nrrd"))
    r = sitk.GetArrayFromImage(label) != 0
    shifted = np.zeros_like(r)
    shifted[:, :, 1:] = r[:, :, :-1]
    last = int(np.nonzero(r)[0].max())
    shifted[last] = False
    arrays = [r, ndi.binary_dilation(r, IN_PLANE), ndi.binary_erosion(r, IN_PLANE), shifted]
    images = []
    for a in arrays:
        m = sitk.GetImageFromArray(a.astype(np.uint8))
        m.CopyInformation(label)
        images.append(m)
    return arrays, images


def test_dice_matches_numpy_for_every_reader_pair(readers):
    arrays, images = readers
    for (a, ia), (b, ib) in itertools.combinations(zip(arrays, images), 2):
        expected = 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())
        assert dice(ia, ib) == pytest.approx(expected, rel=1e-12)
        assert compare_masks(ia, ib)["dice"] == pytest.approx(expected, rel=1e-12)
        assert compare_masks(ia, ib)["volume_diff_ml"] == pytest.approx(
            (b.sum() - a.sum()) * np.prod(ia.GetSpacing()) / 1000.0)


def test_majority_and_vote_count_match_numpy(readers):
    arrays, images = readers
    count = np.sum(arrays, axis=0)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(vote_count(images)), count)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(majority_vote(images)), (count >= 3).astype(np.uint8))


def test_staple_matches_simpleitk_staple_filter(readers):
    _arrays, images = readers
    consensus, prob, per_reader = staple(images)
    f = sitk.STAPLEImageFilter()            # the filter, called directly
    f.SetForegroundValue(1)
    f.SetMaximumIterations(200)
    direct = sitk.GetArrayFromImage(f.Execute([sitk.Cast(m, sitk.sitkUInt8) for m in images]))
    np.testing.assert_allclose(sitk.GetArrayFromImage(prob), direct.astype(np.float32), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(consensus), (direct >= 0.5).astype(np.uint8))
    assert [r["sensitivity"] for r in per_reader] == pytest.approx(list(f.GetSensitivity()), abs=1e-12)
    assert [r["specificity"] for r in per_reader] == pytest.approx(list(f.GetSpecificity()), abs=1e-12)
    # plausibility: the tight reader has the lowest sensitivity, the wide one the lowest specificity
    sens = [r["sensitivity"] for r in per_reader]
    spec = [r["specificity"] for r in per_reader]
    assert int(np.argmin(sens)) == 2 and int(np.argmin(spec)) == 1
    assert prob.GetOrigin() == images[0].GetOrigin()


def test_consensus_command_gives_the_same_masks(readers, tmp_path, capsys):
    _arrays, images = readers
    paths = []
    for i, m in enumerate(images, start=1):
        paths.append(str(tmp_path / f"reader{i}.nrrd"))
        sitk.WriteImage(m, paths[-1])
    out = tmp_path / "staple.nrrd"
    assert main(["consensus", "--masks", *paths, "--out", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    lib_consensus, _, lib_readers = staple(images)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(out))),
                                  sitk.GetArrayFromImage(lib_consensus))
    assert [r["sensitivity"] for r in res["readers"]] == pytest.approx([r["sensitivity"] for r in lib_readers])
    assert sitk.ReadImage(str(out)).GetOrigin() == images[0].GetOrigin()  # NRRD geometry kept
