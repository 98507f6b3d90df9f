"""``annotation-qc loop ...``: the command-line layer of the human-in-the-loop annotation.

:func:`add_loop_commands` registers ``loop`` and its commands on a tool's subcommand
collection (made with :func:`ClinicalMRICommonLib.cli.tool_parser`); :func:`run_loop` runs a
parsed ``loop`` command and returns the exit status. The ``loop`` parser also sets
``func=run_loop``, so a tool that dispatches with ``args.func(args)`` needs nothing else.

Standard library only at module level (torch and MONAI are imported by the commands that
need them).
"""

from __future__ import annotations

import argparse
import sys

from ClinicalMRICommonLib.cli import Parser, add_command, add_json, add_overwrite, emit

EXAMPLE = """\
example (the consensus' five steps):
  annotation-qc loop init --folder LOOP --cases cases.csv          # 1 standard set + pool
  annotation-qc loop import --folder LOOP --study STUDY --sequence FLAIR --content whole-tumour --by lead
  annotation-qc loop train --folder LOOP --epochs 50               # 2 train (round 1)
  annotation-qc loop prelabel --folder LOOP                        # 3 pre-label the pool
  annotation-qc loop queue --folder LOOP --n 10                    # 4 active-learning sample
  annotation-qc loop accept --folder LOOP --case P017 --mask P017_fixed.nii.gz --by r1 --verdict corrected
  annotation-qc loop reject --folder LOOP --case P021 --by r1 --reason "missed the second lesion"
  annotation-qc loop train --folder LOOP; annotation-qc loop prelabel --folder LOOP   # 5 iterate
  annotation-qc loop status --folder LOOP                          # stop when the rule is met"""


def _folder(p: argparse.ArgumentParser) -> None:
    p.add_argument("--folder", required=True, metavar="DIR", help="the loop folder")


def _device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where the network runs: auto takes a CUDA GPU when PyTorch sees one (with mixed precision), "
                        "else the CPU (default auto)")


def _by(p: argparse.ArgumentParser, required: bool, what: str) -> None:
    p.add_argument("--by", required=required, metavar="READER", default="" if not required else None,
                   help=f"{what} (letters, digits and '-'); recorded in the audit trail")


def add_loop_commands(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``loop`` with its commands on ``sub``; returns the ``loop`` parser."""
    p = add_command(sub, "loop", "human-in-the-loop pre-annotation with active learning (standard set -> network "
                    "-> proposals -> expert review -> retrain)",
                    description="Build a large annotated dataset the way the CNS-tumour annotation consensus "
                    "(section 7) describes: experts annotate a small standard set, a MONAI network trained on it "
                    "pre-labels the pool, active learning picks the uncertain cases for expert review, the reviewed "
                    "masks join the standard set, and the network is retrained until the proposals are good enough. "
                    "Every step is recorded in the loop folder's hash-chained audit trail.", epilog=EXAMPLE)
    p.set_defaults(func=run_loop, loop_parser=p)
    ls = p.add_subparsers(dest="loop_command", metavar="LOOP_COMMAND", parser_class=Parser)

    s = add_command(ls, "init", "create a loop folder from a cases table",
                    description="CSV columns: case_id; image (one sequence) or image_<sequence> (several, e.g. "
                    "image_flair,image_t1c; all on the first one's grid, or resampled onto it with a warning); "
                    "optional patient_id (the unit of the validation split; default the case id) and mask (a standard "
                    "annotation on the first image's grid: binary 0/1, or with --labels a CNS-tumour label map). "
                    "Cases without a mask are the pool. Paths are relative to the CSV.")
    _folder(s)
    s.add_argument("--cases", required=True, metavar="CSV", help="the cases table (see above)")
    s.add_argument("--sequence", default="image", metavar="NAME",
                   help="sequence name of a single 'image' column (default image), used in file names")
    s.add_argument("--labels", choices=("binary", "intra-axial", "meningeal"), default="binary",
                   help="binary masks (default), or label maps whose value k is the k-th label of the CNS-tumour "
                        "label set (intra-axial: 1 whole tumour, 2 tumour body, 3 enhancing, 4 non-enhancing)")
    s.add_argument("--content", default="lesion", metavar="NAME",
                   help="what a binary mask shows, used in file names <case>_<sequence>_<content> (default lesion)")
    _by(s, False, "who sets the loop up")
    add_json(s, "the summary")

    s = add_command(ls, "import", "add standard annotations: a folder of masks or a reader study's consensus",
                    description="--masks DIR: every mask named <case_id>... (e.g. a consensus or a stroke study's "
                    "final masks, sub-folders searched) on its case's first image grid joins the standard set. "
                    "--study DIR: for every loop case that is a case of the reader study with two or more annotators' "
                    "submitted masks of --sequence/--content, their consensus (STAPLE or majority) joins it. Cases "
                    "already in the standard set are left as they are.")
    _folder(s)
    g = s.add_mutually_exclusive_group(required=True)
    g.add_argument("--masks", metavar="DIR", help="folder of masks named by case id")
    g.add_argument("--study", metavar="DIR", help="AnnotationQC reader study folder")
    s.add_argument("--sequence", metavar="NAME", help="with --study: the sequence the masks were drawn on")
    s.add_argument("--content", metavar="NAME", help="with --study: the mask content (e.g. whole-tumour)")
    s.add_argument("--method", choices=("staple", "majority"), default="staple",
                   help="with --study: consensus of the annotators' masks (default staple)")
    s.add_argument("--source", default="mask folder", metavar="TEXT",
                   help="with --masks: where the masks come from, recorded (default 'mask folder')")
    _by(s, True, "who imports them")
    add_json(s, "the cases added and skipped")

    s = add_command(ls, "train", "train the next round's network on the standard set",
                    description="A MONAI UNet (or SegResNet) with DiceCELoss on patches sampled around lesion and "
                    "background, patient-level internal validation, the best-validation epoch kept; stored as "
                    "safetensors + a checksummed manifest under rounds/round-NNN/model. Progress per epoch on stderr.")
    _folder(s)
    s.add_argument("--epochs", type=int, default=50, help="training epochs (default 50)")
    _device(s)
    s.add_argument("--seed", type=int, default=0, help="random seed of the split, sampling and weights (default 0)")
    s.add_argument("--network", choices=("unet", "segresnet"), default="unet",
                   help="monai.networks.nets network (default unet: dropout in every convolution, for MC dropout)")
    s.add_argument("--patch", metavar="N|X,Y,Z",
                   help="training/inference patch in voxels, multiples of 8 (default 32 on CPU, 96 on a GPU)")
    s.add_argument("--features", type=int, help="channels of the first network level (default 8 on CPU, 16 on a GPU)")
    s.add_argument("--val-fraction", type=float, default=0.25,
                   help="share of patients held out for internal validation (default 0.25; at least one)")
    s.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 0.003)")
    _by(s, False, "who trains")
    add_json(s, "the round's summary")

    s = add_command(ls, "prelabel", "pre-label every pool case with the latest model, with uncertainty",
                    description="Writes proposals/round-NNN/<case>_<sequence>_proposal.nii.gz, the voxel-wise "
                    "variance of the foreground probability (<case>_<sequence>_uncertainty.nii.gz) and a case score "
                    "(1 - mean pairwise Dice of the stochastic predictions). Human masks are never touched.")
    _folder(s)
    s.add_argument("--round", type=int, help="use this round's model (default the latest)")
    s.add_argument("--uncertainty", choices=("mc-dropout", "tta"), default="mc-dropout",
                   help="Monte-Carlo dropout samples (default) or test-time augmentation by flips")
    s.add_argument("--samples", type=int, default=8, help="stochastic predictions per case (default 8; tta: at most 8)")
    _device(s)
    add_overwrite(s)
    _by(s, False, "who runs it")
    add_json(s, "the summary with each case's score")

    s = add_command(ls, "queue", "the K pool cases to review next (uncertainty with a diversity term)",
                    description="Ranks the latest round's proposals by their uncertainty and takes them greedily, "
                    "lowering the priority of cases similar to those already queued (cosine similarity of the "
                    "coarse image and proposal layout), so the sample is not K near-identical cases.")
    _folder(s)
    s.add_argument("--n", type=int, required=True, metavar="K", help="how many cases to queue")
    s.add_argument("--diversity", type=float, default=0.5,
                   help="weight of the diversity term in [0, 1] (0: uncertainty only; default 0.5)")
    add_json(s, "the queue")

    s = add_command(ls, "accept", "an expert's reviewed mask joins the standard set",
                    description="Verdicts: accepted (the proposal unchanged; --mask may be left out), corrected (the "
                    "proposal edited), redrawn (drawn from scratch: for a rejected case or one without a proposal). "
                    "Records reader, time, verdict and, against the proposal, Dice and changed-voxel fraction. "
                    "An accepted case is never replaced; of two concurrent accepts exactly one wins.")
    _folder(s)
    s.add_argument("--case", required=True, metavar="ID", help="case id")
    s.add_argument("--mask", metavar="MASK", help="the expert's mask on the case's first image grid")
    _by(s, True, "the reviewing expert")
    s.add_argument("--verdict", required=True, choices=("corrected", "accepted", "redrawn"),
                   help="what the expert did with the proposal")
    s.add_argument("--note", default="", help="free-text note, recorded")
    add_json(s, "the record")

    s = add_command(ls, "reject", "send a pool case back to be drawn from scratch",
                    description="The proposal is unusable; the case leaves the queue until a mask drawn from scratch "
                    "is accepted with --verdict redrawn.")
    _folder(s)
    s.add_argument("--case", required=True, metavar="ID", help="case id")
    _by(s, True, "the reviewing expert")
    s.add_argument("--reason", default="", help="why the proposal was rejected, recorded")
    add_json(s, "the record")

    s = add_command(ls, "status", "rounds, standard set, validation Dice, review agreement and the stopping rule",
                    description="Per round: validation Dice of its model, proposals reviewed, accepted unchanged / "
                    "corrected / redrawn / rejected, mean Dice and changed fraction of the proposals against the "
                    "experts' masks (the work the loop saves). Verifies the audit trail.")
    _folder(s)
    s.add_argument("--stop-unchanged", type=float, default=0.8,
                   help="stopping rule: share of a round's reviewed proposals accepted unchanged (default 0.8)")
    s.add_argument("--min-reviews", type=int, default=5,
                   help="stopping rule: reviewed proposals a round needs before it is judged (default 5)")
    add_json(s, "the status")
    return p


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _warn(warnings) -> None:
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)


def _fmt(v, nd=3) -> str:
    return "-" if v is None else f"{v:.{nd}f}"


def run_loop(args: argparse.Namespace) -> int:
    """Run a parsed ``loop`` command; returns the exit status (errors are UserErrors)."""
    from ClinicalMRICommonLib.errors import UserError

    from .store import LoopFolder

    cmd = getattr(args, "loop_command", None)
    if not cmd:
        args.loop_parser.print_help()
        return 0
    if str(getattr(args, "by", "") or "").strip():
        # every reader id of the loop follows the one id rule (AnnotationQCLib.sessions.check_name)
        from ..sessions import check_name

        args.by = check_name(str(args.by).strip(), "reader id (--by)", becomes="the reader recorded in the audit trail")
    if cmd == "init":
        _, info = LoopFolder.create(args.folder, args.cases, sequence=args.sequence, labels=args.labels,
                                    content=args.content, by=args.by)
        _warn(info["warnings"])
        emit(info, args.json, f"loop {info['folder']}: {info['cases']} cases ({info['standard']} standard, "
                              f"{info['pool']} in the pool), sequences {', '.join(info['sequences'])}")
        return 0
    loop = LoopFolder(args.folder)
    if cmd == "import":
        if args.study:
            if not args.sequence or not args.content:
                raise UserError("--study needs --sequence and --content (which reads to take the consensus of)")
            res = loop.import_study_consensus(args.study, args.sequence, args.content, args.by, args.method)
        else:
            res = loop.import_masks(args.masks, args.by, args.source)
        text = f"{len(res['added'])} case(s) joined the standard set from {res['source']}"
        if res["already_standard"]:
            text += f"; already standard: {', '.join(res['already_standard'])}"
        if res["skipped"]:
            text += f"; skipped: {', '.join(map(str, res['skipped'][:10]))}" + (" ..." if len(res["skipped"]) > 10 else "")
        emit(res, args.json, text)
        return 0
    if cmd == "train":
        from .model import train_round

        res = train_round(loop, epochs=args.epochs, device=args.device, seed=args.seed, network=args.network,
                          patch=args.patch, features=args.features, val_fraction=args.val_fraction, lr=args.lr,
                          by=args.by, progress=_progress)
        emit(res, args.json, f"round {res['round']}: validation Dice {res['val_dice']:.3f} (best epoch "
                             f"{res['best_epoch']} of {res['epochs']}), {res['seconds_per_epoch']:.2f} s per epoch on "
                             f"{res['device']}; model {res['model']}")
        return 0
    if cmd == "prelabel":
        from .model import prelabel

        res = prelabel(loop, round_no=args.round, uncertainty=args.uncertainty, samples=args.samples,
                       device=args.device, overwrite=args.overwrite, by=args.by, progress=_progress)
        emit(res, args.json, f"round {res['round']}: {res['cases']} pool case(s) pre-labelled with {res['method']} "
                             f"uncertainty ({res['samples']} samples) in {res['folder']}")
        return 0
    if cmd == "queue":
        from .model import queue

        res = queue(loop, args.n, args.diversity)
        lines = [f"round {res['round']} ({res['method']}): {len(res['queue'])} of {res['pool_left']} pool case(s)"]
        lines += [f"{q['rank']:>3}. {q['case_id']}  score {q['score']:.3f}  priority {q['priority']:.2f}  - {q['why']}"
                  for q in res["queue"]]
        emit(res, args.json, "\n".join(lines))
        return 0
    if cmd == "accept":
        rec = loop.accept(args.case, args.mask, args.by, args.verdict, args.note)
        d = rec["data"]
        extra = (f"; against the round {d['proposal_round']} proposal: Dice {d['dice']:.3f}, changed "
                 f"{d['changed_fraction']:.1%} of the labelled voxels" if d.get("proposal_round") else "")
        emit(rec, args.json, f"case {args.case} joined the standard set ({args.verdict} by {rec['by']} at "
                             f"{rec['time']}){extra}")
        return 0
    if cmd == "reject":
        rec = loop.reject(args.case, args.by, args.reason)
        emit(rec, args.json, f"case {args.case} sent back to be drawn from scratch (rejected by {rec['by']} at "
                             f"{rec['time']})")
        return 0
    if cmd == "status":
        res = loop.status(args.stop_unchanged, args.min_reviews)
        o = res["standard_origin"]
        lines = [(f"loop {res['folder']}: {res['cases']} cases; standard set {res['standard']} (init {o['init']}, "
                  f"imported {o['import']}, reviewed {o['review']}); pool {res['pool']}; to redraw {res['redraw']}"),
                 "round  train/val  val Dice  reviewed  unchanged  corrected  redrawn  rejected  Dice vs expert  changed"]
        for r in res["rounds"]:
            lines.append(f"{r['round']:>5}  {r['train_cases']:>5}/{r['val_cases']:<3}  {_fmt(r['val_dice']):>8}  "
                         f"{r['reviewed']:>8}  {r['accepted_unchanged']:>9}  {r['corrected']:>9}  {r['redrawn']:>7}  "
                         f"{r['rejected']:>8}  {_fmt(r['mean_dice_vs_expert']):>14}  "
                         f"{'-' if r['mean_changed_fraction'] is None else format(r['mean_changed_fraction'], '.1%'):>7}")
        s = res["stopping"]
        lines.append(f"stopping rule: {s['rule']}: {'MET' if s['met'] else 'not met'} ({s['reason']})")
        lines.append(f"audit trail: {res['audit']['records']} records, hash chain verified")
        emit(res, args.json, "\n".join(lines))
        return 0
    raise UserError(f"unknown loop command {cmd!r}")
