"""ClinicalMRICommonLib.report: the one template and stylesheet of the extension's HTML
reports. Every value is autoescaped, figures are embedded PNG, the page is offline, the
status banner, notes, folded details and columns render, bad input is refused in one line."""

from __future__ import annotations

import base64
import re

import pytest

from ClinicalMRICommonLib.errors import UserError
from ClinicalMRICommonLib.report import RESOURCES, Cell, Report, png_base64


def _png() -> bytes:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1, 1), dpi=20)
    fig.subplots().plot([0, 1], [0, 1])
    return base64.b64decode(png_base64(fig))


def test_page_has_every_block_and_is_offline(tmp_path):
    rep = Report("Dataset quality report", subtitle="Dataset: /data/x", status=("failed", "NOT ACCEPTED: 3 errors"),
                 generated="2026-01-01 00:00 UTC")
    rep.banner("warning", "SYNTHETIC DATA")
    rep.top.warning("patient overlap", lead="Warning:")
    s = rep.section("cases", "Cases")
    s.text("Two cases.", lead="Summary.")
    s.table(["Case", "Dice", "Sensitivity"],
            [["c1", Cell(0.91234, digits=3, ci=[0.8, 0.95]), Cell(0.5, ci=[0.2, 0.8], pct=True, sub="5/10")],
             ["c2", None, Cell(float("nan"), digits=2)]], num_cols=[1, 2])
    s.figure(_png(), alt="Overlay", caption="Reference and test")
    d = s.details("All checks (2)")
    d.bullets(["first", "second"])
    left, right = s.columns(2)
    left.kv({"a": {"b": 1, "c": [1, 2]}})
    right.definitions({"Dice": "2|A∩B|/(|A|+|B|)"})
    out = rep.write(tmp_path / "report.html")
    page = out.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert not re.search(r"https?://", page) and "<script" not in page.lower() and "<link" not in page.lower()
    assert 'class="status status-failed">NOT ACCEPTED: 3 errors<' in page
    assert 'class="status status-warning">SYNTHETIC DATA<' in page
    assert '<a href="#cases">Cases</a>' in page and '<section id="cases">' in page
    assert ">0.912 <span class=\"ci\">(0.800–0.950)</span>" in page
    assert "50.0% <span class=\"ci\">(20.0–80.0)</span><span class=\"cnt\">5/10</span>" in page
    assert page.count(">–</td>") == 2  # None and NaN shown as a dash
    assert "<details><summary>All checks (2)</summary>" in page and "<li>second</li>" in page
    assert "<code>a.b</code>" in page and "<code>[1, 2]</code>" in page
    b64 = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="Overlay">', page)
    assert len(b64) == 1 and base64.b64decode(b64[0])[:8] == b"\x89PNG\r\n\x1a\n"
    css = (RESOURCES / "report.css").read_text(encoding="utf-8")
    assert css.strip() in page  # the one stylesheet, inlined unescaped
    assert (out.stat().st_mode & 0o777) != 0o600  # shareable, not the temp file's private mode


def test_every_value_is_escaped(tmp_path):
    evil = '<script>alert("x")</script>'
    rep = Report(evil, subtitle=evil)
    rep.banner("info", evil)
    s = rep.section("s", evil)
    s.text(evil, lead=evil)
    s.note(evil)
    s.table([evil], [[Cell(evil, code=True, title=evil, sub=evil)]])
    s.kv({evil: evil})
    s.figure(_png(), alt=evil, caption=evil)
    page = rep.render()
    assert "<script" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page


def test_bad_input_is_refused():
    rep = Report("t")
    s = rep.section("a", "A")
    with pytest.raises(UserError, match="used twice"):
        rep.section("a", "again")
    with pytest.raises(UserError, match="2 cells but there are 1 headers"):
        s.table(["one"], [["x", "y"]])
    with pytest.raises(UserError, match="not a PNG"):
        s.figure(b"GIF89a....", alt="x")
    with pytest.raises(UserError, match="kind must be one of"):
        s.note("x", kind="danger")
    with pytest.raises(UserError, match="colour"):
        s.table(["x"], [[Cell("v", color="red;background:url(x)")]])
    rep.status = ("green", "ok")
    with pytest.raises(UserError, match="status must be one of"):
        rep.render()
