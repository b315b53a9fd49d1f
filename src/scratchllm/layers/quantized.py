"""Weights kept in a compact integer form for decoding on the CPU: weight-only int8 and int4.

A decoding step reads every weight once per token, so fewer bytes per weight is a faster step, as long as
the product unpacks them inside itself rather than into a float copy. Both forms are llama.cpp's blocks:

    int8  Int8Weight   w[n, k] = q[n, k] * scale[n, g]                       q in -127..127, g = k // 32
                       (Q8_0; q8_0.c, our own kernel, compiled once per CPU): a quarter of fp32's bytes,
                       plus 4 of scale per 32 weights
    int4  Int4Weight   w[n, k] = q[n, k] * d[n, g] + m[n, g]                 q in 0..15
                       (Q4_0 / Q4_1; q4_1.c, ours too): an eighth of fp32's bytes, plus 8 bytes of
                       scale and minimum per 32 weights

Torch's int8 kernel (`_weight_int8pack_mm`) takes one scale per row, which cannot hold Q8_0's blocks and
rounds a row 32 times more coarsely; q8_0.c reads the blocks as they are at about its speed (measured
below). Torch's int4 kernel (`_weight_int4pack_mm_for_cpu`) takes its scales and activations in bf16 only
(fed fp32, 6-14x slower on one row: `benchmarks/linear_layout.py --int8`), which rounds a Q4_1 file's
scales and minimums; q4_1.c multiplies them as stored, in fp32, at 0.65-1.2x its speed on one row (AMD EPYC
AVX512-BF16, 2 threads, 2026-12-03: 576 x 960 26 / 25 us, 576 x 3072 67-90 / 57-66, 1536 x 576 42-47 /
33-40, ours / torch's), and is what the one-call decoding step (llama_step.c) is built from, where the
step's overhead, not the product, was the cost. With several rows (the server's batched steps) q4_1.c
unpacks each group once for up to 4 rows and 4 outputs at a time: 0.66-0.92x torch's at 2-8 rows and
0.75-0.87x at 16-64 (`benchmarks/quantized_kernels.py`, same machine; its first multi-row kernel, which
unpacked every group once per row, was 0.42-0.52x). Both kernels are for decoding: for more rows than
`native_rows` (a prefill; the crossover measured per CPU) the weight is dequantized for a float product.

int4's groups are llama.cpp's Q4_0 and Q4_1 blocks: 32 weights of one row share a scale d (and, in
Q4_1, a minimum m; Q4_0's is -8 d), w = d q + m, so a GGUF file's Q4 blocks run as they are stored
(interop/gguf.py reads them with `keep_blocks`). A float weight is rounded to int4 by Q4_1's rule (`q4_1`),
the codes gguf-py's quantizer gives.

int8's blocks are Q8_0's: 32 codes and one fp16 scale, exactly, so a file's Q8_0 tensors run as stored
too; a float weight is rounded by Q8_0's rule (`q8_0`, the codes gguf-py's quantizer gives).

`quantize(model, "int8" | "int4")` gives every projection its compact form and drops its float weight.
The output head tied to the embedding (the largest product in a small model, whose errors land right
on the logits) is int8 in both, as llama.cpp keeps a Q4 model's token embedding in Q8_0 (a Q4 file's
Q8_0 embedding is that head's blocks, as stored).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch import nn

from scratchllm.layers.linear import Linear, TiedHead

GROUP = 32  # weights per int4 group (llama.cpp's block)


@dataclass
class Q8Blocks:
    """int8 codes in groups of 32 along each row, one scale per group (llama.cpp's Q8_0 block):
    w[n, k] = codes[n, k] * scale[n, k // 32]."""

    codes: torch.Tensor  # (out, in) int8
    scale: torch.Tensor  # (out, ceil(in / 32)) fp32 (a file's fp16 scales, exactly)
    kind: str  # "q8_0" (a GGUF file's blocks) or "q8_0 rule" (rounded here)

    def dequantized(self) -> torch.Tensor:  # (out, in) fp32
        rows, cols = self.codes.shape
        codes = torch.nn.functional.pad(self.codes, (0, -cols % GROUP))  # whole groups: (out, groups * 32)
        return (codes.view(rows, -1, GROUP).float() * self.scale[..., None]).view(rows, -1)[:, :cols]

    @staticmethod
    def cat(parts: list["Q8Blocks"]) -> "Q8Blocks":
        """Parts stacked along the output rows (q, k and v into a fused qkv)."""
        return Q8Blocks(torch.cat([p.codes for p in parts]), torch.cat([p.scale for p in parts]),
                        "+".join(sorted({p.kind for p in parts})))


def q8_0(weight_out_in: torch.Tensor) -> Q8Blocks:
    """Q8_0's rule (ggml's quantize_row_q8_0, gguf-py's Q8_0.quantize_blocks): in each group of 32, d =
    max |w| / 127, q = w / d rounded half away from zero, then d stored in fp16. A row whose length is not
    a multiple of 32 ends in a short group (as if padded with zeros, which is how the kernel reads it)."""
    w = weight_out_in.detach().float()
    rows, cols = w.shape
    padded = torch.nn.functional.pad(w, (0, -cols % GROUP)).view(rows, -1, GROUP)
    d = padded.abs().amax(-1) / 127  # (out, groups)
    inv = torch.where(d == 0, torch.zeros_like(d), 1 / d)
    scaled = padded * inv[..., None]
    codes = (scaled.sign() * (scaled.abs() + 0.5).floor()).to(torch.int8)  # half away from zero, as np_roundf
    return Q8Blocks(codes.view(rows, -1)[:, :cols].contiguous(), d.half().float(), "q8_0 rule")


# A product of a decoding step (x of 1 row) from memory, 2 threads, AMD EPYC with AVX2 (2026-12-02):
# q8_0.c against torch's per-row int8 kernel (_weight_int8pack_mm, bf16 x), microseconds: 576 x 1536
# 51 / 45, 1536 x 576 47 / 43, 576 x 49152 (SmolLM2's head) 1606 / 1865, 2048 x 8192 822 / 682; with 4
# rows 81 / 93, 77 / 89, 2574 / 3576, 1448 / 1530. About the same speed, and a 32nd of a row shares a
# scale instead of the whole row: Q8_0 is the int8 form here, and a GGUF file's Q8_0 blocks run as stored.
# With more rows q8_0.c does one multiply-add per weight and row, unblocked, while a float product of the
# dequantized weight pays for dequantizing (a fresh fp32 copy) first. Measured (2 threads, AVX2 EPYC,
# microseconds, kernel / dequantize + F.linear): 576 x 1536 at 32 rows 650 / 1244, 64 rows 1340 / 1846,
# 96 rows 2070 / 2053, 128 rows 2891 / 2479; 1536 x 576 at 96 rows 2481 / 1814; the head (576 x 49152) at
# 128 rows 99 / 155 ms. So the kernel up to 64 rows there; on the AVX512 EPYC (2026-12-03, after q4_1.c's
# multi-row rewrite) int4 at 64 rows was 505 against 561 us for F.linear with the float weight ready, before
# any dequantizing. Where the crossover lies depends on the CPU, so it is measured on the CPU at hand
# (`native_rows`), once, and kept beside the kernel built for it.
_ROW_STEPS = (8, 16, 32, 64, 128, 256)  # the row counts a calibration tries, in order


@lru_cache(maxsize=None)
def native_rows(name: str) -> int:
    """The most rows {name}.c multiplies before dequantizing the weight for a float product is faster.

    Measured on this CPU the first time it is asked (a 1024 x 1024 weight, the row counts of _ROW_STEPS in
    turn until the float product wins; about a second) and kept as JSON beside the kernel native.py built
    for this CPU, source and compiler, so each build is calibrated once. A kept file that does not hold one
    of the counts tried is measured again. 0 without a kernel (every product is a float one)."""
    import json
    import os
    import tempfile
    from pathlib import Path

    from scratchllm.layers import native

    if _kernel(name) is None:
        return 0
    path = Path(native.load(name)._name).with_suffix(".rows.json")
    try:
        rows = json.loads(path.read_text())["rows"]
        if isinstance(rows, int) and rows in (1, *_ROW_STEPS):
            return rows
    except (OSError, ValueError, KeyError, TypeError):
        pass  # none yet, or not ours to trust: measure
    rows, timings = _calibrate(name)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".rows-", suffix=".json")
        with os.fdopen(fd, "w") as f:
            json.dump({"rows": rows, "microseconds (kernel, float) by rows": timings}, f)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache: measured again by the next process
    return rows


def _calibrate(name: str) -> tuple[int, dict[int, tuple[float, float]]]:
    """(rows, {rows: (kernel us, float us)}) for a 1024 x 1024 weight; torch's random state untouched."""
    import time

    generator = torch.Generator().manual_seed(0)
    w = torch.randn(1024, 1024, generator=generator) * 0.02
    weight = Int8Weight(q8_0(w)) if name == "q8_0" else Int4Weight(q4_1(w))

    def best_us(fn) -> float:
        fn()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            for _ in range(3):
                fn()
            times.append((time.perf_counter() - start) / 3 * 1e6)
        return min(times)

    rows, timings = 1, {}
    for m in _ROW_STEPS:
        x = torch.randn(m, 1024, generator=generator)
        kernel, dense = best_us(lambda: weight.product(x, native=True)), best_us(lambda: weight.product(x, native=False))
        timings[m] = (round(kernel, 1), round(dense, 1))
        if kernel > dense:
            break
        rows = m
    return rows, timings


_ARGUMENTS = {"q8_0": 4, "q4_1": 5}  # pointer arguments of each kernel's matmul (then M, K, N, threads)


@lru_cache(maxsize=None)
def _kernel(name: str):
    """{name}.c's matmul (native.py builds it once per CPU), or None without a C compiler (said once)."""
    import ctypes

    from scratchllm.layers import native

    lib = native.load(name)
    if lib is None:
        warnings.warn(f"{name} products dequantize their weight at every call, which is slow: {native.why_not(name)}")
        return None
    fn = getattr(lib, f"{name}_matmul")
    fn.restype = ctypes.c_int
    fn.argtypes = [ctypes.c_void_p] * _ARGUMENTS[name] + [ctypes.c_int64] * 3 + [ctypes.c_int]
    return fn


class Int8Weight:
    """A weight (out, in) as Q8Blocks: int8 codes with one scale per 32 weights of a row. Decoding steps
    multiply the codes as they are (q8_0.c); longer inputs get the dequantized weight in a float product.
    Inference-only state kept in place of the Linear's weight."""

    def __init__(self, blocks: Q8Blocks):
        self.out_features, self.in_features = blocks.codes.shape
        self.kind = blocks.kind
        pad = -self.in_features % GROUP  # the kernel takes whole groups: a short last group gets zero codes
        self.codes = torch.nn.functional.pad(blocks.codes, (0, pad)).contiguous()  # (out, groups * 32) int8
        self.scale = blocks.scale.float().contiguous()  # (out, groups)

    @property
    def nbytes(self) -> int:
        return self.codes.numel() + 4 * self.scale.numel()

    def blocks(self) -> Q8Blocks:
        return Q8Blocks(self.codes[:, : self.in_features], self.scale, self.kind)

    def dequantized(self) -> torch.Tensor:  # (out, in) fp32: what the kernel multiplies by
        groups = self.codes.view(self.out_features, -1, GROUP).float() * self.scale[..., None]
        return groups.view(self.out_features, -1)[:, : self.in_features]

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:  # (..., in) -> (..., out)
        flat = x.reshape(-1, self.in_features)
        native = flat.device.type == "cpu" and flat.size(0) <= native_rows("q8_0")
        y = self.product(flat, native).view(*x.shape[:-1], self.out_features).to(x.dtype)
        return y if bias is None else y + bias

    def product(self, flat: torch.Tensor, native: bool) -> torch.Tensor:  # (rows, in) -> (rows, out)
        kernel = _kernel("q8_0") if native else None
        if kernel is None:  # many rows, or no compiler: one float product
            return torch.nn.functional.linear(flat.float(), self.dequantized())  # fp32, as the kernel: no bf16 weight
        rows = torch.nn.functional.pad(flat.float(), (0, self.codes.size(1) - self.in_features)).contiguous()
        y = torch.empty(rows.size(0), self.out_features)
        kernel(rows.data_ptr(), self.codes.data_ptr(), self.scale.data_ptr(), y.data_ptr(),
               rows.size(0), rows.size(1), self.out_features, torch.get_num_threads())
        return y


@dataclass
class GroupQuantized:
    """4-bit codes in groups of 32 along each row, as llama.cpp's Q4_0 / Q4_1 blocks hold them, with their scale
    and minimum exactly (fp32): w[n, k] = codes[n, k] * scale[n, k // 32] + min[n, k // 32] (Q4_0: min = -8 scale)."""

    codes: torch.Tensor  # (out, in) uint8, 0..15
    scale: torch.Tensor  # (out, in // 32) fp32
    min: torch.Tensor  # (out, in // 32) fp32
    kind: str  # where the codes come from: "q4_0", "q4_1" (a GGUF file's blocks) or "q4_1 rule" (rounded here)

    def dequantized(self) -> torch.Tensor:  # (out, in) fp32
        rows, cols = self.codes.shape
        groups = self.codes.float().view(rows, cols // GROUP, GROUP)
        return (groups * self.scale[..., None] + self.min[..., None]).view(rows, cols)

    @staticmethod
    def cat(parts: list["GroupQuantized"]) -> "GroupQuantized":
        """Parts stacked along the output rows (q, k and v into a fused qkv)."""
        return GroupQuantized(torch.cat([p.codes for p in parts]), torch.cat([p.scale for p in parts]),
                              torch.cat([p.min for p in parts]), "+".join(sorted({p.kind for p in parts})))


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
    return GroupQuantized(codes.view(rows, cols), d16, m16, "q4_1 rule")


class Int4Weight:
    """A weight (out, in) as 4-bit codes in groups of 32 (GroupQuantized) in GGUF's Q4 layout: two codes a
    byte, a group's 16 bytes holding its codes j (low nibble) and j + 16 (high nibble), and per group an
    fp32 scale d and minimum m, w = d q + m: a file's Q4_0 / Q4_1 values exactly. Decoding steps multiply
    the codes as they are (q4_1.c); longer inputs get the dequantized weight in a float product.
    Inference-only state kept in place of the Linear's weight."""

    def __init__(self, groups: GroupQuantized):
        self.out_features, self.in_features = groups.codes.shape
        self.kind = groups.kind
        codes = groups.codes.view(self.out_features, -1, GROUP)
        self.codes = (codes[..., :16] | (codes[..., 16:] << 4)).reshape(self.out_features, -1).contiguous()  # (out, in / 2)
        self.scale = groups.scale.float().contiguous()  # (out, in / 32)
        self.min = groups.min.float().contiguous()  # (out, in / 32)

    @property
    def nbytes(self) -> int:
        return self.codes.numel() + 4 * (self.scale.numel() + self.min.numel())

    def _codes(self) -> torch.Tensor:  # (out, in) uint8, 0..15
        packed = self.codes.view(self.out_features, -1, 16)
        return torch.cat([packed & 0x0F, packed >> 4], dim=-1).view(self.out_features, self.in_features)

    def dequantized(self) -> torch.Tensor:  # (out, in) fp32: what the kernel multiplies by
        groups = self._codes().view(self.out_features, -1, GROUP).float() * self.scale[..., None] + self.min[..., None]
        return groups.view(self.out_features, self.in_features)

    def __call__(self, x: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:  # (..., in) -> (..., out)
        flat = x.reshape(-1, self.in_features)
        native = flat.device.type == "cpu" and flat.size(0) <= native_rows("q4_1")
        y = self.product(flat, native).view(*x.shape[:-1], self.out_features).to(x.dtype)
        return y if bias is None else y + bias

    def product(self, flat: torch.Tensor, native: bool) -> torch.Tensor:  # (rows, in) -> (rows, out)
        kernel = _kernel("q4_1") if native else None
        if kernel is None:  # many rows, or no compiler: one float product
            return torch.nn.functional.linear(flat.float(), self.dequantized())  # fp32, as the kernel: no bf16 weight
        rows = flat.float().contiguous()
        y = torch.empty(rows.size(0), self.out_features)
        kernel(rows.data_ptr(), self.codes.data_ptr(), self.scale.data_ptr(), self.min.data_ptr(), y.data_ptr(),
               rows.size(0), rows.size(1), self.out_features, torch.get_num_threads())
        return y


def quantized_form(model: nn.Module) -> str | None:
    """What `quantize` made of `model`'s Linears ("int4", "int8", "int4 + int8"), or None if nothing."""
    kinds = sorted({"int4" if isinstance(m.quantized, Int4Weight) else "int8"
                    for m in model.modules() if isinstance(m, Linear) and m.quantized is not None})
    return " + ".join(kinds) or None


def int4_fits(in_features: int, out_features: int) -> bool:
    """The kernel's shapes: whole groups along the input."""
    return in_features % GROUP == 0


def quantize(model: nn.Module, kind: str, stored: dict[str, GroupQuantized | Q8Blocks] | None = None) -> int:
    """Give every projection of `model` its `kind` ("int8" or "int4") form and drop the float weights of
    its Linears (the tied head keeps its table, which the embedding reads, and gets an int8 copy beside it).
    `stored`: a GGUF file's blocks by module name, used as they are: Q8_0 ones for int8 (and for int4 in a
    file that mixes them with Q4 ones), Q4 ones for int4; the rest is rounded by Q4_1's or Q8_0's rule; a Linear of a shape the int4
    kernel cannot take (int4_fits) gets int8. For inference only: no gradients, LoRA or export afterwards. Returns the bytes of quantized weights made."""
    if kind not in ("int8", "int4"):
        raise ValueError(f"unknown weight form {kind!r}")
    stored = stored or {}
    # a Q4 file keeps some tensors in Q8_0 on purpose (llama.cpp's head): int4 runs that mix as it is, while
    # int4 of an all-Q8_0 file rounds its projections to 4 bits, as asked
    mixed = any(isinstance(b, GroupQuantized) for b in stored.values())
    made = 0
    with torch.no_grad():
        for name, module in list(model.named_modules()):
            if not isinstance(module, (Linear, TiedHead)) or module.quantized is not None:
                continue
            given = stored.get(name)  # a file's blocks for this module, used as they are where they fit the form
            if isinstance(module, Linear):
                if module.lora is not None and not module.lora.merged:
                    raise ValueError("merge LoRA updates before quantizing")
                weight = module.weight.t()  # (out, in)
                if isinstance(given, Q8Blocks) and (kind == "int8" or mixed):
                    module.quantized = Int8Weight(given)
                elif kind == "int4" and int4_fits(module.in_features, module.out_features):
                    module.quantized = Int4Weight(given if isinstance(given, GroupQuantized) else q4_1(weight))
                else:
                    module.quantized = Int8Weight(q8_0(weight))
                module.weight = None  # the float copy goes: the compact form is what this model reads from now on
            else:
                module.quantized = Int8Weight(given if isinstance(given, Q8Blocks) else q8_0(module.weight))
            module.packed = None
            made += module.quantized.nbytes
    return made
