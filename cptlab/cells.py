"""What the step notebooks' cells call: the lab's steps, tables and plots, run on the learner's
functions. A step whose learner function is still a stub, or whose earlier step has not run yet,
says what to do and returns None instead of raising, so a learner's notebook runs to its end and
every check cell reports its points."""
from __future__ import annotations

import functools
import warnings
from pathlib import Path

from huggingface_hub.utils import disable_progress_bars
from transformers.utils import logging as hf_logging

from . import lab, plots, tradeoff
from .results import MissingStepError, read_step

# A notebook shows the lab's own output: no loading bars or deprecation notices from the libraries.
hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()
disable_progress_bars()
for module in ("transformers", "peft", "torch", "huggingface_hub", "datasets"):
    warnings.filterwarnings("ignore", category=FutureWarning, module=module)
    warnings.filterwarnings("ignore", category=DeprecationWarning, module=module)


def _say(text: str) -> None:
    print(f"[not run yet] {text}")


def _guarded(fn):
    @functools.wraps(fn)
    def run(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NotImplementedError as exc:
            what = str(exc).split(":")[0] or "a function above"
            _say(f"{what} is not written yet. Write it, run its check cell, then run this cell again.")
        except MissingStepError as exc:
            _say(f"{exc}")
        return None

    return run


@_guarded
def run_step1(cfg, run_dir, perplexity_fn) -> dict:
    s1 = lab.run_step1(cfg, run_dir, perplexity_fn=perplexity_fn)
    print(lab.step_table(s1, ["base_model", "model_params", "baseline_code_ppl", "baseline_general_ppl"]))
    print(f"scored tokens: code {s1['code']['tokens']:,}, English {s1['general']['tokens']:,}; "
          f"code / English perplexity = {s1['baseline_code_ppl'] / s1['baseline_general_ppl']:.2f}")
    print("protocol:", s1["code"]["protocol"])
    return s1


@_guarded
def run_step2(run_dir, split_fn, blocks_fn) -> dict:
    s2 = lab.run_step2(run_dir, split_fn=split_fn, blocks_fn=blocks_fn)
    print(lab.step_table(s2, ["n_docs", "n_tokens", "eos_count", "train_docs", "val_docs",
                              "train_tokens", "val_tokens", "val_fraction", "block_size", "n_blocks"]))
    return s2


@_guarded
def show_eos_window(run_dir) -> dict:
    w = lab.eos_window(run_dir)
    print(f"EOS at positions {w['eos_positions']} of a {w.get('block_size')}-token window\n")
    print(w["text"].replace(w.get("eos_token", "<|endoftext|>"), "\n\u2588\u2588\u2588 <|endoftext|> \u2588\u2588\u2588\n"))
    return w


@_guarded
def run_step3(run_dir, lr_fn, step_fn) -> dict:
    s3 = lab.run_step3(run_dir, lr_fn=lr_fn, step_fn=step_fn)
    norms = [r["grad_norm"] for r in s3["log"]]
    clipped = sum(n > s3["hparams"]["grad_clip"] for n in norms)
    print(f"{len(s3['log'])} steps, {s3['tokens_seen']:,} tokens in {s3['seconds']:.1f} s "
          f"({s3['tokens_per_second']:,.0f} tokens/s); adapted model in {s3['adapted_model']}")
    print(f"loss {s3['log'][0]['loss']:.3f} -> {s3['log'][-1]['loss']:.3f}; pre-clip gradient norm "
          f"{min(norms):.2f} to {max(norms):.2f}: {clipped} of {len(norms)} steps clipped at {s3['hparams']['grad_clip']}")
    return s3


@_guarded
def run_step4(run_dir, drop_fn, ratio_fn) -> dict:
    s4 = lab.run_step4(run_dir, drop_fn=drop_fn, ratio_fn=ratio_fn)
    print(lab.step_table(s4, ["baseline_code_ppl", "adapted_code_ppl", "code_ppl_drop",
                              "baseline_general_ppl", "adapted_general_ppl", "forgetting_ratio"]))
    return s4


@_guarded
def show_floor(run_dir) -> dict:
    floor = read_step(run_dir, 3)["floor"]
    print(floor)
    return floor


@_guarded
def run_study(run_dir, choose_fn) -> dict:
    study = tradeoff.run_study(run_dir, choose_fn=choose_fn)
    print(tradeoff.study_table(study))
    return study


baseline_bars = _guarded(plots.baseline_bars)
corpus_figures = _guarded(plots.corpus_figures)
loss_curve = _guarded(plots.loss_curve)
before_after = _guarded(plots.before_after)
forgetting_curve = _guarded(plots.forgetting_curve)
tradeoff_plot = _guarded(plots.tradeoff_plot)


def run_folder(path: str) -> str:
    return str(Path(path).resolve())
