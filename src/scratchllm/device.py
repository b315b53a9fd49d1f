"""Devices and numeric precision, for training and inference alike.

    device    auto: CUDA when present, else the CPU
    precision auto: bf16 where the hardware multiplies bf16 natively (AVX512-BF16 or AMX on a CPU,
              a bf16-capable GPU), fp32 elsewhere: training runs bf16 autocast there, inference
              holds the weights and the KV cache in bf16

The environment variable SCRATCHLLM_PRECISION=fp32|bf16 says what "auto" means for training, so a
lesson or a test can be run on either CPU path without editing it (an explicit precision still wins).
"""

from __future__ import annotations

import contextlib
import functools
import os

import torch

from scratchllm.errors import ScratchLLMError

PRECISIONS = ("auto", "fp32", "bf16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """auto, cpu, cuda or cuda:N -> a device that exists here, or a one-line error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not isinstance(name, str) or name.split(":")[0] not in ("cpu", "cuda"):
        raise ScratchLLMError(f"unknown device '{name}'; use auto, cpu or cuda")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ScratchLLMError(f"unknown device '{name}'; use auto, cpu or cuda") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ScratchLLMError(f"device '{name}' asked for, but no CUDA device is available; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ScratchLLMError(f"device '{name}' does not exist ({torch.cuda.device_count()} CUDA device(s)); use cuda:0")
    return device


@functools.lru_cache(maxsize=None)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (AVX512-BF16 or AMX) and the kernels may use it; elsewhere
    bf16 is emulated and slow (measured: lesson 1's run took 7x the CPU time in bf16 with AVX2-only kernels).

    Kernels held below that by ATEN_CPU_CAPABILITY (torch's own) or ONEDNN_MAX_CPU_ISA (oneDNN's matmuls),
    as when testing another CPU's code path, count as no native bf16."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    if "avx512_bf16" not in flags and "amx_bf16" not in flags:
        return False
    if not torch.backends.cpu.get_cpu_capability().startswith("AVX512"):  # reads ATEN_CPU_CAPABILITY
        return False
    onednn_isa = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    return onednn_isa in ("ALL", "DEFAULT") or any(part in onednn_isa for part in ("BF16", "AMX", "AVX10"))


def _check(name: str) -> None:
    if name not in PRECISIONS:
        raise ScratchLLMError(f"precision '{name}' is not one of {', '.join(PRECISIONS)}")


def resolve_precision(name: str, device: torch.device) -> str:
    """The training precision: fp32 or bf16 (autocast, fp32 weights)."""
    _check(name)
    if name == "auto":
        forced = os.environ.get("SCRATCHLLM_PRECISION", "")
        if forced:
            if forced not in DTYPES:
                raise ScratchLLMError(f"SCRATCHLLM_PRECISION='{forced}' is not fp32 or bf16; unset it or use one of those")
            return forced
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return name


def inference_dtype(name: str, device: torch.device) -> torch.dtype:
    """The dtype inference holds weights, activations and the KV cache in: auto is bf16 where the hardware
    multiplies bf16 natively (a GPU that supports it, a CPU with AVX512-BF16 or AMX: decoding SmolLM2 there
    is 1.5-1.65x faster than in fp32, benchmarks/chat.py), fp32 elsewhere. int8, int4 (weight-only, on the
    CPU): the projections' weights in that form (ModelSpec.quantize), everything else in fp32, which is what
    their kernels (layers/q8_0.c, q4_1.c) and the one-call decoding step (layers/llama_step.c) take."""
    if name in ("int8", "int4"):
        if device.type != "cpu":
            raise ScratchLLMError(f"--precision {name} runs on the CPU (its weight-only {name} kernel); use bf16 on a GPU")
        name = "fp32"
    _check(name)
    if name == "auto":
        fast = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_fast_bf16()
        name = "bf16" if fast else "fp32"
    return DTYPES[name]


def autocast(precision: str, device: torch.device):
    """Matmuls in bf16 with fp32 weights and optimizer state; losses and softmax stay in fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def tf32_matmuls(device: torch.device):
    """On a GPU, fp32 matmuls and convolutions in TF32 (10-bit mantissa products, fp32 sums) while
    training, as nanoGPT does; restored afterwards, so inference keeps exact fp32 (parity to 1e-5)."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def return_freed_memory() -> None:
    """Hand the C heap's freed memory back to the operating system (glibc's malloc_trim; elsewhere nothing).

    Loading a model makes and frees large transients (a GGUF file dequantized to fp32, then cast or
    quantized), and glibc keeps freed heap memory for later: SmolLM2 loaded in int4 held 1,500 MB resident
    where its tensors are 214 MB, and 481 MB after this (2026-12-03)."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): its allocator returns memory its own way
        pass
