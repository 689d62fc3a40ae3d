"""Token-weighted perplexity with a protocol card.

ppl = exp(sum of NLL over scored tokens / number of scored tokens). Windows are cut from one
token stream; with no stride they are non-overlapping ``block_size`` windows, each scoring its
tokens 2..n given the earlier tokens of the same window; with a stride they follow Hugging Face's
"Perplexity of fixed-length models" sliding procedure. Nothing is padded, so nothing padded is
scored, and the result does not depend on the batch size.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from cptlab.core.distributed import all_reduce_sum, rank, world_size
from cptlab.core.progress import progress_bar
from cptlab.core.uncertainty import PIECE_TOKENS, document_of
from cptlab.speed.fastpath import fast_paths
from cptlab.speed.fused import CausalLMLoss


@dataclass
class PerplexityResult:
    ppl: float
    nll_sum: float
    tokens: int
    protocol: dict = field(default_factory=dict)
    units: dict | None = None  # per document: summed NLL and scored tokens (cptlab.core.uncertainty)

    @property
    def mean_nll(self) -> float:
        return self.nll_sum / self.tokens

    def to_dict(self) -> dict:
        return asdict(self)


def plan_windows(n: int, block_size: int, stride: int | None = None) -> list[tuple[int, int, int]]:
    """(begin, end, scored): window ``ids[begin:end]`` scores its last ``scored`` tokens."""
    stride = block_size if stride is None else stride
    if block_size < 2:
        raise ValueError("block_size must be at least 2")
    if not 1 <= stride <= block_size:
        raise ValueError(f"stride must be in [1, block_size={block_size}], got {stride}")
    out, prev_end = [], 0
    for begin in range(0, n, stride):
        end = min(begin + block_size, n)
        scored = min(end - prev_end, end - begin - 1)
        if scored > 0:
            out.append((begin, end, scored))
        prev_end = end
        if end == n:
            break
    return out


def _check_context(model, block_size: int) -> None:
    ctx = getattr(model.config, "n_positions", None) or getattr(model.config, "max_position_embeddings", None)
    if ctx is not None and block_size > ctx:
        raise ValueError(
            f"block_size={block_size} is above the model's context of {ctx} tokens: use --block-size {ctx} or less"
        )


def _batches(windows: list[tuple[int, int, int]], batch_size: int):
    """Windows of one shape (length, scored) together, ``batch_size`` at a time: no padding."""
    groups: dict[tuple[int, int], list[int]] = defaultdict(list)
    for begin, end, scored in windows:
        groups[(end - begin, scored)].append(begin)
    for (length, scored), begins in groups.items():
        for i in range(0, len(begins), batch_size):
            yield length, scored, begins[i : i + batch_size]


# no_grad, not inference_mode: under inference_mode autocast does not cache its bf16 copies of the
# weights, and the tied lm_head would be cast again for every chunk of rows.
@torch.no_grad()
def perplexity(
    model,
    ids,
    block_size: int,
    stride: int | None = None,
    batch_size: int = 8,
    max_tokens: int | None = None,
    device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
    desc: str = "perplexity",
    eos_id: int | None = None,
) -> PerplexityResult:
    """Corpus perplexity of ``ids`` (a 1-D token stream). ``max_tokens`` keeps the stream's first
    tokens: a deterministic selection, the same for every model scored with it. With ``eos_id``
    (the stream's document separator) the result also holds each document's NLL and tokens."""
    _check_context(model, block_size)
    ids = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    if ids.ndim != 1:
        raise ValueError("ids must be a 1-D token stream")
    n_input = len(ids)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    windows = plan_windows(len(ids), block_size, stride)
    if not windows:
        raise ValueError(f"nothing to score: {len(ids)} tokens give no window with at least 2 tokens")
    n_windows = len(windows)
    windows = windows[rank() :: world_size()]  # under torchrun each rank scores its share; sums are all-reduced
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64, device=device)
    n_scored = 0
    doc = n_docs = None
    if eos_id is not None:
        doc = torch.as_tensor(document_of(ids.numpy(), eos_id)).to(device)
        n_docs = int(doc[-1].item()) + 1
        doc_nll = torch.zeros(n_docs, dtype=torch.float64, device=device)
        doc_tokens = torch.zeros(n_docs, dtype=torch.float64, device=device)
    bar = progress_bar(len(windows), desc, leave=False, unit="window") if progress else None
    loss = CausalLMLoss(model, fused=False)  # chunked cross-entropy: memory never grows with batch x block x vocab
    with fast_paths(model, device, amp_dtype, evaluation=True):
        for length, scored, chunk in _batches(windows, batch_size):
            x = torch.stack([ids[b : b + length] for b in chunk]).to(device)
            if doc is None:
                total += loss(x, scored).double()
            else:
                nll = loss(x, scored, per_token=True).double()
                total += nll.sum()
                pos = torch.as_tensor(chunk, device=device)[:, None] + torch.arange(
                    length - scored, length, device=device
                )
                d = doc[pos].reshape(-1)
                doc_nll += torch.bincount(d, weights=nll.reshape(-1), minlength=n_docs)
                doc_tokens += torch.bincount(d, minlength=n_docs).double()
            n_scored += scored * len(chunk)
            if bar is not None:
                bar.update(len(chunk))
    if bar is not None:
        bar.close()
    model.train(was_training)
    counts = all_reduce_sum(torch.stack([total, torch.tensor(float(n_scored), dtype=torch.float64, device=device)]))
    nll_sum, n_scored = float(counts[0].item()), int(counts[1].item())
    protocol = protocol_card(block_size, stride, max_tokens, n_input, len(ids), n_windows, amp_dtype)
    units = None
    if doc is not None:
        sums = all_reduce_sum(torch.stack([doc_nll, doc_tokens]))
        keep = sums[1] > 0  # a document shorter than one scored token (the stream's first) has none
        units = {
            "unit": f"document, or a piece of {PIECE_TOKENS} tokens of a longer one",
            "nll": sums[0][keep].tolist(),
            "tokens": [int(t) for t in sums[1][keep].tolist()],
        }
    return PerplexityResult(
        ppl=math.exp(nll_sum / n_scored), nll_sum=nll_sum, tokens=n_scored, protocol=protocol, units=units
    )


def protocol_card(
    block_size: int,
    stride: int | None,
    max_tokens: int | None,
    n_input: int,
    n_used: int,
    n_windows: int,
    amp_dtype: torch.dtype | None,
    implementation: str = "cptlab.model.perplexity",
) -> dict:
    return {
        "block_size": block_size,
        "stride": stride if stride is not None else block_size,
        "windows": "non-overlapping" if stride in (None, block_size) else "sliding",
        "max_tokens": max_tokens,
        "input_tokens": n_input,
        "used_tokens": int(n_used),
        "n_windows": n_windows,
        "weighting": "token-weighted: exp(sum nll / scored tokens)",
        "first_token_of_stream_scored": False,
        "padding": "none",
        "precision": str(amp_dtype).replace("torch.", "") if amp_dtype is not None else "fp32",
        "implementation": implementation,
    }


def learner_perplexity(
    fn, model, ids, block_size: int, max_tokens: int | None = None, device=None, amp_dtype: torch.dtype | None = None
) -> PerplexityResult:
    """A learner's ``corpus_perplexity(model, ids, block_size) -> (ppl, nll_sum, n_scored)`` (notebook 1)
    run on the same tokens, fast paths and precision as the reference, with the same protocol card."""
    _check_context(model, block_size)
    ids = torch.as_tensor(np.asarray(ids, dtype=np.int64))
    n_input = len(ids)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    with fast_paths(model, device, amp_dtype, evaluation=True, fused_mlp=False):
        out = fn(model, ids, block_size)
    model.train(was_training)
    name = getattr(fn, "__name__", "the perplexity function")
    try:
        ppl, nll_sum, n_scored = (float(v) for v in out)
    except (TypeError, ValueError):
        raise ValueError(
            f"{name} returned {type(out).__name__}; it should return (ppl, nll_sum, n_scored): run its check cell"
        ) from None
    if not (math.isfinite(nll_sum) and n_scored >= 1 and n_scored == int(n_scored)):
        raise ValueError(f"{name} returned nll_sum={nll_sum}, n_scored={n_scored}: run its check cell")
    n_windows = len(plan_windows(len(ids), block_size))
    protocol = protocol_card(
        block_size, None, max_tokens, n_input, len(ids), n_windows, amp_dtype, implementation=f"learner: {name}"
    )
    # the run records the learner's raw sums and derives the perplexity from them, as every results file does
    # (the learner's own ppl is what its check judges)
    return PerplexityResult(ppl=math.exp(nll_sum / n_scored), nll_sum=nll_sum, tokens=int(n_scored), protocol=protocol)
