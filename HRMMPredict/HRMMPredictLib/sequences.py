"""The three MR sequences of an HRMM case: their keys and the labels people read.

The keys name the sequences everywhere: the cohort manifest's image columns, ``hrmm predict
--t1/--t2/--fst2``, the prefixes of feature columns (``t2_original_firstorder_Mean``), the
bundle manifest's ``sequences`` and, in this order, the three channels of the deep model's
2.5D input. The labels (T1WI, T2WI, FS-T2WI) are what messages, previews and reports show.

Only the standard library is used here (Slicer's start-up imports this module).
"""

from __future__ import annotations

#: Sequence keys, in the deep model's channel order.
SEQUENCES = ("t1", "t2", "fst2")

#: Key -> label (T1-weighted, T2-weighted and fat-suppressed T2-weighted images).
SEQUENCE_LABELS = {"t1": "T1WI", "t2": "T2WI", "fst2": "FS-T2WI"}

#: The labels in channel order (names of the 2.5D stack's channels).
CHANNEL_LABELS = tuple(SEQUENCE_LABELS[s] for s in SEQUENCES)


def sequence_label(key: str) -> str:
    """The label of a sequence key (``t2`` -> ``T2WI``); an unknown key is returned as is."""
    return SEQUENCE_LABELS.get(key, key)
