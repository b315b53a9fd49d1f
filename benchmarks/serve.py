"""The server under load: 16 concurrent streaming clients against one `scratchllm serve`, against the same
requests served one at a time.

    python benchmarks/serve.py [--model NAME|PATH] [--clients 16] [--requests 4] [--new-tokens 64] [--precision int4]

Without --model it serves llama-bpe-baby's architecture (4 layers, 128 wide, GQA 4/2, SwiGLU) with random
weights and a 2048-token BPE trained on the first 300,000 characters of TinyShakespeare, written as a
Hugging Face folder; --model serves anything `scratchllm serve` does (smollm2-135m-instruct, a run).
The server is the real command in a subprocess (--max-batch = clients). Every request is a streamed
/v1/completions of a line of Shakespeare (greedy, a fixed number of new tokens); each is sent alone first
(one at a time), then all together, each client sending its requests one after another, for a few
alternating rounds. It prints p50 / p95 time to first token and per-token latency (the gaps between
streamed tokens), aggregate tokens/s of both and their ratio (median of the rounds), checks that every
request got the same text and token count every time, and
measures the server's resident memory across 200 more requests in a row. The load average is printed
beside the figures: the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def corpus() -> str:
    for path in (ROOT / "tests" / "data" / "tinyshakespeare.txt", ROOT.parent / "shared" / "data" / "tinyshakespeare.txt"):
        if path.is_file():
            return path.read_text()
    raise SystemExit("tinyshakespeare.txt not found (tests/data or ../shared/data)")


def random_baby_llama(folder: Path) -> None:
    import torch

    from scratchllm.interop.hf import save_hf
    from scratchllm.models import Llama, LlamaConfig
    from scratchllm.tokenizers.bpe_train import train_bpe

    tokenizer = train_bpe(corpus()[:300_000], 2048, "llama3", [])
    torch.manual_seed(0)
    model = Llama(LlamaConfig(vocab_size=tokenizer.vocab_size, block_size=512, n_layer=4, n_head=4, n_kv_head=2,
                              n_embd=128, intermediate_size=352, rope_theta=10000.0)).eval()
    save_hf(model, folder, tokenizer)


def prompts(n: int) -> list[str]:
    """n lines of the play, 1 to 4 lines each: prompts of different lengths."""
    lines = [line for line in corpus().splitlines() if line.strip()]
    return ["\n".join(lines[40 * i: 40 * i + 1 + i % 4]) for i in range(n)]


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q / 100 * len(values)))] if values else float("nan")


async def one(client, model: str, prompt: str, new_tokens: int) -> dict:
    """A streamed greedy completion: its text, token count, time to first token and inter-token gaps."""
    body = {"model": model, "prompt": prompt, "max_tokens": new_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    stamps, text, usage = [], [], None
    async with client.stream("POST", "/v1/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk["choices"]:
                if choice["text"]:
                    stamps.append(time.perf_counter())
                    text.append(choice["text"])
    return {"text": "".join(text), "tokens": usage["completion_tokens"], "ttft": stamps[0] - start if stamps else None,
            "gaps": [b - a for a, b in zip(stamps, stamps[1:])]}


async def load(url: str, model: str, jobs: list[list[str]], new_tokens: int) -> tuple[float, list[dict]]:
    """Each inner list is one client's requests, sent one after another; the clients run together."""
    import httpx

    limits = httpx.Limits(max_connections=len(jobs) + 4)
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        async def client_run(requests):
            return [await one(client, model, p, new_tokens) for p in requests]

        start = time.perf_counter()
        results = await asyncio.gather(*(client_run(r) for r in jobs))
        return time.perf_counter() - start, [r for rs in results for r in rs]


def report(name: str, seconds: float, results: list[dict]) -> None:
    tokens = sum(r["tokens"] for r in results)
    ttft = [r["ttft"] for r in results if r["ttft"] is not None]
    gaps = [g for r in results for g in r["gaps"]]
    print(f"  {name:<22} {len(results)} requests, {tokens} tokens in {seconds:6.2f} s = {tokens / seconds:7.1f} tokens/s | "
          f"first token p50 {1e3 * percentile(ttft, 50):6.1f} ms p95 {1e3 * percentile(ttft, 95):6.1f} ms | "
          f"per token p50 {1e3 * percentile(gaps, 50):5.1f} ms p95 {1e3 * percentile(gaps, 95):5.1f} ms")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="what `scratchllm serve --model` takes (default: a random baby Llama)")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=4, help="requests per client")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=3, help="paired rounds of one-at-a-time and concurrent")
    ap.add_argument("--memory-requests", type=int, default=200)
    ap.add_argument("--precision", default="auto", help="what `scratchllm serve --precision` takes: auto, fp32, bf16, int8, int4")
    ap.add_argument("--threads", type=int, default=None, help="`scratchllm serve --threads` (default: the server's own)")
    args = ap.parse_args()

    import httpx
    import psutil

    with tempfile.TemporaryDirectory() as tmp:
        model = args.model
        if model is None:
            model = str(Path(tmp) / "baby-llama")
            random_baby_llama(Path(model))
        command = [sys.executable, "-m", "scratchllm", "serve", "--model", model, "--name", "bench", "--port", "0",
                   "--max-batch", str(args.clients), "--max-len", "512", "--queue", str(4 * args.clients),
                   "--precision", args.precision] + (["--threads", str(args.threads)] if args.threads else [])
        server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            line = server.stdout.readline()
            if " at " not in line:
                raise SystemExit(f"the server did not start: {line}")
            url = line.split(" at ")[1].split("/v1")[0]
            print(line.strip())
            print(f"load average before: {os.getloadavg()[0]:.2f}; {args.clients} clients x {args.requests} requests, "
                  f"{args.new_tokens} new tokens each, greedy")
            texts = prompts(args.clients * args.requests)
            jobs = [texts[i * args.requests:(i + 1) * args.requests] for i in range(args.clients)]
            asyncio.run(load(url, "bench", [texts[:args.clients]], args.new_tokens))  # warm-up
            # one at a time (one client sending every request in turn) and all together, alternating round
            # after round: a slow spell of this shared machine hits both, and each round gives a paired ratio
            rounds, same = [], []
            for _ in range(args.rounds):
                alone_s, alone = asyncio.run(load(url, "bench", [texts], args.new_tokens))
                together_s, together = asyncio.run(load(url, "bench", jobs, args.new_tokens))
                rounds.append((alone_s, alone, together_s, together))
                reference = rounds[0][1]
                same += [a["text"] == b["text"] and a["tokens"] == b["tokens"]
                         for a, b in zip(reference, alone + together)]
            ratios = [(sum(r["tokens"] for r in t) / ts) / (sum(r["tokens"] for r in a) / as_)
                      for as_, a, ts, t in rounds]
            best = min(range(len(rounds)), key=lambda i: rounds[i][2])
            print(f"served (the round with the fastest concurrent run of {args.rounds}):")
            report("one at a time", rounds[best][0], rounds[best][1])
            report(f"{args.clients} clients at once", rounds[best][2], rounds[best][3])
            print(f"aggregate throughput, {args.clients} concurrent clients / one at a time: median "
                  f"{statistics.median(ratios):.2f}x (rounds: {', '.join(f'{r:.2f}' for r in ratios)})")
            print(f"identical greedy replies (text and token count) to the first one-at-a-time round: "
                  f"{sum(same)} of {len(same)}")

            # memory: 200 more requests in a row, the server's RSS before and after
            process = psutil.Process(server.pid)
            body = {"model": "bench", "prompt": texts[0], "max_tokens": 16, "temperature": 0.8}
            with httpx.Client(base_url=url, timeout=60) as client:
                before = process.memory_info().rss
                for i in range(args.memory_requests):
                    client.post("/v1/completions", json={**body, "seed": i, "stream": i % 2 == 0}).raise_for_status()
                after = process.memory_info().rss
                health = client.get("/health").json()
            print(f"server RSS: {before / 2**20:.1f} MiB before {args.memory_requests} more requests in a row, "
                  f"{after / 2**20:.1f} MiB after ({(after - before) / 2**20:+.1f} MiB); KV cache "
                  f"{health['kv_cache_bytes'] / 2**20:.1f} MiB, allocated at start; {health['served']} served in all")
            print(f"load average after: {os.getloadavg()[0]:.2f}")
            if not all(same):
                raise SystemExit("some replies differ between the two runs")
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
