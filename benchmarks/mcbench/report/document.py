"""A small document model for reports: one list of blocks, rendered as Markdown and HTML.

Tables render to Markdown, LaTeX and HTML from the same cells (so the numbers agree in
every format): LaTeX and HTML through pandas' Styler, the HTML page through a jinja2
template. The page embeds its figures as base64 and needs no other file.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import pandas as pd
from markupsafe import Markup
from pandas.io.formats.style import Styler


@dataclass
class Cell:
    """One table cell; `best` marks the best entry of its column (or row)."""

    text: str
    best: bool = False


@dataclass
class Table:
    """A table with a file stem `name`, shown cells, and the numbers behind them (CSV)."""

    name: str
    title: str
    header: list[str]
    rows: list[list[Cell]]
    caption: str = ""
    data: pd.DataFrame | None = None
    # Optional spanning header above `header`: (label, number of columns).
    groups: list[tuple[str, int]] | None = None

    def markdown(self) -> str:
        # Hand-written: pandas' to_markdown needs `tabulate`, not a dependency, and this
        # is a dozen lines (bold cells and group prefixes included).
        header = self.header
        if self.groups:  # Markdown has no spanning cells: prefix the group label
            groups = self._group_of()
            header = [f"{g}: {h}" if g else h for g, h in zip(groups, header, strict=True)]
        lines = [
            "| " + " | ".join(_md_escape(h) for h in header) + " |",
            "|" + "---|" * len(header),
        ]
        for row in self.rows:
            cells = [f"**{_md_escape(c.text)}**" if c.best else _md_escape(c.text) for c in row]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def _group_of(self) -> list[str]:
        """The group label above each column ("" without groups)."""
        if not self.groups:
            return [""] * len(self.header)
        return [g for g, span in self.groups for _ in range(span)]

    def _styler(self, escape, best: str) -> tuple[Styler, pd.DataFrame]:
        """The cells as a Styler, text escaped by `escape`, and a frame holding `best` at
        the best cells ("" elsewhere). Columns are positions: headers may repeat."""
        if self.groups:
            columns = pd.MultiIndex.from_arrays([self._group_of(), range(len(self.header))])
        else:
            columns = pd.RangeIndex(len(self.header))
        text = pd.DataFrame([[c.text for c in r] for r in self.rows], columns=columns, dtype=object)
        marks = pd.DataFrame(
            [[best if c.best else "" for c in r] for r in self.rows], columns=columns, dtype=object
        )
        uuid = re.sub(r"\W", "_", self.name)  # stable ids: the same page on a re-run
        styler = Styler(text, uuid=uuid, cell_ids=False).hide(axis="index").format(escape)
        if self.groups:
            styler = styler.format_index(escape, axis=1, level=0)
        level = 1 if self.groups else None
        styler = styler.relabel_index([escape(h) for h in self.header], axis=1, level=level)
        return styler, marks

    def latex(self) -> str:
        styler, marks = self._styler(latex_escape, "textbf: --rwrap;")
        body = styler.apply(lambda _: marks, axis=None).to_latex(
            column_format="l" + "r" * (len(self.header) - 1),
            position="t",
            position_float="centering",
            hrules=True,
            label=f"tab:{self.name}",
            caption=latex_escape(self.caption or self.title),
            multicol_align="c",
            environment="table",
        )
        return f"% {_ascii(self.title)} (needs \\usepackage{{booktabs}})\n{body}"

    def html(self) -> str:
        styler, marks = self._styler(html.escape, "best")
        styler = styler.set_td_classes(marks)
        if self.caption:
            styler = styler.set_caption(html.escape(self.caption))
        return styler.to_html()

    def csv(self) -> str:
        """The numbers (full precision) when given, else the shown cells."""
        if self.data is not None:
            return self.data.to_csv(index=False)
        frame = pd.DataFrame([[c.text for c in r] for r in self.rows], columns=self.header)
        return frame.to_csv(index=False)

    def write(self, folder: Path) -> list[Path]:
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for ext, text in (
            ("md", self.markdown() + "\n"),
            ("tex", self.latex()),
            ("csv", self.csv()),
        ):
            path = folder / f"{self.name}.{ext}"
            path.write_text(text)
            paths.append(path)
        return paths


def cells(values: list[str]) -> list[Cell]:
    return [Cell(str(v)) for v in values]


def frame_table(name: str, title: str, df: pd.DataFrame, caption: str = "") -> Table:
    """A plain table of a DataFrame's values as text (no best marks)."""
    rows = [cells(["" if pd.isna(v) else _plain(v) for v in r]) for r in df.itertuples(index=False)]
    return Table(name, title, [str(c) for c in df.columns], rows, caption, data=df)


def _plain(v) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


@dataclass
class Figure:
    """A saved figure; `metrics` names the metrics it plots (empty for other figures)."""

    title: str
    png: Path
    caption: str = ""
    pdf: Path | None = None
    metrics: tuple[str, ...] = ()


@dataclass
class Document:
    """Blocks in order: ("h", (level, text)), ("p", text), ("table", Table),
    ("figure", Figure), ("code", text)."""

    title: str
    blocks: list[tuple[str, object]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", (level, text)))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, table: Table) -> None:
        self.blocks.append(("table", table))

    def figure(self, figure: Figure) -> None:
        self.blocks.append(("figure", figure))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    def markdown(self, base: Path) -> str:
        out = [f"# {self.title}", ""]
        for kind, obj in self.blocks:
            if kind == "h":
                level, text = obj  # type: ignore[misc]
                out += [f"{'#' * level} {text}", ""]
            elif kind == "p":
                out += [str(obj), ""]
            elif kind == "table":
                t: Table = obj  # type: ignore[assignment]
                if t.caption:
                    out += [f"*{t.caption}*", ""]
                out += [t.markdown(), ""]
            elif kind == "figure":
                f: Figure = obj  # type: ignore[assignment]
                rel = _relative(f.png, base)
                out += [f"![{f.title}]({rel})", "", f"**{f.title}.** {f.caption}".strip(), ""]
            elif kind == "code":
                out += ["```", str(obj).rstrip("\n"), "```", ""]
        return "\n".join(out).rstrip("\n") + "\n"

    def html(self) -> str:
        blocks = []
        for kind, obj in self.blocks:
            if kind == "table":
                blocks.append({"kind": kind, "html": Markup(obj.html())})  # type: ignore[union-attr]
            elif kind == "figure":
                f: Figure = obj  # type: ignore[assignment]
                data = base64.b64encode(f.png.read_bytes()).decode("ascii")
                text = f"**{f.title}.** {f.caption}".strip()
                blocks.append({"kind": kind, "title": f.title, "data": data, "text": text})
            elif kind == "h":
                level, text = obj  # type: ignore[misc]
                blocks.append({"kind": kind, "level": level, "text": text})
            else:
                blocks.append({"kind": kind, "text": str(obj)})
        return _PAGE.render(title=self.title, blocks=blocks)


def _inline(text: str) -> Markup:
    """HTML-escape, then render `code` and **bold** as Markdown does."""
    # Hand-written: the two Markdown spans the report writes; a Markdown library (none
    # installed) would be a dependency for two regular expressions.
    s = html.escape(text)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    return Markup(re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", s))


_ENV = jinja2.Environment(autoescape=True, keep_trailing_newline=True)
_ENV.filters["inline"] = _inline
_PAGE = _ENV.from_string(
    """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{{ title }}</title>
<style>
body { font-family: sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.4; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
caption { caption-side: top; text-align: left; font-style: italic; padding-bottom: 0.3em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
thead tr:not(:last-child) th { text-align: center; }
td:first-child, th:first-child { text-align: left; }
td.best { font-weight: bold; background: #eaf5ea; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { font-style: italic; font-size: 0.9em; }
pre { background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
code { background: #f3f3f3; padding: 0 0.2em; }
</style>
</head>
<body data-js-errors="">
<h1>{{ title }}</h1>
{% for b in blocks -%}
{% if b.kind == "h" -%}
<h{{ b.level }}>{{ b.text | inline }}</h{{ b.level }}>
{% elif b.kind == "p" -%}
<p>{{ b.text | inline }}</p>
{% elif b.kind == "table" -%}
{{ b.html }}
{% elif b.kind == "figure" -%}
<figure><img alt="{{ b.title }}" src="data:image/png;base64,{{ b.data }}">
<figcaption>{{ b.text | inline }}</figcaption></figure>
{% elif b.kind == "code" -%}
<pre>{{ b.text }}</pre>
{% endif -%}
{% endfor -%}
<script>
// Read back by check_report_html: figures decoded and script errors, after load.
window.addEventListener("error", function (e) {
  document.body.dataset.jsErrors += (e.message || "error") + "; ";
});
window.addEventListener("load", function () {
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
  document.body.dataset.imagesLoaded = ok;
  document.body.dataset.imagesBroken = imgs.length - ok;
});
</script>
</body>
</html>
"""
)


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


# Hand-written: pandas escapes only TeX's special characters; pdflatex also needs the
# report's Unicode (±, arrows, dashes) spelt in ASCII.
_LATEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "≤": r"$\le$",
    "≥": r"$\ge$",
    "—": "--",
    "↑": r"$\uparrow$",
    "↓": r"$\downarrow$",
    "·": r"$\cdot$",
    "é": r"\'e",
}


def _ascii(text: str) -> str:
    """pdflatex reads ASCII safely: anything else left over becomes '?'."""
    return text.encode("ascii", "replace").decode("ascii")


def latex_escape(text: str) -> str:
    return _ascii("".join(_LATEX.get(ch, ch) for ch in str(text)))


def _relative(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return path.as_posix()
