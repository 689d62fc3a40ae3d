"""The fused lm_head + cross-entropy and the tanh-GELU swap against PyTorch's and transformers' own math."""

import copy
import shutil

import pytest
import torch
import torch.nn.functional as F

from cptlab.speed import fused
from cptlab.speed.fused import CausalLMLoss, fast_gelu, inference_mlp, linear_cross_entropy, split_lm_head


def _reference(h, w, t):
    """Plain logits, PyTorch's cross-entropy, autograd's gradients, in float64."""
    h64, w64 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    loss = F.cross_entropy(h64 @ w64.t(), t, reduction="sum", ignore_index=-100)
    gh, gw = torch.autograd.grad(loss * 0.7, (h64, w64))
    return float(loss.detach()), gh, gw


@pytest.mark.parametrize("chunk_elements", [1 << 24, 64 * 7])  # one chunk; 7-row chunks with a ragged tail
@pytest.mark.parametrize("masked", [False, True])
def test_linear_cross_entropy_matches_autograd(monkeypatch, chunk_elements, masked):
    monkeypatch.setitem(fused.CHUNK_ELEMENTS, "cpu", chunk_elements)  # vocab 50 is padded to 64
    g = torch.Generator().manual_seed(3)
    h = torch.randn(40, 16, generator=g).requires_grad_()
    w = (torch.randn(50, 16, generator=g) * 0.5).requires_grad_()
    t = torch.randint(0, 50, (40,), generator=g)
    if masked:
        t[::3] = -100
    ref_loss, ref_gh, ref_gw = _reference(h, w, t)
    loss = linear_cross_entropy(h, w, t, masked=masked)
    gh, gw = torch.autograd.grad(loss * 0.7, (h, w))
    assert float(loss.detach()) == pytest.approx(ref_loss, rel=1e-6)
    assert torch.allclose(gh.double(), ref_gh, atol=1e-6) and torch.allclose(gw.double(), ref_gw, atol=1e-6)
    if masked:  # an ignored row gets no gradient at all
        assert torch.count_nonzero(gh[::3]) == 0


def test_frozen_weight_gets_no_gradient_and_no_grad_mode_builds_no_graph():
    h = torch.randn(8, 4, requires_grad=True)
    w = torch.randn(10, 4)  # frozen, like the lm_head under LoRA
    loss = linear_cross_entropy(h, w, torch.randint(0, 10, (8,)))
    loss.backward()
    assert h.grad is not None and w.grad is None
    with torch.no_grad():
        assert not linear_cross_entropy(h, w, torch.randint(0, 10, (8,))).requires_grad


def test_shape_errors_are_specific():
    with pytest.raises(ValueError, match="shapes do not fit"):
        linear_cross_entropy(torch.randn(4, 3), torch.randn(5, 2), torch.zeros(4, dtype=torch.long))


def test_causal_lm_loss_and_gradients_equal_transformers(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ref = copy.deepcopy(model)
    x = torch.randint(0, model.config.vocab_size, (3, 20), generator=torch.Generator().manual_seed(1))
    ours = CausalLMLoss(model)(x)
    theirs = ref(input_ids=x, labels=x).loss * 3 * 19  # transformers' mean over the shifted tokens
    ours.backward()
    theirs.backward()
    assert float(ours.detach()) == pytest.approx(float(theirs.detach()), rel=1e-5)
    for (name, p), q in zip(model.named_parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-4, atol=1e-6), name


def test_peft_model_keeps_the_fused_path(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True, task_type="CAUSAL_LM"),
    )
    assert split_lm_head(model) is not None
    x = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        assert float(CausalLMLoss(model)(x)) == pytest.approx(
            float(model(input_ids=x, labels=x).loss) * 2 * 11, rel=1e-5
        )


def _logits_before_and_during(model, context, x, swapped) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's logits without gradients, before and inside ``context``; ``swapped()`` must hold inside."""
    with torch.no_grad():
        before = model(input_ids=x).logits
        with context:
            assert swapped()
            during = model(input_ids=x).logits
    return before, during


def test_fast_gelu_is_the_same_function_and_is_undone(tiny_model_dir):
    from transformers import AutoModelForCausalLM
    from transformers.activations import NewGELUActivation

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    x = torch.randint(0, 50, (2, 16))
    swapped = lambda: not any(isinstance(m, NewGELUActivation) for m in model.modules())  # noqa: E731
    before, during = _logits_before_and_during(model, fast_gelu(model), x, swapped)
    assert sum(isinstance(m, NewGELUActivation) for m in model.modules()) == model.config.n_layer
    assert torch.allclose(before, during, atol=1e-5)
    z = torch.linspace(-6, 6, 1001)
    assert torch.allclose(NewGELUActivation()(z), F.gelu(z, approximate="tanh"), atol=1e-6)


@pytest.mark.skipif(not fused._onednn_linear_available(), reason="this torch has no oneDNN linear")
def test_inference_mlp_is_the_same_function_and_is_undone(tiny_model_dir):
    from transformers import AutoModelForCausalLM
    from transformers.pytorch_utils import Conv1D

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    x = torch.randint(0, 50, (3, 20))
    swapped = lambda: all(type(b.mlp.c_fc) is fused._LinearTanhGelu for b in model.transformer.h)  # noqa: E731
    before, during = _logits_before_and_during(model, inference_mlp(model), x, swapped)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        bf16_before = model(input_ids=x).logits.float()
        with inference_mlp(model, torch.bfloat16):
            bf16_during = model(input_ids=x).logits.float()
    assert torch.allclose(before, during, atol=1e-5)
    assert (bf16_before - bf16_during).abs().max() < 0.05 * before.abs().max()  # bf16 rounding, not another function
    assert all(type(b.mlp.c_fc) is Conv1D and type(b.mlp.act) is not torch.nn.Identity for b in model.transformer.h)
    with inference_mlp(model), pytest.raises(RuntimeError, match="evaluation only"):
        model(input_ids=x)  # gradients on: the fused kernel has no backward, so it refuses


def test_chunked_cross_entropy_is_one_call_in_pieces(monkeypatch):
    monkeypatch.setattr(fused, "CE_CHUNK_ELEMENTS", 64 * 30)  # 64-row chunks: 3 chunks, the last ragged
    head = torch.nn.Linear(12, 30, bias=False)
    h = torch.randn(150, 12, requires_grad=True)
    t = torch.randint(0, 30, (150,))
    ours = fused.chunked_cross_entropy(h, head, t)
    gh, gw = torch.autograd.grad(ours, (h, head.weight))
    ref = F.cross_entropy(h @ head.weight.t(), t, reduction="sum")
    rh, rw = torch.autograd.grad(ref, (h, head.weight))
    assert fused.ce_chunk_rows(30) == 64
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-6)
    assert torch.allclose(gh, rh, atol=1e-6) and torch.allclose(gw, rw, atol=1e-5)


@pytest.mark.slow  # a second process or a compiler: seconds, not the quick suite's
@pytest.mark.skipif(not (shutil.which("cc") or shutil.which("g++")), reason="torch.compile needs a C compiler")
def test_compiled_loss_keeps_the_gradients(tiny_model_dir):
    """The fused Function stays out of compiled graphs (on CUDA a compiled one lost its gradients)."""
    from transformers import AutoModelForCausalLM

    x = torch.randint(0, 50, (2, 24), generator=torch.Generator().manual_seed(4))
    grads = []
    for compiled in (False, True):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
        loss_fn = CausalLMLoss(model, fused=True)
        (torch.compile(loss_fn) if compiled else loss_fn)(x).backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-4, atol=1e-6)
