"""Matrix-product throughput on this machine: fp32 against bf16, at the baby GPT's shapes and a large one.

    python benchmarks/matmul.py

The ceiling for any bf16 speed-up of training: a step can get no faster than its matmuls do.
"""

from __future__ import annotations

import time

import torch

SHAPES = [(768, 128, 384), (768, 128, 512), (768, 512, 128), (4096, 1024, 1024)]  # (M, K, N)


def gflops(m: int, k: int, n: int, dtype: torch.dtype) -> float:
    a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
    reps = max(5, int(2e10 / (2 * m * k * n)))
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(reps):
            a @ b
        best = min(best, (time.perf_counter() - start) / reps)
    return 2 * m * k * n / best / 1e9


def main():
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'M x K x N':<22}{'fp32 GFLOP/s':>14}{'bf16 GFLOP/s':>14}{'bf16/fp32':>11}")
    for m, k, n in SHAPES:
        f32, b16 = gflops(m, k, n, torch.float32), gflops(m, k, n, torch.bfloat16)
        print(f"{f'{m} x {k} x {n}':<22}{f32:>14.0f}{b16:>14.0f}{b16 / f32:>10.2f}x")


if __name__ == "__main__":
    main()
