# %% [markdown]
# # Step 4 · The trade-off: what CPT gained on code, and what it cost in English
#
# Two numbers summarise the run, both on exactly the tokens and protocol of step 1:
#
# - **code perplexity drop**: the fraction of the base model's code perplexity that CPT removed
#   (the gain);
# - **forgetting ratio**: English perplexity after CPT over before (the cost): 1.0 means no English
#   forgotten, 1.10 means English perplexity rose by 10%.
#
# Production teams set a *retention floor* (say a forgetting ratio of at most 1.05 to 1.10 on their
# general benchmark) and take the largest domain gain that stays under it.

# %% tags=["parameters"]
# Parameters (papermill's convention: `make lab` and the graders inject their own values after this cell)
PRESET = "tiny"          # tiny: CPU, offline (default) | gpt2: the real lab on a GPU | smoke: seconds, for CI
RUN_DIR = "../runs/manual"  # the run folder every step reads and writes
SEED = 1234
OVERRIDES = {}           # any LabConfig field, e.g. {"max_steps": 150}

# %%
from checkers import check_choice, check_production_choices, check_step4, check_tradeoff
from cptlab import cells
from cptlab.friendly import friendly_errors

friendly_errors()
RUN_DIR = cells.run_folder(RUN_DIR)

# %% [markdown]
# ## ✏️ Question 4.1 · The two numbers (6 points)
# Both are ratios of perplexities (a perplexity is a geometric quantity: a difference of 5 means
# little at 1,000 and a lot at 10). Return fractions, not percentages: a 35% drop is `0.35`.

# %%
def code_ppl_drop(baseline_code_ppl, adapted_code_ppl):
    """The fraction of the base model's code perplexity removed by CPT."""
    ### BEGIN SOLUTION code_ppl_drop: 1 - adapted / baseline
    return 1.0 - adapted_code_ppl / baseline_code_ppl
    ### END SOLUTION


def forgetting_ratio(baseline_general_ppl, adapted_general_ppl):
    """English perplexity after CPT over before."""
    ### BEGIN SOLUTION forgetting_ratio: adapted / baseline
    return adapted_general_ppl / baseline_general_ppl
    ### END SOLUTION


# %%
check_tradeoff(code_ppl_drop, forgetting_ratio)

# %%
step4 = cells.run_step4(RUN_DIR, drop_fn=code_ppl_drop, ratio_fn=forgetting_ratio)

# %%
cells.before_after(RUN_DIR);

# %% [markdown]
# ## The forgetting curve
#
# An endpoint hides the path. During the CPT run (step 3) both sets were evaluated every few steps
# under the same protocol, on the first `curve_max_tokens` tokens of each set (to keep the run
# fast; the headline above scores the whole sets, so the curve's last point can differ from it).
# The curve shows *when* English starts to slip, and the retention floor marks where a production
# team would have stopped.

# %%
cells.show_floor(RUN_DIR)
cells.forgetting_curve(RUN_DIR);

# %% [markdown]
# ## The production choices
#
# - **Pure CPT** (this run): the largest gain per step, and the most forgetting. Right when the
#   model will only ever see the new domain.
# - **Replay mixing**: keep a share of general text in every batch (a few percent for a mild shift,
#   up to about a quarter for a strong one such as English to code). It costs a little domain gain
#   and buys back much of the forgetting; Code Llama kept about 7% natural language for this reason.
# - **LoRA on frozen weights**: train small low-rank adapters and leave the base weights
#   bit-identical; the base stays available by switching the adapter off, and one base can serve
#   many adapters. Whether it also forgets less is an empirical question: measure it.
# - **Weight souping / interpolation**: after training, average base and adapted weights,
#   `theta(alpha) = (1 - alpha) theta_base + alpha theta_cpt` (WiSE-FT). No training at all; sweeping
#   alpha traces a curve from the base model to the CPT model.
#
# Which one wins is an empirical question on your data, model and floor, so the lab measures all of
# them with the same steps, tokens per step and evaluation tokens as your run.
#
# ## ✏️ Question 4.2 · The choice under a retention floor (5 points)
# `variants` is a list of dicts with `name`, `choice`, `code_ppl_drop` and `forgetting_ratio`.
# Return the `name` of the variant with the largest `code_ppl_drop` among those whose
# `forgetting_ratio` is at most `floor`; if none is, the one with the smallest `forgetting_ratio`.
# The study below uses your function for its recommendation.

# %%
def choose_variant(variants, floor):
    """The name of the largest code gain that stays at or under the retention floor."""
    ### BEGIN SOLUTION choose_variant: keep forgetting_ratio <= floor, take the largest code_ppl_drop; if none, the smallest forgetting_ratio
    under = [v for v in variants if v["forgetting_ratio"] <= floor]
    if under:
        return max(under, key=lambda v: v["code_ppl_drop"])["name"]
    return min(variants, key=lambda v: v["forgetting_ratio"])["name"]
    ### END SOLUTION


# %%
check_choice(choose_variant)

# %% [markdown]
# This cell trains several short runs: it is the longest of the lab (about 3 minutes on `tiny`).

# %%
study = cells.run_study(RUN_DIR, choose_fn=choose_variant)

# %%
cells.tradeoff_plot(RUN_DIR);

# %% [markdown]
# ## ✏️ Question 4.3 · Four production scenarios (4 points)
# For each scenario, name the variant of *your* study you would ship (a `name` from the table above),
# decided from the numbers, not by hand, so that the same function gives the right choice on any
# study:
#
# - `code_only_assistant`: only code matters; English may go;
# - `english_within_floor`: English must stay within the retention floor;
# - `per_customer_adapters`: many customers each get their own adaptation, served on one shared base;
# - `no_training_budget`: no budget for another training run: only what the weights you already have
#   allow.

# %%
def production_choices(variants, floor):
    """{scenario: variant name} for the four scenarios, decided from the measured variants."""
    ### BEGIN SOLUTION production_choices: a dict of the four scenarios, each the name of a measured variant chosen by its numbers
    def best(vs):
        return max(vs, key=lambda v: v["code_ppl_drop"])["name"]

    return {
        "code_only_assistant": best(variants),
        "english_within_floor": choose_variant(variants, floor),
        "per_customer_adapters": best([v for v in variants if v["choice"] == "lora"]),
        "no_training_budget": choose_variant([v for v in variants if v["choice"] == "interpolation"], floor),
    }
    ### END SOLUTION


# %%
check_production_choices(production_choices, RUN_DIR)

# %% [markdown]
# ### Check step 4 (5 points)
# The check recomputes every number of the step and of the study from its raw sums, the interpolation
# endpoints, the frozen LoRA base, the realised replay shares and the recommendation.

# %%
check_step4(RUN_DIR)

# %% [markdown]
# ## ✍️ Question W4 (3 points, graded by your instructor)
# What did LoRA do in your run, compared with pure CPT and with replay (cite your numbers)? Give
# one mechanism that explains it and one thing you would try next. Then say which variant you would
# ship for `english_within_floor`, and its main caveat.

# %% [markdown] tags=["answer", "W4"]
# ### BEGIN SOLUTION
# In this run LoRA (r=8, lr 5e-4, on every attention and MLP projection) gained much less on code
# than pure CPT and did not forget less: its forgetting ratio was above pure CPT's. "LoRA learns less
# and forgets less" is a finding at matched training on large models; here the adapters' rate is 10x
# the full model's and every linear layer is adapted, so the low-rank update still moves the shared
# representation the English depends on, while its small rank limits what it can learn about code.
# Next I would sweep its rate (1e-4 to 1e-3) and rank (8, 64), try attention-only targets, and
# compare at matched code gain with full CPT at lower rates. For `english_within_floor` I ship the
# recommended variant (replay at a small share in this run): it keeps most of the gain under the
# floor. Caveat: one seed and a few validation documents; the differences between replay shares are
# within a few points, close to the seed-to-seed spread.
# ### END SOLUTION
