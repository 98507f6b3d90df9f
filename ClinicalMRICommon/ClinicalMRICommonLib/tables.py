"""Reading the CSV tables the workflows take (feature tables, training case lists) with
one-line errors; shared by the command line and the Slicer panel."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ClinicalMRICommonLib.errors import UserError


def read_csv_table(path: str | os.PathLike, what: str) -> pd.DataFrame:
    """Read a CSV file; UserError naming the file for a missing, unreadable or empty one."""
    p = Path(path)
    if str(path) in ("", ".") or not p.exists():
        raise UserError(f"{what} file not found: {p}")
    if p.is_dir():
        raise UserError(f"{what} path is a folder, expected a CSV file: {p}")
    try:
        df = pd.read_csv(p)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{what} file {p} could not be read as CSV ({msg[:120]})") from None
    if df.empty:
        raise UserError(f"{what} file {p} has no data rows")
    return df


def read_feature_table(path: str | os.PathLike, id_column: str, what: str = "feature table") -> pd.DataFrame:
    """A feature table (one row per case, one column per feature) indexed by ``id_column``."""
    df = read_csv_table(path, what)
    if id_column not in df.columns:
        raise UserError(f"id column {id_column!r} not found in {what} file {path}; columns start with: "
                        f"{', '.join(map(str, df.columns[:8]))}")
    if df[id_column].duplicated().any():
        dup = df.loc[df[id_column].duplicated(), id_column].iloc[0]
        raise UserError(f"case id {dup!r} appears more than once in {what} file {path}")
    return df.set_index(id_column)
