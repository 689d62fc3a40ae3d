# %% [markdown]
# # Step 3 · The CPT run
#
# The recipe: **AdamW, lr 5e-5, 10 warm-up steps, cosine decay, gradient clipping at 1.0,
# 256-token blocks, 150 steps** (the `smoke` preset shrinks all of it to run in seconds).
#
# <details><summary>Why? The recipe's four choices</summary>
#
# - **Why 5e-5?** The GPT-2 paper gives no learning rate ("manually tuned"); 6e-4 is the published
#   peak of GPT-3 Small, the same size (Brown et al., 2020, table 2.1), and nanoGPT's default. CPT
#   starts from weights that already sit in a good basin; about 8% of that peak moves them towards
#   code while limiting how far they drift from it. A rate near the pre-training peak would re-warm
#   the model hard and forget more English (the experiments below measure both).
# - **Why warm up?** Adam divides each update by the square root of a running estimate of the
#   gradient's second moment.
#   For the first steps that estimate rests on a handful of gradients, so the size of each
#   coordinate's early steps varies wildly (the variance RAdam, Liu et al. 2020, names). Ramping the
#   rate linearly over 10 steps keeps those first steps small while the estimate settles.
# - **Why cosine?** Decaying the rate smoothly to zero cools the model into a minimum at the end of
#   the budget. Over a long run it usually ends lower than a constant rate; over a short one at a
#   small rate it may not (the experiments below include exactly that comparison: read yours).
# - **Why clip at 1.0?** One odd batch (a minified file, a data table) can produce a huge gradient.
#   Clipping rescales the *gradient* to a global norm of at most 1.0 before AdamW sees it. It does
#   not set the update's length: Adam's step is `lr * m_hat / sqrt(v_hat)`, about `lr` per
#   coordinate whatever the gradient's scale. What it bounds is how much one step's gradient weighs
#   in Adam's running moments `m` and `v`, averages that remember about 1 / (1 - beta) steps
#   (Kingma & Ba, 2015): `m` forgets a spike within about 10 steps (beta1 = 0.9), and `v` within
#   about 20 with this lab's beta2 = 0.95 (`LabConfig.betas`, GPT-3's and nanoGPT's choice). With
#   PyTorch's default beta2 = 0.999, `v` would keep the spike for about 1,000 steps, longer than
#   this whole run, and shrink every update after it.
#
# </details>
#
# You write the schedule and the optimizer step; the loop that drives them is *Go further* (the
# lab's loop runs when you skip it), and the lab keeps checkpoints, precision and fast kernels.

# %% tags=["parameters"]
# Parameters (papermill's convention: `make lab` and the graders inject their own values after this
# cell)
PRESET = "auto"  # step 1 chose the preset; this notebook reads it from the run folder
RUN_DIR = "../runs/manual"  # the run folder every step reads and writes
SEED = 1234
OVERRIDES = {}  # any LabConfig field, e.g. {"max_steps": 150}
GO_FURTHER = False  # True runs Go further's long runs (speed table, two processes, recipe experiments)

# %%
import math

import torch

from checkers import check_cpt_loop, check_flops, check_optimizer_step, check_schedule, check_step3
from cptlab.notebook import cells
from cptlab.notebook.friendly import friendly_errors

friendly_errors()
RUN_DIR = cells.run_folder(RUN_DIR)

# %% [markdown]
# ## ✏️ Question 3.1 · The learning rate at a step (10 points)
#
# Optimizer steps are numbered from 1. Warm-up: `lr = peak_lr * step / warmup_steps` for
# `step <= warmup_steps`, so step 1 already updates (with `peak_lr / warmup_steps`) and the peak
# comes exactly at `warmup_steps`. Then a half cosine over the steps *after* warm-up:
# `progress = (step - warmup_steps) / (max_steps - warmup_steps)` and
# `lr = peak_lr * 0.5 * (1 + cos(pi * progress))`, which reaches 0 at `max_steps`.
#
# <details><summary>Why not transformers' scheduler?</summary>
#
# This is the formula of `transformers.get_cosine_schedule_with_warmup`, but that scheduler applies
# it to the 0-based count of steps taken, so its first update has lr 0; here step k, 1-based, uses
# the formula at k, so step 1 already learns and the last step has lr 0.
#
# </details>


# %%
def lr_at(step, peak_lr, warmup_steps, max_steps):
    """The learning rate of optimizer step ``step`` (1-based)."""
    ### BEGIN SOLUTION lr_at: the learning rate the recipe gives one optimizer step
    if step <= warmup_steps:
        return peak_lr * step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return peak_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
    ### END SOLUTION


# %%
check_schedule(lr_at)

# %% [markdown]
# ## ✏️ Question 3.2 · One optimizer step (16 points)
#
# `batch` is a `[batch_size, block_size]` LongTensor of token ids. One step: the forward pass with
# the loss (`model(batch, labels=batch).loss`: transformers shifts the labels, so position t
# predicts token t + 1), `backward()`, clip the **global** gradient norm at `max_norm`
# (`torch.nn.utils.clip_grad_norm_` returns the norm *before* clipping: return that one),
# `optimizer.step()`, and zero the gradients (`backward` adds into `.grad`). Return
# `(loss, grad_norm)`. The loop has already set this step's learning rate in the optimizer.


# %%
def optimizer_step(model, batch, optimizer, max_norm):
    """Forward, backward, clip, update, zero; return (loss, pre-clip gradient norm)."""
    ### BEGIN SOLUTION optimizer_step: one update of the model from one batch, returning what the loop logs
    loss = model(batch, labels=batch).loss
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach(), grad_norm
    ### END SOLUTION


# %%
check_optimizer_step(optimizer_step)

# %% [markdown] tags=["go-further"]
# ## ✏️ Go further · Question 3.3 · The CPT loop (6 points)
#
# The loop nanoGPT's `train.py` has at its heart, for continued pre-training. `run` gives you:
#
# - `run.cfg`: the recipe (`max_steps`, `cpt_lr`, `warmup_steps`, `grad_clip`, `curve_every`,
#   `stop_at_floor`, `retention_floor`);
# - `run.model`, `run.optimizer` (AdamW with **two** parameter groups: weight decay on every 2-D
#   tensor, the matrices and both embedding tables as in nanoGPT, none on biases and
#   LayerNorms), and `run.first_step`: 1, or the step after the last checkpoint when an
#   interrupted run resumes;
# - `run.batch(step)`: the step's batch of windows from your blocks (pass it on as it is);
# - `run.log`: the step's log row, from the step, its rate, and the loss and gradient norm your
#   `optimizer_step` returned;
# - `run.evaluate(step)`: the forgetting curve's point, both perplexities on the headline's tokens
#   with the step-1 protocol your `corpus_perplexity` passed; a dict whose `"forgetting_ratio"`
#   is what the floor is about. `run.curve` is the list of the points so far.
#
# For each step from `run.first_step` to `max_steps` (both included): compute the rate with
# `lr_at` and set it on **every** parameter group, call `optimizer_step` on the step's batch, log.
# Every `curve_every` steps and at the last, evaluate: in `eval()` mode (dropout off), under
# `torch.no_grad()` (no graph kept for a backward pass that never comes), then back to `train()`;
# append the point to `run.curve`, and only then, when `cfg.stop_at_floor` is set, stop if its
# ratio is above `cfg.retention_floor`. The check runs your loop on a small probe run against the
# lab's loop, step by step.


# %% tags=["go-further"]
def cpt_loop(run, lr_at, optimizer_step):
    """Steps run.first_step..max_steps; the curve every curve_every steps and at the last; stop above the floor."""
    ### BEGIN SOLUTION cpt_loop: the whole CPT run, step by step, with the forgetting curve and the floor
    cfg = run.cfg
    for step in range(run.first_step, cfg.max_steps + 1):
        lr = lr_at(step, cfg.cpt_lr, cfg.warmup_steps, cfg.max_steps)
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        batch = run.batch(step)
        loss, grad_norm = optimizer_step(run.model, batch, run.optimizer, cfg.grad_clip)
        run.log(step, lr, loss, grad_norm)
        if step % cfg.curve_every == 0 or step == cfg.max_steps:
            run.model.eval()
            with torch.no_grad():
                point = run.evaluate(step)
            run.model.train()
            run.curve.append(point)
            if cfg.stop_at_floor and point["forgetting_ratio"] > cfg.retention_floor:
                break
    ### END SOLUTION


# %% tags=["go-further"]
check_cpt_loop(cpt_loop)

# %% [markdown]
# ## The CPT run, on your loop, schedule and optimizer step
# This is the long cell of the notebook (about a minute on the `tiny` preset's CPU).

# %%
step3 = cells.run_cpt(RUN_DIR, lr_fn=lr_at, step_fn=optimizer_step, loop_fn=cpt_loop)

# %%
cells.loss_curve(RUN_DIR)
# %% [markdown]
# Read the three panels with the lines printed under the run cell, which give your run's numbers.
#
# <details><summary>Why? What each panel shows</summary>
#
# - **Loss.** One step's loss is one batch of a few windows, so it scatters around the trend (the
#   printed `+-` figure); the thick line is an exponential moving average, the trend to read. Where
#   it falls fastest is printed too: on both `tiny` and `smoke` it is the first ten-odd steps (on
#   `tiny`, the warm-up itself), when the model first adjusts to code's most frequent tokens; then
#   it falls more and more slowly as the cosine brings the rate down.
# - **Gradient norm.** The norm before clipping, against the clip line. When it sits above the line,
#   clipping rescales the gradient to norm 1.0 before AdamW's moments take it in. The printed count
#   says on how many of your run's steps that happened.
# - **Perplexities.** Code and English at the curve's points, relative to the base model (the legend
#   gives both ends): code falls steeply then levels off; English rises, by about 5% on `tiny` and
#   by far more on `smoke`, whose 30 steps at a high rate shake a barely trained base. Step 4 looks
#   at this trade-off closely.
#
# </details>
#
# ### Check step 3 (8 points)

# %%
check_step3(RUN_DIR)

# %% [markdown] tags=["go-further"]
# ## ✏️ Go further · Question 3.4 · The speed of your run (4 points)
#
# How much of the machine did your run use? **Model FLOPs utilisation (MFU)** is the FLOPs the model
# needs per second at your speed over what the device can do at its peak (PaLM's definition). The
# model's FLOPs per training token:
#
# - **the weights: 6N.** A token is multiplied by every weight once in the forward pass: 2 FLOPs
#   (a multiply and an add) per weight, 2N. The backward pass costs twice that (the gradient with
#   respect to the activations, and with respect to the weights): 4N. N counts each weight once:
#   GPT-2's `lm_head` *is* its token embedding (tied), and `model.parameters()` already lists it
#   once. The position table `transformer.wpe` is a lookup, not a product: leave it out.
# - **attention: 12 x n_layer x n_embd x block_size.** Each token's query meets up to `block_size`
#   keys, and the weighted sum reads as many values (nanoGPT's estimate, forward and backward).
#
# Return the FLOPs of one training token of `model` at `block_size` (`model.config` holds
# `n_layer` and `n_embd`). Then `mfu`: the FLOP/s your run achieved (tokens per second times FLOPs
# per token) over the device's peak **at the precision the run computed in**: `peak_flops` holds
# both, `{"fp32": ..., "bf16": ...}`: on NVIDIA's data-centre GPUs bf16's dense tensor-core peak is
# 4 to 16 times the plain fp32 peak (datasheets: A100 312 against 19.5 TFLOP/s, 16x; H100 SXM 989
# against 67, about 15x; L4 and L40S about 4x), about 2 times TF32's where TF32 is on, and on GeForce
# cards (bf16 with fp32 accumulation) about 2 times fp32's. Return a fraction (0.22, not 22). The
# cell after the check gives your run's.


# %% tags=["go-further"]
def flops_per_token(model, block_size):
    """Training FLOPs of one token: 6 x weights + 12 x n_layer x n_embd x block_size."""
    ### BEGIN SOLUTION flops_per_token: the compute one training token costs this model
    c = model.config
    n = sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()
    return 6 * n + 12 * c.n_layer * c.n_embd * block_size
    ### END SOLUTION


# %% tags=["go-further"]
def mfu(tokens_per_second, flops_per_token, peak_flops, precision):
    """Model FLOPs utilisation: achieved FLOP/s over the peak of the run's precision."""
    ### BEGIN SOLUTION mfu: the share of the device's peak your run used
    return tokens_per_second * flops_per_token / peak_flops[precision]
    ### END SOLUTION


# %% tags=["go-further"]
check_flops(flops_per_token, mfu)

# %% [markdown] tags=["go-further"]
# Your run's speed: tokens per second as step 3 measured them (the forgetting curve's evaluations
# left out), times your FLOPs per token, over the device's peak at the run's precision: the
# datasheet's dense figure on a known GPU; on a CPU, which has no figure a program can read, the
# best of a few large matrix products measured now. Then bf16 autocast against fp32 on this device:
# a few training steps of your adapted model at each precision, and its validation perplexity at
# each.

# %% tags=["go-further"]
speed = cells.speed_of_run(RUN_DIR, flops_fn=flops_per_token, mfu_fn=mfu, go_further=GO_FURTHER)

# %% [markdown] tags=["go-further"]
# Read the table as an engineer would. On a GPU, a small model's matrices are too small to fill the
# device and the host's Python overhead shows: GPT-2 124M at 64 x 256 tokens a step reached about
# 20% of an H100's bf16 peak in this lab's own loop (`benchmarks/gpu.sh`). An fp32 run measured
# against the fp32 peak can show a higher MFU while being slower in tokens per second: MFU at each
# run's own precision says how full the device is, not which run is faster; compare tokens per
# second for that. On a CPU the peak is the machine's own, measured on one large product, so the
# utilisation can look high. bf16 halves the bytes every product moves and, on hardware that
# multiplies bf16 natively (NVIDIA Ampere and newer, CPUs with AVX-512 BF16 or AMX), runs the
# products faster; where it is emulated (T4, V100, older CPUs) it runs slower, so `precision=auto`
# picks fp32 there. Its perplexity should move only in the fourth or fifth digit (the
# table's last line says by how much here): the weights, the optimizer's state and the losses stay
# float32 under autocast. The softmax does too on a GPU (CUDA autocast's float32 list); on a CPU,
# bf16 autocast runs softmax in bf16 (PyTorch's CPU autocast op lists), and the lab's CPU attention
# computes its softmax in float32 but writes bf16 weights.
#
# ## Two processes: data parallelism
#
# One H100 trains GPT-2 124M at about 250,000 tokens a second in this lab's loop at 64 windows of
# 256 tokens a step (`benchmarks/gpu.sh`; the `gpt2` preset's 16 windows a step have not been
# timed); to go faster you add devices. **Distributed data parallel (DDP)** is the
# first step: every process holds a whole copy of the model and the optimizer, takes its share of
# each step's batch, and computes the gradients of its share. During the backward pass PyTorch's
# `DistributedDataParallel` averages the gradients across processes (an all-reduce, in buckets,
# overlapping the backward's compute); every process then applies the same update, so the copies
# stay identical. With the same *global* batch it is the same mathematics as one process, only
# split.
#
# The cell below checks that claim on your blocks: four steps of the lab's loop from the base model
# in one process, then the same four under `torchrun --nproc_per_node 2` (NCCL when there is a GPU
# for each process, gloo on CPUs), each process with half the batch. In fp32 and with dropout off in
# both runs, so that the two agree to float rounding: bf16 would blur the comparison, and with
# dropout (GPT-2's config has 0.1; `tiny`'s base has none) each process draws its own masks, so two
# processes train on other masks than one and their losses differ in the third or fourth digit. The
# CPT run itself keeps the model's dropout. On this machine both processes share the same
# CPU cores, so do not expect a speed-up here: the point is that the losses agree (about 15 seconds
# on `tiny`).

# %% tags=["go-further"]
ddp = cells.two_processes(RUN_DIR, go_further=GO_FURTHER)

# %% [markdown] tags=["go-further"]
# ## ✍️ Go further · Question W5 (3 points, graded by your instructor)
# Your table shows two processes with half the batch each giving the one-process loss. Now the
# `gpt2` run (GPT-2 124M, a global batch of 16 windows of 256 tokens, 150 steps) goes to **8 GPUs**
# in one server, then to **64 GPUs** in 8 servers. What changes at each size: the windows each GPU
# gets, what each step's all-reduce moves (how many bytes, over which link) against the compute it
# must hide behind, and what you would change in the recipe (global batch, learning rate, warm-up,
# steps) or in the code (data sharding, evaluation, checkpoints)? Say how many GPUs you would use
# for this lab's run, and why. Answer in 6 to 10 sentences.

# %% [markdown] tags=["answer", "W5", "go-further"]
# ### BEGIN SOLUTION
# My table: the two-process losses matched the one-process ones to about 1e-6 (fp32 and dropout off,
# so only the order of the gradient sums differs), and two processes on this 2-core CPU were slower
# than one: the same cores, plus gloo's all-reduce every step. Data parallelism speeds a run up when
# each process has its own device and the communication left exposed after DDP overlaps it with the
# backward pass costs less than the compute the extra devices save; near-linear scaling needs it
# almost fully hidden.
#
# At 8 GPUs in one server the 16 windows give 2 per GPU: 512 tokens, about 6 x 124M x 512 = 0.4
# TFLOP of forward and backward, a few milliseconds on a modern GPU. Each step's all-reduce moves
# the whole gradient, 124M values: under autocast the weights and their gradients stay fp32, so
# about 500 MB (250 MB only with a bf16 compression hook), and a ring all-reduce sends and receives
# about 2 x 7/8 of that per GPU, ~0.9 GB, over NVLink at hundreds of GB/s: also a few milliseconds,
# so DDP hides only part of it behind the backward pass and the speed-up is well below 8x. The maths
# is unchanged (same global batch), so rate, warm-up and steps stay.
#
# At 64 GPUs the 16 windows cannot even be shared out (the lab refuses a batch smaller than the
# number of processes). The global batch has to grow, to at least 64 windows and better 4-8 per GPU
# (256-512), and the all-reduce now crosses servers over InfiniBand: an H100's NVLink 4 moves 900
# GB/s (both directions together, 450 each way), one 400 Gb/s NDR NIC 50 GB/s each way, so with one
# NIC per GPU each GPU's link out of the server is about 9 times slower than its NVLink (NVIDIA's
# H100 and ConnectX-7 datasheets), and the inter-server ring sets the all-reduce's time. A larger
# batch changes the recipe: fewer steps for the same tokens (or 16-32x the tokens in 150 steps), a
# learning rate retuned for the batch (square-root or linear scaling as a start, with warm-up, then
# checked by an experiment like the ones above). In the code, each rank should read its own shard of
# the data instead of all drawing the same global batch, evaluation should be sharded across ranks
# (or done by rank 0 alone), and only rank 0 writes checkpoints and results. At 124M parameters the
# weights, gradients and AdamW's states (about 16 bytes a parameter, 2 GB) fit on one GPU many times
# over, so plain DDP suffices. FSDP or ZeRO shard that memory: stages 1 and 2 (optimizer state,
# gradients) move the same bytes as DDP's all-reduce and full sharding about 1.5 times as many
# (Rajbhandari et al., 2020, section 7); they fit models that would not, or larger batches per GPU,
# rather than cut communication.
#
# For this lab's run (150 steps of 4,096 tokens, 614k tokens: seconds of training on one H100, even
# well below the 250k tokens/s measured at 64 windows a step) I would use one GPU: already at
# 8, communication eats most of the gain at this batch, and 64 would change the experiment itself.
# ### END SOLUTION

# %% [markdown] tags=["go-further"]
# ## Go further · The recipe, tested
#
# The top of this notebook answers "why 5e-5, why warm up, why cosine" in prose. Here your own
# loop, schedule and optimizer step answer them by measurement: five short runs from the base model
# on your blocks, a third of the recipe's steps each, with the same seed (so the same batches),
# scored like the headline (the same tokens, paired 95% intervals against the base model): the
# recipe; 6e-4, 12x the recipe's rate (GPT-3 Small's pre-training peak); no warm-up, at both
# rates; and warm-up then a flat rate in place of the cosine. The lines under the table say which
# differences the intervals can see (about 45 seconds on `tiny`).

# %% tags=["go-further"]
experiments = cells.recipe_experiments(
    RUN_DIR, lr_fn=lr_at, step_fn=optimizer_step, loop_fn=cpt_loop, go_further=GO_FURTHER
)

# %% tags=["go-further"]
cells.experiments_plot(RUN_DIR, go_further=GO_FURTHER)

# %% [markdown] tags=["go-further"]
# ## ✍️ Go further · Question W3 (3 points, graded by your instructor)
# How many of your steps were clipped (the line under the run cell says), and what does it mean for
# the updates when most steps are clipped? Then, from your experiments' table: what did 6e-4 do to
# the code gain and to the forgetting, what did warm-up change, at each rate, and what did a flat
# rate change against the cosine? Cite your numbers and say which differences the intervals can
# see; which of the recipe's choices does your run support, and which not on this budget? Answer in
# 5 to 8 sentences.

# %% [markdown] tags=["answer", "W3", "go-further"]
# ### BEGIN SOLUTION
# On the tiny preset the pre-clip norm sat above 1.0 at nearly every step, so nearly every gradient
# was rescaled to norm 1.0 before AdamW took it in. That does not set the update's length (Adam's
# step is about lr per coordinate whatever the gradient's scale); it changes how much each step's
# gradient weighs in Adam's moments m and v: every step now weighs the same, and a spike cannot
# dominate them. It is not a sign of divergence (the loss fell), but the threshold no longer singles
# out rare spikes; in production I would set it above the typical norm, or log and watch it (with
# batches of 4 windows the norm is noisy).
#
# The experiments (50 steps each, tiny): 6e-4 gained far more code (53.9% [52.3, 55.3] against 17.9%
# [17.1, 18.5]) but forgot much more English (ratio 1.496 [1.438, 1.551] against 1.020 [1.009,
# 1.030]); the loss showed no spike, the price came as forgetting. Warm-up, by the paired gaps under
# the table: at 5e-5 leaving it out cost 0.8 points of code drop [0.8, 0.9] and saved 0.003 of
# forgetting [0.001, 0.005], gaps this evaluation sees but no larger than another seed could move
# (the intervals hold no training noise); at 6e-4 leaving it out raised the ratio by 0.136 [0.110,
# 0.167]: warm-up protects at high rates. A flat rate gained 8.2 points more than the cosine [7.8,
# 8.5] and forgot 0.017 more [0.011, 0.022]: on 50 steps the cosine mostly trains less (its rate
# decays over 40 of them), so this budget moves the run along the trade-off rather than showing the
# cool-down's benefit. The run supports the low rate and warm-up at high rates, not the cosine.
# Caveat: one seed, one short budget.
# ### END SOLUTION
