"""The gpt2 preset on a replica of the GPU sandbox's cache (``tests/hub_replica.py``), offline: its own
ids (``gpt2``, ``codeparrot/codeparrot-clean``, ``wikitext``/``wikitext-2-raw-v1``), its sources
unchanged, only sizes scaled down. What the hub cache cannot give ``datasets`` offline (a repo
listing) ``cptlab.data.sources`` reads from the repo's snapshot."""

import json
import shutil

import pytest
from conftest import CODE, ENGLISH
from hub_replica import GPT2_FILES, build, gpt2_folder, prepare_arrow, snapshot

from cptlab.core.config import get_config


@pytest.fixture(scope="module")
def gpt2_repo(tmp_path_factory, tiny_model_dir):
    return gpt2_folder(tmp_path_factory.mktemp("gpt2-repo"), tiny_model_dir)


def _use(monkeypatch, home):
    """Point the hub cache at the replica as HF_HOME would at start-up (its constants are read at import)."""
    from datasets import config as datasets_config
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(datasets_config, "HF_DATASETS_CACHE", home / "datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def test_the_replica_is_a_hub_cache_as_huggingface_hub_reads_it(tmp_path, gpt2_repo):
    from huggingface_hub import scan_cache_dir

    home = build(tmp_path / "home", gpt2_repo, ENGLISH, CODE)
    info = scan_cache_dir(home / "hub")
    assert not info.warnings, info.warnings
    repos = {(r.repo_type, r.repo_id): {f.file_name for rev in r.revisions for f in rev.files} for r in info.repos}
    assert repos[("model", "gpt2")] == set(GPT2_FILES)
    assert repos[("dataset", "codeparrot/codeparrot-clean")] == {
        "file-000000000001.json.gz",
        "file-000000000002.json.gz",
    }
    assert {f"{s}-00000-of-00001.parquet" for s in ("train", "validation", "test")} == repos[
        ("dataset", "Salesforce/wikitext")
    ]


@pytest.mark.parametrize("wikitext_id", ["Salesforce/wikitext", "wikitext"])
def test_every_asset_loads_offline_under_the_presets_own_ids(tmp_path, monkeypatch, gpt2_repo, wikitext_id):
    from cptlab.data.sources import load_documents, load_model, load_tokenizer

    _use(monkeypatch, build(tmp_path / "home", gpt2_repo, ENGLISH, CODE, wikitext_id=wikitext_id))
    g = get_config("gpt2")
    assert g.code_source.path == "codeparrot/codeparrot-clean" and g.general_source.path == "wikitext"
    tok, model = load_tokenizer("gpt2"), load_model("gpt2")
    assert model.config.model_type == "gpt2" and len(tok) == model.config.vocab_size
    code, info = load_documents(g.code_source, 3_000, lambda t: len(tok(t, verbose=False)["input_ids"]))
    assert 0 < len(code) < 150 and code[0].startswith(CODE[:20])  # streamed, cut at the budget
    test, _ = load_documents(g.general_source)
    train, _ = load_documents(g.replay_source)
    assert len(test) == len(train) == 1 and "test section 0" in test[0] and "train section 0" in train[0]


def _all_documents(tok):
    g = get_config("gpt2")
    from cptlab.data.sources import load_documents

    count = lambda t: len(tok(t, verbose=False)["input_ids"])  # noqa: E731
    return [
        load_documents(s, b, count)[0]
        for s, b in ((g.code_source, 3_000), (g.general_source, None), (g.replay_source, None))
    ]


@pytest.mark.parametrize("wikitext_id", ["Salesforce/wikitext", "wikitext"])
@pytest.mark.parametrize("hub_files", ["kept", "deleted"])
def test_the_arrow_files_an_online_load_left_give_the_same_documents(
    tmp_path, monkeypatch, gpt2_repo, wikitext_id, hub_files
):
    """A sandbox whose cache was filled by ``load_dataset`` calls made online holds each dataset's
    prepared Arrow files beside (or, pruned, instead of) the hub's files: the same documents load."""
    from cptlab.data.sources import load_tokenizer

    home = build(tmp_path / "home", gpt2_repo, ENGLISH, CODE, wikitext_id=wikitext_id)
    _use(monkeypatch, home)
    tok = load_tokenizer("gpt2")
    expected = _all_documents(tok)
    wiki = snapshot(home, wikitext_id)
    splits = {s: [str(wiki / f"wikitext-2-raw-v1/{s}-00000-of-00001.parquet")] for s in ("train", "validation", "test")}
    arrow = [prepare_arrow(home, wikitext_id, "wikitext-2-raw-v1", splits)]
    code = snapshot(home, "codeparrot/codeparrot-clean")
    arrow.append(
        prepare_arrow(home, "codeparrot/codeparrot-clean", "default", {"train": sorted(map(str, code.glob("*.gz")))})
    )
    assert sorted(p.name for p in arrow[0].glob("*.arrow")) == [
        f"wikitext-{s}.arrow" for s in ("test", "train", "validation")
    ]
    assert arrow[0].relative_to(home / "datasets").parts[:3] == (
        wikitext_id.replace("/", "___"),
        "wikitext-2-raw-v1",
        "0.0.0",
    )
    if hub_files == "deleted":
        for repo in (wikitext_id, "codeparrot/codeparrot-clean"):
            shutil.rmtree(home / "hub" / f"datasets--{repo.replace('/', '--')}")
    assert _all_documents(tok) == expected


@pytest.mark.parametrize(
    "skip, named",
    [
        ("gpt2", "'gpt2'"),
        ("codeparrot", "'codeparrot/codeparrot-clean'"),
        ("wikitext", "'wikitext' or 'Salesforce/wikitext'"),
    ],
)
def test_a_missing_asset_gets_one_message_naming_ids_cache_and_fallback(tmp_path, monkeypatch, gpt2_repo, skip, named):
    from cptlab.data.sources import AssetNotFoundError, load_documents, load_model

    home = build(tmp_path / "home", gpt2_repo, ENGLISH, CODE, skip=skip)
    _use(monkeypatch, home)
    g = get_config("gpt2")
    load = {
        "gpt2": lambda: load_model("gpt2"),
        "codeparrot": lambda: load_documents(g.code_source, 100, len),
        "wikitext": lambda: load_documents(g.general_source),
    }[skip]
    with pytest.raises(AssetNotFoundError) as err:
        load()
    text = str(err.value)
    assert named in text and f"HF_HOME={home}" in text and "--preset tiny" in text, text


@pytest.mark.slow
# one replica: the one an online load leaves (arrow files); every way of loading is asserted above
@pytest.mark.parametrize("wikitext_id, arrow", [("wikitext", True)])
def test_the_four_notebooks_run_and_grade_on_the_replica(tmp_path, monkeypatch, gpt2_repo, wikitext_id, arrow):
    """PRESET = "gpt2", sizes scaled down through OVERRIDES, network off: the kernels load the
    preset's own assets from the replica (under either wikitext id; with the Arrow files an online
    load leaves, ``datasets`` reads those), and the grader reads the run."""
    from checkers.results.steps import check_all
    from cptlab.notebook.execute import execute_lab

    home = build(tmp_path / "home", gpt2_repo, ENGLISH, CODE, wikitext_id=wikitext_id)
    if arrow:
        wiki = snapshot(home, wikitext_id) / "wikitext-2-raw-v1"
        prepare_arrow(
            home,
            wikitext_id,
            "wikitext-2-raw-v1",
            {s: [str(wiki / f"{s}-00000-of-00001.parquet")] for s in ("train", "validation", "test")},
        )
        code = snapshot(home, "codeparrot/codeparrot-clean")
        prepare_arrow(home, "codeparrot/codeparrot-clean", "default", {"train": sorted(map(str, code.glob("*.gz")))})
    _use(monkeypatch, home)
    small = {
        "code_token_budget": 6_000,
        "block_size": 32,
        "batch_size": 4,
        "eval_batch_size": 4,
        "max_steps": 8,
        "warmup_steps": 2,
        "cpt_lr": 1e-3,
        "eval_max_tokens": 1_500,
        "curve_every": 4,
        "lora_lr": 1e-2,
        "interp_alphas": [0.0, 1.0],
        "device": "cpu",
        "replay_fractions": [0.2],
    }
    run = execute_lab("gpt2", run_dir=tmp_path / "run", overrides=small)
    s1 = json.loads((run / "step1_baseline.json").read_text())
    assert s1["preset"] == "gpt2" and s1["base_model"] == "gpt2"
    assert s1["code"]["source"]["path"] == "codeparrot/codeparrot-clean"
    reports = check_all(run, "gpt2")
    checks = {c.id: c for r in reports for c in r.checks}
    # what makes a grade trustworthy holds on the replica: the files, the run, the sums, the training
    must = [f"s{n}.results" for n in (1, 2, 3, 4)] + [f"s{n}.same_run" for n in (2, 3, 4)]
    must += ["s1.code_ppl_from_raw", "s1.general_ppl_from_raw", "s3.weights_moved"]
    assert all(checks[i].passed for i in must), [(i, checks[i].got) for i in must if not checks[i].passed]
    # and what fails is the recipe and the sizes the OVERRIDES scaled down, nothing else
    scaled = {
        "s1.code_tokens",
        "s1.general_tokens",
        "s1.same_protocol",
        "s2.split_98_2",
        "s2.split_tokens",
        "s3.steps",
        "s3.hparams",
        "s3.warmup_peak",
        "s3.cosine_decay",
        "s4.code_ppl_drop",
        "s4.forgetting_ratio",
        "s4.study_variants",
        "s3.loss_trend",  # the bar assumes the recipe's 150 steps
    }
    failed = {c.id for r in reports for c in r.failures}
    assert failed <= scaled, failed - scaled
    shutil.rmtree(run / "models", ignore_errors=True)


def test_auto_is_tiny_without_a_cuda_device(monkeypatch, capsys):
    from cptlab.lab.preset import resolve_preset
    from cptlab.notebook import cells

    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    assert resolve_preset("auto") == ("tiny", "no CUDA device: tiny")
    assert resolve_preset("smoke") == ("smoke", "smoke: as PRESET says")
    cfg = cells.lab_config("auto", "runs/x", seed=7, overrides={})
    assert (cfg.preset, cfg.seed) == ("tiny", 7)
    assert capsys.readouterr().out.splitlines()[0] == "preset tiny (no CUDA device: tiny)"


def test_auto_is_gpt2_on_a_gpu_whose_cache_holds_the_three_assets(tmp_path, monkeypatch, gpt2_repo, capsys):
    """CUDA faked, the sandbox's cache replicated: auto resolves to gpt2, and the run folder records
    gpt2, never auto."""
    from cptlab.lab import steps
    from cptlab.notebook import cells

    _use(monkeypatch, build(tmp_path / "home", gpt2_repo, ENGLISH, CODE))
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    small = {
        "device": "cpu",
        "code_token_budget": 3_000,
        "block_size": 32,
        "eval_max_tokens": 600,
        "eval_batch_size": 4,
    }
    cfg = cells.lab_config("auto", str(tmp_path / "run"), seed=1234, overrides=small)
    assert cfg.preset == "gpt2"
    line = capsys.readouterr().out.splitlines()[0]
    assert line == "preset gpt2 (gpt2: GPU found, GPT-2, codeparrot-clean and wikitext-2 in the cache)"
    steps.run_step1(cfg, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "step1_baseline.json").read_text())["preset"] == "gpt2"


@pytest.mark.parametrize(
    "skip, named", [("gpt2", "GPT-2"), ("codeparrot", "codeparrot-clean"), ("wikitext", "wikitext-2")]
)
def test_auto_falls_back_to_tiny_naming_what_the_cache_lacks(tmp_path, monkeypatch, gpt2_repo, skip, named):
    from cptlab.lab.preset import resolve_preset

    _use(monkeypatch, build(tmp_path / "home", gpt2_repo, ENGLISH, CODE, skip=skip))
    monkeypatch.setattr("torch.cuda.is_available", lambda: True)
    preset, why = resolve_preset("auto")
    assert preset == "tiny" and why.startswith(f"GPU found, but {named} not in the Hugging Face cache: tiny"), why
