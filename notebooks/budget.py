"""The lab's time on task, counted from the notebook sources: ``python notebooks/budget.py``.

Per notebook and track (``core``; ``go further``: the cells tagged ``go-further``), at stated rates:

- reading: the student notebook's markdown at 150 words a minute; text inside a collapsed
  ``<details>`` ("Why?") box is skimmed, 300 words a minute;
- writing code: each line the learner writes (a solution region's non-blank, non-comment lines),
  one minute, running and reading its check included;
- written questions: one minute per sentence the question asks for (the upper end of its range);
- runs: each notebook's cells on ``gpt2`` on one GPU, estimated from the tokens they process at the
  GPU runbook's measured training throughput (``benchmarks/gpu_last.json``; evaluation at three
  times it, a forward pass being a third of a training step's FLOPs) plus a stated half minute a
  notebook to load the model and data: no ``gpt2`` lab has been timed on a GPU yet, and the table
  says so. ``tiny``'s measured cell times sit beside it (``benchmarks/lab_time_tiny.json``, written by
  ``--record RUN_DIR`` from an executed run), on a CPU with or without native bf16 as recorded.

``--markdown`` prints the README's table; the test suite holds the core to its 45 minutes.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from build import SRC, _regions, build  # noqa: E402

READ_WPM, SKIM_WPM = 150, 300
MINUTES_PER_LINE = 1.0
MINUTES_PER_SENTENCE = 1.0
LOAD_MINUTES = 0.5  # an assumption, not a measurement: kernel start, model and data loading, per notebook
CORE_MINUTES, CORE_WORDS = 45.0, 2000
GO_FURTHER = "go-further"
TRACKS = ("core", "go further")
TINY_RECORD = ROOT / "benchmarks" / "lab_time_tiny.json"
GPU_RECORD = ROOT / "benchmarks" / "gpu_last.json"

_SENTENCES = re.compile(r"(\d+)\s*(?:-|to|–)\s*(\d+)\s+sentences|(\d+)\s+sentences")
_DETAILS = re.compile(r"<details>.*?</details>", re.S)
_WORD = re.compile(r"[A-Za-z0-9]")
_TAG = re.compile(r"<[^>]+>")


@dataclass
class Track:
    words: int = 0
    skim_words: int = 0
    lines: int = 0
    sentences: int = 0
    questions: list[str] = field(default_factory=list)
    gpu_minutes: float = 0.0
    tiny_minutes: float | None = None

    @property
    def reading(self) -> float:
        return self.words / READ_WPM + self.skim_words / SKIM_WPM

    @property
    def writing(self) -> float:
        return self.lines * MINUTES_PER_LINE

    @property
    def answering(self) -> float:
        return self.sentences * MINUTES_PER_SENTENCE

    @property
    def total(self) -> float:
        return self.reading + self.writing + self.answering + self.gpu_minutes


def _words(text: str) -> int:
    """Words a reader reads: HTML tags and markup without a letter or digit are not words."""
    return sum(1 for w in _TAG.sub(" ", text).split() if _WORD.search(w))


def track_of(cell) -> str:
    return TRACKS[1] if GO_FURTHER in cell.get("metadata", {}).get("tags", []) else TRACKS[0]


def asked_sentences(question: str) -> int | None:
    """The most sentences a written question asks for, from its "(5-10 sentences)"."""
    m = _SENTENCES.search(question)
    if m is None:
        return None
    return int(m.group(2) or m.group(3))


def count(src: Path) -> dict[str, Track]:
    """Reading, writing and questions of one notebook, by track."""
    import jupytext

    student = build(src)["student"]
    raw = jupytext.read(src, fmt="py:percent")
    out = {t: Track() for t in TRACKS}
    previous_md = ""
    for cell, raw_cell in zip(student.cells, raw.cells):
        t = out[track_of(cell)]
        tags = cell.get("metadata", {}).get("tags", [])
        if cell.cell_type == "markdown" and "answer" in tags:
            n = asked_sentences(previous_md)
            if n is None:
                raise ValueError(f"{src.name}: written question {tags} does not say how many sentences it asks for")
            t.sentences += n
            t.questions.append(next(x for x in tags if x != "answer" and x != GO_FURTHER))
            continue
        if cell.cell_type == "markdown":
            text = cell.source
            inside = " ".join(_DETAILS.findall(text))
            t.skim_words += _words(inside)
            t.words += _words(_DETAILS.sub(" ", text))
            previous_md = text
        elif cell.cell_type == "code":
            lines = raw_cell.source.split("\n")
            for begin, end, _ in _regions(lines):
                t.lines += sum(1 for x in lines[begin + 1 : end] if x.strip() and not x.strip().startswith("#"))
    return out


# ----------------------------------------------------------------------------- runs
def _gpu_tokens_per_s() -> float:
    rec = json.loads(GPU_RECORD.read_text())
    return float(rec["throughput"]["cptlab_eager"]["tokens_per_s"])


def gpu_run_minutes() -> dict[tuple[int, str], float]:
    """Each notebook's GPU minutes on ``gpt2``, by track, from the tokens its cells process."""
    from cptlab.core.config import get_config

    cfg = get_config("gpt2")
    train_tps = _gpu_tokens_per_s()
    eval_tps = 3 * train_tps
    step_tokens = cfg.batch_size * cfg.grad_accum * cfg.block_size
    run = cfg.max_steps * step_tokens
    # the evaluation sets: 2% of the code budget and WikiText-2's test split (~290k GPT-2 tokens)
    eval_set = cfg.val_fraction * (cfg.code_token_budget or 0) + 290_000
    curve_points = cfg.max_steps // cfg.curve_every + 1
    study_runs = len(cfg.replay_fractions) + 1  # replay shares and LoRA, each as long as the CPT run
    study_evals = study_runs + len(cfg.interp_alphas)
    experiments = 5 * (run // 3) / train_tps + 5 * 2 * eval_set / eval_tps

    def m(train_tokens: float = 0.0, eval_tokens: float = 0.0) -> float:
        return (train_tokens / train_tps + eval_tokens / eval_tps) / 60

    return {
        (1, "core"): LOAD_MINUTES + m(eval_tokens=eval_set),
        (1, "go further"): 0.0,
        (2, "core"): LOAD_MINUTES,
        (2, "go further"): 0.0,
        (3, "core"): LOAD_MINUTES + m(run, curve_points * eval_set),
        (3, "go further"): experiments / 60 + m(20 * step_tokens, eval_set) + 2 * m(20 * step_tokens),
        (4, "core"): LOAD_MINUTES + m(study_runs * run, study_evals * eval_set),
        (4, "go further"): 0.0,
    }


def tiny_minutes() -> dict | None:
    if not TINY_RECORD.is_file():
        return None
    return json.loads(TINY_RECORD.read_text())


def record_tiny(run_dir: Path, note: str) -> dict:
    """Cell times of an executed run (nbclient's per-cell timestamps), summed by notebook and track."""
    from datetime import datetime

    import nbformat

    from cptlab.speed.device import cpu_has_native_bf16

    minutes: dict[str, float] = {}
    for path in sorted(run_dir.glob("0*.ipynb")):
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            ex = cell.get("metadata", {}).get("execution", {})
            a, b = ex.get("iopub.execute_input"), ex.get("shell.execute_reply")
            if not (a and b):
                continue
            secs = datetime.fromisoformat(b.replace("Z", "+00:00")) - datetime.fromisoformat(a.replace("Z", "+00:00"))
            key = f"{int(path.name[:2])}/{track_of(cell)}"
            minutes[key] = minutes.get(key, 0.0) + secs.total_seconds() / 60
    return {
        "cpu_native_bf16": cpu_has_native_bf16(),
        "note": note,
        "minutes": {k: round(v, 2) for k, v in sorted(minutes.items())},
    }


# ----------------------------------------------------------------------------- the table
def budget() -> dict[int, dict[str, Track]]:
    gpu = gpu_run_minutes()
    tiny = tiny_minutes()
    out = {}
    for src in sorted(SRC.glob("0*.py")):
        step = int(src.name[:2])
        out[step] = count(src)
        for t in TRACKS:
            out[step][t].gpu_minutes = gpu[(step, t)]
            if tiny is not None:
                out[step][t].tiny_minutes = tiny["minutes"].get(f"{step}/{t}", 0.0)
    return out


def totals(b: dict[int, dict[str, Track]], track: str) -> Track:
    t = Track(tiny_minutes=0.0)
    for tracks in b.values():
        x = tracks[track]
        t.words += x.words
        t.skim_words += x.skim_words
        t.lines += x.lines
        t.sentences += x.sentences
        t.questions += x.questions
        t.gpu_minutes += x.gpu_minutes
        t.tiny_minutes = None if x.tiny_minutes is None or t.tiny_minutes is None else t.tiny_minutes + x.tiny_minutes
    return t


def markdown(b: dict[int, dict[str, Track]]) -> str:
    tiny = tiny_minutes()
    cpu = "" if tiny is None else (" (with native bf16)" if tiny["cpu_native_bf16"] else " (no native bf16)")
    rows = [
        "| notebook | track | words (skimmed) | reading | lines | writing | written | GPU run (est.) | total |"
        f" `tiny` run, 2-core CPU{cpu} |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]

    def row(name: str, track: str, x: Track) -> str:
        tm = "n/a" if x.tiny_minutes is None else f"{x.tiny_minutes:.1f} min"
        return (
            f"| {name} | {track} | {x.words:,} ({x.skim_words:,}) | {x.reading:.1f} min | {x.lines} | "
            f"{x.writing:.0f} min | {x.answering:.0f} min | {x.gpu_minutes:.1f} min | **{x.total:.0f} min** | {tm} |"
        )

    for step, tracks in b.items():
        for t in TRACKS:
            rows.append(row(str(step), t, tracks[t]))
    for t in TRACKS:
        rows.append(row("all", t, totals(b, t)))
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--markdown", action="store_true", help="print the README's table")
    ap.add_argument("--record", type=Path, help="write benchmarks/lab_time_tiny.json from an executed run folder")
    ap.add_argument("--note", default="cell times of one `make lab` (tiny), this machine", help="how the run was made")
    args = ap.parse_args(argv)
    if args.record:
        rec = record_tiny(args.record, args.note)
        TINY_RECORD.write_text(json.dumps(rec, indent=2) + "\n")
        print(f"wrote {TINY_RECORD.relative_to(ROOT)}")
        return 0
    b = budget()
    if args.markdown:
        print(markdown(b))
        return 0
    for t in TRACKS:
        x = totals(b, t)
        print(
            f"{t:>10}: {x.total:5.1f} min = reading {x.reading:.1f} ({x.words:,} words + {x.skim_words:,} skimmed)"
            f" + writing {x.writing:.0f} ({x.lines} lines)"
            f" + written {x.answering:.0f} ({', '.join(x.questions) or '-'})"
            f" + GPU runs {x.gpu_minutes:.1f} (estimated from FLOPs)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
