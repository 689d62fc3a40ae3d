"""The gpt2 preset's loading code, run against local folders and files with the same fields,
and the clear errors of bad input."""

import dataclasses
import json

import pytest
from conftest import CODE, ENGLISH

from cptlab.core.config import ConfigError, DataSource, get_config
from cptlab.data.sources import AssetNotFoundError, load_documents, load_model, load_tokenizer, read_python_dir


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_codeparrot_style_folder_streams_until_the_token_budget(tmp_path):
    _jsonl(tmp_path / "train.jsonl", [{"content": f"{CODE}# {i}\n", "repo_name": "x"} for i in range(50)])
    src = dataclasses.replace(get_config("gpt2").code_source, path=str(tmp_path))
    assert src.field == "content" and src.streaming
    docs, info = load_documents(src, token_budget=1000, count_tokens=lambda t: 100)
    assert len(docs) == 10 and docs[0] == f"{CODE}# 0\n" and info["n_docs"] == 10


def test_wikitext_style_folder_joins_lines(tmp_path):
    rows = [{"text": " = Title = \n"}, {"text": ""}, {"text": ENGLISH}]
    _jsonl(tmp_path / "test.jsonl", rows)
    src = dataclasses.replace(get_config("gpt2").general_source, path=str(tmp_path), name=None)
    assert src.field == "text" and src.split == "test"
    docs, _ = load_documents(src)
    assert docs == ["\n\n".join(r["text"] for r in rows)]


def test_missing_field_names_the_fields(tmp_path):
    _jsonl(tmp_path / "train.jsonl", [{"code": "x = 1"}])
    with pytest.raises(KeyError, match="no field 'content'"):
        load_documents(DataSource(kind="hf", path=str(tmp_path), field="content"))


def test_model_and_tokenizer_from_a_local_folder(tiny_model_dir):
    assert load_model(str(tiny_model_dir)).config.model_type == "gpt2"
    assert load_tokenizer(str(tiny_model_dir)).eos_token_id is not None


def test_missing_hub_assets_say_where_and_what_to_do(tmp_path):
    with pytest.raises(AssetNotFoundError, match="HF_HOME.*--preset tiny") as e:
        load_model("cptlab-tests/no-such-model")
    assert "HF_HUB_OFFLINE" in str(e.value)
    with pytest.raises(AssetNotFoundError, match="--preset tiny"):
        load_documents(DataSource(kind="hf", path="cptlab-tests/no-such-dataset", field="content"))


def test_model_folder_without_weights(tmp_path, tiny_model_dir):
    (tmp_path / "config.json").write_text((tiny_model_dir / "config.json").read_text())
    with pytest.raises(AssetNotFoundError, match="no weights"):
        load_model(str(tmp_path))


def test_python_dir_skips_binary_and_non_utf8(tmp_path):
    (tmp_path / "good.py").write_text(CODE)
    (tmp_path / "latin.py").write_bytes("s = 'caf\xe9'\n".encode("latin-1"))
    (tmp_path / "bin.py").write_bytes(b"\x00\x01\x02")
    sub = tmp_path / "tests"
    sub.mkdir()
    (sub / "test_x.py").write_text("assert True\n")
    docs, info = read_python_dir(tmp_path, exclude_tests=True)
    assert docs == [CODE] and info["skipped"] == 2 and info["used"] == 1


def test_empty_or_missing_inputs(tmp_path):
    with pytest.raises(AssetNotFoundError, match="--code-dir"):
        read_python_dir(tmp_path / "nope")
    with pytest.raises(ValueError, match="no usable .py files"):
        read_python_dir(tmp_path)
    with pytest.raises(AssetNotFoundError, match="--general-file"):
        load_documents(DataSource(kind="text_file", path=str(tmp_path / "missing.txt")))
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(ValueError, match="holds no text"):
        load_documents(DataSource(kind="text_file", path=str(tmp_path / "empty.txt")))


def test_config_errors():
    with pytest.raises(ConfigError, match="unknown preset 'gtp2'"):
        get_config("gtp2")
    with pytest.raises(ConfigError, match="cpt_lr must be > 0"):
        get_config("tiny", cpt_lr=0)
    with pytest.raises(ConfigError, match="max_steps must be > 0"):
        get_config("tiny", max_steps=0)
    with pytest.raises(ConfigError, match="unknown config keys"):
        get_config("tiny", learning_rate=1e-4)


def test_config_round_trips_through_json():
    cfg = get_config("gpt2", seed=3)
    again = type(cfg).from_dict(json.loads(cfg.to_json()))
    assert again == cfg


def test_lab_recipe_values():
    cfg = get_config("tiny")
    assert (cfg.cpt_lr, cfg.warmup_steps, cfg.max_steps, cfg.grad_clip, cfg.block_size, cfg.val_fraction) == (
        5e-5,
        10,
        150,
        1.0,
        256,
        0.02,
    )
    g = get_config("gpt2")
    assert (g.cpt_lr, g.warmup_steps, g.max_steps, g.block_size) == (5e-5, 10, 150, 256)


def test_enormous_single_line_file_is_one_document(tmp_path, model_and_tok):
    from cptlab.data.corpus import build_corpus

    _, tok = model_and_tok
    (tmp_path / "minified.py").write_text("x=[" + ",".join(str(i % 97) for i in range(300_000)) + "]")
    (tmp_path / "small.py").write_text(CODE)
    docs, info = read_python_dir(tmp_path)
    assert len(docs) == 2 and info["used"] == 2
    c = build_corpus(docs, tok, 0.02, 0, 32)
    assert c.stats["n_docs"] == 2 and c.stats["eos_count"] == 2


def test_corrupt_cached_base_model_is_rebuilt(monkeypatch, tmp_path):
    from cptlab.model import base_model as tiny

    folder = tmp_path / "base"
    folder.mkdir()
    (folder / ".complete").write_text("ok")
    (folder / "model.safetensors").write_bytes(b"abc")
    (folder / "weights.sha256").write_text(tiny._weights_digest(folder))
    assert tiny._weights_intact(folder)
    (folder / "model.safetensors").write_bytes(b"abd")  # bit rot or a half-copied file
    assert not tiny._weights_intact(folder)
