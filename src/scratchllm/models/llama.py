"""Llama (Touvron et al. 2023; Llama 3, Grattafiori et al. 2024): pre-RMSNorm blocks, RoPE, GQA, SwiGLU.

    tokens ──> embed ──> [ x + attn(rmsnorm(x), rope) ; x + swiglu(rmsnorm(x)) ] x n_layer ──> rmsnorm ──> lm_head ──> logits

Optional QK-norm (a per-head RMSNorm with a learned weight on q and k, before RoPE) is Qwen3's, not Llama 3's
(Llama 4 normalises q and k too, without a weight and after RoPE).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from scratchllm.config import DERIVED
from scratchllm.errors import ScratchLLMError
from scratchllm.layers import (Attention, GatedMLP, KVCache, Linear, TiedHead, RMSNorm, RopeScaling, inverse_frequencies,
                               llama_hidden_dim, rope_cos_sin)
from scratchllm.layers.loss import logits_and_loss
from scratchllm.layers.mlp import ACTIVATIONS
from scratchllm.models.limits import check_context, check_sizes
from scratchllm.models.llama_step import decoding_bf16_layout, fused_step
from scratchllm.models.spec import GGUFFormat, HFFormat, ModelSpec, Row, WeightMap, linear, norm, register
from scratchllm.models.tasks import LANGUAGE


@dataclass
class LlamaConfig:
    vocab_size: int = field(default=0, metadata=DERIVED)  # set from the tokenizer
    block_size: int = 256  # the longest context trained or generated
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 2  # grouped-query attention: each kv head serves n_head / n_kv_head query heads
    n_embd: int = 128
    head_dim: Optional[int] = None  # default n_embd / n_head
    intermediate_size: Optional[int] = None  # default from multiple_of / ffn_dim_multiplier (Meta's rule)
    multiple_of: int = 32
    ffn_dim_multiplier: Optional[float] = None
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    rope_factor: Optional[float] = None  # Llama 3.1 scaling, on when set (8.0 for Llama 3.1 / 32.0 for 3.2)
    rope_low_freq_factor: float = 1.0
    rope_high_freq_factor: float = 4.0
    rope_original_max_position: int = 8192
    qk_norm: bool = False
    tie_embeddings: bool = False
    dropout: float = 0.0
    # What Gemma changes (see models/gemma.py); Llama's values here
    norm_offset: float = 0.0  # RMSNorm scales by (offset + w)
    mlp_activation: str = "silu"  # the gate's non-linearity: SwiGLU (silu) or GeGLU (gelu_tanh)
    scale_embeddings: bool = False  # multiply token embeddings by sqrt(n_embd)

    def __post_init__(self):
        check_sizes(self, "vocab_size", "block_size", "n_layer", "n_head", "n_kv_head", "n_embd", "head_dim",
                    "intermediate_size", "multiple_of", "rope_original_max_position")
        check_context(self.block_size)
        for name in ("norm_eps", "rope_theta", "rope_factor", "ffn_dim_multiplier", "rope_low_freq_factor", "rope_high_freq_factor"):
            value = getattr(self, name)
            if value is not None and not 0 < value < 1e12:
                raise ScratchLLMError(f"{name} must be positive, got {value}")
        if self.rope_factor is not None and self.rope_low_freq_factor >= self.rope_high_freq_factor:
            raise ScratchLLMError("rope_low_freq_factor must be below rope_high_freq_factor")
        if self.mlp_activation not in ACTIVATIONS:
            raise ScratchLLMError(f"unknown activation '{self.mlp_activation}'; choose one of {', '.join(ACTIVATIONS)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ScratchLLMError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.head_dim is None and self.n_embd % self.n_head:
            raise ScratchLLMError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; pick n_embd a multiple of n_head or set head_dim")
        if self.n_head % self.n_kv_head:
            raise ScratchLLMError(f"n_kv_head={self.n_kv_head} does not divide n_head={self.n_head}; use a divisor of n_head")
        if self.head_size % 2:
            raise ScratchLLMError("RoPE needs an even head_dim")

    @property
    def hidden_dim(self) -> int:
        return self.intermediate_size or llama_hidden_dim(self.n_embd, self.multiple_of, self.ffn_dim_multiplier)

    @property
    def head_size(self) -> int:
        return self.head_dim or self.n_embd // self.n_head

    @property
    def rope_scaling(self) -> Optional[RopeScaling]:
        if self.rope_factor is None:
            return None
        return RopeScaling(self.rope_factor, self.rope_low_freq_factor, self.rope_high_freq_factor,
                           self.rope_original_max_position)


class LlamaBlock(nn.Module):
    def __init__(self, c: LlamaConfig):
        super().__init__()
        self.attn_norm = RMSNorm(c.n_embd, c.norm_eps, c.norm_offset)
        self.attn = Attention(c.n_embd, c.n_head, c.n_kv_head, head_dim=c.head_dim, dropout=c.dropout,
                              qk_norm=c.qk_norm, norm_eps=c.norm_eps)
        self.mlp_norm = RMSNorm(c.n_embd, c.norm_eps, c.norm_offset)
        self.mlp = GatedMLP(c.n_embd, c.hidden_dim, activation=c.mlp_activation)

    def forward(self, x, rope, cache=None, layer=0, mask=None):
        x = x + self.attn(self.attn_norm(x), rope, cache, layer, mask)
        return x + self.mlp(self.mlp_norm(x))


class Llama(nn.Module):
    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = c = config
        self.embed = nn.Embedding(c.vocab_size, c.n_embd)
        self.blocks = nn.ModuleList(LlamaBlock(c) for _ in range(c.n_layer))
        self.norm = RMSNorm(c.n_embd, c.norm_eps, c.norm_offset)
        # tied: the output head is the embedding table itself (logits = x @ embed^T), no weights of its own
        self.lm_head = TiedHead(self.embed) if c.tie_embeddings else Linear(c.n_embd, c.vocab_size, bias=False)
        self._rope: torch.Tensor | None = None  # cos / sin tables, fp32 whatever the weights' dtype (see _rope_tables)
        for name, p in self.named_parameters():
            if p.dim() >= 2:  # small normal init, residual outputs scaled down by depth (as GPT-2); norms keep theirs
                std = 0.02 / math.sqrt(2 * c.n_layer) if name.endswith(("attn.proj.weight", "mlp.down.weight")) else 0.02
                nn.init.normal_(p, mean=0.0, std=std)

    def _rope_tables(self, n: int, device: torch.device) -> torch.Tensor:
        """cos and signed sin for positions 0..n-1 (at least): (N, 2, head_dim), so that one lookup
        fetches both. Computed once and grown on demand (inside a compiled graph: made there), in
        fp32 even when the weights are bf16 (bf16 angles would be off by whole radians at long
        positions); not a buffer, so that `model.to(dtype)` leaves them alone."""
        size = max(n, min(self.config.block_size, 4096))
        if torch.compiler.is_compiling():
            # made in the graph: a read of the cached table is guarded, and the first call's miss (None)
            # made the second call compile the whole model again (twice the compile time)
            return self._make_rope_tables(size, device)
        if self._rope is None or self._rope.size(0) < n or self._rope.device != device:
            with torch.inference_mode(False):  # a table made while generating must serve training too
                self._rope = self._make_rope_tables(size, device)
        return self._rope

    def _make_rope_tables(self, size: int, device: torch.device) -> torch.Tensor:
        c = self.config
        inv_freq = inverse_frequencies(c.head_size, c.rope_theta, c.rope_scaling).to(device)
        cos, sin = rope_cos_sin(torch.arange(size, device=device)[None], inv_freq)
        return torch.stack([cos[0, 0], sin[0, 0]], dim=1)  # (size, 2, head_dim)

    def embed_tokens(self, idx: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, T, C); Gemma scales them by sqrt(d) here, so that other inputs placed
        among them (PaliGemma's image features) enter unscaled."""
        x = self.embed(idx)
        return x * math.sqrt(self.config.n_embd) if self.config.scale_embeddings else x

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype, device: torch.device) -> KVCache:
        c = self.config
        return KVCache(c.n_layer, batch, c.n_kv_head, max_len, c.head_size, dtype, device)

    def forward(self, idx: torch.Tensor | None, targets: torch.Tensor | None = None, positions: torch.Tensor | None = None,
                cache: KVCache | None = None, mask: torch.Tensor | None = None, embeds: torch.Tensor | None = None,
                logits_at: torch.Tensor | None = None):
        """idx (B, T) -> logits (B, T, vocab); with targets, (logits, loss). `positions` (B, T) default to
        the next T positions after the cache; `mask` (B, 1, T, S) replaces the causal mask (padding,
        prefix-LM); `embeds` (B, T, C), as `embed_tokens` makes them, replaces idx (PaliGemma);
        `logits_at` (B,), without targets: the logits (B, vocab) of one position a row (a prefill's last:
        the head is SmolLM2's largest product, a fifth of a 335-token prefill's)."""
        B, T = idx.shape if embeds is None else embeds.shape[:2]
        device = idx.device if embeds is None else embeds.device
        start = cache.length if cache is not None else 0
        if positions is None:
            if start + T > self.config.block_size and cache is None:
                raise ScratchLLMError(f"sequence of {T} tokens is longer than the context of {self.config.block_size}")
            rope = self._rope_tables(start + T, device)[start:start + T][None, None].unbind(3)  # cos, sin (1, 1, T, head_dim)
        else:  # positions never pass the cache's length (or T + 1 for PaliGemma's 1-based ones): no sync to find the max
            tables = self._rope_tables((cache.max_len if cache is not None else T) + 1, device)
            rope = tables[positions][:, None].unbind(3)  # cos, sin (B, 1, T, head_dim)
        x = self.embed_tokens(idx) if embeds is None else embeds  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, rope, cache, i, mask)
        if cache is not None:
            cache.advance(T)
        if logits_at is not None:
            x = x[torch.arange(B, device=x.device), logits_at]  # (B, C): only the rows whose next token is wanted
        x = self.norm(x)
        if targets is None:
            return self.lm_head(x)  # (B, T, vocab), or (B, vocab) with logits_at
        # positions with target -100 (a fine-tune's prompt, PaliGemma's image and prefix) add no loss
        return logits_and_loss(self.lm_head, x, targets)


# -- spec: what a Llama is and can do --------------------------------------------------------------

def _config_from_hf(hf: dict) -> LlamaConfig:
    """LlamaForCausalLM's config.json, or Qwen3ForCausalLM's (Llama plus QK-norm)."""
    if hf.get("attention_bias") or hf.get("mlp_bias"):
        raise ScratchLLMError("Llama checkpoints with attention or MLP biases are not supported")
    if hf.get("hidden_act", "silu") != "silu":
        raise ScratchLLMError(f"Llama activation {hf.get('hidden_act')!r} is not supported (silu is)")
    rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type not in ("default", "llama3"):
        raise ScratchLLMError(f"RoPE type {rope_type!r} is not supported (default and llama3 are)")
    scaled = rope_type == "llama3"
    return LlamaConfig(
        vocab_size=hf["vocab_size"], block_size=hf.get("max_position_embeddings", 2048),
        n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
        n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"], n_embd=hf["hidden_size"],
        head_dim=hf.get("head_dim"), intermediate_size=hf["intermediate_size"], norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)), rope_factor=rope["factor"] if scaled else None,
        rope_low_freq_factor=rope.get("low_freq_factor", 1.0), rope_high_freq_factor=rope.get("high_freq_factor", 4.0),
        rope_original_max_position=rope.get("original_max_position_embeddings", 8192),
        tie_embeddings=hf.get("tie_word_embeddings", False), qk_norm=hf.get("model_type") == "qwen3")


def _config_to_hf(c: LlamaConfig) -> dict:
    """LlamaForCausalLM's config, or Qwen3ForCausalLM's when the model has QK-norm."""
    arch, kind = ("Qwen3ForCausalLM", "qwen3") if c.qk_norm else ("LlamaForCausalLM", "llama")
    out = {"architectures": [arch], "model_type": kind, "vocab_size": c.vocab_size,
           "max_position_embeddings": c.block_size, "hidden_size": c.n_embd, "intermediate_size": c.hidden_dim,
           "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head, "num_key_value_heads": c.n_kv_head,
           "head_dim": c.head_size, "hidden_act": "silu", "rms_norm_eps": c.norm_eps,
           "rope_theta": c.rope_theta, "attention_bias": False, "mlp_bias": False,
           "tie_word_embeddings": c.tie_embeddings, "bos_token_id": None, "eos_token_id": None, "torch_dtype": "float32"}
    if c.rope_factor is not None:
        out["rope_scaling"] = {"rope_type": "llama3", "factor": c.rope_factor, "low_freq_factor": c.rope_low_freq_factor,
                               "high_freq_factor": c.rope_high_freq_factor,
                               "original_max_position_embeddings": c.rope_original_max_position}
    return out


# Hugging Face keeps q, k, v and gate, up as separate nn.Linear layers (out, in); ours are fused and (in, out).
# Their q and k rows are already in the split-halves RoPE layout (layers/rope.py).
LLAMA_LAYERS = (
    Row("embed.weight", ("embed_tokens.weight",)), *norm("norm", "norm", bias=False),
    *linear("blocks.{i}.attn.qkv", *(f"layers.{{i}}.self_attn.{p}_proj" for p in "qkv"), bias=False,
            split=lambda c: [c.n_head * c.head_size, c.n_kv_head * c.head_size, c.n_kv_head * c.head_size]),
    *linear("blocks.{i}.attn.proj", "layers.{i}.self_attn.o_proj", bias=False),
    *linear("blocks.{i}.mlp.gate_up", "layers.{i}.mlp.gate_proj", "layers.{i}.mlp.up_proj", bias=False),
    *linear("blocks.{i}.mlp.down", "layers.{i}.mlp.down_proj", bias=False),
    *norm("blocks.{i}.attn_norm", "layers.{i}.input_layernorm", bias=False),
    *norm("blocks.{i}.mlp_norm", "layers.{i}.post_attention_layernorm", bias=False),
    Row("blocks.{i}.attn.q_norm.weight", ("layers.{i}.self_attn.q_norm.weight",), when=lambda c: c.qk_norm),
    Row("blocks.{i}.attn.k_norm.weight", ("layers.{i}.self_attn.k_norm.weight",), when=lambda c: c.qk_norm),
)
LLAMA_WEIGHTS = (
    WeightMap("", ("model.",), LLAMA_LAYERS),
    WeightMap("", ("",), tuple(linear("lm_head", "lm_head", bias=False, when=lambda c: not c.tie_embeddings))),
)

# llama.cpp's names for LlamaForCausalLM's tensors (GGUF's "llama" architecture); interop/gguf.py reads and
# writes by this table, through the Hugging Face names above. Llama 3.1's RoPE scaling, not a key in GGUF,
# is a rope_freqs tensor made from the config's scaling (interop/gguf.py).
LLAMA_GGUF = GGUFFormat("llama", (
    ("token_embd", "model.embed_tokens"), ("output_norm", "model.norm"), ("output", "lm_head"),
    ("blk.{i}.attn_norm", "model.layers.{i}.input_layernorm"), ("blk.{i}.ffn_norm", "model.layers.{i}.post_attention_layernorm"),
    ("blk.{i}.attn_q", "model.layers.{i}.self_attn.q_proj"), ("blk.{i}.attn_k", "model.layers.{i}.self_attn.k_proj"),
    ("blk.{i}.attn_v", "model.layers.{i}.self_attn.v_proj"), ("blk.{i}.attn_output", "model.layers.{i}.self_attn.o_proj"),
    ("blk.{i}.ffn_gate", "model.layers.{i}.mlp.gate_proj"), ("blk.{i}.ffn_up", "model.layers.{i}.mlp.up_proj"),
    ("blk.{i}.ffn_down", "model.layers.{i}.mlp.down_proj"),
), rope=lambda c: (c.rope_theta, c.rope_scaling))


def lora_targets(c: LlamaConfig) -> dict[str, tuple[str, int, int]]:
    """LoRA's targets, named as peft names Hugging Face's modules (q_proj -> q): q, k, v side by side in the
    fused qkv, gate and up in gate_up (see LLAMA_LAYERS' splits)."""
    q, kv, h = c.n_head * c.head_size, c.n_kv_head * c.head_size, c.hidden_dim
    return {"q": ("blocks.{i}.attn.qkv", 0, q), "k": ("blocks.{i}.attn.qkv", q, q + kv),
            "v": ("blocks.{i}.attn.qkv", q + kv, q + 2 * kv), "o": ("blocks.{i}.attn.proj", 0, c.n_embd),
            "gate": ("blocks.{i}.mlp.gate_up", 0, h), "up": ("blocks.{i}.mlp.gate_up", h, 2 * h),
            "down": ("blocks.{i}.mlp.down", 0, c.n_embd)}


SPEC = register(ModelSpec(
    "llama", Llama, LlamaConfig, task=LANGUAGE,
    finish_config=lambda config, tokenizer: dataclasses.replace(config, vocab_size=tokenizer.vocab_size),
    generation="cached", commands=frozenset({"train", "sample", "eval", "chat", "serve", "convert", "finetune"}),
    hf=HFFormat(("llama", "qwen3"), _config_from_hf, LLAMA_WEIGHTS, _config_to_hf),
    shard_units=lambda model: model.blocks, lora_targets=lora_targets, gguf=LLAMA_GGUF, quantizable=True,
    fused_step=fused_step, decoding_bf16_layout=decoding_bf16_layout,
))
