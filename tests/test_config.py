import pytest

from scratchllm.config import apply_overrides
from scratchllm.errors import ScratchLLMError
from scratchllm.models import GPTConfig
from scratchllm.models.presets import PRESETS, get_preset
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
