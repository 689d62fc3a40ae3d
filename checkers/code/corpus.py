"""Questions 2.1-2.3: EOS packing, the whole-document split and the blocks, mistakes named."""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from checkers.code.harness import Exercise, _as_array
from checkers.core.report import Report
from cptlab.data.corpus import pack, split_streams, to_blocks


def _docs(rng: np.random.Generator, n_docs: int, vocab: int, max_len: int) -> list[np.ndarray]:
    return [rng.integers(0, vocab, int(rng.integers(3, max_len))).astype(np.int64) for _ in range(n_docs)]


def check_pack(fn: Callable, seed: int | None = None) -> Report:
    """``pack_documents(doc_ids, eos_id) -> 1-D stream``: doc, EOS, doc, EOS, ..."""
    ex = Exercise("2.1", fn, seed)

    def body():
        eos = int(ex.rng.integers(60, 80))
        docs = _docs(ex.rng, int(ex.rng.integers(3, 8)), 60, 12)
        out = _as_array(ex.call([d.copy() for d in docs], eos))
        want = pack(docs, eos, np.int64)
        if not ex.row(
            "stream",
            out is not None and out.ndim == 1,
            "one 1-D array of token ids",
            "not an array" if out is None else f"shape {out.shape}",
            "concatenate the documents into one 1-D array (np.concatenate)",
        ):
            return
        got = out.astype(np.int64).tolist()
        hint = "append eos_id after every document, the last one included, then concatenate"
        if got == np.concatenate(docs).tolist():
            hint = "mistake: no EOS. Append eos_id after every document, so the model sees where one file ends"
        elif got == np.concatenate([np.r_[eos, d] for d in docs]).tolist():
            hint = (
                "mistake: EOS before each document rather than after. EOS marks the end of a document: doc, EOS, "
                "doc, EOS"
            )
        elif got == want.tolist()[:-1]:
            hint = "mistake: no EOS after the last document. Every document ends with EOS, the last one too"
        ex.row(
            "eos_after_each",
            got == want.tolist(),
            f"{len(docs)} documents, each followed by EOS ({len(want)} tokens)",
            f"{len(got)} tokens, {got.count(eos)} EOS" + (", first token EOS" if got[:1] == [eos] else ""),
            hint,
        )

    return ex.run(body)


def _unequal_docs(rng: np.random.Generator, n_docs: int, seed: int) -> list[np.ndarray]:
    """Documents whose lengths differ by 10x or more: the half that the seeded order hands to
    validation first is short, so a share of documents never equals the same share of tokens."""
    order = np.random.default_rng(seed).permutation(n_docs).tolist()
    short = set(order[n_docs // 2 :])
    return [
        rng.integers(0, 200, int(rng.integers(3, 8) if i in short else rng.integers(80, 160))).astype(np.int64)
        for i in range(n_docs)
    ]


def check_split(fn: Callable, seed: int | None = None) -> Report:
    """``split_documents(doc_ids, eos_id, val_fraction, seed) -> (train_stream, val_stream)``."""
    ex = Exercise("2.2", fn, seed)

    def body():
        eos = int(ex.rng.integers(200, 250))
        frac, seed = float(ex.rng.uniform(0.05, 0.2)), int(ex.rng.integers(0, 2**31))
        docs = _unequal_docs(ex.rng, int(ex.rng.integers(30, 60)), seed)
        out = ex.call([d.copy() for d in docs], eos, frac, seed)
        want_train, want_val = split_streams(docs, eos, frac, seed)
        try:
            train, val = (_as_array(x) for x in out)
        except (TypeError, ValueError):
            train = val = None
        if not ex.row(
            "returns",
            train is not None and val is not None and train.ndim == val.ndim == 1,
            "two 1-D streams (train, val)",
            repr(type(out).__name__),
            "return the two packed streams, training first",
            fix="return pack_documents(train_docs, eos_id), pack_documents(val_docs, eos_id)",
        ):
            return
        pieces = [tuple(p) for s in (train, val) for p in _pieces(s.astype(np.int64), eos)]
        whole = (
            sorted(pieces) == sorted(tuple(d) for d in docs)
            and train[-1:].tolist() == [eos]
            and val[-1:].tolist() == [eos]
        )
        ex.row(
            "whole_documents",
            whole,
            "every document whole on one side, each followed by EOS",
            f"{len(pieces)} pieces for {len(docs)} documents" + ("" if whole else "; a document is cut or missing"),
            "mistake: a split that cuts a document. Choose whole documents for validation, then pack each side; "
            "never cut the packed stream at a token position",
        )
        share = len(val) / max(1, len(train) + len(val))
        n_val = len(_pieces(val.astype(np.int64), eos))
        hint = (
            "take documents for validation until they hold at least val_fraction of all tokens (EOS counted), then stop"
        )
        by_count = frac * len(docs)
        if share < frac and n_val in {max(1, int(by_count)), max(1, round(by_count)), math.ceil(by_count)}:
            hint = (
                "mistake: val_fraction of the documents, not of the tokens. Documents differ in length (here the "
                "short ones fall to validation), so count tokens until validation holds val_fraction of them"
            )
        ex.row(
            "fraction",
            share >= frac and len(val) == len(want_val),
            f"validation holds >= {frac:.3f} of the tokens, "
            f"with as few documents as the rule takes ({len(want_val)} tokens)",
            f"{share:.4f} ({len(val)} tokens, {n_val} documents)",
            hint,
        )
        ex.row(
            "seeded_rule",
            train.tolist() == want_train.tolist() and val.tolist() == want_val.tolist(),
            "the lab's rule: order = np.random.default_rng(seed).permutation(n); validation takes documents from the "
            "end of "
            "that order; both sides keep the order",
            "same split" if val.tolist() == want_val.tolist() else "another split",
            "use np.random.default_rng(seed).permutation(len(doc_ids)), walk it from its end for validation, and keep "
            "the "
            "permutation's order on both sides: step 1 scored exactly that validation split",
        )
        # the boundary the rule names: the last documents reach val_fraction exactly
        docs2 = _docs(ex.rng, int(ex.rng.integers(12, 25)), 200, 60)
        seed2 = int(ex.rng.integers(0, 2**31))
        order = np.random.default_rng(seed2).permutation(len(docs2)).tolist()
        total = sum(len(d) + 1 for d in docs2)
        frac2, cum = None, 0
        for i in reversed(order[1:]):
            cum += len(docs2[i]) + 1
            if cum / total * total == cum and cum / total >= 0.05:
                frac2 = cum / total
                break
        if frac2 is not None:
            _, want_val2 = split_streams(docs2, eos, frac2, seed2)
            out2 = ex.call([d.copy() for d in docs2], eos, frac2, seed2)
            try:
                val2 = _as_array(out2[1])
            except (TypeError, ValueError, IndexError, KeyError):
                val2 = None
            same = val2 is not None and val2.tolist() == want_val2.tolist()
            ex.row(
                "at_the_fraction",
                same,
                f"validation stops as soon as it holds val_fraction ({frac2:.4f}, reached exactly: "
                f"{len(want_val2)} tokens)",
                "same split" if same else f"{'no stream' if val2 is None else f'{len(val2)} tokens'}",
                "mistake: one document too many at the boundary. Stop as soon as validation holds at least "
                "val_fraction of the tokens (>=, not >)"
                if val2 is not None
                and len(val2) > len(want_val2)
                and ex.report.checks[-1].passed  # the same split as the rule elsewhere: only the boundary differs
                else "take documents until validation holds at least val_fraction of the tokens, then stop",
            )
        else:
            ex.row("at_the_fraction", True, "no exact boundary in this draw", "skipped")

    return ex.run(body)


def _pieces(stream: np.ndarray, eos: int) -> list[list[int]]:
    out, cur = [], []
    for t in stream.tolist():
        if t == eos:
            out.append(cur)
            cur = []
        else:
            cur.append(t)
    if cur:
        out.append(cur)
    return out


def check_blocks(fn: Callable, seed: int | None = None) -> Report:
    """``to_blocks(stream, block_size) -> [n_blocks, block_size]``, the tail dropped."""
    ex = Exercise("2.3", fn, seed)

    def body():
        block = int(ex.rng.integers(4, 17))
        stream = ex.rng.integers(0, 500, block * int(ex.rng.integers(3, 9)) + int(ex.rng.integers(1, block))).astype(
            np.int64
        )
        out = _as_array(ex.call(stream.copy(), block))
        want = to_blocks(stream, block)
        if not ex.row(
            "shape",
            out is not None and out.shape == want.shape,
            f"shape {want.shape} (len {len(stream)} // {block} blocks)",
            "not a rectangular array (a short last block?)" if out is None else f"shape {out.shape}",
            "mistake: the leftover tail kept. Drop the tokens after the last whole block, then reshape(-1, block_size)"
            if out is None or (out.ndim == 2 and len(out) == len(want) + 1)
            else "reshape(-1, block_size) after dropping the tail",
        ):
            return
        ex.row(
            "values",
            out.tolist() == want.tolist(),
            "block k holds stream[k*block_size:(k+1)*block_size]",
            "same" if out.tolist() == want.tolist() else "other values",
            "cut the stream in order: reshape(-1, block_size), not (block_size, -1)",
        )
        exact = stream[: block * int(ex.rng.integers(2, 6))]  # no tail at all: every token is in a block
        out = _as_array(ex.call(exact.copy(), block))
        ok = out is not None and out.tolist() == to_blocks(exact, block).tolist()
        ex.row(
            "exact_multiple",
            ok,
            f"a {len(exact)}-token stream gives {len(exact) // block} blocks (no tail to drop)",
            "same" if ok else ("not an array" if out is None else f"shape {out.shape}"),
            "mistake: a block dropped when there is no tail. Keep len(stream) // block_size blocks"
            if out is not None and out.ndim == 2 and len(out) < len(exact) // block
            else "when len(stream) is a multiple of block_size, keep every token",
        )

    return ex.run(body)
