"""The CNS-tumour label set as a Slicer terminology: standard segment names, colours, codes
and the sequence each label is drawn on. Qt-free and Slicer-free (plain JSON + Python).

The labels follow the Chinese expert consensus on MRI annotation of CNS tumours (section
"annotation content", after BraTS):

======================  ===========  =========================================================
label (content key)     drawn on     what it covers
======================  ===========  =========================================================
intra-axial tumours
whole tumour            FLAIR        tumour body + peritumoural oedema
tumour body             T2WI         the tumour without oedema
enhancing tumour        CE-T1WI      parts enhancing after gadolinium (vs plain T1WI)
non-enhancing tumour    CE-T1WI      non-enhancing solid part, necrosis, cyst, haemorrhage
meningeal tumours
oedema                  FLAIR        FLAIR-bright brain parenchyma only (not the tumour)
tumour body, enhancing (thickened enhancing meninges included), non-enhancing: as above
======================  ===========  =========================================================

Colours are those of the consensus' figures: whole tumour and oedema yellow, tumour body
red, enhancing purple, non-enhancing blue.

Codes. The terminology file (``Resources/SegmentationCategoryTypeModifier-CNSTumour.term.json``)
follows Slicer's terminology format, the dcmqi ``segment-context-schema.json`` that Slicer's
own ``SegmentationCategoryTypeModifier-*.json`` files use. Real codes are used where Slicer's
DICOM master terminology has them (SNOMED CT, scheme ``SCT``): category *Morphologically
Altered Structure* 49755003, *Neoplasm* 108369006 for the tumour body, *Edema* 79654002 for
the meningeal oedema; anatomic regions *Brain* 12738006 and *Meninges* 1231004 from Slicer's
*Anatomic codes - DICOM master list*. Whole tumour, enhancing and non-enhancing tumour have no
SNOMED CT concept in those lists and use a local coding scheme, ``99AQC`` (DICOM PS3.16 8.2:
private coding scheme designators begin with ``99``), marked as local in the file's
``contextGroupName``.

Slicer stores a segment's terminology as one string (``vtkSegment::SetTerminology``) in the
format of ``vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry``:
``context~category~type~modifier~regionContext~region~regionModifier`` where each coded
entry is ``scheme^value^meaning``; :func:`terminology_entry` builds it.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ClinicalMRICommonLib.errors import UserError

RESOURCES = Path(__file__).resolve().parent / "Resources"
TERMINOLOGY_FILE = RESOURCES / "SegmentationCategoryTypeModifier-CNSTumour.term.json"

# The two schema URLs Slicer's terminology loader accepts (vtkSlicerTerminologiesModuleLogic.cxx)
TERMINOLOGY_SCHEMAS = (
    "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/segment-context-schema.json#",
    "https://raw.githubusercontent.com/qiicr/dcmqi/master/doc/schemas/segment-context-schema.json#",
)
REGION_CONTEXT = "Anatomic codes - DICOM master list"  # Slicer's default region context
LOCAL_SCHEME = "99AQC"

# Properties the dcmqi schema allows ("additionalProperties": false), segment-context-common-schema.json
_CODE_PROPS = {"CodeValue", "CodeMeaning", "CodingSchemeDesignator"}
_CATEGORY_PROPS = _CODE_PROPS | {"recommendedDisplayRGBValue", "3dSlicerLabel", "cid", "contextGroupName",
                                 "UMLSConceptUID", "SNOMEDCTConceptID", "showAnatomy", "Type"}
_TYPE_PROPS = _CODE_PROPS | {"recommendedDisplayRGBValue", "paired", "3dSlicerLabel", "3dSlicerIntegerLabel", "cid",
                             "contextGroupName", "UMLSConceptUID", "SNOMEDCTConceptID", "Modifier"}
_MODIFIER_PROPS = _TYPE_PROPS - {"paired", "Modifier"}
_MAX_CODE_LENGTH = 64  # SH / LO in dcmqi's common-schema.json

# Sequence names as the consensus writes them, and the names studies commonly use for them
SEQUENCES = ("FLAIR", "T2WI", "CE-T1WI")
SEQUENCE_ALIASES = {
    "FLAIR": ("FLAIR", "T2-FLAIR", "T2FLAIR", "T2F"),
    "T2WI": ("T2WI", "T2", "T2W"),
    "CE-T1WI": ("CE-T1WI", "T1C", "T1CE", "T1-CE", "CE-T1", "T1GD", "T1-GD", "T1WI-CE", "T1POST", "T1-POST"),
}


@dataclass(frozen=True)
class Code:
    """A coded concept (DICOM code sequence triplet)."""

    scheme: str
    value: str
    meaning: str

    def serialized(self) -> str:
        return f"{self.scheme}^{self.value}^{self.meaning}"


BRAIN = Code("SCT", "12738006", "Brain")
MENINGES = Code("SCT", "1231004", "Meninges")


@dataclass(frozen=True)
class TermType:
    """One segmentation type of the terminology file."""

    category: Code
    code: Code
    colour: tuple[int, int, int]
    slicer_label: str


@dataclass(frozen=True)
class Label:
    """One label of a label set: what a segment is called, drawn on and coded as."""

    key: str                      # content part of the mask file name (<patient>_<sequence>_<key>.nii.gz)
    name: str                     # standard segment name
    sequence: str                 # sequence it is drawn on (one of SEQUENCES)
    description: str
    type_code: Code
    category: Code
    region: Code
    colour: tuple[int, int, int]  # 0-255
    context: str                  # terminology context name

    @property
    def colour_float(self) -> tuple[float, float, float]:
        """Colour as Slicer segments take it (0-1)."""
        return tuple(c / 255.0 for c in self.colour)

    @property
    def terminology_entry(self) -> str:
        return terminology_entry(self.context, self.category, self.type_code, region=self.region)


# variant -> (key, name, sequence, description, type code (scheme, value), region)
_LABEL_SETS = {
    "intra-axial": (
        ("whole-tumour", "Whole tumour", "FLAIR", "tumour body and peritumoural oedema (FLAIR high signal)",
         (LOCAL_SCHEME, "CNS-WT"), BRAIN),
        ("tumour-body", "Tumour body", "T2WI", "the tumour without oedema (lower T2 signal than the oedema)",
         ("SCT", "108369006"), BRAIN),
        ("enhancing", "Enhancing tumour", "CE-T1WI", "tumour enhancing after contrast (compare with plain T1WI)",
         (LOCAL_SCHEME, "CNS-ET"), BRAIN),
        ("non-enhancing", "Non-enhancing tumour", "CE-T1WI",
         "non-enhancing solid tumour, necrosis, cyst and haemorrhage inside the tumour body",
         (LOCAL_SCHEME, "CNS-NET"), BRAIN),
    ),
    "meningeal": (
        ("oedema", "Oedema", "FLAIR", "FLAIR-bright brain parenchyma only, not the tumour itself",
         ("SCT", "79654002"), BRAIN),
        ("tumour-body", "Tumour body", "T2WI", "the extra-axial tumour", ("SCT", "108369006"), MENINGES),
        ("enhancing", "Enhancing tumour", "CE-T1WI", "enhancing tumour including thickened enhancing meninges",
         (LOCAL_SCHEME, "CNS-ET"), MENINGES),
        ("non-enhancing", "Non-enhancing tumour", "CE-T1WI", "non-enhancing parts of the tumour",
         (LOCAL_SCHEME, "CNS-NET"), MENINGES),
    ),
}
VARIANTS = tuple(_LABEL_SETS)


def terminology_entry(context: str, category: Code, type_code: Code, modifier: Code | None = None,
                      region_context: str = REGION_CONTEXT, region: Code | None = None,
                      region_modifier: Code | None = None) -> str:
    """Slicer's serialized terminology entry (vtkSlicerTerminologiesModuleLogic::SerializeTerminologyEntry)."""
    empty = "^^"
    parts = [context, category.serialized(), type_code.serialized(), modifier.serialized() if modifier else empty,
             region_context if region else "", region.serialized() if region else empty,
             region_modifier.serialized() if region_modifier else empty]
    return "~".join(parts)


def _where(*path) -> str:
    return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in path)


def _check_code(obj, allowed: set[str], file: Path, path: tuple) -> Code:
    if not isinstance(obj, dict):
        raise UserError(f"terminology {file}: {_where(*path)} must be an object")
    extra = sorted(set(obj) - allowed)
    if extra:
        raise UserError(f"terminology {file}: {_where(*path)} has properties the schema does not allow: "
                        f"{', '.join(extra)}")
    for key in ("CodingSchemeDesignator", "CodeValue", "CodeMeaning"):
        value = obj.get(key)
        if not isinstance(value, str) or not value.strip():
            raise UserError(f"terminology {file}: {_where(*path)} lacks {key} (required by Slicer's loader)")
        if len(value) > _MAX_CODE_LENGTH:
            raise UserError(f"terminology {file}: {_where(*path, key)} is longer than {_MAX_CODE_LENGTH} characters")
        if "^" in value or "~" in value:
            raise UserError(f"terminology {file}: {_where(*path, key)} contains '^' or '~', the separators of "
                            "Slicer's terminology strings")
    if "recommendedDisplayRGBValue" in obj:
        rgb = obj["recommendedDisplayRGBValue"]
        if not (isinstance(rgb, list) and len(rgb) == 3
                and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in rgb)):
            raise UserError(f"terminology {file}: {_where(*path)}.recommendedDisplayRGBValue must be three "
                            "integers 0-255")
    if "3dSlicerIntegerLabel" in obj and not (isinstance(obj["3dSlicerIntegerLabel"], int)
                                              and not isinstance(obj["3dSlicerIntegerLabel"], bool)):
        raise UserError(f"terminology {file}: {_where(*path)}.3dSlicerIntegerLabel must be an integer")
    if "paired" in obj and obj["paired"] not in ("Y", "N", "U"):
        raise UserError(f"terminology {file}: {_where(*path)}.paired must be Y, N or U")
    if "showAnatomy" in obj and not isinstance(obj["showAnatomy"], bool):
        raise UserError(f"terminology {file}: {_where(*path)}.showAnatomy must be true or false")
    for key in ("3dSlicerLabel", "cid", "contextGroupName", "UMLSConceptUID", "SNOMEDCTConceptID"):
        if key in obj and not isinstance(obj[key], str):
            raise UserError(f"terminology {file}: {_where(*path, key)} must be a string")
    return Code(obj["CodingSchemeDesignator"], obj["CodeValue"], obj["CodeMeaning"])


@dataclass(frozen=True)
class Terminology:
    """A loaded terminology context: its name and its types keyed by (scheme, value)."""

    path: Path
    context: str
    types: dict

    def type(self, scheme: str, value: str) -> TermType:
        try:
            return self.types[(scheme, value)]
        except KeyError:
            raise UserError(f"terminology {self.path} has no type {scheme}^{value}") from None


def load_terminology(path: str | os.PathLike | None = None) -> Terminology:
    """Read and check a Slicer terminology file (segment-context-schema): the schema URL
    Slicer accepts, the context name, categories and types with their code triplets, only
    the properties the schema allows, colours as three integers 0-255, and no type code twice
    in a category. Raises UserError naming the file and the place of the first problem."""
    file = Path(path) if path is not None else TERMINOLOGY_FILE
    if not file.is_file():
        raise UserError(f"terminology file not found: {file}")
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise UserError(f"terminology {file} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    except UnicodeDecodeError:
        raise UserError(f"terminology {file} is not UTF-8 text") from None
    if not isinstance(doc, dict):
        raise UserError(f"terminology {file}: the top level must be an object")
    extra = sorted(set(doc) - {"@schema", "SegmentationCategoryTypeContextName", "SegmentationCodes"})
    if extra:
        raise UserError(f"terminology {file}: properties the schema does not allow at the top level: "
                        f"{', '.join(extra)}")
    if doc.get("@schema") not in TERMINOLOGY_SCHEMAS:
        raise UserError(f"terminology {file}: @schema must be {TERMINOLOGY_SCHEMAS[1]} (Slicer loads only "
                        f"segment-context-schema files), got {doc.get('@schema')!r}")
    context = doc.get("SegmentationCategoryTypeContextName")
    if not isinstance(context, str) or not context.strip() or "~" in context:
        raise UserError(f"terminology {file}: SegmentationCategoryTypeContextName is missing or invalid")
    codes = doc.get("SegmentationCodes")
    if not isinstance(codes, dict) or set(codes) - {"Category"} or not isinstance(codes.get("Category"), list) \
            or not codes["Category"]:
        raise UserError(f"terminology {file}: SegmentationCodes must hold a non-empty Category list (only)")
    types: dict[tuple[str, str], TermType] = {}
    for i, cat in enumerate(codes["Category"]):
        category = _check_code(cat, _CATEGORY_PROPS, file, ("Category", i))
        type_list = cat.get("Type")
        if not isinstance(type_list, list) or not type_list:
            raise UserError(f"terminology {file}: category {category.meaning!r} has no Type list")
        seen = set()
        for j, t in enumerate(type_list):
            code = _check_code(t, _TYPE_PROPS, file, ("Category", i, "Type", j))
            if (code.scheme, code.value) in seen:
                raise UserError(f"terminology {file}: type {code.scheme}^{code.value} appears twice in category "
                                f"{category.meaning!r} (Slicer would only find the first)")
            seen.add((code.scheme, code.value))
            for k, m in enumerate(t.get("Modifier", [])):
                _check_code(m, _MODIFIER_PROPS, file, ("Category", i, "Type", j, "Modifier", k))
            if "recommendedDisplayRGBValue" not in t:
                raise UserError(f"terminology {file}: type {code.meaning!r} has no recommendedDisplayRGBValue; "
                                "every label of this extension needs its standard colour")
            types.setdefault((code.scheme, code.value),
                             TermType(category, code, tuple(t["recommendedDisplayRGBValue"]),
                                      t.get("3dSlicerLabel", code.meaning.lower())))
    return Terminology(file, context, types)


def label_set(variant: str = "intra-axial", terminology: Terminology | None = None) -> list[Label]:
    """The labels of a variant ("intra-axial" or "meningeal"), with names, sequences, codes and
    colours from the terminology file."""
    if variant not in _LABEL_SETS:
        raise UserError(f"unknown CNS-tumour label set {variant!r}; use {' or '.join(VARIANTS)}")
    term = terminology or load_terminology()
    labels = []
    for key, name, sequence, description, (scheme, value), region in _LABEL_SETS[variant]:
        t = term.type(scheme, value)
        labels.append(Label(key, name, sequence, description, t.code, t.category, region, t.colour, term.context))
    return labels


def canonical_sequence(name: str) -> str | None:
    """The consensus' name (FLAIR, T2WI, CE-T1WI) of a study's sequence name, or None.
    Case, spaces and '_' are ignored: "t1c", "T1_CE" and "CE-T1WI" are all CE-T1WI."""
    norm = re.sub(r"[\s_]+", "-", str(name).strip().upper())
    for canonical, aliases in SEQUENCE_ALIASES.items():
        if norm in aliases or norm.replace("-", "") in {a.replace("-", "") for a in aliases}:
            return canonical
    return None


def labels_for_sequence(sequence: str, variant: str = "intra-axial",
                        terminology: Terminology | None = None) -> list[Label]:
    """The labels drawn on ``sequence`` (a study's sequence name; see :func:`canonical_sequence`)."""
    canonical = canonical_sequence(sequence)
    return [lab for lab in label_set(variant, terminology) if lab.sequence == canonical]


def label_by_key(key: str, variant: str = "intra-axial", terminology: Terminology | None = None) -> Label | None:
    """The label whose content key is ``key`` (e.g. "whole-tumour"), or None."""
    return next((lab for lab in label_set(variant, terminology) if lab.key == key), None)
