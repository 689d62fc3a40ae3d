"""The gpt2 preset's whole path (streamed code corpus with a token budget, wikitext-style English
joined from lines, replay from its train split) end to end, with local stand-ins for the hub
assets: a local model folder and local dataset folders with the same fields."""

import dataclasses
import json

import pytest
from conftest import CODE, ENGLISH

from cptlab.core.config import get_config
from cptlab.lab.pipeline import run_all


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.mark.slow
def test_gpt2_preset_runs_on_local_stand_ins(tmp_path, tiny_model_dir):
    code = tmp_path / "codeparrot"
    _jsonl(
        code / "train.jsonl",
        [{"content": f"{CODE}\n# file {i}\nx_{i} = {i}\n", "repo_name": f"r{i}"} for i in range(200)],
    )
    wiki = tmp_path / "wikitext"
    _jsonl(wiki / "test.jsonl", [{"text": ENGLISH + f" Section {i}.\n"} for i in range(40)])
    _jsonl(wiki / "train.jsonl", [{"text": ENGLISH[::-1] + f" Part {i}.\n"} for i in range(40)])
    g = get_config("gpt2")
    cfg = get_config(
        "gpt2",
        base_model=str(tiny_model_dir),
        device="cpu",
        code_source=dataclasses.replace(g.code_source, path=str(code)),
        general_source=dataclasses.replace(g.general_source, path=str(wiki), name=None),
        replay_source=dataclasses.replace(g.replay_source, path=str(wiki), name=None),
        code_token_budget=60_000,
        block_size=32,
        batch_size=4,
        eval_batch_size=4,
        max_steps=12,
        warmup_steps=2,
        cpt_lr=1e-3,
        eval_max_tokens=2_000,
        curve_every=6,
        lora_lr=1e-2,
        interp_alphas=(0.0, 1.0),
    )
    run = tmp_path / "run"
    s4 = run_all(cfg, run, progress=False)
    s2 = json.loads((run / "step2_corpus.json").read_text())
    assert s2["n_docs"] < 200 and s2["n_tokens"] >= 60_000  # the stream stopped at the budget
    assert s2["eos_count"] == s2["n_docs"]
    s1 = json.loads((run / "step1_baseline.json").read_text())
    assert s1["general"]["source"]["n_docs"] == 1  # wikitext lines joined into one document
    assert s4["adapted_code_ppl"] < s4["baseline_code_ppl"]
    assert {v["choice"] for v in s4["study"]["variants"]} == {"pure_cpt", "replay", "lora", "interpolation"}
