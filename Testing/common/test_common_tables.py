"""ClinicalMRICommonLib.tables: CSV tables with one-line errors that say what is wrong."""

from __future__ import annotations

import io
import zipfile

import pytest

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.tables import read_csv_table, read_feature_table


def _csv(tmp_path, text, name="t.csv", encoding="utf-8"):
    p = tmp_path / name
    p.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return p


@pytest.mark.parametrize("delim,name", [(";", "';'"), ("\t", "tab"), ("|", "'|'")])
def test_other_delimiter_said_as_such(tmp_path, delim, name):
    p = _csv(tmp_path, delim.join(["case_id", "a", "b"]) + "\n" + delim.join(["c1", "1", "2"]) + "\n")
    with pytest.raises(UserError, match=f"uses {name} as delimiter; save it comma-separated"):
        read_csv_table(p, "feature table")


def test_decimal_commas_with_semicolons(tmp_path):
    p = _csv(tmp_path, "case_id;a\nc1;1,5\n")  # the European Excel export: parses as 2 columns of junk
    with pytest.raises(UserError, match="uses ';' as delimiter"):
        read_csv_table(p, "feature table")


def test_duplicate_columns_refused_not_renamed(tmp_path):
    p = _csv(tmp_path, "case_id,x,y,x\nc1,1,2,3\n")
    with pytest.raises(UserError, match=r"duplicate column names \('x'\)"):
        read_csv_table(p, "feature table")


def test_trailing_commas_and_bom_accepted(tmp_path):
    p = _csv(tmp_path, "\ufeffcase_id,a,,\nc1,1,,\n")
    df = read_csv_table(p, "feature table")
    assert list(df.columns[:2]) == ["case_id", "a"]


def test_one_column_table_accepted(tmp_path):
    df = read_csv_table(_csv(tmp_path, "case_id\nc1\nc2\n"), "case list")
    assert df["case_id"].tolist() == ["c1", "c2"]


def test_binary_files_one_line(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("xl/workbook.xml", "<workbook/>")
    with pytest.raises(UserError, match="Excel .xlsx workbook"):
        read_csv_table(_csv(tmp_path, buf.getvalue(), "book.csv"), "feature table")
    with pytest.raises(UserError, match="UTF-16 text"):
        read_csv_table(_csv(tmp_path, "case_id,a\nc1,1\n", "u16.csv", "utf-16"), "feature table")
    with pytest.raises(UserError, match="binary data"):
        read_csv_table(_csv(tmp_path, b"case\x00id,a\n", "nul.csv"), "feature table")
    with pytest.raises(UserError, match="not UTF-8 text"):
        read_csv_table(_csv(tmp_path, b"case_id,a\nc\xe9,1\n" + b"x" * 10, "latin.csv"), "feature table")


def test_empty_and_header_only(tmp_path):
    with pytest.raises(UserError, match="is empty"):
        read_csv_table(_csv(tmp_path, "\n\n"), "feature table")
    with pytest.raises(UserError, match="no data rows"):
        read_csv_table(_csv(tmp_path, "case_id,a\n"), "feature table")
    with pytest.raises(UserError, match="not found"):
        read_csv_table(tmp_path / "none.csv", "feature table")


def test_feature_table(tmp_path):
    p = _csv(tmp_path, "case_id,a\nc1,1\nc2,2\n")
    assert read_feature_table(p, "case_id")["a"].tolist() == [1, 2]
    with pytest.raises(UserError, match="id column 'lesion' not found"):
        read_feature_table(p, "lesion")
    with pytest.raises(UserError, match="case id 'c1' appears more than once"):
        read_feature_table(_csv(tmp_path, "case_id,a\nc1,1\nc1,2\n", "d.csv"), "case_id")
