"""``index.html`` of a run folder: the grade table on top, then the four executed notebooks
rendered with nbconvert (plots inline as data URIs), one page to open in any browser."""

from __future__ import annotations

import html
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

from cptlab.core.files import write_atomic
from cptlab.core.results import STEP_NOTEBOOKS, STEP_TITLES

STYLE = """body{font-family:system-ui,sans-serif;max-width:72em;margin:2em auto;padding:0 1em}
pre{background:#f6f8fa;padding:.5em;overflow-x:auto}table{border-collapse:collapse}
td,th{padding:2px 8px;text-align:left}
.jp-InputPrompt,.jp-OutputPrompt{display:none}img{max-width:100%}
section.notebook{border-top:2px solid #ddd;margin-top:2em}
nav a{margin-right:1em}"""


def write_index(run_dir: str | Path, summary: str, grades: str, points: str) -> Path:
    run = Path(run_dir)
    exporter = HTMLExporter(template_name="basic")
    parts, links = [], []
    for step, name in STEP_NOTEBOOKS.items():
        path = run / name
        if not path.is_file():
            continue
        body, _ = exporter.from_notebook_node(nbformat.read(path, as_version=4))
        anchor = f"step{step}"
        links.append(f'<a href="#{anchor}">{step}. {html.escape(STEP_TITLES[step])}</a>')
        parts.append(
            f'<section class="notebook" id="{anchor}"><h1>Step {step}: '
            f"{html.escape(STEP_TITLES[step])}</h1>{body}</section>"
        )
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>cptlab run {html.escape(run.name)}</title>
<style>{STYLE}</style></head><body>
<h1>cptlab run <code>{html.escape(run.name)}</code></h1>
<nav>{"".join(links)}</nav>
<h2>Summary</h2><pre>{html.escape(summary)}</pre>
<h2>Checks of the results files</h2><pre>{html.escape(grades)}</pre>
<h2>Points from the executed notebooks</h2><pre>{html.escape(points)}</pre>
{"".join(parts)}
</body></html>
"""
    return write_atomic(run / "index.html", page)
