"""The CNS-tumour label set as a Slicer terminology, read without Slicer: the file parses, has
what Slicer's loader and the dcmqi segment-context schema require, uses the real SNOMED CT
codes of Slicer's DICOM master terminology where they exist and a marked local scheme
otherwise, and ties each label to its sequence with the consensus' colours.

Slicer's own loader reads the same file in Testing/test_slicer_aqc_logic.py.
"""

from __future__ import annotations

import json

import pytest
from AnnotationQCLib.terminology import (
    LOCAL_SCHEME,
    TERMINOLOGY_FILE,
    TERMINOLOGY_SCHEMAS,
    VARIANTS,
    canonical_sequence,
    label_by_key,
    label_set,
    labels_for_sequence,
    load_terminology,
    terminology_entry,
)
from ClinicalMRICommonLib.errors import UserError

# Codes as they appear in Slicer's SegmentationCategoryTypeModifier-DICOM-Master.json and
# AnatomicRegionAndModifier-DICOM-Master.json (Slicer main, 2026-08)
SLICER_DICOM_MASTER = {
    "Morphologically Altered Structure": ("SCT", "49755003"),
    "Neoplasm": ("SCT", "108369006"),
    "Edema": ("SCT", "79654002"),
    "Brain": ("SCT", "12738006"),
    "Meninges": ("SCT", "1231004"),
}
# Colours named in the consensus' figure captions (yellow whole tumour / oedema, red body,
# purple enhancing, blue non-enhancing)
CONSENSUS_COLOURS = {"whole-tumour": "yellow", "oedema": "yellow", "tumour-body": "red", "enhancing": "purple",
                     "non-enhancing": "blue"}


def _hue(rgb) -> str:
    r, g, b = rgb
    if r > 200 and g > 180 and b < 100:
        return "yellow"
    if r > 180 and g < 80 and b < 80:
        return "red"
    if r > 120 and b > 150 and g < 100:
        return "purple"
    if b > 180 and r < 80:
        return "blue"
    return "other"


def test_file_parses_and_has_what_slicer_requires():
    doc = json.loads(TERMINOLOGY_FILE.read_text(encoding="utf-8"))
    assert doc["@schema"] in TERMINOLOGY_SCHEMAS
    assert TERMINOLOGY_FILE.name.startswith("SegmentationCategoryTypeModifier-")
    assert TERMINOLOGY_FILE.name.endswith(".term.json")  # Slicer's reader gives these the higher confidence
    term = load_terminology()
    assert term.context == doc["SegmentationCategoryTypeContextName"]
    for cat in doc["SegmentationCodes"]["Category"]:
        for key in ("CodingSchemeDesignator", "CodeValue", "CodeMeaning", "Type"):
            assert cat[key]
        for t in cat["Type"]:
            for key in ("CodingSchemeDesignator", "CodeValue", "CodeMeaning", "recommendedDisplayRGBValue"):
                assert t[key] not in ("", None)
    assert len(term.types) == 5


def test_real_codes_where_they_exist_local_scheme_otherwise():
    term = load_terminology()
    for (scheme, value), t in term.types.items():
        assert (t.category.scheme, t.category.value) == SLICER_DICOM_MASTER["Morphologically Altered Structure"]
        if scheme == "SCT":
            assert SLICER_DICOM_MASTER[t.code.meaning] == (scheme, value)
        else:
            assert scheme == LOCAL_SCHEME and LOCAL_SCHEME.startswith("99")  # DICOM private scheme prefix
    doc = json.loads(TERMINOLOGY_FILE.read_text(encoding="utf-8"))
    for t in doc["SegmentationCodes"]["Category"][0]["Type"]:
        if t["CodingSchemeDesignator"] == LOCAL_SCHEME:
            assert "local" in t["contextGroupName"].lower()
    regions = {(lab.region.scheme, lab.region.value) for v in VARIANTS for lab in label_set(v)}
    assert regions == {SLICER_DICOM_MASTER["Brain"], SLICER_DICOM_MASTER["Meninges"]}


def test_label_sets_sequences_names_and_colours():
    intra = label_set("intra-axial")
    assert [(lab.key, lab.name, lab.sequence) for lab in intra] == [
        ("whole-tumour", "Whole tumour", "FLAIR"), ("tumour-body", "Tumour body", "T2WI"),
        ("enhancing", "Enhancing tumour", "CE-T1WI"), ("non-enhancing", "Non-enhancing tumour", "CE-T1WI")]
    men = label_set("meningeal")
    assert [(lab.key, lab.sequence) for lab in men] == [
        ("oedema", "FLAIR"), ("tumour-body", "T2WI"), ("enhancing", "CE-T1WI"), ("non-enhancing", "CE-T1WI")]
    assert label_by_key("oedema", "meningeal").type_code.value == "79654002"
    assert label_by_key("tumour-body", "meningeal").region.meaning == "Meninges"
    assert label_by_key("oedema", "intra-axial") is None
    for variant in VARIANTS:
        for lab in label_set(variant):
            assert _hue(lab.colour) == CONSENSUS_COLOURS[lab.key], lab
            assert all(0.0 <= c <= 1.0 for c in lab.colour_float)
    with pytest.raises(UserError, match="unknown CNS-tumour label set"):
        label_set("spinal")


def test_sequence_names_of_studies_map_to_the_consensus():
    assert canonical_sequence("flair") == canonical_sequence("T2_FLAIR") == "FLAIR"
    assert canonical_sequence("T2") == canonical_sequence("t2wi") == "T2WI"
    assert canonical_sequence("T1C") == canonical_sequence("t1 ce") == canonical_sequence("CE-T1WI") == "CE-T1WI"
    assert canonical_sequence("T1") is None and canonical_sequence("DWI") is None
    assert [lab.key for lab in labels_for_sequence("T1CE")] == ["enhancing", "non-enhancing"]
    assert [lab.key for lab in labels_for_sequence("FLAIR", "meningeal")] == ["oedema"]
    assert labels_for_sequence("ADC") == []


def test_terminology_entry_string_format():
    lab = label_by_key("tumour-body")
    # Slicer's SerializeTerminologyEntry layout: 7 fields separated by '~', codes as scheme^value^meaning
    assert lab.terminology_entry == (
        "CNS tumour annotation - AnnotationQC~SCT^49755003^Morphologically Altered Structure~"
        "SCT^108369006^Neoplasm~^^~Anatomic codes - DICOM master list~SCT^12738006^Brain~^^")
    assert terminology_entry("c", lab.category, lab.type_code).split("~")[4:] == ["", "^^", "^^"]


@pytest.mark.parametrize("breakage, message", [
    (lambda d: d.pop("@schema"), "@schema"),
    (lambda d: d.update({"@schema": "https://example.org/schema.json#"}), "@schema"),
    (lambda d: d.pop("SegmentationCategoryTypeContextName"), "ContextName"),
    (lambda d: d["SegmentationCodes"]["Category"][0]["Type"][0].pop("CodeMeaning"), "lacks CodeMeaning"),
    (lambda d: d["SegmentationCodes"]["Category"][0]["Type"][0].update({"sequence": "FLAIR"}),
     "does not allow: sequence"),
    (lambda d: d["SegmentationCodes"]["Category"][0]["Type"][1].update({"recommendedDisplayRGBValue": [300, 0, 0]}),
     "three integers"),
    (lambda d: d["SegmentationCodes"]["Category"][0]["Type"].append(
        dict(d["SegmentationCodes"]["Category"][0]["Type"][0])), "appears twice"),
    (lambda d: d["SegmentationCodes"]["Category"][0].update({"Type": []}), "no Type list"),
    (lambda d: d["SegmentationCodes"]["Category"][0]["Type"][2].update({"CodeMeaning": "a^b"}), "separators"),
])
def test_broken_terminologies_are_refused(tmp_path, breakage, message):
    doc = json.loads(TERMINOLOGY_FILE.read_text(encoding="utf-8"))
    breakage(doc)
    path = tmp_path / "broken.term.json"
    path.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(UserError, match=message):
        load_terminology(path)


def test_unreadable_files(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_terminology(tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{", encoding="utf-8")
    with pytest.raises(UserError, match="not valid JSON"):
        load_terminology(bad)
