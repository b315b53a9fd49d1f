"""Device and numeric precision: bf16 autocast where the hardware does bf16 fast, else fp32."""

from __future__ import annotations

import contextlib
import functools

import torch

from scratchllm.errors import ScratchLLMError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ScratchLLMError(f"device '{name}' asked for, but no CUDA device is available; use --set device=cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ScratchLLMError(f"unknown device '{name}'; use auto, cpu or cuda") from None


@functools.lru_cache(maxsize=None)
def cpu_has_fast_bf16() -> bool:
    """True when the CPU multiplies bf16 natively (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slow."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return name


def autocast(precision: str, device: torch.device):
    """Matmuls in bf16 with fp32 weights and optimizer state; losses and softmax stay in fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
