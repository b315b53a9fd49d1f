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

LoRA (`add_lora`, `merge_lora`): a Linear may carry low-rank updates of some of its output columns,
y[..., cols] += scale * x A B, trained while W stays frozen; merged into W for inference (no extra
cost), unmerged again, or folded for good (`fold_lora`) before export.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.layers.dropout import Dropout


class PackedWeight:
    """A weight (out, in) reordered by oneDNN for products of few rows: inference-only state kept
    beside the parameter it copies (not in the state dict), valid while that parameter is unchanged."""

    def __init__(self, weight_out_in: torch.Tensor, source: torch.Tensor):
        self.tensor = self.laid_out(weight_out_in.detach())
        self.dtype, self._ptr, self._version = source.dtype, source.data_ptr(), source._version

    @staticmethod
    def laid_out(weight_out_in: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._reorder_linear_weight(weight_out_in, batch_size=1)

    def matches(self, source: torch.Tensor) -> bool:
        """The parameter is the same storage, unmodified since it was packed (an optimizer step, a
        load_state_dict or a .to() changes one or the other)."""
        return source._version == self._version and source.data_ptr() == self._ptr and source.dtype == self.dtype

    def usable(self, x: torch.Tensor, source: torch.Tensor) -> bool:
        """No gradient wanted, x in the packed dtype, and the parameter unchanged."""
        return x.dtype == self.dtype and not torch.is_grad_enabled() and self.matches(source)

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:  # (..., in) -> (..., out)
        return torch.ops.mkldnn._linear_pointwise(x, self.tensor, bias, "none", [], "")


class OutInWeight(PackedWeight):
    """A bf16 weight copied to nn.Linear's (out, in) layout, for CPUs where oneDNN cannot pack bf16 (AVX2
    only): there torch's bf16 product is ~15x slower with our (in, out) layout than with (out, in) (one row by
    576 x 1536: 1,429 against 97 us; 64 rows: 87 against 5.7 ms; AMD EPYC, AVX2, 2026-12-02), so decoding
    SmolLM2 in bf16 ran at 5.7 tok/s where transformers ran at 32. Same checks as PackedWeight."""

    @staticmethod
    def laid_out(weight_out_in: torch.Tensor) -> torch.Tensor:
        return weight_out_in.contiguous()

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:  # (..., in) -> (..., out)
        return F.linear(x, self.tensor, bias)


class Linear(nn.Module):
    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(in_features, out_features))  # (in, out)
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        self.packed: PackedWeight | None = None  # see pack_for_inference
        self.lora: LoRA | None = None  # low-rank updates beside the weight (see add_lora)
        self.quantized = None  # an int8 or int4 form in place of `weight` (layers/quantized.py)
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
        y = self._dense(x)
        if self.lora is not None and not self.lora.merged:
            for update in self.lora.values():  # each its own columns: q and v of a fused qkv
                y[..., update.start:update.stop] += update(x)
        return y

    def _dense(self, x: torch.Tensor) -> torch.Tensor:
        if self.quantized is not None:
            return self.quantized(x, self.bias)
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
        self.quantized = None  # an int8 copy of the table for the head (the lookup keeps the table)

    @property
    def weight(self) -> torch.Tensor:  # (vocab, dim): already nn.Linear's (out, in)
        return self.embedding.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., dim) -> (..., vocab)
        if self.quantized is not None:
            return self.quantized(x, None)
        if self.packed is not None and self.packed.usable(x, self.weight):
            return self.packed(x, None)
        return F.linear(x, self.weight)


def _projections(model: nn.Module) -> Iterator[tuple[nn.Module, torch.Tensor]]:
    """Every Linear and TiedHead with its weight in (out, in) layout."""
    for module in model.modules():
        if isinstance(module, (Linear, TiedHead)) and module.quantized is not None:
            continue  # quantized weights are not packed
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


BF16_LAYOUTS = ("onednn", "out_in")


def pack_for_inference(model: nn.Module, bf16_layout: str = "onednn") -> list[nn.Module]:
    """Give every projection of `model` a oneDNN-packed copy of its weight for no-grad forward passes
    on the CPU (decoding); projections already packed and still valid are kept. Costs one more copy
    of the weights in memory (and ~0.1 s for SmolLM2-135M); `unpack` drops them. fp32 products of a
    packed weight can differ from torch's in the last bit (another summation order); bf16 ones are
    equal. A bf16 weight gets an (out, in) copy instead (OutInWeight), whose products may differ from
    x @ W in the last bit, where oneDNN cannot pack bf16 (a CPU without AVX512) or `bf16_layout` is
    "out_in": the layout a Llama's one-call decoding step reads fastest (models/llama_step.py). Returns
    the projections given a copy by this call."""
    if bf16_layout not in BF16_LAYOUTS:
        raise ValueError(f"bf16_layout is one of {BF16_LAYOUTS}, not {bf16_layout!r}")
    projections = list(_projections(model))
    fp32_bytes = sum(w.numel() * 4 for _, w in projections if w.dtype == torch.float32)
    packed = []
    with torch.no_grad():
        for module, weight in projections:
            out_in = weight.dtype == torch.bfloat16 and weight.device.type == "cpu" and (
                bf16_layout == "out_in" or not can_pack(weight))
            if module.packed is not None and module.packed.matches(module.weight) and \
                    isinstance(module.packed, OutInWeight) == out_in:
                continue
            if out_in:
                module.packed = OutInWeight(weight, module.weight)
                packed.append(module)
                continue
            if not can_pack(weight):
                continue
            if weight.dtype == torch.float32 and fp32_bytes < FP32_PACK_MIN_MODEL_BYTES:
                continue  # a small fp32 model: its weights stay in cache, where torch's products are quicker
            module.packed = PackedWeight(weight.contiguous(), module.weight)
            packed.append(module)
    return packed


@contextmanager
def packed_for_inference(model: nn.Module, bf16_layout: str = "onednn") -> Iterator[nn.Module]:
    """Pack `model` for the block and drop, at its end, the copies made for it: an outer packing stays, or
    comes back where the block packed in another layout."""
    before = {module: module.packed for module, _ in _projections(model)}
    made = pack_for_inference(model, bf16_layout)
    try:
        yield model
    finally:
        for module in made:
            module.packed = before.get(module)


def unpack(model: nn.Module) -> None:
    """Drop the packed copies that pack_for_inference made."""
    for module, _ in _projections(model):
        module.packed = None


# -- LoRA: a low-rank update beside a frozen weight -------------------------------------------------------

@dataclass(frozen=True)
class LoRAConfig:
    """Which projections get LoRA updates and how: rank r, scale alpha / r, dropout on the update's input.
    litgpt's defaults (r 8, alpha 16, dropout 0.05 on query and value). Target names are the model's (its
    spec's `lora_targets`: q, k, v, o, gate, up, down)."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05
    targets: tuple[str, ...] = ("q", "v")

    def __post_init__(self):
        from scratchllm.errors import ScratchLLMError

        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 1:
            raise ScratchLLMError(f"LoRA rank must be a whole number of at least 1, got {self.r}")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise ScratchLLMError(f"LoRA alpha must be a positive number, got {self.alpha}")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ScratchLLMError(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if not self.targets or not all(isinstance(t, str) and t for t in self.targets) or len(set(self.targets)) != len(self.targets):
            raise ScratchLLMError(f"LoRA targets must be distinct names, e.g. q,v; got {','.join(map(str, self.targets)) or 'none'}")


class LowRank(nn.Module):
    """One LoRA update (Hu et al. 2021) of some output columns of a Linear:

        y[..., start:stop] += scale * dropout(x) @ A @ B      x (..., in), A (in, r), B (r, stop - start)

    A starts as nn.Linear's (and peft's) default, kaiming-uniform with a = sqrt(5), i.e. uniform in
    +-1/sqrt(in); B starts at zero, so the update is zero until training moves B. scale = alpha / r.
    Stored (in, r) and (r, out) like our Linear (peft stores the transposes: lora_A (r, in), lora_B (out, r))."""

    def __init__(self, in_features: int, start: int, stop: int, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        self.start, self.stop, self.r, self.alpha, self.dropout_p = start, stop, r, alpha, dropout
        self.scale = alpha / r
        self.A = nn.Parameter(torch.empty(in_features, r))
        self.B = nn.Parameter(torch.zeros(r, stop - start))
        self.dropout = Dropout(dropout) if dropout > 0 else nn.Identity()
        with torch.no_grad():
            bound = 1.0 / math.sqrt(in_features)
            self.A.uniform_(-bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., in) -> (..., stop - start)
        return (self.dropout(x) @ self.A) @ self.B * self.scale

    def delta(self) -> torch.Tensor:
        """The update as a weight, (in, stop - start): what merging adds to those columns."""
        return (self.A @ self.B) * self.scale

    def extra_repr(self) -> str:
        return f"columns={self.start}:{self.stop}, r={self.r}, alpha={self.alpha:g}"


class LoRA(nn.ModuleDict):
    """The LoRA updates of one Linear, by target name ({"q": LowRank, "v": LowRank} on a fused qkv).
    `merged`: the updates are folded into the Linear's weight (forward adds nothing then)."""

    merged = False


def add_lora(linear: Linear, name: str, start: int, stop: int, r: int, alpha: float, dropout: float = 0.0) -> LowRank:
    """Give `linear` a LoRA update of its output columns start:stop, named `name` (in its state dict:
    `...lora.NAME.A` and `.B`). Its own weight and bias stay as they are (freezing them is the caller's)."""
    from scratchllm.errors import ScratchLLMError

    if not 0 <= start < stop <= linear.out_features:
        raise ValueError(f"columns {start}:{stop} are not inside the layer's {linear.out_features} outputs")
    if not 1 <= r <= min(linear.in_features, stop - start):
        raise ScratchLLMError(f"LoRA rank {r} does not fit a {linear.in_features} x {stop - start} projection ({name}); "
                              f"choose a rank from 1 to {min(linear.in_features, stop - start)}")
    if linear.lora is None:
        linear.lora = LoRA()
    elif linear.lora.merged:
        raise ValueError("add an update before merging, not after")
    update = LowRank(linear.in_features, start, stop, r, alpha, dropout).to(linear.weight.device)
    update.train(linear.training)  # a model in eval mode gets its updates in eval mode (no dropout)
    linear.lora[name] = update
    return update


def lora_layers(model: nn.Module) -> Iterator[Linear]:
    """Every Linear of `model` that has LoRA updates."""
    return (m for m in model.modules() if isinstance(m, Linear) and m.lora is not None)


@torch.no_grad()
def merge_lora(model: nn.Module) -> None:
    """Fold every LoRA update into its Linear's weight: W[:, cols] += scale * A @ B. The forward pass is
    then the dense one, at no extra cost; `unmerge_lora` takes the updates out again. In floating point,
    (W + D) - D is W to within one rounding of the sum (bit-equal mostly, not always: tested)."""
    for linear in lora_layers(model):
        if not linear.lora.merged:
            for update in linear.lora.values():
                linear.weight[:, update.start:update.stop] += update.delta().to(linear.weight.dtype)
            linear.lora.merged = True


@torch.no_grad()
def unmerge_lora(model: nn.Module) -> None:
    """Take merged LoRA updates back out of the weights (the same products, subtracted)."""
    for linear in lora_layers(model):
        if linear.lora.merged:
            for update in linear.lora.values():
                linear.weight[:, update.start:update.stop] -= update.delta().to(linear.weight.dtype)
            linear.lora.merged = False


def fold_lora(model: nn.Module) -> None:
    """Merge every LoRA update into its weight and drop the updates: a plain model again (for export)."""
    merge_lora(model)
    for linear in list(lora_layers(model)):
        linear.lora = None
