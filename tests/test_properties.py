"""Property-based tests (hypothesis): packing, splitting and perplexity invariants, and checkers
that never raise on malformed results."""

import json
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from checkers import check_all
from cptlab.data.corpus import pack, split_indices
from cptlab.model.perplexity import perplexity, plan_windows

docs_st = st.lists(st.lists(st.integers(1, 500), min_size=0, max_size=30), min_size=0, max_size=20)


@given(docs_st)
def test_stream_decodes_back_to_the_documents(docs):
    stream = pack([np.array(d, dtype=np.int64) for d in docs], eos_id=0).tolist()
    assert len(stream) == sum(map(len, docs)) + len(docs)
    back, cur = [], []
    for t in stream:
        if t == 0:
            back.append(cur)
            cur = []
        else:
            cur.append(t)
    assert back == docs and cur == []


@given(st.lists(st.integers(1, 5000), min_size=2, max_size=200), st.floats(0.01, 0.4), st.integers(0, 10**6))
def test_split_sizes_add_up_on_document_boundaries(lengths, frac, seed):
    train, val = split_indices(lengths, frac, seed)
    assert sorted(train + val) == list(range(len(lengths)))
    total = sum(lengths)
    got = sum(lengths[i] for i in val)
    assert train and val
    assert got >= frac * total or len(train) == 1
    assert got - max(lengths[i] for i in val) < frac * total


@given(st.integers(2, 400), st.integers(2, 64), st.data())
def test_windows_score_each_token_at_most_once(n, block, data):
    stride = data.draw(st.one_of(st.none(), st.integers(1, block)))
    scored = [t for b, e, k in plan_windows(n, block, stride) for t in range(e - k, e)]
    assert len(scored) == len(set(scored)) and all(1 <= t < n for t in scored)
    if stride is not None and stride < block:
        assert scored == list(range(1, n))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(2, 300), st.sampled_from([8, 16, 64]), st.integers(1, 9), st.data())
def test_perplexity_does_not_depend_on_batch_size(model_and_tok, n, block, batch, data):
    model, _ = model_and_tok
    ids = np.random.default_rng(n).integers(0, 300, n)
    stride = data.draw(st.one_of(st.none(), st.integers(1, block)))
    a = perplexity(model, ids, block, stride=stride, batch_size=1)
    b = perplexity(model, ids, block, stride=stride, batch_size=batch)
    assert a.tokens == b.tokens == sum(k for _, _, k in plan_windows(n, block, stride))
    assert b.nll_sum == pytest.approx(a.nll_sum, rel=1e-6)


junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 10**9),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _paths(obj, prefix=()):
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield prefix + (k,)
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list) and obj:
        yield prefix + (0,)
        yield from _paths(obj[0], prefix + (0,))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 4), st.data())
def test_checkers_never_raise_on_malformed_results(lab_run, tmp_path_factory, step, data):
    run = tmp_path_factory.mktemp("fuzz")
    for f in lab_run.glob("step*.json"):
        shutil.copy(f, run / f.name)
    name = {1: "step1_baseline.json", 2: "step2_corpus.json", 3: "step3_cpt.json", 4: "step4_tradeoff.json"}[step]
    d = json.loads((run / name).read_text())
    paths = sorted(set(_paths(d)), key=str)
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(paths))
        target = d
        try:
            for p in path[:-1]:
                target = target[p]
            if data.draw(st.booleans()) and isinstance(target, dict):
                target.pop(path[-1], None)
            else:
                target[path[-1]] = data.draw(junk)
        except (KeyError, IndexError, TypeError):
            pass
    (run / name).write_text(json.dumps(d))
    for report in check_all(run):  # must not raise
        for c in report.failures:
            assert c.got and c.expected


@pytest.mark.parametrize(
    "step,key", [(1, "code"), (1, "general"), (2, "n_tokens"), (3, "log"), (3, "hparams"), (4, "study")]
)
def test_a_results_file_without_a_key_fails_a_check_and_never_raises(lab_run, tmp_path, step, key):
    for f in lab_run.glob("step*.json"):
        shutil.copy(f, tmp_path / f.name)
    name = {1: "step1_baseline.json", 2: "step2_corpus.json", 3: "step3_cpt.json", 4: "step4_tradeoff.json"}[step]
    d = json.loads((tmp_path / name).read_text())
    d.pop(key)
    (tmp_path / name).write_text(json.dumps(d))
    report = check_all(tmp_path)[step - 1]
    assert not report.passed and any(key in c.got or "readable" in c.id for c in report.failures), str(report)
