"""Tests of the HRMM deep model (HRMMPredictLib.deep.model): MONAI DenseNet169 on tiny inputs.

Tiny on purpose (a few 32 x 32 / 64 x 64 images, 1-2 epochs, one torch thread): they check
shapes, the feature/classifier wiring, CPU determinism, the internal validation split,
augmentation geometry, weight files and the errors, not accuracy.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from ClinicalMRICommonLib.errors import UserError
from HRMMPredictLib.deep.model import (
    N_FEATURES, DeepTrainConfig, _augment, build_densenet169, deep_features, internal_validation_split,
    load_model, predict_proba, read_model_metadata, save_model, select_device, to_monai_key, train_deep_model,
)

TINY = dict(epochs=2, batch_size=4, val_fraction=0.25, eval_batch_size=8)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)   # 2-core machine shared with other jobs: oversubscribed threads crawl
    yield
    torch.set_num_threads(old)


def _stacks(n=8, size=32, seed=0):
    """Images whose class shows as a brighter centre, so they are not pure noise."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 120, (n, 3, size, size)).astype(np.uint8)
    y = np.arange(n) % 2
    c = slice(size // 4, 3 * size // 4)
    x[y == 1, :, c, c] += 100
    return x, y


def _seeded_model(seed=0):
    torch.manual_seed(seed)
    return build_densenet169()


@pytest.fixture(scope="module")
def trained():
    x, y = _stacks()
    model, hist = train_deep_model(x, y, patient_ids=[f"p{i // 2}" for i in range(8)],
                                   config=DeepTrainConfig(**TINY), device="cpu")
    return model, hist, x, y


def test_outputs_shapes_and_feature_wiring():
    model = _seeded_model()
    x, _ = _stacks(3, size=64)
    p = predict_proba(model, x, "cpu")
    assert p.shape == (3, 2) and np.all((p >= 0) & (p <= 1))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-6)
    f = deep_features(model, x, "cpu")
    assert f.shape == (3, N_FEATURES) == (3, 1664)
    assert np.all(f >= 0)                     # ReLU then average pool
    # The features are exactly what the classifier sees: its Linear applied to them gives
    # the same probabilities as the whole network.
    with torch.no_grad():
        logits = model.class_layers.out(torch.from_numpy(f).float())
    np.testing.assert_allclose(torch.softmax(logits, 1).numpy(), p, atol=1e-5)
    # batching does not change results
    np.testing.assert_allclose(predict_proba(model, x, "cpu", batch_size=1), p, atol=1e-6)


def test_training_is_deterministic_on_cpu(trained):
    model, hist, x, y = trained
    again, hist2 = train_deep_model(x, y, patient_ids=[f"p{i // 2}" for i in range(8)],
                                    config=DeepTrainConfig(**TINY), device="cpu")
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["train_loss"] for r in hist["epochs"]] == [r["train_loss"] for r in hist2["epochs"]]
    assert hist["fit_indices"] == hist2["fit_indices"]


def test_training_history_and_epoch_selection(trained):
    _, hist, _, y = trained
    assert hist["device"].startswith("cpu") and hist["amp"] == "off" and hist["channels_last"] is False
    assert hist["n_fit"] + hist["n_val"] == 8 and hist["n_val"] == 2
    # patients p0..p3 hold lesions (0,1), (2,3), ...: a patient never sits on both sides
    fit_p = {i // 2 for i in hist["fit_indices"]}
    val_p = {i // 2 for i in hist["val_indices"]}
    assert not fit_p & val_p
    assert len(hist["epochs"]) == 2 and 1 <= hist["best_epoch"] <= 2
    rows = hist["epochs"]
    best = rows[hist["best_epoch"] - 1]
    key = lambda r: (r["val_auc"], -r["val_loss"])  # noqa: E731
    assert key(best) == max(key(r) for r in rows)
    assert "best internal-validation AUC" in hist["selection"]
    assert hist["train_images_per_second"] > 0
    assert all(np.isfinite(r["train_loss"]) and np.isfinite(r["val_loss"]) for r in rows)


def test_no_validation_keeps_last_epoch():
    seen = []
    x, y = _stacks(6)
    _, hist = train_deep_model(x, y, config=DeepTrainConfig(**{**TINY, "epochs": 1, "val_fraction": 0.0}),
                               device="cpu", progress=lambda e, n, row: seen.append((e, n, row["train_loss"])))
    assert hist["best_epoch"] == 1 and hist["selection"].startswith("last epoch")
    assert hist["n_val"] == 0 and seen and seen[0][:2] == (1, 1)


def test_internal_split_is_stratified_and_grouped():
    rng = np.random.default_rng(3)
    pids, labels = [], []
    for p in range(40):
        lab = int(p < 16)                         # 16 HRMM patients, 24 SRMM
        for _ in range(rng.integers(1, 4)):
            pids.append(f"pat{p}")
            labels.append(lab)
    pids, labels = np.array(pids), np.array(labels)
    fit, val = internal_validation_split(labels, pids, 0.2, seed=0)
    assert len(fit) + len(val) == len(labels) and not set(fit) & set(val)
    assert not set(pids[fit]) & set(pids[val])
    assert 0.1 < len(val) / len(labels) < 0.3
    assert abs(labels[val].mean() - labels.mean()) < 0.15           # stratified
    fit2, val2 = internal_validation_split(labels, pids, 0.2, seed=0)
    assert np.array_equal(val, val2)
    with pytest.raises(UserError, match="at least 5 patients"):
        internal_validation_split([0, 1, 0, 1], ["a", "a", "b", "b"], 0.2)


def test_augmentation_geometry_and_determinism():
    x = torch.rand(3, 3, 32, 32, dtype=torch.float32)
    flip_only = DeepTrainConfig(rotation_degrees=0.0, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0),
                            flip_probability=1.0, intensity_jitter=0.0)
    out = _augment(x, flip_only, torch.Generator().manual_seed(0))
    # the default upright crops carry cranio-caudal along the rows (height): that axis is mirrored
    torch.testing.assert_close(out, torch.flip(x, dims=[2]), atol=1e-5, rtol=0)
    out = _augment(x, DeepTrainConfig(**{**flip_only.to_dict(), "flip_dim": "width", "crop_scale": (1.0, 1.0),
                                     "crop_ratio": (1.0, 1.0)}), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, torch.flip(x, dims=[3]), atol=1e-5, rtol=0)  # quarter-turned crops
    identity = DeepTrainConfig(**{**flip_only.to_dict(), "flip_probability": 0.0, "crop_scale": (1.0, 1.0),
                              "crop_ratio": (1.0, 1.0)})
    torch.testing.assert_close(_augment(x, identity, torch.Generator().manual_seed(0)), x, atol=1e-5, rtol=0)
    cfg = DeepTrainConfig()
    a = _augment(x, cfg, torch.Generator().manual_seed(5))
    b = _augment(x, cfg, torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == x.shape and a.min() >= 0 and a.max() <= 1
    assert not torch.allclose(a, x, atol=1e-3)


def test_save_load_round_trip(trained, tmp_path):
    model, hist, x, _ = trained
    path = save_model(model, tmp_path / "deep.safetensors", metadata={"best_epoch": hist["best_epoch"],
                                                                       "device": hist["device"]})
    meta = read_model_metadata(path)
    assert meta["metadata"] == {"best_epoch": hist["best_epoch"], "device": hist["device"]}
    assert meta["input"]["channels"] == ["T1WI", "T2WI", "FS-T2WI"] and meta["versions"]["torch"] == torch.__version__
    loaded = load_model(path, "cpu")
    np.testing.assert_array_equal(predict_proba(loaded, x, "cpu"), predict_proba(model, x, "cpu"))
    np.testing.assert_array_equal(deep_features(loaded, x, "cpu"), deep_features(model, x, "cpu"))
    assert not list(tmp_path.glob(".*"))                            # atomic write left no temp file
    # damaged or foreign files
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match="broken.safetensors"):
        load_model(broken)
    from safetensors.torch import save_file
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"))
    with pytest.raises(UserError, match="not written by HRMMPredict"):
        load_model(tmp_path / "foreign.safetensors")
    with pytest.raises(UserError, match="not found"):
        load_model(tmp_path / "absent.safetensors")


def _torchvision_names(state: dict, old_style: bool) -> dict:
    """Rename a MONAI DenseNet state dict to torchvision's naming (the inverse of
    to_monai_key): ``...denselayerN.layers.norm1.x`` -> ``...denselayerN.norm1.x`` (or the
    original checkpoints' ``norm.1``), ``class_layers.out`` -> an ImageNet ``classifier``."""
    out = {}
    for k, v in state.items():
        m = re.match(r"^(.*\.denselayer\d+)\.layers\.(norm|relu|conv)([12])\.(.+)$", k)
        if m:
            sep = "." if old_style else ""
            out[f"{m.group(1)}.{m.group(2)}{sep}{m.group(3)}.{m.group(4)}"] = v
        elif k.startswith("class_layers.out."):
            continue
        elif not k.endswith("num_batches_tracked") or not old_style:
            out[k] = v
    out["classifier.weight"] = torch.randn(1000, N_FEATURES)
    out["classifier.bias"] = torch.zeros(1000)
    return out


def test_pretrained_weights_from_local_files(tmp_path):
    source = _seeded_model(seed=7)
    ref = source.state_dict()
    # torchvision checkpoint naming (old 'norm.1' style, no num_batches_tracked), .pth
    tv = _torchvision_names(ref, old_style=True)
    assert to_monai_key("module.features.denseblock2.denselayer3.conv.2.weight") == \
        "features.denseblock2.denselayer3.layers.conv2.weight"
    torch.save(tv, tmp_path / "densenet169_imagenet.pth")
    torch.manual_seed(0)
    model = build_densenet169(tmp_path / "densenet169_imagenet.pth")
    got = model.state_dict()
    backbone = [k for k in ref if k.startswith("features.")]
    assert len(backbone) > 500
    assert all(torch.equal(got[k], ref[k]) for k in backbone if not k.endswith("num_batches_tracked"))
    assert got["class_layers.out.weight"].shape == (2, N_FEATURES)       # ImageNet head left out
    assert not torch.equal(got["class_layers.out.weight"], ref["class_layers.out.weight"])
    # modern torchvision naming as safetensors, wrapped nowhere
    from safetensors.torch import save_file
    save_file(_torchvision_names(ref, old_style=False), str(tmp_path / "tv.safetensors"))
    model = build_densenet169(tmp_path / "tv.safetensors")
    assert torch.equal(model.state_dict()["features.norm5.running_var"], ref["features.norm5.running_var"])


def test_pretrained_weights_mismatch_is_a_user_error(tmp_path):
    # a DenseNet121 backbone: same names, but denseblock3 stops at 24 layers and block 4 at 16
    state = {k: v for k, v in _seeded_model().state_dict().items()
             if not re.search(r"denseblock3\.denselayer(2[5-9]|3\d)\.|denseblock4\.denselayer(1[7-9]|[23]\d)\.", k)}
    torch.save(state, tmp_path / "d121.pth")
    with pytest.raises(UserError, match=r"d121\.pth does not match a 3-channel DenseNet169: \d+ tensors missing "
                                        r"\(features\.denseblock3\.denselayer25"):
        build_densenet169(tmp_path / "d121.pth")
    # small files suffice: every problem is reported at once
    torch.save({"features.conv0.weight": torch.zeros(64, 1, 7, 7)}, tmp_path / "gray.pt")   # 1-channel stem
    with pytest.raises(UserError, match=r"gray\.pt .*missing.*other shapes \(e\.g\. features\.conv0\.weight: "
                                        r"file \(64, 1, 7, 7\), model \(64, 3, 7, 7\)"):
        build_densenet169(tmp_path / "gray.pt")
    torch.save({"state_dict": {"extra.weight": torch.zeros(3)}}, tmp_path / "extra.pt")
    with pytest.raises(UserError, match="1 unexpected tensors \\(extra.weight\\)"):
        build_densenet169(tmp_path / "extra.pt")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"junk\.pth could not be read"):
        build_densenet169(tmp_path / "junk.pth")
    torch.save({"weights": np.zeros(3, dtype=object)}, tmp_path / "pickle.pth")   # needs full unpickling
    with pytest.raises(UserError, match=r"pickle\.pth"):
        build_densenet169(tmp_path / "pickle.pth")
    with pytest.raises(UserError, match="not found"):
        build_densenet169(tmp_path / "missing.safetensors")


def test_select_device():
    dev, desc = select_device("cpu")
    assert dev.type == "cpu" and desc.startswith("cpu")
    dev, desc = select_device("auto")
    assert dev.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if torch.cuda.is_available():
        assert torch.cuda.get_device_name(0) in desc
        assert select_device("cuda")[0].type == "cuda"
    else:
        with pytest.raises(UserError, match="CPU-only build|no usable GPU"):
            select_device("cuda")
    with pytest.raises(UserError, match="auto, cpu, cuda"):
        select_device("tpu")


def test_bad_training_inputs():
    x, y = _stacks(4)
    with pytest.raises(UserError, match="uint8 array"):
        train_deep_model(x.astype(np.float32), y, config=DeepTrainConfig(**TINY), device="cpu")
    with pytest.raises(UserError, match="at least 32"):
        train_deep_model(x[:, :, :16, :16], y, config=DeepTrainConfig(**TINY), device="cpu")
    with pytest.raises(UserError, match="one class only"):
        train_deep_model(x, np.zeros(4, int), config=DeepTrainConfig(**TINY), device="cpu")
    with pytest.raises(UserError, match="labels must be 4 values"):
        train_deep_model(x, [0, 1, 2, 1], config=DeepTrainConfig(**TINY), device="cpu")
    with pytest.raises(UserError, match="patient_ids has 3"):
        train_deep_model(x, y, patient_ids=["a", "b", "c"], config=DeepTrainConfig(**TINY), device="cpu")
    with pytest.raises(UserError, match="learning_rate"):
        DeepTrainConfig(learning_rate=0).validate()
    with pytest.raises(UserError, match="unknown training setting"):
        DeepTrainConfig.from_dict({"epoch": 3})
    cfg = DeepTrainConfig.from_dict(DeepTrainConfig(**TINY).to_dict())
    assert cfg == DeepTrainConfig(**TINY)
    assert (DeepTrainConfig().optimizer, DeepTrainConfig().learning_rate, DeepTrainConfig().batch_size,
            DeepTrainConfig().epochs, DeepTrainConfig().loss) == ("adamax", 1e-4, 16, 300, "cross_entropy")
