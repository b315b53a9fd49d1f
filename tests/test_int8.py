"""Weight-only int8 inference (`--precision int8`): the rounding, the kernel's product, the whole model.

The kernel multiplies bf16 activations by int8 weights and accumulates in fp32; its result is rounded to
bf16. So against the same product computed in fp64 from the dequantized weights, each output may differ by
half a bf16 step of itself plus the fp32 summation's error: the bound below, 2^-8 of the sum of |x| |w|.
"""

from __future__ import annotations

import copy

import pytest
import torch

import scratchllm
from scratchllm.errors import ScratchLLMError
from scratchllm.generate import Sampling
from scratchllm.layers.linear import Int8Weight, Linear, TiedHead, quantize_int8
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


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt])
def test_a_quantized_model_computes_its_dequantized_weights_logits(make, monkeypatch):
    """Every projection (and the tied head) goes through int8; the float Linears' weights are gone."""
    model = make()
    ids = torch.randint(0, 50, (2, 12))
    with torch.no_grad():
        before = model(ids)
        quantize_int8(model)
        got = model(ids)
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    assert linears and all(m.weight is None and m.int8 is not None for m in linears)
    heads = [m for m in model.modules() if isinstance(m, TiedHead)]
    assert all(h.int8 is not None and h.weight is not None for h in heads)  # the lookup keeps its table
    assert not any("weight" in k and k.rsplit(".", 2)[-2] in ("qkv", "proj", "fc", "up", "down", "gate_up")
                   for k in model.state_dict())

    def reference(self, x, bias):  # the same product in fp32 from the dequantized weights
        y = (x.bfloat16().float() @ self.dequantized().t()).to(x.dtype)
        return y if bias is None else y + bias

    monkeypatch.setattr(Int8Weight, "__call__", reference)
    with torch.no_grad():
        want = model(ids)
    assert (got - want).abs().max() < 2e-2 * want.abs().max()  # bf16 outputs of each product, two layers deep
    assert (got - before).abs().max() < 0.1 * before.abs().max()  # int8 rounding moves the logits a little


@pytest.fixture(scope="module")
def llama_run(trained):
    return trained("llama-bpe-baby")


def test_a_run_loads_decodes_and_evaluates_in_int8(llama_run, capsys):
    from scratchllm.cli import main
    from scratchllm.evaluate import evaluate_checkpoint

    lm = scratchllm.load_pretrained(llama_run, precision="int8")
    assert all(m.int8 is not None for m in lm.model.modules() if isinstance(m, (Linear, TiedHead)))
    reply = lm.complete(lm.encode("Thou"), Sampling(max_tokens=8, temperature=0.0))
    assert reply.tokens and len(reply.tokens) <= 8
    fp32 = evaluate_checkpoint(str(llama_run), precision="fp32", max_batches=2)["loss"]
    int8 = evaluate_checkpoint(str(llama_run), precision="int8", max_batches=2)["loss"]
    assert int8 == pytest.approx(fp32, rel=0.01)  # the same model, its weights rounded to 1 part in 254 of a row
    assert main(["sample", "--checkpoint", str(llama_run), "--precision", "int8", "--max-new-tokens", "4",
                 "--prompt", "Thou"]) in (0, None)


def test_a_model_without_an_int8_form_is_refused_in_one_line():
    with pytest.raises(ScratchLLMError, match="has no int8 form; use --precision bf16 or fp32"):
        get_spec("siglip").quantize_int8(torch.nn.Linear(2, 2), "shapes.ckpt")
