"""Checks of the learner's functions, run in the notebook in seconds before the long cells.

Each check calls the learner's function on fresh random cases (a 2-layer GPT-2, synthetic
documents), compares it with the library's reference, and names the typical mistake when the
result is what that mistake gives. A stub that still raises ``NotImplementedError`` gets a report
that says "not implemented yet" (0 points), never a traceback.
"""

from __future__ import annotations

import copy
import math
import re
import secrets
import traceback
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from checkers.core.questions import CHECK_GATES, CHECK_POINTS, QUESTIONS
from checkers.core.report import Check, Report
from checkers.core.safe_files import Unsafe, read_json
from cptlab.core.results import STEP_FILES
from cptlab.data.corpus import pack, split_streams, to_blocks
from cptlab.lab.steps import code_ppl_drop, forgetting_ratio
from cptlab.lab.study import LORA_TARGETS, recommend
from cptlab.model.loop import ProbeRun, cpt_loop, small_gpt2
from cptlab.model.perplexity import perplexity, plan_windows
from cptlab.model.schedule import lr_multiplier
from cptlab.notebook.fallback import record

NOT_YET = "not implemented yet"


class _NotYet(Exception):
    pass


class _Raised(Exception):
    pass


class _Limit(Exception):
    pass


class LearnerRaised(Exception):
    """The learner's function raised in another process; the message says what and where."""


class OutOfLimits(Exception):
    """The learner's function ran past its question's time limit or memory cap."""


class Exercise:
    """One question's report: rows of checks, each with its points from ``CHECK_POINTS``."""

    def __init__(self, qid: str, fn: Callable, seed: int | None = None):
        q = QUESTIONS[qid]
        self.q, self.fn = q, fn
        self.name = getattr(fn, "__name__", q.title)
        # a fresh case every call (no answer can be hard-coded), recorded so a failure can be replayed
        self.seed = secrets.randbits(31) if seed is None else int(seed)
        self.report = Report(q.step, q.title, "", question=q.id, seed=self.seed)
        self.rng = np.random.default_rng(self.seed)
        self.grad_on: list[bool] = []  # grad mode of each forward pass of the model the function was given

    def call(self, *args, fn: Callable | None = None) -> Any:
        f = fn or self.fn
        try:
            out = f(*args)
        except NotImplementedError:
            raise _NotYet() from None
        except OutOfLimits as exc:
            raise _Limit(str(exc)) from None
        except LearnerRaised as exc:
            raise _Raised(str(exc)) from None
        except Exception as exc:  # the learner's bug: shown as a failed check, with where it happened
            frames = traceback.extract_tb(exc.__traceback__)
            own = getattr(getattr(f, "__code__", None), "co_filename", None)
            where = next((f"line {fr.lineno}: {fr.line}" for fr in reversed(frames) if fr.filename == own), "")
            raise _Raised(f"{type(exc).__name__}: {exc}" + (f" (at {where})" if where else "")) from None
        self.grad_on.extend(getattr(f, "last_grad_on", ()))
        return out

    def row(self, cid: str, ok: bool, expected: str, got: str, hint: str = "") -> bool:
        return self.report.add(
            f"q{self.q.id}.{cid}", ok, expected, got, "" if ok else hint, CHECK_POINTS[self.q.id][cid]
        )

    def run(self, body: Callable[[], None]) -> Report:
        rest = "the checks after this one were not reached"
        try:
            body()
        except _NotYet:
            self.report.checks = [
                Check(
                    f"q{self.q.id}",
                    False,
                    f"{self.name} written and passing its checks",
                    NOT_YET,
                    f"write {self.name} in the cell above (replace the `raise NotImplementedError`), run that cell, "
                    "then this one",
                    points=self.q.points,
                )
            ]
            self.report.status = NOT_YET
        except _Raised as exc:
            self._rest(
                f"q{self.q.id}.runs",
                f"{self.name} returns without an error",
                str(exc),
                "read the error above, fix that line, run the function's cell again, then this one",
            )
        except _Limit as exc:
            self._rest(
                f"q{self.q.id}.limits",
                f"{self.name} returns within its question's limits",
                f"{self.name}: {exc}",
                f"{self.name} ran too long or used too much memory: look for a loop that never ends or a tensor that "
                "grows",
            )
            self.report.status = f"{self.name}: {exc}"
        else:
            self._rest(
                f"q{self.q.id}.not_reached",
                "every check of this question",
                rest,
                "fix the failed check above: the checks after it need its result",
            )
        gates = [
            c for c in self.report.checks if c.id.rsplit(".", 1)[-1] in CHECK_GATES.get(self.q.id, ()) and not c.passed
        ]
        if gates:
            for c in self.report.checks:
                c.points = 0.0
            gates[0].points = float(self.q.points)
        if not getattr(self.fn, "remote", False):
            record(self.q.functions, self.report.passed, written=self.report.status != NOT_YET)
        return self.report

    def _rest(self, cid: str, expected: str, got: str, hint: str) -> None:
        """The points of the checks not reached go to one failing row, so the question's total stays whole."""
        left = round(self.q.points - sum(c.points for c in self.report.checks), 6)
        if left > 1e-9 or not cid.endswith("not_reached"):
            self.report.add(cid, False, expected, got, hint, max(0.0, left))


def _close(a: float, b: float, rel: float = 1e-4) -> bool:
    return math.isfinite(a) and math.isfinite(b) and abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)


def _numbers(out: Any, n: int) -> list[float] | None:
    try:
        vals = [
            float(torch.as_tensor(v).detach().float().item()) if isinstance(v, torch.Tensor) else float(v) for v in out
        ]
    except (TypeError, ValueError, RuntimeError):
        return None
    return vals if len(vals) == n else None


def tiny_gpt2(seed: int, vocab: int = 97, n_positions: int = 64, sharp: float = 1.0):
    """``small_gpt2`` with no dropout; ``sharp`` scales the embeddings so that per-token losses
    spread widely (windows then differ, and the typical mistakes show)."""
    model = small_gpt2(seed, vocab, n_positions)
    with torch.no_grad():
        model.transformer.wte.weight.mul_(sharp)
    return model.eval()


# ----------------------------------------------------------------------------- step 1
def check_perplexity(fn: Callable, seed: int | None = None) -> Report:
    """``corpus_perplexity(model, ids, block_size) -> (ppl, nll_sum, n_scored)``."""
    ex = Exercise("1.1", fn, seed)

    def body():
        model = tiny_gpt2(ex.seed, sharp=30.0)
        block = int(ex.rng.choice([8, 12, 16]))
        k = int(ex.rng.integers(3, 6))
        # the last window is short, and its length keeps the typical mistakes' token counts apart
        r = int(ex.rng.choice([x for x in range(2, block // 2) if x != block - k - 1]))
        n = block * k + r
        ids = torch.as_tensor(ex.rng.integers(0, model.config.vocab_size, n), dtype=torch.long)
        # every path to the logits embeds the tokens: the embedding sees each forward pass
        hook = model.transformer.wte.register_forward_pre_hook(lambda m, a: ex.grad_on.append(torch.is_grad_enabled()))
        try:
            out = ex.call(model, ids.clone(), block)
        finally:
            hook.remove()
        grad_on = ex.grad_on
        ref = perplexity(model, ids, block, batch_size=4)
        # per-window sums by a plain loop: what each typical mistake would return
        sums, counts = [], []
        with torch.no_grad():
            for b, e, _ in plan_windows(n, block):
                x = ids[b:e]
                logits = model(x[None]).logits[0, :-1]
                sums.append(F.cross_entropy(logits.double(), x[1:], reduction="sum").item())
                counts.append(len(x) - 1)
        vals = _numbers(out, 3)
        if not ex.row(
            "returns",
            vals is not None,
            "a tuple (ppl, nll_sum, n_scored) of three numbers",
            repr(out)[:80],
            "return three numbers: math.exp(nll_sum / n_scored), the summed NLL, and the count of scored tokens",
        ):
            return
        ppl, nll, n_scored = vals
        ex.row(
            "no_grad",
            bool(grad_on) and not any(grad_on),
            "every forward pass without gradients",
            f"{sum(grad_on)} of {len(grad_on)} forward passes with gradients enabled"
            if grad_on
            else "the model given was never run: compute the logits with model(...) on each window",
            "mistake: gradients enabled. Evaluation needs no gradients: wrap the loop in `with torch.no_grad():` "
            "(it saves the memory of every activation)",
        )
        n_windows = len(counts)
        hint = "count tokens 2..n of each window (a window of n tokens scores n - 1 of them)"
        if n_scored == n:
            hint = (
                "mistake: scoring the first token of a window. The first token of each window has no context; "
                "it is not scored: count len(window) - 1 per window"
            )
        elif n_scored == n_windows * (block - 1) or n_scored == n_windows * block:
            hint = (
                "mistake: scoring padding. The last window is shorter than block_size: score it as it is, "
                "never pad it (padded positions are not text)"
            )
        ex.row(
            "tokens",
            n_scored == ref.tokens,
            f"n_scored = {ref.tokens} ({n} tokens in {n_windows} windows of up to {block})",
            f"{n_scored:g}",
            hint,
        )
        ex.row(
            "nll_sum",
            _close(nll, ref.nll_sum),
            f"nll_sum = {ref.nll_sum:.6g} (sum of every scored token's NLL)",
            f"{nll:.6g}",
            "sum F.cross_entropy(logits[:-1], x[1:], reduction='sum') over the windows; do not average per window",
        )
        mean_of_ppl = float(np.mean([math.exp(s / c) for s, c in zip(sums, counts)]))
        mean_of_losses = math.exp(float(np.mean([s / c for s, c in zip(sums, counts)])))
        hint = "ppl = math.exp(nll_sum / n_scored): one exp of the token-weighted mean NLL"
        if _close(ppl, mean_of_ppl) and not _close(ppl, ref.ppl):
            hint = "mistake: a mean of per-window perplexities. Sum the NLL over every scored token, then exp once"
        elif _close(ppl, mean_of_losses) and not _close(ppl, ref.ppl):
            hint = (
                "mistake: an unweighted mean of window losses. Windows hold different numbers of tokens (the last is "
                "short): weight by tokens, i.e. exp(total NLL / total scored tokens)"
            )
        ex.row("ppl", _close(ppl, ref.ppl), f"ppl = {ref.ppl:.6g} (token-weighted, exp once)", f"{ppl:.6g}", hint)

    return ex.run(body)


# ----------------------------------------------------------------------------- step 2
def _docs(rng: np.random.Generator, n_docs: int, vocab: int, max_len: int) -> list[np.ndarray]:
    return [rng.integers(0, vocab, int(rng.integers(3, max_len))).astype(np.int64) for _ in range(n_docs)]


def _as_array(x: Any) -> np.ndarray | None:
    try:
        a = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x)
    except (TypeError, ValueError):
        return None
    return a if a.dtype != object else None


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


def check_split(fn: Callable, seed: int | None = None) -> Report:
    """``split_documents(doc_ids, eos_id, val_fraction, seed) -> (train_stream, val_stream)``."""
    ex = Exercise("2.2", fn, seed)

    def body():
        eos = int(ex.rng.integers(200, 250))
        docs = _docs(ex.rng, int(ex.rng.integers(30, 60)), 200, 120)
        frac, seed = float(ex.rng.uniform(0.05, 0.2)), int(ex.rng.integers(0, 2**31))
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
            "return (pack_documents(train_docs, eos_id), pack_documents(val_docs, eos_id))",
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
        ex.row(
            "fraction",
            share >= frac and len(val) == len(want_val),
            f"validation holds >= {frac:.3f} of the tokens, "
            f"with as few documents as the rule takes ({len(want_val)} tokens)",
            f"{share:.4f} ({len(val)} tokens)",
            "take documents for validation until they hold at least val_fraction of all tokens (EOS counted), then "
            "stop",
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


# ----------------------------------------------------------------------------- step 3
def check_schedule(fn: Callable, seed: int | None = None) -> Report:
    """``lr_at(step, peak_lr, warmup_steps, max_steps)``: linear warm-up to the peak at
    ``warmup_steps``, then a half cosine to 0 at ``max_steps``."""
    ex = Exercise("3.1", fn, seed)

    def body():
        warm = int(ex.rng.integers(2, 20))
        total = warm + int(ex.rng.integers(10, 150))
        peak = float(ex.rng.choice([5e-5, 1e-4, 3e-4, 1e-3]))
        got = [ex.call(s, peak, warm, total) for s in range(1, total + 1)]
        if not ex.row(
            "returns",
            all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in got),
            "a finite number for every step",
            repr(got[:3])[:80],
            "return a float: the learning rate of that step",
        ):
            return
        want = [peak * lr_multiplier(s, warm, total) for s in range(1, total + 1)]
        tol = 1e-9 * peak

        def same(a, b):
            return all(abs(x - y) <= tol for x, y in zip(a, b))

        hint = (
            f"lr = peak_lr * step / warmup_steps for step <= warmup_steps (step 1 gets peak/{warm}, step {warm} "
            "the peak)"
        )
        if got[0] == 0:
            hint = (
                "mistake: warm-up off by one: lr 0 at the first update. Step 1 is an update: give it peak_lr / "
                "warmup_steps"
            )
        elif int(np.argmax(got)) + 1 == warm + 1:
            hint = (
                f"mistake: warm-up off by one: the peak comes a step late (step {warm + 1}). Reach peak_lr exactly "
                "at step warmup_steps"
            )
        ex.row(
            "warmup",
            same(got[:warm], want[:warm]),
            f"steps 1..{warm}: {want[0]:.3g} rising linearly to {peak:g}",
            f"{got[0]:.3g} .. {got[warm - 1]:.3g}",
            hint,
        )
        over_all = [peak * 0.5 * (1 + math.cos(math.pi * s / total)) for s in range(warm + 1, total + 1)]
        hint = "after warm-up: peak_lr * 0.5 * (1 + cos(pi * (step - warmup_steps) / (max_steps - warmup_steps)))"
        if same(got[warm:], over_all):
            hint = (
                "mistake: cosine over all steps instead of the steps after warm-up. The decay starts at the peak: "
                "progress = (step - warmup_steps) / (max_steps - warmup_steps)"
            )
        elif abs(got[-1]) > tol:
            hint = (
                "mistake: not reaching the minimum at the end. At step max_steps the progress is 1 and the rate 0: "
                "divide by (max_steps - warmup_steps)"
            )
        ex.row(
            "cosine",
            same(got[warm:], want[warm:]),
            f"steps {warm + 1}..{total}: half cosine from {peak:g} down to 0",
            f"{got[warm]:.3g} .. {got[-1]:.3g}",
            hint,
        )
        ex.row(
            "end",
            abs(got[-1]) <= tol,
            f"lr 0 at the last step ({total})",
            f"{got[-1]:.3g}",
            "mistake: not reaching the minimum at the end: the last step's progress must be exactly 1",
        )

    return ex.run(body)


def _sgd_steps(
    model, batches, lr: float, max_norm: float, clip: bool = True, zero: bool = True
) -> tuple[list, list, list]:
    """The reference optimizer step, by hand, and the typical mistakes as switches."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    losses, norms, states = [], [], []
    for x in batches:
        loss = model(x, labels=x).loss
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
        if clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
        opt.step()
        if zero:
            opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        norms.append(norm.item())
        states.append([p.detach().clone() for p in model.parameters()])
    return losses, norms, states


def _same_params(a: list, b: list, rel: float = 1e-4) -> bool:
    return all(torch.allclose(x, y, rtol=rel, atol=1e-6) for x, y in zip(a, b))


def check_optimizer_step(fn: Callable, seed: int | None = None) -> Report:
    """``optimizer_step(model, batch, optimizer, max_norm) -> (loss, pre-clip grad norm)``:
    forward, loss, backward, clip the global norm, step, zero the gradients."""
    ex = Exercise("3.2", fn, seed)

    def body():
        base = tiny_gpt2(ex.seed, n_positions=32)
        gen = torch.Generator().manual_seed(ex.seed)
        batches = [torch.randint(0, base.config.vocab_size, (2, 16), generator=gen) for _ in range(2)]
        _, norms0, _ = _sgd_steps(copy.deepcopy(base), batches[:1], 0.0, 1.0, clip=False)
        max_norm = 0.25 * norms0[0]  # the first step's gradient is clipped hard: where clipping sits shows
        lr = 0.5
        ref_loss, ref_norm, ref_states = _sgd_steps(copy.deepcopy(base), batches, lr, max_norm)
        _, _, unclipped = _sgd_steps(copy.deepcopy(base), batches, lr, max_norm, clip=False)
        _, _, unzeroed = _sgd_steps(copy.deepcopy(base), batches, lr, max_norm, zero=False)
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        first = _numbers(ex.call(model, batches[0].clone(), opt, max_norm), 2)
        after1 = [p.detach().clone() for p in model.parameters()]
        second = ex.call(model, batches[1].clone(), opt, max_norm)
        after2 = [p.detach().clone() for p in model.parameters()]
        ok = first is not None and _numbers(second, 2) is not None
        if not ex.row(
            "returns",
            ok,
            "(loss, grad_norm): two numbers",
            f"({first[0]:.4g}, {first[1]:.4g})" if ok else repr(second if first is not None else first)[:80],
            "return the loss (a number or 0-d tensor) and clip_grad_norm_'s return value",
        ):
            return
        loss, norm = first
        ex.row(
            "loss",
            _close(loss, ref_loss[0]),
            f"the batch's mean next-token loss {ref_loss[0]:.6g}",
            f"{loss:.6g}",
            "loss = model(batch, labels=batch).loss (transformers shifts the labels for you)",
        )
        hint = "return the value clip_grad_norm_ returns: the total norm before clipping"
        if _close(norm, max_norm, 1e-3):
            hint = (
                "mistake: the post-clip norm returned. clip_grad_norm_ returns the norm before clipping; after "
                "clipping it "
                "is max_norm by construction and tells you nothing"
            )
        ex.row(
            "grad_norm",
            _close(norm, ref_norm[0], 1e-3),
            f"the pre-clip gradient norm {ref_norm[0]:.6g} (max_norm was {max_norm:.3g})",
            f"{norm:.6g}",
            hint,
        )
        unchanged = _same_params(after1, [p.detach() for p in base.parameters()], 0)
        ex.row(
            "moved",
            not unchanged,
            "the weights change after a step",
            "unchanged" if unchanged else "changed",
            "mistake: the weights never change. Call optimizer.step() after backward() and clipping: "
            "a step that updates nothing earns none of this question's points",
        )
        hint = "order: loss.backward(), clip_grad_norm_(model.parameters(), max_norm), optimizer.step()"
        if _same_params(after1, unclipped[0]):
            hint = (
                "mistake: clipping after optimizer.step(), or not at all. The update used the raw gradient: clip "
                "between "
                "backward() and optimizer.step()"
            )
        elif _same_params(after1, [p.detach() for p in base.parameters()], 0):
            hint = "the weights did not change: call optimizer.step()"
        ex.row(
            "update",
            _same_params(after1, ref_states[0]),
            "the weights after one step equal the reference update (clipped gradient)",
            "same" if _same_params(after1, ref_states[0]) else "other weights",
            hint,
        )
        hint = "zero the gradients every step: optimizer.zero_grad(set_to_none=True) after optimizer.step()"
        if _same_params(after2, unzeroed[1]):
            hint = (
                "mistake: gradients never zeroed. backward() adds into .grad, so the second step used both batches' "
                "gradients: call optimizer.zero_grad() every step"
            )
        ex.row(
            "zero_grad",
            _same_params(after2, ref_states[1]),
            "a second step uses only the second batch's gradient",
            "same" if _same_params(after2, ref_states[1]) else "other weights",
            hint,
        )

    return ex.run(body)


# ----------------------------------------------------------------------------- step 3: the loop
def _loop_trace(run: ProbeRun) -> dict:
    """The probe's record, read defensively (in grading it comes back from the learner's process)."""
    t = run.trace
    events = t.get("events") if isinstance(t, dict) else None
    events = [e for e in events if isinstance(e, dict)] if isinstance(events, list) else []

    def of(op):
        return [e for e in events if e.get("op") == op]

    curve = t.get("curve") if isinstance(t, dict) and isinstance(t.get("curve"), list) else []
    return {
        "log": of("log"),
        "steps": of("step"),
        "evals": of("evaluate"),
        "batches": of("batch"),
        "curve": curve,
        "order": [e.get("op") for e in events],
    }


def _loop_case(ex: "Exercise", seed: int, config: dict, ratios: dict, first_step: int = 1) -> dict:
    """The learner's loop on a probe run: its trace."""
    run = ProbeRun(seed, config, ratios, first_step)
    ex.call(run, run.lr_at, run.optimizer_step)
    return _loop_trace(run)


def _reference_trace(seed: int, config: dict, ratios: dict) -> dict:
    ref = ProbeRun(seed, config, ratios)
    cpt_loop(ref, ref.lr_at, ref.optimizer_step)
    return _loop_trace(ref)


def _steps_of(events: list[dict]) -> list:
    return [e.get("step") for e in events]


def check_cpt_loop(fn: Callable, seed: int | None = None) -> Report:
    """``cpt_loop(run, lr_at, optimizer_step)``: steps ``run.first_step``..``max_steps``, this step's
    rate on every parameter group, a fresh batch, the log, the curve every ``curve_every`` steps and
    at the last (eval mode, no gradients, then train mode again), and the stop at the floor."""
    ex = Exercise("3.3", fn, seed)

    def body():
        rng = ex.rng
        every = int(rng.integers(2, 4))
        n = every * int(rng.integers(2, 4)) + 1  # not a multiple of curve_every: the last step needs its own point
        base = {
            "max_steps": n,
            "warmup_steps": int(rng.integers(1, 3)),
            "cpt_lr": float(rng.uniform(0.01, 0.05)),
            "curve_every": every,
            "retention_floor": 1.05,
        }
        above = {s: 1.2 for s in range(0, n + 1)}  # every point above the floor: only a loop asked to stop stops
        got = _loop_case(ex, ex.seed, {**base, "stop_at_floor": False}, above)
        want = list(range(1, n + 1))
        steps = _steps_of(got["log"])
        hint = "for step in range(run.first_step, cfg.max_steps + 1): one run.log(step, ...) per step"
        if steps == want[:-1]:
            hint = "mistake: one step short. range(first, max_steps) stops before max_steps: use cfg.max_steps + 1"
        elif steps == [s - 1 for s in want]:
            hint = "mistake: steps counted from 0. Steps are 1-based (lr_at(0) is 0: a step that learns nothing)"
        elif steps and steps == want[: len(steps)] and steps[-1] in _steps_of(got["evals"]):
            hint = "mistake: the run stopped at the floor although cfg.stop_at_floor is False: stop only when asked"
        ex.row("steps", steps == want, f"steps {want[0]} to {want[-1]} logged, once each", f"{steps}"[:80], hint)
        # each row below judges the steps the loop ran, so one mistake costs its own row only
        used = [e.get("batch") for e in got["steps"]]
        fresh = bool(steps) and used == steps and _steps_of(got["batches"]) == steps
        ex.row(
            "batches",
            fresh,
            "each step trains on its own batch, run.batch(step)",
            "yes" if fresh else f"batches used: {used}"[:80],
            "mistake: one batch for every step, or another step's. Call batch = run.batch(step) inside the loop and "
            "pass it to optimizer_step",
        )
        lr = [[base["cpt_lr"] * lr_multiplier(s, base["warmup_steps"], n)] * 2 for s in steps]  # both groups
        mine = [e.get("lrs") for e in got["steps"]]
        hint = "set the step's rate on every group: for group in run.optimizer.param_groups: group['lr'] = lr"
        start = ProbeRun.start_lr
        if mine and all(isinstance(x, list) and all(v == start for v in x) for x in mine):
            hint = (
                "mistake: the rate computed but never assigned. The optimizer kept its first rate: set "
                "group['lr'] = lr on every group of run.optimizer.param_groups before optimizer_step"
            )
        elif mine and all(isinstance(x, list) and len(x) > 1 and x[1] == start for x in mine):
            hint = "mistake: the rate set on the first parameter group only. GPT-2's optimizer has two: set every group"
        elif len(mine) == len(lr) > 1 and _close_lists(mine[1:], lr[:-1]):
            hint = (
                "mistake: each step ran with the previous step's rate: set the rate before this step's optimizer_step"
            )
        rate_ok = bool(steps) and _close_lists(mine, lr)
        ex.row("rate", rate_ok, "every step's optimizer holds lr_at(step) in every group", f"{mine[:2]}"[:80], hint)
        # the log: each step's rate and the loss its optimizer_step returned; with the steps and rates
        # right, the very losses of the reference loop on the same seed
        logged = [[e.get("lr"), e.get("loss")] for e in got["log"]]
        own = [[x[0], e.get("loss")] for x, e in zip(lr, got["steps"])]
        ok = bool(logged) and _close_lists(logged, own, 1e-5)
        trains = all(e.get("training") is True for e in got["steps"])  # a mode mistake changes the losses too
        if ok and steps == want and rate_ok and fresh and trains:
            ref = _reference_trace(ex.seed, {**base, "stop_at_floor": False}, above)
            ok = _close_lists(logged, [[e.get("lr"), e.get("loss")] for e in ref["log"]], 1e-5)
        ex.row(
            "log",
            ok,
            "each step logged once with its rate and optimizer_step's loss (the reference loop's, same seed)",
            "yes" if ok else f"{logged[:2]}"[:80],
            "log each step once, after its optimizer_step: run.log(step, lr, loss, grad_norm) with the loss and norm "
            "optimizer_step returned",
        )
        evals = got["evals"]
        ok = bool(evals) and all(e.get("training") is False and e.get("grad") is False for e in evals)
        after = all(e.get("training") is True for e in got["steps"])
        hint = ""
        if evals and any(e.get("training") for e in evals):
            hint = "mistake: evaluation in train mode (dropout on). Call run.model.eval() before run.evaluate(step)"
        elif evals and any(e.get("grad") for e in evals):
            hint = (
                "mistake: evaluation with gradients on (memory for a backward pass that never comes). Call "
                "run.evaluate(step) inside `with torch.no_grad():`"
            )
        elif not after:
            hint = (
                "mistake: the model left in eval() mode after evaluating: the next steps trained without dropout. Call "
                "run.model.train() after run.evaluate"
            )
        elif not evals:
            hint = "no evaluation: call run.evaluate(step) at the curve's steps"
        ex.row(
            "modes",
            ok and after,
            "evaluate in eval mode without gradients, train in train mode",
            "yes" if ok and after else "no",
            hint,
        )
        want_curve = [s for s in want if s % every == 0 or s == n]
        ran_curve = [s for s in steps if s in want_curve]  # the points of the steps the loop ran
        at = _steps_of(evals)
        hint = "evaluate when step % cfg.curve_every == 0 or step == cfg.max_steps"
        if at == want_curve[:-1] and steps == want:
            hint = "mistake: the last step has no point. Evaluate at step == cfg.max_steps too: it is step 4's number"
        elif at == want:
            hint = "mistake: a point at every step. Evaluate every cfg.curve_every steps (and at the last)"
        elif {s for s in at if s != n} in [{s for s in want if (s + d) % every == 0 and s != n} for d in (-1, 1)]:
            hint = "mistake: the curve at the wrong steps (off by one): evaluate when step % cfg.curve_every == 0"
        recorded = got["curve"] == at
        if at == ran_curve and not recorded:
            hint = "mistake: the points never reach the curve. Append each one: run.curve.append(point)"
        ex.row(
            "curve",
            bool(at) and at == ran_curve and recorded,
            f"points at steps {ran_curve or want_curve}, appended to run.curve",
            f"evaluated at {at}, curve {got['curve']}"[:80],
            hint,
        )
        # the floor: the first point equals it (no stop: above means >), a later one is above it
        k1, k2 = want_curve[0], want_curve[1]
        ratios = {s: 1.0 for s in range(0, n + 1)}
        ratios.update({k1: 1.05, k2: 1.07})
        got_f = _loop_case(ex, ex.seed + 1, {**base, "stop_at_floor": True}, ratios)
        steps_f, curve_f = _steps_of(got_f["log"]), got_f["curve"]
        ok = steps_f == list(range(1, k2 + 1)) and curve_f == [s for s in want_curve if s <= k2]
        hint = (
            "with cfg.stop_at_floor: append the point, then break once point['forgetting_ratio'] > cfg.retention_floor"
        )
        if _steps_of(got_f["evals"]) != [s for s in want_curve if s <= (steps_f or [0])[-1]]:
            hint = "the floor is tested at the curve's points: fix the curve's steps first (the row above)"
        elif steps_f and steps_f[-1] == k1:
            hint = (
                f"mistake: stopped at step {k1}, whose ratio equals the floor. Stop only above it (>), not at it (>=)"
            )
        elif steps_f and steps_f[-1] == k2 and k2 not in curve_f:
            hint = (
                "mistake: the floor tested before the point is recorded. The run stopped, but the point that "
                "stopped it is not in run.curve: append it first, then test it"
            )
        elif steps_f == want:
            hint = "mistake: never stopped. With cfg.stop_at_floor, break once the ratio is above cfg.retention_floor"
        elif steps_f and steps_f[-1] == k2 + 1:
            hint = "mistake: stopped a step late: break right after the point that crossed the floor"
        ex.row(
            "floor",
            ok,
            f"stop at step {k2}, its point in the curve (step {k1}'s ratio equals the floor: no stop)",
            f"stopped at {steps_f[-1] if steps_f else None}, curve {curve_f}"[:80],
            hint,
        )
        # a resumed run: steps from run.first_step on
        first = int(rng.integers(2, n))
        got_r = _loop_case(ex, ex.seed + 2, {**base, "stop_at_floor": False}, above, first)
        steps_r = _steps_of(got_r["log"])
        ex.row(
            "resume",
            bool(steps_r) and steps_r == list(range(first, first + len(steps_r))),
            f"a run resumed at step {first} runs steps {first} to {n}",
            f"{steps_r}"[:80],
            "mistake: run.first_step ignored, so a resumed run redoes its steps: "
            "for step in range(run.first_step, cfg.max_steps + 1)"
            if steps_r == want
            else "start at run.first_step",
        )

    return ex.run(body)


def _close_lists(a: Any, b: Any, rel: float = 1e-9) -> bool:
    """Nested lists of numbers equal within ``rel`` (same shape)."""
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close_lists(x, y, rel) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(a - b) <= rel * max(abs(a), abs(b), 1e-12)
    return False


# ----------------------------------------------------------------------------- step 3: the speed of the run
def _flops_variants(model, block: int) -> dict[str, float]:
    """The reference and what each typical mistake gives, counted here from the model's own shapes."""
    c = model.config
    params = sum(p.numel() for p in model.parameters())
    wpe = model.transformer.wpe.weight.numel()
    wte = model.transformer.wte.weight.numel()
    attention = 12 * c.n_layer * c.n_embd * block
    n = params - wpe
    return {
        "right": 6 * n + attention,
        "right_with_positions": 6 * params
        + attention,  # nanoGPT leaves the lookup table out; counting it is no mistake
        "forward only": 2 * n + attention / 3,
        "forward only, no attention": 2 * n,
        "embedding twice": 6 * (n + wte) + attention,
        "attention missing": 6 * n,
    }


def check_flops(fn: Callable, mfu_fn: Callable | None = None, seed: int | None = None) -> Report:
    """``flops_per_token(model, block_size) -> FLOPs`` of one training token: 6N (forward 2N, backward
    4N) with N the weights a token is multiplied by, plus 12 x layers x d_model x block_size; and
    ``mfu(tokens_per_second, flops_per_token, peak_flops, precision)``: achieved over the peak of the
    precision the run computed in."""
    ex = Exercise("3.4", fn, seed)

    def body():
        cases = [(tiny_gpt2(int(ex.rng.integers(1 << 31))), int(ex.rng.integers(32, 65)))]
        # a second shape: a longer block makes the attention term weigh more
        from transformers import GPT2Config, GPT2LMHeadModel

        torch.manual_seed(int(ex.rng.integers(1 << 31)))
        layers, width = int(ex.rng.integers(2, 4)), int(ex.rng.choice([32, 48]))
        wide = GPT2LMHeadModel(GPT2Config(vocab_size=61, n_positions=256, n_embd=width, n_layer=layers, n_head=2))
        cases.append((wide, int(ex.rng.integers(128, 257))))
        for cid, (model, block) in zip(("small_model", "long_block"), cases):
            got = ex.call(model, block)
            if cid == "small_model" and not ex.row(
                "returns",
                isinstance(got, (int, float, np.integer, np.floating)) and not isinstance(got, bool),
                "a number of FLOPs",
                type(got).__name__,
                "return one number: the FLOPs of one training token",
            ):
                return
            v = _flops_variants(model, block)
            ok = _close(float(got), v["right"], 1e-6) or _close(float(got), v["right_with_positions"], 1e-6)
            hint = "6 x N (N: the weights a token is multiplied by) + 12 x n_layer x n_embd x block_size"
            for mistake, says in (
                (
                    "forward only",
                    "the forward pass only. Backward costs twice the forward, so a training token costs 6N, not 2N",
                ),
                (
                    "forward only, no attention",
                    "the forward pass only. Backward costs twice the forward, so a training token costs 6N, not 2N",
                ),
                (
                    "embedding twice",
                    "the embedding counted twice. GPT-2's lm_head is its token embedding (tied): "
                    "model.parameters() already counts it once",
                ),
                (
                    "attention missing",
                    "the attention term missing. Each token is scored against up to block_size positions: add "
                    "12 x n_layer x n_embd x block_size",
                ),
            ):
                if not ok and _close(float(got), v[mistake], 1e-6):
                    hint = f"mistake: {says}"
                    break
            c = model.config
            ex.row(
                cid,
                ok,
                f"{v['right']:.6g} FLOPs ({c.n_layer} layers, n_embd {c.n_embd}, vocab {c.vocab_size}, block {block})",
                f"{float(got):.6g}",
                hint,
            )
        _check_mfu(ex, mfu_fn)

    return ex.run(body)


def _check_mfu(ex: "Exercise", fn: Callable | None) -> None:
    """Random runs at both precisions, a peak table where bf16's is 4-16x fp32's (as on GPUs)."""
    if fn is None:
        raise _NotYet()
    ok, got_all, hint = True, [], "MFU = tokens_per_second x flops_per_token / peak_flops[precision]"
    for precision in ("bf16", "fp32") if ex.rng.random() < 0.5 else ("fp32", "bf16"):
        fp32 = float(ex.rng.uniform(5e12, 70e12))
        peaks = {"fp32": fp32, "bf16": fp32 * float(ex.rng.uniform(4, 16))}
        tps, fpt = float(ex.rng.uniform(1e4, 3e5)), float(ex.rng.uniform(5e8, 1e9))
        want = tps * fpt / peaks[precision]
        got = _numbers([ex.call(tps, fpt, dict(peaks), precision, fn=fn)], 1)
        got_all.append(got[0] if got else None)
        if got is not None and _close(got[0], want, 1e-6):
            continue
        ok = False
        other = "fp32" if precision == "bf16" else "bf16"
        for value, says in (
            (
                tps * fpt / peaks[other],
                f"the peak of the other precision. This run computed in {precision}: divide by "
                f"peak_flops[{precision!r}] ({other}'s peak is {peaks[other] / peaks[precision]:.2g}x it)",
            ),
            (100 * want, "a percentage. Return the fraction (0.22, not 22): the table formats it"),
            (1 / want if want else 0.0, "the ratio upside down: achieved FLOP/s over the peak, not the peak over it"),
        ):
            if got is not None and _close(got[0], value, 1e-6):
                hint = f"mistake: {says}"
                break
    ex.row(
        "mfu",
        ok,
        "tokens/s x FLOPs per token / the peak of the run's precision, at bf16 and at fp32",
        ", ".join("?" if g is None else f"{g:.4g}" for g in got_all),
        hint,
    )


# ----------------------------------------------------------------------------- step 4
def check_tradeoff(drop_fn: Callable, ratio_fn: Callable, seed: int | None = None) -> Report:
    """``code_ppl_drop(baseline_code_ppl, adapted_code_ppl)`` and
    ``forgetting_ratio(baseline_general_ppl, adapted_general_ppl)``."""
    ex = Exercise("4.1", drop_fn, seed)

    def body():
        b, a = float(ex.rng.uniform(5, 2000)), 0.0
        a = b * float(ex.rng.uniform(0.3, 0.9))
        got = ex.call(b, a)
        want = code_ppl_drop(b, a)
        hint = "code_ppl_drop = 1 - adapted / baseline: the fraction of the perplexity removed"
        if _num_close(got, 100 * want):
            hint = "mistake: percent instead of fraction. Return 0.35 for a 35% drop, not 35"
        elif _num_close(got, b - a):
            hint = (
                "mistake: a difference instead of a ratio. Perplexities are compared as ratios: 1 - adapted / baseline"
            )
        elif _num_close(got, 1 - b / a) or _num_close(got, a / b - 1):
            hint = "mistake: the ratio inverted. The drop is 1 - adapted / baseline (positive when CPT helped)"
        ex.row(
            "code_ppl_drop",
            _num_close(got, want),
            f"code_ppl_drop({b:.4g}, {a:.4g}) = {want:.6g}",
            repr(got)[:40],
            hint,
        )
        g0 = float(ex.rng.uniform(5, 500))
        g1 = g0 * float(ex.rng.uniform(1.01, 1.5))
        got = ex.call(g0, g1, fn=ratio_fn)
        want = forgetting_ratio(g0, g1)
        hint = "forgetting_ratio = adapted_general_ppl / baseline_general_ppl (1.0: nothing forgotten)"
        if _num_close(got, g0 / g1):
            hint = (
                "mistake: the ratio inverted. Divide the adapted English perplexity by the baseline's: above 1 "
                "means forgotten"
            )
        elif _num_close(got, g1 - g0):
            hint = "mistake: a difference instead of a ratio. Divide the two perplexities"
        elif _num_close(got, 100 * want) or _num_close(got, 100 * (want - 1)):
            hint = "mistake: percent instead of fraction. Return the ratio itself (e.g. 1.06), not a percentage"
        ex.row(
            "forgetting_ratio",
            _num_close(got, want),
            f"forgetting_ratio({g0:.4g}, {g1:.4g}) = {want:.6g}",
            repr(got)[:40],
            hint,
        )

    return ex.run(body)


def _whole_counts(got: Any, steps: int, windows: int) -> list[int] | None:
    if not isinstance(got, (list, tuple, np.ndarray)) or len(got) != steps:
        return None
    out = []
    for c in list(got):
        if isinstance(c, bool) or not isinstance(c, (int, np.integer, float, np.floating)) or float(c) != int(c):
            return None
        if not 0 <= int(c) <= windows:
            return None
        out.append(int(c))
    return out


def check_replay_schedule(fn: Callable, seed: int | None = None) -> Report:
    """``replay_schedule(fraction, windows_per_step, steps) -> [English windows of step 1, ...]``:
    whole windows, the run's total at the fraction, every stretch of the run at its share."""
    ex = Exercise("4.2", fn, seed)

    def body():
        cases = [
            (0.05, 4, int(ex.rng.integers(100, 200))),  # 0.2 windows a step: rounding per step gives none
            (float(ex.rng.uniform(0.1, 0.3)), int(ex.rng.choice([8, 16])), int(ex.rng.integers(30, 80))),
            (0.0, 4, int(ex.rng.integers(5, 20))),
        ]
        runs = []
        for f, w, n in cases:
            got = ex.call(f, w, n)
            runs.append((f, w, n, got, _whole_counts(got, n, w)))
        bad = next((r for r in runs if r[4] is None), None)
        if not ex.row(
            "returns",
            bad is None,
            "a list of `steps` whole numbers of English windows, each between 0 and windows_per_step",
            "" if bad is None else f"{type(bad[3]).__name__} {repr(bad[3])[:60]} for steps={bad[2]}",
            "return one count per optimizer step: how many of that step's windows are English",
        ):
            return
        total_bad = next((r for r in runs if abs(sum(r[4]) - r[0] * r[1] * r[2]) >= 1 - 1e-9), None)
        hint = "the run's English windows should total fraction x windows_per_step x steps (rounded)"
        if total_bad is not None:
            f, w, n, _, counts = total_bad
            if sum(counts) == 0 and f * w < 1:
                hint = (
                    f"mistake: rounded per step. {f:.0%} of {w} windows is {f * w:.2f} a step, which rounds to 0 at "
                    "every step, so the run replays nothing. Keep a running total: step k holds "
                    "floor(f x w x k) - floor(f x w x (k - 1))"
                )
            elif abs(sum(counts) - (1 - f) * w * n) < 1:
                hint = "mistake: the code share, not the English share. `fraction` is the share of English windows"
        f, w, n, _, counts = total_bad or runs[1]
        ex.row(
            "total",
            total_bad is None,
            f"{f * w * n:.1f} English windows in all ({f:.3g} x {w} x {n}), to the nearest whole one",
            f"{sum(counts)}",
            hint,
        )
        spread_bad = None
        for f, w, n, _, counts in runs:
            k = next((k for k in range(1, n + 1) if abs(sum(counts[:k]) - f * w * k) >= 1 - 1e-9), None)
            if k is not None:
                spread_bad = (f, w, n, counts, k)
                break
        hint = "spread the English over the run: after any k steps, about fraction x windows x k of them"
        got = "every stretch at its share"
        if spread_bad is not None:
            f, w, n, counts, k = spread_bad
            got = f"{sum(counts[:k])} English windows after {k} steps, where {f * w * k:.1f} belong"
            if sum(counts[:k]) > f * w * k and total_bad is None:
                hint = (
                    "mistake: front-loaded. The English comes first and the rest of the run is pure CPT, which "
                    "forgets as it did; spread it so that every stretch of the run holds its share"
                )
        ex.row(
            "spread", spread_bad is None, "after every step k, fraction x windows x k English windows, +-1", got, hint
        )

    return ex.run(body)


def _random_state(rng: np.random.Generator) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(int(rng.integers(1 << 31)))
    shapes = {"wte.weight": (11, 6), "h.0.attn.c_attn.weight": (6, 18), "h.0.ln_1.bias": (6,)}
    state = {k: torch.randn(*s, generator=g) for k, s in shapes.items()}
    state["position_ids"] = torch.arange(7)  # an integer buffer: copied, never blended
    return state


def check_interpolate(fn: Callable, seed: int | None = None) -> Report:
    """``interpolate(base_state, cpt_state, alpha) -> state``: (1 - alpha) base + alpha cpt, tensor by
    tensor, as new tensors; integer buffers copied from the base."""
    ex = Exercise("4.3", fn, seed)

    def body():
        base, cpt = _random_state(ex.rng), _random_state(ex.rng)
        cpt["position_ids"] = base["position_ids"].clone()
        floats = [k for k in base if base[k].is_floating_point()]
        alpha = float(ex.rng.uniform(0.2, 0.8))

        def fresh():
            return {k: v.clone() for k, v in base.items()}, {k: v.clone() for k, v in cpt.items()}

        b, c = fresh()
        got = ex.call(b, c, alpha)
        shaped = (
            isinstance(got, dict)
            and set(got) == set(base)
            and all(isinstance(got[k], torch.Tensor) and got[k].shape == base[k].shape for k in base)
        )
        if not ex.row(
            "returns",
            shaped,
            f"a dict with the same {len(base)} keys, each a tensor of its shape",
            sorted(got)[:4].__repr__() if isinstance(got, dict) else type(got).__name__,
            "return a new state dict: one tensor per key of base_state",
        ):
            return
        unchanged = all(torch.equal(b[k], base[k]) and torch.equal(c[k], cpt[k]) for k in base)
        ex.row(
            "inputs_unchanged",
            unchanged,
            "base_state and cpt_state as they were",
            "unchanged" if unchanged else "changed in place",
            "mistake: the inputs changed in place. The study blends the same base again for every alpha: build new "
            "tensors ((1 - alpha) * base[k] + alpha * cpt[k])",
        )
        want = {k: (1 - alpha) * base[k] + alpha * cpt[k] for k in floats}
        reversed_ = {k: alpha * base[k] + (1 - alpha) * cpt[k] for k in floats}
        blend_ok = all(torch.allclose(got[k].float(), want[k], atol=1e-6) for k in floats)
        hint = "theta = (1 - alpha) * base + alpha * cpt, for every floating-point tensor"
        if not blend_ok and all(torch.allclose(got[k].float(), reversed_[k], atol=1e-6) for k in floats):
            hint = "mistake: alpha weights the base. alpha = 0 is the base model, alpha = 1 the CPT model"
        ex.row(
            "blend", blend_ok, f"(1 - {alpha:.3f}) * base + {alpha:.3f} * cpt", "equal" if blend_ok else "other", hint
        )
        ends = []
        for a, ref in ((0.0, base), (1.0, cpt)):
            b, c = fresh()
            out = ex.call(b, c, a)
            ends.append(
                isinstance(out, dict) and all(k in out and torch.allclose(out[k].float(), ref[k]) for k in floats)
            )
        hint = "alpha = 0 gives the base's tensors and alpha = 1 the CPT model's"
        if not all(ends):
            hint = "mistake: the endpoints swapped or off: alpha = 0 must give the base model, alpha = 1 the CPT model"
        ex.row(
            "endpoints", all(ends), "alpha 0 -> base, alpha 1 -> cpt", f"alpha 0: {ends[0]}, alpha 1: {ends[1]}", hint
        )
        pos = got["position_ids"]
        ints_ok = not pos.is_floating_point() and torch.equal(pos, base["position_ids"])
        ex.row(
            "integer_buffers",
            ints_ok,
            "position_ids (int64) copied from the base",
            f"{pos.dtype}",
            "mistake: an integer buffer blended (it came back as floats). Blend floating-point tensors only; copy "
            "the others from the base (tensor.is_floating_point())",
        )

    return ex.run(body)


_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def _lora_targets_ok(targets: Any) -> bool:
    """Plain module names only: a regular expression from a learner could take the grader hostage."""
    if isinstance(targets, str):
        return bool(_PLAIN_NAME.match(targets))
    return isinstance(targets, (list, tuple, set)) and all(isinstance(t, str) and _PLAIN_NAME.match(t) for t in targets)


def check_lora_config(fn: Callable, seed: int | None = None) -> Report:
    """``lora_config(r, alpha) -> peft.LoraConfig`` for GPT-2: adapters on every linear layer
    (c_attn, c_proj, c_fc), fan_in_fan_out for its Conv1D, rank and alpha as given, the base frozen."""
    import warnings

    from peft import LoraConfig, get_peft_model

    ex = Exercise("4.4", fn, seed)

    def body():
        r = int(ex.rng.choice([4, 8, 16]))
        alpha = int(r * ex.rng.choice([1, 2, 4]))
        got = ex.call(r, alpha)
        ok = isinstance(got, LoraConfig) and _lora_targets_ok(got.target_modules)
        if not ex.row(
            "returns",
            ok,
            "a peft.LoraConfig whose target_modules lists module names",
            type(got).__name__ if not isinstance(got, LoraConfig) else f"target_modules={got.target_modules!r}"[:60],
            "return LoraConfig(r=..., lora_alpha=..., target_modules=[...], ...) from peft",
        ):
            return
        fan_in_fan_out = bool(got.fan_in_fan_out)  # peft sets it itself, with a warning, once applied
        model = tiny_gpt2(int(ex.rng.integers(1 << 31)))
        want = {n for n, _ in model.named_modules() if n.rsplit(".", 1)[-1] in LORA_TARGETS["all_linear"]}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                peft_model = get_peft_model(model, copy.deepcopy(got))
        except (ValueError, TypeError, KeyError) as exc:
            ex.row(
                "targets",
                False,
                "adapters on c_attn, c_proj and c_fc of every block",
                f"peft refused: {str(exc).splitlines()[0]}"[:100],
                "mistake: targets that match nothing. GPT-2's linear layers are named c_attn, c_proj and c_fc "
                "(print(model) shows them); q_proj / v_proj are other models' names",
            )
            return
        adapted = {
            n.replace("base_model.model.", "")
            for n, m in peft_model.named_modules()
            if hasattr(m, "lora_A") and m.lora_A
        }
        hint = "target c_attn, c_proj and c_fc: every linear layer of every block (the lab's sweep chose all of them)"
        if adapted and adapted < want and all(".attn." in n for n in adapted):
            hint = "mistake: attention only. The lab's LoRA adapts every linear layer, the MLP's c_fc and c_proj too"
        elif not adapted:
            hint = "mistake: targets that match nothing. GPT-2's linear layers are named c_attn, c_proj and c_fc"
        ex.row(
            "targets",
            adapted == want,
            f"adapters on the {len(want)} linear layers (c_attn, c_proj, c_fc of each block)",
            f"{len(adapted)} adapted" + (f", e.g. {sorted(adapted - want)[0]}" if adapted - want else ""),
            hint,
        )
        ex.row(
            "fan_in_fan_out",
            fan_in_fan_out,
            "fan_in_fan_out=True",
            f"fan_in_fan_out={got.fan_in_fan_out!r}",
            "mistake: fan_in_fan_out missing. GPT-2's c_attn, c_proj and c_fc are Conv1D modules that store their "
            "weight as [in, out]; peft patches this with a warning, say it yourself",
        )
        ex.row(
            "rank_alpha",
            got.r == r and got.lora_alpha == alpha,
            f"r={r}, lora_alpha={alpha} (the arguments)",
            f"r={got.r}, lora_alpha={got.lora_alpha}",
            "use the function's arguments: r=r, lora_alpha=alpha",
        )
        trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad and "lora_" not in n]
        ex.row(
            "base_frozen",
            not trainable,
            "only the LoRA matrices trainable",
            f"{len(trainable)} base tensors trainable" + (f", e.g. {trainable[0]}" if trainable else ""),
            "mistake: the base not frozen. Keep bias='none' and no modules_to_save: GPT-2's own weights must stay "
            "bit-identical",
        )

    return ex.run(body)


def _num_close(got: Any, want: float) -> bool:
    return isinstance(got, (int, float, np.floating)) and not isinstance(got, bool) and _close(float(got), want, 1e-9)


def _random_variants(rng: np.random.Generator, floor: float) -> list[dict]:
    names = ["pure CPT", "replay 5%", "replay 25%", "LoRA r=8", "interp a=0.5", "interp a=0"]
    choices = ["pure_cpt", "replay", "replay", "lora", "interpolation", "interpolation"]
    out = []
    for name, choice in zip(names, choices):
        out.append(
            {
                "name": name,
                "choice": choice,
                "code_ppl_drop": float(rng.uniform(0.0, 0.6)),
                "forgetting_ratio": float(rng.uniform(0.99, floor + 0.1)),
            }
        )
    # the largest gain sits above the floor, so ignoring the floor shows
    top = max(out, key=lambda v: v["code_ppl_drop"])
    top["forgetting_ratio"] = floor + 0.05
    return out


def check_choice(fn: Callable, seed: int | None = None) -> Report:
    """``choose_variant(variants, floor) -> name``: the largest code gain whose forgetting ratio
    stays at or under the floor (if none does, the one that forgets least)."""
    ex = Exercise("4.5", fn, seed)

    def body():
        floor = float(ex.rng.uniform(1.02, 1.1))
        for case in ("some under the floor", "at the floor", "none under the floor"):
            vs = _random_variants(ex.rng, floor)
            by_gain = sorted(vs, key=lambda v: v["code_ppl_drop"])
            # the variant that forgets least gains least, so "forgets least" never passes for "best under the floor"
            by_gain[0]["forgetting_ratio"] = 0.98
            # better ones are under the floor too, strictly, so "forgets least" and "<" pick other variants
            by_gain[1]["forgetting_ratio"] = float(ex.rng.uniform(0.99, floor - 1e-3))
            by_gain[-2]["forgetting_ratio"] = float(ex.rng.uniform(0.99, floor - 1e-3))
            if case == "at the floor":  # the best one sits exactly on the floor: "at or under" keeps it
                by_gain[-2]["forgetting_ratio"] = floor
            if case == "none under the floor":
                for v in vs:
                    v["forgetting_ratio"] = floor + float(ex.rng.uniform(0.01, 0.2))
                by_gain[0]["forgetting_ratio"] = floor + 0.005
            got = ex.call([dict(v) for v in vs], floor)
            want = recommend(vs, floor)["name"]
            picked = next((v for v in vs if v["name"] == got), None)
            hint = "keep the variants with forgetting_ratio <= floor, then take the one with the largest code_ppl_drop"
            if picked is not None and picked["forgetting_ratio"] > floor and case != "none under the floor":
                hint = (
                    f"mistake: a choice above the floor ({picked['forgetting_ratio']:.3f} > {floor:.3f}). Filter "
                    "by the floor first"
                )
            elif case != "none under the floor" and picked is by_gain[0]:
                hint = (
                    "mistake: the variant that forgets least. Among those within the floor, take the largest code gain"
                )
            elif case == "at the floor" and picked is not None and picked["name"] != want:
                hint = (
                    "mistake: the floor excluded. A ratio equal to the floor is within it: keep forgetting_ratio "
                    "<= floor"
                )
            elif case == "none under the floor":
                hint = "when no variant stays under the floor, return the one with the smallest forgetting_ratio"
            ex.row(case.replace(" ", "_"), got == want, f"{want!r} ({case}, floor {floor:.3f})", repr(got)[:40], hint)

    return ex.run(body)


SCENARIOS = {
    "code_only_assistant": "a code-only assistant: English does not matter",
    "english_within_floor": "English must stay within the retention floor",
    "per_customer_adapters": "many per-customer adapters served on one shared base",
    "no_training_budget": "no budget for another training run",
}


def _scenario_answers(variants: list[dict], floor: float) -> dict[str, set[str]]:
    by = {c: {v["name"] for v in variants if v["choice"] == c} for c in ("pure_cpt", "replay", "lora", "interpolation")}
    return {
        "code_only_assistant": {max(variants, key=lambda v: v["code_ppl_drop"])["name"]},
        "english_within_floor": {recommend(variants, floor)["name"]},
        "per_customer_adapters": by["lora"],
        "no_training_budget": by["interpolation"],
    }


def judge(ex: Exercise, label: str, variants: list[dict], floor: float) -> None:
    got = ex.call([dict(v) for v in variants], floor)
    want = _scenario_answers(variants, floor)
    short = "a" if label == "a random study" else "b"
    if not ex.row(
        f"returns.{short}",
        isinstance(got, dict),
        f"a dict with the keys {sorted(SCENARIOS)} ({label})",
        type(got).__name__,
        "return a dict: scenario -> variant name",
    ):
        return
    for key, what in SCENARIOS.items():
        ex.row(
            f"{key}.{short}",
            got.get(key) in want[key],
            f"one of {sorted(want[key])} ({label})",
            repr(got.get(key))[:40],
            f"{what}: pick from the measured variants by the numbers (see the markdown above)",
        )


def own_study(run_dir) -> tuple[dict | None, str]:
    """The learner's study from step 4's results, read as untrusted data (a regular file inside the run
    folder, size-capped) and only if every variant has the fields the decisions need."""
    try:
        data = read_json(run_dir, STEP_FILES[4])
    except FileNotFoundError:
        return None, "missing"
    except (Unsafe, OSError, ValueError) as exc:
        return None, f"unreadable ({exc})"[:200]
    study = data.get("study") if isinstance(data, dict) else None
    try:
        variants = study["variants"]
        ok = (
            isinstance(float(study["retention_floor"]), float)
            and bool(variants)
            and all(
                isinstance(v["name"], str)
                and isinstance(v["choice"], str)
                and all(
                    isinstance(v[k], (int, float)) and not isinstance(v[k], bool) and math.isfinite(v[k])
                    for k in ("code_ppl_drop", "forgetting_ratio")
                )
                for v in variants
            )
        )
    except (TypeError, KeyError, ValueError):
        ok = False
    return (study, "present") if ok else (None, "missing or malformed")


def check_production_choices(fn: Callable, run_dir: str | None = None, seed: int | None = None) -> Report:
    """``production_choices(variants, floor) -> {scenario: variant name}``, on a random study and
    on the learner's own (``step4_tradeoff.json`` in ``run_dir``)."""
    ex = Exercise("4.6", fn, seed)

    def body():
        floor = float(ex.rng.uniform(1.02, 1.1))
        judge(ex, "a random study", _random_variants(ex.rng, floor), floor)
        if run_dir is None:
            judge(ex, "a second random study", _random_variants(ex.rng, floor), floor)
            return
        study, why = own_study(run_dir)
        if ex.row(
            "own_study",
            study is not None,
            "your study in step4_tradeoff.json",
            why,
            "run the study cell above first: the decisions are checked against your own numbers",
        ):
            judge(ex, "your study", study["variants"], study["retention_floor"])

    return ex.run(body)
