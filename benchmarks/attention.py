"""Attention forward + backward: torch's fused scaled_dot_product_attention against the plain
matmul-softmax path of scratchllm.layers.attention, at the shapes of our char presets.

    python benchmarks/attention.py            # training shapes
    python benchmarks/attention.py --kernel   # bf16 from qkv: torch's two paths against our kernel
    python benchmarks/attention.py --decode   # one query over S cached keys (SmolLM2's heads, bf16)

Prints milliseconds per forward+backward of each path and the ratio (fused / plain), in fp32
and under bf16 autocast. This is the measurement behind `use_fused_kernel`.

`--kernel`: in bf16, from the fused qkv projection's output (B, T, 3 H D) to the heads joined again
(B, T, H D), as `Attention` runs it: torch's fused and plain paths (with their split and join of the
heads) against our kernel (layers/causal_attention.c), which starts and ends in those layouts. The
measurement behind causal_attention.MAX_CONTEXT; needs a CPU with AVX512-BF16.

`--decode`: microseconds per call of `attend` for one bf16 query (9 heads over 3 kv heads of 64,
as SmolLM2) against S cached keys, with the one-query fp32 path on and off: the measurement behind
`DECODE_IN_FP32_MAX_KEYS`.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from scratchllm.layers import attention

# (batch, heads, time, head_dim): the two char presets, then a grid around them
SHAPES = {"gpt-char-baby": (12, 4, 64, 32), "gpt-char": (64, 6, 256, 64),
          "T128 D32": (12, 4, 128, 32), "T128 D64": (12, 4, 128, 64), "T256 D32": (12, 4, 256, 32),
          "T64 D64": (12, 4, 64, 64), "T512 D64": (4, 4, 512, 64)}


def ms_per_call(step, reps: int) -> float:
    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(reps):
        step()
    return (time.perf_counter() - start) / reps * 1e3


def time_path(fused: bool, shape, precision: str, reps: int) -> float:
    attention.use_fused_kernel = lambda q, k: fused
    B, H, T, D = shape
    q, k, v = (torch.randn(B, H, T, D, requires_grad=True) for _ in range(3))
    grad = torch.randn(B, H, T, D)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = attention.attend(q, k, v, causal=True)
        out.backward(grad.to(out.dtype))

    return ms_per_call(step, reps)


def time_from_qkv(path: str, shape, reps: int) -> float:
    """ms per forward + backward from qkv (B, T, 3 H D) bf16 to y (B, T, H D), as Attention runs it"""
    from scratchllm.layers import causal_attention

    B, H, T, D = shape
    qkv = torch.randn(B, T, 3 * H * D, dtype=torch.bfloat16, requires_grad=True)
    grad = torch.randn(B, T, H * D, dtype=torch.bfloat16)
    attention.use_fused_kernel = lambda q, k: path == "fused"

    def step():
        if path == "kernel":
            y = causal_attention.causal_attention(qkv, H)
        else:
            q, k, v = qkv.view(B, T, 3 * H, D).transpose(1, 2).split_with_sizes([H, H, H], dim=1)
            y = attention.attend(q, k, v, causal=True).transpose(1, 2).reshape(B, T, H * D)
        y.backward(grad)

    return ms_per_call(step, reps)


def kernel() -> None:
    from scratchllm.layers import causal_attention

    if not causal_attention.kernel_available():
        print("error: our attention kernel needs a C compiler and a CPU with AVX512-BF16; run without --kernel", file=sys.stderr)
        raise SystemExit(2)
    original = attention.use_fused_kernel
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; causal attention from qkv, bf16, forward + backward")
    print(f"{'shape':<15}{'scores':>8}{'fused ms':>10}{'plain ms':>10}{'kernel ms':>11}{'best torch/kernel':>19}")
    for name, shape in SHAPES.items():
        B, H, T, D = shape
        reps = max(3, int(40 * 64 * 64 * 12 / (B * T ** 2)))
        ms = {path: min(time_from_qkv(path, shape, reps) for _ in range(3)) for path in ("fused", "plain", "kernel")}
        print(f"{name:<15}{B * H * T * T / 2**20:>7.1f}M{ms['fused']:>10.2f}{ms['plain']:>10.2f}{ms['kernel']:>11.2f}"
              f"{min(ms['fused'], ms['plain']) / ms['kernel']:>18.2f}x")
    attention.use_fused_kernel = original


def decode() -> None:
    default = attention.DECODE_IN_FP32_MAX_KEYS
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; one bf16 query, 9 heads, 3 kv heads, d 64")
    print(f"{'keys S':>8}{'bf16 us':>10}{'fp32 us':>10}{'fp32/bf16':>11}")
    with torch.inference_mode():
        for S in (32, 128, 256, 512, 1024, 2048):
            q = torch.randn(1, 9, 1, 64, dtype=torch.bfloat16)
            k, v = (torch.randn(1, 3, S, 64, dtype=torch.bfloat16) for _ in range(2))
            us = {}
            for limit in (0, 10**9):
                attention.DECODE_IN_FP32_MAX_KEYS = limit
                best = float("inf")
                for _ in range(5):
                    start = time.perf_counter()
                    for _ in range(500):
                        attention.attend(q, k, v, causal=True)
                    best = min(best, (time.perf_counter() - start) / 500 * 1e6)
                us[limit] = best
            print(f"{S:>8}{us[0]:>10.1f}{us[10**9]:>10.1f}{us[10**9] / us[0]:>10.2f}x")
    attention.DECODE_IN_FP32_MAX_KEYS = default


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decode", action="store_true", help="one-query attention in bf16, with and without fp32")
    ap.add_argument("--kernel", action="store_true", help="bf16 from qkv: torch's fused and plain paths against our kernel")
    args = ap.parse_args()
    if args.decode:
        return decode()
    if args.kernel:
        return kernel()
    original = attention.use_fused_kernel
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; causal attention, forward + backward")
    print(f"{'shape':<15}{'precision':<11}{'fused ms':>10}{'plain ms':>10}{'fused/plain':>13}")
    for name, shape in SHAPES.items():
        reps = max(3, int(40 * 64 * 64 * 12 / (shape[0] * shape[2] ** 2)))
        for precision in ("fp32", "bf16"):
            fused = min(time_path(True, shape, precision, reps) for _ in range(3))
            plain = min(time_path(False, shape, precision, reps) for _ in range(3))
            print(f"{name:<15}{precision:<11}{fused:>10.2f}{plain:>10.2f}{fused / plain:>12.2f}x")
    attention.use_fused_kernel = original


if __name__ == "__main__":
    main()
