"""The report page: ``<results>/report/index.md`` and ``index.html`` linking every table and figure of a results
store, with the commands and package versions that produced them.

The HTML is a minimal self-contained page (no template engine): the Markdown tables (leaderboards, beyond
accuracy, ours vs the paper, all in % with two decimals) are shown inline (converted cell by cell, bold kept),
figures are ``<img>`` tags on the PNGs (with a link to the PDF). Both pages open with a table of contents, show the
user's own results before the paper's, and end with the package versions of this process and, separately, every
distinct set of versions found in the run records (``result.json``'s ``versions``), so runs produced by other
installs are visible. Long commands wrap and wide tables scroll inside the page, so that the page is never wider
than the window (checked in a headless browser by tests/test_report_page.py).
"""

from __future__ import annotations

import datetime as dt
import html
import os
import platform
import re
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pandas as pd

from ..atomic import write_bytes
from .render import markdown_table

VERSIONED = (
    "transferbench",
    "torch",
    "torchvision",
    "numpy",
    "pandas",
    "scipy",
    "matplotlib",
    "seaborn",
    "pyarrow",
    "orjson",
)
STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;font-size:0.85em;margin:0.5em 0}td,th{border:1px solid #ccc;"
    "padding:2px 6px;text-align:right}th{background:#f3f3f3}code,pre{background:#f6f6f6;padding:1px 4px}"
    "pre{white-space:pre-wrap;overflow-wrap:anywhere;padding:6px 8px;line-height:1.5}pre code{padding:0}"
    # (a long command wraps instead of widening the page)
    "td:first-child,th:first-child{text-align:left}"
    ".scroll{overflow-x:auto;max-width:100%}"  # a table wider than the page scrolls inside it
    "nav ul{margin:0.2em 0}nav li{margin:0.1em 0}ul.files{columns:3 20em}"
    "img{max-width:100%;border:1px solid #eee;margin:0.5em 0}"
)


def versions() -> dict[str, str]:
    """Installed versions of the packages that shape the numbers and figures (read from package metadata, so
    torch is not imported for it)."""
    out = {"python": platform.python_version()}
    for name in VERSIONED:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


@dataclass
class Section:
    """One part of the page: the command that produced it, the files, and optional CSV tables to show inline."""

    title: str
    command: str
    files: list[Path] = field(default_factory=list)
    tables: list[Path] = field(default_factory=list)
    text: str = ""
    inline: list[Path] = field(default_factory=list)  # Markdown files (leaderboards) shown inline in the HTML


def run_versions(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per distinct set of package versions in our run records (column ``versions`` of collect's runs),
    one column per package, and ``runs``: how many records have that set; the most common first."""
    if "versions" not in runs.columns:
        return pd.DataFrame(columns=["runs"])
    texts = runs.loc[runs["source"] != "paper", "versions"] if "source" in runs.columns else runs["versions"]
    counts = texts.fillna("").value_counts(sort=False)
    rows = []
    for text, n in counts.items():
        row = dict(part.split("=", 1) for part in str(text).split() if "=" in part) if text else {}
        rows.append({**row, "runs": int(n)})
    frame = pd.DataFrame(rows).fillna("—") if rows else pd.DataFrame(columns=["runs"])
    packages = sorted(c for c in frame.columns if c != "runs")
    frame = frame[["runs", *packages]]
    return frame.sort_values("runs", ascending=False, kind="stable").reset_index(drop=True)


def _versions_markdown(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_no run records_"
    if list(frame.columns) == ["runs"]:
        return f"_{int(frame['runs'].sum())} run record(s) without versions_"
    return markdown_table(list(frame.columns), frame.itertuples(index=False), left=())


_BOLD = re.compile(r"\*\*(.+?)\*\*")


def markdown_html(text: str) -> str:
    """The Markdown this package writes (tables, paragraphs, ``**bold**``, ``_italics_``) as HTML."""
    esc = html.escape
    out, table = [], []

    def inline(cell: str) -> str:
        return _BOLD.sub(r"<b>\1</b>", esc(cell.replace("\\|", "|")))

    def flush() -> None:
        if not table:
            return
        head, body = table[0], [r for r in table[1:] if not re.fullmatch(r"[:\-| ]+", "|".join(r))]
        out.append("<div class='scroll'><table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>"
                   + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in body)
                   + "</table></div>")
        table.clear()

    for line in text.splitlines():
        if line.startswith("|"):
            table.append([c.strip() for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
            continue
        flush()
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            level = min(len(line) - len(line.lstrip("#")) + 2, 6)
            out.append(f"<h{level}>{inline(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("_") and line.endswith("_"):
            out.append(f"<p><em>{inline(line[1:-1])}</em></p>")
        else:
            out.append(f"<p>{inline(line)}</p>")
    flush()
    return "\n".join(out)


def _rel_from(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def source_rank(path: Path) -> int:
    """Where a file of the report goes: the user's own results first (0), then ours vs the paper's (1), then the
    paper's alone (2), whatever the architecture's name."""
    stem = path.stem
    return 1 if "_ours_vs_paper" in stem else 2 if stem.endswith("_paper") or "_paper_" in stem else 0


def _own_first(paths: list[Path]) -> list[Path]:
    return sorted(paths, key=source_rank)  # stable: the order within each rank is kept


def anchor(title: str) -> str:
    """The id of a section heading, as GitHub's Markdown renderer makes it (lower case, spaces to dashes)."""
    return re.sub(r"[^a-z0-9 _-]", "", title.lower()).strip().replace(" ", "-")


def _contents(sections: list[Section], record_versions: pd.DataFrame | None) -> list[tuple[str, list[str]]]:
    """(section title, the names of its inline tables) for the table of contents, versions last."""
    items = [(sec.title, [doc.stem for doc in _own_first(sec.inline)]) for sec in sections]
    return [*items, ("Versions", ["Versions in the run records"] if record_versions is not None else [])]


def markdown(title: str, command: str, sections: list[Section], out_dir: Path, summary: str = "",
             record_versions: pd.DataFrame | None = None) -> str:
    """The page in Markdown: the command, a table of contents, each section (own results before the paper's),
    then the package versions."""
    lines = [
        f"# {title}",
        "",
        f"Generated {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')} by:",
        "",
        "```bash",
        command,
        "```",
        "",
    ]
    if summary:
        lines += [summary, ""]
    lines += ["## Contents", ""]
    lines += [f"- [{name}](#{anchor(name)})" for name, _ in _contents(sections, record_versions)]
    lines.append("")
    for sec in sections:
        lines += [f"## {sec.title}", "", "```bash", sec.command, "```", ""]
        if sec.text:
            lines += [sec.text, ""]
        for path in _own_first(sec.files):
            link = _rel_from(path, out_dir)
            lines.append(f"![{path.stem}]({link})" if path.suffix == ".png" else f"- [{path.name}]({link})")
        if not sec.files:
            lines.append("_nothing written: see the command's log_")
        lines.append("")
    lines += ["## Versions", "", "| package | version |", "|:--|:--|",
              *(f"| {k} | {v} |" for k, v in versions().items()), ""]
    if record_versions is not None:
        lines += ["### Versions in the run records", "", _versions_markdown(record_versions), ""]
    return "\n".join(lines)


def _table_html(path: Path) -> str:
    """A CSV file as an HTML table that scrolls inside the page when it is wider than the page."""
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return ""
    table = frame.to_html(index=False, na_rep="—", float_format=lambda x: f"{x:.4g}", border=0)
    return f"<div class='scroll'>{table}</div>"


def _contents_html(sections: list[Section], record_versions: pd.DataFrame | None) -> str:
    esc = html.escape
    items = []
    for name, subs in _contents(sections, record_versions):
        sub = "".join(f"<li><a href='#{anchor(s)}'>{esc(s)}</a></li>" for s in subs)
        items.append(f"<li><a href='#{anchor(name)}'>{esc(name)}</a>" + (f"<ul>{sub}</ul>" if sub else "") + "</li>")
    return "<nav><h2 id='contents'>Contents</h2><ul>" + "".join(items) + "</ul></nav>"


def _section_html(sec: Section, out_dir: Path) -> list[str]:
    esc = html.escape
    parts = [f"<h2 id='{anchor(sec.title)}'>{esc(sec.title)}</h2>", f"<pre><code>{esc(sec.command)}</code></pre>"]
    docs = []
    for doc in _own_first(sec.inline):
        try:
            docs.append((doc, doc.read_text()))
        except OSError:
            continue
    if sec.text and not any(sec.text in text for _, text in docs):  # an inline table that says it already
        parts.append(f"<p>{esc(sec.text)}</p>")
    for table in sec.tables:
        parts += [f"<h3>{esc(table.name)}</h3>", _table_html(table)]
    for doc, text in docs:
        parts += [f"<h3 id='{anchor(doc.stem)}'>{esc(doc.stem)}</h3>", markdown_html(text)]
    links = []
    for path in _own_first(sec.files):
        link = esc(_rel_from(path, out_dir))
        if path.suffix == ".png":
            parts.append(
                f"<figure><img src='{link}' alt='{esc(path.stem)}'><figcaption>{esc(path.stem)} "
                f"(<a href='{link[:-4]}.pdf'>PDF</a>)</figcaption></figure>"
            )
        elif path.suffix != ".pdf":
            links.append(f"<li><a href='{link}'>{esc(path.name)}</a></li>")
    if links:
        parts.append("<ul class='files'>" + "".join(links) + "</ul>")
    if not sec.files:
        parts.append("<p><em>nothing written: see the command's log</em></p>")
    return parts


def html_page(title: str, command: str, sections: list[Section], out_dir: Path, summary: str = "",
              record_versions: pd.DataFrame | None = None) -> str:
    """The page in HTML, in the order of :func:`markdown`; long commands wrap and wide tables scroll inside the
    page, so the page itself is never wider than the window."""
    esc = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' content='width=device-width'>"
        f"<title>{esc(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p>Generated {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')} by:</p>",
        f"<pre><code>{esc(command)}</code></pre>",
    ]
    if summary:
        parts.append(f"<p>{esc(summary)}</p>")
    parts.append(_contents_html(sections, record_versions))
    for sec in sections:
        parts += _section_html(sec, out_dir)
    parts.append("<h2 id='versions'>Versions</h2>")
    parts.append(
        "<div class='scroll'><table><tr><th>package</th><th>version</th></tr>"
        + "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in versions().items())
        + "</table></div>"
    )
    if record_versions is not None:
        parts += [f"<h3 id='{anchor('Versions in the run records')}'>Versions in the run records</h3>",
                  markdown_html(_versions_markdown(record_versions))]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_index(
    out_dir: str | Path,
    command: str,
    sections: list[Section],
    title: str = "transferbench report",
    summary: str = "",
    record_versions: pd.DataFrame | None = None,
) -> list[Path]:
    """``index.md`` and ``index.html`` in ``out_dir``; links are relative, so the folder can be moved with its
    results store. ``record_versions`` (from :func:`run_versions`) adds the table of versions in the records."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [
        write_bytes(out / "index.md", markdown(title, command, sections, out, summary, record_versions).encode()),
        write_bytes(out / "index.html",
                    html_page(title, command, sections, out, summary, record_versions).encode()),
    ]
