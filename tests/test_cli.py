"""`cptlab perplexity` against an independent implementation of the protocol, on real text."""

import json
import math
import re

import pytest
from test_perplexity import reference_nll

from cptlab.cli import main


def _real_text() -> str:
    # Real prose the model never saw: docstrings of a few standard-library modules.
    import argparse
    import json as j
    import textwrap

    return "\n\n".join(m.__doc__ for m in (argparse, j, textwrap))


@pytest.mark.parametrize(
    "extra", [[], ["--stride", "16", "--max-tokens", "800"], ["--block-size", "40", "--max-tokens", "300"]]
)
def test_perplexity_cli_matches_reference(tmp_path, capsys, model_and_tok, tiny_model_dir, extra):
    model, tok = model_and_tok
    text = _real_text()
    f = tmp_path / "text.txt"
    f.write_text(text)
    assert main(["perplexity", "--model", str(tiny_model_dir), "--text", str(f), "--device", "cpu", *extra]) == 0
    out = json.loads(capsys.readouterr().out)
    args = dict(zip(extra[::2], extra[1::2]))
    block = int(args.get("--block-size", 64))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    nll, count = reference_nll(
        model,
        ids,
        block,
        int(args["--stride"]) if "--stride" in args else None,
        int(args["--max-tokens"]) if "--max-tokens" in args else None,
    )
    assert out["tokens"] == count and out["block_size"] == block
    assert out["ppl"] == pytest.approx(math.exp(nll / count), rel=1e-4)
    assert out["nll_sum"] == pytest.approx(nll, rel=1e-4)


def test_cli_errors_are_one_line_not_a_traceback(tmp_path, capsys, tiny_model_dir):
    assert main(["perplexity", "--model", str(tiny_model_dir), "--text", str(tmp_path / "none.txt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    f = tmp_path / "t.txt"
    f.write_text("hello world " * 50)
    assert main(["perplexity", "--model", str(tiny_model_dir), "--text", str(f), "--block-size", "1000"]) == 2
    assert "above the model's context" in capsys.readouterr().err
    assert main(["run", "--preset", "nope", "--out", str(tmp_path / "r")]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err


def _split_run(tmp_path, preset: str, val_docs: int, val_tokens: int, general_tokens: int):
    from cptlab.core.results import write_json_atomic

    write_json_atomic(tmp_path / "step1_baseline.json", {"preset": preset, "general": {"tokens": general_tokens}})
    write_json_atomic(
        tmp_path / "step2_corpus.json", {"preset": preset, "val_docs": val_docs, "val_tokens": val_tokens}
    )
    return tmp_path


def test_a_small_split_is_warned_about_with_what_to_do(tmp_path):
    """What `cptlab run` printed for an outside repository of 17 files: one validation file, 5,220
    tokens. The warning names the sizes, the lab's bar, and a larger val_fraction as the way out."""
    from cptlab.lab.steps import small_split_warnings

    warned = small_split_warnings(_split_run(tmp_path / "a", "tiny", 1, 5_220, 60_000))
    assert len(warned) == 1 and "5,220 tokens in 1 document(s)" in warned[0] and "val_fraction=0.1" in warned[0]
    both = small_split_warnings(_split_run(tmp_path / "b", "tiny", 40, 80_000, 12_000))
    assert len(both) == 1 and "12,000 tokens" in both[0] and "--general-file" in both[0]
    assert small_split_warnings(_split_run(tmp_path / "c", "gpt2", 40, 80_000, 60_000)) == []
    assert small_split_warnings(_split_run(tmp_path / "d", "tiny", 4, 80_000, 60_000))  # too few documents
    assert small_split_warnings(_split_run(tmp_path / "e", "smoke", 1, 500, 500)) == []  # seconds, not conclusions


def test_the_summary_gives_each_comparison_its_interval(lab_run):
    from cptlab.lab.steps import summary_rows

    rows = dict(summary_rows(lab_run))
    s4 = json.loads((lab_run / "step4_tradeoff.json").read_text())
    ci = s4["code_ppl_drop_ci"]
    assert rows["code ppl drop"] == (
        f"{100 * s4['code_ppl_drop']:.1f}% (95% CI {100 * ci['low']:.1f}% to {100 * ci['high']:.1f}%)"
    )
    assert rows["forgetting ratio"].startswith(f"{s4['forgetting_ratio']:.3f} (95% CI ")


def test_a_first_lab_shows_the_base_pretraining_and_the_long_parts_in_the_terminal(lab_run):
    """`cptlab lab` on a fresh cache: the base model's pre-training (inside notebook 1's kernel) and
    each step's training runs print their start, then steps, speed and time left, then their end."""
    shown = (lab_run.parent / "terminal.txt").read_text()
    first = shown.index("[lab] step 1: executing")
    base = re.search(r"\[lab\] smoke base pre-training \(once, then cached\): (\d+) steps, started", shown)
    assert base and base.start() > first, shown[:2000]
    steps = base.group(1)
    assert re.search(
        rf"\[lab\] smoke base pre-training [^:]*: {steps}/{steps} steps, loss=[\d.]+, lr=\S+, tok_s=[\d,]+, "
        r"\S+ in all, done",
        shown,
    ), shown[:2000]
    assert shown.index("[lab] step 1: done") > base.end()
    assert re.search(r"\[lab\] CPT: 30 steps, started[\s\S]*\[lab\] CPT: 30/30 steps, .*tok_s=.*, done", shown)


@pytest.mark.slow  # a second process or a compiler: seconds, not the quick suite's
def test_the_command_line_speaks_only_for_itself(tmp_path, tiny_model_dir):
    """No loading bar, no deprecation notice, no tokenizer length warning on stderr for a text far
    longer than the model's context: what a script or CI log receives is the result alone."""
    import subprocess
    import sys

    f = tmp_path / "long.txt"
    f.write_text(_real_text() * 4)
    done = subprocess.run(
        [sys.executable, "-m", "cptlab", "perplexity", "--model", str(tiny_model_dir), "--text", str(f)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert json.loads(done.stdout)["tokens"] > 1000
