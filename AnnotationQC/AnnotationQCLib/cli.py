"""``annotation-qc``: reader agreement, mask comparison, per-feature ICC and consensus from
the command line. The numbers come from the same library functions the Slicer module uses.

The tool follows the extension's one command-line convention
(:mod:`ClinicalMRICommonLib.cli`): ``--version``; ``--json`` wherever a command prints data;
``--overwrite`` wherever a command replaces a file (decided by
:func:`ClinicalMRICommonLib.files.check_output_path`); mask pairs are ``--reference`` /
``--test`` (``--truth`` / ``--pred`` kept as aliases); outputs are ``--out``; exit status 0
done, 1 done with a negative verdict (a trainee NOT PASSED), 2 bad input (one
``error: ...`` line on stderr, never a traceback).
"""

from __future__ import annotations

import math
import sys

from ClinicalMRICommonLib.cli import (
    EXIT_NEGATIVE,
    EXIT_OK,
    Parser,
    add_command,
    add_json,
    add_overwrite,
    emit,
    tool_parser,
)
from ClinicalMRICommonLib.errors import UserError, run_cli
from ClinicalMRICommonLib.files import check_output_path, write_image_atomic
from ClinicalMRICommonLib.images import read_image

PROG = "annotation-qc"

DESCRIPTION = ("Annotation quality: reader agreement (ICC), mask comparison, per-feature ICC for radiomics, "
               "consensus of several readers, training sessions and image quality. The Slicer module "
               "AnnotationQC runs the same library.")

EPILOG = """workflows:
  agreement of two readers on one mask:
    annotation-qc compare --reference r1/P001_T2_ROI.nii.gz --test r2/P001_T2_ROI.nii.gz --lesions
  per-feature ICC for the radiomics reader-agreement filter (inter: two readers; intra: one
  reader's first and repeat sessions), from feature tables or straight from a reader study:
    annotation-qc feature-icc --a r1.csv --b r2.csv --id-column case_id --out icc.csv --plot icc.png
    annotation-qc feature-icc --study STUDY --reader-a r1 --reader-b r1 --session-b repeat --out intra.csv
  consensus of several readers (STAPLE with each reader's sensitivity/specificity, or majority):
    annotation-qc consensus --masks r1.nii.gz r2.nii.gz r3.nii.gz --out consensus.nii.gz \\
        --disagreement disagreement.nii.gz
  training session (>= 5 reference cases; pass: every case submitted, mean Dice >= 0.80, and the
  optional per-case minimum Dice / feature error / feature ICC the instructor sets):
    annotation-qc training-create --folder SESSION --name "CNS 2024" --cases cases.csv --min-case-dice 0.7
    annotation-qc training-submit --session SESSION --trainee t1 --case case1 --mask t1_case1.nii.gz
    annotation-qc training-withdraw --session SESSION --trainee t1 --case case1 --reason "wrong lesion"
    annotation-qc training-list --session SESSION
    annotation-qc training-report --session SESSION --trainee t1        (exit 1: NOT PASSED)
    annotation-qc training-summary --session SESSION                    (all trainees: HTML + CSV)
    annotation-qc training-verify --session SESSION                     (tampering: exit 1 ALTERED)
  reader study with blinding and repeat reads (cases.csv: case_id, patient_id, sequence, image[, label]):
    annotation-qc study init --folder STUDY --name "spine ROI" --cases cases.csv --washout-days 30
    annotation-qc study reader add --study STUDY --reader r1 --role annotator
    annotation-qc study assign --study STUDY --reader r1 --all
    annotation-qc study submit --study STUDY --reader r1 --case c1 --sequence T2 --content ROI --mask m.nii.gz
    annotation-qc study status --study STUDY --reader r1        (the reader's blinded work list)
    annotation-qc study status --study STUDY --coordinator      (everyone's progress, no labels)
    annotation-qc study verify --study STUDY                    (tampering: every problem; exit 1 ALTERED)
  image quality: SNR/CNR from ROIs, and a series grade (CNS 1-3 or stroke Likert 1-5) in a study:
    annotation-qc quality --image t2.nii.gz --signal s.nii.gz --background b.nii.gz --tissue t.nii.gz
    annotation-qc quality grade --study STUDY --case c1 --sequence T2 --rater r1 --grade 1 --reason motion
  human-in-the-loop pre-annotation (CNS-tumour consensus section 7; docs/active_learning.md):
    annotation-qc loop init|import|train|prelabel|queue|accept|reject|status  (see annotation-qc loop --help)
Run 'annotation-qc COMMAND --help' for a command's options."""


def _read_csv(path: str, what: str):
    from ClinicalMRICommonLib.tables import read_csv_table

    return read_csv_table(path, what)


def _fmt(v, nd=4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{v:.{nd}f}"


# ---------------------------------------------------------------------------------------
# icc


def _cmd_icc(args) -> int:
    from ClinicalMRICommonLib.agreement.icc import FORMS, format_icc_table, icc_from_long

    df = _read_csv(args.input, "ratings")
    missing = [f"{c!r} ({o})" for o, c in (("--target", args.target), ("--rater", args.rater),
                                            ("--rating", args.rating)) if c not in df.columns]
    if missing:
        raise UserError(f"ratings file {args.input}: column {', '.join(missing)} not found; its columns are "
                        f"{', '.join(map(str, df.columns[:12]))}")
    res = icc_from_long(df, args.target, args.rater, args.rating, alpha=args.alpha)
    first = next(iter(res.values()))
    if first["n_dropped"]:
        print(f"note: {first['n_dropped']} target(s) with a missing rating were dropped; "
              f"{first['n_targets']} complete targets used", file=sys.stderr)
    if args.json:
        out = {}
        for name in FORMS:
            r = res[name]
            out[name] = {"icc": r["icc"], "ci95": r["ci95"], "F": r["F"], "df1": int(r["df1"]),
                         "df2": int(r["df2"]), "p": r["p"]}
        emit(out, True)
    else:
        print(format_icc_table(res))
        print("Interpretation after Koo & Li (2016): < 0.5 poor, 0.5-0.75 moderate, 0.75-0.9 good, "
              "> 0.9 excellent")
    return EXIT_OK


# ---------------------------------------------------------------------------------------
# compare


def _read_binary_mask(path: str, what: str, label: int | None):
    """A mask file as UInt8 0/1 with the extension's one mask policy
    (:func:`ClinicalMRICommonLib.masks.read_mask`); empty masks are allowed here (the metrics
    define a score for them)."""
    from ClinicalMRICommonLib.masks import read_mask

    return read_mask(path, what=what, label=label, allow_empty=True)


def _same_grid_or_refuse(img, like, what: str, other: str) -> None:
    from ClinicalMRICommonLib.grids import grid_difference, same_grid

    if not same_grid(img, like):
        raise UserError(f"{what} is not on the grid of {other} ({grid_difference(img, like)}); resample it onto "
                        "the same image first (nearest neighbour)")


def _cmd_compare(args) -> int:
    from ClinicalMRICommonLib.agreement.segmentation_metrics import (
        EMPTY_MASK_CONVENTION,
        compare_masks,
        lesion_detection,
    )

    ref = _read_binary_mask(args.reference, "reference mask", args.label)
    test = _read_binary_mask(args.test, "test mask", args.label)
    _same_grid_or_refuse(test, ref, f"test mask {args.test}", f"the reference mask {args.reference}")
    res = compare_masks(ref, test, tolerance_mm=args.tolerance_mm)
    if args.lesions:
        res = {**res, "lesions": lesion_detection(ref, test, connectivity=args.connectivity)}
    if args.json:
        emit(res, True)
        return EXIT_OK
    rows = [("Dice", _fmt(res["dice"])), ("Jaccard", _fmt(res["jaccard"])),
            ("HD95 (mm)", _fmt(res["hd95_mm"], 3)), ("ASSD (mm)", _fmt(res["assd_mm"], 3)),
            (f"surface Dice @ {args.tolerance_mm:g} mm", _fmt(res["surface_dice"])),
            ("volume reference (mL)", _fmt(res["volume_ref_ml"], 3)),
            ("volume test (mL)", _fmt(res["volume_test_ml"], 3)),
            ("volume test - reference (mL)", _fmt(res["volume_diff_ml"], 3))]
    if args.lesions:
        les = res["lesions"]
        rows += [("lesions reference / test", f"{les['n_reference']} / {les['n_test']}"),
                 ("lesions matched / missed / extra", f"{les['matched']} / {les['missed']} / {les['extra']}"),
                 ("lesion-wise F1", _fmt(les["lesion_f1"]))]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    if res["hd95_mm"] is None or not math.isfinite(res["hd95_mm"]):
        print(f"note: {EMPTY_MASK_CONVENTION}", file=sys.stderr)
    return EXIT_OK


# ---------------------------------------------------------------------------------------
# feature-icc


def _cmd_feature_icc(args) -> int:
    from ClinicalMRICommonLib.agreement.icc import feature_icc, plot_icc_by_class
    from ClinicalMRICommonLib.tables import read_feature_table

    csv_mode = bool(args.a or args.b)
    if csv_mode == bool(args.study):
        raise UserError("give either two feature tables (--a, --b, --id-column) or a reader study "
                        "(--study, --reader-a, --reader-b) (see 'annotation-qc feature-icc --help')")
    if csv_mode:
        missing = [o for o, v in (("--a", args.a), ("--b", args.b), ("--id-column", args.id_column)) if not v]
        if missing:
            raise UserError(f"feature tables need {', '.join(missing)} as well")
        inputs = [args.a, args.b]
    else:
        missing = [o for o, v in (("--reader-a", args.reader_a), ("--reader-b", args.reader_b)) if not v]
        if missing:
            raise UserError(f"a reader study needs {', '.join(missing)} (the same reader twice with "
                            "--session-a first --session-b repeat for intra-reader agreement)")
        inputs = []
    check_output_path(args.out, overwrite=args.overwrite, what="--out", inputs=inputs, others=[args.plot])
    if args.plot:
        check_output_path(args.plot, overwrite=args.overwrite, what="--plot", inputs=inputs, others=[args.out])
    if csv_mode:
        ta = read_feature_table(args.a, args.id_column, "first feature table (--a)")
        tb = read_feature_table(args.b, args.id_column, "second feature table (--b)")
        table = feature_icc(ta, tb, form=args.form)
        source = ""
    else:
        from .sessions import ReaderStudy

        res = ReaderStudy.open(args.study).feature_icc(args.reader_a, args.reader_b, args.session_a, args.session_b,
                                                       sequence=args.sequence, content=args.content, form=args.form)
        table = res["table"]
        source = (f"{res['sequence']}/{res['content']} of {args.reader_a} ({args.session_a}) vs {args.reader_b} "
                  f"({args.session_b}), pyradiomics shape + first-order features; ")
        if res["skipped_empty"]:
            print(f"note: left out for an empty mask: {', '.join(res['skipped_empty'])}", file=sys.stderr)
    from ClinicalMRICommonLib.files import atomic_path

    with atomic_path(args.out) as tmp:
        table.to_csv(tmp, float_format="%.6g")
    n = len(table)
    defined = table["icc"].notna()
    kept = int((table["icc"] >= args.threshold).sum())
    summary = {"features": n, "undefined": int(n - defined.sum()), "form": args.form, "threshold": args.threshold,
               "at_or_above_threshold": kept, "cases": int(table["n"].max()) if n else 0, "out": args.out,
               "plot": args.plot}
    if args.plot:
        plot_icc_by_class(table, args.plot, threshold=args.threshold, title=f"{args.form} per feature class")
    emit(summary, args.json,
         f"{source}{n} features, {summary['undefined']} undefined (constant), {kept} with {args.form} >= "
         f"{args.threshold:g}; cases used: {summary['cases']}; table written to {args.out}"
         + (f"\nplot written to {args.plot}" if args.plot else ""))
    return EXIT_OK


# ---------------------------------------------------------------------------------------
# consensus


def _cmd_consensus(args) -> int:
    import numpy as np
    import SimpleITK as sitk
    from ClinicalMRICommonLib.agreement.consensus import disagreement_map, majority_vote, staple

    outputs = [(args.out, "--out")] + [(p, o) for p, o in ((args.probability, "--probability"),
                                                           (args.disagreement, "--disagreement")) if p]
    for path, option in outputs:
        check_output_path(path, overwrite=args.overwrite, what=option, inputs=args.masks,
                          others=[p for p, o in outputs if o != option])
    masks = [_read_binary_mask(p, f"mask {i}", args.label) for i, p in enumerate(args.masks, start=1)]
    for i, (m, p) in enumerate(zip(masks[1:], args.masks[1:]), start=2):
        _same_grid_or_refuse(m, masks[0], f"mask {i} ({p})", f"mask 1 ({args.masks[0]})")
    result: dict = {"method": args.method, "n_readers": len(masks), "out": args.out}
    if args.method == "staple":
        consensus, prob, per_reader = staple(masks, threshold=args.threshold)
        for r, path in zip(per_reader, args.masks):
            r["mask"] = path
        result["readers"] = per_reader
        if args.probability:
            write_image_atomic(prob, args.probability)
            result["probability"] = args.probability
    else:
        consensus = majority_vote(masks)
    if args.disagreement:
        write_image_atomic(disagreement_map(masks), args.disagreement)
        result["disagreement"] = args.disagreement
    write_image_atomic(consensus, args.out)
    n_vox = int(sitk.GetArrayViewFromImage(consensus).sum())
    result["voxels"] = n_vox
    result["volume_ml"] = n_vox * float(np.prod(consensus.GetSpacing())) / 1000.0
    if args.json:
        emit(result, True)
    else:
        print(f"{args.method} consensus of {len(masks)} readers: {n_vox} voxels "
              f"({result['volume_ml']:.3f} mL) written to {args.out}")
        for r in result.get("readers", []):
            print(f"  reader {r['reader']} ({r['mask']}): sensitivity {r['sensitivity']:.4f}, "
                  f"specificity {r['specificity']:.6f}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------
# training sessions


def _criteria_from(args) -> dict:
    criteria = {}
    for key in ("dice", "min_case_dice", "feature_error", "icc"):
        if getattr(args, key, None) is not None:
            criteria[key] = getattr(args, key)
    return criteria


def _cmd_training_create(args) -> int:
    from .training import TrainingSession, cases_from_csv

    cases = cases_from_csv(args.cases)
    session = TrainingSession.create(args.folder, args.name, cases, _criteria_from(args))
    for w in session.meta["warnings"]:
        print(f"warning: {w}", file=sys.stderr)
    emit({"folder": str(args.folder), "name": args.name, "cases": session.case_ids,
          "criteria": session.meta["criteria"], "warnings": session.meta["warnings"]}, args.json,
         f"training session {args.name!r} with {len(session.case_ids)} cases written to {args.folder}")
    return EXIT_OK


def _cmd_training_submit(args) -> int:
    from ClinicalMRICommonLib.masks import read_mask

    from .training import TrainingSession

    session = TrainingSession.open(args.session)
    path = session.submit(args.trainee, args.case, read_mask(args.mask, what="trainee mask"),
                          mask_name=f"trainee mask {args.mask}")
    emit({"trainee": args.trainee, "case": args.case, "mask": str(path)}, args.json, f"submitted {path}")
    return EXIT_OK


def _cmd_training_withdraw(args) -> int:
    from .training import TrainingSession

    session = TrainingSession.open(args.session)
    rec = session.withdraw(args.trainee, args.case, args.reason, by=args.by)
    emit(rec, args.json, f"withdrew the submission of trainee {args.trainee!r} for case {args.case!r} "
         f"(kept as {rec['moved_to']}); the case can be submitted again")
    return EXIT_OK


def _cmd_training_list(args) -> int:
    from .training import TrainingSession

    listing = TrainingSession.open(args.session).listing()
    if args.json:
        emit(listing, True)
        return EXIT_OK
    cases = [c["case_id"] for c in listing["cases"]]
    print(f"training session {listing['session']!r}: {len(cases)} cases, {len(listing['trainees'])} trainees")
    for c in listing["cases"]:
        print(f"  case {c['case_id']:<12} {c['patient_id']} {c['sequence']} {c['content']}")
    width = max([len(t) for t in listing["trainees"]] + [7])
    for t, subs in listing["trainees"].items():
        done = [cid for cid in cases if subs[cid]]
        todo = [cid for cid in cases if not subs[cid]]
        print(f"  {t:<{width}}  submitted {len(done)}/{len(cases)}" + (f"; missing {', '.join(todo)}" if todo else ""))
    for w in listing["withdrawn"]:
        print(f"  withdrawn: {w['trainee']} {w['case_id']} on {w['time']} ({w['reason']})")
    return EXIT_OK


def _cmd_training_report(args) -> int:
    from .training import TrainingSession

    session = TrainingSession.open(args.session)
    report = session.write_report(args.trainee, args.out, overwrite=args.overwrite)
    ov = report["overall"]
    if args.json:
        emit(report, True)
    else:
        icc = ov["feature_icc"]
        print(f"trainee {args.trainee}: {'PASSED' if ov['passed'] else 'NOT PASSED'}")
        for r in ov["reasons"]:
            print(f"  - {r}")
        print(f"cases submitted {ov['cases_submitted']}/{ov['cases_total']}, mean Dice {_fmt(ov['mean_dice'], 3)} "
              f"(min {_fmt(ov['min_dice'], 3)}), lesions missed {ov['lesions_missed']}, extra {ov['lesions_extra']}, "
              f"median feature error {_fmt(ov['median_feature_error'], 3)}, median feature {icc['form']} "
              f"{_fmt(icc['median'], 3)} ({icc['interpretation']})")
        for c in report["cases"]:
            les = c["lesions"]
            print(f"  {c['case_id']:<12} Dice {_fmt(c['dice'], 3)}  HD95 {_fmt(c['hd95_mm'], 2)} mm  "
                  f"over {_fmt(c['over_ml'], 3)} mL  under {_fmt(c['under_ml'], 3)} mL  {c['tendency']}  "
                  f"lesions {les['matched']}/{les['n_reference']} found, {les['extra']} extra")
        if ov["hints"]:
            print("what to practise:")
            for h in ov["hints"]:
                print(f"  * {h}")
        for n in ov.get("notes", []):
            print(f"note: {n}", file=sys.stderr)
        print(f"report: {report['files']['html']}")
    return EXIT_OK if ov["passed"] else EXIT_NEGATIVE


def _cmd_training_summary(args) -> int:
    from .training import TrainingSession

    summ = TrainingSession.open(args.session).write_summary(args.out, overwrite=args.overwrite)
    if args.json:
        emit(summ, True)
        return EXIT_OK
    print(f"training session {summ['session']!r}: {len(summ['trainees'])} trainees x {len(summ['cases'])} cases")
    for t, v in summ["trainees"].items():
        print(f"  {t:<12} {'PASSED' if v['passed'] else 'NOT PASSED':<10}  mean Dice {_fmt(v['mean_dice'], 3)}  "
              f"min {_fmt(v['min_dice'], 3)}  submitted {v['cases_submitted']}/{len(summ['cases'])}")
    print("hardest cases (lowest mean Dice first):")
    for h in summ["hardest_cases"][:5]:
        print(f"  {h['case_id']:<12} mean Dice {_fmt(h['mean_dice'], 3)}  min {_fmt(h['min_dice'], 3)}  "
              f"{h['below_dice_threshold']}/{h['trainees']} below the Dice threshold, {h['lesions_missed']} lesions missed")
    print(f"summary: {summ['files']['html']} and {summ['files']['csv']}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------
# reader studies


def _cmd_study_init(args) -> int:
    from .sessions import study_from_csv

    study = study_from_csv(args.folder, args.name, args.cases, washout_days=args.washout_days)
    cases = study.meta["cases"]
    emit({"folder": str(study.folder), "name": args.name, "cases": sorted(cases),
          "sequences": sorted({s for c in cases.values() for s in c["images"]}), "washout_days": args.washout_days},
         args.json, f"reader study {args.name!r} with {len(cases)} cases written to {args.folder}"
         + (f" (repeat reads after {args.washout_days:g} days)" if args.washout_days else ""))
    return EXIT_OK


def _cmd_study_reader_add(args) -> int:
    from .sessions import ReaderStudy

    study = ReaderStudy.open(args.study)
    study.add_reader(args.reader, args.role, by=args.by)
    emit({"reader": args.reader, "role": args.role}, args.json, f"reader {args.reader!r} registered as {args.role}")
    return EXIT_OK


def _cmd_study_assign(args) -> int:
    from .sessions import ReaderStudy

    study = ReaderStudy.open(args.study)
    if bool(args.cases) == bool(args.all):
        raise UserError("give the cases to assign (--cases c1 c2 ...) or --all")
    cases = sorted(study.meta["cases"]) if args.all else args.cases
    work = study.assign(args.reader, cases, args.session, by=args.by or "", order=args.order, seed=args.seed)
    emit({"reader": args.reader, "session": args.session, "work_list": work}, args.json,
         f"{args.reader!r}, session {args.session!r}: {len(work)} cases in this order: {', '.join(work)}")
    return EXIT_OK


def _cmd_study_submit(args) -> int:
    from ClinicalMRICommonLib.masks import read_mask

    from .sessions import ReaderStudy

    study = ReaderStudy.open(args.study)
    mask = read_mask(args.mask, what="reader mask", allow_empty=True)
    path = study.save_mask(args.reader, args.case, args.sequence, args.content, mask, session=args.session,
                           final=not args.draft, notes=args.notes or "", mask_name=f"reader mask {args.mask}")
    what = "draft saved" if args.draft else "submitted"
    emit({"reader": args.reader, "case": args.case, "sequence": args.sequence, "content": args.content,
          "session": args.session, "final": not args.draft, "mask": str(path)}, args.json, f"{what}: {path}")
    return EXIT_OK


def _cmd_study_status(args) -> int:
    from .sessions import ReaderStudy

    study = ReaderStudy.open(args.study)
    if bool(args.reader) == bool(args.coordinator):
        raise UserError("give --reader ID (that reader's blinded work list) or --coordinator (every reader's "
                        "progress; no labels, no masks)")
    if args.reader:
        rows = study.case_list(args.reader, args.session)
        if args.json:
            emit({"reader": args.reader, "session": args.session, "cases": rows}, True)
        else:
            print(f"{args.reader} ({study.role(args.reader)}), session {args.session}: {len(rows)} cases")
            for r in rows:
                print(f"  {r['case_id']:<12} {r['patient_id']:<10} " +
                      ", ".join(f"{s}: {v}" for s, v in r["status"].items()))
        return EXIT_OK
    rows = study.progress()
    if args.json:
        emit({"study": study.meta["name"], "cases": len(study.meta["cases"]), "readers": rows}, True)
    else:
        print(f"study {study.meta['name']!r}: {len(study.meta['cases'])} cases, "
              f"{len(study.meta['readers'])} readers")
        for r in rows:
            assigned = "all" if r["assigned"] is None else r["assigned"]
            print(f"  {r['reader_id']:<10} {r['role'] or '?':<10} {r['session']:<8} assigned {assigned}, "
                  f"submitted {r['submitted']}, in progress {r['in_progress']}")
    return EXIT_OK


def _verify_description(what: str, documents: str, files: str) -> str:
    return (f"Check everything a {what} records and report every problem at once: the signed, hash-chained logs "
            "(an edited, removed, inserted or reordered record; a chain recomputed without the site key; a removed "
            "tail, from the signed head file; unsigned records after signed ones; another site's key), the signed "
            f"{documents}, paths that leave the folder, and the SHA-256 of every {files}. Every other command "
            "refuses an altered folder with the first problem; this one lists them all. Exit status 0 VERIFIED, "
            "1 ALTERED. The site key is read from $CLINICALMRI_SITE_KEY_FILE or ~/.config/clinicalmri/site.key.")


def _print_verification(rep, as_json: bool) -> int:
    """A folder's check (``study verify``, ``training-verify``): VERIFIED (exit 0) or ALTERED
    with every problem (exit 1, the negative verdict); notes never change the verdict."""
    if as_json:
        emit(rep.as_dict(), True)
    else:
        n = len(rep.problems)
        verdict = "VERIFIED" if rep.ok else f"ALTERED ({n} problem{'s' if n != 1 else ''})"
        print(f"{rep.kind} {rep.folder}: {verdict}")
        for p in rep.problems:
            print(f"  problem: {p}")
        for n in rep.notices + rep.info:
            print(f"  note: {n}")
    return EXIT_OK if rep.ok else EXIT_NEGATIVE


def _cmd_study_verify(args) -> int:
    from .sessions import ReaderStudy

    return _print_verification(ReaderStudy.open(args.study, verify=False).verify(files=not args.quick), args.json)


def _cmd_training_verify(args) -> int:
    from .training import TrainingSession

    return _print_verification(TrainingSession.open(args.session, verify=False).verify(files=not args.quick),
                               args.json)


def _need_action(parser_name: str, actions: str):
    def run(args) -> int:
        raise UserError(f"{PROG} {parser_name}: choose an action: {actions} (see {PROG} {parser_name} --help)")
    return run


# ---------------------------------------------------------------------------------------
# image quality


def _cmd_quality_grade(args) -> int:
    from .quality import grade

    if (args.grade is None) == (args.likert is None):
        raise UserError("give --grade 1-3 (CNS-tumour scale) or --likert 1-5 (stroke scale)")
    scale, score = ("cns", args.grade) if args.grade is not None else ("stroke", args.likert)
    rec = grade(args.study, args.case, args.sequence, args.rater, scale=scale, score=score,
                roi_labelmap=args.roi_labelmap, snr=args.snr, cnr=args.cnr, reason=args.reason or "",
                min_snr=args.min_snr, min_cnr=args.min_cnr, rayleigh_correction=args.rayleigh)
    state = ("FLAGGED (" + "; ".join(rec["flag_reasons"]) + f"): not offered for annotation; reason: {rec['reason']}"
             if rec["flagged"] else "usable")
    emit(rec, args.json, f"{args.case} {args.sequence}: {scale} score {score}, SNR {_fmt(rec['snr'], 1)}, "
         f"CNR {_fmt(rec['cnr'], 1)} - {state}")
    return EXIT_OK


def _cmd_quality(args) -> int:
    from ClinicalMRICommonLib.quality import snr_cnr

    missing = [o for o, v in (("--image", args.image), ("--signal", args.signal),
                              ("--background", args.background)) if not v]
    if missing:
        raise UserError(f"quality: SNR/CNR need {', '.join(missing)} (see annotation-qc quality --help)")
    image = read_image(args.image, "image")
    from ClinicalMRICommonLib.masks import read_mask

    rois = {key: read_mask(getattr(args, key), what=f"{key} ROI")
            for key in ("signal", "background", "tissue") if getattr(args, key)}
    for key, roi in rois.items():
        _same_grid_or_refuse(roi, image, f"{key} ROI {getattr(args, key)}", f"the image {args.image}")
    res = snr_cnr(image, rois["signal"], rois["background"], rois.get("tissue"),
                  rayleigh_correction=args.rayleigh)
    if args.json:
        emit(res, True)
    else:
        print(f"SNR {_fmt(res['snr'], 2)}  (mean signal {res['mean_signal']:.4g} over {res['n_signal']} voxels, "
              f"noise SD {res['noise_sd']:.4g} from {res['n_background']} background voxels)")
        if res["cnr"] is not None:
            print(f"CNR {_fmt(res['cnr'], 2)}  (mean tissue {res['mean_tissue']:.4g} over {res['n_tissue']} voxels)")
    return EXIT_OK


# ---------------------------------------------------------------------------------------
# parser


def _mask_pair(s) -> None:
    """``--reference`` / ``--test`` (the extension's names for a mask pair; ``--truth`` /
    ``--pred`` kept as aliases)."""
    s.add_argument("--reference", "--truth", dest="reference", required=True, metavar="MASK",
                   help="reference mask (NIfTI/NRRD/MHA; alias --truth)")
    s.add_argument("--test", "--pred", dest="test", required=True, metavar="MASK",
                   help="mask to compare, on the reference's grid (alias --pred)")


def _label_option(s) -> None:
    s.add_argument("--label", type=int, default=None, metavar="N",
                   help="use only this label value of the mask files (default: any non-zero voxel)")


def build_parser():
    from ClinicalMRICommonLib.agreement.segmentation_metrics import EMPTY_MASK_CONVENTION

    p, sub = tool_parser(PROG, DESCRIPTION, EPILOG)

    s = add_command(sub, "icc", "ICC, all six forms, from a long-format CSV (one row per rating)",
                    description="All six ICC forms (McGraw & Wong names with the Shrout & Fleiss names beside "
                    "them), F, df, p and 95% CI. Targets missing a rating are dropped (and counted).")
    s.add_argument("--input", required=True, metavar="CSV", help="long-format table: one row per rating")
    s.add_argument("--target", required=True, metavar="COL", help="column naming the rated target (case)")
    s.add_argument("--rater", required=True, metavar="COL", help="column naming the rater")
    s.add_argument("--rating", required=True, metavar="COL", help="column with the numeric rating")
    s.add_argument("--alpha", type=float, default=0.05, help="1 - confidence level of the intervals (0.05)")
    add_json(s, 'one JSON object keyed by "ICC(1,1)", "ICC(A,1)", "ICC(C,1)", "ICC(1,k)", "ICC(A,k)", '
             '"ICC(C,k)", each {"icc", "ci95": [lo, hi], "F", "df1", "df2", "p"}')
    s.set_defaults(func=_cmd_icc)

    s = add_command(sub, "compare", "agreement of two masks on one grid (Dice, HD95, ...)",
                    description="Dice, Jaccard, HD95, ASSD, surface Dice and volumes (mm, mL). "
                    f"Empty masks: {EMPTY_MASK_CONVENTION}.")
    _mask_pair(s)
    s.add_argument("--tolerance-mm", type=float, default=1.0, help="surface Dice tolerance in mm (1.0)")
    _label_option(s)
    s.add_argument("--lesions", action="store_true",
                   help="add lesion-wise detection (ISLES'22: matched, missed, extra, lesion F1) under 'lesions'")
    s.add_argument("--connectivity", type=int, choices=(6, 26), default=26,
                   help="lesion connectivity for --lesions (26)")
    add_json(s, 'one JSON object {"dice", "jaccard", "hd95_mm", "assd_mm", "surface_dice", "volume_ref_ml", '
             '"volume_test_ml", "volume_diff_ml"} (undefined distances are null)')
    s.set_defaults(func=_cmd_compare)

    s = add_command(sub, "feature-icc", "per-feature ICC between two readers or sessions (radiomics)",
                    description="Per-feature ICC (inter-reader: two readers; intra-reader: one reader's first "
                    "and repeat sessions), from two CSV feature tables (one row per case, one column per "
                    "feature, aligned on the id column and the common feature columns) or from a reader study "
                    "(pyradiomics shape + first-order features of every case both reads submitted, on the "
                    "case's source image). The table feeds HRMM's reader-agreement filter (ICC >= 0.75 "
                    "inter and intra).")
    g = s.add_argument_group("from feature tables")
    g.add_argument("--a", metavar="CSV", help="features of reader 1 / session 1")
    g.add_argument("--b", metavar="CSV", help="features of reader 2 / session 2")
    g.add_argument("--id-column", metavar="COL", help="case id column present in both tables")
    g = s.add_argument_group("from a reader study")
    g.add_argument("--study", metavar="DIR", help="reader study folder")
    g.add_argument("--reader-a", metavar="ID", help="first reader")
    g.add_argument("--reader-b", metavar="ID", help="second reader (the same reader for intra-reader ICC)")
    g.add_argument("--session-a", default="first", metavar="NAME", help="session of reader A (first)")
    g.add_argument("--session-b", default="first", metavar="NAME", help="session of reader B (first; 'repeat' "
                   "for intra-reader)")
    g.add_argument("--sequence", metavar="SEQ", help="sequence, when the reads cover several")
    g.add_argument("--content", metavar="NAME",
                   help="mask content (e.g. ROI, whole-tumour), when the reads cover several")
    s.add_argument("--form", default="ICC(A,1)", help="ICC form (ICC(A,1) default; any of the six)")
    s.add_argument("--threshold", type=float, default=0.75, help="threshold reported and drawn (0.75)")
    s.add_argument("--out", required=True, metavar="CSV",
                   help="output table: feature, icc, ci_low, ci_high, interpretation, n")
    s.add_argument("--plot", metavar="PNG", help="also draw the ICC distribution per feature class")
    add_overwrite(s)
    add_json(s, "the summary (features, undefined, at_or_above_threshold, cases, out)")
    s.set_defaults(func=_cmd_feature_icc)

    s = add_command(sub, "consensus", "consensus mask of several readers (STAPLE or majority vote)",
                    description="STAPLE (with each reader's sensitivity/specificity) or majority vote (more "
                    "than half of the readers; ties go to background). The outputs must differ from each "
                    "other and from the input masks.")
    s.add_argument("--masks", required=True, nargs="+", metavar="MASK", help="reader masks on one grid")
    s.add_argument("--out", required=True, metavar="MASK", help="consensus mask to write")
    s.add_argument("--method", choices=("staple", "majority"), default="staple",
                   help="staple (default; with each reader's sensitivity and specificity) or majority")
    s.add_argument("--threshold", type=float, default=0.5,
                   help="STAPLE: foreground where probability >= threshold (0.5)")
    _label_option(s)
    s.add_argument("--probability", metavar="IMAGE", help="STAPLE: also write the probability image")
    s.add_argument("--disagreement", metavar="MASK",
                   help="also write a disagreement map (0 all background, 1 readers disagree, 2 all foreground)")
    add_overwrite(s)
    add_json(s, "the result (method, readers with sensitivity/specificity, voxels, volume_ml, files)")
    s.set_defaults(func=_cmd_consensus)

    s = add_command(sub, "quality", "SNR and CNR of a series from ROIs; 'quality grade' records a series' grade",
                    description="Without an action: SNR = mean(signal) / SD(background); CNR = |mean(signal) - "
                    "mean(tissue)| / SD(background) (SD with ddof 1). ROIs are masks on the image grid; the "
                    "background ROI should be noisy air outside the body. 'quality grade' records a series' "
                    "quality in a reader study (see annotation-qc quality grade --help).")
    s.add_argument("--image", metavar="IMAGE", help="the series to measure (required without an action)")
    s.add_argument("--signal", metavar="MASK", help="ROI in the tissue of interest (required without an action)")
    s.add_argument("--background", metavar="MASK", help="ROI in air (noise) (required without an action)")
    s.add_argument("--tissue", metavar="MASK", help="second tissue ROI for the CNR")
    s.add_argument("--rayleigh", action="store_true",
                   help="divide the background SD by 0.655 (Rayleigh noise of magnitude images)")
    add_json(s, "the measurement (snr, cnr, means, noise SD, voxel counts)")
    s.set_defaults(func=_cmd_quality)
    qsub = s.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
    g = add_command(qsub, "grade", "record a series' image quality in a reader study (CNS 1-3 or stroke 1-5)",
                    description="Grade one series of a reader study: --grade 1-3 (CNS-tumour consensus: 1 blurred "
                    "or obvious artefacts, not diagnostic; 2 minor artefacts; 3 clear) or --likert 1-5 (stroke "
                    "consensus, 5 best), with SNR/CNR given or measured from an ROI label map (1 signal, 2 "
                    "background, 3 tissue). A series with grade < 2, Likert < 3 or SNR/CNR below the given "
                    "minimum is flagged (a reason is required) and no longer offered for annotation. The "
                    "rater must be a registered reader; records are appended under the study's lock to a "
                    "hash-chained log and never changed (a later record of the same rater counts).")
    g.add_argument("--study", required=True, metavar="DIR", help="reader study folder")
    g.add_argument("--case", required=True, metavar="CASE_ID", help="case id of the series")
    g.add_argument("--sequence", required=True, metavar="SEQ", help="sequence of the series (e.g. T2, DWI)")
    g.add_argument("--rater", required=True, metavar="ID", help="registered reader who grades")
    g.add_argument("--grade", type=int, choices=(1, 2, 3), help="CNS-tumour quality grade 1-3")
    g.add_argument("--likert", type=int, choices=(1, 2, 3, 4, 5), help="stroke quality Likert score 1-5")
    g.add_argument("--roi-labelmap", metavar="MASK",
                   help="label map on the series' grid (1 signal, 2 background, 3 tissue) to measure SNR/CNR")
    g.add_argument("--snr", type=float, metavar="X", help="SNR measured elsewhere (instead of --roi-labelmap)")
    g.add_argument("--cnr", type=float, metavar="X", help="CNR measured elsewhere (instead of --roi-labelmap)")
    g.add_argument("--min-snr", type=float, metavar="X", help="flag the series when its SNR is below this")
    g.add_argument("--min-cnr", type=float, metavar="X", help="flag the series when its CNR is below this")
    g.add_argument("--rayleigh", action="store_true",
                   help="with --roi-labelmap: divide the background SD by 0.655 (magnitude images)")
    g.add_argument("--reason", metavar="TEXT", help="why (required when the series is flagged, e.g. 'motion')")
    add_json(g, "the logged record")
    g.set_defaults(func=_cmd_quality_grade)

    # ---- training sessions
    s = add_command(sub, "training-create", "define a training session from reference cases (instructor)",
                    description="Define a training session: at least 5 reference cases (CSV columns case_id, "
                    "patient_id, sequence, image, reference, optional content and site; paths relative to "
                    "the CSV). Each reference is checked against its image's grid and scored once for "
                    "radiomics features (a case that cannot be scored is refused, by name), then copied into "
                    "the session in its own format. Pass: every case submitted and mean Dice >= --dice; "
                    "optionally every case's Dice >= --min-case-dice, every case's median relative feature "
                    "error <= --feature-error, median feature ICC >= --icc (see docs/annotation_qc.md for "
                    "why the ICC is not a default). A session is never overwritten: choose a new folder.")
    s.add_argument("--folder", "--out", dest="folder", required=True, metavar="DIR",
                   help="new session folder (created; alias --out)")
    s.add_argument("--name", required=True, help="session name shown in reports")
    s.add_argument("--cases", required=True, metavar="CSV", help="reference cases table")
    s.add_argument("--dice", type=float, default=None, metavar="X", help="pass threshold for the mean Dice (0.80)")
    s.add_argument("--min-case-dice", type=float, default=None, metavar="X",
                   help="also require this Dice on every case (off by default; e.g. 0.70)")
    s.add_argument("--feature-error", type=float, default=None, metavar="X",
                   help="also require every case's median relative radiomics-feature error <= X (off by default; "
                   "e.g. 0.10)")
    s.add_argument("--icc", type=float, default=None, metavar="X",
                   help="also require the median feature ICC(A,1) over the cases >= X (off by default; it does not "
                   "separate trainees on heterogeneous cases)")
    add_json(s, "the session created (folder, cases, criteria, warnings)")
    s.set_defaults(func=_cmd_training_create)

    trainee_help = ("trainee id: letters, digits and '-' (it becomes the folder trainees/<id>/ of the session and "
                    "the name in reports)")
    s = add_command(sub, "training-submit", "submit a trainee's mask for one case",
                    description="Save a trainee's mask for one case of a training session (on the case "
                    "image's grid; stored with the image's exact grid). A submission is never overwritten: of "
                    "two submissions at the same moment exactly one is kept; withdraw a wrong one first.")
    s.add_argument("--session", required=True, metavar="DIR", help="training session folder")
    s.add_argument("--trainee", required=True, metavar="ID", help=trainee_help)
    s.add_argument("--case", required=True, metavar="CASE_ID", help="case id as listed by training-list")
    s.add_argument("--mask", required=True, metavar="MASK", help="mask on the case image's grid (NIfTI/NRRD)")
    add_json(s, "the stored submission (trainee, case, mask path)")
    s.set_defaults(func=_cmd_training_submit)

    s = add_command(sub, "training-withdraw", "withdraw a wrong submission (logged; the case can be submitted again)",
                    description="Withdraw a trainee's submission of one case: the withdrawal is logged with its "
                    "reason, who and when; the file is kept under trainees/<id>/withdrawn/.")
    s.add_argument("--session", required=True, metavar="DIR", help="training session folder")
    s.add_argument("--trainee", required=True, metavar="ID", help=trainee_help)
    s.add_argument("--case", required=True, metavar="CASE_ID", help="case id of the wrong submission")
    s.add_argument("--reason", required=True, metavar="TEXT", help="why it is withdrawn (logged)")
    s.add_argument("--by", metavar="ID", help="who withdraws it (default: the trainee)")
    add_json(s, "the log record")
    s.set_defaults(func=_cmd_training_withdraw)

    s = add_command(sub, "training-verify", "check a training session for tampering and report every problem",
                    description=_verify_description("training session", "session.json (criteria, cases, reference and "
                                                    "image checksums)", "source image, reference mask and active "
                                                    "submission"))
    s.add_argument("--session", required=True, metavar="DIR", help="training session folder")
    s.add_argument("--quick", action="store_true", help="skip the SHA-256 of the files (logs and documents only)")
    add_json(s, "the report (ok, problems, notices, info)")
    s.set_defaults(func=_cmd_training_verify)

    s = add_command(sub, "training-list", "trainees, cases and what each trainee has submitted",
                    description="The session's cases (never the references), its trainees with their "
                    "submissions per case, and the withdrawals.")
    s.add_argument("--session", required=True, metavar="DIR", help="training session folder")
    add_json(s, "the listing (cases, trainees -> case -> submission or null, withdrawn)")
    s.set_defaults(func=_cmd_training_list)

    s = add_command(sub, "training-report", "score a trainee against a training session's reference cases",
                    description="Per-case scores (Dice, HD95, over-/under-segmentation), lesion-wise feedback "
                    "(matched/missed/extra lesions with size, RAS position and slices; first/last-slice "
                    "coverage), practice hints, overlays zoomed to the lesion and pass/fail; writes report.json, "
                    "report.html and two overlay PNGs per case. Exit status 1 when the trainee has NOT "
                    "PASSED. An unknown trainee is refused with the list of trainees. An earlier report is "
                    "kept unless --overwrite.")
    s.add_argument("--session", required=True, metavar="DIR", help="training session folder")
    s.add_argument("--trainee", required=True, metavar="ID", help="trainee id to score (see training-list)")
    s.add_argument("--out", metavar="DIR", help="report folder (default <session>/reports/<trainee>)")
    add_overwrite(s)
    add_json(s, "the whole report")
    s.set_defaults(func=_cmd_training_report)

    s = add_command(sub, "training-summary", "all trainees of a session: trainee x case table, pass/fail, hardest cases",
                    description="A trainee x case table (Dice, HD95, lesions missed), each trainee's verdict and "
                    "the hardest cases (lowest mean Dice), as summary.html, summary.csv and summary.json. An "
                    "earlier summary is kept unless --overwrite.")
    s.add_argument("--session", required=True, metavar="DIR", help="training session folder")
    s.add_argument("--out", metavar="DIR", help="summary folder (default <session>/summary)")
    add_overwrite(s)
    add_json(s, "the summary")
    s.set_defaults(func=_cmd_training_summary)

    # ---- reader studies
    s = add_command(sub, "study", "reader studies: init, reader add, assign, submit, status, verify",
                    description="Reader studies with blinding (a reader sees only their own work; labels never), "
                    "work lists in a per-reader order, repeat reads after a washout, a lock per study and a "
                    "hash-chained reading log. Masks are saved one-to-one with the source image as "
                    "readers/<reader>/<session>/<patient>_<sequence>_<content>.nii.gz.")
    s.set_defaults(func=_need_action("study", "init, reader add, assign, submit, status, verify"))
    ssub = s.add_subparsers(dest="action", metavar="ACTION", parser_class=Parser)
    a = add_command(ssub, "init", "create a study from a case table",
                    description="Create a reader study: cases.csv with one row per case and sequence (case_id, "
                    "patient_id, sequence, image; optional label, kept apart and never shown to readers).")
    a.add_argument("--folder", "--out", dest="folder", required=True, metavar="DIR",
                   help="new study folder (alias --out)")
    a.add_argument("--name", required=True, help="study name")
    a.add_argument("--cases", required=True, metavar="CSV", help="case table (paths relative to the CSV)")
    a.add_argument("--washout-days", type=float, default=30.0, metavar="DAYS",
                   help="days between a reader's first read of a case and the repeat read (30: the method's "
                   "'after one month'; 0 switches the rule off)")
    add_json(a, "the study created")
    a.set_defaults(func=_cmd_study_init)

    a = add_command(ssub, "reader", "manage the study's readers ('reader add')")
    a.set_defaults(func=_need_action("study reader", "add"))
    rsub = a.add_subparsers(dest="reader_action", metavar="ACTION", parser_class=Parser)
    r = add_command(rsub, "add", "register a reader with a role",
                    description="Register a reader: annotators draw; reviewers and arbitrators also see the "
                    "annotators' submitted masks (their task is to compare them).")
    r.add_argument("--study", required=True, metavar="DIR", help="reader study folder")
    r.add_argument("--reader", required=True, metavar="ID", help="reader id (letters, digits, '-'; it becomes "
                   "the folder readers/<id>/)")
    r.add_argument("--role", default="annotator", choices=("annotator", "reviewer", "arbitrator"),
                   help="the reader's role (annotator)")
    r.add_argument("--by", metavar="ID", help="who registers the reader (logged)")
    add_json(r, "the registration")
    r.set_defaults(func=_cmd_study_reader_add)

    a = add_command(ssub, "assign", "give a reader a work list for a session",
                    description="Assign cases to a reader for a session. The order is shuffled per reader and "
                    "session (so a repeat read does not follow the first read's order) unless --order given. "
                    "A reader with a work list sees and may read only those cases.")
    a.add_argument("--study", required=True, metavar="DIR", help="reader study folder")
    a.add_argument("--reader", required=True, metavar="ID", help="registered reader")
    a.add_argument("--cases", nargs="+", metavar="CASE_ID", help="cases to assign")
    a.add_argument("--all", action="store_true", help="assign every case of the study")
    a.add_argument("--session", default="first", metavar="NAME", help="session ('first'; 'repeat' for repeat reads)")
    a.add_argument("--order", choices=("shuffled", "given"), default="shuffled",
                   help="shuffled (default) or the given order")
    a.add_argument("--seed", type=int, metavar="N", help="seed of the shuffle (default: from study, reader, session)")
    a.add_argument("--by", metavar="ID", help="who assigns (logged; default 'coordinator')")
    add_json(a, "the reader's work list")
    a.set_defaults(func=_cmd_study_assign)

    a = add_command(ssub, "submit", "save a reader's mask (final, or a draft)",
                    description="Save a reader's mask for one case, sequence and content, on the source image's "
                    "grid. A final mask is never overwritten (read the case again in another session); a "
                    "draft may be replaced by the same reader. Repeat reads (any session other than 'first') "
                    "wait for the study's washout after the first read.")
    a.add_argument("--study", required=True, metavar="DIR", help="reader study folder")
    a.add_argument("--reader", required=True, metavar="ID", help="registered reader")
    a.add_argument("--case", required=True, metavar="CASE_ID", help="case id")
    a.add_argument("--sequence", required=True, metavar="SEQ", help="sequence the mask was drawn on")
    a.add_argument("--content", required=True, metavar="NAME", help="what the mask holds (e.g. ROI, whole-tumour)")
    a.add_argument("--mask", required=True, metavar="MASK", help="the mask file (NIfTI/NRRD) on the source grid")
    a.add_argument("--session", default="first", metavar="NAME", help="session ('first'; 'repeat' for repeat reads)")
    a.add_argument("--draft", action="store_true", help="save as a draft (replaceable) instead of final")
    a.add_argument("--notes", metavar="TEXT", help="the reader's notes (logged)")
    add_json(a, "the saved mask")
    a.set_defaults(func=_cmd_study_submit)

    a = add_command(ssub, "status", "a reader's blinded work list, or every reader's progress (--coordinator)",
                    description="With --reader: that reader's work list (case, patient, own status per "
                    "sequence; never labels or other readers' work). With --coordinator: per reader and session "
                    "the cases assigned, submitted and in progress (no labels, no masks).")
    a.add_argument("--study", required=True, metavar="DIR", help="reader study folder")
    a.add_argument("--reader", metavar="ID", help="show this reader's blinded work list")
    a.add_argument("--session", default="first", metavar="NAME", help="session of the work list ('first')")
    a.add_argument("--coordinator", action="store_true", help="show every reader's progress (unblinded counts)")
    add_json(a, "the work list or progress")
    a.set_defaults(func=_cmd_study_status)

    a = add_command(ssub, "verify", "check a reader study for tampering and report every problem",
                    description=_verify_description("reader study", "study.json and labels.json (study.json's readers "
                                                    "and cases checked against their registrations in the log)",
                                                    "saved mask and source image"))
    a.add_argument("--study", required=True, metavar="DIR", help="reader study folder")
    a.add_argument("--quick", action="store_true", help="skip the SHA-256 of the files (logs and documents only)")
    add_json(a, "the report (ok, problems, notices, info)")
    a.set_defaults(func=_cmd_study_verify)
    from .loop.cli import add_loop_commands  # the pre-annotation loop (docs/active_learning.md)

    add_loop_commands(sub)
    return p


def _main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_OK
    return int(args.func(args) or 0)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``annotation-qc`` console script."""
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
