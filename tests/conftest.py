import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

# Tests run on 2 CPU cores; keep torch from oversubscribing them when several processes run.
torch.set_num_threads(min(2, os.cpu_count() or 1))


def shared_file(*parts: str) -> Path:
    path = SHARED.joinpath(*parts)
    if not path.is_file():
        pytest.skip(f"{path} not found: these tests need ../shared/data beside the checkout")
    return path


@pytest.fixture
def tiny_shakespeare() -> Path:
    return shared_file("tinyshakespeare.txt")


@pytest.fixture
def small_corpus(tmp_path, tiny_shakespeare) -> Path:
    """The first 60,000 characters of TinyShakespeare: enough for short runs, quick to encode."""
    path = tmp_path / "small.txt"
    path.write_text(tiny_shakespeare.read_text()[:60_000])
    return path


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Corpus downloads go to a per-test cache, never the user's."""
    monkeypatch.setenv("SCRATCHLLM_CACHE", str(tmp_path / "cache"))


def run_cli(*args: str, env: dict | None = None, timeout: float = 300):
    """Run `python -m scratchllm ARGS` in a subprocess; returns the CompletedProcess."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "scratchllm", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout)
