"""The checks of the learner's code, tested with right and wrong implementations: every typical
mistake is a mutant here, and its check must fail it with that mistake's name in a hint."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from checkers import (
    check_blocks,
    check_choice,
    check_cpt_loop,
    check_flops,
    check_interpolate,
    check_lora_config,
    check_optimizer_step,
    check_pack,
    check_perplexity,
    check_production_choices,
    check_replay_schedule,
    check_schedule,
    check_split,
    check_tradeoff,
)
from checkers.core.questions import QUESTIONS
from cptlab.model.loop import cpt_loop


def hints(report) -> str:
    return " | ".join(c.hint for c in report.failures)


def assert_full(report):
    assert report.passed, str(report)
    assert report.points == pytest.approx(QUESTIONS[report.question].points)


def assert_named(report, mistake: str):
    assert not report.passed, str(report)
    assert f"mistake: {mistake}" in hints(report), str(report)
    assert report.points < report.max_points


SEEDS = range(20)  # every mutant fails on every one of these seeds: a check that decides the same way on every call


def named_on_every_seed(check, mistake: str, *fns):
    for seed in SEEDS:
        assert_named(check(*fns, seed=seed), mistake)


# ----------------------------------------------------------------------------- perplexity
def _windows(ids, block):
    for b in range(0, len(ids), block):
        x = ids[b : b + block]
        if len(x) >= 2:
            yield x


def ppl_ok(model, ids, block):
    with torch.no_grad():
        s, n = 0.0, 0
        for x in _windows(ids, block):
            s += F.cross_entropy(model(x[None]).logits[0, :-1], x[1:], reduction="sum").item()
            n += len(x) - 1
    return math.exp(s / n), s, n


def ppl_mean_of_ppl(model, ids, block):
    with torch.no_grad():
        per = [
            (F.cross_entropy(model(x[None]).logits[0, :-1], x[1:], reduction="sum").item(), len(x) - 1)
            for x in _windows(ids, block)
        ]
    s, n = sum(a for a, _ in per), sum(b for _, b in per)
    return float(np.mean([math.exp(a / b) for a, b in per])), s, n


def ppl_mean_of_losses(model, ids, block):
    with torch.no_grad():
        per = [
            (F.cross_entropy(model(x[None]).logits[0, :-1], x[1:], reduction="sum").item(), len(x) - 1)
            for x in _windows(ids, block)
        ]
    s, n = sum(a for a, _ in per), sum(b for _, b in per)
    return math.exp(float(np.mean([a / b for a, b in per]))), s, n


def ppl_first_token(model, ids, block):
    ppl, s, n = ppl_ok(model, ids, block)
    n = len(ids)  # counts every token of every window as scored
    return math.exp(s / n), s, n


def ppl_padded(model, ids, block):
    with torch.no_grad():
        s, n = 0.0, 0
        for x in _windows(ids, block):
            x = torch.cat([x, torch.zeros(block - len(x), dtype=x.dtype)])
            s += F.cross_entropy(model(x[None]).logits[0, :-1], x[1:], reduction="sum").item()
            n += block - 1
    return math.exp(s / n), s, n


def ppl_with_grad(model, ids, block):
    s, n = 0.0, 0
    for x in _windows(ids, block):
        s += F.cross_entropy(model(x[None]).logits[0, :-1], x[1:], reduction="sum").item()
        n += len(x) - 1
    return math.exp(s / n), s, n


def stub(*args):
    raise NotImplementedError("corpus_perplexity: write it")


def test_perplexity_check_passes_a_right_function_on_fresh_cases():
    for _ in range(3):
        assert_full(check_perplexity(ppl_ok))


@pytest.mark.parametrize(
    "fn, mistake",
    [
        (ppl_mean_of_ppl, "a mean of per-window perplexities"),
        (ppl_mean_of_losses, "an unweighted mean of window losses"),
        (ppl_first_token, "scoring the first token of a window"),
        (ppl_padded, "scoring padding"),
        (ppl_with_grad, "gradients enabled"),
    ],
)
def test_perplexity_mistakes_are_named(fn, mistake):
    named_on_every_seed(check_perplexity, mistake, fn)


def test_a_stub_reports_not_implemented_yet_with_no_points():
    report = check_perplexity(stub)
    assert (
        report.status == "not implemented yet" and report.points == 0 and report.max_points == QUESTIONS["1.1"].points
    )
    assert "not implemented yet" in report._repr_html_() and "Traceback" not in str(report)


def test_a_crash_is_a_failed_check_with_the_line():
    def broken(model, ids, block):
        return 1 / 0

    report = check_perplexity(broken)
    assert not report.passed and "ZeroDivisionError" in report.failures[0].got and "line" in report.failures[0].got


# ----------------------------------------------------------------------------- packing, split, blocks
def pack_ok(docs, eos):
    return np.concatenate([np.append(d, eos) for d in docs])


def pack_no_eos(docs, eos):
    return np.concatenate(docs)


def pack_eos_before(docs, eos):
    return np.concatenate([np.r_[eos, d] for d in docs])


def split_ok(docs, eos, frac, seed):
    order = np.random.default_rng(seed).permutation(len(docs)).tolist()
    target, val, held = frac * sum(len(d) + 1 for d in docs), set(), 0
    for i in reversed(order):
        if held >= target:
            break
        val.add(i)
        held += len(docs[i]) + 1
    return pack_ok([docs[i] for i in order if i not in val], eos), pack_ok([docs[i] for i in order if i in val], eos)


def split_cut_stream(docs, eos, frac, seed):
    order = np.random.default_rng(seed).permutation(len(docs))
    stream = pack_ok([docs[i] for i in order], eos)
    cut = int(len(stream) * (1 - frac))
    cut += int(stream[cut - 1] == eos)  # the 98% position, which lands inside a document
    return stream[:cut], stream[cut:]


def split_from_the_start(docs, eos, frac, seed):
    order = np.random.default_rng(seed).permutation(len(docs)).tolist()
    target, val, held = frac * sum(len(d) + 1 for d in docs), set(), 0
    for i in order:
        if held >= target:
            break
        val.add(i)
        held += len(docs[i]) + 1
    return pack_ok([docs[i] for i in order if i not in val], eos), pack_ok([docs[i] for i in order if i in val], eos)


def blocks_ok(stream, block):
    n = len(stream) // block * block
    return np.asarray(stream[:n]).reshape(-1, block)


def split_strictly_over(docs, eos, frac, seed):
    order = np.random.default_rng(seed).permutation(len(docs)).tolist()
    target, val, held = frac * sum(len(d) + 1 for d in docs), set(), 0
    for i in reversed(order):
        if held > target:
            break
        val.add(i)
        held += len(docs[i]) + 1
    return pack_ok([docs[i] for i in order if i not in val], eos), pack_ok([docs[i] for i in order if i in val], eos)


def blocks_drop_one_too_many(stream, block):
    n = (len(stream) - 1) // block
    return np.asarray(stream[: n * block]).reshape(-1, block)


def blocks_keep_tail(stream, block):
    pad = (-len(stream)) % block
    return np.concatenate([stream, np.zeros(pad, dtype=stream.dtype)]).reshape(-1, block)


def test_corpus_checks_pass_right_functions():
    assert_full(check_pack(pack_ok))
    assert_full(check_split(split_ok))
    assert_full(check_blocks(blocks_ok))


@pytest.mark.parametrize(
    "check, fn, mistake",
    [
        (check_pack, pack_no_eos, "no EOS"),
        (check_pack, pack_eos_before, "EOS before each document rather than after"),
        (check_split, split_cut_stream, "a split that cuts a document"),
        (check_blocks, blocks_keep_tail, "the leftover tail kept"),
        (check_split, split_strictly_over, "one document too many at the boundary"),
        (check_blocks, blocks_drop_one_too_many, "a block dropped when there is no tail"),
    ],
)
def test_corpus_mistakes_are_named(check, fn, mistake):
    named_on_every_seed(check, mistake, fn)


def test_a_split_by_another_rule_fails_the_seeded_rule():
    failed = {c.id for c in check_split(split_from_the_start).failures}
    assert "q2.2.seeded_rule" in failed


# ----------------------------------------------------------------------------- schedule
def lr_ok(step, peak, warm, total):
    if step <= warm:
        return peak * step / warm
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / (total - warm)))


def lr_zero_first(step, peak, warm, total):
    return peak * (step - 1) / warm if step <= warm else lr_ok(step, peak, warm, total)


def lr_peak_late(step, peak, warm, total):
    if step <= warm + 1:
        return peak * step / (warm + 1)
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warm - 1) / (total - warm - 1)))


def lr_cosine_over_all(step, peak, warm, total):
    return peak * step / warm if step <= warm else peak * 0.5 * (1 + math.cos(math.pi * step / total))


def lr_not_to_zero(step, peak, warm, total):
    return (
        peak * step / warm
        if step <= warm
        else peak * 0.5 * (1 + math.cos(math.pi * (step - warm) / (total - warm + 1)))
    )


def test_schedule_check_passes_the_formula_and_transformers_scheduler():
    from transformers import get_cosine_schedule_with_warmup

    def lr_transformers(step, peak, warm, total):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=peak)
        sched = get_cosine_schedule_with_warmup(opt, warm, total)
        return peak * sched.lr_lambdas[0](step)

    assert_full(check_schedule(lr_ok))
    assert_full(check_schedule(lr_transformers))


@pytest.mark.parametrize(
    "fn, mistake",
    [
        (lr_zero_first, "warm-up off by one: lr 0 at the first update"),
        (lr_peak_late, "warm-up off by one: the peak comes a step late"),
        (lr_cosine_over_all, "cosine over all steps instead of the steps after warm-up"),
        (lr_not_to_zero, "not reaching the minimum at the end"),
    ],
)
def test_schedule_mistakes_are_named(fn, mistake):
    named_on_every_seed(check_schedule, mistake, fn)


def lr_zero_based(step, peak, warm, total):
    return lr_ok(step - 1, peak, warm, total)


def test_a_zero_based_schedule_gets_its_cause_and_no_other_advice():
    for seed in SEEDS:
        report = check_schedule(lr_zero_based, seed=seed)
        assert not report.passed
        for row in report.failures:
            assert "steps counted from 0" in row.hint and "divide" not in row.hint, str(report)


# ----------------------------------------------------------------------------- optimizer step
def step_ok(model, batch, opt, max_norm):
    loss = model(batch, labels=batch).loss
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    opt.step()
    opt.zero_grad()
    return loss.item(), norm


def step_zero_first(model, batch, opt, max_norm):  # zeroing before backward is right too
    opt.zero_grad()
    loss = model(batch, labels=batch).loss
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    opt.step()
    return loss, norm


def step_clip_after(model, batch, opt, max_norm):
    loss = model(batch, labels=batch).loss
    loss.backward()
    opt.step()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    opt.zero_grad()
    return loss, norm


def step_no_clip(model, batch, opt, max_norm):
    loss = model(batch, labels=batch).loss
    loss.backward()
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
    opt.step()
    opt.zero_grad()
    return loss, norm


def step_never_zeroed(model, batch, opt, max_norm):
    loss = model(batch, labels=batch).loss
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    opt.step()
    return loss, norm


def step_never_steps(model, batch, opt, max_norm):
    loss = model(batch, labels=batch).loss
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    opt.zero_grad(set_to_none=True)
    return loss.item(), norm.item()


def test_an_optimizer_step_that_never_steps_earns_nothing():
    named_on_every_seed(check_optimizer_step, "the weights never change", step_never_steps)
    assert check_optimizer_step(step_never_steps, seed=1).points == 0


def step_post_clip_norm(model, batch, opt, max_norm):
    loss = model(batch, labels=batch).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
    opt.step()
    opt.zero_grad()
    return loss, norm


def test_optimizer_step_check_passes_right_functions():
    assert_full(check_optimizer_step(step_ok))
    assert_full(check_optimizer_step(step_zero_first))


@pytest.mark.parametrize(
    "fn, mistake",
    [
        (step_clip_after, "clipping after optimizer.step(), or not at all"),
        (step_no_clip, "clipping after optimizer.step(), or not at all"),
        (step_never_zeroed, "gradients never zeroed"),
        (step_post_clip_norm, "the post-clip norm returned"),
    ],
)
def test_optimizer_step_mistakes_are_named(fn, mistake):
    named_on_every_seed(check_optimizer_step, mistake, fn)


# ----------------------------------------------------------------------------- trade-off
def drop_ok(b, a):
    return 1 - a / b


def ratio_ok(b, a):
    return a / b


@pytest.mark.parametrize(
    "drop, ratio, mistake",
    [
        (lambda b, a: 1 - b / a, ratio_ok, "the ratio inverted"),
        (lambda b, a: b - a, ratio_ok, "a difference instead of a ratio"),
        (lambda b, a: 100 * (1 - a / b), ratio_ok, "percent instead of fraction"),
        (drop_ok, lambda b, a: b / a, "the ratio inverted"),
        (drop_ok, lambda b, a: a - b, "a difference instead of a ratio"),
        (drop_ok, lambda b, a: 100 * a / b, "percent instead of fraction"),
    ],
)
def test_tradeoff_mistakes_are_named(drop, ratio, mistake):
    named_on_every_seed(check_tradeoff, mistake, drop, ratio)


def choose_ok(variants, floor):
    under = [v for v in variants if v["forgetting_ratio"] <= floor]
    if under:
        return max(under, key=lambda v: v["code_ppl_drop"])["name"]
    return min(variants, key=lambda v: v["forgetting_ratio"])["name"]


def choose_ignoring_floor(variants, floor):
    return max(variants, key=lambda v: v["code_ppl_drop"])["name"]


def choices_ok(variants, floor):
    def best(vs):
        return max(vs, key=lambda v: v["code_ppl_drop"])["name"]

    return {
        "code_only_assistant": best(variants),
        "english_within_floor": choose_ok(variants, floor),
        "per_customer_adapters": best([v for v in variants if v["choice"] == "lora"]),
        "no_training_budget": choose_ok([v for v in variants if v["choice"] == "interpolation"], floor),
    }


def choices_hard_coded(variants, floor):
    return {
        "code_only_assistant": "pure CPT (seed 1)",
        "english_within_floor": "replay 10%",
        "per_customer_adapters": "LoRA r=8",
        "no_training_budget": "interp a=0.5",
    }


def choices_by_position(variants, floor):
    right = choices_ok(variants, floor)
    names = [v["name"] for v in variants]
    return {k: names[min(3, len(names) - 1)] if k == "per_customer_adapters" else v for k, v in right.items()}


def choices_by_label(variants, floor):
    right = choices_ok(variants, floor)
    return {**right, "no_training_budget": "interp a=0.75"}


def choices_interpolation_ignores_floor(variants, floor):
    right = choices_ok(variants, floor)
    interp = [v for v in variants if v["choice"] == "interpolation"]
    return {**right, "no_training_budget": max(interp, key=lambda v: v["code_ppl_drop"])["name"]}


def choices_pure_cpt_without_budget(variants, floor):
    return {**choices_ok(variants, floor), "no_training_budget": choose_ok(variants, floor)}


def test_tradeoff_and_choice_checks_pass_right_functions():
    assert_full(check_tradeoff(drop_ok, ratio_ok))
    assert_full(check_choice(choose_ok))
    assert_full(check_production_choices(choices_ok))


def choose_floor_excluded(variants, floor):
    under = [v for v in variants if v["forgetting_ratio"] < floor]
    if under:
        return max(under, key=lambda v: v["code_ppl_drop"])["name"]
    return min(variants, key=lambda v: v["forgetting_ratio"])["name"]


def choose_forgets_least(variants, floor):
    return min(variants, key=lambda v: v["forgetting_ratio"])["name"]


@pytest.mark.parametrize(
    "fn, mistake",
    [
        (choose_ignoring_floor, "a choice above the floor"),
        (choose_floor_excluded, "the floor excluded"),
        (choose_forgets_least, "the variant that forgets least"),
    ],
)
def test_choice_mistakes_are_named(fn, mistake):
    named_on_every_seed(check_choice, mistake, fn)


def test_a_seed_replays_the_same_cases():
    a, b = check_split(split_from_the_start, seed=7), check_split(split_from_the_start, seed=7)
    assert [(c.id, c.expected, c.got) for c in a.checks] == [(c.id, c.expected, c.got) for c in b.checks]
    assert a.seed == 7 and "seed=7" in a.headline()


def test_points_follow_the_table_and_a_wrong_perplexity_keeps_at_most_a_third():
    from checkers.core.questions import CHECK_POINTS

    assert {c.id.split(".", 2)[2]: c.points for c in check_perplexity(ppl_ok, seed=3).checks} == CHECK_POINTS["1.1"]
    # the sums right, the perplexity wrong: at most a third of 18, however the other checks weigh
    for seed in range(10):
        for wrong in (ppl_mean_of_ppl, ppl_mean_of_losses):
            report = check_perplexity(wrong, seed=seed)
            assert report.max_points == QUESTIONS["1.1"].points == 18 and 0 < report.points <= 6, report.points
            assert [c.id for c in report.failures] == ["q1.1.ppl"]


def test_a_failed_main_result_keeps_at_most_a_third_of_every_question():
    """Each question's main check failing alone: the question keeps at most a third, its total whole."""
    from checkers.code.harness import Exercise
    from checkers.core.questions import CHECK_POINTS, MAIN_RESULT, MAIN_SHARE

    def judged_elsewhere():  # recorded by no fallback: the judge's own rows, as a remote function's
        pass

    judged_elsewhere.remote = True
    for qid, main in MAIN_RESULT.items():
        assert main <= set(CHECK_POINTS[qid]), qid
        ex = Exercise(qid, judged_elsewhere, seed=0)
        for check in CHECK_POINTS[qid]:
            ex.row(check, check not in main, "expected", "got")
        report = ex.run(lambda: None)
        assert report.max_points == pytest.approx(QUESTIONS[qid].points), qid
        assert report.points <= QUESTIONS[qid].points * MAIN_SHARE + 0.01, (qid, report.points)
        all_pass = Exercise(qid, judged_elsewhere, seed=0)
        for check in CHECK_POINTS[qid]:
            all_pass.row(check, True, "expected", "got")
        assert all_pass.run(lambda: None).points == pytest.approx(QUESTIONS[qid].points), qid


@pytest.mark.parametrize(
    "fn, row, mistake",
    [
        (choices_hard_coded, "code_only_assistant", "written by hand, or taken by its place"),
        (choices_by_position, "per_customer_adapters", "a variant"),
        (choices_by_label, "no_training_budget", "written by hand, or taken by its place"),
        (choices_interpolation_ignores_floor, "no_training_budget", "not the one the numbers pick"),
    ],
)
def test_production_choices_by_hand_by_position_or_by_label_fail_every_seed(fn, row, mistake):
    named = False
    for seed in range(20):
        report = check_production_choices(fn, seed=seed)
        assert not report.passed, f"seed {seed}"
        assert any(row in c.id for c in report.failures), (seed, str(report))
        named = named or any(row in c.id and mistake in c.hint for c in report.failures)
    assert named


def test_production_choices_name_a_variant_of_the_wrong_kind():
    report = check_production_choices(choices_pure_cpt_without_budget, seed=4)
    assert any(
        "no_training_budget" in c.id and "only interpolation variants fit" in c.hint for c in report.failures
    ) or all("no_training_budget" not in c.id for c in report.failures)
    for seed in range(20):
        assert check_production_choices(choices_ok, seed=seed).passed


def test_the_random_studies_could_have_been_measured():
    from checkers.code.scenarios import physical_study

    rng = np.random.default_rng(0)
    for _ in range(200):
        floor = float(rng.uniform(1.02, 1.1))
        vs = {v["name"]: v for v in physical_study(rng, floor)}
        assert (vs["interp a=0"]["code_ppl_drop"], vs["interp a=0"]["forgetting_ratio"]) == (0.0, 1.0)
        cpt = [v for v in vs.values() if v["choice"] == "pure_cpt"]
        assert any(
            (c["code_ppl_drop"], c["forgetting_ratio"])
            == (vs["interp a=1"]["code_ppl_drop"], vs["interp a=1"]["forgetting_ratio"])
            for c in cpt
        )
        alphas = sorted((float(n.split("=")[1]), v) for n, v in vs.items() if n.startswith("interp"))
        assert all(a[1]["code_ppl_drop"] <= b[1]["code_ppl_drop"] for a, b in zip(alphas, alphas[1:]))
        assert all(a[1]["forgetting_ratio"] <= b[1]["forgetting_ratio"] for a, b in zip(alphas, alphas[1:]))
        for kind in ("pure_cpt", "replay", "lora", "interpolation"):
            ratios = [v["forgetting_ratio"] for v in vs.values() if v["choice"] == kind]
            assert len(ratios) >= 2 and min(ratios) <= floor < max(ratios), kind


@pytest.mark.parametrize(
    "content", ['{"study": {"variants": [{"name": 1}], "retention_floor": "x"}}', "[1, 2]", "not json", "symlink"]
)
def test_a_malformed_or_hostile_own_study_fails_its_row_and_never_raises(tmp_path, content):
    if content == "symlink":
        (tmp_path / "elsewhere.json").write_text('{"study": {}}')
        (tmp_path / "step4_tradeoff.json").symlink_to(tmp_path / "elsewhere.json")
    else:
        (tmp_path / "step4_tradeoff.json").write_text(content)
    report = check_production_choices(choices_ok, str(tmp_path), seed=1)
    assert [c.id for c in report.failures] == ["q4.6.own_study"] and report.points == 4


# ----------------------------------------------------------------------------- step 4: replay, interpolation, LoRA
def schedule_ok(fraction, windows, steps):
    total = [math.floor(fraction * windows * k + 1e-9) for k in range(steps + 1)]
    return [total[k] - total[k - 1] for k in range(1, steps + 1)]


def schedule_rounded_per_step(fraction, windows, steps):
    return [round(fraction * windows)] * steps


def schedule_front_loaded(fraction, windows, steps):
    left, out = round(fraction * windows * steps), []
    for _ in range(steps):
        out.append(min(windows, left))
        left -= out[-1]
    return out


def schedule_code_share(fraction, windows, steps):
    return schedule_ok(1 - fraction, windows, steps)


def schedule_fractional(fraction, windows, steps):
    return [fraction * windows] * steps


def interpolate_ok(base, cpt, alpha):
    return {k: (1 - alpha) * v + alpha * cpt[k] if v.is_floating_point() else v.clone() for k, v in base.items()}


def interpolate_reversed(base, cpt, alpha):
    return interpolate_ok(base, cpt, 1 - alpha)


def interpolate_in_place(base, cpt, alpha):
    for k, v in base.items():
        if v.is_floating_point():
            v.mul_(1 - alpha).add_(alpha * cpt[k])
    return base


def interpolate_every_tensor(base, cpt, alpha):
    return {k: (1 - alpha) * v + alpha * cpt[k] for k, v in base.items()}


def _lora(**kw):
    from peft import LoraConfig

    return lambda r, alpha: LoraConfig(
        **{
            "r": r,
            "lora_alpha": alpha,
            "target_modules": ["c_attn", "c_proj", "c_fc"],
            "fan_in_fan_out": True,
            "lora_dropout": 0.0,
            "bias": "none",
            **kw,
        }
    )


def test_replay_interpolation_and_lora_checks_pass_right_functions():
    assert_full(check_replay_schedule(schedule_ok))
    assert_full(check_interpolate(interpolate_ok))
    assert_full(check_lora_config(_lora()))
    assert_full(check_lora_config(_lora(target_modules="all-linear")))  # peft's own name for the same layers


@pytest.mark.parametrize(
    "fn, mistake",
    [
        (schedule_rounded_per_step, "rounded per step"),
        (schedule_front_loaded, "front-loaded"),
        (schedule_code_share, "the code share, not the English share"),
    ],
)
def test_replay_schedule_mistakes_are_named(fn, mistake):
    named_on_every_seed(check_replay_schedule, mistake, fn)


def test_a_fractional_schedule_fails_its_form():
    report = check_replay_schedule(schedule_fractional, seed=1)
    assert [c.id for c in report.failures][:1] == ["q4.2.returns"] and report.points == 0


@pytest.mark.parametrize(
    "fn, mistake",
    [
        (interpolate_reversed, "alpha weights the base"),
        (interpolate_in_place, "the inputs changed in place"),
        (interpolate_every_tensor, "an integer buffer blended"),
    ],
)
def test_interpolate_mistakes_are_named(fn, mistake):
    named_on_every_seed(check_interpolate, mistake, fn)


@pytest.mark.parametrize(
    "kw, mistake",
    [
        ({"target_modules": ["q_proj", "v_proj"]}, "targets that match nothing"),
        ({"fan_in_fan_out": False}, "fan_in_fan_out missing"),
        ({"target_modules": ["attn.c_attn", "attn.c_proj"]}, "attention only"),
        ({"bias": "all"}, "the base not frozen"),
        ({"modules_to_save": ["lm_head"]}, "the base not frozen"),
    ],
)
def test_lora_config_mistakes_are_named(kw, mistake):
    named_on_every_seed(check_lora_config, mistake, _lora(**kw))


def test_a_regular_expression_that_matches_nothing_fails_the_targets():
    report = check_lora_config(_lora(target_modules="(a+)+$"), seed=2)
    assert [c.id for c in report.failures][:1] == ["q4.4.targets"] and report.points <= 0.5


# ----------------------------------------------------------------------------- step 3: FLOPs per token
def _n(model):
    return sum(p.numel() for p in model.parameters()) - model.transformer.wpe.weight.numel()


def flops_ok(model, block):
    c = model.config
    return 6 * _n(model) + 12 * c.n_layer * c.n_embd * block


def flops_with_positions(model, block):  # nanoGPT leaves the lookup out; counting it is no mistake
    return flops_ok(model, block) + 6 * model.transformer.wpe.weight.numel()


def flops_forward_only(model, block):
    c = model.config
    return 2 * _n(model) + 4 * c.n_layer * c.n_embd * block


def flops_embedding_twice(model, block):
    return flops_ok(model, block) + 6 * model.lm_head.weight.numel()


def flops_from_the_state_dict(model, block):  # the state dict lists the tied lm_head again
    c = model.config
    n = sum(v.numel() for k, v in model.state_dict().items() if "wpe" not in k and v.is_floating_point())
    return 6 * n + 12 * c.n_layer * c.n_embd * block


def flops_no_attention(model, block):
    return 6 * _n(model)


def test_flops_check_passes_the_right_count_with_or_without_the_position_table():
    assert_full(check_flops(flops_ok, mfu_ok))
    assert_full(check_flops(flops_with_positions, mfu_ok))


@pytest.mark.parametrize(
    "fn, mistake",
    [
        (flops_forward_only, "the forward pass only"),
        (flops_embedding_twice, "the embedding counted twice"),
        (flops_from_the_state_dict, "the embedding counted twice"),
        (flops_no_attention, "the attention term missing"),
    ],
)
def test_flops_mistakes_are_named(fn, mistake):
    named_on_every_seed(check_flops, mistake, fn, mfu_ok)


def test_the_reference_counts_gpt2_124m_as_its_paper_and_nanogpt_do():
    """GPT-2 124M has 124,439,808 parameters with its embedding tied (786,432 of them the position
    table: 1024 x 768); at 1024 tokens nanoGPT's estimate is 6 x 123,653,376 + 12 x 12 x 768 x 1024."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from cptlab.speed.flops import flops_per_token

    with torch.device("meta"):
        model = GPT2LMHeadModel(GPT2Config())
    assert sum(p.numel() for p in model.parameters()) == 124_439_808
    assert flops_per_token(model, 1024) == 6 * (124_439_808 - 1024 * 768) + 12 * 12 * 768 * 1024


# ----------------------------------------------------------------------------- the CPT loop
def loop_with(
    assign="every group",
    eval_first=True,
    train_after=True,
    no_grad=True,
    curve="right",
    test_first=False,
    above=">",
    steps="right",
    one_batch=False,
    rate_after=False,
    asked=True,
):
    """The reference loop with one typical mistake switched on."""

    def cpt_loop(run, lr_at, optimizer_step):
        cfg = run.cfg
        first = {"right": run.first_step, "zero": run.first_step - 1, "ignores first": 1}.get(steps, run.first_step)
        last = cfg.max_steps if steps == "short" else cfg.max_steps + 1
        if steps == "zero":
            last = cfg.max_steps
        batch = run.batch(1) if one_batch else None
        for step in range(first, last):
            lr = lr_at(step, cfg.cpt_lr, cfg.warmup_steps, cfg.max_steps)

            def set_rate():
                groups = run.optimizer.param_groups
                for group in groups if assign == "every group" else groups[:1] if assign == "first" else []:
                    group["lr"] = lr

            if not rate_after:
                set_rate()
            x = batch if one_batch else run.batch(step)
            loss, grad_norm = optimizer_step(run.model, x, run.optimizer, cfg.grad_clip)
            if rate_after:
                set_rate()
            run.log(step, lr, loss, grad_norm)
            at = {
                "right": step % cfg.curve_every == 0 or step == cfg.max_steps,
                "no last": step % cfg.curve_every == 0,
                "shifted": (step + 1) % cfg.curve_every == 0 or step == cfg.max_steps,
                "every step": True,
            }[curve]
            if at:
                if eval_first:
                    run.model.eval()
                if no_grad:
                    with torch.no_grad():
                        point = run.evaluate(step)
                else:
                    point = run.evaluate(step)
                if train_after:
                    run.model.train()
                crossed = (
                    point["forgetting_ratio"] > cfg.retention_floor
                    if above == ">"
                    else point["forgetting_ratio"] >= cfg.retention_floor
                )
                if test_first and cfg.stop_at_floor and crossed:
                    break
                run.curve.append(point)
                if (cfg.stop_at_floor or not asked) and crossed:
                    break

    return cpt_loop


def loop_inference_mode(run, lr_at, optimizer_step):  # another right way: a while loop, inference mode
    cfg, step = run.cfg, run.first_step
    while step <= cfg.max_steps:
        lr = lr_at(step, cfg.cpt_lr, cfg.warmup_steps, cfg.max_steps)
        for g in run.optimizer.param_groups:
            g["lr"] = lr
        run.model.train()
        loss, norm = optimizer_step(run.model, run.batch(step), run.optimizer, cfg.grad_clip)
        run.log(step, lr, loss, norm)
        if step % cfg.curve_every == 0 or step == cfg.max_steps:
            run.model.eval()
            with torch.inference_mode():
                point = run.evaluate(step)
            run.curve.append(point)
            if cfg.stop_at_floor and point["forgetting_ratio"] > cfg.retention_floor:
                return
        step += 1


def test_loop_check_passes_the_reference_and_another_right_loop():
    assert_full(check_cpt_loop(cpt_loop))
    assert_full(check_cpt_loop(loop_with()))
    assert_full(check_cpt_loop(loop_inference_mode))


@pytest.mark.slow  # 16 mutants x 20 seeds of a few optimizer steps each: 40 s
@pytest.mark.parametrize(
    "changes, mistake",
    [
        ({"assign": "none"}, "the rate computed but never assigned"),
        ({"assign": "first"}, "the rate set on the first parameter group only"),
        ({"rate_after": True}, "each step ran with the previous step's rate"),
        ({"train_after": False}, "the model left in eval() mode after evaluating"),
        ({"eval_first": False, "train_after": False}, "evaluation in train mode"),
        ({"no_grad": False}, "evaluation with gradients on"),
        ({"curve": "no last"}, "the last step has no point"),
        ({"curve": "shifted"}, "the curve at the wrong steps"),
        ({"curve": "every step"}, "a point at every step"),
        ({"test_first": True}, "the floor tested before the point is recorded"),
        ({"above": ">="}, "stopped at step"),
        ({"asked": False}, "the run stopped at the floor although cfg.stop_at_floor is False"),
        ({"steps": "short"}, "one step short"),
        ({"steps": "zero"}, "steps counted from 0"),
        ({"steps": "ignores first"}, "run.first_step ignored"),
        ({"one_batch": True}, "one batch for every step"),
    ],
)
def test_loop_mistakes_are_named(changes, mistake):
    named_on_every_seed(check_cpt_loop, mistake, loop_with(**changes))


@pytest.mark.slow  # the loop's check on every seed: seconds, not the quick suite's
def test_a_loop_with_the_recipes_clip_typed_in_is_named():
    def typed_clip(run, lr_at, optimizer_step):
        cpt_loop(run, lr_at, lambda model, batch, opt, max_norm: optimizer_step(model, batch, opt, 1.0))

    named_on_every_seed(check_cpt_loop, "optimizer_step was given max_norm=1, not this run's cfg.grad_clip", typed_clip)


def test_the_loop_probe_keeps_a_last_bit_difference_in_the_last_bits():
    """The learner's loop runs in another process than the reference: kernels that round one bit
    differently must not part the logged losses beyond the check's 1e-5 (Adam's sign-like first
    steps parted them by 1e-3)."""
    from cptlab.model.loop import ProbeRun

    config = {"max_steps": 10, "warmup_steps": 2, "cpt_lr": 0.05, "curve_every": 3}
    for seed in range(4):
        losses = []
        for eps in (0.0, 1e-7):
            run = ProbeRun(seed, config, {})
            g = torch.Generator().manual_seed(seed)
            with torch.no_grad():
                for p in run.model.parameters():
                    p.mul_(1 + eps * torch.randn(p.shape, generator=g))
            cpt_loop(run, run.lr_at, run.optimizer_step)
            losses.append([e["loss"] for e in run.events if e["op"] == "log"])
        assert max(abs(a - b) for a, b in zip(*losses)) < 1e-6, (seed, losses)


@pytest.mark.slow  # the loop's check on every seed: seconds, not the quick suite's
def test_a_loop_that_never_stops_at_the_floor_is_named():
    def never_stops(run, lr_at, optimizer_step):
        cfg = run.cfg.__class__(**{**run.cfg.__dict__, "stop_at_floor": False})
        run.cfg = cfg
        cpt_loop(run, lr_at, optimizer_step)

    named_on_every_seed(check_cpt_loop, "never stopped", never_stops)


# ----------------------------------------------------------------------------- MFU
def mfu_ok(tps, fpt, peaks, precision):
    return tps * fpt / peaks[precision]


def mfu_other_precision(tps, fpt, peaks, precision):
    return tps * fpt / peaks["fp32" if precision == "bf16" else "bf16"]


def mfu_percent(tps, fpt, peaks, precision):
    return 100 * tps * fpt / peaks[precision]


def mfu_upside_down(tps, fpt, peaks, precision):
    return peaks[precision] / (tps * fpt)


def test_mfu_check_passes_the_formula():
    from cptlab.speed.flops import flops_per_token, model_flops_utilization

    assert_full(check_flops(flops_per_token, mfu_ok))
    assert_full(check_flops(flops_per_token, model_flops_utilization))


@pytest.mark.parametrize(
    "fn, mistake",
    [
        (mfu_other_precision, "the peak of the other precision"),
        (mfu_percent, "a percentage"),
        (mfu_upside_down, "the ratio upside down"),
    ],
)
def test_mfu_mistakes_are_named(fn, mistake):
    from cptlab.speed.flops import flops_per_token

    named_on_every_seed(check_flops, mistake, flops_per_token, fn)


def split_by_document_count(docs, eos, frac, seed):
    order = np.random.default_rng(seed).permutation(len(docs)).tolist()
    val = set(order[len(order) - max(1, round(frac * len(docs))) :])
    return pack_ok([docs[i] for i in order if i not in val], eos), pack_ok([docs[i] for i in order if i in val], eos)


def test_a_split_by_document_count_fails_on_every_seed_and_is_named():
    named_on_every_seed(check_split, "val_fraction of the documents, not of the tokens", split_by_document_count)


def test_lora_with_r_and_alpha_swapped_fails_on_every_seed_and_is_named():
    def swapped(r, alpha):
        return _lora()(alpha, r)

    named_on_every_seed(check_lora_config, "r and lora_alpha swapped", swapped)


@pytest.mark.parametrize("fixed", [8, 16, 32, "2r"])
def test_lora_with_alpha_fixed_fails_on_20_of_20_seeds_and_valid_answers_pass_20_of_20(fixed):
    """A constant alpha that the case happens to draw would pass: no case may draw 8, 16, 32 or 2r."""

    def constant(r, alpha):
        return _lora()(r, 2 * r if fixed == "2r" else fixed)

    for seed in range(20):
        assert_named(check_lora_config(constant, seed=seed), "lora_alpha fixed")
        assert_full(check_lora_config(_lora(), seed=seed))
        assert_full(check_lora_config(_lora(target_modules="all-linear"), seed=seed))


def test_a_regular_expression_target_modules_passes_on_every_seed():
    for seed in SEEDS:
        assert_full(check_lora_config(_lora(target_modules=r".*\.(c_attn|c_proj|c_fc)"), seed=seed))


def test_a_regular_expression_is_matched_as_peft_matches_it_and_a_runaway_one_is_stopped():
    from peft.tuners.tuners_utils import match_target_against_key

    from checkers.code.tradeoff import regex_matches

    names = ["transformer.h.0.attn.c_attn", "transformer.h.0.mlp.c_fc", "lm_head", "c_attn"]
    for pattern in [r".*\.(c_attn|c_proj|c_fc)", r"c_attn", r".*attn.*", r"transformer\.h\.\d+\.mlp\..*"]:
        assert regex_matches(pattern, names) == [n for n in names if match_target_against_key(pattern, n)]
    assert "not a regular expression" in regex_matches("(", names)
    assert "took over" in regex_matches(r"(a+)+$", ["a" * 40 + "b"], seconds=1.0)
    report = check_lora_config(_lora(target_modules=r"(x+x+)+y"), seed=0)
    assert [c.id for c in report.failures][:1] == ["q4.4.targets"] and report.points <= 0.5
