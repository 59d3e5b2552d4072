"""The report page: ``<results>/report/index.md`` and ``index.html`` linking every table and figure of a results
store, with the commands and package versions that produced them.

The HTML is a minimal self-contained page (no template engine): CSV tables are re-rendered with
``pandas.DataFrame.to_html``, the leaderboards' Markdown tables are shown inline (converted cell by cell, bold
kept), figures are ``<img>`` tags on the PNGs (with a link to the PDF). Both pages list the package versions of
this process and, separately, every distinct set of versions found in the run records (``result.json``'s
``versions``), so runs produced by other installs are visible.
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
        out.append("<table><tr>" + "".join(f"<th>{inline(c)}</th>" for c in head) + "</tr>"
                   + "".join("<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in body)
                   + "</table>")
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


def markdown(title: str, command: str, sections: list[Section], out_dir: Path, summary: str = "",
             record_versions: pd.DataFrame | None = None) -> str:
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
    lines += ["| package | version |", "|:--|:--|", *(f"| {k} | {v} |" for k, v in versions().items()), ""]
    if record_versions is not None:
        lines += ["## Versions in the run records", "", _versions_markdown(record_versions), ""]
    for sec in sections:
        lines += [f"## {sec.title}", "", "```bash", sec.command, "```", ""]
        if sec.text:
            lines += [sec.text, ""]
        for path in sec.files:
            link = _rel_from(path, out_dir)
            lines.append(f"![{path.stem}]({link})" if path.suffix == ".png" else f"- [{path.name}]({link})")
        if not sec.files:
            lines.append("_nothing written: see the command's log_")
        lines.append("")
    return "\n".join(lines)


def _table_html(path: Path) -> str:
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError, pd.errors.EmptyDataError):
        return ""
    return frame.to_html(index=False, na_rep="—", float_format=lambda x: f"{x:.4g}", border=0)


def html_page(title: str, command: str, sections: list[Section], out_dir: Path, summary: str = "",
              record_versions: pd.DataFrame | None = None) -> str:
    esc = html.escape
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
        f"<style>{STYLE}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p>Generated {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')} by:</p>",
        f"<pre><code>{esc(command)}</code></pre>",
    ]
    if summary:
        parts.append(f"<p>{esc(summary)}</p>")
    parts.append(
        "<table><tr><th>package</th><th>version</th></tr>"
        + "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in versions().items())
        + "</table>"
    )
    if record_versions is not None:
        parts += ["<h2>Versions in the run records</h2>", markdown_html(_versions_markdown(record_versions))]
    for sec in sections:
        parts += [f"<h2>{esc(sec.title)}</h2>", f"<pre><code>{esc(sec.command)}</code></pre>"]
        if sec.text:
            parts.append(f"<p>{esc(sec.text)}</p>")
        for table in sec.tables:
            parts += [f"<h3>{esc(table.name)}</h3>", _table_html(table)]
        for doc in sec.inline:
            try:
                text = doc.read_text()
            except OSError:
                continue
            parts += [f"<h3>{esc(doc.stem)}</h3>", markdown_html(text)]
        links = []
        for path in sec.files:
            link = esc(_rel_from(path, out_dir))
            if path.suffix == ".png":
                parts.append(
                    f"<figure><img src='{link}' alt='{esc(path.stem)}'><figcaption>{esc(path.stem)} "
                    f"(<a href='{link[:-4]}.pdf'>PDF</a>)</figcaption></figure>"
                )
            elif path.suffix != ".pdf":
                links.append(f"<li><a href='{link}'>{esc(path.name)}</a></li>")
        if links:
            parts.append("<ul>" + "".join(links) + "</ul>")
        if not sec.files:
            parts.append("<p><em>nothing written: see the command's log</em></p>")
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
