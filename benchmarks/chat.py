"""SmolLM2-135M-Instruct on this CPU: prefill and decode speed of scratchllm, transformers and llama.cpp;
with --turns, the time to first token of a conversation's turns with the KV cache kept (scratchllm chat's
way) and with every turn prefilled cold.

    python benchmarks/chat.py [--new-tokens 128] [--rounds 3] [--threads 2]
    python benchmarks/chat.py --turns 10 [--rounds 3] [--precision fp32|bf16|auto] [--user-tokens 120] [--reply-tokens 24]
    python benchmarks/chat.py --memory [--new-tokens 128]

All in one process, batch 1, greedy, on the same weights: the named model's Q4_1 GGUF, dequantized
once. scratchllm and transformers' `generate` run in fp32 and in bf16 (the weights and the KV cache in
that dtype), scratchllm also in int8 (`--precision int8`: the Q4_1 values rounded again to int8 in groups of
32, Q8_0's rule, the file's Q8_0 head as stored) and in int4 (`--precision int4`: the file's Q4_1 blocks and
Q8_0 head as they are stored). A Q8_0 file of the same model is written (the dequantized weights through
`save_gguf(..., "q8_0")`, into a temporary folder) and run in int8 as stored ("int8 Q8_0 file").
llama.cpp (`llama-cpp-python`, optional: `pip install ../shared/wheels/llama_cpp_python-*.whl`, never a
dependency of the project) runs both files itself. Each path runs `--rounds` times,
alternating, and its best round counts (this machine's speed drifts minute to minute). Prints
tokens/s, the ratios, the bytes of weights each decoded token reads and the memory bandwidth
measured here, which bounds decoding: tokens/s <= bandwidth / bytes per token. Our models' weights
are packed once, before timing, as `scratchllm chat` does (fp32 for oneDNN, bf16 as (out, in) copies, which
the one-call step reads; the time it took is printed: the prefill uses them too); each decoding step is one call into C (layers/llama_step.c), and the
"forward pass" rows are the same models stepping through their forward pass, for the fused step's gain.

--memory: each path alone in a fresh process (the model loaded, the short prompt and --new-tokens decoded):
its resident memory then and at its peak (loading included), from /proc/self/status.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

PROMPT = "Write a long story about a dragon who learns to read."
LONG_PROMPT = " ".join(["The quick brown fox jumps over the lazy dog."] * 30) + " Summarise this text."


def bandwidth_gb_s() -> float:
    """Read bandwidth: the best of several passes summing a 512 MB fp32 tensor."""
    x = torch.ones(128 * 2**20)
    best = 0.0
    for _ in range(5):
        start = time.perf_counter()
        x.sum()
        best = max(best, x.numel() * 4 / (time.perf_counter() - start) / 1e9)
    return best


def ours_run(lm, ids: list[int], n: int, fused: bool = True):
    """(prefill seconds, decode tokens/s, tokens) with scratchllm's generate (stop tokens off: exactly n).

    The models are packed once up front, as a chat session or the server does; each step is the one-call
    step (layers/llama_step.c), or with `fused=False` the model's forward pass, to show the gain."""
    from scratchllm.generate import generate

    return _timed(generate(lm.model, ids, n, temperature=0, fused=fused))


def _timed(tokens_in):
    start = time.perf_counter()
    first, tokens = None, []
    for token in tokens_in:
        if first is None:
            first = time.perf_counter()
        tokens.append(token)
    end = time.perf_counter()
    return first - start, (len(tokens) - 1) / (end - first), tokens


def hf_run(hf, ids: list[int], n: int):
    """The same with transformers' generate; prefill timed as a 1-token generate."""
    prompt = torch.tensor([ids])
    kwargs = dict(attention_mask=torch.ones_like(prompt), do_sample=False, pad_token_id=0, eos_token_id=None)
    start = time.perf_counter()
    hf.generate(prompt, max_new_tokens=1, **kwargs)
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    out = hf.generate(prompt, max_new_tokens=n, min_new_tokens=n, **kwargs)[0, len(ids):].tolist()
    total = time.perf_counter() - start
    return prefill, (n - 1) / max(1e-9, total - prefill), out


def llama_cpp_run(llm, ids: list[int], n: int):
    """The same with llama.cpp on the Q4_1 file (greedy: argmax over its logits)."""
    import numpy as np

    llm.reset()
    start = time.perf_counter()
    llm.eval(ids)
    tokens = [int(np.argmax(llm.scores[llm.n_tokens - 1]))]
    first = time.perf_counter()
    while len(tokens) < n:
        llm.eval([tokens[-1]])
        tokens.append(int(np.argmax(llm.scores[llm.n_tokens - 1])))
    end = time.perf_counter()
    return first - start, (n - 1) / (end - first), tokens


# a user's turn: Shakespeare's sonnets, so the conversation is text a chat model would read
TURN_TEXT = ("From fairest creatures we desire increase, That thereby beauty's rose might never die, But as the riper "
             "should by time decease, His tender heir might bear his memory: But thou contracted to thine own bright "
             "eyes, Feed'st thy light's flame with self-substantial fuel, Making a famine where abundance lies, Thy self "
             "thy foe, to thy sweet self too cruel: Thou that art now the world's fresh ornament, And only herald to the "
             "gaudy spring, Within thine own bud buriest thy content, And, tender churl, mak'st waste in niggarding: Pity "
             "the world, or else this glutton be, To eat the world's due, by the grave and thee. When forty winters shall "
             "besiege thy brow, And dig deep trenches in thy beauty's field, Thy youth's proud livery so gazed on now, "
             "Will be a tatter'd weed of small worth held.").split()


def turns(args) -> None:
    """A conversation of --turns turns, each user message about --user-tokens tokens, each reply --reply-tokens
    (greedy), held by a session that keeps its cache (`ChatSession`) and by one that prefills the whole
    conversation at every turn (reuse_cache=False): whether the two say the same, and the time to first token
    of each turn both ways. The times are the best of --rounds replays of the turn's first token on a fresh
    row (cold: the whole prompt; cached: the row first holding, untimed, what the session's cache held), so
    that other work on the machine shows as little as it can."""
    import scratchllm
    from scratchllm.chat import ChatSession
    from scratchllm.generate import Request, Sampling

    lm = scratchllm.load_pretrained("smollm2-135m-instruct", precision=args.precision)
    sampling, first = Sampling(max_tokens=args.reply_tokens, temperature=0), Sampling(max_tokens=1, temperature=0)
    system = "You are a patient reader of poetry. Answer in one short sentence."
    warm, cold = ChatSession(lm, system, sampling), ChatSession(lm, system, sampling, reuse_cache=False)
    words = iter(TURN_TEXT * 1000)

    def first_token_seconds(ids: list[int], held: int) -> float:
        best = float("inf")
        for _ in range(args.rounds):
            engine = lm.new_engine(1, len(ids) + 1)
            if held:
                engine.add(Request(ids[:held], first))  # what the cache held from the turns before
            start = time.perf_counter()
            engine.add(Request(ids, first))
            best = min(best, time.perf_counter() - start)
        return best

    print(f"SmolLM2-135M-Instruct, {lm.dtype}, {args.threads} threads: {args.turns} turns, user turns of about "
          f"{args.user_tokens} tokens, greedy replies of at most {args.reply_tokens}; best of {args.rounds}")
    print(f"{'turn':>4}{'prompt':>8}{'cached':>8}{'TTFT cold':>11}{'TTFT cached':>13}{'ratio':>8}  same reply")
    first_token_seconds(lm.encode("Hello, world. " * 40), 0)  # warm-up: kernels, allocator
    with torch.inference_mode():
        for turn in range(1, args.turns + 1):
            user = f"Read this and tell me what it is about. {' '.join(next(words) for _ in range(args.user_tokens * 3 // 4))}"
            ids, _ = warm.prompt_ids(user)
            cold_text, warm_text = "".join(cold.reply(user)), "".join(warm.reply(user))
            w = warm.last
            assert w.prompt_tokens == len(ids)
            t_cold, t_warm = first_token_seconds(ids, 0), first_token_seconds(ids, w.cached_tokens)
            print(f"{turn:>4}{len(ids):>8}{w.cached_tokens:>8}{t_cold * 1000:>9.0f}ms{t_warm * 1000:>11.0f}ms"
                  f"{t_cold / t_warm:>7.1f}x  {warm_text == cold_text}")
            if warm_text != cold_text:  # the two conversations part: keep comparing the same prompts
                cold.history = list(warm.history)
    print(f"turn {args.turns}: {len(ids)} prompt tokens, {w.cached_tokens} of them in the cache; time to first token "
          f"{t_cold * 1000:.0f} ms cold, {t_warm * 1000:.0f} ms cached: {t_cold / t_warm:.1f}x")


def _rss() -> tuple[int, int]:
    """(resident bytes now, peak resident bytes) of this process (Linux)."""
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


MEMORY_PATHS = ("scratchllm fp32", "scratchllm bf16", "scratchllm int8", "scratchllm int4", "scratchllm int8 Q8_0 file",
                "transformers fp32", "transformers bf16", "llama.cpp Q4_1", "llama.cpp Q8_0")


def memory_of(what: str, q8_path: str, ids: list[int], n: int) -> None:
    """Child of --memory: load one path's model, decode n tokens after `ids`, print its RSS as JSON."""
    import json

    import scratchllm
    from scratchllm.pretrained import pretrained_path

    path = pretrained_path("smollm2-135m-instruct")
    base = _rss()[0]  # the interpreter with torch and scratchllm imported, no model
    if what.startswith("scratchllm"):  # loaded outside inference mode, as main() does (the packing tracks versions)
        lm = scratchllm.load_pretrained(q8_path if what.endswith("file") else path, precision=what.split()[1])
        with torch.inference_mode():
            ours_run(lm, ids, n)
    elif what.startswith("transformers"):
        import transformers

        hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        with torch.inference_mode():
            hf_run(hf.to(torch.bfloat16 if what.endswith("bf16") else torch.float32).eval(), ids, n)
    else:
        import llama_cpp

        llm = llama_cpp.Llama(str(path if what.endswith("Q4_1") else q8_path), n_ctx=1024, n_threads=2,
                              n_threads_batch=2, logits_all=True, verbose=False)
        llama_cpp_run(llm, ids, n)
    now, peak = _rss()
    print(json.dumps({"what": what, "rss": now, "peak": peak, "base": base}))


def memory(args) -> None:
    """--memory: every path in its own process, one after another."""
    import json
    import subprocess
    import sys

    import scratchllm
    from scratchllm.interop.gguf import save_gguf

    folder = tempfile.TemporaryDirectory()
    lm32 = scratchllm.load_pretrained("smollm2-135m-instruct", precision="fp32")
    q8_path = save_gguf(lm32.model, Path(folder.name) / "smollm2-135m-instruct-q8_0.gguf", lm32.tokenizer, "q8_0",
                        lm32.chat_template, **dict(zip(("eos_id", "eot_id"), lm32.stop_tokens)))
    from scratchllm.chat_template import render_chat

    ids = lm32.tokenizer.encode(render_chat([{"role": "user", "content": PROMPT}], lm32.chat_template), allowed_special="all")
    del lm32
    print(f"SmolLM2-135M-Instruct, each path alone in a new process: loaded, {args.new_tokens} tokens decoded; RSS in MiB "
          f"(the interpreter with torch imported, before the model, in brackets)")
    for what in MEMORY_PATHS:
        done = subprocess.run([sys.executable, __file__, "--memory-of", what, "--q8", str(q8_path), "--ids",
                               ",".join(map(str, ids)), "--new-tokens", str(args.new_tokens)], capture_output=True, text=True)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        if done.returncode != 0 or not lines:
            why = (done.stderr.strip().splitlines() or ["failed"])[-1]
            print(f"  {what:<28} not measured: {why[:100]}")
            continue
        r = json.loads(lines[-1])
        print(f"  {what:<28} {r['rss'] / 2**20:>7.0f} now, {r['peak'] / 2**20:>7.0f} peak  ({r['base'] / 2**20:.0f} before the model)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--turns", type=int, default=None, help="time to first token over a conversation of this many turns")
    ap.add_argument("--precision", default="auto", help="with --turns: fp32, bf16 or auto (default auto)")
    ap.add_argument("--user-tokens", type=int, default=120, help="with --turns: about how long each user turn is")
    ap.add_argument("--reply-tokens", type=int, default=24, help="with --turns: the longest reply")
    ap.add_argument("--memory", action="store_true", help="each path's resident memory, each in its own process")
    ap.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--q8", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--ids", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.memory_of:
        memory_of(args.memory_of, args.q8, [int(i) for i in args.ids.split(",")], args.new_tokens)
        return
    if args.memory:
        memory(args)
        return
    if args.turns:
        turns(args)
        return

    import transformers

    import scratchllm
    from scratchllm.chat_template import render_chat
    from scratchllm.layers import pack_for_inference
    from scratchllm.models.decode import decoding_bf16_layout
    from scratchllm.pretrained import pretrained_path

    transformers.logging.set_verbosity_error()
    path = pretrained_path("smollm2-135m-instruct")
    quantized = ("int8", "int4")
    ours = {p: scratchllm.load_pretrained(path, precision=p) for p in ("fp32", "bf16", *quantized)}
    from scratchllm.interop.gguf import save_gguf

    folder = tempfile.TemporaryDirectory()
    lm32 = ours["fp32"]
    q8_path = save_gguf(lm32.model, Path(folder.name) / "smollm2-135m-instruct-q8_0.gguf", lm32.tokenizer, "q8_0",
                        lm32.chat_template, **dict(zip(("eos_id", "eot_id"), lm32.stop_tokens)))
    ours["int8 Q8_0 file"] = scratchllm.load_pretrained(q8_path, precision="int8")
    pack_seconds = {}
    for p, lm in ours.items():  # once, as `scratchllm chat` does (layers/linear.py), in the layout one-row
        start = time.perf_counter()  # decoding reads (bf16: the (out, in) copies the one-call step reads)
        pack_for_inference(lm.model, decoding_bf16_layout(lm.model, 1))
        pack_seconds[p] = time.perf_counter() - start
    tok, template = ours["fp32"].tokenizer, ours["fp32"].chat_template
    hf32 = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    hf = {"fp32": hf32, "bf16": transformers.AutoModelForCausalLM.from_pretrained(
        path.parent, gguf_file=path.name, dtype=torch.float32).to(torch.bfloat16).eval()}
    try:
        import llama_cpp

        llm = {f: llama_cpp.Llama(str(p), n_ctx=1024, n_threads=args.threads, n_threads_batch=args.threads,
                                  logits_all=True, verbose=False) for f, p in (("Q4_1", path), ("Q8_0", q8_path))}
    except ImportError:
        llm = None
    n_params = sum(p.numel() for p in ours["fp32"].model.parameters())
    bw = bandwidth_gb_s()
    print(f"SmolLM2-135M-Instruct ({n_params / 1e6:.1f}M parameters), {args.new_tokens} new tokens, greedy, batch 1, "
          f"{args.threads} threads; torch {torch.__version__}, transformers {transformers.__version__}"
          + (f", llama-cpp-python {llama_cpp.__version__}" if llm else ", llama.cpp not installed"))
    print(f"measured read bandwidth: {bw:.1f} GB/s")

    print("weights packed in " + ", ".join(f"{s:.2f} s ({p})" for p, s in pack_seconds.items()))

    paths = {f"scratchllm {p}": (lambda ids, n, p=p: ours_run(ours[p], ids, n))
             for p in ("fp32", "bf16", *quantized, "int8 Q8_0 file")}
    paths.update({f"forward pass {p}": (lambda ids, n, p=p: ours_run(ours[p], ids, n, fused=False))
                  for p in ("fp32", "bf16", "int4")})
    paths.update({f"transformers {p}": (lambda ids, n, p=p: hf_run(hf[p], ids, n)) for p in ("fp32", "bf16")})
    for f, model in (llm or {}).items():
        paths[f"llama.cpp {f}"] = lambda ids, n, model=model: llama_cpp_run(model, ids, n)
    # bytes of weights one decoded token reads: every matrix once (the tied embedding as the output head)
    # Q4_1: 20 bytes per 32 weights, Q8_0 34, the head (~21%) in Q8_0 in a Q4_1 file; ours: int8 32 of codes and 4
    # of fp32 scale per 32, int4 16 of codes and 8 of fp32 scale and minimum
    head = ours["fp32"].model.config.vocab_size * ours["fp32"].model.config.n_embd
    per_token = {"fp32": n_params * 4, "bf16": n_params * 2, "int8": n_params * 36 / 32, "file": n_params * 36 / 32,
                 "Q4_1": (n_params - head) * 20 / 32 + head * 34 / 32, "Q8_0": n_params * 34 / 32,
                 "int4": (n_params - head) * 24 / 32 + head * 36 / 32}

    for label, text in (("short prompt", PROMPT), ("long prompt", LONG_PROMPT)):
        ids = tok.encode(render_chat([{"role": "user", "content": text}], template), allowed_special="all")
        best: dict[str, tuple[float, float]] = {}
        tokens = {}
        with torch.inference_mode():
            for name, run in paths.items():
                run(ids, 4)  # warm-up
            for _ in range(args.rounds):
                for name, run in paths.items():
                    prefill, decode, toks = run(ids, args.new_tokens)
                    tokens[name] = toks
                    b = best.get(name, (float("inf"), 0.0))
                    best[name] = (min(b[0], prefill), max(b[1], decode))
        print(f"\n{label}: {len(ids)} prompt tokens")
        print(f"  {'':<20}{'prefill tok/s':>14}{'decode tok/s':>14}{'bound (bw)':>12}")
        for name, (prefill, decode) in best.items():
            dtype = name.split()[-1]
            print(f"  {name:<20}{len(ids) / prefill:>14.0f}{decode:>14.1f}{bw * 1e9 / per_token[dtype]:>12.0f}")
        for p in ("fp32", "bf16"):
            ours_d, hf_d = best[f"scratchllm {p}"][1], best[f"transformers {p}"][1]
            print(f"  decode, scratchllm / transformers {p}: {ours_d / hf_d:.2f}x   "
                  f"(same tokens: {tokens[f'scratchllm {p}'] == tokens[f'transformers {p}']})")
        for p in ("fp32", "bf16", "int4"):
            same = tokens[f"scratchllm {p}"] == tokens[f"forward pass {p}"]
            print(f"  decode, one-call step / forward pass {p}: {best[f'scratchllm {p}'][1] / best[f'forward pass {p}'][1]:.2f}x "
                  f"(same tokens: {same})")
        for p in (*quantized, "int8 Q8_0 file"):
            same = next((i for i, (a, b) in enumerate(zip(tokens[f"scratchllm {p}"], tokens["scratchllm fp32"])) if a != b), None)
            print(f"  decode, scratchllm {p} / fp32: {best[f'scratchllm {p}'][1] / best['scratchllm fp32'][1]:.2f}x, "
                  f"/ bf16: {best[f'scratchllm {p}'][1] / best['scratchllm bf16'][1]:.2f}x ({p}'s greedy tokens equal fp32's "
                  + (f"for all {args.new_tokens})" if same is None else f"for the first {same})"))
        if llm is not None:
            q4, q8 = best["llama.cpp Q4_1"][1], best["llama.cpp Q8_0"][1]
            print(f"  decode against llama.cpp on the same file: scratchllm int4 / llama.cpp Q4_1 "
                  f"{best['scratchllm int4'][1] / q4:.2f}x, scratchllm int8 Q8_0 file / llama.cpp Q8_0 "
                  f"{best['scratchllm int8 Q8_0 file'][1] / q8:.2f}x; against llama.cpp Q4_1: " + ", ".join(
                      f"scratchllm {p} {best[f'scratchllm {p}'][1] / q4:.2f}x" for p in ("bf16", "fp32", "int8")))


if __name__ == "__main__":
    main()
