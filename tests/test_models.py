import dataclasses
import math

import pytest
import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.models import GPT, Bigram, BigramConfig, GPTConfig, build_model
from scratchllm.train.presets import get_preset


def test_gpt_shapes_and_tied_embeddings():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65))
    idx = torch.randint(65, (3, 20))
    logits = model(idx)
    assert logits.shape == (3, 20, 65)
    logits2, loss = model(idx, torch.randint(65, (3, 20)))
    torch.testing.assert_close(logits, logits2)
    assert not any("head" in name for name in model.state_dict())  # the output head is wte itself
    # nanoGPT's baby GPT: 0.80M parameters counted once (the tied table once, positions included)
    assert sum(p.numel() for p in model.parameters()) == 804_096
    assert math.isclose(loss.item(), math.log(65), rel_tol=0.05)  # near-uniform predictions at init


def test_gpt2_init():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=500, n_layer=8, n_embd=256, n_head=4)
    model = GPT(cfg)
    assert abs(model.blocks[0].mlp.fc.weight.std().item() - 0.02) < 0.002
    assert abs(model.blocks[0].mlp.proj.weight.std().item() - 0.02 / math.sqrt(16)) < 0.001
    assert abs(model.blocks[3].attn.proj.weight.std().item() - 0.02 / math.sqrt(16)) < 0.001


def test_gpt_is_causal():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=30, n_layer=2, n_embd=32)).eval()
    idx = torch.randint(30, (1, 16))
    changed = idx.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % 30
    torch.testing.assert_close(model(idx)[:, :10], model(changed)[:, :10])


@pytest.mark.parametrize("preset", ["gpt-char-baby", "llama-bpe-baby", "gemma-bpe-baby"])
def test_logits_at_are_the_whole_forward_logits_at_those_positions(preset):
    """A prefill asks for one position's logits a row (the next token's); the head then runs on those
    rows only, and what it returns is the whole forward's at those positions, row by row."""
    p = get_preset(preset)
    cfg = dataclasses.replace(p.model, vocab_size=96, n_layer=2, block_size=16)
    torch.manual_seed(0)
    model = build_model(p.model_type, cfg).eval()
    idx = torch.randint(96, (3, 16))
    at = torch.tensor([15, 4, 9])
    with torch.no_grad():
        every = model(idx)  # (3, 16, 96)
        some = model(idx, logits_at=at)  # (3, 96)
    assert some.shape == (3, 96)
    torch.testing.assert_close(some, every[torch.arange(3), at], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(some[1], every[1, 15])  # row 1's is position 4's, not the last one's


def test_context_longer_than_block_is_refused():
    model = GPT(GPTConfig(vocab_size=10, block_size=8, n_layer=1, n_embd=16, n_head=2))
    with pytest.raises(ScratchLLMError, match="longer than the context of 8"):
        model(torch.zeros(1, 9, dtype=torch.long))


def test_bigram_starts_uniform_and_looks_back_one_token():
    model = Bigram(BigramConfig(vocab_size=7))
    idx = torch.tensor([[1, 2, 3]])
    logits, loss = model(idx, idx)
    assert logits.shape == (1, 3, 7)
    assert math.isclose(loss.item(), math.log(7), rel_tol=1e-6)
    with torch.no_grad():
        model.table.weight[2, 5] = 10.0
    assert model(torch.tensor([[4, 2]]))[0, 1].argmax() == 5


@pytest.mark.parametrize("preset", ["gpt-char-baby", "llama-bpe-baby", "gemma-bpe-baby"])
def test_a_compiled_model_compiles_once_and_trains_as_eager(preset):
    """What a model caches on first use (the bf16 causal bias, RoPE's tables) must not be read inside a
    compiled graph: the read is guarded, and the first call's miss recompiled the whole model at the
    second (twice the compile time of every compiled run). Any recompile fails here."""
    import torch._dynamo

    p = get_preset(preset)
    cfg = dataclasses.replace(p.model, vocab_size=96, n_layer=1, block_size=16)
    torch.manual_seed(0)
    model = build_model(p.model_type, cfg)
    torch._dynamo.reset()  # another test's compiled model must not count here
    compiled = torch.compile(model)
    for _ in range(3):
        idx, targets = torch.randint(96, (4, 16)), torch.randint(96, (4, 16))
        # bf16: the plain attention path, with its causal bias; the compiled call first, before eager fills any cache
        with torch._dynamo.config.patch(error_on_recompile=True), torch.autocast("cpu", dtype=torch.bfloat16):
            _, compiled_loss = compiled(idx, targets)
            _, loss = model(idx, targets)
        compiled_loss.backward()
        # the compiled graph rounds its fused intermediates to bf16 once where eager rounds each operation
        assert compiled_loss.item() == pytest.approx(loss.item(), rel=1e-2)
