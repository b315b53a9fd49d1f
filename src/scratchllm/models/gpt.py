"""GPT (Radford et al. 2019), as in nanoGPT: learned positions, pre-LayerNorm blocks, tied embeddings.

    tokens ──> wte + wpe ──> dropout ──> [ x + attn(ln_1(x)) ; x + mlp(ln_2(x)) ] x n_layer ──> ln_f ──> wte^T ──> logits
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch
from torch import nn

from scratchllm.config import DERIVED
from scratchllm.errors import ScratchLLMError
from scratchllm.layers import KVCache, Linear, TiedHead
from scratchllm.layers.blocks import PreNormBlock
from scratchllm.layers.dropout import Dropout
from scratchllm.layers.loss import logits_and_loss
from scratchllm.layers.mlp import ACTIVATIONS
from scratchllm.models.limits import check_context, check_sizes
from scratchllm.models.spec import HFFormat, ModelSpec, Row, WeightMap, linear, norm, register
from scratchllm.models.tasks import LANGUAGE


@dataclass
class GPTConfig:
    vocab_size: int = field(default=0, metadata=DERIVED)  # set from the tokenizer
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False  # biases in Linear and LayerNorm (GPT-2 has them; nanoGPT's char runs do not)
    activation: str = "gelu"  # GPT-2's own weights use gelu_tanh
    norm_eps: float = 1e-5

    def __post_init__(self):
        check_sizes(self, "vocab_size", "block_size", "n_layer", "n_head", "n_embd")
        check_context(self.block_size)
        if self.n_embd % self.n_head:
            raise ScratchLLMError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}; pick n_embd a multiple of n_head")
        if not 0.0 <= self.dropout < 1.0:
            raise ScratchLLMError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.activation not in ACTIVATIONS:
            raise ScratchLLMError(f"unknown activation '{self.activation}'; choose one of {', '.join(ACTIVATIONS)}")
        if not 0.0 < self.norm_eps < 1.0:
            raise ScratchLLMError(f"norm_eps must be in (0, 1), got {self.norm_eps}")


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = c = config
        self.wte = nn.Embedding(c.vocab_size, c.n_embd)
        self.wpe = nn.Embedding(c.block_size, c.n_embd)
        self.drop = Dropout(c.dropout)
        self.blocks = nn.ModuleList(
            PreNormBlock(c.n_embd, c.n_head, 4 * c.n_embd, c.activation, c.bias, c.dropout, causal=True, norm_eps=c.norm_eps)
            for _ in range(c.n_layer))
        self.ln_f = nn.LayerNorm(c.n_embd, eps=c.norm_eps, bias=c.bias)
        self.head = TiedHead(self.wte)  # logits = x @ wte^T: the embedding table is the output head
        self.apply(self._init_weights)
        # GPT-2: residual projections start smaller, so the sum over 2 * n_layer branches keeps unit scale.
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, Linear):
            module.reset_parameters(std=0.02)  # and a zero bias
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def new_cache(self, batch: int, max_len: int, dtype: torch.dtype, device: torch.device) -> KVCache:
        c = self.config
        return KVCache(c.n_layer, batch, c.n_head, max_len, c.n_embd // c.n_head, dtype, device)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None, positions: torch.Tensor | None = None,
                cache: KVCache | None = None, mask: torch.Tensor | None = None, logits_at: torch.Tensor | None = None):
        """idx (B, T) -> logits (B, T, vocab); with targets, (logits, loss). `positions` (B, T) default to
        the next T positions after the cache; `mask` (B, 1, T, S) replaces the causal mask (padding);
        `logits_at` (B,), without targets: the logits (B, vocab) of one position a row (a prefill's last)."""
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.block_size:
            raise ScratchLLMError(f"sequence of {start + T} tokens is longer than the context of {self.config.block_size}")
        if positions is None:
            positions = torch.arange(start, start + T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(positions))  # (B, T, C)
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i, mask)
        if cache is not None:
            cache.advance(T)
        if logits_at is not None:
            x = x[torch.arange(B, device=x.device), logits_at]  # (B, C): only the rows whose next token is wanted
        x = self.ln_f(x)
        if targets is None:
            return self.head(x)  # (B, T, vocab), or (B, vocab) with logits_at: the tied head, x @ wte^T
        return logits_and_loss(self.head, x, targets)  # positions with target -100 (a fine-tune's prompt) add no loss


# -- spec: what a GPT is and can do ----------------------------------------------------------------

_HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}


def _config_from_hf(hf: dict) -> GPTConfig:
    act = hf.get("activation_function", "gelu_new")
    if act not in _HF_ACTIVATIONS:
        raise ScratchLLMError(f"GPT-2 activation {act!r} is not supported ({', '.join(_HF_ACTIVATIONS)} are)")
    if not hf.get("tie_word_embeddings", True):
        raise ScratchLLMError("untied GPT-2 embeddings are not supported")
    return GPTConfig(vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_layer=hf["n_layer"], n_head=hf["n_head"],
                     n_embd=hf["n_embd"], dropout=0.0, bias=True, activation=_HF_ACTIVATIONS[act],
                     norm_eps=hf.get("layer_norm_epsilon", 1e-5))


def _config_to_hf(c: GPTConfig) -> dict:
    if not c.bias:
        raise ScratchLLMError("GPT-2's format has biases; this GPT was built with bias=False and cannot be exported as GPT-2")
    act = "gelu_new" if c.activation == "gelu_tanh" else c.activation
    return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": c.vocab_size,
            "n_positions": c.block_size, "n_embd": c.n_embd, "n_layer": c.n_layer, "n_head": c.n_head,
            "n_inner": None, "activation_function": act, "layer_norm_epsilon": c.norm_eps,
            "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "tie_word_embeddings": True,
            "bos_token_id": None, "eos_token_id": None, "torch_dtype": "float32"}


# GPT-2's Conv1D stores (in, out), as our Linear does: nothing is transposed. The tied head has no tensor.
GPT2_WEIGHTS = (WeightMap("", ("transformer.", ""), (
    Row("wte.weight", ("wte.weight",)), Row("wpe.weight", ("wpe.weight",)), *norm("ln_f", "ln_f"),
    *norm("blocks.{i}.ln_1", "h.{i}.ln_1"), *norm("blocks.{i}.ln_2", "h.{i}.ln_2"),
    *linear("blocks.{i}.attn.qkv", "h.{i}.attn.c_attn", bias=True, transpose=False),
    *linear("blocks.{i}.attn.proj", "h.{i}.attn.c_proj", bias=True, transpose=False),
    *linear("blocks.{i}.mlp.fc", "h.{i}.mlp.c_fc", bias=True, transpose=False),
    *linear("blocks.{i}.mlp.proj", "h.{i}.mlp.c_proj", bias=True, transpose=False),
)),)

def lora_targets(c: GPTConfig) -> dict[str, tuple[str, int, int]]:
    """LoRA's targets under Llama's names: q, k, v thirds of the fused qkv (GPT-2's c_attn), o the attention's
    output, up and down the MLP's two layers."""
    d = c.n_embd
    return {"q": ("blocks.{i}.attn.qkv", 0, d), "k": ("blocks.{i}.attn.qkv", d, 2 * d), "v": ("blocks.{i}.attn.qkv", 2 * d, 3 * d),
            "o": ("blocks.{i}.attn.proj", 0, d), "up": ("blocks.{i}.mlp.fc", 0, 4 * d), "down": ("blocks.{i}.mlp.proj", 0, d)}


SPEC = register(ModelSpec(
    "gpt", GPT, GPTConfig, task=LANGUAGE,
    finish_config=lambda config, tokenizer: dataclasses.replace(config, vocab_size=tokenizer.vocab_size),
    generation="cached", commands=frozenset({"train", "sample", "eval", "chat", "serve", "convert", "finetune"}),
    hf=HFFormat(("gpt2",), _config_from_hf, GPT2_WEIGHTS, _config_to_hf),
    shard_units=lambda model: model.blocks, lora_targets=lora_targets, quantizable=True,
))
