import math

import pytest
import torch
import torch.nn.functional as F

from scratchllm.errors import ScratchLLMError
from scratchllm.layers import Attention, attend
from scratchllm.layers import attention as attention_module


def reference(q, k, v, causal):
    """Straight from the paper, in float64, one head at a time."""
    q, k, v = q.double(), k.double(), v.double()
    n_rep = q.size(1) // k.size(1)
    k, v = k.repeat_interleave(n_rep, 1), v.repeat_interleave(n_rep, 1)
    T, S = q.size(-2), k.size(-2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if causal:
        allowed = torch.tensor([[s <= t + S - T for s in range(S)] for t in range(T)])
        scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.softmax(scores, -1) @ v


@pytest.mark.parametrize("H, KV, T, S, causal", [(4, 4, 16, 16, True), (4, 2, 16, 16, True), (4, 1, 5, 12, True),
                                                 (2, 2, 9, 9, False)])
@pytest.mark.parametrize("fused", [False, True])
def test_attend_matches_reference(monkeypatch, H, KV, T, S, causal, fused):
    monkeypatch.setattr(attention_module, "use_fused_kernel", lambda q, k: fused)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, H, T, 8, generator=g)
    k, v = torch.randn(2, KV, S, 8, generator=g), torch.randn(2, KV, S, 8, generator=g)
    torch.testing.assert_close(attend(q, k, v, causal).double(), reference(q, k, v, causal), atol=1e-5, rtol=1e-5)


def test_both_paths_give_the_same_gradients(monkeypatch):
    g = torch.Generator().manual_seed(1)
    base = [torch.randn(3, 4, 12, 16, generator=g) for _ in range(3)]
    grads = []
    for fused in (False, True):
        monkeypatch.setattr(attention_module, "use_fused_kernel", lambda q, k, f=fused: f)
        q, k, v = (t.clone().requires_grad_() for t in base)
        attend(q, k, v, causal=True).square().sum().backward()
        grads.append([q.grad, k.grad, v.grad])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_bf16_plain_path_softmax_is_as_exact_as_an_fp32_round_trip(monkeypatch):
    """The plain path's softmax runs in bf16 (fp32 inside the kernel, one rounding): its forward is the fp32
    softmax rounded to bf16 (up to that rounding), and its gradients, against float64, within 15% of the error of an fp32 softmax
    cast back (8.4e-3 against 8.0e-3 measured; a softmax with bf16 arithmetic gives 1.4e-2)."""
    monkeypatch.setattr(attention_module, "use_fused_kernel", lambda q, k: False)
    g = torch.Generator().manual_seed(0)
    base = [torch.randn(4, 4, 64, 32, generator=g).mul(2).bfloat16() for _ in range(3)]
    upstream = torch.randn(4, 4, 64, 32, generator=g).bfloat16()

    def fp32_round_trip(q, k, v, causal):  # the formulation this path replaced
        bias = attention_module.causal_bias(64, 64, 1, q.dtype, q.device)  # the scores as the plain path makes them
        scores = torch.baddbmm(bias, q.flatten(0, 1), k.flatten(0, 1).transpose(1, 2), alpha=q.size(-1) ** -0.5)
        return torch.softmax(scores.float(), -1).to(v.dtype).view(4, 4, 64, 64) @ v

    def outputs(fn, dtype):
        q, k, v = (t.to(dtype).requires_grad_() for t in base)
        y = fn(q, k, v, True)
        y.backward(upstream.to(dtype))
        return [y.double(), q.grad.double(), k.grad.double(), v.grad.double()]

    exact = outputs(reference, torch.float64)
    ours, round_trip = outputs(attend, torch.bfloat16), outputs(fp32_round_trip, torch.bfloat16)
    torch.testing.assert_close(ours[0], round_trip[0], rtol=2**-8, atol=1e-6)  # at most one bf16 rounding apart
    for name, a, b, x in zip(("dq", "dk", "dv"), ours[1:], round_trip[1:], exact[1:]):
        error, reference_error = ((a - x).norm() / x.norm()).item(), ((b - x).norm() / x.norm()).item()
        assert error <= 1.15 * reference_error, f"{name}: {error:.2e} from float64 against {reference_error:.2e}"


def test_module_is_causal():
    torch.manual_seed(0)
    attn = Attention(32, 4).eval()
    x = torch.randn(1, 10, 32)
    y = attn(x)
    x2 = x.clone()
    x2[:, 7:] = torch.randn(1, 3, 32)  # change the future
    torch.testing.assert_close(attn(x2)[:, :7], y[:, :7])
    assert not torch.allclose(attn(x2)[:, 7:], y[:, 7:])


def test_gqa_equals_mha_with_repeated_kv_heads():
    torch.manual_seed(0)
    gqa = Attention(32, n_heads=4, n_kv_heads=2)
    mha = Attention(32, n_heads=4)
    D = 8
    wq, wk, wv = gqa.qkv.weight.split([4 * D, 2 * D, 2 * D], dim=1)  # (in, out): heads are column blocks
    rep = lambda w: w.view(32, 2, D).repeat_interleave(2, dim=1).reshape(32, 4 * D)
    with torch.no_grad():
        mha.qkv.weight.copy_(torch.cat([wq, rep(wk), rep(wv)], dim=1))
        mha.proj.weight.copy_(gqa.proj.weight)
    x = torch.randn(2, 6, 32)
    torch.testing.assert_close(gqa(x), mha(x))


def test_bad_head_counts():
    with pytest.raises(ScratchLLMError, match="not divisible by 3 heads"):
        Attention(32, 3)
    with pytest.raises(ScratchLLMError, match="3 kv heads do not divide 4"):
        Attention(32, 4, n_kv_heads=3)


def test_dropout_only_in_training():
    torch.manual_seed(0)
    attn = Attention(16, 2, dropout=0.5)
    x = torch.randn(1, 4, 16)
    attn.eval()
    torch.testing.assert_close(attn(x), attn(x))
    attn.train()
    assert not torch.allclose(attn(x), attn(x))


@pytest.mark.parametrize("H, KV", [(4, 4), (4, 2)])
def test_dropout_drops_attention_probabilities(H, KV):
    """On the CPU, training attention with dropout takes the plain path: softmax, then layers/dropout.py's
    mask on the probabilities, then the values (torch's fused call would draw its own mask)."""
    from scratchllm.layers.dropout import dropout

    g = torch.Generator().manual_seed(4)
    q, k, v = torch.randn(2, H, 10, 8, generator=g), torch.randn(2, KV, 10, 8, generator=g), torch.randn(2, KV, 10, 8, generator=g)
    torch.manual_seed(5)
    y = attend(q, k, v, causal=True, dropout_p=0.3)
    n_rep = H // KV
    scores = q @ k.repeat_interleave(n_rep, 1).transpose(-2, -1) / math.sqrt(8)
    scores = scores.masked_fill(~torch.ones(10, 10, dtype=torch.bool).tril(), float("-inf"))
    probs = torch.softmax(scores, -1)  # (2, H, 10, 10)
    torch.manual_seed(5)  # the same draws; with grouped heads the mask is over (B, KV, n_rep * T, S)
    dropped = dropout(probs.reshape(2, KV, n_rep * 10, 10), 0.3).view(2, H, 10, 10)
    torch.testing.assert_close(y, dropped @ v.repeat_interleave(n_rep, 1), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(y, probs @ v.repeat_interleave(n_rep, 1), atol=1e-3)  # something was dropped


def test_path_choice_follows_the_measurements():
    small_bf16 = torch.zeros(12, 4, 64, 32, dtype=torch.bfloat16)
    assert not attention_module.use_fused_kernel(small_bf16, small_bf16)  # baby GPT in bf16: plain
    assert attention_module.use_fused_kernel(small_bf16.float(), small_bf16.float())  # fp32: fused
    big_bf16 = torch.zeros(64, 6, 256, 64, dtype=torch.bfloat16)
    assert attention_module.use_fused_kernel(big_bf16, big_bf16)  # 25M scores: fused
