import json
import os
import subprocess
import sys

import pytest

from conftest import TINY, run_cli

# device=cpu: the test is about two gloo processes, whatever GPUs the machine has
ARGS = ["--max-steps", "6", "--precision", "fp32", "--no-progress", "--sample-tokens", "0", "--set", "device=cpu",
        *sum((["--set", s] for s in TINY["gpt-char-baby"] + ["eval_interval=3", "log_interval=1"]), [])]


def losses(out):
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if r["kind"] == "train"], [r["val_loss"] for r in records if r["kind"] == "eval"]


def test_two_gloo_processes_match_one_process_with_the_same_global_batch(small_corpus, tmp_path):
    one = run_cli("train", "--data", str(small_corpus), "--out", str(tmp_path / "one"), *ARGS,
                  "--set", "batch_size=4", "--set", "grad_accum=2")
    assert one.returncode == 0, one.stderr
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "scratchllm", "train", "--data", str(small_corpus), "--out", str(tmp_path / "two"), *ARGS,
                          "--set", "batch_size=4", "--set", "grad_accum=1"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    train_one, val_one = losses(tmp_path / "one")
    train_two, val_two = losses(tmp_path / "two")
    assert len(train_one) == len(train_two) == 6
    assert train_two == pytest.approx(train_one, rel=1e-5)
    assert val_two == pytest.approx(val_one, rel=1e-5)
    assert (tmp_path / "two" / "latest" / "model.safetensors").is_file()
    assert two.stdout.count("trained ") == 1  # only rank 0 reports


@pytest.mark.parametrize("preset", ["llama-bpe-baby", pytest.param("gpt-char-baby", marks=pytest.mark.slow)])
def test_fsdp_two_processes_match_one_and_resume_in_one(small_corpus, tmp_path, preset):
    """FSDP2 (--fsdp): 2 gloo processes give the losses of 1 process with the same global batch, and a
    checkpoint of the sharded run is one model.safetensors that a single process resumes from. The default
    suite runs the Llama (GQA, RoPE, a BPE tokenizer); the GPT, which shards the same way, runs in `slow`."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    tiny = sum((["--set", s] for s in TINY[preset] + ["eval_interval=3", "log_interval=1", "batch_size=4"]), [])
    common = ["--preset", preset, "--data", str(small_corpus), "--precision", "fp32", "--no-progress",
              "--sample-tokens", "0", "--set", "device=cpu", *tiny]
    one = run_cli("train", *common, "--max-steps", "6", "--out", str(tmp_path / preset / "one"), "--set", "grad_accum=2")
    assert one.returncode == 0, one.stderr
    sharded = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              "-m", "scratchllm", "train", *common, "--max-steps", "3", "--fsdp",
                              "--out", str(tmp_path / preset / "two")], capture_output=True, text=True, env=env, timeout=300)
    assert sharded.returncode == 0, sharded.stderr[-3000:]
    resumed = run_cli("train", "--resume", str(tmp_path / preset / "two"), "--max-steps", "6", "--no-progress",
                      "--sample-tokens", "0", "--set", "grad_accum=2")
    assert resumed.returncode == 0, resumed.stderr
    train_one, val_one = losses(tmp_path / preset / "one")
    train_two, val_two = losses(tmp_path / preset / "two")
    assert len(train_two) == 6  # 3 steps sharded on 2 processes, then 3 in one process
    assert train_two == pytest.approx(train_one, rel=1e-5)
    assert val_two == pytest.approx(val_one, rel=1e-5)
