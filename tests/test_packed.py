"""oneDNN-packed weights for CPU decoding (layers/linear.py): the same numbers, never stale, never trained."""

import pytest
import torch

from scratchllm.generate import generate_batch
from scratchllm.models.decode import decoding_bf16_layout
from scratchllm.models.llama_step import why_not_fused
from scratchllm.layers import Linear, TiedHead, pack_for_inference, packed_for_inference, unpack
from scratchllm.layers import linear
from scratchllm.layers.linear import OutInWeight, PackedWeight, can_pack
from scratchllm.models import GPT, GPTConfig, Llama, LlamaConfig

pytestmark = pytest.mark.skipif(not can_pack(torch.zeros(1)), reason="this torch has no oneDNN (mkldnn) CPU kernels")


@pytest.fixture(autouse=True)
def pack_small_fp32_weights_too(monkeypatch):
    """Tiny models: fp32 weights this small are not packed by default (it would be slower), so these
    tests lower the threshold to exercise the packed path on them."""
    monkeypatch.setattr(linear, "FP32_PACK_MIN_MODEL_BYTES", 0)


def tiny_llama(dtype=torch.float32, tie=True):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=70, block_size=48, n_layer=2, n_head=4, n_kv_head=2, n_embd=32, tie_embeddings=tie)
    return Llama(config).eval().to(dtype)


def tiny_gpt(dtype=torch.float32):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=70, block_size=48, n_layer=2, n_head=2, n_embd=32, bias=True)).eval().to(dtype)


def projections(model):
    return [m for m in model.modules() if isinstance(m, (Linear, TiedHead))]


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt, lambda: tiny_llama(tie=False)])
def test_every_projection_is_packed_and_gives_the_same_logits(make):
    model = make()
    ids = torch.randint(0, 70, (3, 11))
    with torch.no_grad():
        plain = model(ids)
        made = pack_for_inference(model)
        assert len(made) == len(projections(model)) and all(m.packed is not None for m in projections(model))
        assert pack_for_inference(model) == []  # still valid: nothing repacked
        packed = model(ids)
    torch.testing.assert_close(packed, plain, atol=1e-5, rtol=1e-5)
    unpack(model)
    assert all(m.packed is None for m in projections(model))


def test_bf16_packed_products_equal_torchs_bit_for_bit():
    model = tiny_llama(torch.bfloat16)
    ids = torch.randint(0, 70, (2, 9))
    with torch.inference_mode():
        plain = model(ids)
        pack_for_inference(model)
        assert torch.equal(model(ids), plain)
        assert torch.equal(model(ids[:, :1]), (unpack(model), model(ids[:, :1]))[1])  # one row, as in decoding


def test_the_state_dict_holds_no_packed_copy_and_no_second_embedding():
    for model in (tiny_llama(), tiny_gpt()):
        keys = set(model.state_dict())
        pack_for_inference(model)
        assert set(model.state_dict()) == keys
        assert not any("head" in k and "embed" in k for k in keys)  # the tied head owns no tensor


def test_a_changed_weight_is_used_not_its_stale_packed_copy():
    model = tiny_llama()
    ids = torch.randint(0, 70, (1, 6))
    pack_for_inference(model)
    with torch.no_grad():
        before = model(ids)
        model.blocks[0].mlp.down.weight.mul_(3.0)  # in place: the version counter moves
        model.embed.weight.add_(0.5)  # the tied head's table
        changed = model(ids)
        unpack(model)
        expected = model(ids)
    assert (changed - before).abs().max() > 0.1  # what the stale copies would have given
    # the changed weights computed unpacked; the other layers still packed (fp32: rounding apart)
    torch.testing.assert_close(changed, expected, atol=1e-5, rtol=1e-5)

    fresh = tiny_llama()
    pack_for_inference(fresh)
    fresh.load_state_dict(model.state_dict())  # copies into the same storage: every version moves
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids), expected, atol=0, rtol=0)
    fresh.to(torch.bfloat16)  # new storage in another dtype: the fp32 packs no longer apply
    with torch.no_grad():
        out = fresh(ids)
    assert out.dtype == torch.bfloat16


def test_training_never_goes_through_a_packed_weight():
    model = tiny_gpt().train()
    pack_for_inference(model)
    ids = torch.randint(0, 70, (2, 8))
    _, loss = model(ids, targets=ids)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.step()
    with torch.no_grad():
        after_step = model.eval()(ids)
        unpack(model)
        torch.testing.assert_close(after_step, model(ids), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_generation_packs_the_model_and_decodes_the_same_tokens(dtype):
    model = tiny_llama(dtype)
    prompts = [[1, 2, 3, 4, 5], [7, 8]]
    reference = []
    with torch.inference_mode():  # the reference: the unpacked forward, step by step, greedy
        for prompt in prompts:
            ids = list(prompt)
            for _ in range(12):
                ids.append(int(model(torch.tensor([ids]))[0, -1].float().argmax()))
            reference.append(ids[len(prompt):])
    assert all(m.packed is None for m in projections(model))
    # packed for the call: bf16 as the (out, in) copies the one-call step reads where it decodes this model
    # (test_fused_step.py); else by oneDNN where it packs this dtype (bf16 only where its kernels do bf16: not with
    # ONEDNN_MAX_CPU_ISA=AVX2 or on a CPU without AVX512), else bf16 as an (out, in) copy; decoded the same.
    onednn = PackedWeight if can_pack(torch.empty(1, dtype=dtype)) else OutInWeight if dtype == torch.bfloat16 else None
    stepped = why_not_fused(model) is None
    layout = OutInWeight if dtype == torch.bfloat16 and stepped else onednn
    assert decoding_bf16_layout(model, fused=False) == "onednn"
    assert decoding_bf16_layout(model) == ("out_in" if stepped else "onednn")
    packs = layout is not None
    steps = generate_batch(model, prompts, 12, temperature=0)
    out = [next(steps)]
    assert all((m.packed is not None) == packs for m in projections(model))
    assert all(type(m.packed) is layout for m in projections(model) if packs)
    out += list(steps)
    assert all(m.packed is None for m in projections(model))  # and no longer after it
    assert [list(r) for r in zip(*out)] == reference
    with packed_for_inference(model):  # packed outside: generate keeps it, or (bf16, another layout) restores it
        outer = [m.packed for m in projections(model)]
        list(generate_batch(model, prompts, 2, temperature=0))
        assert all(m.packed is p for m, p in zip(projections(model), outer))
        plain = generate_batch(model, prompts[:1], 12, temperature=0, fused=False)  # the forward pass: oneDNN's
        assert next(plain) == [reference[0][0]]
        assert all(type(m.packed) is onednn and m.packed is p for m, p in zip(projections(model), outer) if packs)
        assert [t for (t,) in plain] == reference[0][1:]
        assert all(m.packed is p for m, p in zip(projections(model), outer))
    assert all(m.packed is None for m in projections(model))


def test_a_small_fp32_model_stays_unpacked_where_packing_is_slower(monkeypatch):
    monkeypatch.setattr(linear, "FP32_PACK_MIN_MODEL_BYTES", 64 * 2**20)
    model = tiny_llama()
    assert pack_for_inference(model) == []  # 0.04 MB of fp32 weights: left to torch
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():  # bf16 packing pays at every size
        assert len(pack_for_inference(model.to(torch.bfloat16))) == len(projections(model))
    assert not can_pack(torch.zeros(4, 4, dtype=torch.float16))


def test_a_bf16_weight_oneDNN_cannot_pack_gets_an_out_in_copy_with_the_same_products(monkeypatch):
    """On a CPU without oneDNN bf16 (AVX2 only) the (in, out) bf16 product is ~15x slower than (out, in)."""
    monkeypatch.setattr(linear, "can_pack", lambda weight: False)
    model = tiny_llama(torch.bfloat16)
    x = torch.randn(3, 7, 32, dtype=torch.bfloat16)
    q = model.blocks[0].attn.qkv
    with torch.no_grad():
        want = q(x)
        made = pack_for_inference(model)
        got = q(x)
    assert len(made) == len(projections(model)) and all(isinstance(m.packed, OutInWeight) for m in made)
    exact = x.double() @ q.weight.double()
    bound = 2**-7 * (x.double().abs() @ q.weight.double().abs())  # each is the fp32 sum rounded to bf16
    assert ((got.double() - exact).abs() <= bound).all() and ((want.double() - exact).abs() <= bound).all()
    head = [m for m in projections(model) if isinstance(m, TiedHead)]
    assert all(m.packed.tensor.data_ptr() == m.weight.data_ptr() for m in head)  # the table itself: no copy
