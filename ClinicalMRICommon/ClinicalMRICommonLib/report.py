"""The one look of the extension's HTML reports (HRMM evaluation, AnnotationQC training
report, StrokeLesion acceptance report): a :class:`Report` of sections holding paragraphs,
notes, warnings, tables, embedded PNG figures, key/value tables, definition lists and folded
details, rendered by one Jinja2 template (``Resources/report/report.html.j2``) with one
stylesheet (``Resources/report/report.css``, inlined).

Everything a caller passes is text, never markup: the template autoescapes every value, so
a feature name such as ``<script>`` is shown, not run. Rich table cells are
:class:`Cell` objects (value, a muted CI, a count line below, bold, colour, tooltip, code
font) instead of HTML fragments. The page is one self-contained file: figures are embedded
as ``data:image/png;base64``, the CSS is inline, there are no scripts and no network
resources, so it opens offline and prints.

Use::

    from ClinicalMRICommonLib.report import Report, Cell

    rep = Report("Dataset quality report", subtitle="Dataset: /data/x",
                 status=("failed", "NOT ACCEPTED: 3 errors"))
    s = rep.section("cases", "Cases")
    s.table(["Case", "Dice"], [["c1", Cell(0.91, digits=3)]], num_cols=[1])
    s.figure(png_bytes, alt="Overlay", caption="Reference (green) and test (red)")
    d = s.details("All checks (42)")
    d.table([...], rows)
    rep.write(out / "report.html")          # atomic, mode 0666 minus umask

jinja2 and markupsafe are imported inside the functions that need them (Slicer start-up rule).
"""

from __future__ import annotations

import base64
import datetime as _dt
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .errors import UserError

__all__ = ["Cell", "Container", "Report", "render_report", "RESOURCES", "STATUS_KINDS", "png_base64"]

#: The template and stylesheet folder (listed in ClinicalMRICommon/CMakeLists.txt and the package data).
RESOURCES = Path(__file__).resolve().parent / "Resources" / "report"
TEMPLATE = "report.html.j2"
STYLESHEET = "report.css"
#: Kinds of the status banner and of notes: the colour they get.
STATUS_KINDS = ("passed", "failed", "warning", "info")

DASH = "–"


def _fmt(value: Any, digits: int | None) -> str:
    if value is None:
        return DASH
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return DASH
        return f"{value:.{digits}f}" if digits is not None else f"{value:.6g}"
    try:
        import numpy as np

        if isinstance(value, np.floating):
            return _fmt(float(value), digits)
        if isinstance(value, np.integer):
            return str(int(value))
    except ImportError:  # pragma: no cover - numpy ships with Slicer
        pass
    return str(value)


@dataclass
class Cell:
    """One table cell: ``value`` (text or number, formatted with ``digits``), an optional
    muted ``ci`` (a pair shown as "(lo–hi)", or text), a ``sub`` line below (e.g. counts
    "12/20"), ``bold``, a CSS colour ``color`` (e.g. a model's plot colour), a tooltip
    ``title``, ``code`` font, ``muted`` text; ``pct``: value and CI are fractions shown as
    percentages."""
    value: Any = None
    ci: Any = None
    sub: str | None = None
    digits: int | None = None
    bold: bool = False
    color: str | None = None
    title: str | None = None
    code: bool = False
    muted: bool = False
    pct: bool = False

    def text(self) -> str:
        if self.pct and isinstance(self.value, (int, float)) and self.value is not None:
            return f"{100 * self.value:.1f}%"
        return _fmt(self.value, self.digits)

    def ci_text(self) -> str:
        if self.ci is None:
            return ""
        if isinstance(self.ci, str):
            return self.ci
        lo, hi = self.ci
        if lo is None or hi is None:
            return ""
        if self.pct:
            return f"({100 * lo:.1f}–{100 * hi:.1f})"
        d = self.digits if self.digits is not None else 3
        sep = " to " if min(lo, hi) < 0 else "–"  # "-0.13–-0.01" reads badly
        return f"({_fmt(float(lo), d)}{sep}{_fmt(float(hi), d)})"


def png_base64(figure) -> str:
    """A figure as base64 PNG text: PNG bytes, base64 text already, or a matplotlib Figure
    (saved without the software tag so the same figure gives the same bytes)."""
    if isinstance(figure, (bytes, bytearray)):
        if not bytes(figure[:8]) == b"\x89PNG\r\n\x1a\n":
            raise UserError("report figure: the bytes given are not a PNG image")
        return base64.b64encode(bytes(figure)).decode("ascii")
    if isinstance(figure, str):
        try:
            raw = base64.b64decode(figure, validate=True)
        except ValueError:
            raise UserError("report figure: the text given is not base64-encoded PNG") from None
        return png_base64(raw)
    if hasattr(figure, "savefig"):
        import io

        buf = io.BytesIO()
        figure.savefig(buf, format="png", metadata={"Software": None})
        return base64.b64encode(buf.getvalue()).decode("ascii")
    raise UserError(f"report figure must be PNG bytes, base64 PNG text or a matplotlib Figure, "
                    f"got {type(figure).__name__}")


_COLOR = re.compile(r"^(#[0-9a-fA-F]{3,8}|[a-zA-Z]{3,20})$")


def _cell(c, num: bool) -> dict:
    if not isinstance(c, Cell):
        c = Cell(c)
    if c.color is not None and not _COLOR.match(str(c.color)):
        raise UserError(f"report cell colour must be #rgb/#rrggbb or a colour name, got {c.color!r}")
    return {"text": c.text(), "ci": c.ci_text(), "sub": c.sub, "bold": c.bold, "color": c.color,
            "title": c.title, "code": c.code, "muted": c.muted, "num": num}


def _flatten(d: Mapping, prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.extend(_flatten(v, key))
        else:
            out.append((key, v))
    return out


def _kv_value(v) -> Cell:
    if isinstance(v, (dict, list, tuple)):
        import json

        from .files import json_safe

        return Cell(json.dumps(json_safe(v)), code=True)
    return Cell(v)


class Container:
    """What a section, a folded details block and a column of a grid hold (in order)."""

    def __init__(self) -> None:
        self.blocks: list[dict] = []

    def text(self, text: str, *, muted: bool = False, lead: str | None = None) -> "Container":
        """A paragraph; ``lead``: a bold start ("Note:")."""
        self.blocks.append({"kind": "text", "text": str(text), "muted": muted, "lead": lead})
        return self

    def note(self, text: str, *, lead: str | None = None, kind: str = "info") -> "Container":
        """A boxed note; ``kind`` one of STATUS_KINDS (warning: amber, failed: red)."""
        if kind not in STATUS_KINDS:
            raise UserError(f"note kind must be one of {', '.join(STATUS_KINDS)}, got {kind!r}")
        self.blocks.append({"kind": "note", "text": str(text), "lead": lead, "status": kind})
        return self

    def warning(self, text: str, *, lead: str | None = None) -> "Container":
        return self.note(text, lead=lead, kind="warning")

    def bullets(self, items: Iterable[str]) -> "Container":
        self.blocks.append({"kind": "bullets", "entries": [str(i) for i in items]})
        return self

    def table(self, headers: Sequence[str], rows: Iterable[Sequence[Any]], *, num_cols: Iterable[int] = (),
              caption: str | None = None, compact: bool = False) -> "Container":
        """A table; cells are text, numbers or :class:`Cell`; ``num_cols``: right-aligned
        columns (0-based); ``compact``: a small table such as a 2x2 confusion table."""
        nums = set(num_cols)
        body = [[_cell(c, i in nums) for i, c in enumerate(r)] for r in rows]
        n = len(headers)
        for r in body:
            if len(r) != n:
                raise UserError(f"report table: a row has {len(r)} cells but there are {n} headers")
        self.blocks.append({"kind": "table", "headers": [{"text": str(h), "num": i in nums}
                                                         for i, h in enumerate(headers)],
                            "rows": body, "caption": caption, "compact": compact})
        return self

    def kv(self, mapping: Mapping, headers: Sequence[str] = ("Setting", "Value")) -> "Container":
        """A two-column table of a (nested: dotted keys) mapping."""
        rows = [[Cell(k, code=True), _kv_value(v)] for k, v in _flatten(mapping)]
        return self.table(list(headers), rows)

    def definitions(self, mapping: Mapping[str, str]) -> "Container":
        self.blocks.append({"kind": "definitions", "entries": [(str(k), str(v)) for k, v in mapping.items()]})
        return self

    def figure(self, png, *, alt: str, caption: str = "") -> "Container":
        """An embedded PNG (bytes, base64 text or a matplotlib Figure)."""
        self.blocks.append({"kind": "figure", "b64": png_base64(png), "alt": str(alt), "caption": str(caption)})
        return self

    def heading(self, text: str, *, detail: str | None = None) -> "Container":
        """A sub-heading (h3) with an optional muted detail."""
        self.blocks.append({"kind": "heading", "text": str(text), "detail": detail})
        return self

    def details(self, summary: str, *, open: bool = False) -> "Container":
        """A folded block (HTML ``<details>``, no script); returns its container."""
        inner = Container()
        self.blocks.append({"kind": "details", "summary": str(summary), "open": open, "inner": inner})
        return inner

    def columns(self, n: int = 2) -> list["Container"]:
        """Side-by-side columns (wrapping on narrow screens); returns one container each."""
        cols = [Container() for _ in range(max(1, int(n)))]
        self.blocks.append({"kind": "columns", "cols": cols})
        return cols


@dataclass
class _Section:
    id: str
    title: str
    body: Container


@dataclass
class Report:
    """A report page. ``status``: an optional banner ``(kind, text)`` with kind one of
    STATUS_KINDS (e.g. ``("failed", "NOT ACCEPTED")``); ``banners``: further banners such as
    "SYNTHETIC DATA"; ``meta``: muted facts under the title; ``footer``: the last line."""
    title: str
    subtitle: str = ""
    status: tuple[str, str] | None = None
    banners: list[tuple[str, str]] = field(default_factory=list)
    meta: list[str] = field(default_factory=list)
    footer: str = ""
    generated: str | None = None
    sections: list[_Section] = field(default_factory=list)
    top: Container = field(default_factory=Container)

    def section(self, id: str, title: str) -> Container:
        """A new section (listed in the page's navigation); returns its container."""
        ids = {s.id for s in self.sections}
        if id in ids:
            raise UserError(f"report section id {id!r} is used twice")
        c = Container()
        self.sections.append(_Section(str(id), str(title), c))
        return c

    def banner(self, kind: str, text: str) -> "Report":
        if kind not in STATUS_KINDS:
            raise UserError(f"banner kind must be one of {', '.join(STATUS_KINDS)}, got {kind!r}")
        self.banners.append((kind, str(text)))
        return self

    def render(self) -> str:
        return render_report(self)

    def write(self, path: str | os.PathLike, what: str = "report") -> Path:
        """Write the page atomically (readable like any new file: 0666 minus the umask)."""
        from .files import write_text_atomic

        p = Path(path)
        write_text_atomic(p, self.render(), what=what)
        mask = os.umask(0)
        os.umask(mask)
        try:
            os.chmod(p, 0o666 & ~mask)
        except OSError:
            pass
        return p


def _environment():
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(RESOURCES)),
                              autoescape=True, undefined=jinja2.StrictUndefined,
                              trim_blocks=True, lstrip_blocks=True)


def render_report(report: Report) -> str:
    """The page as one HTML string (template ``report.html.j2``, CSS inlined, every value
    autoescaped)."""
    if report.status is not None and report.status[0] not in STATUS_KINDS:
        raise UserError(f"report status must be one of {', '.join(STATUS_KINDS)}, got {report.status[0]!r}")
    try:
        env = _environment()
        tpl = env.get_template(TEMPLATE)
        css = (RESOURCES / STYLESHEET).read_text(encoding="utf-8")
    except (OSError, ImportError) as exc:
        raise UserError(f"the report template in {RESOURCES} cannot be read ({exc}); reinstall the extension") \
            from None
    generated = report.generated or _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return tpl.render(r=report, css=css, generated=generated, status_kinds=STATUS_KINDS)
