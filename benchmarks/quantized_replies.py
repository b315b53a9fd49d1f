"""Do int8 or int4 weights change what SmolLM2 says? Greedy replies with `--precision int8` (or int4) against
the same model in bf16 (or fp32), on 10 prompts (issue 22's acceptance).

For each prompt, both paths decode 32 tokens greedily through the model's chat template. Where the replies
first differ, the script scores that shared prefix with both models and prints the reference model's two
best next tokens and the gap between their logits, beside the quantized model's logit error on that same
prefix (root mean square over the vocabulary, and its largest): a gap below the RMS error is a tie within
the rounding, not a different answer. (The gap is always below the error on those two tokens, or the
quantized model would not have picked the other one: that comparison would prove nothing.) Against bf16,
whose own logits move in steps of 0.125 at SmolLM2's sizes, the same two tokens' gap in fp32 is printed too:
a bf16 gap of a step or two where fp32's is below the quantized model's error is bf16's rounding, not int8's.

    python benchmarks/quantized_replies.py [--precision int8|int4] [--reference bf16|fp32] [--tokens 32]
"""

from __future__ import annotations

import argparse

import torch

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Explain what a neural network is in two sentences.",
    "Give me three tips for sleeping better.",
    "What is 17 times 3?",
    "Translate 'good morning' into Spanish.",
    "Who wrote Romeo and Juliet?",
    "Describe a cat to someone who has never seen one.",
    "What should I pack for a weekend hiking trip?",
    "Why is the sky blue?",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--reference", default="bf16", choices=["bf16", "fp32"])
    ap.add_argument("--precision", default="int8", choices=["int8", "int4"])
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    import scratchllm
    from scratchllm.generate import Sampling

    ref = scratchllm.load_pretrained(args.model, precision=args.reference)
    q8 = scratchllm.load_pretrained(args.model, precision=args.precision)
    exact = scratchllm.load_pretrained(args.model, precision="fp32") if args.reference == "bf16" else ref
    greedy = Sampling(max_tokens=args.tokens, temperature=0.0)
    equal = ties = 0
    print(f"{args.model}: greedy, {args.tokens} tokens, {args.precision} against {args.reference}")
    for prompt in PROMPTS:
        ids = ref.encode_chat([{"role": "user", "content": prompt}])
        a = ref.complete(ids, greedy).tokens
        b = q8.complete(ids, greedy).tokens
        first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)
        if first is None and len(a) == len(b):
            equal += 1
            print(f"  same {len(a)} tokens  {prompt!r}: {ref.tokenizer.decode(a)[:70]!r}")
            continue
        first = min(len(a), len(b)) if first is None else first
        prefix = torch.tensor([ids + a[:first]])
        with torch.no_grad():
            lr = ref.model(prefix)[0, -1].float()
            lq = q8.model(prefix)[0, -1].float()
            l32 = exact.model(prefix)[0, -1].float()
        top2 = lr.topk(2)
        gap = (top2.values[0] - top2.values[1]).item()
        exact_gap = (l32[top2.indices[0]] - l32[top2.indices[1]]).item()
        rms, err = (lq - lr).pow(2).mean().sqrt().item(), (lq - lr).abs().max().item()
        ties += gap <= rms
        print(f"  differ at token {first}: {args.reference}'s top two {ref.tokenizer.decode([top2.indices[0].item()])!r} / "
              f"{ref.tokenizer.decode([top2.indices[1].item()])!r}, logit gap {gap:.3f}; {args.precision}'s logit error there "
              f"RMS {rms:.3f}, largest {err:.3f} ({'a tie within rounding' if gap <= rms else 'NOT a tie'})"
              + (f"; the same two in fp32: gap {exact_gap:.3f}" if exact is not ref else "") + f"  {prompt!r}")
    print(f"{equal} of {len(PROMPTS)} replies equal (all {args.tokens} tokens, or to the same end of turn); {ties} of the other "
          f"{len(PROMPTS) - equal} first differ at a tie within the {args.precision} rounding")


if __name__ == "__main__":
    main()
