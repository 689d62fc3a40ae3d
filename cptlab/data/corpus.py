"""The CPT corpus: documents -> ids -> EOS after each -> one 1-D stream, split on a document
boundary, cut into ``block_size`` windows (run_clm's ``group_texts`` idea, nanoGPT's uint16 stream)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from cptlab.core.cache import cache_root, fingerprint
from cptlab.core.files import atomic_dir, build_lock, is_complete


class CorpusError(ValueError):
    """The corpus cannot be built as asked; the message says what to change."""


@dataclass
class Corpus:
    train: np.ndarray  # 1-D token stream of the training documents, EOS after each
    val: np.ndarray  # same for the validation documents
    eos_id: int
    stats: dict = field(default_factory=dict)
    blocks: np.ndarray | None = None  # the training stream cut into block_size windows


def stream_dtype(vocab_size: int):
    return np.uint16 if vocab_size <= 2**16 else np.uint32


def encode_documents(tokenizer, docs: list[str], batch: int = 512) -> list[np.ndarray]:
    """Token ids of each document, no special tokens added (EOS comes from ``pack``)."""
    out: list[np.ndarray] = []
    for i in range(0, len(docs), batch):
        enc = tokenizer(docs[i : i + batch], add_special_tokens=False, verbose=False)["input_ids"]
        out.extend(np.asarray(ids, dtype=np.int64) for ids in enc)
    return out


def pack(doc_ids: list[np.ndarray], eos_id: int, dtype=np.uint32) -> np.ndarray:
    """One 1-D stream: doc_0, EOS, doc_1, EOS, ...; EOS marks where a document ends."""
    if not doc_ids:
        return np.zeros(0, dtype=dtype)
    eos = np.array([eos_id], dtype=np.int64)
    return np.concatenate([part for ids in doc_ids for part in (ids, eos)]).astype(dtype)


def split_indices(lengths: list[int], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Which documents go to training and which to validation (indices, not streams): shuffle
    document order with the seed, then take whole documents for validation until they hold at least
    ``val_fraction`` of the tokens (lengths include each document's EOS)."""
    n = len(lengths)
    if n < 2:
        raise CorpusError(
            f"corpus too small for the split: {n} document(s); the train/val split needs at least 2 whole documents"
        )
    order = np.random.default_rng(seed).permutation(n).tolist()
    total = sum(lengths)
    target = val_fraction * total
    val, got = [], 0
    for idx in reversed(order):
        if got >= target or len(val) == n - 1:  # training keeps at least one document
            break
        val.append(idx)
        got += lengths[idx]
    val_set = set(val)
    train = [i for i in order if i not in val_set]
    if not train:
        raise CorpusError("corpus too small for the split: every document went to validation; add documents")
    return train, sorted(val, key=order.index)


def to_blocks(stream: np.ndarray, block_size: int) -> np.ndarray:
    """``[n_blocks, block_size]``; the tail shorter than a block is dropped (as run_clm does)."""
    n = (len(stream) // block_size) * block_size
    return stream[:n].reshape(-1, block_size)


def sample_windows(
    data: np.ndarray,
    block_size: int,
    batch_size: int,
    generator: torch.Generator,
    device_stream: torch.Tensor | None = None,
) -> torch.Tensor:
    """Random training windows, seeded by ``generator``: rows of ``data`` when it is already cut
    into blocks (2-D, the CPT corpus of step 2), else windows at random offsets of a 1-D stream
    (nanoGPT's get_batch). With ``device_stream`` (the same data already on a GPU) the same
    windows are gathered there."""
    if data.ndim == 2:
        if data.shape[1] != block_size or len(data) == 0:
            raise CorpusError(
                f"training blocks of shape {tuple(data.shape)} do not hold windows of block_size={block_size}"
            )
        rows = torch.randint(0, len(data), (batch_size,), generator=generator)
        if device_stream is not None:
            return device_stream[rows.to(device_stream.device)]
        return torch.from_numpy(data[rows.numpy()].astype(np.int64))
    hi = len(data) - block_size
    if hi < 0:
        raise CorpusError(f"training stream of {len(data)} tokens is shorter than block_size={block_size}")
    offsets = torch.randint(0, hi + 1, (batch_size,), generator=generator)
    if device_stream is not None:
        idx = offsets.to(device_stream.device)[:, None] + torch.arange(block_size, device=device_stream.device)
        return device_stream[idx]
    return torch.stack([torch.from_numpy(data[o : o + block_size].astype(np.int64)) for o in offsets.tolist()])


def window_crossing_eos(blocks: np.ndarray, eos_id: int) -> np.ndarray | None:
    """The first block that holds an EOS away from its ends: what the model sees at a document seam."""
    for block in blocks:
        pos = np.flatnonzero(block == eos_id)
        if len(pos) and 0 < pos[0] < len(block) - 1:
            return block
    return None


def split_streams(
    doc_ids: list[np.ndarray], eos_id: int, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """The reference of step 2's split: whole documents (chosen by ``split_indices``), each side
    packed into its own EOS-joined stream in the shuffled order."""
    train_idx, val_idx = split_indices([len(a) + 1 for a in doc_ids], val_fraction, seed)
    return pack([doc_ids[i] for i in train_idx], eos_id), pack([doc_ids[i] for i in val_idx], eos_id)


def build_corpus(
    docs: list[str],
    tokenizer,
    val_fraction: float,
    seed: int,
    block_size: int,
    split_fn: Callable = split_streams,
    blocks_fn: Callable = to_blocks,
) -> Corpus:
    """The CPT corpus. ``split_fn(doc_ids, eos_id, val_fraction, seed) -> (train, val)`` and
    ``blocks_fn(stream, block_size)`` are the learner's in notebook 2, the references elsewhere."""
    eos = tokenizer.eos_token_id
    if not docs:
        raise CorpusError("the code corpus is empty: point --code-dir at a folder with .py files")
    ids = encode_documents(tokenizer, docs)
    keep = [i for i, a in enumerate(ids) if len(a) > 0]
    ids = [ids[i] for i in keep]
    if len(ids) < 2:
        raise CorpusError(
            f"corpus too small for the split: {len(ids)} document(s); the train/val split needs at least 2 whole "
            "documents"
        )
    dtype = stream_dtype(len(tokenizer))
    train, val = (
        _as_stream(s, f"{getattr(split_fn, '__name__', 'split')} returned a", dtype)
        for s in split_fn(ids, eos, val_fraction, seed)
    )
    if len(train) < block_size + 1:
        raise CorpusError(
            f"corpus too small for the split: {len(train)} training tokens, fewer than one block of {block_size}+1; "
            f"add code or lower block_size"
        )
    if len(val) < block_size:
        raise CorpusError(
            f"corpus too small for the split: the validation split holds {len(val)} tokens, under one block of "
            f"{block_size}; add code documents"
        )
    blocks = np.asarray(blocks_fn(train, block_size))
    if blocks.ndim != 2 or blocks.shape[1] != block_size or not np.issubdtype(blocks.dtype, np.integer):
        raise CorpusError(
            f"{getattr(blocks_fn, '__name__', 'to_blocks')} returned an array of shape {blocks.shape} "
            f"({blocks.dtype}); "
            f"it should be [n_blocks, {block_size}] token ids: run its check cell"
        )
    n_tokens = len(train) + len(val)
    stats = {
        "n_docs": len(ids),
        "n_tokens": int(n_tokens),
        "eos_count": int((train == eos).sum() + (val == eos).sum()),
        "train_docs": int((train == eos).sum()),
        "val_docs": int((val == eos).sum()),
        "train_tokens": int(len(train)),
        "val_tokens": int(len(val)),
        "val_fraction": len(val) / n_tokens,
        "val_fraction_target": val_fraction,
        "block_size": block_size,
        "n_blocks": int(len(blocks)),
        "n_val_blocks": int(len(val) // block_size),
        "doc_token_lengths": [int(len(a)) for a in ids],
        "dtype": np.dtype(dtype).name,
        "joiner": "eos_after_each_document",
        "eos_token_id": int(eos),
        "split_seed": seed,
        "empty_docs_dropped": len(docs) - len(keep),
    }
    return Corpus(train=train, val=val, eos_id=int(eos), stats=stats, blocks=blocks.astype(dtype, copy=False))


def _as_stream(x, what: str, dtype) -> np.ndarray:
    a = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise CorpusError(
            f"{what} {a.ndim}-D array of {a.dtype}; each side of the split should be a 1-D stream of token ids: run "
            "its check cell"
        )
    return a.astype(dtype, copy=False)


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    return fingerprint(backend.to_str() if backend is not None else repr(tokenizer.get_vocab()))


def _cached(folder: Path, block_size: int) -> Corpus | None:
    """A complete cache entry's corpus, or None (absent, or corrupt: it is rebuilt)."""
    if not is_complete(folder):
        return None
    try:
        stats = json.loads((folder / "stats.json").read_text())
        train = np.load(folder / "train.npy", allow_pickle=False)
        val = np.load(folder / "val.npy", allow_pickle=False)
        if len(train) == stats["train_tokens"] and len(val) == stats["val_tokens"]:
            stats["cache"] = str(folder)
            return Corpus(
                train=train, val=val, eos_id=stats["eos_token_id"], stats=stats, blocks=to_blocks(train, block_size)
            )
    except (OSError, ValueError, KeyError):
        pass
    return None


def cached_corpus(docs: list[str], tokenizer, val_fraction: float, seed: int, block_size: int) -> Corpus:
    """``build_corpus`` with the token arrays cached on disk, keyed by tokenizer and data."""
    key = fingerprint(tokenizer_fingerprint(tokenizer), fingerprint(*docs), val_fraction, seed, block_size, "v1")
    folder = cache_root() / "tokens" / key
    hit = _cached(folder, block_size)
    if hit is not None:
        return hit
    with build_lock(folder):
        hit = _cached(folder, block_size)
        if hit is not None:
            return hit
        corpus = build_corpus(docs, tokenizer, val_fraction, seed, block_size)
        with atomic_dir(folder) as tmp:
            np.save(tmp / "train.npy", corpus.train, allow_pickle=False)
            np.save(tmp / "val.npy", corpus.val, allow_pickle=False)
            (tmp / "stats.json").write_text(json.dumps(corpus.stats))
    corpus.stats["cache"] = str(folder)
    return corpus


def eos_join_stream(docs: list[str], tokenizer) -> np.ndarray:
    """Documents as one EOS-joined stream, no split (evaluation sets, the tiny base's pre-training data)."""
    return pack(encode_documents(tokenizer, docs), tokenizer.eos_token_id, stream_dtype(len(tokenizer)))


def replay_counts(fraction: float, batch_size: int, steps: int) -> list[int]:
    """Replay windows per step so that the running share tracks ``fraction`` exactly (error
    diffusion): with 4 windows a step, 5% means one replay window every 5 steps, not zero."""
    total = [int(np.floor(fraction * batch_size * k + 1e-9)) for k in range(steps + 1)]
    return [min(batch_size, total[k] - total[k - 1]) for k in range(1, steps + 1)]


def checked_counts(counts, windows: int, steps: int, name: str = "replay_schedule") -> list[int]:
    """A learner's replay schedule as the loop needs it, or one line that says what is wrong."""
    try:
        counts = [int(c) for c in counts] if all(float(c) == int(c) for c in counts) else None
    except (TypeError, ValueError):
        counts = None
    if counts is None or len(counts) != steps or any(c < 0 or c > windows for c in counts):
        raise ValueError(
            f"{name} should give {steps} whole numbers of replay windows, each between 0 and {windows}: "
            "run its check cell"
        )
    return counts


def replay_batches(main: np.ndarray, replay: np.ndarray, cfg, fraction: float, record: list[int], schedule_fn=None):
    """``batch_fn`` for ``train``: each step's windows from ``main``, and as many from ``replay`` as
    the schedule says (``schedule_fn(fraction, windows_per_step, steps)``, the learner's in notebook 4,
    else ``replay_counts``). CPT replays English into code; the tiny base replays code into English."""
    windows = cfg.batch_size * cfg.grad_accum
    if schedule_fn is None:
        counts = replay_counts(fraction, windows, cfg.max_steps)
    else:
        counts = checked_counts(schedule_fn(fraction, windows, cfg.max_steps), windows, cfg.max_steps)

    def batch_fn(step: int, gen: torch.Generator) -> list[torch.Tensor]:
        n_rep = counts[step - 1]
        x = sample_windows(main, cfg.block_size, cfg.batch_size * cfg.grad_accum - n_rep, gen)
        if n_rep:
            x = torch.cat([x, sample_windows(replay, cfg.block_size, n_rep, gen)])
        record.append(n_rep)
        return list(x.split(cfg.batch_size))

    return batch_fn
