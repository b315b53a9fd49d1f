"""The linear layer, y = x W + b, with W stored (in_features, out_features): the layout of the math.

torch's `nn.Linear` stores W transposed, (out, in), and Hugging Face's Llama and SigLIP weights
come that way; GPT-2's Conv1D stores (in, out), as we do. Why not keep nn.Linear's layout: when
a model decodes one token at a time, every matrix product is a single row times W, and on the
CPU we measured (`python benchmarks/linear_layout.py`), that product is 1.4-2x faster with W
stored (in, out) when the output is wider than the input (the MLP's up projection, the vocabulary
head), about the same or 0.9x when it is narrower (the down projection), while training's large
products take the same time either way. `interop/hf.py` transposes nn.Linear weights in and out.

For decoding on the CPU, `pack_for_inference(model)` adds to every Linear (and tied output head) a
copy of its weight in oneDNN's blocked layout, which the forward pass uses under no_grad (in fp32
only for models past FP32_PACK_MIN_MODEL_BYTES): a decoding step's one-row products of SmolLM2-135M
then read the weights at 32 GB/s in bf16 instead of 16, and 31 instead of 22 in fp32, where a plain
sum reads 36-46; with 16 rows (the server's batched step) 1.9x faster in bf16, 2.3x in fp32 (2 cores,
`python benchmarks/linear_layout.py --decode`). bf16 results are bit-equal. The copy is checked
against its weight at every call (same storage, no in-place change since): it is never stale.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn


class PackedWeight:
    """A weight (out, in) reordered by oneDNN for products of few rows: inference-only state kept
    beside the parameter it copies (not in the state dict), valid while that parameter is unchanged."""

    def __init__(self, weight_out_in: torch.Tensor, source: torch.Tensor):
        self.tensor = torch.ops.mkldnn._reorder_linear_weight(weight_out_in.detach(), batch_size=1)
        self.dtype, self._ptr, self._version = source.dtype, source.data_ptr(), source._version

    def matches(self, source: torch.Tensor) -> bool:
        """The parameter is the same storage, unmodified since it was packed (an optimizer step, a
        load_state_dict or a .to() changes one or the other)."""
        return source._version == self._version and source.data_ptr() == self._ptr and source.dtype == self.dtype

    def usable(self, x: torch.Tensor, source: torch.Tensor) -> bool:
        """No gradient wanted, x in the packed dtype, and the parameter unchanged."""
        return x.dtype == self.dtype and not torch.is_grad_enabled() and self.matches(source)

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:  # (..., in) -> (..., out)
        return torch.ops.mkldnn._linear_pointwise(x, self.tensor, bias, "none", [], "")


class Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(in_features, out_features))  # (in, out)
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.packed: PackedWeight | None = None  # see pack_for_inference
        self.reset_parameters()

    def reset_parameters(self, std: float | None = None) -> None:
        """nn.Linear's default, uniform in +-1/sqrt(in) for weight and bias; or, with `std`, a
        normal(0, std) weight and a zero bias (the GPT-2 initialisation)."""
        with torch.no_grad():
            if std is None:
                bound = 1.0 / math.sqrt(self.in_features)
                self.weight.uniform_(-bound, bound)
                if self.bias is not None:
                    self.bias.uniform_(-bound, bound)
            else:
                self.weight.normal_(0.0, std)
                if self.bias is not None:
                    self.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., out)
        if self.packed is not None and self.packed.usable(x, self.weight):
            return self.packed(x, self.bias)
        if self.bias is None:
            return x @ self.weight
        return F.linear(x, self.weight.t(), self.bias)  # the bias added inside the product (addmm), no extra op

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class TiedHead(nn.Module):
    """The output head of a model whose head is its embedding table: logits = x @ table^T.

    It owns no weight: the table stays the embedding's (one tensor, as the checkpoint has it). The
    embedding is held outside the module tree, so that it is not a second entry in the state dict."""

    def __init__(self, embedding: nn.Embedding):
        super().__init__()
        object.__setattr__(self, "embedding", embedding)  # not registered: the model registers it
        self.packed: PackedWeight | None = None

    @property
    def weight(self) -> torch.Tensor:  # (vocab, dim): already nn.Linear's (out, in)
        return self.embedding.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., dim) -> (..., vocab)
        if self.packed is not None and self.packed.usable(x, self.weight):
            return self.packed(x, None)
        return F.linear(x, self.weight)


def _projections(model: nn.Module) -> Iterator[tuple[nn.Module, torch.Tensor]]:
    """Every Linear and TiedHead with its weight in (out, in) layout."""
    for module in model.modules():
        if isinstance(module, Linear):
            yield module, module.weight.t()
        elif isinstance(module, TiedHead):
            yield module, module.weight


# fp32: oneDNN's packed weights pay when a model's weights stream from memory at every token, not
# when they stay in the CPU's caches, where torch's own one-row products are quicker (a packed call
# costs ~13 us). Measured in whole decoding runs on 2 cores: llama-bpe-baby (5 MB of fp32 weights)
# 1486 tok/s packed vs 2475 unpacked (`benchmarks/generate.py --size baby`); SmolLM2-135M (538 MB)
# 49.5 vs 30.0 (`benchmarks/chat.py`). bf16 packing is faster at every size we tried (1.06x at
# 128 x 256 from the cache, 2.1x at 1024 x 1024: `benchmarks/linear_layout.py --pack-sizes`).
FP32_PACK_MIN_MODEL_BYTES = 64 * 2**20  # past the last-level cache of the machines we use


def can_pack(weight: torch.Tensor) -> bool:
    """oneDNN packing applies to this weight: on the CPU, in fp32, or in bf16 where this CPU does bf16 in oneDNN."""
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    return weight.dtype == torch.float32 or (weight.dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def pack_for_inference(model: nn.Module) -> list[nn.Module]:
    """Give every projection of `model` a oneDNN-packed copy of its weight for no-grad forward passes
    on the CPU (decoding); projections already packed and still valid are kept. Costs one more copy
    of the weights in memory (and ~0.1 s for SmolLM2-135M); `unpack` drops them. fp32 products of a
    packed weight can differ from torch's in the last bit (another summation order); bf16 ones are
    equal. Returns the projections packed by this call."""
    projections = list(_projections(model))
    fp32_bytes = sum(w.numel() * 4 for _, w in projections if w.dtype == torch.float32)
    packed = []
    with torch.no_grad():
        for module, weight in projections:
            if not can_pack(weight) or (module.packed is not None and module.packed.matches(module.weight)):
                continue
            if weight.dtype == torch.float32 and fp32_bytes < FP32_PACK_MIN_MODEL_BYTES:
                continue  # a small fp32 model: its weights stay in cache, where torch's products are quicker
            module.packed = PackedWeight(weight.contiguous(), module.weight)
            packed.append(module)
    return packed


@contextmanager
def packed_for_inference(model: nn.Module) -> Iterator[nn.Module]:
    """Pack `model` for the block and drop, at its end, the copies made for it (an outer packing stays)."""
    made = pack_for_inference(model)
    try:
        yield model
    finally:
        for module in made:
            module.packed = None


def unpack(model: nn.Module) -> None:
    """Drop the packed copies that pack_for_inference made."""
    for module, _ in _projections(model):
        module.packed = None
