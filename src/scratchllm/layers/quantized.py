"""Weights kept in a compact integer form for decoding on the CPU: weight-only int8 and int4.

A decoding step reads every weight once per token, so fewer bytes per weight is a faster step, as long as
the product that unpacks them is quick. Two of torch's CPU kernels do the unpacking inside the product:

    int8  Int8Weight   w[n, k] ~ q[n, k] * scale[n]                 q in -127..127, one scale per output row
                       (aten._weight_int8pack_mm): a quarter of fp32's bytes
    int4  Int4Weight   w[n, k] ~ (q[n, k] - 8) * scale[n, g] + zero[n, g]    q in 0..15, g = k // 32
                       (aten._weight_int4pack_mm_for_cpu): an eighth of fp32's bytes, plus 4 bytes of
                       scale and zero per 32 weights

Both kernels are quick only with bf16 activations and bf16 scales (fed fp32, 6-14x slower on one row:
`benchmarks/linear_layout.py --int8`, which times both), so each product casts its input to bf16 and its
output back; the rest of the model keeps its dtype. Both are for decoding: with 64 rows (a prefill) they
took 2-2.5x fp32's oneDNN-packed product on the AVX2 machine.

int4's groups are llama.cpp's Q4_0 and Q4_1 blocks: 32 weights of one row share a scale d (and, in
Q4_1, a minimum m), w = d q + m. That is the kernel's form with scale d and zero m + 8 d, so a GGUF
file's Q4 blocks run as they are stored (interop/gguf.py reads them with `keep_blocks`): the 4-bit codes
exactly, the scale and zero rounded from fp32 to the kernel's bf16 (2^-8 of each: a weight moves by at most
2^-8 (8 |d| + |m + 8 d|), a 32nd of a quantization step plus 2^-8 of the zero; tests/test_quantized.py checks
the bound). A float weight is rounded to int4 by Q4_1's rule (`q4_1`), the codes gguf-py's quantizer gives.

`quantize(model, "int8" | "int4")` gives every projection its compact form and drops its float weight.
The output head tied to the embedding (the largest product in a small model, whose errors land right
on the logits) is int8 in both, as llama.cpp keeps a Q4 model's token embedding in Q8_0 or Q6_K.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from scratchllm.layers.linear import Linear, TiedHead

GROUP = 32  # weights per int4 group (llama.cpp's block)


# A one-row int8 product (K, N) -> 1 x N from memory, 2 threads, AMD EPYC with AVX2 (2026-12-02,
# `python benchmarks/linear_layout.py --int8`): 576 x 1536 74 us (bf16 x) against 101 bf16 F.linear and 140
# fp32 oneDNN-packed; 2048 x 8192 992 against 1639 and 2319; 576 x 49152 (SmolLM2's head) 2518 against 3051
# and 4130. Fed fp32 activations the kernel took 429 us at 576 x 1536 (in cache, against 46 with bf16).
class Int8Weight:
    """A weight (out, in) rounded to int8 per output row, w ~ q * scale[row] (symmetric, |q| <= 127).
    Inference-only state kept in place of the Linear's weight."""

    def __init__(self, weight_out_in: torch.Tensor):
        w = weight_out_in.detach().float()
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (out,): the largest entry of a row maps to 127
        self.q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8).contiguous()  # (out, in)
        self.scale = scale.to(torch.bfloat16)

    @property
    def nbytes(self) -> int:
        return self.q.numel() + 2 * self.scale.numel()

    def dequantized(self) -> torch.Tensor:  # (out, in) in fp32: what the kernel multiplies by
        return self.q.float() * self.scale.float()[:, None]

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:  # (..., in) -> (..., out)
        y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, x.size(-1)).to(torch.bfloat16), self.q, self.scale)
        y = y.view(*x.shape[:-1], self.q.size(0)).to(x.dtype)
        return y if bias is None else y + bias


@dataclass
class GroupQuantized:
    """4-bit codes in groups of 32 along each row, in the int4 kernel's terms, with exact fp32 scales:
    w[n, k] = (codes[n, k] - 8) * scale[n, k // 32] + zero[n, k // 32]."""

    codes: torch.Tensor  # (out, in) uint8, 0..15
    scale: torch.Tensor  # (out, in // 32) fp32
    zero: torch.Tensor  # (out, in // 32) fp32
    kind: str  # where the codes come from: "q4_0", "q4_1" (a GGUF file's blocks) or "q4_1 rule" (rounded here)

    def dequantized(self) -> torch.Tensor:  # (out, in) fp32
        rows, cols = self.codes.shape
        groups = (self.codes.float() - 8).view(rows, cols // GROUP, GROUP)
        return (groups * self.scale[..., None] + self.zero[..., None]).view(rows, cols)

    @staticmethod
    def cat(parts: list["GroupQuantized"]) -> "GroupQuantized":
        """Parts stacked along the output rows (q, k and v into a fused qkv)."""
        return GroupQuantized(torch.cat([p.codes for p in parts]), torch.cat([p.scale for p in parts]),
                              torch.cat([p.zero for p in parts]), "+".join(sorted({p.kind for p in parts})))


def q4_1(weight_out_in: torch.Tensor) -> GroupQuantized:
    """Q4_1's rule (ggml's quantize_row_q4_1, gguf-py's Q4_1.quantize_blocks): in each group of 32, d =
    (max - min) / 15, q = trunc((w - min) / d + 0.5) clipped to 0..15, then d and min stored in fp16."""
    w = weight_out_in.detach().float()
    rows, cols = w.shape
    groups = w.reshape(rows, cols // GROUP, GROUP)
    low, high = groups.amin(-1), groups.amax(-1)  # (out, in / 32)
    d = (high - low) / 15
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    codes = torch.trunc((groups - low[..., None]) * inv[..., None] + 0.5).clamp(0, 15).to(torch.uint8)
    d16, m16 = d.half().float(), low.half().float()
    return GroupQuantized(codes.view(rows, cols), d16, m16 + 8 * d16, "q4_1 rule")


class Int4Weight:
    """A weight (out, in) as 4-bit codes in groups of 32 (GroupQuantized), packed for torch's CPU kernel.
    Inference-only state kept in place of the Linear's weight."""

    def __init__(self, groups: GroupQuantized):
        self.out_features, self.in_features = groups.codes.shape
        self.kind = groups.kind
        # the kernel's layout: codes two to a byte in its own tile order; scale and zero (in / 32, out, 2)
        self.packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(groups.codes.to(torch.int32).contiguous(), 1)
        self.scale_zero = torch.stack([groups.scale.t(), groups.zero.t()], dim=-1).to(torch.bfloat16).contiguous()

    @property
    def nbytes(self) -> int:
        return self.packed.numel() + 2 * self.scale_zero.numel()

    def dequantized(self) -> torch.Tensor:  # (out, in) fp32: what the kernel multiplies by
        scale, zero = self.scale_zero.float().unbind(-1)  # (in / 32, out) each
        return GroupQuantized(self._codes(), scale.t(), zero.t(), self.kind).dequantized()

    def _codes(self) -> torch.Tensor:
        """The codes back from the packed layout: the product of the identity with zero scale offsets."""
        eye = torch.eye(self.in_features, dtype=torch.bfloat16)
        unit = torch.stack([torch.ones_like(self.scale_zero[..., 0]), torch.zeros_like(self.scale_zero[..., 1])], -1)
        return (torch.ops.aten._weight_int4pack_mm_for_cpu(eye, self.packed, GROUP, unit).float() + 8).round().t().to(torch.uint8)

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:  # (..., in) -> (..., out)
        flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(flat, self.packed, GROUP, self.scale_zero)
        y = y.view(*x.shape[:-1], self.out_features).to(x.dtype)
        return y if bias is None else y + bias


def quantized_form(model: nn.Module) -> str | None:
    """What `quantize` made of `model`'s Linears ("int4", "int8", "int4 + int8"), or None if nothing."""
    kinds = sorted({"int4" if isinstance(m.quantized, Int4Weight) else "int8"
                    for m in model.modules() if isinstance(m, Linear) and m.quantized is not None})
    return " + ".join(kinds) or None


def int4_fits(in_features: int, out_features: int) -> bool:
    """The kernel's shapes: whole groups along the input, outputs in tiles of 16."""
    return in_features % GROUP == 0 and out_features % 16 == 0


def quantize(model: nn.Module, kind: str, stored: dict[str, GroupQuantized] | None = None) -> int:
    """Give every projection of `model` its `kind` ("int8" or "int4") form and drop the float weights of
    its Linears (the tied head keeps its table, which the embedding reads, and gets an int8 copy beside it).
    int4: the codes in `stored` (module name -> GroupQuantized, a GGUF file's Q4 blocks) where given, Q4_1's
    rule elsewhere; a Linear of a shape the int4 kernel cannot take (int4_fits) gets int8. For inference only: no
    gradients, LoRA or export afterwards. Returns the bytes of quantized weights made."""
    if kind not in ("int8", "int4"):
        raise ValueError(f"unknown weight form {kind!r}")
    stored = stored or {}
    made = 0
    with torch.no_grad():
        for name, module in list(model.named_modules()):
            if not isinstance(module, (Linear, TiedHead)) or module.quantized is not None:
                continue
            if isinstance(module, Linear):
                if module.lora is not None and not module.lora.merged:
                    raise ValueError("merge LoRA updates before quantizing")
                weight = module.weight.t()  # (out, in)
                if kind == "int4" and int4_fits(module.in_features, module.out_features):
                    module.quantized = Int4Weight(stored[name] if name in stored else q4_1(weight))
                else:
                    module.quantized = Int8Weight(weight)
                module.weight = None  # the float copy goes: the compact form is what this model reads from now on
            else:
                module.quantized = Int8Weight(module.weight)
            module.packed = None
            made += module.quantized.nbytes
    return made
