"""Reading the CSV tables the workflows take (feature tables, training case lists) with
one-line errors; shared by the command line and the Slicer panel.

:func:`read_csv_table` refuses, naming the file: a missing path or a folder; an empty file;
a binary file (an Excel workbook, an image, ...); a table saved with ``;`` / tab / ``|`` as
delimiter (said as such, instead of "all columns missing"); duplicate column names (pandas
would silently rename the second ``x`` to ``x.1``); a header without data rows. A UTF-8 byte
order mark (Excel's "CSV UTF-8") is accepted.

Identifiers are text: ``str_columns`` reads the named columns (or, with ``True``, every
column) exactly as written, so the case id ``001`` stays ``"001"`` (not the number 1),
``1e3`` stays ``"1e3"`` and ``NA`` stays ``"NA"``; an empty cell is ``""``. The other columns
are read as pandas reads them (numbers, and NaN for empty or "NA" cells).
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable
from pathlib import Path

from ClinicalMRICommonLib.errors import UserError, os_error_message

#: the strings pandas reads as NaN by default (pandas.read_csv, "na_values"), kept for the
#: columns that are not read as text
_PANDAS_NA = ["", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND", "1.#QNAN", "<NA>",
              "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"]
_OTHER_DELIMITERS = {";": "';'", "\t": "tab", "|": "'|'"}
_BINARY_SIGNATURES = {b"PK\x03\x04": "a ZIP file (an Excel .xlsx workbook?)",
                      b"\xd0\xcf\x11\xe0": "an Excel .xls / Office file",
                      b"\x1f\x8b": "a gzip-compressed file (an image?)",
                      b"%PDF": "a PDF document",
                      b"\xff\xfe": "UTF-16 text (Excel's 'Unicode text'); save it as 'CSV UTF-8'",
                      b"\xfe\xff": "UTF-16 text; save it as 'CSV UTF-8'"}


def _header_line(p: Path, what: str) -> str:
    try:
        with open(p, "rb") as f:
            head = f.read(1 << 16)
    except OSError as exc:
        raise UserError(os_error_message(exc, p, f"could not read {what}")) from None
    if not head.strip():
        raise UserError(f"{what} file {p} is empty; give a CSV file with a header row and data rows")
    for sig, kind in _BINARY_SIGNATURES.items():
        if head.startswith(sig):
            raise UserError(f"{what} file {p} is not a CSV text file: it is {kind}; save the table as CSV "
                            "(comma-separated)")
    if b"\x00" in head:
        raise UserError(f"{what} file {p} is not a CSV text file (it holds binary data); save the table as CSV "
                        "(comma-separated)")
    try:
        text = head.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        if exc.start < len(head) - 4:  # not just a character cut at the end of the sample
            raise UserError(f"{what} file {p} is not UTF-8 text (byte {exc.start}); save it as CSV in UTF-8") from None
        text = head[:exc.start].decode("utf-8-sig")
    return text.splitlines()[0] if text.splitlines() else ""


def read_csv_table(path: str | os.PathLike, what: str, *,
                   str_columns: Iterable[str] | bool = ()) -> "pd.DataFrame":  # noqa: F821
    """Read a comma-separated CSV file; UserError naming the file for a missing, unreadable,
    binary, empty, other-delimiter or duplicate-column table (see the module docstring).
    ``str_columns``: column names to read as text as written (``True``: all columns; names
    the table lacks are left to the caller to require)."""
    import pandas as pd

    p = Path(path)
    if str(path).strip() in ("", ".") or not p.exists():
        raise UserError(f"{what} file not found: {p}")
    if p.is_dir():
        raise UserError(f"{what} path is a folder, expected a CSV file: {p}")
    header = _header_line(p, what)
    columns = next(csv.reader(io.StringIO(header)), [])
    if len(columns) <= 1:
        for delim, name in _OTHER_DELIMITERS.items():
            if header.count(delim) >= 1:
                raise UserError(f"{what} file {p} uses {name} as delimiter; save it comma-separated (CSV with ',')")
    names = [c.strip() for c in columns]
    seen, dups = set(), []
    for c in names:
        if c and c in seen and c not in dups:  # empty names (trailing commas) become "Unnamed: n"
            dups.append(c)
        seen.add(c)
    if dups:
        raise UserError(f"{what} file {p} has duplicate column names ({', '.join(repr(d) for d in dups[:5])}); "
                        "give every column its own name")
    if str_columns is True:
        options = {"dtype": str, "keep_default_na": False}
    else:
        wanted = {str(c).strip() for c in str_columns}
        text = [c for c in columns if c.strip() in wanted]
        # pandas' default NA strings stay NA in the other columns; the text columns get none
        options = {"dtype": dict.fromkeys(text, str), "keep_default_na": False,
                   "na_values": {c: _PANDAS_NA for c in columns if c not in text}} if text else {}
    try:
        df = pd.read_csv(p, encoding="utf-8-sig", **options)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, ValueError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{what} file {p} could not be read as CSV ({msg[:120]})") from None
    except OSError as exc:
        raise UserError(os_error_message(exc, p, f"could not read {what}")) from None
    if df.empty:
        raise UserError(f"{what} file {p} has no data rows")
    if options:
        text_cols = list(df.columns) if str_columns is True else list(options["dtype"])
        df[text_cols] = df[text_cols].fillna("")  # cells missing from a short row
    return df


def read_feature_table(path: str | os.PathLike, id_column: str, what: str = "feature table") -> "pd.DataFrame":  # noqa: F821
    """A feature table (one row per case, one column per feature) indexed by ``id_column``."""
    df = read_csv_table(path, what)
    if id_column not in df.columns:
        raise UserError(f"id column {id_column!r} not found in {what} file {path}; columns start with: "
                        f"{', '.join(map(str, df.columns[:8]))}")
    if df[id_column].duplicated().any():
        dup = df.loc[df[id_column].duplicated(), id_column].iloc[0]
        raise UserError(f"case id {dup!r} appears more than once in {what} file {path}")
    return df.set_index(id_column)
