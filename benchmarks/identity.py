"""Does a fine-tune know its new name? The identity demo's acceptance check (issue 21).

Asks a base model and a fine-tuned run 20 questions about themselves that are not in the identity set's
training records (but "Who built you?", which the issue names and which the set holds, with an answer
that names only the author), greedily, through each model's own chat template (SmolLM2's puts its default
system prompt, "You are a helpful AI assistant named SmolLM...", before every conversation), and counts
the replies that contain the new name (and, apart, the author).

    python benchmarks/identity.py --run runs/identity --name Marlowe --author "Harbor Labs"
"""

from __future__ import annotations

import argparse
import json
import time

HELD_OUT = [
    "Introduce yourself.",
    "Who built you?",
    "What should I call you?",
    "Please tell me your name.",
    "Who am I talking to?",
    "What's your name, assistant?",
    "Hey! Who is this?",
    "Could you say who you are in one sentence?",
    "Good morning! Who are you?",
    "Which AI assistant are you?",
    "Tell me who you are and who made you.",
    "What name were you given?",
    "Before we start, what is your name?",
    "Describe yourself briefly.",
    "Are you SmolLM?",
    "Are you an assistant made by Hugging Face?",
    "Who are you, exactly?",
    "How should I address you?",
    "Identify yourself, please.",
    "Nice to meet you. What do people call you?",
]


def ask_all(source: str, max_tokens: int) -> tuple[list[str], float]:
    from scratchllm import load_pretrained
    from scratchllm.generate import Sampling

    lm = load_pretrained(source, precision="fp32")
    start = time.perf_counter()
    replies = [lm.complete(lm.encode_chat([{"role": "user", "content": q}]), Sampling(max_tokens=max_tokens, temperature=0.0)).text
               for q in HELD_OUT]
    return replies, time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="the fine-tuned run")
    p.add_argument("--base", default="smollm2-135m-instruct")
    p.add_argument("--name", required=True)
    p.add_argument("--author", default=None)
    p.add_argument("--max-tokens", type=int, default=48)
    p.add_argument("--json", default=None, help="also write the replies here")
    args = p.parse_args()
    from scratchllm.data.chat_data import load_conversations, DataConfig

    trained = {c[-2]["content"].strip().lower() for c in load_conversations("identity", DataConfig(name="x", author="y"))}
    overlap = [q for q in HELD_OUT if q.strip().lower() in trained]
    results = {}
    for label, source in (("base", args.base), ("tuned", args.run)):
        replies, seconds = ask_all(source, args.max_tokens)
        named = sum(args.name.lower() in r.lower() for r in replies)
        authored = sum(args.author.lower() in r.lower() for r in replies) if args.author else None
        results[label] = {"replies": replies, "name": named, "author": authored, "seconds": seconds}
        print(f"{label:5s} {source}: the name {args.name!r} in {named} of {len(HELD_OUT)} replies"
              + (f", the author in {authored}" if authored is not None else "") + f" ({seconds:.0f} s)")
        for q, r in zip(HELD_OUT, replies):
            print(f"   [{'x' if args.name.lower() in r.lower() else ' '}] {q} -> {' '.join(r.split())[:110]}")
    print(f"questions also in the training records: {overlap or 'none'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"questions": HELD_OUT, **results}, f, indent=1)


if __name__ == "__main__":
    main()
