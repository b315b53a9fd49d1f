"""Our bf16 causal-attention kernel (layers/causal_attention.c) against float64 and against torch's bf16 path."""

import pytest
import torch

from scratchllm.layers import Attention, attend
from scratchllm.layers import causal_attention as kernel_module

needs_kernel = pytest.mark.skipif(not kernel_module.kernel_available(),
                                  reason="the kernel needs a C compiler and a CPU with AVX512-BF16")


def heads(qkv, H):
    """qkv (B, T, 3 H D) -> q, k, v (B, H, T, D)"""
    B, T, width = qkv.shape
    return qkv.view(B, T, 3 * H, width // (3 * H)).transpose(1, 2).split([H, H, H], dim=1)


def torch_path(qkv, H):
    q, k, v = heads(qkv, H)
    y = attend(q, k, v, causal=True)  # float64, or torch's bf16 path (plain at these sizes)
    return y.transpose(1, 2).flatten(2)


def outputs(fn, qkv, upstream, H):
    x = qkv.clone().requires_grad_()
    y = fn(x, H)
    y.backward(upstream.to(y.dtype))
    return y.double(), x.grad.double()


def relative(a, b):
    return ((a - b).norm() / b.norm()).item()


@needs_kernel
@pytest.mark.parametrize("B, T, H, D", [(12, 64, 4, 32), (2, 20, 3, 16), (3, 36, 2, 48), (1, 128, 2, 64)])
def test_kernel_is_as_exact_as_torchs_bf16_path(B, T, H, D):
    """Forward and all three gradients, against float64: within 10% of the error of torch's own bf16 path (ours
    keeps the scores and softmax in fp32 where torch rounds the scores to bf16; both round P and dS to bf16)."""
    g = torch.Generator().manual_seed(B * T + D)
    qkv = torch.randn(B, T, 3 * H * D, generator=g, dtype=torch.float64).mul(2)
    upstream = torch.randn(B, T, H * D, generator=g, dtype=torch.float64)
    exact = outputs(torch_path, qkv, upstream, H)
    bf16 = qkv.bfloat16()
    assert kernel_module.usable(bf16, H)
    ours = outputs(kernel_module.causal_attention, bf16, upstream, H)
    torch_bf16 = outputs(torch_path, bf16, upstream, H)
    exact_of_rounded = outputs(torch_path, bf16.double(), upstream, H)  # the same inputs, rounded, in float64
    for name, a, b, x in zip(("y", "dqkv"), ours, torch_bf16, exact_of_rounded):
        assert relative(a, x) <= 1.1 * relative(b, x), f"{name}: {relative(a, x):.2e} against torch's {relative(b, x):.2e}"
        assert relative(a, x) < 1e-2
    assert relative(ours[0], exact[0]) < 2e-2  # and close to the answer for the unrounded inputs


@needs_kernel
def test_kernel_is_causal_and_the_same_on_any_number_of_threads():
    g = torch.Generator().manual_seed(0)
    qkv = torch.randn(2, 32, 3 * 2 * 16, generator=g).bfloat16()
    y = kernel_module.causal_attention(qkv, 2)
    changed = qkv.clone()
    changed[:, 20:] = torch.randn(2, 12, 96, generator=g).bfloat16()  # the future of position 19
    assert torch.equal(kernel_module.causal_attention(changed, 2)[:, :20], y[:, :20])
    assert not torch.equal(kernel_module.causal_attention(changed, 2)[:, 20:], y[:, 20:])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        x = qkv.clone().requires_grad_()
        y1 = kernel_module.causal_attention(x, 2)
        y1.square().sum().backward()
    finally:
        torch.set_num_threads(threads)
    x2 = qkv.clone().requires_grad_()
    kernel_module.causal_attention(x2, 2).square().sum().backward()
    assert torch.equal(y1, y) and torch.equal(x.grad, x2.grad)  # each head is one thread's, whole


def test_kernel_is_only_asked_for_what_it_does():
    bf16 = torch.zeros(2, 64, 3 * 4 * 32, dtype=torch.bfloat16)
    available = kernel_module.kernel_available()
    assert kernel_module.usable(bf16, 4) == available
    assert not kernel_module.usable(bf16.float(), 4)  # fp32: torch's fused kernel
    assert not kernel_module.usable(bf16[:, :62], 4)  # T not a multiple of 4
    assert not kernel_module.usable(torch.zeros(2, 64, 3 * 4 * 8, dtype=torch.bfloat16), 4)  # D 8: not a multiple of 16
    assert kernel_module.usable(torch.zeros(1, 512, 3 * 2 * 16, dtype=torch.bfloat16), 2) == available
    assert not kernel_module.usable(torch.zeros(1, 516, 3 * 2 * 16, dtype=torch.bfloat16), 2)  # past MAX_CONTEXT


@needs_kernel
@pytest.mark.parametrize("case", ["plain", "dropout", "cache"])
def test_attention_module_takes_the_kernel_only_where_it_applies(monkeypatch, case):
    calls = []
    original = kernel_module.causal_attention
    monkeypatch.setattr(kernel_module, "causal_attention", lambda qkv, H: calls.append(qkv.shape) or original(qkv, H))
    torch.manual_seed(0)
    module = Attention(128, 4, dropout=0.1 if case == "dropout" else 0.0).train()
    x = torch.randn(2, 16, 128)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if case == "cache":
            from scratchllm.layers import KVCache
            cache = KVCache(1, 2, 4, 16, 32, torch.bfloat16, x.device)
            module(x, cache=cache, layer=0)
        else:
            y = module(x)
    assert len(calls) == (1 if case == "plain" else 0)
    if case == "plain":  # and what it gives is torch's path's answer, to bf16 rounding
        monkeypatch.setattr(kernel_module, "usable", lambda qkv, H: False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            torch.testing.assert_close(y, module(x), atol=2e-2, rtol=2e-2)


@needs_kernel
def test_compiled_module_keeps_the_kernel():
    torch.manual_seed(0)
    module = Attention(64, 2)
    x = torch.randn(2, 16, 64)
    compiled = torch.compile(module, fullgraph=True)  # fullgraph: the ops are whole nodes, no graph break
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager = module(x)
        eager.float().square().sum().backward()
        grads = [p.grad.clone() for p in module.parameters()]
        module.zero_grad()
        compiled(x)  # compiled here, then run under the profiler
        module.zero_grad()
        with torch.profiler.profile() as prof:
            y = compiled(x)
            y.float().square().sum().backward()
    ran = {event.name for event in prof.events()}
    assert {"scratchllm::causal_attention", "scratchllm::causal_attention_backward"} <= ran
    torch.testing.assert_close(y, eager, atol=1e-5, rtol=2**-8)  # the same products: at most a bf16 rounding apart
    for a, b in zip((p.grad for p in module.parameters()), grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-3)
