"""Why our Linear stores W as (in, out): one-row products (decoding) against nn.Linear's (out, in).

    python benchmarks/linear_layout.py            # the small models' shapes
    python benchmarks/linear_layout.py --decode   # SmolLM2-135M's: read bandwidth of each layout
    python benchmarks/linear_layout.py --pack-sizes   # where a oneDNN-packed weight starts to pay
    python benchmarks/linear_layout.py --int8     # int8 and int4 weights (--precision int8|int4) against bf16 and fp32

Decoding multiplies a single row by each weight matrix. For each shape of the small Llamas
(llama-bpe-baby: 128 wide, MLP 352, vocabulary 2048; the 256-wide one of benchmarks/generate.py),
it times x @ W with W stored (in, out) (ours) and F.linear(x, W) with W stored (out, in)
(nn.Linear's), cycling over several copies of the matrix so that, as in a real decoding step, the
weights come from the shared cache rather than the core's own. Then the same for training-sized
products (768 rows, forward and backward, as in the char GPT), where the layout should not matter.
Prints microseconds per product and the ratio nn.Linear / ours (above 1: ours is faster).

`--decode`: one decoding step's products of SmolLM2-135M (30 layers of 576 -> 960 q/k/v, 576 -> 576,
576 -> 3072 gate+up, 1536 -> 576, then the 49152-token head: 134.5M weights, far past any cache),
in fp32 and bf16, with W (in, out), W (out, in) through F.linear, and W packed by oneDNN
(`layers/linear.py`, pack_for_inference). Prints GB/s of weights read, beside a plain sum over
the same tensors (the machine's read bandwidth for them).

`--pack-sizes`: one-row products x @ W against the oneDNN-packed W, fp32 and bf16, from 128 x 256 to
576 x 3072, cycling through 8 MB of copies (from the caches, as a small model decodes).

`--int8`: one-row products at SmolLM2-135M's shapes (and one larger) with the weight in int8 groups of 32
(`layers/quantized.py`, Int8Weight: Q8_0 blocks through our q8_0.c, fp32 input), in torch's int8 per row
(`_weight_int8pack_mm`, bf16 input, and fed fp32), in int4 groups of 32 (Int4Weight: Q4 blocks through our
q4_1.c, fp32 input) and in torch's int4 kernel (`_weight_int4pack_mm_for_cpu`, bf16 input and scales, and fed
fp32) against bf16 F.linear, the oneDNN-packed fp32 and bf16 weights (where this CPU packs bf16); then the
same products with 64 rows (a prefill).
"""

from __future__ import annotations

import argparse
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


def decode_step(dtype: torch.dtype) -> None:
    from scratchllm.layers.linear import PackedWeight, can_pack

    shapes = [(576, 960), (576, 576), (576, 3072), (1536, 576)] * 30 + [(576, 49152)]
    ours = [torch.randn(d_in, d_out, dtype=dtype) for d_in, d_out in shapes]  # (in, out)
    theirs = [w.t().contiguous() for w in ours]  # (out, in)
    packed = [PackedWeight(w, w) for w in theirs] if can_pack(ours[0]) else None
    nbytes = sum(w.numel() * w.element_size() for w in ours)
    print(f"{dtype}, {nbytes / 1e6:.0f} MB of weights per step:")

    def report(label: str, fn) -> None:
        seconds = per_call_us(fn, 1, repeats=10) / 1e6
        print(f"  {label:<32} {seconds * 1e3:6.1f} ms   {nbytes / seconds / 1e9:5.1f} GB/s")

    report("sum (bandwidth)", lambda: [w.sum() for w in ours])
    for n_rows in (1, 16):  # one stream; the server's engine with 16 requests
        rows = {d: torch.randn(n_rows, d, dtype=dtype) for d in (576, 1536)}
        report(f"{n_rows:>2} row(s)  (in, out), x @ W", lambda: [rows[w.size(0)] @ w for w in ours])
        report(f"{n_rows:>2} row(s)  (out, in), F.linear", lambda: [F.linear(rows[w.size(1)], w) for w in theirs])
        if packed is not None:
            report(f"{n_rows:>2} row(s)  oneDNN packed", lambda: [p(rows[w.size(1)], None) for p, w in zip(packed, theirs)])


def pack_sizes() -> None:
    from scratchllm.layers.linear import PackedWeight

    print("one row, microseconds per product; ratio above 1: packed is faster")
    for dtype in (torch.float32, torch.bfloat16):
        for d_in, d_out in [(128, 256), (352, 128), (128, 2048), (384, 1152), (576, 576), (576, 960),
                            (1024, 1024), (576, 3072)]:
            copies = max(2, min(64, int(8e6 / (d_in * d_out * 4))))  # ~8 MB: in cache, as a small model's weights
            ours = [torch.randn(d_in, d_out, dtype=dtype) for _ in range(copies)]
            packed = [PackedWeight(w.t().contiguous(), w) for w in ours]
            x = torch.randn(1, 1, d_in, dtype=dtype)
            reps = 20
            plain = per_call_us(lambda: [x @ w for _ in range(reps) for w in ours], reps * copies)
            fast = per_call_us(lambda: [p(x, None) for _ in range(reps) for p in packed], reps * copies)
            print(f"  {str(dtype):<15} {d_in:>4} x {d_out:<5} ({d_in * d_out / 1e6:4.2f}M)  x @ W {plain:6.1f}   "
                  f"packed {fast:6.1f}   {plain / fast:5.2f}x")


def int8_sizes() -> None:
    from scratchllm.layers.linear import PackedWeight, can_pack
    from scratchllm.layers.quantized import Int4Weight, Int8Weight, q4_1, q8_0

    for rows in (1, 64):
        print(f"{rows} row(s), microseconds per product, {torch.get_num_threads()} threads; ratios: int8 and int4 "
              "against the best float product")
        for d_in, d_out in [(576, 1536), (1536, 576), (576, 960), (576, 49152), (2048, 8192)]:
            copies = max(2, int(64e6 / (d_in * d_out * 4)))  # ~64 MB of fp32 copies: from memory, as SmolLM2 decodes
            w = [torch.randn(d_out, d_in) for _ in range(copies)]  # (out, in)
            x32 = torch.randn(rows, d_in)
            xb = x32.bfloat16()
            times = {}
            q8 = [Int8Weight(q8_0(t)) for t in w]
            q4 = [Int4Weight(q4_1(t)) for t in w]
            # torch's int4 kernel on the same codes: its packed layout, scale and zero (= m + 8 d) in bf16
            torch_q4 = [(torch.ops.aten._convert_weight_to_int4pack_for_cpu(m._codes().to(torch.int32), 1),
                         torch.stack([m.scale.t(), (m.min + 8 * m.scale).t()], -1).bfloat16().contiguous()) for m in q4]
            # torch's int8 kernel, one scale per row (what Int8Weight was before Q8_0 blocks and q8_0.c)
            per_row = [(torch.round(t / (t.abs().amax(1, keepdim=True) / 127)).to(torch.int8),
                        (t.abs().amax(1) / 127).bfloat16()) for t in w]
            times["int8"] = per_call_us(lambda: [m(x32, None) for m in q8], copies)
            times["int8 torch per row"] = per_call_us(lambda: [torch.ops.aten._weight_int8pack_mm(xb, q, s) for q, s in per_row], copies)
            times["int4"] = per_call_us(lambda: [m(x32, None) for m in q4], copies)
            times["int4 torch"] = per_call_us(lambda: [torch.ops.aten._weight_int4pack_mm_for_cpu(xb, p, 32, sz)
                                                       for p, sz in torch_q4], copies)
            if rows == 1:  # torch's kernels on fp32 input, without the cast to bf16 (not what the model runs)
                times["int8 torch per row (fp32 x)"] = per_call_us(lambda: [torch.ops.aten._weight_int8pack_mm(x32, q, s.float()) for q, s in per_row], copies)
                times["int4 torch (fp32 x)"] = per_call_us(lambda: [torch.ops.aten._weight_int4pack_mm_for_cpu(
                    x32, p, 32, sz.float()) for p, sz in torch_q4], copies)
            wb = [t.bfloat16() for t in w]
            times["bf16 F.linear"] = per_call_us(lambda: [F.linear(xb, t) for t in wb], copies)
            p32 = [PackedWeight(t, t) for t in w]
            times["fp32 packed"] = per_call_us(lambda: [p(x32, None) for p in p32], copies)
            if can_pack(wb[0]):
                pb = [PackedWeight(t, t) for t in wb]
                times["bf16 packed"] = per_call_us(lambda: [p(xb, None) for p in pb], copies)
            best_other = min(v for k, v in times.items() if not k.startswith("int"))
            print(f"  {d_in:>5} x {d_out:<6} " + "  ".join(f"{k} {v:7.1f}" for k, v in times.items())
                  + f"   int8 {best_other / times['int8']:4.2f}x, int4 {best_other / times['int4']:4.2f}x")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--decode", action="store_true", help="SmolLM2-135M's decoding step, fp32 and bf16")
    ap.add_argument("--pack-sizes", action="store_true", help="where packing a weight for oneDNN pays")
    ap.add_argument("--int8", action="store_true", help="int8 and int4 weights against bf16 and fp32")
    args = ap.parse_args()
    if args.int8:
        with torch.no_grad():
            return int8_sizes()
    if args.pack_sizes:
        with torch.no_grad():
            return pack_sizes()
    if args.decode:
        with torch.no_grad():
            for dtype in (torch.float32, torch.bfloat16):
                decode_step(dtype)
        return
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
