"""Loss and gradients of the fused lm_head + cross-entropy, eager and compiled, against the plain
logits path on one batch without dropout: `python benchmarks/check_fused_compile.py [cpu|cuda]`.

A grad rel err near 1 means the gradients were lost; on CUDA (torch 2.11) that happened when the
fused Function was compiled into the graph, which is why it is kept out of it."""

import copy
import sys
import time

import torch
from transformers import GPT2Config, GPT2LMHeadModel

from cptlab.speed.fused import CausalLMLoss


def main(dev: str) -> None:
    torch.manual_seed(0)
    no_dropout = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    cfg = (
        GPT2Config(**no_dropout)
        if dev == "cuda"
        else GPT2Config(n_layer=2, n_embd=128, n_head=4, vocab_size=1000, n_positions=64, **no_dropout)
    )
    model = GPT2LMHeadModel(cfg).to(dev)
    x = torch.randint(0, cfg.vocab_size, (4, 64), device=dev)

    def run(fused: bool, compiled: bool, amp: bool):
        m = copy.deepcopy(model)
        loss_fn = CausalLMLoss(m, fused)
        f = torch.compile(loss_fn) if compiled else loss_fn
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=amp):
            loss = f(x)
        loss.backward()
        return float(loss.detach()), torch.cat([p.grad.flatten().float() for p in m.parameters()])

    for amp in (False, True) if dev == "cuda" else (False,):
        ref_loss, ref_grad = run(False, False, amp)
        # on CUDA, compiling the plain GPT-2 loss takes minutes: only the fused variants there
        variants = ((True, False), (True, True)) if dev == "cuda" else ((True, False), (True, True), (False, True))
        for fused, compiled in variants:
            t = time.perf_counter()
            loss, grad = run(fused, compiled, amp)
            err = ((grad - ref_grad).norm() / ref_grad.norm()).item()
            print(
                f"amp={amp} fused={fused} compiled={compiled}: loss {loss:.6f} vs {ref_loss:.6f}; "
                f"grad rel err {err:.2e} ({time.perf_counter() - t:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "cpu")
