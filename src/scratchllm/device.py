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


QUANTIZED_PRECISIONS = ("int8", "int4")  # inference with our weight-only kernels (layers/quantized.py): CPU only


def resolve_device(name: str, precision: str | None = None) -> torch.device:
    """auto, cpu, cuda or cuda:N -> a device that exists here, or a one-line error. auto is CUDA when present,
    but the CPU for a precision that runs there only (int8, int4), as `sample --precision int8` on a GPU machine."""
    if name == "auto":
        gpu = torch.cuda.is_available() and precision not in QUANTIZED_PRECISIONS
        return torch.device("cuda" if gpu else "cpu")
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
    if name in QUANTIZED_PRECISIONS:
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


def _libc():
    import ctypes
    import ctypes.util

    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def keep_freed_memory() -> None:
    """Let the C heap keep the memory it frees for the next allocation, for the rest of the process (glibc's
    mallopt; elsewhere nothing).

    glibc serves a block above its mmap threshold (128 KB, raised as such blocks are freed) with fresh pages
    from the operating system, returns it when freed, and trims the heap's free top: a training step, which
    frees and makes again the same activations every step, then touches new pages every step, each a page
    fault and a page of zeros. Measured on the CPU (AMD EPYC AVX512-BF16, 2 threads, bf16, 2026-12-03):
    `gpt-char` shapes at batch 16, 52,000-62,000 page faults a step and 1,286-1,388 ms, against 0-308 and
    1,130-1,189 ms with the thresholds raised (peak RSS the same, 1.42 GB); `gpt-char-baby`, 2,600 faults a
    step by default, 0-1 after. Blocks up to 256 MB then come from the heap, and free memory stays with the
    process (up to 1 GB of it at the heap's top) until it ends: right for a training run, which makes the same
    tensors again at the next step. (Not every pattern is cured: the kernel may still reclaim idle heap pages,
    and a plain loop of one 16 MB tensor made and freed faulted alike with and without this; the training
    step is what was measured.)"""
    try:
        libc = _libc()
        libc.mallopt(-3, 256 << 20)  # M_MMAP_THRESHOLD: blocks this large and larger from mmap, not the heap
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: free memory at the heap's top kept up to this much
    except (OSError, AttributeError):  # not glibc (macOS, musl): its allocator keeps memory its own way
        pass


def return_freed_memory() -> None:
    """Hand the C heap's freed memory back to the operating system (glibc's malloc_trim; elsewhere nothing).

    Loading a model makes and frees large transients (a GGUF file dequantized to fp32, then cast or
    quantized), and glibc keeps freed heap memory for later: SmolLM2 loaded in int4 held 1,500 MB resident
    where its tensors are 214 MB, and 481 MB after this (2026-12-03)."""
    try:
        _libc().malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): its allocator returns memory its own way
        pass


def loaded_libgomps() -> list[str]:
    """The files of every libgomp this process has loaded, whatever they are named; none where there is no
    /proc/self/maps (not Linux: macOS's torch runs LLVM's OpenMP, which does not throttle as libgomp does)."""
    try:
        with open("/proc/self/maps") as maps:
            return sorted({line.split()[-1] for line in maps if "libgomp" in line.rsplit("/", 1)[-1]})
    except OSError:
        return []


def release_openmp_threads() -> bool:
    """Stop the OpenMP worker threads this thread's parallel work started (libgomp's omp_pause_resource_all, soft);
    True if a libgomp was found and did so. Call it on a thread that hands the model to another one.

    torch's CPU kernels and our C step run on libgomp, which keeps a pool of worker threads for each thread that
    starts parallel work, and, once it manages more threads than there are cores, stops spinning at its barriers
    and sleeps in the kernel at each one instead (its "throttled" wait). The server loads the model on the main
    thread (a pool of cores - 1 workers, idle from then on) and steps it on the engine's own (a second pool): on 2
    cores that made every barrier of the C step a sleep and a wake-up, and SmolLM2's bf16 step took 18-22 ms on
    the engine's thread where it takes 9-11 on the main one; with the main thread's pool released, 13.3 against
    11.3 (AMD EPYC, 2 threads, 2026-12-03). Work started again on this thread makes a new pool (speed, not
    correctness, is what that costs).

    Every libgomp in the process is asked, not only the first that /proc/self/maps lists: another package may
    bring its own copy (scikit-learn's wheel does, and lm-eval imports it), and pausing that one alone left
    torch's workers running (seen on an Intel Xeon, 2026-12-04)."""
    import ctypes

    released = False
    for path in loaded_libgomps():
        try:
            released |= ctypes.CDLL(path).omp_pause_resource_all(1) == 0  # 1: omp_pause_soft (the pool, not the library)
        except (OSError, AttributeError):  # a libgomp older than OpenMP 5.0's pause
            pass
    return released
