"""The report page: ``<results>/report/index.md`` and ``index.html`` linking every table and figure of a results
store, with the commands and package versions that produced them.

The HTML is a minimal self-contained page (no template engine): Markdown tables are re-rendered from their CSVs
with ``pandas.DataFrame.to_html``, figures are ``<img>`` tags on the PNGs (with a link to the PDF).
"""

from __future__ import annotations

import datetime as dt
import html
import os
import platform
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import pandas as pd

from ..atomic import write_bytes

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


def _rel_from(path: Path, start: Path) -> str:
    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def markdown(title: str, command: str, sections: list[Section], out_dir: Path, summary: str = "") -> str:
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


def html_page(title: str, command: str, sections: list[Section], out_dir: Path, summary: str = "") -> str:
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
    for sec in sections:
        parts += [f"<h2>{esc(sec.title)}</h2>", f"<pre><code>{esc(sec.command)}</code></pre>"]
        if sec.text:
            parts.append(f"<p>{esc(sec.text)}</p>")
        for table in sec.tables:
            parts += [f"<h3>{esc(table.name)}</h3>", _table_html(table)]
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
) -> list[Path]:
    """``index.md`` and ``index.html`` in ``out_dir``; links are relative, so the folder can be moved with its
    results store."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return [
        write_bytes(out / "index.md", markdown(title, command, sections, out, summary).encode()),
        write_bytes(out / "index.html", html_page(title, command, sections, out, summary).encode()),
    ]
