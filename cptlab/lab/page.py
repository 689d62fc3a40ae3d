"""``index.html`` of a run folder: the grade table on top, then the four executed notebooks
rendered with nbconvert (plots inline as data URIs), one page to open in any browser.

The notebooks' formulas are typeset offline by MathJax 2, copied beside the page from the
``jupyter-server-mathjax`` package (the files the TeX input and HTML-CSS output load, about 2 MB):
the page needs no network and the run folder can be moved or handed in whole."""

from __future__ import annotations

import html
import importlib.util
import shutil
from pathlib import Path

import nbformat
from nbconvert import HTMLExporter

from cptlab.core.files import atomic_dir, write_atomic
from cptlab.core.results import STEP_NOTEBOOKS, STEP_TITLES

STYLE = """body{font-family:system-ui,sans-serif;max-width:72em;margin:2em auto;padding:0 1em}
pre{background:#f6f8fa;padding:.5em;overflow-x:auto}table{border-collapse:collapse}
td,th{padding:2px 8px;text-align:left}
.jp-InputPrompt,.jp-OutputPrompt{display:none}img{max-width:100%}
section.notebook{border-top:2px solid #ddd;margin-top:2em}
nav a{margin-right:1em}"""


# What TeX input with HTML-CSS output (STIX-Web fonts) loads, now or lazily for rarer glyphs and macros.
MATHJAX_PARTS = (
    "MathJax.js",
    "config/TeX-AMS-MML_HTMLorMML-full.js",
    "jax/input/TeX",
    "jax/element",
    "jax/output/HTML-CSS",
    "extensions/TeX",
    "fonts/HTML-CSS/STIX-Web/woff",
    "LICENSE",
)
MATHJAX_CONFIG = """<script type="text/x-mathjax-config">
MathJax.Hub.Config({tex2jax: {inlineMath: [["$", "$"], ["\\\\(", "\\\\)"]], processEscapes: true},
  "HTML-CSS": {availableFonts: ["STIX-Web"], preferredFont: "STIX-Web", webFont: "STIX-Web", imageFont: null},
  showMathMenu: false, messageStyle: "none"});
</script>
<script src="mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full"></script>"""


def mathjax_source() -> Path | None:
    """The packaged MathJax's folder, found without importing the package (which loads a server)."""
    spec = importlib.util.find_spec("jupyter_server_mathjax")
    if spec is None or not spec.submodule_search_locations:
        return None
    static = Path(next(iter(spec.submodule_search_locations))) / "static"
    return static if (static / "MathJax.js").is_file() else None


def copy_mathjax(run: Path) -> bool:
    """MathJax's parts into ``run/mathjax`` (once per run folder); False when the package is missing."""
    source = mathjax_source()
    if source is None:
        return False
    target = run / "mathjax"
    if (target / "MathJax.js").is_file():
        return True
    with atomic_dir(target) as tmp:
        for part in MATHJAX_PARTS:
            src, dst = source / part, tmp / part
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst)
            else:
                shutil.copy2(src, dst)
    return True


def write_index(run_dir: str | Path, summary: str, grades: str, points: str) -> Path:
    run = Path(run_dir)
    math = (
        MATHJAX_CONFIG
        if copy_mathjax(run)
        else "<!-- formulas as TeX: install jupyter-server-mathjax to typeset them -->"
    )
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
<style>{STYLE}</style>
{math}</head><body>
<h1>cptlab run <code>{html.escape(run.name)}</code></h1>
<nav>{"".join(links)}</nav>
<h2>Summary</h2><pre>{html.escape(summary)}</pre>
<h2>Checks of the results files</h2><pre>{html.escape(grades)}</pre>
<h2>Points from the executed notebooks</h2><pre>{html.escape(points)}</pre>
{"".join(parts)}
</body></html>
"""
    return write_atomic(run / "index.html", page)
