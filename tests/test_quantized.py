"""Weight-only int8 and int4 inference (`--precision int8|int4`): the rounding, the kernels' products, the
whole model, a GGUF file's Q4 blocks run as stored, and Q4 files written and read back.

Both kernels multiply bf16 activations by the unpacked weights and accumulate in fp32; the result is
rounded to bf16. So against the same product computed in fp64 from the dequantized weights, each output may
differ by half a bf16 step of itself plus the fp32 summation's error: the bound below, 2^-8 of the sum of
|x| |w|.
"""

from __future__ import annotations

import copy

import pytest
import torch

import scratchllm
from scratchllm.errors import ScratchLLMError
from scratchllm.generate import Sampling
from scratchllm.layers.linear import Linear, TiedHead
from scratchllm.layers.quantized import GROUP, Int4Weight, Int8Weight, int4_fits, q4_1, quantize
from scratchllm.models import get_spec
from test_generate import tiny_gpt, tiny_llama


def test_rounding_to_int8_is_within_half_a_step_of_each_row():
    torch.manual_seed(0)
    w = torch.randn(96, 64) * torch.logspace(-3, 1, 96)[:, None]  # rows of very different sizes
    w[5] = 0.0  # an all-zero row keeps a finite scale
    q = Int8Weight(w)
    assert q.q.dtype == torch.int8 and q.q.shape == (96, 64) and q.q.abs().max() <= 127
    step = q.scale.float()[:, None]
    # the bf16 scale moves the grid by up to 2^-9 of a row's largest entry: half a step plus that
    assert ((q.dequantized() - w).abs() <= step / 2 + 2**-8 * w.abs().amax(1, keepdim=True) + 1e-12).all()
    assert (q.dequantized()[5] == 0).all() and torch.isfinite(q.scale.float()).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_kernel_gives_the_product_of_the_dequantized_weights(dtype):
    torch.manual_seed(0)
    w, bias = torch.randn(96, 64), torch.randn(96)
    x = torch.randn(3, 5, 64).to(dtype)
    q = Int8Weight(w)
    y = q(x, bias.to(dtype))
    assert y.shape == (3, 5, 96) and y.dtype == dtype
    xb = x.bfloat16().double()  # what the kernel multiplies
    exact = xb @ q.dequantized().double().t() + bias.to(dtype).double()
    bound = 2**-8 * (xb.abs() @ q.dequantized().double().abs().t() + bias.abs().double())
    assert ((y.double() - exact).abs() <= bound).all()


def _dequantized_product(self, x, bias):  # the same product in fp32 from the dequantized weights
    y = (x.bfloat16().float() @ self.dequantized().t()).to(x.dtype)
    return y if bias is None else y + bias


@pytest.mark.parametrize("kind, moves", [("int8", 0.1), ("int4", 0.3)])  # how far the rounding may move the logits
@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt])
def test_a_quantized_model_computes_its_dequantized_weights_logits(make, kind, moves, monkeypatch):
    """Every projection goes through its compact form (int4 where the kernel takes the Linear's shape, else
    int8: an untied head of 50 outputs), the tied head through int8; the float Linears' weights are gone."""
    model = make()
    ids = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        before = model(ids)
        quantize(model, kind)
        got = model(ids)
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    form = {m: Int4Weight if kind == "int4" and int4_fits(m.in_features, m.out_features) else Int8Weight for m in linears}
    assert linears and all(m.weight is None and isinstance(m.quantized, form[m]) for m in linears)
    assert kind == "int8" or sum(f is Int4Weight for f in form.values()) >= 6
    heads = [m for m in model.modules() if isinstance(m, TiedHead)]
    assert all(isinstance(h.quantized, Int8Weight) and h.weight is not None for h in heads)  # the lookup keeps its table
    assert not any("weight" in k and k.rsplit(".", 2)[-2] in ("qkv", "proj", "fc", "up", "down", "gate_up")
                   for k in model.state_dict())
    monkeypatch.setattr(Int8Weight, "__call__", _dequantized_product)
    monkeypatch.setattr(Int4Weight, "__call__", _dequantized_product)
    with torch.no_grad():
        want = model(ids)
    assert (got - want).abs().max() < 2e-2 * want.abs().max()  # bf16 outputs of each product, two layers deep
    assert (got - before).abs().max() < moves * before.abs().max()  # the rounding moves the logits, not far


@pytest.fixture(scope="module")
def llama_run(trained):
    return trained("llama-bpe-baby")


def test_a_run_loads_decodes_and_evaluates_in_int8(llama_run, capsys):
    from scratchllm.cli import main
    from scratchllm.evaluate import evaluate_checkpoint

    lm = scratchllm.load_pretrained(llama_run, precision="int8")
    assert all(m.quantized is not None for m in lm.model.modules() if isinstance(m, (Linear, TiedHead)))
    reply = lm.complete(lm.encode("Thou"), Sampling(max_tokens=8, temperature=0.0))
    assert reply.tokens and len(reply.tokens) <= 8
    fp32 = evaluate_checkpoint(str(llama_run), precision="fp32", max_batches=2)["loss"]
    int8 = evaluate_checkpoint(str(llama_run), precision="int8", max_batches=2)["loss"]
    assert int8 == pytest.approx(fp32, rel=0.01)  # the same model, its weights rounded to 1 part in 254 of a row
    assert main(["sample", "--checkpoint", str(llama_run), "--precision", "int8", "--max-new-tokens", "4",
                 "--prompt", "Thou"]) in (0, None)


def test_a_model_without_an_int8_form_is_refused_in_one_line():
    for kind in ("int8", "int4"):
        with pytest.raises(ScratchLLMError, match=f"has no {kind} form; use --precision bf16 or fp32"):
            get_spec("siglip").quantize(torch.nn.Linear(2, 2), kind, "shapes.ckpt")


# -- int4: groups of 32, llama.cpp's Q4 blocks -------------------------------------------------------------

def test_q4_1_rule_gives_gguf_py_quantizer_codes():
    """q4_1 is ggml's rule: the codes, fp16 scale and minimum of gguf-py's Q4_1 quantizer, block for block."""
    import types

    import gguf

    from scratchllm.interop.gguf import _q4_groups

    torch.manual_seed(0)
    w = torch.randn(48, 96) * torch.logspace(-3, 0, 48)[:, None]
    w[3, :32] = 0.25  # a constant group: d = 0, every code 0
    blocks = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q4_1)
    theirs = _q4_groups(types.SimpleNamespace(tensor_type=gguf.GGMLQuantizationType.Q4_1, shape=[96, 48], data=blocks))
    ours = q4_1(w)
    assert torch.equal(ours.codes, theirs.codes) and torch.equal(ours.scale, theirs.scale) and torch.equal(ours.zero, theirs.zero)
    assert (ours.codes[3, :32] == 0).all() and ours.dequantized()[3, :32].eq(0.25).all()


def test_int4_packing_keeps_every_code_and_rounds_scales_to_bf16():
    torch.manual_seed(0)
    groups = q4_1(torch.randn(96, 64))
    q = Int4Weight(groups)
    assert torch.equal(q._codes(), groups.codes)  # the packed layout loses nothing
    # the kernel's scale and zero are bf16 (relative rounding 2^-8): a weight moves by at most 2^-8 (8 |scale| + |zero|)
    exact = groups.dequantized()
    per_group = (8 * groups.scale.abs() + groups.zero.abs()).repeat_interleave(GROUP, dim=1)
    assert ((q.dequantized() - exact).abs() <= 2**-8 * per_group + 1e-12).all()
    assert q.nbytes == 96 * 64 // 2 + 96 * 2 * 2 * 2  # half a byte a weight, bf16 scale and zero per group


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_int4_kernel_gives_the_product_of_the_dequantized_weights(dtype):
    torch.manual_seed(0)
    w, bias = torch.randn(96, 64), torch.randn(96)
    x = torch.randn(3, 5, 64).to(dtype)
    q = Int4Weight(q4_1(w))
    y = q(x, bias.to(dtype))
    assert y.shape == (3, 5, 96) and y.dtype == dtype
    xb = x.bfloat16().double()
    exact = xb @ q.dequantized().double().t() + bias.to(dtype).double()
    bound = 2**-8 * (xb.abs() @ q.dequantized().double().abs().t() + bias.abs().double())
    assert ((y.double() - exact).abs() <= bound).all()


def test_a_q4_gguf_file_runs_as_stored(tmp_path):
    """--precision int4 on a GGUF file of Q4 blocks multiplies by its codes, not by codes made again from the
    dequantized weights; the same model as q8_0 (no 4-bit blocks) gets Q4_1's rule, and an fp32 run int4 too."""
    from test_gguf import _tokenizer, hf_model, hf_tensors, tiny_config

    from scratchllm.interop.gguf import read_gguf, write_gguf

    tok = _tokenizer("gpt2")
    cfg = tiny_config()
    tensors = hf_tensors(hf_model(cfg))
    for file_type in ("q4_0", "q4_1"):
        path = write_gguf(tmp_path / f"{file_type}.gguf", cfg, tensors, tok, file_type=file_type)
        lm = scratchllm.load_pretrained(path, precision="int4")
        g = read_gguf(path, keep_blocks=True)
        qkv = lm.model.blocks[0].attn.qkv.quantized
        assert isinstance(qkv, Int4Weight) and qkv.kind == file_type
        names = [f"model.layers.0.self_attn.{p}_proj.weight" for p in "qkv"]
        assert torch.equal(qkv._codes(), torch.cat([g.blocks[n].codes for n in names]))
        if file_type == "q4_0":  # q4_1's rule on these weights gives other codes: they were not made again
            assert not torch.equal(qkv._codes(), q4_1(torch.cat([g.tensors[n] for n in names])).codes)
        reply = lm.complete(lm.encode("The quick"), Sampling(max_tokens=6, temperature=0.0))
        assert 1 <= len(reply.tokens) <= 6
    lm = scratchllm.load_pretrained(write_gguf(tmp_path / "q8.gguf", cfg, tensors, tok, file_type="q8_0"), precision="int4")
    assert lm.model.blocks[0].attn.qkv.quantized.kind == "q4_1 rule"


def test_a_run_loads_decodes_and_evaluates_in_int4(llama_run):
    from scratchllm.cli import main
    from scratchllm.evaluate import evaluate_checkpoint

    lm = scratchllm.load_pretrained(llama_run, precision="int4")
    kinds = {n: type(m.quantized) for n, m in lm.model.named_modules() if isinstance(m, Linear)}
    assert kinds.pop("lm_head") is Int8Weight and set(kinds.values()) == {Int4Weight}  # 300 outputs: not in tiles of 16
    fp32 = evaluate_checkpoint(str(llama_run), precision="fp32", max_batches=2)["loss"]
    int4 = evaluate_checkpoint(str(llama_run), precision="int4", max_batches=2)["loss"]
    assert int4 == pytest.approx(fp32, rel=0.05) and int4 != fp32  # 16 levels per group of 32 cost a little loss
    assert main(["sample", "--checkpoint", str(llama_run), "--precision", "int4", "--max-new-tokens", "4",
                 "--prompt", "Thou"]) in (0, None)


def test_quantized_form_names_what_quantize_made():
    from scratchllm.layers.quantized import quantized_form

    model = tiny_llama()
    assert quantized_form(model) is None
    quantize(model, "int4")
    assert quantized_form(model) == "int4 + int8"  # the untied head of 50 outputs is int8
    gpt = tiny_gpt()
    quantize(gpt, "int8")
    assert quantized_form(gpt) == "int8"
