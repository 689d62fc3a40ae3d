"""`cptlab perplexity` against an independent implementation of the protocol, on real text."""

import json
import math

import pytest
from test_perplexity import reference_nll

from cptlab.cli import main


def _real_text() -> str:
    # Real prose the model never saw: docstrings of a few standard-library modules.
    import argparse
    import json as j
    import textwrap

    return "\n\n".join(m.__doc__ for m in (argparse, j, textwrap))


@pytest.mark.parametrize("extra", [[], ["--stride", "16"], ["--block-size", "40", "--max-tokens", "300"]])
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
