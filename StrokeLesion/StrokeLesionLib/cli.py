"""``stroke-lesion``: the command line of the acute-stroke annotation workflow.

Every subcommand is a thin wrapper over the library. The parser follows the extension's one
CLI convention (ClinicalMRICommonLib.cli): ``--version``, ``--json`` wherever a command prints
data, ``--overwrite`` wherever it writes a file the user names, help on every option, exit
status 0 done / 1 done with a negative verdict (NOT ACCEPTED, validator errors) / 2 bad
input (one line ``error: ...`` on stderr, ClinicalMRICommonLib.errors.run_cli).
"""

from __future__ import annotations

import argparse
import getpass
import math
import sys

from ClinicalMRICommonLib import cli as common_cli
from ClinicalMRICommonLib.cli import EXIT_NEGATIVE, EXIT_OK, add_command, add_json, add_overwrite, emit
from ClinicalMRICommonLib.errors import UserError, run_cli
from ClinicalMRICommonLib.files import check_output_path, write_image_atomic


def _float(text: str) -> float:
    """A finite number (NaN and infinity are refused: they would be recorded as numbers)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return v


def _who(args) -> str:
    """Who performs a coordinator step: --by (checked like every id), else the login name."""
    from .workflow import check_who
    who = getattr(args, "by", None)
    if who is not None:
        return check_who(who, "--by")
    try:
        return check_who(getpass.getuser(), "the login name")
    except Exception:  # noqa: BLE001 - no (usable) user name in some containers
        return "unknown"


# ---------------------------------------------------------------------------------------
# candidate / metrics


def cmd_candidate(args) -> int:
    from .candidate import CandidateParams, candidate_mask, refine_on_dwi
    from .diffusion import check_threshold_mm2s, eadc, load_diffusion, parse_adc_units, read_b_value

    # check everything cheap before reading images
    units = parse_adc_units(args.adc_units)
    params = CandidateParams(adc_threshold_mm2s=args.threshold, dwi_rule=args.dwi_rule, dwi_k=args.dwi_k,
                             dwi_percentile=args.dwi_percentile, min_size_ml=args.min_size_ml,
                             shine_through_adc_mm2s=args.shine_through_adc).check()
    check_threshold_mm2s(args.refine_adc_limit)
    loop_manifest = None
    if args.loop_out and not args.loop_model:
        raise UserError("--loop-out needs --loop-model DIR (the trained loop model whose candidate it holds)")
    if args.loop_model:
        from ClinicalMRICommonLib.segmentation_model import read_manifest
        loop_manifest = read_manifest(args.loop_model)      # the cheap check, before any image is read
        seqs = [str(s).lower() for s in loop_manifest["sequences"]]
        if sorted(seqs) != ["adc", "dwi"]:
            raise UserError(f"loop model {args.loop_model} was trained on the sequence(s) "
                            f"{', '.join(loop_manifest['sequences'])}; stroke-lesion candidate needs a model trained "
                            "on dwi and adc (an 'annotation-qc loop' with image_dwi,image_adc)")
    names = ("out", "refined_out", "shine_through_out", "eadc_out", "brain_out", "loop_out")
    given = {n: getattr(args, n) for n in names if getattr(args, n)}
    checked = {n: check_output_path(p, overwrite=args.overwrite, what="--" + n.replace("_", "-"),
                                    inputs=[args.dwi, args.adc], others=[q for m, q in given.items() if m != n])
               for n, p in given.items()}
    out = checked.pop("out")
    extra = checked
    case = load_diffusion(args.dwi, args.adc, adc_units=units)
    res = candidate_mask(case, params)
    refined = None
    if "refined_out" in extra:
        refined = refine_on_dwi(case, res, mode=args.refine_mode, adc_limit_mm2s=args.refine_adc_limit)
        write_image_atomic(refined.mask, extra["refined_out"])
    b = src = None
    if "eadc_out" in extra or args.b_value is not None:
        b, src = read_b_value(args.dwi, args.b_value)
    write_image_atomic(res.mask, out)
    if "shine_through_out" in extra:
        write_image_atomic(res.shine_through, extra["shine_through_out"])
    if "brain_out" in extra:
        write_image_atomic(case.brain, extra["brain_out"])
    if "eadc_out" in extra:
        write_image_atomic(eadc(case.adc_mm2s, b), extra["eadc_out"])
    summary = res.summary(case)
    summary["out"] = str(out)
    if b is not None:
        summary["b_value"] = b
        summary["b_value_source"] = src
    summary.update({k: str(v) for k, v in extra.items()})
    summary["adc_pair_checks"] = case.pair_check.get("checks", [])
    summary["warnings"] = list(case.warnings)
    loop = None
    if loop_manifest is not None:
        loop = _loop_candidate(args, case, res.mask, extra.get("loop_out"))
        summary["loop_candidate"] = loop
        summary["adc_threshold_candidate"] = {"volume_ml": summary["volume_ml"], "n_lesions": summary["n_lesions"],
                                              "out": str(out)}
    u = case.units
    text = (f"ADC units: {u.units} ({'detected' if u.detected else 'stated'}; brain median {u.brain_median_raw:.4g})\n"
            f"step 1, candidate: ADC < {params.adc_threshold_mm2s * 1e6:g} x 10^-6 mm2/s AND {summary['dwi_rule']} "
            f"(DWI > {res.dwi_threshold:.4g}): {summary['volume_ml']:.3f} mL, {summary['n_lesions']} lesion(s) "
            f"({summary['islands_removed']} island(s) < {params.min_size_ml:g} mL removed)\n"
            f"T2 shine-through (DWI high, ADC not low; not lesion): {summary['shine_through_volume_ml']:.3f} mL "
            f"in {summary['shine_through_n_regions']} region(s)\n"
            f"wrote {out}")
    if refined is not None:
        summary["refined"] = {**refined.summary(), "out": str(extra["refined_out"])}
        r = summary["refined"]
        text += (f"\nstep 2, refined on DWI ({r['mode']}): seeds of step 1 grown into DWI > {r['dwi_threshold']:.4g} "
                 f"with ADC < {r['adc_limit_mm2s'] * 1e6:g} x 10^-6 mm2/s: {r['volume_ml']:.3f} mL "
                 f"(+{r['added_ml']:.3f} mL), {r['n_lesions']} lesion(s)\nwrote {r['out']}")
    if loop is not None:
        text += "\n" + _side_by_side(summary, loop)
    text += "".join(f"\nwarning: {w}" for w in case.warnings)
    if loop is not None:
        text += "".join(f"\nwarning: loop model: {w}" for w in loop["warnings"])
    emit(summary, args.json, text)
    return 0


def _loop_candidate(args, case, adc_mask, loop_out) -> dict:
    """The trained loop model's candidate on the same DWI/ADC pair (ADC in mm2/s, as the
    threshold candidate sees it), its agreement with the ADC-threshold candidate, written to
    --loop-out when given."""
    import numpy as np
    import SimpleITK as sitk
    from ClinicalMRICommonLib.segmentation_model import propose

    res = propose(args.loop_model, {"dwi": case.dwi, "adc": case.adc_mm2s}, device=args.device)
    mask = sitk.Cast(res["mask"] > 0, sitk.sitkUInt8)
    mask.CopyInformation(case.dwi)
    loop_arr = sitk.GetArrayViewFromImage(mask) > 0
    adc_arr = sitk.GetArrayViewFromImage(adc_mask) > 0
    voxel_ml = float(np.prod(case.dwi.GetSpacing())) / 1000.0
    cc = sitk.ConnectedComponent(mask, True)
    n_lesions = int(sitk.GetArrayViewFromImage(cc).max()) if loop_arr.any() else 0
    both = int((loop_arr & adc_arr).sum())
    total = int(loop_arr.sum()) + int(adc_arr.sum())
    out = {"model": str(args.loop_model), "round": res["round"], "score": float(res["score"]),
           "reason": res["reason"], "method": res["method"], "volume_ml": float(loop_arr.sum()) * voxel_ml,
           "n_lesions": n_lesions, "dice_vs_adc_threshold": (2.0 * both / total) if total else 1.0,
           "overlap_ml": both * voxel_ml, "warnings": list(res["warnings"])}
    if loop_out is not None:
        write_image_atomic(mask, loop_out)
        out["out"] = str(loop_out)
    return out


def _side_by_side(summary: dict, loop: dict) -> str:
    rows = [("", "ADC threshold", "loop model"),
            ("volume (mL)", f"{summary['volume_ml']:.3f}", f"{loop['volume_ml']:.3f}"),
            ("lesions", str(summary["n_lesions"]), str(loop["n_lesions"])),
            ("file", str(summary["out"]), loop.get("out", "(not written; --loop-out)"))]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = [f"candidates side by side (loop model {loop['model']}, round {loop['round']}):"]
    lines += [f"  {a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
    lines.append(f"  agreement: Dice {loop['dice_vs_adc_threshold']:.3f}, overlap {loop['overlap_ml']:.3f} mL; "
                 f"loop model uncertainty {loop['score']:.3f} ({loop['reason']})")
    return "\n".join(lines)


def cmd_metrics(args) -> int:
    from .metrics import lesion_metrics_files

    m = lesion_metrics_files(args.reference, args.test, resample_pred=args.resample_test)
    emit(m, args.json, "\n".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in m.items()))
    return 0


# ---------------------------------------------------------------------------------------
# workflow


def _point(text: str) -> tuple[float, float, float]:
    try:
        v = tuple(float(x) for x in text.replace(" ", "").split(","))
    except ValueError:
        v = ()
    if len(v) != 3:
        raise argparse.ArgumentTypeError(f"a point is three numbers x,y,z in mm, got {text!r}")
    return v


def _lesion_choice(text: str) -> list[tuple[int, str]]:
    """N=CHOICE, or several lesions with one choice: 3,5,9=B or 4-7=none."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected N=CHOICE (e.g. 3=union, 3,5=B or 4-7=none), got {text!r}")
    ids, c = text.split("=", 1)
    out = []
    try:
        for part in ids.replace(" ", "").split(","):
            if "-" in part.strip("-"):
                lo, hi = (int(v) for v in part.split("-", 1))
                if hi < lo:
                    raise ValueError
                out += [(n, c.strip()) for n in range(lo, hi + 1)]
            else:
                out.append((int(part), c.strip()))
    except ValueError:
        raise argparse.ArgumentTypeError(f"lesion numbers must be integers (N, N,M or N-M), got {ids!r}") from None
    return out


def _study(args):
    from .workflow import Study
    return Study(args.study)


def cmd_study_init(args) -> int:
    from .workflow import Study, StudySettings, Thresholds
    settings = StudySettings(thresholds=Thresholds(min_dice=args.min_dice,
                                                   max_abs_volume_diff_ml=args.max_volume_diff_ml,
                                                   max_unmatched_lesions=args.max_unmatched_lesions),
                             agreed_consensus=args.agreed_consensus, signoff_agreed=not args.no_signoff)
    s = Study.create(args.study, by=_who(args), name=args.name or "", settings=settings)
    emit(s.meta, args.json, f"created study {s.root}")
    return 0


def cmd_reader_add(args) -> int:
    from dataclasses import asdict

    from .workflow import ROLE_REQUIREMENTS, Reader, qualification_problems
    r = Reader(args.id, args.title, args.years, args.neuro_years, name=args.name or "", training=args.training or "")
    _study(args).add_reader(r, by=_who(args), why=args.why or "")
    roles = [role for role in ROLE_REQUIREMENTS if not qualification_problems(r, role)]
    emit({**asdict(r), "qualifies_as": roles}, args.json,
          f"recorded reader {r.id}; qualifies as: {', '.join(roles) or 'no role yet'}")
    return 0


def cmd_reader_list(args) -> int:
    from dataclasses import asdict

    from .workflow import ROLE_REQUIREMENTS, qualification_problems
    rows = []
    for r in _study(args).readers().values():
        rows.append({**asdict(r), "qualifies_as": [x for x in ROLE_REQUIREMENTS if not qualification_problems(r, x)]})
    emit(rows, args.json, "\n".join(f"{r['id']}: {r['title']}, {r['years']:g} y, {r['neuro_years']:g} y neuro -> "
                                     f"{', '.join(r['qualifies_as']) or '-'}" for r in rows) or "no readers")
    return 0


def cmd_case_init(args) -> int:
    s = _study(args)
    others = {k: getattr(args, k) for k in ("flair", "t1w", "t2w", "b0") if getattr(args, k)}
    by = _who(args)
    st = s.init_case(args.case, dwi=args.dwi, adc=args.adc, others=others, subject=args.subject,
                     session=args.session, by=by, why=args.why or "", assignments=dict(_slot_assignments(args)),
                     adc_units=args.adc_units)
    v = s.case_view(args.case)
    warnings = st.info["images"]["adc"].get("pair_check", {}).get("warnings", [])
    emit({**v, "warnings": warnings}, args.json, f"case {args.case}: {v['status']} ({v['next']})"
         + "".join(f"\nwarning: {w}" for w in warnings))
    return 0


def _slot(text: str) -> str:
    """A reader slot in either spelling: annotator-a / annotatorA, annotator-b / annotatorB,
    reviewer, arbitrator (case init's options and case assign's --slot use the same names)."""
    key = text.strip().replace("_", "-").lower()
    names = {"annotator-a": "annotatorA", "annotatora": "annotatorA", "annotator-b": "annotatorB",
             "annotatorb": "annotatorB", "reviewer": "reviewer", "arbitrator": "arbitrator"}
    if key not in names:
        raise argparse.ArgumentTypeError(f"unknown slot {text!r}; use annotator-a, annotator-b, reviewer or arbitrator")
    return names[key]


SLOT_OPTIONS = (("annotator_a", "annotatorA"), ("annotator_b", "annotatorB"), ("reviewer", "reviewer"),
                ("arbitrator", "arbitrator"))


def _slot_assignments(args) -> list[tuple[str, str]]:
    return [(slot, getattr(args, dest)) for dest, slot in SLOT_OPTIONS if getattr(args, dest, None)]


def cmd_case_assign(args) -> int:
    s = _study(args)
    pairs = _slot_assignments(args)
    if (args.slot is None) != (args.reader is None):
        raise UserError("give --slot and --reader together (or --annotator-a/--annotator-b/--reviewer/--arbitrator "
                        "READER)")
    if args.slot:
        pairs.insert(0, (args.slot, args.reader))
    if not pairs:
        raise UserError("nothing to assign: give --annotator-a/--annotator-b/--reviewer/--arbitrator READER "
                        "(or --slot SLOT --reader READER)")
    for slot, reader in pairs:
        s.assign(args.case, slot, reader, by=_who(args), why=args.why or "")
    emit(s.case_view(args.case), args.json,
         "\n".join(f"case {args.case}: {slot} = {reader}" for slot, reader in pairs))
    return 0


def cmd_case_import(args) -> int:
    from .intake import import_cases
    rep = import_cases(_study(args), args.source, by=_who(args), why=args.why or "",
                       assignments=dict(_slot_assignments(args)), adc_units=args.adc_units,
                       progress=lambda line: print(line, file=sys.stderr, flush=True))
    lines = [f"imported {len(rep['imported'])}, skipped {len(rep['skipped'])} (already in the study), refused "
             f"{len(rep['refused'])} case(s) from {rep['source']}"]
    lines += [f"  refused {r['case'] or '-'} ({r['source']}): {r['reason']}" for r in rep["refused"]]
    if rep["refused"]:
        lines.append("  fix the refused cases and run the same command again (imported cases are skipped)")
    emit(rep, args.json, "\n".join(lines))
    return EXIT_NEGATIVE if rep["refused"] else EXIT_OK


def cmd_annotate(args) -> int:
    rec = _study(args).annotate(args.case, args.reader, args.mask, no_lesion=args.no_lesion,
                                time_spent_s=args.minutes * 60 if args.minutes is not None else None,
                                why=args.why or "", allow_large=args.allow_large_lesion)
    w = rec["what"]
    frac = f", {100 * w['brain_fraction']:.2f}% of the brain" if w.get("brain_fraction") is not None else ""
    emit(w, args.json, f"saved {w['slot']} version {w['version']} ({w['volume_ml']:.3f} mL{frac}): {w['file']}"
         + "".join(f"\nwarning: {x}" for x in w.get("warnings", [])))
    return 0


def cmd_note(args) -> int:
    point = args.point_lps
    if args.point_ras is not None:
        x, y, z = args.point_ras
        point = (-x, -y, z)
    rec = _study(args).note(args.case, args.reader, args.text, lesion=args.lesion, point_lps=point)
    w = rec["what"]
    where = f"lesion {w['lesion']}" if w["lesion"] else (f"component {w['component']} of {w['resolved_on']}"
                                                         if w["component"] else "no lesion at that point")
    emit(w, args.json, f"note recorded ({where})")
    return 0


def _lesion_line(les: dict) -> str:
    """One lesion of a comparison: volume, who drew it, RAS centroid (as Slicer shows it, and
    as 'note --point-ras' takes it) and the DWI slices it spans (index k, 0-based)."""
    ras = les.get("centroid_ras") or ([-les["centroid_lps"][0], -les["centroid_lps"][1], les["centroid_lps"][2]]
                                      if les.get("centroid_lps") else None)
    where = f", RAS ({ras[0]:.1f}, {ras[1]:.1f}, {ras[2]:.1f}) mm" if ras else ""
    if les.get("slices"):
        k0, k1 = les["slices"]
        where += f", slice{'s' if k1 > k0 else ''} k={k0}" + (f"-{k1}" if k1 > k0 else "")
    return f"  lesion {les['id']}: {les['volume_ml']:.3f} mL, {les['drawn_by']}{where}"


def cmd_compare(args) -> int:
    rec = _study(args).compare(args.case, by=_who(args))
    w = rec["what"]
    ag, det = w["agreement"], w["detection_B_vs_A"]
    text = (f"Dice {ag['dice']:.3f}, volume A {ag['volume_ref_ml']:.3f} mL, B {ag['volume_test_ml']:.3f} mL, "
            f"lesions A {det['n_reference']} / B {det['n_test']} (matched {det['matched']}, A only {det['missed']}, "
            f"B only {det['extra']})\n"
            + ("-> review: " + "; ".join(w["reasons"]) if w["needs_review"] else "-> within thresholds")
            + "\n" + "\n".join(_lesion_line(les) for les in w["lesions"]))
    emit(w, args.json, text)
    return 0


def _choices_from_csv(path: str) -> list[tuple[int, str, str]]:
    """(lesion, choice, where) rows of a lesion-choice CSV: columns 'lesion' and 'choice'
    (other columns, e.g. a note, are ignored)."""
    from ClinicalMRICommonLib.tables import read_csv_table
    df = read_csv_table(path, "lesion choices")
    cols = {str(c).strip().lower(): c for c in df.columns}
    if "lesion" not in cols or "choice" not in cols:
        raise UserError(f"lesion choices file {path} needs the columns 'lesion' and 'choice' (found: "
                        f"{', '.join(map(str, df.columns))})")
    rows = []
    for i, (n, c) in enumerate(zip(df[cols["lesion"]], df[cols["choice"]]), start=2):
        try:
            nn = int(str(n).strip())
        except ValueError:
            raise UserError(f"lesion choices file {path} line {i}: lesion {n!r} is not a number") from None
        if str(c).strip() in ("", "nan"):
            raise UserError(f"lesion choices file {path} line {i}: no choice for lesion {nn}")
        rows.append((nn, str(c).strip(), f"{path} line {i}"))
    return rows


def _choices(args) -> dict:
    """{lesion: choice} from --choices (a CSV) and --lesion; a lesion given twice is refused."""
    out, where = {}, {}
    rows = list(_choices_from_csv(args.choices)) if getattr(args, "choices", None) else []
    rows += [(n, c, "--lesion") for group in args.lesion or [] for n, c in group]
    for n, c, src in rows:
        if n in out:
            raise UserError(f"lesion {n} given twice ({where[n]} and {src})")
        out[n], where[n] = c, src
    return out


def cmd_review(args) -> int:
    rec = _study(args).review(args.case, args.reader, choices=_choices(args), default=args.all, edited=args.edited,
                              accept_proposed=args.accept_proposed, dispute=args.dispute,
                              include_new=not args.no_new, why=args.why)
    w = rec["what"]
    emit(w, args.json, f"review {w['outcome']}" + (f"; mask {w['file']}" if w.get("file") else ""))
    return 0


def cmd_arbitrate(args) -> int:
    rec = _study(args).arbitrate(args.case, args.reader, choices=_choices(args), default=args.all,
                                 edited=args.edited, include_new=not args.no_new, why=args.why)
    emit(rec["what"], args.json, f"final decision recorded; mask {rec['what']['file']}")
    return 0


def cmd_quality(args) -> int:
    snr_nm = args.snr_not_measurable or args.not_measurable
    cnr_nm = args.cnr_not_measurable or args.not_measurable
    rec = _study(args).record_quality(args.case, args.series, reader_id=args.reader, likert=args.likert,
                                      snr=args.snr, cnr=args.cnr, reason=args.reason or "", roi_labelmap=args.roi,
                                      min_snr=args.min_snr, min_cnr=args.min_cnr, snr_not_measurable=snr_nm,
                                      cnr_not_measurable=cnr_nm)
    w = rec["what"]

    def number(k):
        if w[k] is not None:
            return f", {k.upper()} {w[k]:.1f} ({w[k + '_source']})"
        if (w.get("not_measurable") or {}).get(k):
            return f", {k.upper()} not measurable ({w['not_measurable'][k]})"
        return ""
    emit(w, args.json, f"{args.series}: Likert {w['likert']}{number('snr')}{number('cnr')} ("
         + ("usable" if w["usable"] else "EXCLUDED: " + "; ".join(w["flag_reasons"])) + ")")
    return 0


# ---------------------------------------------------------------------------------------
# BIDS, de-identification, acceptance


def cmd_export_bids(args) -> int:
    from .bids import ExportOptions, export_study, run_validator
    opts = ExportOptions(name=args.name, authors=args.author or [], license=args.license,
                         mask_naming=args.mask_naming, dwi_suffix=args.dwi_suffix,
                         keep_patient_characteristics=args.keep_patient_characteristics,
                         include_audit=not args.no_audit, include_eadc=not args.no_eadc,
                         cases=tuple(args.case) if args.case else None)
    rep = export_study(_study(args), args.out, opts, overwrite=args.overwrite)
    if args.validate:
        v = run_validator(args.out)
        rep["validator"] = {"n_errors": v["n_errors"], "errors": sorted(
            {i["code"] for i in v["errors"]} | {i["code"] for d in v["derivatives"].values() for i in d["errors"]}),
            "n_warnings": v["n_warnings"], "warnings": sorted(
            {i["code"] for i in v["warnings"]} | {i["code"] for d in v["derivatives"].values() for i in d["warnings"]})}
    rm = rep["removed"]
    text = (f"wrote {rep['files']} files to {rep['output']} ({len(rep['cases'])} case(s))\n"
            f"removed: {len(rm['sidecar_keys_deidentification'])} sidecar key(s) by the de-identification profile"
            f" ({', '.join(rm['sidecar_keys_deidentification']) or 'none'}), "
            f"{len(rm['sidecar_keys_not_in_bids_schema'])} not defined by the BIDS schema "
            f"({', '.join(rm['sidecar_keys_not_in_bids_schema']) or 'none'}), {rm['nifti_extensions']} NIfTI header "
            f"extension(s), {rm['nifti_text_fields']} NIfTI text field(s)") + "".join(
        f"\nwarning: {w}" for w in rep["warnings"])
    if "validator" in rep:
        vr = rep["validator"]
        text += (f"\nBIDS validator: {vr['n_errors']} error(s) {' '.join(vr['errors'])}".rstrip()
                 + f", {vr['n_warnings']} warning(s)" + (f" ({' '.join(vr['warnings'])}; details: stroke-lesion "
                                                         f"validate-bids {args.out})" if vr["n_warnings"] else ""))
    emit(rep, args.json, text)
    return EXIT_NEGATIVE if rep.get("validator", {}).get("n_errors") else EXIT_OK


def cmd_validate_bids(args) -> int:
    from pathlib import Path as _P

    from .bids import check_derivative_description, run_validator
    v = run_validator(args.dataset)
    deriv_problems = {}
    dd = _P(args.dataset) / "derivatives"
    if dd.is_dir():
        for d in sorted(p for p in dd.iterdir() if (p / "dataset_description.json").exists()):
            deriv_problems[d.name] = check_derivative_description(d / "dataset_description.json")
    out = {"n_errors": v["n_errors"], "n_warnings": v["n_warnings"], "errors": v["errors"], "warnings": v["warnings"],
           "derivatives": v["derivatives"], "derivative_descriptions": deriv_problems}
    bad = v["n_errors"] or any(deriv_problems.values())
    lines = [f"BIDS validator: {v['n_errors']} error(s), {len(v['warnings'])} warning(s) in the raw dataset"
             + (f", {v['n_warnings'] - len(v['warnings'])} in derivatives" if v["n_warnings"] > len(v["warnings"])
                else "")]
    lines += [f"  error {i['code']}: {i.get('location', '')}" for i in v["errors"]]
    for name, dv in v["derivatives"].items():
        lines += [f"  {name} error {i['code']}: {i.get('location', '')}" for i in dv["errors"]]
    codes: dict[str, int] = {}
    for i in v["warnings"] + [i for dv in v["derivatives"].values() for i in dv["warnings"]]:
        codes[i["code"]] = codes.get(i["code"], 0) + 1
    lines += [f"  warning {code} x{n}" for code, n in sorted(codes.items())]
    for name, probs in deriv_problems.items():
        lines.append(f"derivatives/{name}/dataset_description.json: " + ("; ".join(probs) if probs else "ok"))
    emit(out, args.json, "\n".join(lines))
    return EXIT_NEGATIVE if bad else EXIT_OK


def cmd_deid(args) -> int:
    from .deid import clean_sidecar_file, deidentify_file, deidentify_folder
    from pathlib import Path as _P
    src = _P(args.input)
    if args.kind == "sidecar" or src.is_file():
        check_output_path(args.output, overwrite=args.overwrite, what="output", inputs=[src])
    if args.kind == "sidecar":
        rep = clean_sidecar_file(src, args.output, keep_patient_characteristics=args.keep_patient_characteristics,
                                 overwrite=args.overwrite)
        text = f"removed {', '.join(rep['removed']) or 'nothing'}; non-DICOM keys kept for review: " \
               f"{', '.join(rep['kept_non_dicom']) or 'none'}"
    elif src.is_dir():
        check_output_path(args.output, overwrite=args.overwrite, what="output folder", inputs=[src], folder=True)
        rep = deidentify_folder(src, args.output, keep_patient_characteristics=args.keep_patient_characteristics,
                                overwrite=args.overwrite)
        text = f"de-identified {rep['n_files']} DICOM file(s) into {rep['output']} ({rep['method']})" + (
            f"; skipped {len(rep['skipped_not_dicom'])} non-DICOM file(s)" if rep["skipped_not_dicom"] else "")
    else:
        rep = deidentify_file(src, args.output, keep_patient_characteristics=args.keep_patient_characteristics,
                              overwrite=args.overwrite)
        text = f"wrote {rep['output']} ({rep['method']})"
    emit(rep, args.json, text)
    return 0


def cmd_accept(args) -> int:
    from pathlib import Path as _P

    from .acceptance import check_dataset, write_report
    rep = check_dataset(args.dataset, run_official_validator=args.validate)
    ds = _P(args.dataset).resolve()
    out_dir = _P(args.report_dir) if args.report_dir else ds.with_name(ds.name + "-acceptance")
    jp, hp = write_report(rep, out_dir, overwrite=args.overwrite)
    s = rep["summary"]
    lines = [f"{'ACCEPTED' if rep['accepted'] else 'NOT ACCEPTED'}: {s['sessions_passed']}/{s['sessions']} "
             f"session(s) pass; {s['consensus_masks']} consensus mask(s), {s['total_lesions']} lesion(s), "
             f"{s['total_consensus_volume_ml']:.3f} mL"]
    for c in rep["dataset_checks"]:
        if not c["ok"]:
            lines.append(f"  {c['severity']}: {c['message']}")
    for sess in rep["sessions"]:
        for c in sess["checks"]:
            if not c["ok"] and c["severity"] == "error":
                lines.append(f"  sub-{sess['subject']} ses-{sess['session']}: {c['message']}")
    lines.append(f"report: {hp} and {jp.name}")
    emit({**rep, "report_html": str(hp), "report_json": str(jp)}, args.json, "\n".join(lines))
    return EXIT_OK if rep["accepted"] else EXIT_NEGATIVE


def _missing_lines(missing: list[dict], indent: str = "  ") -> list[str]:
    if not missing:
        return [f"{indent}ready for acceptance"]
    out = [f"{indent}missing for acceptance ({len(missing)}):"]
    for m in missing:
        how = m["command"] or m["fix"]
        extra = f" ({m['fix']})" if m["command"] and m["fix"] else ""
        out.append(f"{indent}- {m['what']}: {how}{extra}")
    return out


def cmd_status(args) -> int:
    from .preflight import missing_for_acceptance
    s = _study(args)
    if args.reader and args.coordinator:
        raise UserError("--coordinator (the unblinded view of every reader's work) cannot be combined with --reader "
                        "(a reader's blinded view); give one of them")
    if args.case:
        v = s.case_view(args.case, viewer=args.reader, coordinator=args.coordinator)
        if args.reader and args.reader not in v["assignments"].values():
            raise UserError(f"reader {args.reader} is not assigned to case {args.case}")
        lines = [f"case {v['case_id']}: {v['status']} ({v['next']})"]
        lines += [f"  {k}: {val}" for k, val in v["assignments"].items()]
        for slot, a in v["annotations"].items():
            if isinstance(a, dict):
                lines.append(f"  {slot}: submitted ({a['hidden']})")
            else:
                last = a[-1]
                lines.append(f"  {slot}: version {last['version']} ({last['volume_ml']:.3f} mL): {last['file']}")
        if v.get("consensus"):
            lines.append(f"  consensus: version {v['consensus']['version']} ({v['consensus']['volume_ml']:.3f} mL): "
                         f"{v['consensus']['file']}")
        if not args.reader:
            v["missing"] = missing_for_acceptance(s, args.case)
            v["ready_for_acceptance"] = not v["missing"]
            lines += _missing_lines(v["missing"])
        emit(v, args.json, "\n".join(lines))
    else:
        rows = s.status(viewer=args.reader, preflight=not args.reader, coordinator=args.coordinator)
        lines = []
        for r in rows:
            lines.append(f"{r['case_id']}: {r['status']} ({r['next']})")
            if "missing" in r:
                lines += _missing_lines(r["missing"])
        if rows and not args.reader:
            ready = sum(r["ready_for_acceptance"] for r in rows)
            lines.append(f"{len(rows)} case(s): {ready} ready for acceptance, {len(rows) - ready} with missing items")
        emit(rows, args.json, "\n".join(lines) or "no cases")
    return 0


def cmd_verify(args) -> int:
    from .workflow import Study
    s = Study(args.study, check=False)
    rep = s.verify_study()
    if args.case:
        unknown = sorted(set(args.case) - set(rep["cases"]))
        if unknown:
            raise UserError(f"unknown case(s) {', '.join(unknown)} in {s.root}; cases: "
                            f"{', '.join(rep['cases']) or 'none'}")
        rep["cases"] = {c: v for c, v in rep["cases"].items() if c in args.case}
        rep["ok"] = not rep["study"]["problems"] and not rep["readers"]["problems"] and not any(
            c["problems"] for c in rep["cases"].values())
    lines = []
    for name, part in [("study", rep["study"]), ("readers", rep["readers"])] + \
            [(f"case {c}", v) for c, v in rep["cases"].items()]:
        if not part["problems"] and not part["notices"]:
            lines.append(f"{name}: ok")
            continue
        lines.append(f"{name}: {len(part['problems'])} problem(s), {len(part['notices'])} notice(s)")
        lines += [f"  PROBLEM: {p}" for p in part["problems"]] + [f"  notice: {n}" for n in part["notices"]]
    n = sum(len(p["problems"]) for p in [rep["study"], rep["readers"], *rep["cases"].values()])
    lines.append(("OK: no problem found" if rep["ok"] else f"NOT OK: {n} problem(s)") + f" in {s.root} "
                 f"({len(rep['cases'])} case(s))")
    emit(rep, args.json, "\n".join(lines))
    return EXIT_OK if rep["ok"] else EXIT_NEGATIVE


# ---------------------------------------------------------------------------------------
# parser

DESCRIPTION = ("Acute ischaemic stroke lesion annotation (the Chinese expert consensus, 2025): candidate mask "
               "from DWI/ADC, ISLES'22 metrics, the two-reader workflow (annotators A and B, reviewer, "
               "arbitrator) with an audit trail, BIDS export, de-identification and dataset acceptance.")

WORKFLOW_EXAMPLE = """\
worked example (one ISLES'22 case, four qualified readers):
  stroke-lesion candidate --dwi sub-1_dwi.nii.gz --adc sub-1_adc.nii.gz --out cand.nii.gz
  stroke-lesion study init STUDY --name "acute stroke 2025"
  stroke-lesion reader add STUDY --id ann1 --title attending --years 8 --neuro-years 3
  stroke-lesion reader add STUDY --id ann2 --title attending --years 6 --neuro-years 2
  stroke-lesion reader add STUDY --id rev1 --title associate_chief --years 14 --neuro-years 9
  stroke-lesion reader add STUDY --id arb1 --title chief --years 25 --neuro-years 18
  stroke-lesion case init STUDY case1 --dwi sub-1_dwi.nii.gz --adc sub-1_adc.nii.gz \\
      --annotator-a ann1 --annotator-b ann2 --reviewer rev1 --arbitrator arb1
  stroke-lesion annotate STUDY case1 --reader ann1 --mask a.nii.gz
  stroke-lesion annotate STUDY case1 --reader ann2 --mask b.nii.gz
  stroke-lesion compare STUDY case1
  stroke-lesion review STUDY case1 --reader rev1 --all union --lesion 3=A --why "3: B drew a vessel"
  stroke-lesion quality STUDY case1 --series dwi --reader rev1 --likert 4 --snr 25 --cnr 8
  stroke-lesion status STUDY
  stroke-lesion export-bids STUDY DATASET --name "acute stroke 2025" --author "A. Reader" --validate
  stroke-lesion accept DATASET"""


def _add_by(p, *, why_help: str = "reason, recorded in the audit trail") -> None:
    p.add_argument("--by", help="who performs this step (default: the login name)")
    p.add_argument("--why", help=why_help)
    add_json(p, "the recorded step")


def _add_study_case(p) -> None:
    p.add_argument("study", help="the study folder (made by 'stroke-lesion study init')")
    p.add_argument("case", help="the case id within the study")


def _add_slot_options(p) -> None:
    for opt, alias, what in (("--annotator-a", "--annotatorA", "annotator A"),
                             ("--annotator-b", "--annotatorB", "annotator B"),
                             ("--reviewer", None, "the reviewer"), ("--arbitrator", None, "the arbitrator")):
        names = [opt] + ([alias] if alias else [])
        p.add_argument(*names, metavar="READER",
                       help=f"reader id of {what} (a reader recorded with 'reader add' who qualifies for the role)")


def build_parser() -> argparse.ArgumentParser:
    p, sub = common_cli.tool_parser("stroke-lesion", DESCRIPTION, WORKFLOW_EXAMPLE)

    c = add_command(sub, "candidate", "semi-automatic candidate mask: ADC < threshold AND DWI high AND brain")
    c.add_argument("--dwi", required=True, help="DWI (b=1000 or the acquisition's high b) NIfTI")
    c.add_argument("--adc", required=True, help="ADC map on the DWI grid")
    c.add_argument("--adc-units", default="auto",
                   help="units of the ADC map: auto (default: detected from the brain median), mm2/s, "
                        "1e-3mm2/s or 1e-6mm2/s; a stated unit is trusted")
    c.add_argument("--threshold", type=_float, default=620e-6,
                   help="ADC threshold in mm2/s (default 620e-6, the consensus' 620 x 10^-6 mm2/s)")
    c.add_argument("--b-value", type=_float, help="b-value in s/mm2 (default: from the DWI JSON sidecar)")
    c.add_argument("--min-size-ml", type=_float, default=0.01, help="remove islands smaller than this (mL; 0.01)")
    c.add_argument("--dwi-rule", choices=["mad", "percentile"], default="mad",
                   help="DWI hyperintensity: median + k*MAD_n of the brain (default) or a brain percentile")
    c.add_argument("--dwi-k", type=_float, default=3.0, help="k for --dwi-rule mad (default 3)")
    c.add_argument("--dwi-percentile", type=_float, default=99.0,
                   help="percentile for --dwi-rule percentile (default 99)")
    c.add_argument("--shine-through-adc", type=_float, default=None,
                   help="ADC (mm2/s) at or above which a DWI-bright voxel is T2 shine-through (default: --threshold)")
    c.add_argument("--out", required=True, help="output mask (NIfTI, on the DWI grid); never one of the inputs")
    c.add_argument("--refined-out",
                   help="also run the optional second step (refine the candidate on DWI) and write it here; --out "
                        "stays the plain ADC-threshold candidate")
    c.add_argument("--refine-mode", default="border", choices=["border", "connected"],
                   help="second step: 'border' (default) adds the one-voxel layer around each candidate lesion that "
                        "is DWI-bright with ADC below --refine-adc-limit; 'connected' adds every such voxel connected "
                        "to a candidate lesion")
    c.add_argument("--refine-adc-limit", type=_float, default=800e-6,
                   help="relaxed ADC limit of the second step in mm2/s (default 800e-6: normal adult white matter)")
    c.add_argument("--shine-through-out", help="also write the T2 shine-through mask here")
    c.add_argument("--eadc-out", help="also write eADC = exp(-b*ADC) here")
    c.add_argument("--brain-out", help="also write the brain mask here (a name different from --out)")
    c.add_argument("--loop-model", metavar="DIR",
                   help="also propose a candidate with a trained pre-annotation loop model (a rounds/round-NNN/model "
                        "folder of an 'annotation-qc loop' with image_dwi,image_adc) and report it beside the "
                        "ADC-threshold one")
    c.add_argument("--loop-out", metavar="MASK",
                   help="write the loop model's candidate here (NIfTI, on the DWI grid); needs --loop-model")
    c.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where the loop model runs: auto (default: a CUDA GPU when PyTorch sees one), cpu or cuda")
    add_overwrite(c)
    add_json(c, "a summary")
    c.set_defaults(func=cmd_candidate)

    m = add_command(sub, "metrics", "ISLES'22 metrics of a test mask against a reference mask")
    m.add_argument("--reference", "--truth", dest="reference", required=True,
                   help="reference (expert) mask; --truth is the old name")
    m.add_argument("--test", "--pred", dest="test", required=True,
                   help="mask to evaluate (e.g. the candidate); --pred is the old name")
    m.add_argument("--resample-test", "--resample-pred", dest="resample_test", action="store_true",
                   help="resample the test mask onto the reference's grid (nearest neighbour) instead of refusing")
    add_json(m, "the metrics")
    m.set_defaults(func=cmd_metrics)

    # workflow -------------------------------------------------------------------------
    st = add_command(sub, "study", "create a study folder (thresholds, settings)")
    stsub = st.add_subparsers(dest="study_command", required=True, parser_class=common_cli.Parser, metavar="COMMAND")
    x = add_command(stsub, "init", "create a study")
    x.add_argument("study", help="new study folder (created; refused when it already holds a study)")
    x.add_argument("--name", help="study name (default: the folder name)")
    x.add_argument("--min-dice", type=_float, default=0.80, help="review when Dice(A,B) is below (0.80)")
    x.add_argument("--max-volume-diff-ml", type=_float, default=1.0, help="review when |V_B - V_A| is above (1.0 mL)")
    x.add_argument("--max-unmatched-lesions", type=int, default=0,
                   help="review when more lesions than this are drawn by one annotator only (0)")
    x.add_argument("--agreed-consensus", choices=["staple", "union", "intersection"], default="staple",
                   help="how the proposed consensus of an agreed case is formed from A and B (default staple)")
    x.add_argument("--no-signoff", action="store_true", help="agreed cases become final without the reviewer")
    _add_by(x)
    x.set_defaults(func=cmd_study_init)

    rd = add_command(sub, "reader", "reader qualification records")
    rdsub = rd.add_subparsers(dest="reader_command", required=True, parser_class=common_cli.Parser, metavar="COMMAND")
    x = add_command(rdsub, "add", "record a reader's qualification (a new record supersedes, history kept)")
    x.add_argument("study", help="the study folder")
    x.add_argument("--id", required=True, help="pseudonymous reader id (letters, digits, '-', '_', '.')")
    x.add_argument("--title", required=True, choices=["resident", "attending", "associate_chief", "chief"],
                   help="professional title (the consensus' roles need attending/resident for annotators, "
                        "associate chief for the reviewer, chief for the arbitrator)")
    x.add_argument("--years", type=_float, required=True, help="years in diagnostic radiology")
    x.add_argument("--neuro-years", type=_float, required=True, help="years in neuroradiology")
    x.add_argument("--name", help="the reader's name (kept in the study, never exported)")
    x.add_argument("--training", help="training record (e.g. AnnotationQC session id and result)")
    _add_by(x)
    x.set_defaults(func=cmd_reader_add)
    x = add_command(rdsub, "list", "the readers and the roles they qualify for")
    x.add_argument("study", help="the study folder")
    add_json(x, "the readers")
    x.set_defaults(func=cmd_reader_list)

    cs = add_command(sub, "case", "create cases and assign readers")
    cssub = cs.add_subparsers(dest="case_command", required=True, parser_class=common_cli.Parser, metavar="COMMAND")
    x = add_command(cssub, "init", "add a case (images are copied into the study)")
    _add_study_case(x)
    x.add_argument("--dwi", required=True, help="DWI b=1000 (trace) NIfTI, the primary annotation image")
    x.add_argument("--adc", required=True, help="ADC map on the DWI grid")
    for k, what in (("flair", "FLAIR"), ("t1w", "T1-weighted"), ("t2w", "T2-weighted"), ("b0", "b=0 DWI")):
        x.add_argument(f"--{k}", help=f"{what} image of the same session (optional)")
    x.add_argument("--subject", help="BIDS subject label (default: the case id without punctuation)")
    x.add_argument("--session", default="01", help="BIDS session label (default 01)")
    x.add_argument("--adc-units", default="auto",
                   help="units of the ADC map: auto (default: detected and checked against the DWI), mm2/s, "
                        "1e-3mm2/s or 1e-6mm2/s (stated units force the map's use; doubts become warnings)")
    _add_slot_options(x)
    _add_by(x)
    x.set_defaults(func=cmd_case_init)
    x = add_command(cssub, "import", "add many cases at once from an ISLES'22/BIDS folder or a CSV",
                    description="Add many cases at once, each atomically (imported whole or refused whole, with\n"
                                "the reason); cases already in the study are skipped, so the command can be run\n"
                                "again after fixing the refused ones. Exit status 1 when a case was refused.",
                    epilog="sources:\n  FOLDER/rawdata/sub-X/ses-Y/ (ISLES'22) or FOLDER/sub-X/ses-Y/{dwi,anat}/ "
                           "(BIDS): one case per session, id sub-X_ses-Y\n"
                           "  CSV: case_id,dwi,adc[,flair,t1w,t2w,b0,subject,session,annotator_a,annotator_b,"
                           "reviewer,arbitrator,adc_units]\n       (image paths relative to the CSV's folder)\n"
                           "example:\n  stroke-lesion case import STUDY --from isles22/ --annotator-a ann1 "
                           "--annotator-b ann2 --reviewer rev1")
    x.add_argument("study", help="the study folder")
    x.add_argument("--from", dest="source", required=True, metavar="FOLDER_OR_CSV",
                   help="an ISLES'22 or BIDS folder (one case per session) or a CSV with one row per case")
    x.add_argument("--adc-units", default="auto",
                   help="ADC units for every case (default auto: detected per case; a CSV column adc_units overrides)")
    _add_slot_options(x)
    _add_by(x)
    x.set_defaults(func=cmd_case_import)
    x = add_command(cssub, "assign", "assign qualified readers to slots",
                    epilog="examples:\n  stroke-lesion case assign STUDY case1 --annotator-b ann2\n"
                           "  stroke-lesion case assign STUDY case1 --slot annotatorB --reader ann2   (same)")
    _add_study_case(x)
    x.add_argument("--slot", type=_slot, metavar="SLOT",
                   help="annotator-a, annotator-b, reviewer or arbitrator (annotatorA/annotatorB also accepted); "
                        "with --reader")
    x.add_argument("--reader", help="reader id for --slot")
    _add_slot_options(x)
    _add_by(x)
    x.set_defaults(func=cmd_case_assign)

    x = add_command(sub, "annotate", "save a new version of an annotator's mask")
    _add_study_case(x)
    x.add_argument("--reader", required=True, help="the annotator's reader id (annotator A or B of the case)")
    x.add_argument("--mask", help="binary (0/1) NIfTI on the case's DWI grid")
    x.add_argument("--no-lesion", action="store_true", help="the case shows no acute lesion (empty mask)")
    x.add_argument("--minutes", type=_float, help="time spent annotating, in minutes (recorded)")
    x.add_argument("--allow-large-lesion", action="store_true",
                   help="accept a mask covering more than half of the brain (refused by default: not a plausible "
                        "acute infarct)")
    x.add_argument("--why", help="comment, recorded in the audit trail")
    add_json(x, "the saved version")
    x.set_defaults(func=cmd_annotate)

    x = add_command(sub, "note", "attach a note on an ambiguous region to a lesion")
    _add_study_case(x)
    x.add_argument("--reader", required=True, help="the reader writing the note (assigned to the case)")
    x.add_argument("--text", required=True, help="the note")
    g = x.add_mutually_exclusive_group(required=True)
    g.add_argument("--lesion", type=int, help="lesion id of the comparison")
    g.add_argument("--point-ras", type=_point, help="x,y,z in mm, RAS (as Slicer shows it)")
    g.add_argument("--point-lps", type=_point, help="x,y,z in mm, LPS (ITK/DICOM)")
    add_json(x, "the note")
    x.set_defaults(func=cmd_note)

    x = add_command(sub, "compare", "compare annotators A and B and route the case")
    _add_study_case(x)
    _add_by(x)
    x.set_defaults(func=cmd_compare)

    for name, fn, help_, choices in (
            ("review", cmd_review, "the reviewer's lesion-by-lesion decision", "A, B, union, intersection, edited, none"),
            ("arbitrate", cmd_arbitrate, "the arbitrator's final decision",
             "A, B, union, intersection, edited, review, none")):
        x = add_command(sub, name, help_)
        _add_study_case(x)
        x.add_argument("--reader", required=True, help=f"the {'reviewer' if name == 'review' else 'arbitrator'}'s "
                                                        "reader id")
        x.add_argument("--all", "--default", dest="all", metavar="CHOICE",
                       help=f"choice for every lesion not given with --lesion ({choices})")
        x.add_argument("--lesion", type=_lesion_choice, action="append", metavar="N=CHOICE",
                       help="the choice for lesion N (lesion ids as 'compare' lists them; N,M=CHOICE and N-M=CHOICE "
                            "for several), repeatable: the exceptions to --all")
        x.add_argument("--choices", metavar="CSV",
                       help="a CSV of lesion choices (columns 'lesion' and 'choice'; other columns such as a note "
                            "are ignored); combine with --all for the lesions it does not list")
        x.add_argument("--edited", help="an edited mask on the DWI grid (for the 'edited' choice)")
        x.add_argument("--no-new", action="store_true",
                       help="ignore components of the edited mask that touch no lesion of A or B")
        x.add_argument("--why", required=True, help="reason (required, recorded)")
        add_json(x, "the decision")
        if name == "review":
            x.add_argument("--accept-proposed", action="store_true",
                           help="sign off the proposed consensus (cases within the thresholds)")
            x.add_argument("--dispute", action="store_true", help="send the case to the arbitrator")
        x.set_defaults(func=fn)

    x = add_command(sub, "quality", "record a series' image quality (Likert 1-5, SNR, CNR)")
    _add_study_case(x)
    x.add_argument("--reader", required=True, help="the grading reader's id")
    x.add_argument("--series", required=True, help="dwi, adc, flair, t1w, t2w or b0")
    x.add_argument("--likert", type=int, required=True, help="Likert 1 (non-diagnostic) to 5 (excellent); < 3 "
                                                             "excludes the series")
    x.add_argument("--snr", type=_float, help="signal-to-noise ratio (entered)")
    x.add_argument("--cnr", type=_float, help="contrast-to-noise ratio (entered)")
    x.add_argument("--reason", help="why the series is flagged (required when it is)")
    x.add_argument("--roi", help="label map on the series' grid (1 signal, 2 background, 3 tissue) to measure SNR/CNR")
    x.add_argument("--not-measurable", metavar="REASON",
                   help="SNR and CNR cannot be measured on this series, with the reason (a computed map such as the "
                        "ADC; a skull-stripped image without background noise); recorded, and accepted as such")
    x.add_argument("--snr-not-measurable", metavar="REASON", help="only SNR cannot be measured (the reason)")
    x.add_argument("--cnr-not-measurable", metavar="REASON", help="only CNR cannot be measured (the reason)")
    x.add_argument("--min-snr", type=_float, help="flag (exclude) the series below this SNR")
    x.add_argument("--min-cnr", type=_float, help="flag (exclude) the series below this CNR")
    add_json(x, "the quality record")
    x.set_defaults(func=cmd_quality)

    x = add_command(sub, "export-bids", "export the study to a BIDS dataset with a lesion-mask derivative")
    x.add_argument("study", help="the study folder")
    x.add_argument("out", help="new (or empty) output folder")
    x.add_argument("--name", required=True, help="dataset name (required)")
    x.add_argument("--author", action="append", required=True,
                   help="author (required: at least one; repeat for each)")
    x.add_argument("--license", help="data licence, e.g. CC-BY-4.0")
    x.add_argument("--mask-naming", choices=["bids", "consensus-document"], default="bids",
                   help="'consensus-document' names the consensus mask sub-X_ses-Y_dwi_lesionmask.nii.gz as in the "
                        "consensus document; that name is NOT valid BIDS")
    x.add_argument("--dwi-suffix", choices=["dwi", "trace"], default="dwi",
                   help="suffix of a single 3D (trace-weighted) DWI: dwi (+ .bval/.bvec, default) or trace")
    x.add_argument("--keep-patient-characteristics", action="store_true",
                   help="keep age/sex/weight (DICOM Retain Patient Characteristics Option)")
    x.add_argument("--no-audit", action="store_true", help="leave the audit trail (with free-text notes) out")
    x.add_argument("--no-eadc", action="store_true", help="do not write eADC maps")
    x.add_argument("--case", action="append", help="export only this case (repeatable)")
    x.add_argument("--validate", action="store_true", help="run bids-validator-deno afterwards")
    add_overwrite(x)
    add_json(x, "the export report")
    x.set_defaults(func=cmd_export_bids)

    x = add_command(sub, "validate-bids", "run the official BIDS validator and check derivatives' GeneratedBy")
    x.add_argument("dataset", help="the exported BIDS dataset folder")
    add_json(x, "the validator's errors and warnings")
    x.set_defaults(func=cmd_validate_bids)

    x = add_command(sub, "deid", "de-identify DICOM (PS3.15 Basic Profile) or a JSON sidecar")
    x.add_argument("kind", choices=["dicom", "sidecar"], help="what to de-identify: DICOM or a JSON sidecar")
    x.add_argument("input", help="DICOM file or folder, or a JSON sidecar")
    x.add_argument("output", help="output file or new folder")
    x.add_argument("--keep-patient-characteristics", action="store_true",
                   help="Retain Patient Characteristics Option (age, sex, size, weight)")
    add_overwrite(x)
    add_json(x, "the de-identification report")
    x.set_defaults(func=cmd_deid)

    x = add_command(sub, "accept", "acceptance checks of an exported dataset and its quality report (HTML+JSON)")
    x.add_argument("dataset", help="the exported BIDS dataset folder")
    x.add_argument("--report-dir", help="where to write the report (default: DATASET-acceptance beside the dataset)")
    x.add_argument("--validate", action="store_true", help="also run bids-validator-deno")
    add_overwrite(x)
    add_json(x, "the acceptance report")
    x.set_defaults(func=cmd_accept)

    x = add_command(sub, "status", "cases and their state (blinded unless --coordinator)")
    x.add_argument("study", help="the study folder")
    x.add_argument("case", nargs="?", help="one case (default: every case)")
    x.add_argument("--reader", help="show what this reader may see (an annotator: only their own work until the case "
                                    "is final)")
    x.add_argument("--coordinator", action="store_true",
                   help="the coordinator's unblinded view: every reader's masks, notes and the comparison (never "
                        "show it to an annotator before the case is final)")
    add_json(x, "the state")
    x.set_defaults(func=cmd_status)

    x = add_command(sub, "verify", "check a study for tampering and damage; report everything found",
                    description="Check the whole study: study.json, the reader list and every case's audit\n"
                                "trail (hash chain, signatures, removed records), case.json against the trail, every\n"
                                "image, sidecar and mask against its recorded SHA-256, and leftovers of interrupted\n"
                                "commands.\n"
                                "Exit status 1 when a problem was found.")
    x.add_argument("study", help="the study folder")
    x.add_argument("--case", action="append", help="check only this case (repeatable)")
    add_json(x, "the verification report")
    x.set_defaults(func=cmd_verify)

    return p


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        raise UserError("stroke-lesion: give a command (see stroke-lesion --help)")
    return int(args.func(args) or EXIT_OK)


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
