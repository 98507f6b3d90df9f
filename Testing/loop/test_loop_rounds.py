"""Two rounds of the loop on generated 3-D phantoms, with a real MONAI network on the CPU.

The loop: 4 standard cases, 10 pool cases of the same kind and one deliberately ambiguous
case (lesion contrast 15 instead of 60, noise SD 35 instead of 12). Round 1 trains 40 epochs
on the standard set (3 training + 1 validation patient), pre-labels the pool with MC dropout
and queues it; an expert (the hidden truth) corrects five proposals; round 2 retrains on the
grown standard set. Shown: the network learns (proposal Dice against the hidden truth above
a floor), the ambiguous case is ranked first, round 2's proposals are better than round 1's
on the cases neither round saw, the proposals never touch a human mask, a changed model
file is refused, and the numbers of ``status`` follow from the files.

Measured on this machine (seed 0, one thread): round 1 mean proposal Dice 0.87 on the five
held-out pool cases, round 2 0.95; the ambiguous case's score 0.84 against <= 0.17 for the
others. The floors below leave a wide margin for other CPUs' arithmetic.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from AnnotationQCLib.loop.store import LoopFolder
from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.files import sha256_file
from loop_phantoms import dice, run_loop_cli, write_cases

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

EPOCHS = 40
REVIEWED = ["P00", "P01", "P02", "P03", "P04"]
HELD_OUT = ["P05", "P06", "P07", "P08", "P09"]
ROUND1_FLOOR = 0.70
ROUND2_MARGIN = 0.03


def _arr(path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory):
    from AnnotationQCLib.loop import model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        root = tmp_path_factory.mktemp("loop_rounds")
        specs = ([{"case_id": f"S{i}", "standard": True} for i in range(4)]
                 + [{"case_id": f"P{i:02d}"} for i in range(10)]
                 + [{"case_id": "AMB", "contrast": 15.0, "noise": 35.0}])
        csv_path, truths = write_cases(root / "data", specs, seed=1)
        loop, _ = LoopFolder.create(root / "loop", csv_path, by="lead")
        standard_before = {s["case_id"]: sha256_file(s["mask"]) for s in loop.standard_set()}
        lines: list[str] = []
        r1 = model.train_round(loop, epochs=EPOCHS, device="cpu", seed=0, progress=lines.append)
        p1 = model.prelabel(loop, samples=8, device="cpu")
        q1 = model.queue(loop, 4)
        standard_after = {s["case_id"]: sha256_file(s["mask"]) for s in loop.standard_set()}
        dice1 = {c: dice(_arr(loop.proposal_paths(c, 1)[0]), _arr(truths[c])) for c in p1["scores"]}
        for c in REVIEWED:  # the expert's correction = the hidden truth
            same = np.array_equal(_arr(loop.proposal_paths(c, 1)[0]), _arr(truths[c]))
            loop.accept(c, truths[c], "expert1", "accepted" if same else "corrected")
        r2 = model.train_round(loop, epochs=EPOCHS, device="cpu", seed=0)
        p2 = model.prelabel(loop, samples=8, device="cpu")
        q2 = model.queue(loop, 3)
        dice2 = {c: dice(_arr(loop.proposal_paths(c, 2)[0]), _arr(truths[c])) for c in p2["scores"]}
        yield {"loop": loop, "truths": truths, "r1": r1, "r2": r2, "p1": p1, "p2": p2, "q1": q1, "q2": q2,
               "dice1": dice1, "dice2": dice2, "progress": lines, "standard_before": standard_before,
               "standard_after": standard_after, "root": root}
    finally:
        torch.set_num_threads(threads)


def test_the_network_learns_in_one_short_cpu_round(two_rounds):
    r1, d1 = two_rounds["r1"], two_rounds["dice1"]
    assert r1["round"] == 1 and r1["device"] == "cpu" and r1["amp"] is False
    assert r1["train_cases"] and r1["val_cases"] and not set(r1["train_cases"]) & set(r1["val_cases"])
    assert r1["val_dice"] > ROUND1_FLOOR
    normal = [d1[c] for c in REVIEWED + HELD_OUT]
    assert np.mean(normal) > ROUND1_FLOOR, d1
    assert min(normal) > 0.5, d1
    # progress per epoch, with the loss and the validation Dice
    epochs = [ln for ln in two_rounds["progress"] if " epoch " in ln]
    assert len(epochs) == EPOCHS and epochs[-1].startswith(f"round 1 epoch {EPOCHS}/{EPOCHS}: loss ")
    assert "validation Dice" in epochs[-1]


def test_the_ambiguous_case_is_queued_first(two_rounds):
    q1 = two_rounds["q1"]
    assert q1["queue"][0]["case_id"] == "AMB", q1["queue"]
    scores = two_rounds["p1"]["scores"]
    others = max(v for c, v in scores.items() if c != "AMB")
    assert scores["AMB"] > 2 * others
    assert len({q["case_id"] for q in q1["queue"]}) == 4
    first = q1["queue"][0]
    assert first["why"].startswith(f"uncertainty {first['score']:.3f}: the 8 predictions outline")
    # still first after round 2 (the corrections did not cover it)
    assert two_rounds["q2"]["queue"][0]["case_id"] == "AMB"


def test_the_second_round_is_better_than_the_first(two_rounds):
    d1, d2 = two_rounds["dice1"], two_rounds["dice2"]
    m1 = np.mean([d1[c] for c in HELD_OUT])
    m2 = np.mean([d2[c] for c in HELD_OUT])
    assert m2 > m1 + ROUND2_MARGIN, (d1, d2)
    assert set(REVIEWED) <= set(two_rounds["r2"]["train_cases"]) | set(two_rounds["r2"]["val_cases"])
    # the validation patients of round 1 stay validation patients
    assert set(two_rounds["r1"]["val_cases"]) <= set(two_rounds["r2"]["val_cases"])


def test_prelabel_never_touches_a_human_mask(two_rounds):
    loop = two_rounds["loop"]
    assert two_rounds["standard_before"] == two_rounds["standard_after"]
    assert set(two_rounds["p1"]["scores"]) == {f"P{i:02d}" for i in range(10)} | {"AMB"}
    assert set(two_rounds["p2"]["scores"]) == set(HELD_OUT) | {"AMB"}  # reviewed cases left alone
    for c in ("S0", "S1", "S2", "S3"):
        assert not loop.proposal_paths(c, 1)[0].exists() and not loop.proposal_paths(c, 2)[0].exists()
    # uncertainty map: the voxel-wise variance, on the case grid, 0..0.25
    unc = sitk.ReadImage(str(loop.proposal_paths("AMB", 1)[1]))
    assert unc.GetSize() == (32, 32, 32) and unc.GetPixelID() == sitk.sitkFloat32
    u = sitk.GetArrayFromImage(unc)
    assert u.min() >= 0 and u.max() <= 0.25 and u.max() > 0.01


def test_status_numbers_follow_from_the_files(two_rounds):
    loop, truths = two_rounds["loop"], two_rounds["truths"]
    st = loop.status(stop_unchanged=0.8, min_reviews=5)
    assert st["standard"] == 9 and st["standard_origin"] == {"init": 4, "import": 0, "review": 5}
    assert st["pool"] == 6
    r1, r2 = st["rounds"]
    assert r1["reviewed"] == 5 and r1["accepted_unchanged"] + r1["corrected"] == 5 and r2["reviewed"] == 0
    expected = [dice(_arr(loop.proposal_paths(c, 1)[0]), _arr(truths[c])) for c in REVIEWED]
    assert r1["mean_dice_vs_expert"] == pytest.approx(np.mean(expected))
    changed = []
    for c in REVIEWED:
        p, t = _arr(loop.proposal_paths(c, 1)[0]), _arr(truths[c])
        changed.append(np.count_nonzero(p != t) / np.count_nonzero((p != 0) | (t != 0)))
    assert r1["mean_changed_fraction"] == pytest.approx(np.mean(changed))
    assert r1["val_dice"] == pytest.approx(two_rounds["r1"]["val_dice"])
    assert st["stopping"]["met"] is (r1["unchanged_rate"] >= 0.8)
    assert st["stopping"]["reason"].startswith("round 1: ")
    assert st["audit"]["hash_chain"] == "verified"


def test_model_bundle_is_safetensors_with_a_checksummed_manifest(two_rounds):
    from AnnotationQCLib.loop import model

    loop = two_rounds["loop"]
    d = loop.model_dir(1)
    assert sorted(p.name for p in d.iterdir()) == ["manifest.json", "model.safetensors"]
    man = json.loads((d / "manifest.json").read_text())
    assert man["format"] == "annotationqc-loop-model" and man["round"] == 1
    assert man["files"]["model.safetensors"] == sha256_file(d / "model.safetensors")
    assert {"torch", "monai", "numpy"} <= set(man["software"])
    assert man["network"]["name"] == "unet" and man["sequences"] == ["image"]
    assert len(man["training"]["history"]) == EPOCHS
    # an altered weights file is refused with a clear message
    bad = two_rounds["root"] / "altered"
    shutil.copytree(d, bad)
    data = bytearray((bad / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (bad / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"failed its integrity check: model.safetensors was altered"):
        model.load_model(bad, "cpu")
    # a manifest edited consistently with its file list is caught by the loop's audit trail
    shutil.rmtree(bad)
    shutil.copytree(d, bad)
    man["training"]["val_dice"] = 0.99
    (bad / "manifest.json").write_text(json.dumps(man))
    model.load_model(bad, "cpu")  # on its own the manifest checks out...
    train = loop.state()["rounds"][0]["data"]
    with pytest.raises(UserError, match="manifest .* was altered after training"):
        model.load_model(bad, "cpu", train["manifest_sha256"])  # ...but not against the audit trail
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    man["files"]["model.safetensors"] = sha256_file(bad / "model.safetensors")
    (bad / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(UserError, match="not a readable safetensors file"):
        model.load_model(bad, "cpu")


def test_propose_for_other_modules_matches_the_prelabel(two_rounds):
    # what stroke-lesion candidate --loop-model calls: the shared module, not AnnotationQCLib
    from ClinicalMRICommonLib import segmentation_model as model

    loop = two_rounds["loop"]
    img = loop.read_images("P07")[0]
    res = model.propose(loop.model_dir(2), {"IMAGE": img}, device="cpu")
    assert res["round"] == 2 and res["sequences"] == ["image"] and res["warnings"] == []
    np.testing.assert_array_equal(sitk.GetArrayFromImage(res["mask"]), _arr(loop.proposal_paths("P07", 2)[0]))
    assert res["mask"].GetOrigin() == img.GetOrigin() and res["uncertainty"].GetPixelID() == sitk.sitkFloat32
    with pytest.raises(UserError, match="needs the sequence"):
        model.propose(loop.model_dir(2), {"dwi": img}, device="cpu")
    with pytest.raises(UserError, match="needs 1 image"):
        model.propose(loop.model_dir(2), [img, img], device="cpu")


def test_tta_uncertainty_also_ranks_the_ambiguous_case_first(two_rounds):
    root = two_rounds["root"]
    copy = root / "loop_tta"
    shutil.copytree(root / "loop", copy)
    LoopFolder(copy)  # opens
    assert run_loop_cli(["prelabel", "--folder", str(copy), "--device", "cpu"]) == 2  # round 2 exists: --overwrite
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run_loop_cli(["prelabel", "--folder", str(copy), "--device", "cpu", "--uncertainty", "tta",
                             "--samples", "4", "--overwrite", "--json"]) == 0
    finally:
        torch.set_num_threads(threads)
    from AnnotationQCLib.loop import model

    q = model.queue(LoopFolder(copy), 2)
    assert q["method"] == "tta" and q["queue"][0]["case_id"] == "AMB"
    # round 1's proposals were reviewed: they are the record and cannot be replaced
    assert run_loop_cli(["prelabel", "--folder", str(copy), "--round", "1", "--overwrite"]) == 2


def test_cli_queue_status_and_a_changed_model(two_rounds, capsys):
    root = two_rounds["root"]
    loop_dir = str(root / "loop")
    assert run_loop_cli(["queue", "--folder", loop_dir, "--n", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["queue"][0]["case_id"] == "AMB" and out["round"] == 2 and len(out["queue"]) == 2
    assert run_loop_cli(["status", "--folder", loop_dir]) == 0
    text = capsys.readouterr().out
    assert "stopping rule:" in text and "hash chain verified" in text
    copy = root / "loop_broken"
    shutil.copytree(root / "loop", copy)
    w = copy / "rounds" / "round-002" / "model" / "model.safetensors"
    w.chmod(0o644)
    data = bytearray(w.read_bytes())
    data[100] ^= 0x01
    w.write_bytes(bytes(data))
    assert run_loop_cli(["prelabel", "--folder", str(copy), "--device", "cpu", "--overwrite"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: loop model ") and "model.safetensors was altered" in err[0]
