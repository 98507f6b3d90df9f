"""Guess which loaded series is the sagittal T1WI, T2WI and fat-suppressed T2WI from their
series descriptions or node names (e.g. "5: t1_tse_sag", "T2 TSE SAG", "t2_tirm_sag",
"STIR SAG", "T2 FS", "t2_tse_fs_sag", "T2 SPAIR"); no Qt, no MRML.

Rules (scanner vendors name series freely; these cover the common Siemens, GE and Philips
habits for spine MRI):

- fat suppression: "fs", "fat sat"/"fatsat"/"fat-sat", "fat sup(pressed)", "spair", "spir",
  "stir", "tirm" (turbo inversion recovery magnitude = Siemens STIR), "chess", "dixon ...
  water"/"_w". STIR/TIRM count as FS-T2WI even without "t2" (they are T2-weighted).
- weighting: a "t1"/"t2" token ("t1", "t1w", "t1wi", "t1_tse", "T2W_TSE"...); "fse"/"tse"
  are spin-echo techniques, not fat suppression.
- penalties: other planes ("ax", "tra", "cor"), contrast ("+c", "post", "gd", "contrast"),
  localisers ("loc", "localizer", "scout", "survey"), derived maps ("adc", "dwi", "map",
  "mpr", "sub"), Dixon fat and in/opposed-phase images; a bonus for "sag".

Each series is scored for each role and the roles are filled best score first, one series
per role; a role without a plausible series stays empty (None) rather than being filled
with a bad guess.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Hashable, Iterable, Mapping

from HRMMPredictLib.sequences import SEQUENCES  # the roles: one series per sequence key
MIN_SCORE = 5  # below: no guess (e.g. an axial series, a Dixon fat image)

_FS = re.compile(r"(?<![a-z])fs(?![a-z])|fat[\s_\-]*(sat|sup)|spair|(?<![a-z])spir(?![a-z])|stir|tirm|chess"
                 r"|dixon.*(water|(?<![a-z])w(?![a-z]))")
_STIR = re.compile(r"stir|tirm")
_T1 = re.compile(r"(?<![a-z0-9])t1(?![0-9])")
_T2 = re.compile(r"(?<![a-z0-9])t2(?![0-9])|(?<![a-z0-9])t2\*")
_T2STAR = re.compile(r"t2\*|t2star|(?<![a-z])(gre|swi|medic|merge)(?![a-z])")
_SAG = re.compile(r"(?<![a-z])sag")
_OTHER_PLANE = re.compile(r"(?<![a-z])(ax|axial|tra|trans|cor|coronal)(?![a-z])")
_CONTRAST = re.compile(r"\+\s*c(?![a-z])|(?<![a-z])(post|gd|gad|contrast|ce)(?![a-z])|\+gd")
_DIXON_NOT_WATER = re.compile(r"dixon.*((?<![a-z])(f|fat|opp|op|in|ip)(?![a-z]))")
_JUNK = re.compile(r"(?<![a-z])(loc|localizer|localiser|scout|survey|3[\s\-_]?plane|adc|dwi|trace|map|mpr|sub"
                   r"|calibration|cal)(?![a-z])")


@dataclass(frozen=True)
class SeriesGuess:
    """A role's chosen series and why (for the panel's tooltip)."""

    role: str
    key: Hashable
    name: str
    score: int
    reason: str


def _normalise(name: str) -> str:
    text = name.lower()
    text = re.sub(r"^\s*\d+\s*:\s*", "", text)  # Slicer's "<series number>: <description>"
    return text


def role_scores(name: str) -> dict[str, tuple[int, str]]:
    """Score (higher is better; below MIN_SCORE means "not this role") and reason for each role."""
    text = _normalise(name)
    fat_sat = bool(_FS.search(text))
    stir = bool(_STIR.search(text))
    t1 = bool(_T1.search(text))
    t2 = bool(_T2.search(text)) and not _T2STAR.search(text)
    scores: dict[str, tuple[int, str]] = {}
    base = 0
    notes = []
    if _SAG.search(text):
        base += 2
        notes.append("sagittal")
    if _OTHER_PLANE.search(text):
        base -= 6
        notes.append("not sagittal")
    if _JUNK.search(text):
        base -= 10
        notes.append("localiser or derived map")
    if _DIXON_NOT_WATER.search(text) and not fat_sat:
        base -= 10
        notes.append("Dixon fat or in/opposed-phase image")
    contrast = bool(_CONTRAST.search(text))
    if contrast:
        notes.append("after contrast")

    def entry(score: int, what: str) -> tuple[int, str]:
        return score + base, ", ".join([what] + notes)

    scores["t1"] = entry(10 - (8 if fat_sat else 0) - (12 if contrast else 0), "T1-weighted") if t1 and not t2 \
        else (0, "no T1 marker")
    scores["t2"] = entry(10 - (12 if contrast else 0), "T2-weighted") if t2 and not t1 and not fat_sat \
        else (0, "no T2 marker without fat suppression")
    if fat_sat and (t2 or stir) and not t1:
        scores["fst2"] = entry(10 - (12 if contrast else 0), "fat-suppressed T2-weighted" + (" (STIR)" if stir else ""))
    else:
        scores["fst2"] = (0, "no fat-suppressed T2 marker")
    return scores


def guess_sequences(series: Mapping[Hashable, str] | Iterable[tuple[Hashable, str]]) -> dict[str, SeriesGuess | None]:
    """``series``: key (e.g. a node ID) -> series description or name. Returns role ("t1",
    "t2", "fst2") -> :class:`SeriesGuess` or None, each series used at most once."""
    items = list(series.items()) if isinstance(series, Mapping) else list(series)
    candidates = []
    for index, (key, name) in enumerate(items):
        for role, (score, reason) in role_scores(name or "").items():
            if score >= MIN_SCORE:
                candidates.append((-score, index, role, key, name, score, reason))
    candidates.sort(key=lambda c: (c[0], c[1], SEQUENCES.index(c[2])))
    chosen: dict[str, SeriesGuess | None] = {role: None for role in SEQUENCES}
    used: set = set()
    for _neg, _index, role, key, name, score, reason in candidates:
        if chosen[role] is None and key not in used:
            chosen[role] = SeriesGuess(role, key, name, score, reason)
            used.add(key)
    return chosen
