"""A small document model for reports: one list of blocks, rendered as Markdown and HTML.

Tables render to Markdown, LaTeX and HTML from the same cells (so the numbers agree in
every format); the HTML page embeds its figures as base64 and needs no other file.
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd


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
        header = self.header
        if self.groups:  # Markdown has no spanning cells: prefix the group label
            labels = [g for g, span in self.groups for _ in range(span)]
            header = [f"{g}: {h}" if g else h for g, h in zip(labels, header, strict=True)]
        lines = [
            "| " + " | ".join(_md_escape(h) for h in header) + " |",
            "|" + "---|" * len(header),
        ]
        for row in self.rows:
            cells = [f"**{_md_escape(c.text)}**" if c.best else _md_escape(c.text) for c in row]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def latex(self) -> str:
        ncol = len(self.header)
        lines = [
            "% " + _ascii(self.title) + " (needs \\usepackage{booktabs})",
            "\\begin{table}[t]",
            "\\centering",
            f"\\caption{{{latex_escape(self.caption or self.title)}}}",
            f"\\label{{tab:{self.name}}}",
            "\\begin{tabular}{l" + "r" * (ncol - 1) + "}",
            "\\toprule",
        ]
        if self.groups:
            parts, rules, col = [], [], 1
            for label, span in self.groups:
                if label:
                    parts.append(f"\\multicolumn{{{span}}}{{c}}{{{latex_escape(label)}}}")
                    rules.append(f"\\cmidrule(lr){{{col}-{col + span - 1}}}")
                else:
                    parts.extend([""] * span)
                col += span
            lines.append(" & ".join(parts) + " \\\\")
            lines.append(" ".join(rules))
        lines.append(" & ".join(latex_escape(h) for h in self.header) + " \\\\")
        lines.append("\\midrule")
        for row in self.rows:
            cells = [
                f"\\textbf{{{latex_escape(c.text)}}}" if c.best else latex_escape(c.text)
                for c in row
            ]
            lines.append(" & ".join(cells) + " \\\\")
        lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
        return "\n".join(lines) + "\n"

    def html(self) -> str:
        out = ["<table>"]
        if self.caption:
            out.append(f"<caption>{html.escape(self.caption)}</caption>")
        out.append("<thead>")
        if self.groups:
            out.append(
                "<tr>"
                + "".join(
                    f'<th colspan="{span}" class="group">{html.escape(label)}</th>'
                    for label, span in self.groups
                )
                + "</tr>"
            )
        out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in self.header) + "</tr>")
        out.append("</thead><tbody>")
        for row in self.rows:
            tds = [
                f'<td class="best">{html.escape(c.text)}</td>'
                if c.best
                else f"<td>{html.escape(c.text)}</td>"
                for c in row
            ]
            out.append("<tr>" + "".join(tds) + "</tr>")
        out.append("</tbody></table>")
        return "\n".join(out)

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
    title: str
    png: Path
    caption: str = ""
    pdf: Path | None = None


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
        body = [f"<h1>{html.escape(self.title)}</h1>"]
        for kind, obj in self.blocks:
            if kind == "h":
                level, text = obj  # type: ignore[misc]
                body.append(f"<h{level}>{_inline(text)}</h{level}>")
            elif kind == "p":
                body.append(f"<p>{_inline(str(obj))}</p>")
            elif kind == "table":
                body.append(obj.html())  # type: ignore[union-attr]
            elif kind == "figure":
                f: Figure = obj  # type: ignore[assignment]
                data = base64.b64encode(f.png.read_bytes()).decode("ascii")
                text = _inline(f"**{f.title}.** {f.caption}".strip())
                cap = f"<figcaption>{text}</figcaption>"
                body.append(
                    f'<figure><img alt="{html.escape(f.title)}" '
                    f'src="data:image/png;base64,{data}">{cap}</figure>'
                )
            elif kind == "code":
                body.append(f"<pre>{html.escape(str(obj))}</pre>")
        return _PAGE.format(title=html.escape(self.title), body="\n".join(body))


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.4; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
caption {{ caption-side: top; text-align: left; font-style: italic; padding-bottom: 0.3em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
th {{ background: #f3f3f3; }}
th.group {{ text-align: center; }}
td:first-child, th:first-child {{ text-align: left; }}
td.best {{ font-weight: bold; background: #eaf5ea; }}
figure {{ margin: 1em 0 2em; }}
figure img {{ max-width: 100%; border: 1px solid #eee; }}
figcaption {{ font-style: italic; font-size: 0.9em; }}
pre {{ background: #f7f7f7; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }}
code {{ background: #f3f3f3; padding: 0 0.2em; }}
</style>
</head>
<body data-js-errors="">
{body}
<script>
// Read back by check_report_html: figures decoded and script errors, after load.
window.addEventListener("error", function (e) {{
  document.body.dataset.jsErrors += (e.message || "error") + "; ";
}});
window.addEventListener("load", function () {{
  var imgs = Array.prototype.slice.call(document.images);
  var ok = imgs.filter(function (i) {{ return i.complete && i.naturalWidth > 0; }}).length;
  document.body.dataset.imagesLoaded = ok;
  document.body.dataset.imagesBroken = imgs.length - ok;
}});
</script>
</body>
</html>
"""


def _inline(text: str) -> str:
    """HTML-escape, then render `code` and **bold** as Markdown does."""
    s = html.escape(text)
    s = re.sub(r"`([^`]+)`", r"<code>\1</code>", s)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", s)


def _md_escape(text: str) -> str:
    return str(text).replace("|", "\\|")


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
