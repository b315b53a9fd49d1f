"""Why our Linear stores W as (in, out): one-row products (decoding) against nn.Linear's (out, in).

    python benchmarks/linear_layout.py

Decoding multiplies a single row by each weight matrix. For each shape of the small Llamas
(llama-bpe-baby: 128 wide, MLP 352, vocabulary 2048; the 256-wide one of benchmarks/generate.py),
it times x @ W with W stored (in, out) (ours) and F.linear(x, W) with W stored (out, in)
(nn.Linear's), cycling over several copies of the matrix so that, as in a real decoding step, the
weights come from the shared cache rather than the core's own. Then the same for training-sized
products (768 rows, forward and backward, as in the char GPT), where the layout should not matter.
Prints microseconds per product and the ratio nn.Linear / ours (above 1: ours is faster).
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

COPIES = 8  # distinct matrices cycled through: each one is out of the core's L2 when it comes round again


def per_call_us(fn, calls: int, repeats: int = 5) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best / calls * 1e6


def one_row(d_in: int, d_out: int) -> tuple[float, float]:
    x = torch.randn(1, 1, d_in)
    ours = [torch.randn(d_in, d_out) for _ in range(COPIES)]  # (in, out)
    theirs = [w.t().contiguous() for w in ours]  # (out, in), as nn.Linear
    reps = 50
    t_ours = per_call_us(lambda: [x @ w for _ in range(reps) for w in ours], reps * COPIES)
    t_theirs = per_call_us(lambda: [F.linear(x, w) for _ in range(reps) for w in theirs], reps * COPIES)
    return t_ours, t_theirs


def training(rows: int, d_in: int, d_out: int) -> tuple[float, float]:
    x = torch.randn(rows, d_in, requires_grad=True)
    w_ours = torch.randn(d_in, d_out, requires_grad=True)
    w_theirs = w_ours.detach().t().contiguous().requires_grad_()
    grad = torch.randn(rows, d_out)
    t_ours = per_call_us(lambda: (x @ w_ours).backward(grad), 1)
    t_theirs = per_call_us(lambda: F.linear(x, w_theirs).backward(grad), 1)
    return t_ours, t_theirs


def main():
    torch.set_grad_enabled(True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32")
    print("one row (decoding), microseconds per product:")
    with torch.no_grad():
        for d_in, d_out, what in [(128, 256, "baby qkv"), (128, 704, "baby gate+up"), (352, 128, "baby down"),
                                  (128, 2048, "baby head"), (256, 1376, "wide gate+up"), (688, 256, "wide down"),
                                  (256, 2048, "wide head")]:
            ours, theirs = one_row(d_in, d_out)
            print(f"  {what:<13} {d_in:>4} -> {d_out:<5} (in, out) {ours:7.1f}   (out, in) {theirs:7.1f}   {theirs / ours:5.2f}x")
    print("training (768 rows, forward + backward), microseconds per product:")
    for d_in, d_out in [(384, 1152), (384, 1536), (1536, 384), (384, 65)]:
        ours, theirs = training(768, d_in, d_out)
        print(f"  {d_in:>4} -> {d_out:<5} (in, out) {ours:9.0f}   (out, in) {theirs:9.0f}   {theirs / ours:5.2f}x")


if __name__ == "__main__":
    main()
