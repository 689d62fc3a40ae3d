"""Packing, splitting and blocking against naive re-computations."""

import numpy as np
import pytest
import torch
from conftest import CODE, ENGLISH

from cptlab.data.corpus import (
    CorpusError,
    build_corpus,
    cached_corpus,
    encode_documents,
    pack,
    sample_windows,
    split_indices,
    to_blocks,
    window_crossing_eos,
)


def test_split_is_seeded():
    lengths = list(range(10, 110))
    train, val = split_indices(lengths, 0.02, seed=3)
    assert split_indices(lengths, 0.02, seed=3) == (train, val)
    assert split_indices(lengths, 0.02, seed=4) != (train, val)


def test_blocks_are_a_reshape_dropping_the_tail():
    s = np.arange(103)
    b = to_blocks(s, 10)
    assert b.shape == (10, 10) and b[3].tolist() == list(range(30, 40))


def test_build_corpus_streams_decode_to_the_documents(model_and_tok):
    _, tok = model_and_tok
    docs = [f"{CODE}\n# file {i}\n" for i in range(30)] + [ENGLISH]
    c = build_corpus(docs, tok, 0.1, seed=0, block_size=16)
    eos = tok.eos_token_id
    assert c.stats["eos_count"] == c.stats["n_docs"] == len(docs)
    assert c.stats["train_tokens"] + c.stats["val_tokens"] == c.stats["n_tokens"]
    assert c.train[-1] == eos and c.val[-1] == eos
    pieces = []
    for stream in (c.train, c.val):
        cut = np.flatnonzero(stream == eos)
        start = 0
        for end in cut:
            pieces.append(tok.decode(stream[start:end].tolist()))
            start = end + 1
    assert sorted(pieces) == sorted(docs)
    assert c.stats["n_blocks"] == len(c.train) // 16
    assert c.blocks.shape == (len(c.train) // 16, 16) and (c.blocks.ravel() == c.train[: c.blocks.size]).all()
    w = window_crossing_eos(c.blocks, eos)
    assert w is not None and eos in w.tolist()


def test_build_corpus_uses_the_given_split_and_blocks_and_refuses_bad_ones(model_and_tok):
    _, tok = model_and_tok
    docs = [f"{CODE}\n# file {i}\n" for i in range(30)]
    calls = []

    def split(doc_ids, eos, frac, seed):
        calls.append((len(doc_ids), eos, frac, seed))
        return pack(doc_ids[:-3], eos), pack(doc_ids[-3:], eos)

    c = build_corpus(docs, tok, 0.1, seed=5, block_size=16, split_fn=split)
    assert calls == [(30, tok.eos_token_id, 0.1, 5)] and c.stats["val_docs"] == 3
    with pytest.raises(CorpusError, match="should be \\[n_blocks, 16\\]"):
        build_corpus(docs, tok, 0.1, seed=5, block_size=16, blocks_fn=lambda s, b: s[: len(s) // b * b].reshape(b, -1))
    with pytest.raises(CorpusError, match="1-D stream"):
        build_corpus(
            docs, tok, 0.1, seed=5, block_size=16, split_fn=lambda d, e, f, s: (np.zeros((2, 2), int), pack(d, e))
        )


def test_sample_windows_draws_whole_blocks_from_a_2d_corpus():
    blocks = np.arange(40).reshape(10, 4)
    x = sample_windows(blocks, 4, 6, torch.Generator().manual_seed(0))
    assert x.shape == (6, 4) and all(row.tolist() in blocks.tolist() for row in x)
    assert (x == sample_windows(blocks, 4, 6, torch.Generator().manual_seed(0))).all()


def test_token_cache_round_trip_and_corrupt_entry(model_and_tok):
    _, tok = model_and_tok
    docs = [f"{CODE}\n# {i}\n" for i in range(20)]
    a = cached_corpus(docs, tok, 0.1, 0, 16)
    b = cached_corpus(docs, tok, 0.1, 0, 16)
    assert np.array_equal(a.train, b.train) and np.array_equal(a.val, b.val)
    from pathlib import Path

    (Path(a.stats["cache"]) / "train.npy").write_bytes(b"garbage")
    c = cached_corpus(docs, tok, 0.1, 0, 16)
    assert np.array_equal(a.train, c.train)


def test_sample_windows_seeded_and_in_range():
    s = np.arange(1000, dtype=np.uint16)
    x1 = sample_windows(s, 32, 5, torch.Generator().manual_seed(1))
    x2 = sample_windows(s, 32, 5, torch.Generator().manual_seed(1))
    assert torch.equal(x1, x2) and x1.shape == (5, 32)
    assert all((row[1:] - row[:-1] == 1).all() for row in x1)


def test_empty_and_too_small_corpora_are_clear_errors(model_and_tok):
    _, tok = model_and_tok
    with pytest.raises(CorpusError, match="empty"):
        build_corpus([], tok, 0.02, 0, 16)
    with pytest.raises(CorpusError, match="too small for the split"):
        build_corpus([CODE], tok, 0.02, 0, 16)
    with pytest.raises(CorpusError, match="too small for the split"):
        build_corpus(["x = 1", "y = 2", "z = 3"], tok, 0.02, 0, 16)


def test_encode_adds_no_special_tokens(model_and_tok):
    _, tok = model_and_tok
    ids = encode_documents(tok, [CODE])[0]
    assert tok.eos_token_id not in ids.tolist() and tok.decode(ids.tolist()) == CODE
