"""``stroke-lesion``: the command line of the acute-stroke annotation workflow.

Every subcommand is a thin wrapper over the library; bad input ends as one line
``error: ...`` on stderr and exit status 2 (AnnotationQCLib.common.run_cli).
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from pathlib import Path

from AnnotationQCLib.common import UserError, run_cli, to_jsonable, write_image_atomic


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage mistakes as a one-line UserError (exit 2, no usage dump)."""

    def error(self, message):  # noqa: D401 - argparse API
        raise UserError(f"{self.prog}: {message} (see {self.prog} --help)")


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _out_path(path: str, overwrite: bool, what: str = "output") -> Path:
    p = Path(path)
    if p.exists() and not overwrite:
        raise UserError(f"{what} file {p} already exists; choose another name or pass --overwrite")
    if p.exists() and p.is_dir():
        raise UserError(f"{what} path {p} is a folder; give a file name such as mask.nii.gz")
    return p


def _emit(obj, as_json: bool, text: str) -> None:
    if as_json:
        print(json.dumps(to_jsonable(obj), indent=2))
    else:
        print(text)


def _who(args) -> str:
    who = getattr(args, "by", None)
    if who:
        return who
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no user name available in some containers
        return "unknown"


# ---------------------------------------------------------------------------------------
# candidate / metrics


def cmd_candidate(args) -> int:
    from .candidate import CandidateParams, candidate_mask
    from .diffusion import eadc, load_diffusion, parse_adc_units, read_b_value

    # check everything cheap before reading images
    units = parse_adc_units(args.adc_units)
    params = CandidateParams(adc_threshold_mm2s=args.threshold, dwi_rule=args.dwi_rule, dwi_k=args.dwi_k,
                             dwi_percentile=args.dwi_percentile, min_size_ml=args.min_size_ml,
                             shine_through_adc_mm2s=args.shine_through_adc).check()
    out = _out_path(args.out, args.overwrite, "--out")
    extra = {}
    for name in ("shine_through_out", "eadc_out", "brain_out"):
        if getattr(args, name):
            extra[name] = _out_path(getattr(args, name), args.overwrite, "--" + name.replace("_", "-"))
    case = load_diffusion(args.dwi, args.adc, adc_units=units)
    res = candidate_mask(case, params)
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
    u = case.units
    _emit(summary, args.json,
          f"ADC units: {u.units} ({'detected' if u.detected else 'stated'}; brain median {u.brain_median_raw:.4g})\n"
          f"candidate: {summary['volume_ml']:.3f} mL, {summary['n_lesions']} lesion(s) "
          f"({summary['islands_removed']} island(s) < {params.min_size_ml:g} mL removed)\n"
          f"T2 shine-through (DWI high, ADC not low; not lesion): {summary['shine_through_volume_ml']:.3f} mL "
          f"in {summary['shine_through_n_regions']} region(s)\n"
          f"wrote {out}")
    return 0


def cmd_metrics(args) -> int:
    from .metrics import lesion_metrics_files

    m = lesion_metrics_files(args.truth, args.pred, resample_pred=args.resample_pred)
    _emit(m, args.json, "\n".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in m.items()))
    return 0


# ---------------------------------------------------------------------------------------
# parser


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="stroke-lesion", description="Acute ischaemic stroke lesion annotation: candidate mask from "
                "DWI/ADC, ISLES'22 metrics, two-reader workflow, BIDS export, de-identification, acceptance.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    c = sub.add_parser("candidate", help="semi-automatic candidate mask: ADC < threshold AND DWI high AND brain")
    c.add_argument("--dwi", required=True, help="DWI (b=1000 or the acquisition's high b) NIfTI")
    c.add_argument("--adc", required=True, help="ADC map on the DWI grid")
    c.add_argument("--adc-units", default="auto", help="auto (default), mm2/s, 1e-3mm2/s or 1e-6mm2/s")
    c.add_argument("--threshold", type=_float, default=620e-6, help="ADC threshold in mm2/s (default 620e-6)")
    c.add_argument("--b-value", type=_float, help="b-value in s/mm2 (default: from the DWI JSON sidecar)")
    c.add_argument("--min-size-ml", type=_float, default=0.01, help="remove islands smaller than this (mL; 0.01)")
    c.add_argument("--dwi-rule", choices=["mad", "percentile"], default="mad",
                   help="DWI hyperintensity: median + k*MAD_n of the brain (default) or a brain percentile")
    c.add_argument("--dwi-k", type=_float, default=3.0, help="k for --dwi-rule mad (default 3)")
    c.add_argument("--dwi-percentile", type=_float, default=99.0, help="percentile for --dwi-rule percentile")
    c.add_argument("--shine-through-adc", type=_float, default=None,
                   help="ADC (mm2/s) at or above which a DWI-bright voxel is T2 shine-through (default: --threshold)")
    c.add_argument("--out", required=True, help="output mask (NIfTI, on the DWI grid)")
    c.add_argument("--shine-through-out", help="also write the T2 shine-through mask here")
    c.add_argument("--eadc-out", help="also write eADC = exp(-b*ADC) here")
    c.add_argument("--brain-out", help="also write the brain mask here")
    c.add_argument("--overwrite", action="store_true", help="replace existing output files")
    c.add_argument("--json", action="store_true", help="print a JSON summary")
    c.set_defaults(func=cmd_candidate)

    m = sub.add_parser("metrics", help="ISLES'22 metrics of a predicted mask against a reference mask")
    m.add_argument("--truth", required=True)
    m.add_argument("--pred", required=True)
    m.add_argument("--resample-pred", action="store_true",
                   help="resample the prediction onto the truth's grid (nearest neighbour) instead of refusing")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=cmd_metrics)

    return p


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


def main(argv: list[str] | None = None) -> int:
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
