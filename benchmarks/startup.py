"""Whole-process start-up times of the command line (what a user waits for before anything happens).

    python benchmarks/startup.py [--runs 10]

Times `scratchllm --help` and `echo "hello world" | scratchllm tokenizer encode --tokenizer tests/data/gpt2`
as whole processes (the median of --runs), beside `python -c pass` and `python -c "import torch"` on
the same machine in the same run, so the figures can be read against what Python itself costs here.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(cmd: list[str], stdin: str | None = None, runs: int = 10) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, input=stdin, capture_output=True, text=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    cli = [sys.executable, "-m", "scratchllm"]
    rows = [
        ("python -c pass", [sys.executable, "-c", "pass"], None),
        ("python -c 'import torch'", [sys.executable, "-c", "import torch"], None),
        ("scratchllm --help", cli + ["--help"], None),
        ("scratchllm tokenizer encode (GPT-2's files)", cli + ["tokenizer", "encode", "--tokenizer", str(ROOT / "tests/data/gpt2")],
         "hello world\n"),
    ]
    for name, cmd, stdin in rows:
        print(f"  {name:<46} {timed(cmd, stdin, args.runs):6.3f} s (median of {args.runs})")


if __name__ == "__main__":
    main()
