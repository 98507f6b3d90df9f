"""Benchmark of the human-in-the-loop annotation (AnnotationQCLib.loop) on generated phantoms.

Simulates the consensus' loop: a standard set of ``--standard`` cases, a pool of ``--pool``
cases plus one ambiguous case (low contrast, heavy noise); each round trains the network
(``--epochs``), pre-labels the pool with MC dropout (8 samples), queues ``--review`` cases and
"accepts" them with the hidden truth as the expert's correction. Per round and device (the
CPU, and a CUDA GPU when PyTorch sees one; skipped otherwise) it reports:

- training time per epoch (mean over the round's epochs; the CPU's threads as set),
- pre-labelling time per case (deterministic proposal + 8 MC-dropout samples), and the time
  of one plain sliding-window inference per case (median),
- proposal Dice against the hidden truth: on ``--test`` fixed cases outside the loop (the
  same cases every round, through ``model.propose``: comparable between rounds) and over the
  pool cases still unreviewed (a shrinking set), the ambiguous case apart; the validation
  Dice (its patients grow with the standard set) and the queue's first case.

    python benchmarks/bench_loop.py                          # 48^3 phantoms, 3 rounds
    python benchmarks/bench_loop.py --size 64 --epochs 30 --json loop_bench.json

Timings, not a test; run by hand (docs/active_learning.md has one run's numbers).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "Testing" / "loop"))

from loop_phantoms import dice, write_cases


def _arr(p) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(p)))


def run(device: str, args, work: Path) -> list[dict]:
    import torch
    from AnnotationQCLib.loop import model
    from AnnotationQCLib.loop.store import LoopFolder

    specs = ([{"case_id": f"S{i:02d}", "standard": True} for i in range(args.standard)]
             + [{"case_id": f"P{i:02d}"} for i in range(args.pool)] + [{"case_id": "AMB", "contrast": 15.0, "noise": 35.0}])
    csv_path, truths = write_cases(work / f"data-{device}", specs, seed=args.seed, size=args.size)
    loop, _ = LoopFolder.create(work / f"loop-{device}", csv_path)
    _, test_truths = write_cases(work / f"test-{device}", [{"case_id": f"T{i:02d}"} for i in range(args.test)],
                                 seed=args.seed + 1000, size=args.size)
    test_images = {c: sitk.ReadImage(str(p.parent.parent / f"{c}_image.nii.gz")) for c, p in test_truths.items()}
    rows = []
    for r in range(1, args.rounds + 1):
        tr = model.train_round(loop, epochs=args.epochs, device=device, seed=args.seed, patch=args.patch,
                               progress=(lambda s: print("  " + s, file=sys.stderr)) if args.verbose else None)
        pre = model.prelabel(loop, samples=8, device=device)
        net, manifest, dev, amp = model.load_model(loop.model_dir(r), device)
        plain = []
        for cid in list(pre["scores"])[: min(5, len(pre["scores"]))]:
            x = torch.as_tensor(model._normalise(model._channels(loop.read_images(cid))))[None].to(dev)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model._infer(net, x, manifest["patch_zyx"], dev, amp)
            if dev.type == "cuda":
                torch.cuda.synchronize()
            plain.append(time.perf_counter() - t0)
        dices = {c: dice(_arr(loop.proposal_paths(c, r)[0]), _arr(truths[c])) for c in pre["scores"]}
        test_dice = [dice(sitk.GetArrayFromImage(model.propose(loop.model_dir(r), [img], samples=2, device=device)["mask"]),
                          _arr(test_truths[c])) for c, img in test_images.items()]
        q = model.queue(loop, args.review)["queue"]
        rows.append({"device": device, "round": r, "standard": len(tr["train_cases"]) + len(tr["val_cases"]),
                     "seconds_per_epoch": tr["seconds_per_epoch"], "val_dice": tr["val_dice"],
                     "prelabel_seconds_per_case": pre["seconds_per_case"],
                     "inference_seconds_per_case": statistics.median(plain),
                     "proposal_dice_test": float(np.mean(test_dice)), "proposal_dice_pool": float(np.mean([v for c, v in dices.items() if c != "AMB"])),
                     "proposal_dice_ambiguous": dices.get("AMB"), "pool": len(pre["scores"]),
                     "queue_first": q[0]["case_id"] if q else None})
        print(json.dumps(rows[-1]), file=sys.stderr)
        for item in q:  # the expert corrects the queued cases (the hidden truth)
            c = item["case_id"]
            same = np.array_equal(_arr(loop.proposal_paths(c, r)[0]), _arr(truths[c]))
            loop.accept(c, truths[c], "bench", "accepted" if same else "corrected")
    return rows


def _f(v) -> str:
    return "reviewed" if v is None else f"{v:.3f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=48, help="phantom edge in voxels (48)")
    ap.add_argument("--standard", type=int, default=4, help="standard cases at the start (4)")
    ap.add_argument("--pool", type=int, default=16, help="pool cases (16, plus one ambiguous case)")
    ap.add_argument("--test", type=int, default=6, help="fixed test cases outside the loop (6)")
    ap.add_argument("--review", type=int, default=4, help="cases reviewed per round (4)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (3)")
    ap.add_argument("--epochs", type=int, default=30, help="epochs per round (30)")
    ap.add_argument("--patch", default="32", help="patch size, the same on every device for comparison (32)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: PyTorch's default)")
    ap.add_argument("--seed", type=int, default=0, help="seed (0)")
    ap.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    ap.add_argument("--verbose", action="store_true", help="print the per-epoch progress")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if "cuda" not in devices:
        print("CUDA: no GPU visible to PyTorch; skipped", file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for d in devices:
            rows += run(d, args, Path(tmp))
    print(f"loop benchmark: {args.size}^3 phantoms, {args.standard} standard + {args.pool} pool + 1 ambiguous, "
          f"{args.epochs} epochs/round, patch {args.patch}, {args.review} reviews/round; torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads, {platform.processor() or platform.machine()}")
    print("device round standard  s/epoch  val Dice  prelabel s/case  inference s/case  test Dice  pool Dice  ambiguous Dice  queue first")
    for r in rows:
        print(f"{r['device']:>6} {r['round']:>5} {r['standard']:>8}  {r['seconds_per_epoch']:>7.2f}  {r['val_dice']:>8.3f}  "
              f"{r['prelabel_seconds_per_case']:>15.2f}  {r['inference_seconds_per_case']:>16.3f}  "
              f"{r['proposal_dice_test']:>9.3f}  {r['proposal_dice_pool']:>9.3f}  {_f(r['proposal_dice_ambiguous']):>14}  {r['queue_first']}")
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
