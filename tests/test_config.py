import pytest

from scratchllm.config import apply_overrides
from scratchllm.errors import ScratchLLMError
from scratchllm.models import GPTConfig
from scratchllm.train.presets import PRESETS, get_preset
from scratchllm.train.config import TrainConfig


def groups():
    return {"model": GPTConfig(), "train": TrainConfig()}


def test_bare_and_qualified_keys_set_typed_values():
    out = apply_overrides(groups(), ["n_layer=6", "train.lr=3e-4", "betas=0.8,0.95", "compile=true", "max_time=none"])
    assert out["model"].n_layer == 6
    assert out["train"].lr == 3e-4
    assert out["train"].betas == (0.8, 0.95)
    assert out["train"].compile is True
    assert out["train"].max_time is None


@pytest.mark.parametrize("item, message", [
    ("n_lyer=6", "unknown key"),
    ("n_layer=six", "expected an integer"),
    ("lr=fast", "expected a number"),
    ("compile=maybe", "expected true or false"),
    ("n_embd=130", "not divisible by n_head"),
    ("precision=fp16", "not one of"),
    ("n_layer", "expected key=value"),
    ("betas=0.9", "comma-separated"),
])
def test_bad_overrides_are_one_line_errors(item, message):
    with pytest.raises(ScratchLLMError, match=message) as e:
        apply_overrides(groups(), [item])
    assert "\n" not in str(e.value)


def test_presets_match_nanogpt():
    baby = get_preset("gpt-char-baby")
    assert (baby.model.n_layer, baby.model.n_head, baby.model.n_embd, baby.model.block_size) == (4, 4, 128, 64)
    assert baby.model.dropout == 0.0
    t = baby.train
    assert (t.batch_size, t.lr, t.min_lr, t.max_steps, t.warmup_steps) == (12, 1e-3, 1e-4, 2000, 100)
    assert (t.betas, t.weight_decay, t.grad_clip, t.eval_interval, t.eval_batches) == ((0.9, 0.99), 0.1, 1.0, 250, 20)
    full = get_preset("gpt-char")
    assert (full.model.n_layer, full.model.n_head, full.model.n_embd, full.model.block_size, full.model.dropout) == (6, 6, 384, 256, 0.2)
    assert (full.train.batch_size, full.train.max_steps) == (64, 5000)
    assert set(PRESETS) >= {"bigram-char", "gpt-char-baby", "gpt-char"}


def test_unknown_preset():
    with pytest.raises(ScratchLLMError, match="unknown preset 'gpt-huge'.*gpt-char-baby"):
        get_preset("gpt-huge")


def test_nested_fields_are_reachable_and_checked_together():
    p = get_preset("paligemma-shapes")
    out = apply_overrides({"model": p.model, "train": p.train}, ["text.n_layer=1", "vision.patch_size=8", "model.vision.n_embd=64"])
    assert (out["model"].text.n_layer, out["model"].vision.patch_size, out["model"].vision.n_embd) == (1, 8, 64)
    with pytest.raises(ScratchLLMError, match="ambiguous, qualify it as one of vision.n_layer, text.n_layer"):
        apply_overrides({"model": p.model}, ["n_layer=2"])
    with pytest.raises(ScratchLLMError, match="image_size 32 is not a multiple of patch_size 5"):
        apply_overrides({"model": p.model}, ["vision.patch_size=5"])
    # checked on the finished config, so the order of the overrides does not matter
    for order in (["n_layer=12", "n_head=12", "n_embd=768"], ["n_embd=768", "n_head=12", "n_layer=12"]):
        out = apply_overrides(groups(), order)
        assert (out["model"].n_layer, out["model"].n_head, out["model"].n_embd) == (12, 12, 768)


def test_derived_fields_are_not_set_by_hand():
    with pytest.raises(ScratchLLMError, match="set from the tokenizer or data.*tokenizer.vocab_size"):
        apply_overrides(groups(), ["vocab_size=100"])


@pytest.mark.parametrize("item, message", [
    ("lr=nan", "finite number"), ("lr=inf", "finite number"), ("weight_decay=-1", "weight_decay >= 0"),
    ("betas=2,3", "betas must each be in"), ("seed=18446744073709551616", "seed must be"),
    ("dropout=1.5", "dropout must be in"), ("n_layer=100000000", "n_layer must be from"),
])
def test_out_of_range_values_are_refused(item, message):
    with pytest.raises(ScratchLLMError, match=message):
        apply_overrides(groups(), [item])


def test_config_json_values_are_type_checked():
    from scratchllm.config import from_dict

    for data, message in (({"n_layer": "4"}, "must be an integer"), ({"n_layer": None}, "must be an integer"),
                          ({"dropout": float("nan")}, "finite"), ({"bias": 1}, "true or false"),
                          ({"n_embd": 1 << 30}, "n_embd must be from"), ({"block_size": 1}, "context .* at least 2 tokens"), ({"n_heads": 4}, "unknown keys")):
        with pytest.raises(ScratchLLMError, match=message):
            from_dict(GPTConfig, data)


def test_precision_auto_follows_the_environment(monkeypatch):
    """SCRATCHLLM_PRECISION says what "auto" means for training (so a lesson runs on either CPU path
    unchanged); an explicit precision still wins, and a bad value is a one-line error."""
    import torch

    from scratchllm.device import cpu_has_fast_bf16, resolve_precision

    cpu = torch.device("cpu")
    monkeypatch.delenv("SCRATCHLLM_PRECISION", raising=False)
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_has_fast_bf16() else "fp32")
    for forced in ("fp32", "bf16"):
        monkeypatch.setenv("SCRATCHLLM_PRECISION", forced)
        assert resolve_precision("auto", cpu) == forced
    assert resolve_precision("fp32", cpu) == "fp32"
    monkeypatch.setenv("SCRATCHLLM_PRECISION", "fp16")
    with pytest.raises(ScratchLLMError, match="SCRATCHLLM_PRECISION='fp16' is not fp32 or bf16"):
        resolve_precision("auto", cpu)


@pytest.mark.parametrize("env", [{"ATEN_CPU_CAPABILITY": "avx2"}, {"ONEDNN_MAX_CPU_ISA": "AVX2"}])
def test_kernels_held_to_avx2_count_as_no_native_bf16(env):
    """Forcing another CPU's code path (as the course is checked) must not leave "auto" on bf16, which those
    kernels only emulate, several times slower. Read in a fresh process: torch reads these at import."""
    import os
    import subprocess
    import sys

    code = "from scratchllm.device import cpu_has_fast_bf16; print(cpu_has_fast_bf16())"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"
