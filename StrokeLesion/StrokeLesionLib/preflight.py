"""Pre-flight of a study: per case, what is still missing for the dataset's acceptance
(acceptance.check_dataset, run on the BIDS export at the very end), each item with the
command that supplies it, so a coordinator sees the requirements while the work is done
rather than in the final NOT ACCEPTED.

The items mirror the acceptance checks that depend on the study (the dataset-level ones, a
name, authors and a licence, are given to ``export-bids``):

* readers: annotators A and B, the reviewer (every case is reviewed or signed off unless the
  study was created with --no-signoff), the arbitrator once a case is disputed;
* the workflow: both annotations, the comparison, the review or sign-off, the arbitration;
  the case is accepted only with a final consensus mask;
* quality per series: a Likert grade >= 3 and SNR and CNR, each measured, entered or recorded
  as not measurable with a reason;
* metadata the export copies from the source sidecars: MagneticFieldStrength, EchoTime and
  RepetitionTime of every image, the DWI's b-value, the ADC's units.
"""

from __future__ import annotations

import json
import shlex

from ClinicalMRICommonLib.errors import UserError


def _item(what: str, command: str | None, fix: str = "") -> dict:
    return {"what": what, "command": command, "fix": fix}


def latest_quality(st) -> dict[str, dict]:
    """The latest quality record of each series (any reader)."""
    out: dict[str, dict] = {}
    for q in st.quality:
        out[q["series"]] = q
    return out


def missing_for_acceptance(study, case_id: str) -> list[dict]:
    """The items still missing for case ``case_id`` to pass acceptance, in the order they are
    done; each ``{"what", "command", "fix"}`` (``command`` None where no command supplies it,
    then ``fix`` says what to do)."""
    from ClinicalMRICommonLib.quality import MIN_LIKERT

    from .acceptance import REQUIRED_ACQ
    from .diffusion import read_b_value
    from .workflow import ANNOTATOR_SLOTS

    st = study.state(case_id)
    q_study, q_case = shlex.quote(str(study.root)), shlex.quote(case_id)
    base = f"stroke-lesion {{}} {q_study} {q_case}"
    items: list[dict] = []
    a = st.assignments

    # readers
    for slot in ANNOTATOR_SLOTS:
        if slot not in a:
            items.append(_item(f"annotator {slot[-1]} not assigned",
                               base.format("case assign") + f" --annotator-{slot[-1].lower()} READER"))
    needs_reviewer = st.status in ("review", "signoff") or (
        st.status in ("annotating", "ready_to_compare") and study.settings.signoff_agreed)
    if needs_reviewer and "reviewer" not in a:
        items.append(_item("reviewer not assigned", base.format("case assign") + " --reviewer READER"))
    if st.status == "arbitration" and "arbitrator" not in a:
        items.append(_item("arbitrator not assigned (the case is disputed)",
                           base.format("case assign") + " --arbitrator READER"))

    # the workflow
    for slot in ANNOTATOR_SLOTS:
        if slot not in st.annotations:
            who = a.get(slot, "READER")
            items.append(_item(f"annotator {slot[-1]} ({who}) has not saved a mask",
                               base.format("annotate") + f" --reader {shlex.quote(who)} --mask MASK.nii.gz",
                               "or --no-lesion when the case shows no acute lesion"))
    if st.status == "ready_to_compare":
        items.append(_item("annotations A and B not compared yet", base.format("compare")))
    rev = shlex.quote(a.get("reviewer", "READER"))
    if st.status == "review":
        items.append(_item("the reviewer's lesion-by-lesion decision",
                           base.format("review") + f" --reader {rev} --all CHOICE --why REASON",
                           "--lesion N=CHOICE or --choices FILE.csv for exceptions; --dispute sends it to arbitration"))
    elif st.status == "signoff":
        items.append(_item("the reviewer's sign-off of the proposed consensus",
                           base.format("review") + f" --reader {rev} --accept-proposed --why REASON"))
    elif st.status == "arbitration":
        arb = shlex.quote(a.get("arbitrator", "READER"))
        items.append(_item("the arbitrator's final decision",
                           base.format("arbitrate") + f" --reader {arb} --all CHOICE --why REASON"))
    elif st.status != "final":
        items.append(_item("no final consensus mask yet", None, "finish annotation, comparison and review"))

    # quality of every series
    latest = latest_quality(st)
    grader = shlex.quote(a.get("reviewer", "READER"))
    for kind in st.info["images"]:
        q = latest.get(kind)
        cmd = base.format("quality") + f" --series {kind} --reader {grader} --likert N"
        nm_hint = ("ADC is a computed map" if kind == "adc" else "skull-stripped: no background noise")
        if q is None:
            items.append(_item(f"{kind}: no quality grade (Likert, SNR, CNR)", cmd + " --snr X --cnr Y",
                               f"or --roi LABELMAP to measure them, or --not-measurable \"{nm_hint}\""))
            continue
        if q.get("likert") is not None and q["likert"] < MIN_LIKERT:
            items.append(_item(f"{kind}: Likert {q['likert']} < {MIN_LIKERT}: the series is excluded and the case "
                               "cannot be accepted with it", None,
                               "re-grade it if the grade is wrong; otherwise leave the case out of the export "
                               "(export-bids --case)"))
        absent = [k for k in ("snr", "cnr") if q.get(k) is None and not (q.get("not_measurable") or {}).get(k)]
        if absent:
            opts = " ".join(f"--{k} X" for k in absent)
            items.append(_item(f"{kind}: {' and '.join(k.upper() for k in absent)} missing",
                               cmd.replace("--likert N", f"--likert {q.get('likert') or 'N'}") + f" {opts}",
                               f"or --roi LABELMAP, or --not-measurable \"{nm_hint}\""))

    # metadata the export copies from the source sidecars
    for kind, entry in st.info["images"].items():
        meta = {}
        side = study.case_file(case_id, kind, "sidecar")         # confined and SHA-256 checked
        if side is not None:
            try:
                meta = json.loads(side.read_bytes().decode("utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                meta = {}
            meta = meta if isinstance(meta, dict) else {}
        miss = [k for k in REQUIRED_ACQ if k not in meta]
        if miss:
            items.append(_item(f"{kind}: sidecar lacks {', '.join(miss)} (acquisition parameters acceptance "
                               "requires)", None,
                               f"the source image {entry.get('source', '')} had no complete JSON sidecar; convert the "
                               "DICOM with dcm2niix (it writes them) and create the case again under a new id"))
    dwi = study.image_path(case_id, "dwi")                       # an altered DWI is an error, not "no b-value"
    try:
        read_b_value(dwi)
    except UserError:
        items.append(_item("dwi: no b-value (DiffusionBValue in the sidecar or a .bval file)", None,
                           "the export needs it: create the case again from a DWI with its dcm2niix sidecar/.bval"))
    if "adc" in st.info["images"] and not st.info["images"]["adc"].get("units"):
        from .bids import _diffusion_of
        if _diffusion_of(study, case_id) is None:
            items.append(_item("adc: units cannot be determined (the export writes no 'Units')", None,
                               "check the ADC map; create the case again with --adc-units"))
    return items
