"""The quantized products alone: our Q4 and Q8_0 kernels against torch's int4 / int8 CPU kernels and a float product.

    python benchmarks/quantized_kernels.py [--rows 1,2,4,8,16,32,64] [--threads 2]

At SmolLM2-135M's shapes (in x out: 576 x 960 the fused q/k/v, 576 x 3072 gate and up, 1536 x 576 down), for
each number of rows (1 a lone decoding step, 2-8 the server's batched steps, 16-64 a short prefill), best of 3:
  ours int4      Int4Weight (layers/q4_1.c), fp32 activations
  torch int4     torch.ops.aten._weight_int4pack_mm_for_cpu on the same codes (bf16 activations, scales and
                 zero points: what we used before q4_1.c)
  ours int8      Int8Weight (layers/q8_0.c, Q8_0 blocks of 32)
  torch int8     torch.ops.aten._weight_int8pack_mm (one scale per output row, fp32 activations)
  fp32           F.linear with the dequantized fp32 weight, ready (no dequantization counted)
Prints microseconds and the ratio torch / ours (above 1: ours faster). All in one process; the matrices fit
in the caches, so this is the products' arithmetic, not the memory bound a whole model's step meets.
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from scratchllm.layers.quantized import GROUP, Int4Weight, Int8Weight, q4_1, q8_0

SHAPES = [(576, 960), (576, 3072), (1536, 576)]  # (in, out)


def best_us(fn, calls: int = 50) -> float:
    for _ in range(5):
        fn()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls * 1e6)
    return best


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1,2,4,8,16,32,64")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu {torch.backends.cpu.get_cpu_capability()}; "
          "microseconds, best of 3")
    print(f"{'in x out':>11} {'rows':>4} | {'ours int4':>9} {'torch int4':>10} {'ratio':>6} | {'ours int8':>9} "
          f"{'torch int8':>10} {'ratio':>6} | {'fp32':>7}")
    torch.manual_seed(0)
    for k, n in SHAPES:
        w = torch.randn(n, k) * 0.02
        groups = q4_1(w)
        int4 = Int4Weight(groups)
        # torch's int4 kernel: codes packed its way, (scale, zero) with zero = m + 8 d (its w = (q - 8) d + zero)
        halves = int4.codes.view(n, -1, 16)  # GGUF's order: byte j holds code j (low nibble) and j + 16
        codes = torch.cat([halves & 0x0F, halves >> 4], -1).view(n, k)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.int(), 1)
        scale_zero = torch.stack([groups.scale.t(), (groups.min + 8 * groups.scale).t()], -1).bfloat16().contiguous()
        int8 = Int8Weight(q8_0(w))
        channel_scale = w.abs().amax(1) / 127
        channel_codes = torch.round(w / channel_scale[:, None]).to(torch.int8)
        dense = groups.dequantized()
        for m in (int(r) for r in args.rows.split(",")):
            x = torch.randn(m, k)
            xb = x.bfloat16()
            t4 = best_us(lambda: int4(x, None))
            t4ref = best_us(lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(xb, packed, GROUP, scale_zero))
            t8 = best_us(lambda: int8(x, None))
            t8ref = best_us(lambda: torch.ops.aten._weight_int8pack_mm(x, channel_codes, channel_scale))
            tf = best_us(lambda: F.linear(x, dense))
            print(f"{f'{k} x {n}':>11} {m:>4} | {t4:>9.0f} {t4ref:>10.0f} {t4ref / t4:>5.2f}x | {t8:>9.0f} "
                  f"{t8ref:>10.0f} {t8ref / t8:>5.2f}x | {tf:>7.0f}", flush=True)


if __name__ == "__main__":
    main()
