"""ClinicalMRICommonLib.segmentation_model: the shared model bundle (safetensors + checksummed
manifest), its checks, and inference (``propose``) on a tiny MONAI UNet on the CPU.

The network is untrained (seeded weights): the tests check the bundle and the inference
plumbing against independent computations (numpy z-scoring, one forward pass of the network
read straight from the safetensors file), not what a trained network finds; that the loop's
trained network learns is shown in Testing/loop/test_loop_rounds.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from ClinicalMRICommonLib import segmentation_model as sm
from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.files import sha256_file

ROOT = Path(__file__).resolve().parents[2]
SIZE = 16  # voxels per axis; also the patch, so sliding-window inference is one window


def _image(seed: int, size=(SIZE, SIZE, SIZE), spacing=(1.0, 1.0, 1.0)) -> sitk.Image:
    rng = np.random.default_rng(seed)
    arr = rng.normal(100.0, 10.0, size[::-1]).astype(np.float32)
    arr[4:10, 5:11, 6:12] += 60.0
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin((3.0, -2.0, 5.0))
    return img


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="torch is not installed (the segmentation model needs it)")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, torch):
    """A two-sequence (DWI, ADC) UNet bundle with seeded, untrained weights."""
    pytest.importorskip("monai", reason="MONAI is not installed")
    torch.manual_seed(0)
    settings = sm.network_settings("unet", 2, 2, 2)
    net = sm.build_network(settings)
    folder = tmp_path_factory.mktemp("bundle") / "model"
    manifest = sm.write_bundle(folder, net.state_dict(), {
        "network": settings, "sequences": ["DWI", "ADC"], "labels": {"mode": "binary", "content": "lesion"},
        "n_classes": 2, "patch_zyx": [SIZE] * 3, "normalisation": sm.NORMALISATION, "round": 3,
        "training": {"note": "seeded, untrained"}})
    return folder, manifest


def _copy(bundle, tmp_path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(bundle[0], target)
    return target


def _rewrite_manifest(folder: Path, change) -> dict:
    man = json.loads((folder / sm.MANIFEST).read_text())
    change(man)
    (folder / sm.MANIFEST).write_text(json.dumps(man))
    return man


# -- the bundle ---------------------------------------------------------------------------


def test_bundle_holds_tensors_and_a_manifest_with_every_checksum(bundle, torch):
    from safetensors.torch import load_file

    folder, written = bundle
    assert sorted(p.name for p in folder.iterdir()) == [sm.MANIFEST, sm.WEIGHTS]
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    man = json.loads((folder / sm.MANIFEST).read_text())
    assert man == json.loads(json.dumps(written))
    assert (man["format"], man["format_version"]) == ("annotationqc-loop-model", 1)
    assert man["files"] == {sm.WEIGHTS: sha256_file(folder / sm.WEIGHTS)}
    assert {"python", "numpy", "torch", "monai", "safetensors"} <= set(man["software"])
    assert man["round"] == 3 and man["training"] == {"note": "seeded, untrained"}
    net, loaded, dev, amp = sm.load_model(folder, "cpu")
    assert (dev.type, amp, loaded) == ("cpu", False, man) and not net.training
    on_disk = load_file(str(folder / sm.WEIGHTS))
    assert set(on_disk) == set(net.state_dict())
    for k, v in net.state_dict().items():
        assert torch.equal(v, on_disk[k]), k


def test_write_bundle_never_replaces_a_folder(bundle, torch):
    folder, _ = bundle
    before = sha256_file(folder / sm.WEIGHTS)
    net = sm.build_network(sm.network_settings("unet", 2, 2, 2))
    with pytest.raises(UserError, match="exists already; a model bundle is never replaced"):
        sm.write_bundle(folder, net.state_dict(), {k: None for k in sm.REQUIRED_KEYS})
    assert sha256_file(folder / sm.WEIGHTS) == before
    with pytest.raises(ValueError, match="needs network, sequences"):
        sm.write_bundle(folder.parent / "new", net.state_dict(), {"labels": {}})
    assert not (folder.parent / "new").exists()


def test_loading_refuses_altered_incomplete_and_foreign_bundles(bundle, tmp_path):
    folder = _copy(bundle, tmp_path)
    data = bytearray((folder / sm.WEIGHTS).read_bytes())
    data[-3] ^= 0xFF
    (folder / sm.WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"loop model .*copy failed its integrity check: model.safetensors was altered"):
        sm.load_model(folder, "cpu")
    # garbage with a matching checksum: not a safetensors file
    (folder / sm.WEIGHTS).write_bytes(b"not a safetensors file")
    _rewrite_manifest(folder, lambda m: m["files"].update({sm.WEIGHTS: sha256_file(folder / sm.WEIGHTS)}))
    with pytest.raises(UserError, match="not a readable safetensors file"):
        sm.load_model(folder, "cpu")
    # an edited manifest: caught against a trusted record of its checksum
    shutil.rmtree(folder)
    folder = _copy(bundle, tmp_path)
    recorded = sha256_file(folder / sm.MANIFEST)
    _rewrite_manifest(folder, lambda m: m.update({"round": 9}))
    assert sm.read_manifest(folder)["round"] == 9
    with pytest.raises(UserError, match="was altered after training"):
        sm.read_manifest(folder, recorded)
    # weights that do not fit the network the manifest describes
    _rewrite_manifest(folder, lambda m: m["network"]["kwargs"].update({"channels": [4, 8, 16, 32]}))
    with pytest.raises(UserError, match=r"do not fit the unet network .*install that version or retrain"):
        sm.load_model(folder, "cpu")
    for change, message in [
        (lambda m: m.update({"format": "hrmm-model-bundle"}), "is not a loop model manifest"),
        (lambda m: m.update({"format_version": 2}), "has format version 2; this software reads version 1"),
        (lambda m: m.pop("patch_zyx"), "lacks patch_zyx"),
        (lambda m: m["files"].pop(sm.WEIGHTS), "lists no model.safetensors"),
    ]:
        shutil.rmtree(folder)
        folder = _copy(bundle, tmp_path)
        _rewrite_manifest(folder, change)
        with pytest.raises(UserError, match=message):
            sm.read_manifest(folder)
    (folder / sm.MANIFEST).write_text("{not json")
    with pytest.raises(UserError, match="is damaged"):
        sm.read_manifest(folder)
    (folder / sm.MANIFEST).unlink()
    with pytest.raises(UserError, match=r"is not a loop model \(no manifest.json\)"):
        sm.read_manifest(folder)
    with pytest.raises(UserError, match="loop model folder not found"):
        sm.read_manifest(tmp_path / "none")


# -- verify_manifest_files (any folder with a "files" mapping) ----------------------------


def test_verify_manifest_files_names_every_problem(tmp_path):
    folder = tmp_path / "b"
    (folder / "models").mkdir(parents=True)
    (folder / "a.txt").write_text("a")
    (folder / "models" / "m.bin").write_bytes(b"\x00\x01")
    (tmp_path / "outside.txt").write_text("secret")
    files = sm.manifest_files(folder)
    assert files == {"a.txt": sha256_file(folder / "a.txt"), "models/m.bin": sha256_file(folder / "models" / "m.bin")}
    manifest = {"files": files}
    (folder / sm.MANIFEST).write_text(json.dumps(manifest))  # the manifest itself is not listed
    sm.verify_manifest_files(folder, manifest)
    assert sm.manifest_file_problems(folder, files) == []

    (folder / "a.txt").write_text("b")
    (folder / "extra.csv").write_text("x")
    (folder / "models" / "m.bin").unlink()
    os.symlink(tmp_path / "outside.txt", folder / "link.txt")
    bad = {**files, "../outside.txt": sha256_file(tmp_path / "outside.txt"), "/etc/hostname": "0" * 64,
           "link.txt": sha256_file(tmp_path / "outside.txt"), "c.txt": "not-a-digest"}
    problems = sm.manifest_file_problems(folder, bad)
    outside = "is not a path inside the folder (absolute, '..' or a link leading out)"
    assert problems == ["a.txt was altered (checksum differs)", "models/m.bin is missing",
                        f"'../outside.txt' {outside}", f"'/etc/hostname' {outside}", f"'link.txt' {outside}",
                        "c.txt has no valid SHA-256 in the manifest", "extra.csv is not listed in the manifest"]
    with pytest.raises(UserError, match=r"bundle .*b failed its integrity check: a.txt was altered .*; and 2 more "
                                        r"- restore it"):
        sm.verify_manifest_files(folder, {"files": bad}, what="bundle", remedy="restore it")
    empty = "the manifest lists no files (its 'files' entry is missing or damaged)"
    assert sm.manifest_file_problems(folder, {}) == [empty]
    assert sm.manifest_file_problems(folder, ["a.txt"]) == [empty]


def test_an_unlisted_file_in_a_bundle_is_refused(bundle, tmp_path):
    folder = _copy(bundle, tmp_path)
    (folder / "notes.pt").write_bytes(b"anything")
    with pytest.raises(UserError, match="notes.pt is not listed in the manifest"):
        sm.load_model(folder, "cpu")


# -- inference ----------------------------------------------------------------------------


def _zscore_nonzero(a: np.ndarray) -> np.ndarray:
    out = np.zeros_like(a, dtype=np.float64)
    nz = a != 0
    out[nz] = (a[nz] - a[nz].mean()) / a[nz].std()
    return out


def test_normalisation_is_the_z_score_over_non_zero_voxels_per_channel():
    pytest.importorskip("monai", reason="MONAI is not installed")
    rng = np.random.default_rng(3)
    ch = rng.normal(50.0, 7.0, (2, 6, 5, 4)).astype(np.float32)
    ch[0, :2] = 0.0  # background outside the head
    ch[1] *= 3.0
    got = sm.normalise(ch)
    for c in range(2):
        np.testing.assert_allclose(got[c], _zscore_nonzero(ch[c]), rtol=1e-4, atol=1e-5)
    assert (got[0, :2] == 0).all()


def test_propose_is_the_networks_argmax_on_the_first_images_grid(bundle, torch):
    from safetensors.torch import load_file

    folder, _ = bundle
    dwi, adc = _image(1), _image(2)
    res = sm.propose(folder, {"dwi": dwi, "Adc": adc}, samples=3, device="cpu")
    # independently: the network from the weights file, one forward pass on the z-scored images
    net = sm.build_network(json.loads((folder / sm.MANIFEST).read_text())["network"])
    net.load_state_dict(load_file(str(folder / sm.WEIGHTS)))
    net.eval()
    x = np.stack([_zscore_nonzero(sitk.GetArrayFromImage(im)) for im in (dwi, adc)]).astype(np.float32)
    with torch.no_grad():
        probs = torch.softmax(net(torch.as_tensor(x)[None]), dim=1)[0].numpy()
    expected = probs.argmax(0).astype(np.uint8)
    mask = sitk.GetArrayFromImage(res["mask"])
    near_tie = np.abs(probs[1] - probs[0]) < 1e-4  # float rounding may flip a voxel at p = 0.5
    assert (mask[~near_tie] == expected[~near_tie]).all() and near_tie.mean() < 0.01
    for key in ("mask", "uncertainty"):
        img = res[key]
        assert (img.GetSize(), img.GetOrigin(), img.GetSpacing()) == (dwi.GetSize(), dwi.GetOrigin(), dwi.GetSpacing())
    assert res["mask"].GetPixelID() == sitk.sitkUInt8 and res["uncertainty"].GetPixelID() == sitk.sitkFloat32
    var = sitk.GetArrayFromImage(res["uncertainty"])
    assert var.min() >= 0.0 and var.max() <= 0.25 and var.max() > 0  # MC dropout: the samples differ
    assert 0.0 <= res["score"] <= 1.0 and res["reason"] and res["method"] == "mc-dropout"
    assert (res["round"], res["sequences"], res["labels"], res["warnings"]) == (
        3, ["DWI", "ADC"], {"mode": "binary", "content": "lesion"}, [])
    # the same case as a list in the model's order, with test-time augmentation
    tta = sm.propose(folder, [dwi, adc], uncertainty="tta", samples=2, device="cpu")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(tta["mask"]), mask)
    assert tta["method"] == "tta"


def test_propose_resamples_another_grid_and_refuses_what_it_cannot_use(bundle, torch):
    folder, _ = bundle
    dwi = _image(1)
    coarse = sitk.Resample(_image(2), dwi, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    coarse = sitk.Resample(coarse, [8, 8, 8], sitk.Transform(), sitk.sitkLinear, dwi.GetOrigin(), (2.0, 2.0, 2.0),
                           dwi.GetDirection(), 0.0, sitk.sitkFloat32)
    res = sm.propose(folder, {"DWI": dwi, "ADC": coarse}, samples=2, device="cpu")
    assert len(res["warnings"]) == 1 and res["warnings"][0].startswith("ADC image resampled onto the DWI grid (")
    assert res["mask"].GetSize() == dwi.GetSize()
    with pytest.raises(UserError, match="needs the sequence.*missing: ADC"):
        sm.propose(folder, {"DWI": dwi}, device="cpu")
    with pytest.raises(UserError, match=r"needs 2 image\(s\) \(DWI, ADC\); got 1"):
        sm.propose(folder, [dwi], device="cpu")
    with pytest.raises(UserError, match="the ADC image .* is 2-D"):
        sm.propose(folder, [dwi, dwi[:, :, 0]], device="cpu")
    nan = sitk.GetArrayFromImage(dwi)
    nan[0, 0, 0] = np.nan
    bad = sitk.GetImageFromArray(nan)
    bad.CopyInformation(dwi)
    with pytest.raises(UserError, match="the DWI image .* holds NaN"):
        sm.propose(folder, [bad, dwi], device="cpu")
    with pytest.raises(UserError, match="uncertainty 'ensemble' unknown"):
        sm.propose(folder, [dwi, dwi], uncertainty="ensemble", device="cpu")
    with pytest.raises(UserError, match="--samples must lie between 2 and 8 for tta"):
        sm.propose(folder, [dwi, dwi], uncertainty="tta", samples=9, device="cpu")
    with pytest.raises(UserError, match="device 'gpu' unknown"):
        sm.propose(folder, [dwi, dwi], device="gpu")


def test_cuda_asked_for_without_a_gpu_is_refused_or_runs_on_the_gpu(bundle, torch):
    folder, _ = bundle
    dwi = _image(1)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA GPU is available"):
            sm.propose(folder, [dwi, dwi], device="cuda")
        pytest.skip("no CUDA GPU here: the GPU path (AMP) is not run")
    res = sm.propose(folder, [dwi, dwi], samples=2, device="cuda")
    cpu = sm.propose(folder, [dwi, dwi], samples=2, device="cpu")
    agree = sitk.GetArrayFromImage(res["mask"]) == sitk.GetArrayFromImage(cpu["mask"])
    assert agree.mean() > 0.99  # float16 autocast may flip voxels near p = 0.5


def test_importing_the_module_loads_no_torch_monai_or_safetensors():
    code = ("import sys, ClinicalMRICommonLib.segmentation_model; "
            "print(','.join(m for m in ('torch', 'monai', 'safetensors') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False,
                         cwd=str(ROOT))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""
