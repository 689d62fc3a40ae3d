"""Confidence intervals for the lab's numbers: a seeded percentile bootstrap over documents.

An evaluation set is a handful of documents (files, articles), and tokens of one document are far
from independent: a file of dense regular expressions is hard all the way through. So the unit of
resampling is the document, or for a long one each of its consecutive pieces of ``PIECE_TOKENS``
(wikitext's test split is one joined document; a few stdlib files run to 20k tokens): each
evaluation keeps, per unit, its summed NLL and its scored tokens (``units``), and a resample draws
units with replacement and recomputes the statistic from the drawn sums. Comparisons of two models
on the same tokens (the code drop, the forgetting ratio, the gap between two variants) are *paired*:
both sides use the same drawn documents, so what is shared between them (how hard the documents are)
cancels.

The resampling seed is fixed (``SEED``), not the run's: a checker recomputes every interval from
the stored sums and gets the same numbers.
"""

from __future__ import annotations

import numpy as np

LEVEL = 0.95
RESAMPLES = 2000
SEED = 20261128
PIECE_TOKENS = 4096
METHOD = f"percentile bootstrap over documents (pieces of at most {PIECE_TOKENS:,} tokens)"
MIN_UNITS = 8  # fewer units than this and an interval says little: the study says so
# The lab's bar for a perplexity worth comparing (tiny and gpt2; the checks hold runs to it and
# `cptlab run` warns below it): fewer tokens or documents and the intervals are wide or say little.
MIN_EVAL_TOKENS = 50_000
MIN_EVAL_DOCUMENTS = 5


def document_of(ids: np.ndarray, eos_id: int, piece: int = PIECE_TOKENS) -> np.ndarray:
    """The resampling unit of each position of an EOS-joined stream: its document (an EOS belongs to
    the document it ends, the token after it to the next one), and within a long document its
    ``piece``-token piece; numbered 0, 1, ... in stream order."""
    ids = np.asarray(ids)
    if not len(ids):
        return np.zeros(0, dtype=np.int64)
    is_eos = (ids == eos_id).astype(np.int64)
    doc = np.concatenate([[0], np.cumsum(is_eos[:-1])])
    starts = np.concatenate([[0], np.flatnonzero(is_eos[:-1]) + 1])
    piece_no = (np.arange(len(ids)) - starts[doc]) // piece
    key = doc * (len(ids) // piece + 1) + piece_no  # increasing along the stream
    return np.unique(key, return_inverse=True)[1].astype(np.int64)


def _arrays(units: dict) -> tuple[np.ndarray, np.ndarray]:
    nll, tok = np.asarray(units["nll"], dtype=np.float64), np.asarray(units["tokens"], dtype=np.float64)
    if nll.shape != tok.shape or nll.ndim != 1 or len(nll) == 0:
        raise ValueError(
            f"units need equal-length, non-empty 'nll' and 'tokens' lists, got {nll.shape} and {tok.shape}"
        )
    return nll, tok


def resamples(n_units: int, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """``[resamples, n_units]`` document indices drawn with replacement (the same draw for every
    statistic of one set, which is what makes the paired intervals paired)."""
    return np.random.default_rng(seed).integers(0, n_units, size=(resamples, n_units))


def _record(estimate: float, draws: np.ndarray, n_units: int, paired: bool) -> dict:
    lo, hi = np.quantile(draws, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return {
        "estimate": float(estimate),
        "low": float(lo),
        "high": float(hi),
        "level": LEVEL,
        "method": METHOD,
        "paired": paired,
        "n_units": int(n_units),
        "resamples": int(draws.shape[0]),
        "seed": SEED,
    }


def ppl_interval(units: dict) -> dict:
    """Interval for one perplexity, exp(sum nll / sum tokens), over the set's documents."""
    nll, tok = _arrays(units)
    idx = resamples(len(nll))
    draws = np.exp(nll[idx].sum(1) / tok[idx].sum(1))
    return _record(np.exp(nll.sum() / tok.sum()), draws, len(nll), paired=False)


def _paired_log_ratio(base: dict, new: dict) -> tuple[float, np.ndarray, int]:
    """log(ppl_new / ppl_base) on the full set and on each paired resample."""
    nb, tb = _arrays(base)
    nn, tn = _arrays(new)
    if nb.shape != nn.shape or not np.array_equal(tb, tn):
        raise ValueError("a paired interval needs both models scored on the same documents and tokens")
    idx = resamples(len(nb))
    t = tb[idx].sum(1)
    return (nn.sum() - nb.sum()) / tb.sum(), (nn[idx].sum(1) - nb[idx].sum(1)) / t, len(nb)


def ratio_interval(base: dict, new: dict) -> dict:
    """Interval for ppl_new / ppl_base (the forgetting ratio on English), paired over documents."""
    est, draws, n = _paired_log_ratio(base, new)
    return _record(np.exp(est), np.exp(draws), n, paired=True)


def drop_interval(base: dict, new: dict) -> dict:
    """Interval for 1 - ppl_new / ppl_base (the code perplexity drop), paired over documents."""
    est, draws, n = _paired_log_ratio(base, new)
    return _record(1 - np.exp(est), 1 - np.exp(draws), n, paired=True)


def difference_interval(base: dict, a: dict, b: dict) -> dict:
    """Interval for drop(a) - drop(b), both against ``base``, all three paired over documents:
    whether two variants' code gains are told apart by this evaluation set."""
    ea, da, n = _paired_log_ratio(base, a)
    eb, db, _ = _paired_log_ratio(base, b)
    return _record(np.exp(eb) - np.exp(ea), np.exp(db) - np.exp(da), n, paired=True)


def contains(interval: dict) -> bool:
    return interval["low"] <= interval["estimate"] <= interval["high"]


def describe(interval: dict, percent: bool = False) -> str:
    """``35.2% [31.0%, 39.1%]`` or ``1.053 [1.041, 1.066]``."""
    if percent:
        return f"{100 * interval['estimate']:.1f}% [{100 * interval['low']:.1f}%, {100 * interval['high']:.1f}%]"
    return f"{interval['estimate']:.3f} [{interval['low']:.3f}, {interval['high']:.3f}]"
