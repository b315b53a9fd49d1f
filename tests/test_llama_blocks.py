"""The blocks Llama adds: RoPE (layouts, scaling), RMSNorm, SwiGLU sizing, GQA errors."""

import math
import shutil

import pytest
import torch

from conftest import data_file
from scratchllm.errors import ScratchLLMError
from scratchllm.layers import (RMSNorm, RopeScaling, apply_rope, interleaved_to_halves, inverse_frequencies,
                               llama_hidden_dim, rope_cos_sin)
from scratchllm.models import LlamaConfig


def meta_rope(x, theta=10000.0):
    """Meta's reference: neighbouring channels as complex numbers, rotated by e^(i p w). x: (T, d)."""
    T, d = x.shape
    freqs = 1.0 / (theta ** (torch.arange(0, d, 2).float() / d))
    angles = torch.outer(torch.arange(T).float(), freqs)
    xc = torch.view_as_complex(x.float().reshape(T, d // 2, 2))
    return torch.view_as_real(xc * torch.polar(torch.ones_like(angles), angles)).reshape(T, d)


def rotate_half(x):  # Hugging Face's form, which apply_rope's single roll replaces
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def test_meta_interleaved_weights_convert_to_the_split_halves_layout():
    torch.manual_seed(0)
    n_heads, d, dim, T = 2, 8, 16, 5
    wq_meta = torch.randn(n_heads * d, dim)
    x = torch.randn(T, dim)
    q_meta = (x @ wq_meta.t()).view(T, n_heads, d)
    rotated_meta = torch.stack([meta_rope(q_meta[:, h]) for h in range(n_heads)], dim=1)  # (T, H, d)
    q_hf = (x @ interleaved_to_halves(wq_meta, n_heads).t()).view(1, T, n_heads, d).transpose(1, 2)
    cos, sin = rope_cos_sin(torch.arange(T)[None], inverse_frequencies(d, 10000.0))
    rotated_hf = apply_rope(q_hf, cos, sin)[0].transpose(0, 1)  # (T, H, d)
    plain = (q_hf * cos + rotate_half(q_hf) * torch.cat([-sin[..., :d // 2], sin[..., d // 2:]], -1)).transpose(1, 2)[0]
    assert torch.equal(rotated_hf, plain)  # the roll form gives exactly rotate_half's numbers
    # the same rotation, with each head's channels reordered (0, 2, 4, ..., 1, 3, 5, ...)
    order = torch.cat([torch.arange(0, d, 2), torch.arange(1, d, 2)])
    torch.testing.assert_close(rotated_hf, rotated_meta[..., order], atol=1e-5, rtol=1e-5)


def test_rope_preserves_norms_and_depends_on_relative_position():
    torch.manual_seed(0)
    inv = inverse_frequencies(16, 10000.0)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def rotated(x, p):
        cos, sin = rope_cos_sin(torch.tensor([[p]]), inv)
        return apply_rope(x, cos, sin)

    assert torch.allclose(rotated(q, 7).norm(), q.norm(), atol=1e-5)
    dot = lambda a, b: (rotated(q, a) * rotated(k, b)).sum()  # noqa: E731
    assert torch.allclose(dot(3, 1), dot(12, 10), atol=1e-4)


def test_llama31_scaling_keeps_high_and_slows_low_frequencies():
    plain = inverse_frequencies(128, 500000.0)
    scaled = inverse_frequencies(128, 500000.0, RopeScaling(8.0, 1.0, 4.0, 8192))
    wavelen = 2 * math.pi / plain
    assert torch.equal(scaled[wavelen < 8192 / 4], plain[wavelen < 8192 / 4])  # short waves untouched
    torch.testing.assert_close(scaled[wavelen > 8192], plain[wavelen > 8192] / 8.0)  # long waves / factor
    mid = (wavelen >= 8192 / 4) & (wavelen <= 8192)
    assert mid.any() and ((scaled[mid] < plain[mid]) & (scaled[mid] > plain[mid] / 8.0)).all()


def test_rmsnorm_in_fp32():
    norm = RMSNorm(4, eps=0.0)
    x = torch.tensor([[3.0, -3.0, 3.0, -3.0]])
    torch.testing.assert_close(norm(x), x / 3.0)
    big = torch.full((1, 4), 300.0, dtype=torch.bfloat16)
    assert torch.allclose(norm(big).float(), torch.ones(1, 4))
    assert norm.to(torch.bfloat16)(big).dtype == torch.bfloat16  # as Llama: normalise in fp32, cast back, scale


def test_swiglu_sizes_and_config_errors():
    assert llama_hidden_dim(4096, 1024, 1.3) == 14336  # Llama 3 8B
    assert llama_hidden_dim(4096, 256) == 11008  # Llama 2 7B
    assert LlamaConfig(n_embd=128, multiple_of=32).hidden_dim == 352
    assert LlamaConfig(intermediate_size=100).hidden_dim == 100
    with pytest.raises(ScratchLLMError, match="n_kv_head=3 does not divide n_head=4"):
        LlamaConfig(n_head=4, n_kv_head=3)
    with pytest.raises(ScratchLLMError, match="not divisible by n_head"):
        LlamaConfig(n_embd=130, n_head=4)


def test_hf_folder_with_a_tiktoken_tokenizer_model(tmp_path):
    from scratchllm.interop.hf import save_hf
    from scratchllm.models import Llama
    import scratchllm

    model = Llama(LlamaConfig(vocab_size=128256, n_layer=1, n_embd=16, n_head=2, n_kv_head=1, intermediate_size=32))
    save_hf(model, tmp_path / "hf")
    shutil.copy(data_file("llama3", "tokenizer.model"), tmp_path / "hf" / "tokenizer.model")
    loaded = scratchllm.load_pretrained(tmp_path / "hf")
    assert loaded.tokenizer.encode("This is a test sentence.") == [2028, 374, 264, 1296, 11914, 13]
