"""Writes the four step notebooks (committed without outputs). Edit here, then run:
    python notebooks/make_notebooks.py
"""
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

PARAMS = '''# Parameters (papermill's convention: `make lab` injects its own values after this cell)
PRESET = "tiny"          # tiny: CPU, offline (default) | gpt2: the real lab on a GPU | smoke: seconds, for CI
RUN_DIR = "../runs/manual"  # the run folder every step reads and writes
SEED = 1234
OVERRIDES = {}           # any LabConfig field, e.g. {"max_steps": 150}'''

SETUP = '''from pathlib import Path
from cptlab import lab, plots
from cptlab.friendly import friendly_errors
friendly_errors()  # the lab's own errors show as one message that says what to do
from cptlab.results import read_step
from checkers import check_step{n}
RUN_DIR = str(Path(RUN_DIR).resolve())'''


def nb(cells):
    book = new_notebook(cells=cells)
    book.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    book.metadata["language_info"] = {"name": "python"}
    return book


def params_cell():
    c = new_code_cell(PARAMS)
    c.metadata["tags"] = ["parameters"]
    return c


def step1():
    return nb([
        new_markdown_cell("""# Step 1 · Baseline: how well does the base model know code, and English?

**Continued pre-training (CPT, also called domain-adaptive pre-training, DAPT)** keeps training a
pretrained language model with its *original* objective, next-token prediction on raw text, but on
text from one domain: here, Python source. It is not fine-tuning on labelled pairs or instructions:
no prompts, no answers, just more pre-training, on a narrower diet.

CPT buys a gain on the new domain and may cost some of what the model knew: *catastrophic
forgetting*. This lab measures both sides with one yardstick, **perplexity**:

$$\\mathrm{ppl} = \\exp\\Big(\\frac{1}{N}\\sum_{i=1}^{N} -\\log p(x_i \\mid x_{<i})\\Big)$$

summed over every scored token of a corpus (never a mean of per-batch perplexities). A perplexity
of 20 means the model is, on average, as unsure as if it picked among 20 equally likely tokens.

**The protocol** (the same for every number in this lab): documents joined by the EOS token into
one stream; non-overlapping windows of `block_size` tokens; each window scores its tokens 2..n
given the earlier ones; no padding is ever scored. Numbers from a different protocol (another
block size, a sliding stride, another split) are not comparable, which is why every result carries
its protocol card."""),
        params_cell(),
        new_code_cell(SETUP.format(n=1)),
        new_code_cell('''from cptlab import get_config
cfg = get_config(PRESET, seed=SEED, **OVERRIDES)
print(f"preset {cfg.preset}: block_size {cfg.block_size}, CPT lr {cfg.cpt_lr}, {cfg.max_steps} steps, run folder {RUN_DIR}")'''),
        new_markdown_cell("""On the `gpt2` preset the base model is GPT-2 124M. On the embedded `tiny` preset, cptlab
pre-trains a small GPT-2-architecture model on the Wikipedia sample shipped inside `gensim` (plus a
little Python, as WebText held some), once, and caches it: the first run takes a few minutes, later
runs start at once.

The code set is the **validation split** of the CPT corpus built in step 2 (2% of the documents,
never trained on); the English set is WikiText-2 (`gpt2`) or held-out whole Wikipedia articles
(`tiny`)."""),
        new_code_cell('''step1 = lab.run_step1(cfg, RUN_DIR)
print(lab.step_table(step1, ["base_model", "model_params", "baseline_code_ppl", "baseline_general_ppl"]))
print("protocol:", step1["code"]["protocol"])'''),
        new_code_cell("plots.baseline_bars(RUN_DIR);"),
        new_markdown_cell("""**Why GPT-2's code perplexity starts close to its English one.** GPT-2 was trained on WebText,
pages linked from Reddit, and a fair share of them hold code: GitHub pages, Stack Overflow answers,
tutorials. So GPT-2 is not a stranger to Python. Its code perplexity is already in the range of its
English one, and CPT has room to improve it because code is far more predictable than prose once a
model knows the idioms. The tiny base model mirrors this with a small share of Python in its own
pre-training mix. Which side is higher depends on the model and the protocol; the check below
asserts neither direction, only that both numbers are sound."""),
        new_markdown_cell("### Check step 1"),
        new_code_cell("check_step1(RUN_DIR)"),
    ])


def step2():
    return nb([
        new_markdown_cell("""# Step 2 · The CPT corpus: one token stream, split, cut into blocks

Pre-training data is not a set of examples; it is a **stream**. Every document (a `.py` file) is
tokenized, an **EOS token** is appended after it, and all of them are concatenated into one 1-D
array of token ids. The stream is then reshaped into `block_size` windows (Hugging Face's
`group_texts` idea; nanoGPT's `train.bin`).

**Why EOS between documents?** Without a separator the model sees the end of `os.py` run straight
into the top of `json/__init__.py` and learns that such jumps are normal text. With EOS it learns
that a file has ended, which also lets generation stop cleanly. (`run_clm.py` adds none, a known
pitfall.)

**Why a 98/2 split is enough.** The split is made on whole documents, so no file leaks half into
training and half into validation. Two percent sounds small, but what matters for a stable
perplexity is the number of tokens scored: with tens of thousands of tokens on each side the
estimate's noise is far below the effects we measure (tens of percent)."""),
        params_cell(),
        new_code_cell(SETUP.format(n=2)),
        new_code_cell('''step2 = lab.run_step2(RUN_DIR)
print(lab.step_table(step2, ["n_docs", "n_tokens", "eos_count", "train_docs", "val_docs",
                             "train_tokens", "val_tokens", "val_fraction", "block_size", "n_blocks"]))'''),
        new_markdown_cell("""Document lengths vary over orders of magnitude: most files span many blocks, short ones share
a block with their neighbours, separated by EOS."""),
        new_code_cell("plots.corpus_figures(RUN_DIR);"),
        new_markdown_cell("Here is one training window that crosses a document boundary, decoded back to text; the EOS token marks the seam:"),
        new_code_cell('''w = lab.eos_window(RUN_DIR)
print(f"EOS at positions {w['eos_positions']} of a {w.get('block_size')}-token window\\n")
print(w["text"].replace(w.get("eos_token", "<|endoftext|>"), "\\n\u2588\u2588\u2588 <|endoftext|> \u2588\u2588\u2588\\n"))'''),
        new_markdown_cell("### Check step 2"),
        new_code_cell("check_step2(RUN_DIR)"),
    ])


def step3():
    return nb([
        new_markdown_cell("""# Step 3 · The CPT run

The recipe: **AdamW, lr 5e-5, 10 warm-up steps, cosine decay, gradient clipping at 1.0,
256-token blocks, 150 steps.**

- **Why 5e-5?** GPT-2 was pre-trained with a peak of 6e-4. CPT starts from weights that already sit
  in a good basin; a rate of about 8% of the original peak moves them towards code without
  shaking loose what they know. A rate near the original peak would re-warm the model hard and
  forget much more English.
- **Why warm up?** Adam divides each update by a running estimate of the gradient's second moment.
  For the first steps those estimates rest on a handful of gradients and are noisy, so the early
  updates can be far too large. Ramping the rate linearly over 10 steps lets them settle.
- **Why cosine?** Decaying the rate smoothly to zero cools the model down into a minimum at the end
  of the budget, which gives a lower final loss than a constant rate (and fewer forgotten facts than
  stopping at the peak).
- **Why clip at 1.0?** A single odd batch (a minified file, a data table) can produce a huge
  gradient; clipping the global norm bounds every update's size.

Gradient accumulation, when used, divides the summed loss by the tokens of the whole step, so that
accumulating equals one large batch exactly."""),
        params_cell(),
        new_code_cell(SETUP.format(n=3)),
        new_code_cell('''step3 = lab.run_step3(RUN_DIR)
print(f"{len(step3['log'])} steps, {step3['tokens_seen']:,} tokens in {step3['seconds']:.1f} s "
      f"({step3['tokens_per_second']:,.0f} tokens/s); adapted model in {step3['adapted_model']}")'''),
        new_code_cell("plots.loss_curve(RUN_DIR);"),
        new_markdown_cell("""The loss falls fastest right after warm-up, while the rate is high, and flattens as the
cosine cools it. A loss that rose steadily, or spiked, would mean the rate is too high for this
model."""),
        new_markdown_cell("### Check step 3"),
        new_code_cell("check_step3(RUN_DIR)"),
    ])


def step4():
    return nb([
        new_markdown_cell("""# Step 4 · The trade-off: what CPT gained on code, and what it cost in English

Two numbers summarise the run, both on exactly the tokens and protocol of step 1:

- **code perplexity drop** `= 1 - adapted_code_ppl / baseline_code_ppl` (the gain);
- **forgetting ratio** `= adapted_general_ppl / baseline_general_ppl` (the cost): 1.0 means no
  English forgotten, 1.10 means English perplexity rose by 10%.

Production teams set a *retention floor* (say a ratio of at most 1.05 to 1.10 on their general
benchmark) and take the largest domain gain that stays under it."""),
        params_cell(),
        new_code_cell(SETUP.format(n=4)),
        new_code_cell('''step4 = lab.run_step4(RUN_DIR)
print(lab.step_table(step4, ["baseline_code_ppl", "adapted_code_ppl", "code_ppl_drop",
                             "baseline_general_ppl", "adapted_general_ppl", "forgetting_ratio"]))'''),
        new_code_cell("plots.before_after(RUN_DIR);"),
        new_markdown_cell("""## The forgetting curve

An endpoint hides the path. During the CPT run (step 3) both sets were evaluated every few steps,
on capped sets under the same protocol. The curve shows *when* English starts to slip, and the
retention floor marks where a production team would have stopped. Because the curve scores only
the first `curve_max_tokens` tokens of each set (to keep the run fast), its last point can differ a
little from the headline numbers above, which score the whole evaluation sets."""),
        new_code_cell('''floor = read_step(RUN_DIR, 3)["floor"]
print(floor)
plots.forgetting_curve(RUN_DIR);'''),
        new_markdown_cell("""## The production choices

- **Pure CPT** (this run): the largest gain per step, and the most forgetting. Right when the
  model will only ever see the new domain.
- **Replay mixing**: keep a share of general text in every batch (a few percent for a mild shift,
  up to about a quarter for a strong one such as English to code). It costs a little domain gain
  and buys back much of the forgetting; Code Llama kept about 7% natural language for this reason.
- **LoRA on frozen weights**: train small low-rank adapters and leave the base weights
  bit-identical. It learns less and forgets less ("LoRA Learns Less and Forgets Less"), and the
  base model stays available by switching the adapter off.
- **Weight souping / interpolation**: after training, average base and adapted weights,
  `theta(alpha) = (1 - alpha) theta_base + alpha theta_cpt` (WiSE-FT). No training at all; sweeping
  alpha traces a curve from the base model to the CPT model, often above the straight line between
  them.

Which one wins is an empirical question on your data, model and floor, so we measure all of them
here with the same steps, tokens per step and evaluation protocol as the pure CPT run: replay at
several shares, LoRA (GPT-2's `Conv1D` layers need `fan_in_fan_out=True`), and an interpolation
grid. This cell trains several short runs: it is the longest of the lab."""),
        new_code_cell('''from cptlab import tradeoff
study = tradeoff.run_study(RUN_DIR)
print(tradeoff.study_table(study))'''),
        new_code_cell("plots.tradeoff_plot(RUN_DIR);"),
        new_markdown_cell("""The points on the upper-left edge (the Pareto front, marked large) are the defensible
choices: none of the others gains more on code while forgetting less. The recommendation above is
computed from the numbers: the largest code gain whose forgetting ratio stays under the floor."""),
        new_markdown_cell("### Check step 4"),
        new_code_cell("check_step4(RUN_DIR)"),
    ])


def main():
    for name, make in [("01_baseline", step1), ("02_corpus", step2), ("03_cpt", step3), ("04_tradeoff", step4)]:
        nbformat.write(make(), HERE / f"{name}.ipynb")


if __name__ == "__main__":
    main()
