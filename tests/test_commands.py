"""Every command on every model type: it works, or it ends in one line naming the command that fits.

The checkpoints are the shared tiny runs of conftest.py's `trained` fixture, one per preset."""

import ast
import warnings
from pathlib import Path

import pytest
import torch

from conftest import DEVICES, ROOT, TEXT_PRESETS, TINY, needs_cuda
from scratchllm.cli import main
from scratchllm.data import shapes

VISION_LANGUAGE = ("siglip-shapes", "paligemma-shapes")


def one_line_error(capsys, argv, match):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    assert match in err, err
    return err


@pytest.fixture
def run_of(trained, capsys):
    """run_of(preset) -> its tiny run folder, with what training printed cleared from the captured output."""
    def get(preset):
        run = trained(preset)
        capsys.readouterr()
        return run

    return get


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "scene.png"
    shapes.example(5).image.save(path)
    return path


@pytest.mark.parametrize("preset", TEXT_PRESETS)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_sample_works_on_every_text_model_in_both_precisions(capsys, run_of, preset, precision):
    """bf16 sampling runs the KV cache in bf16 (it once failed: the cache was fp32 whatever the model)."""
    run = run_of(preset)
    assert main(["sample", "--checkpoint", str(run), "--prompt", "ROMEO:", "--max-new-tokens", "12", "--seed", "1",
                 "--precision", precision, "--device", "cpu"]) == 0
    assert capsys.readouterr().out.startswith("ROMEO:")


@pytest.mark.parametrize("preset", list(TINY))
def test_eval_works_on_every_model_type(capsys, run_of, preset):
    assert main(["eval", "--checkpoint", str(run_of(preset)), "--max-batches", "2"]) == 0
    out = capsys.readouterr().out
    if preset in VISION_LANGUAGE:  # the held-out task metric and loss, not a corpus
        assert "held-out loss" in out and ("r@1" in out if preset == "siglip-shapes" else "exact_match" in out)
    else:
        assert "bits/byte" in out and "bits/char" in out


@pytest.mark.parametrize("preset, command, fits", [
    ("siglip-shapes", "sample", "scratchllm eval"), ("paligemma-shapes", "sample", "scratchllm ask"),
    ("gpt-char-baby", "ask", "scratchllm sample"), ("bigram-char", "ask", "scratchllm sample"),
    ("llama-bpe-baby", "ask", "scratchllm sample"), ("siglip-shapes", "ask", "scratchllm eval"),
])
def test_a_command_that_does_not_apply_names_the_one_that_fits(capsys, run_of, image, preset, command, fits):
    run = str(run_of(preset))
    argv = {"sample": ["sample", "--checkpoint", run, "--prompt", "hi"],
            "ask": ["ask", "--checkpoint", run, "--image", str(image), "--prompt", "how many shapes?"]}[command]
    err = one_line_error(capsys, argv, f"does not apply to; use {fits}")
    assert f"scratchllm {command}" in err


@pytest.mark.parametrize("preset", VISION_LANGUAGE)
def test_vision_language_eval_in_bf16(capsys, run_of, preset):
    """Images arrive as fp32: a bf16 model casts them (CUDA's auto precision is bf16; this once failed there)."""
    assert main(["eval", "--checkpoint", str(run_of(preset)), "--max-batches", "1", "--precision", "bf16",
                 "--device", "cpu"]) == 0
    assert "held-out loss" in capsys.readouterr().out


def test_ask_answers_on_paligemma(capsys, run_of, image):
    assert main(["ask", "--checkpoint", str(run_of("paligemma-shapes")), "--image", str(image),
                 "--prompt", "how many shapes?", "--precision", "bf16"]) == 0
    assert capsys.readouterr().out.endswith("\n")


@pytest.mark.parametrize("preset, works", [("llama-bpe-baby", True), ("bigram-char", False), ("siglip-shapes", False),
                                           ("gpt-char-baby", False)])
def test_convert_works_or_says_why(capsys, run_of, tmp_path, preset, works):
    argv = ["convert", str(run_of(preset)), "--to-hf", str(tmp_path / "hf")]
    if works:
        assert main(argv) == 0 and (tmp_path / "hf" / "model.safetensors").is_file()
    else:  # the bigram and SigLIP have no HF export; the char GPT has no biases, which GPT-2's format needs
        one_line_error(capsys, argv, "does not apply to" if preset != "gpt-char-baby" else "cannot be exported as GPT-2")


@pytest.mark.parametrize("preset", VISION_LANGUAGE)
def test_data_on_a_vision_language_preset_is_refused(capsys, tmp_path, preset):
    one_line_error(capsys, ["train", "--preset", preset, "--data", "tinyshakespeare", "--out", str(tmp_path / "r")],
                   "--data tinyshakespeare does not apply")
    assert not (tmp_path / "r").exists()


def test_nested_set_reaches_vision_language_fields(capsys, tmp_path):
    assert main(["train", "--preset", "siglip-shapes", "--out", str(tmp_path / "r"), "--max-steps", "1", "--no-progress",
                 "--set", "text.n_layer=1", "--set", "vision.patch_size=8", "--set", "vision.n_layer=1",
                 "--set", "batch_size=4", "--set", "eval_batches=1"]) == 0
    import json

    model = json.loads((tmp_path / "r" / "latest" / "config.json").read_text())["model"]
    assert (model["text"]["n_layer"], model["vision"]["patch_size"]) == (1, 8)
    one_line_error(capsys, ["train", "--preset", "siglip-shapes", "--out", str(tmp_path / "q"), "--set", "n_layer=1"],
                   "ambiguous, qualify it as one of vision.n_layer, text.n_layer")


def test_device_and_precision_are_checked(capsys, run_of):
    run = str(run_of("gpt-char-baby"))
    one_line_error(capsys, ["sample", "--checkpoint", run, "--device", "bogus"], "unknown device 'bogus'")
    one_line_error(capsys, ["eval", "--checkpoint", run, "--precision", "fp16"], "invalid choice: 'fp16'")
    if not torch.cuda.is_available():
        one_line_error(capsys, ["sample", "--checkpoint", run, "--device", "cuda"], "no CUDA device is available")


def test_auto_device_is_the_cpu_for_the_cpu_only_precisions(monkeypatch):
    """`--device auto` is CUDA where there is a GPU, but int8 / int4 run on our CPU kernels only: there auto is the
    CPU (on the H200 machine `eval --precision int8` once stopped with "runs on the CPU"); cuda asked for by name
    with int8 is still the one-line error."""
    from scratchllm.device import inference_dtype, resolve_device
    from scratchllm.errors import ScratchLLMError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU machine (nothing touches the GPU)
    assert [resolve_device("auto", p).type for p in ("int8", "int4", "bf16", "fp32", "auto", None)] == \
        ["cpu", "cpu", "cuda", "cuda", "cuda", "cuda"]
    assert inference_dtype("int8", resolve_device("auto", "int8")) == torch.float32
    with pytest.raises(ScratchLLMError, match="--precision int4 runs on the CPU"):
        inference_dtype("int4", torch.device("cuda"))


# -- CUDA: training and generation where there is a GPU (skipped without one) ----------------------

@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("preset", ["gpt-char-baby", "siglip-shapes", "paligemma-shapes"])
def test_short_cuda_training(tmp_path, corpus_60k, preset):
    """Every tensor a task metric builds goes to the model's device (the shapes presets once failed here)."""
    from scratchllm.train.run import train

    summary = train(preset, data=None if preset in VISION_LANGUAGE else str(corpus_60k), out=tmp_path / "r",
                    overrides=TINY[preset] + ["eval_interval=4", "device=cuda"], max_steps=4, progress=False)
    assert summary["step"] == 4 and torch.isfinite(torch.tensor(summary["val_loss"]))


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("preset", ["gpt-char-baby", "llama-bpe-baby"])
def test_cuda_sampling_equals_cpu_greedy(capsys, run_of, preset):
    outs = []
    for device in ("cpu", "cuda"):
        assert main(["sample", "--checkpoint", str(run_of(preset)), "--prompt", "ROMEO:", "--max-new-tokens", "20",
                     "--temperature", "0", "--device", device, "--precision", "fp32"]) == 0
        outs.append(capsys.readouterr().out)
    assert outs[0] == outs[1]


# -- the code itself -------------------------------------------------------------------------------

SRC = ROOT / "src" / "scratchllm"


def test_every_module_compiles_without_warnings():
    """An invalid escape in a docstring is a SyntaxWarning on Python 3.12+ (and broke a CLI test there)."""
    for path in SRC.rglob("*.py"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            compile(path.read_text(), str(path), "exec")


# Each package's level; a module may import only from its own level or below. scratchllm/*.py modules
# not listed sit at the top with the CLI.
LEVELS = {"errors": 0, "fileio": 0, "device": 0, "config": 0, "fetch": 0, "tokenizers": 1, "data": 2, "layers": 3,
          "models": 4, "checkpoint": 5, "interop": 5, "train": 6, "generate": 6, "evaluate": 6, "chat_template": 1,
          "pretrained": 6, "chat": 7, "serve": 7, "cli": 8, "__main__": 8, "__init__": 8}


def _imports(path: Path, modules) -> set[str]:
    """scratchllm modules a file imports, anywhere in it (top-level or inside a function)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("scratchllm"):
            for a in node.names:  # `from scratchllm import checkpoint` imports the module scratchllm.checkpoint
                out.add(f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("scratchllm"))
    return out


def _module(path: Path) -> str:
    return ".".join(("scratchllm",) + path.relative_to(SRC).with_suffix("").parts).removesuffix(".__init__")


def test_imports_run_one_way_and_have_no_cycle():
    """tokenizers and data -> layers -> models -> train / generate -> cli, and no module imports itself
    back through others (the graph counts imports inside functions too)."""
    modules = {_module(p): p for p in SRC.rglob("*.py")}
    graph = {m: {i for i in _imports(p, modules) if i in modules and i != m} for m, p in modules.items()}
    level = lambda m: LEVELS.get(m.split(".")[1], 8) if m != "scratchllm" else 8  # noqa: E731
    upward = [(m, i) for m, deps in graph.items() for i in deps if level(i) > level(m)]
    assert not upward, f"imports against the direction of the layers: {upward}"
    # cycles: a package's __init__ re-exporting its own modules is not one, so drop edges into a parent package
    edges = {m: {i for i in deps if not m.startswith(i + ".")} for m, deps in graph.items()}
    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for i in edges[m]:
            assert state.get(i) != 1, f"import cycle: {' -> '.join(stack + [m, i])}"
            if i not in state:
                visit(i, stack + [m])
        state[m] = 2

    for m in edges:
        if m not in state:
            visit(m, [])


# What only a spec (models/) or the tokenizer protocol (tokenizers/) may test: a model's class, attributes,
# type name or architecture name, the dtype of its labels (how the trainer once told SigLIP apart), and a
# tokenizer's kind (ask the protocol what it can do: byte_level, fingerprint(), encode(allowed_special=...)).
_MODEL_NAMES = r"(bigram|gpt|llama|gemma|siglip|paligemma|qwen3)"  # (GGUF calls a byte-level BPE "gpt2")
_SNIFFING = [r"isinstance\((self\.)?model\w*, *\(?(GPT|Llama|Gemma|Siglip|PaliGemma|Bigram|nn\.Module)",
             r"hasattr\((self\.)?model", r"type\((self\.)?model\w*\)", r"getattr\((self\.)?model\w*,",
             r"model_type *(==|!=|in) ", r"dtype\.is_floating_point", r"VISION_LANGUAGE",
             rf"(==|!=) *[\"']{_MODEL_NAMES}[\"']", rf"[\"']{_MODEL_NAMES}[\"'] *(==|!=)",  # arch != "llama"
             r"\.kind *(==|!=|in\b|not in\b)", r"\bkind *(==|!=) *[\"'](char|bpe|siglip|paligemma)[\"']"]


def _sniffing(path: Path) -> list[str]:
    import re

    text = path.read_text()
    return [f"{path.relative_to(SRC)}: {m.group(0)}" for pattern in _SNIFFING for m in re.finditer(pattern, text)]


def test_no_model_type_or_tokenizer_kind_sniffing_outside_the_specs():
    """Commands ask a model's spec what it can do, and a tokenizer its protocol; nothing outside models/
    and tokenizers/ tests a model's class, attributes, type or architecture name, or a tokenizer's kind."""
    offenders = [o for p in SRC.rglob("*.py") if p.parent.name not in ("models", "tokenizers") for o in _sniffing(p)]
    assert not offenders, offenders


def test_the_sniffing_check_catches_what_the_code_once_did(tmp_path):
    """The patterns above find the tests this code once made outside the specs (so the check can fail)."""
    once = {"checkpoint.py": 'if version < FORMAT_VERSION and meta["model_type"] != "bigram":',
            "gguf.py": 'if arch != "llama":\nif hf_config.get("model_type") != "llama":',
            "vision_language.py": 'if self.kind == "siglip":', "cli.py": 'if tok.kind == "bpe":',
            "hf.py": 'if tokenizer is not None and tokenizer.kind == "bpe":',
            "tokens.py": 'kind = tokenizer.kind if tokenizer is not None else cfg.kind\nif kind == "char":'}
    global SRC
    for name, text in once.items():
        (tmp_path / name).write_text(text + "\n")
    old, SRC = SRC, tmp_path
    try:
        caught = {o.split(":")[0] for p in tmp_path.glob("*.py") for o in _sniffing(p)}
    finally:
        SRC = old
    assert caught == set(once), set(once) - caught


def test_help_and_tokenizer_commands_do_not_import_torch(tmp_path):
    """Start-up: `scratchllm --help` and `tokenizer encode` need no model code, so they must not import
    torch (about 1.5 s of a 2-core machine's time); benchmarks, not tests, time them."""
    import subprocess
    import sys

    from scratchllm.cli import DEFAULT_PRESET
    from scratchllm.train.presets import DEFAULT_PRESET as PRESETS_DEFAULT

    assert DEFAULT_PRESET == PRESETS_DEFAULT
    probe = ("import sys, contextlib, io\nfrom scratchllm.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n    main(sys.argv[1:])\n"
             "print('torch' in sys.modules, file=sys.stderr)")
    for argv in (["--help"], ["tokenizer", "encode", "--tokenizer", str(ROOT / "tests" / "data" / "gpt2"), "hello world"],
                 ["tokenizer", "decode", "--tokenizer", str(ROOT / "tests" / "data" / "gpt2"), "31373 995"]):
        result = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, timeout=60)
        assert result.stderr.strip().splitlines()[-1] == "False", (argv, result.stderr[-500:])


def test_every_module_a_test_may_skip_without_is_installed_by_the_test_setup():
    """`pytest.importorskip(name)` skips quietly where the module is missing: every such module must come
    with the dev extra (`make test` installs it), or a fresh clone silently runs fewer tests than this one."""
    import re
    import sys

    if sys.version_info < (3, 11):
        pytest.skip("reads pyproject.toml with tomllib (Python 3.11+)")
    import tomllib

    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    installed = {re.split(r"[<>=!~\[; ]", req, maxsplit=1)[0].lower() for req in extra}
    skipped = set()
    for path in (ROOT / "tests").glob("*.py"):
        skipped |= set(re.findall(r"""importorskip\(\s*["']([\w.]+)["']""", path.read_text()))
    assert skipped, "the scan found no importorskip: the pattern is broken"
    missing = sorted(name for name in skipped if name.split(".")[0].lower() not in installed)
    assert not missing, f"tests skip without {missing}, which the dev extra does not install"
