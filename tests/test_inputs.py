"""Every input gets a clear answer: `--set` values typed and range-checked (exit 2, the field's
name and a valid example), `cptlab perplexity` arguments checked, and a large text read only as
far as `--max-tokens` needs."""

import json
import subprocess
import sys

import pytest

from cptlab.cli import main


@pytest.mark.parametrize(
    "setting, words",
    [
        ("max_steps=abc", "max_steps must be a whole number, got 'abc'"),
        ("max_steps=3.7", "max_steps must be a whole number, got 3.7"),
        ("grad_accum=1.5", "grad_accum must be a whole number"),
        ("checkpoint_every=0", "checkpoint_every must be >= 1"),
        ("betas=[0.9]", "betas must hold 2 numbers"),
        ("weight_decay=NaN", "weight_decay must be a finite number"),
        ("cpt_lr=NaN", "cpt_lr must be a finite number"),
        ("eval_max_tokens=-1", "eval_max_tokens must be at least block_size"),
        ('code_source={"kind": "py_dir", "bogus": 1}', "code_source has unknown keys ['bogus']"),
    ],
)
def test_bad_settings_exit_2_with_the_field_and_an_example(tmp_path, capsys, setting, words):
    assert main(["run", "--preset", "smoke", "--out", str(tmp_path / "r"), "--set", setting]) == 2
    err = capsys.readouterr().err
    assert words in err and "error" in err
    assert not (tmp_path / "r").exists()


def test_a_good_list_setting_is_a_tuple(tmp_path):
    from cptlab.core.config import get_config

    assert get_config("smoke", betas=[0.9, 0.99]).betas == (0.9, 0.99)


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--block-size", "0"], "--block-size must be at least 2"),
        (["--max-tokens", "-5"], "--max-tokens must be at least 2"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
    ],
)
def test_perplexity_arguments_are_checked(tmp_path, capsys, tiny_model_dir, extra, words):
    f = tmp_path / "t.txt"
    f.write_text("hello world\n" * 50)
    assert main(["perplexity", "--model", str(tiny_model_dir), "--text", str(f), *extra]) == 2
    assert words in capsys.readouterr().err


def test_perplexity_text_errors_name_the_file(tmp_path, capsys, tiny_model_dir):
    assert main(["perplexity", "--model", str(tiny_model_dir), "--text", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err
    b = tmp_path / "b.txt"
    b.write_bytes(b"ok\n" + bytes(range(128, 256)))
    assert main(["perplexity", "--model", str(tiny_model_dir), "--text", str(b)]) == 2
    assert f"{b} is not UTF-8 text" in capsys.readouterr().err


@pytest.mark.slow
def test_max_tokens_reads_only_what_it_scores(tmp_path, tiny_model_dir):
    big = tmp_path / "big.txt"
    line = "The quick brown fox jumps over the lazy dog while the model keeps reading.\n"
    with open(big, "w") as fh:
        for _ in range(50 * (1 << 20) // len(line)):
            fh.write(line)
    # VmHWM, the peak of this process's own memory: ru_maxrss also keeps the parent's size at fork
    code = (
        f"import sys; from cptlab.cli import main; rc = main(['perplexity', '--model', {str(tiny_model_dir)!r}, "
        f"'--text', {str(big)!r}, '--max-tokens', '1000', '--device', 'cpu']); "
        "print('PEAK', next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM'))); sys.exit(rc)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(next(ln for ln in out.stdout.splitlines() if ln.startswith("{")))
    peak_kib = int(next(ln for ln in out.stdout.splitlines() if ln.startswith("PEAK")).split()[1])
    assert result["protocol"]["used_tokens"] == 1000
    assert peak_kib < 700 << 10, f"peak {peak_kib / 1024:.0f} MB (measured 511 MB, 473 of them imports)"


def test_write_failures_say_what_to_do(tmp_path):
    import errno

    from cptlab.core.results import disk_message

    full = disk_message(tmp_path, OSError(errno.ENOSPC, "No space left on device"))
    assert "is full" in full and "MB free" in full and "--resume" in full and str(tmp_path) in full
    assert "pass an --out you can write to" in disk_message(tmp_path, OSError(errno.EROFS, "Read-only file system"))


def test_a_corrupt_checkpoint_says_how_to_go_on(tmp_path, model_and_tok):
    import numpy as np
    import torch

    from cptlab.core.config import get_config
    from cptlab.model.train import Checkpointing, Hooks, train

    model, _ = model_and_tok
    cfg = get_config("smoke", block_size=16, batch_size=2, max_steps=6, warmup_steps=1, checkpoint_every=3)
    stream = np.random.default_rng(0).integers(0, 300, 2000).astype(np.uint16)
    ck = Checkpointing(tmp_path / "ck", every=3, key="k")
    train(
        __import__("copy").deepcopy(model),
        stream,
        cfg.replace(max_steps=4),
        torch.device("cpu"),
        progress=False,
        hooks=Hooks(checkpointing=ck),
    )
    (tmp_path / "ck" / "optimizer.pt").write_bytes(b"torn")
    with pytest.raises(RuntimeError, match="is corrupt .*delete that folder"):
        train(
            __import__("copy").deepcopy(model),
            stream,
            cfg.replace(max_steps=4),
            torch.device("cpu"),
            progress=False,
            hooks=Hooks(checkpointing=Checkpointing(tmp_path / "ck", every=3, key="k")),
        )


def test_an_english_file_that_is_not_utf8_or_a_folder_is_named(tmp_path):
    from cptlab.core.config import DataSource
    from cptlab.data.sources import load_documents

    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 au lait ".encode("latin-1") * 20)
    with pytest.raises(ValueError, match=f"{bad} is not UTF-8 text"):
        load_documents(DataSource(kind="text_file", path=str(bad)))
    with pytest.raises(ValueError, match="is a folder"):
        load_documents(DataSource(kind="text_file", path=str(tmp_path)))
