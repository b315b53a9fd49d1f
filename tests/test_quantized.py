"""Weight-only int8 and int4 inference (`--precision int8|int4`): the rounding, the kernels' products, the
whole model, a GGUF file's Q8_0 and Q4 blocks run as stored, and Q4 files written and read back.

Both kernels (q8_0.c, q4_1.c) take fp32 activations and sum in fp32 in their own order: against the same
product computed in fp64 from the dequantized weights, each output may differ by fp32's summation error, the
bound below (2^-18 of the sum of |x| |w|); a bf16 output adds half a bf16 step (2^-8).
"""

from __future__ import annotations

import copy

import pytest
import torch

import scratchllm
from scratchllm.errors import ScratchLLMError
from scratchllm.generate import Sampling
from scratchllm.layers.linear import Linear, TiedHead
from scratchllm.layers.quantized import GROUP, Int4Weight, Int8Weight, int4_fits, q4_1, q8_0, quantize
from scratchllm.models import get_spec
from test_generate import tiny_gpt, tiny_llama


# -- int8: groups of 32, llama.cpp's Q8_0 blocks, our own kernel (q8_0.c) -------------------------------------

def test_q8_0_rule_gives_gguf_py_quantizer_codes():
    """q8_0 is ggml's rule: the codes and fp16 scales of gguf-py's Q8_0 quantizer, block for block, and the
    same dequantized weights; an all-zero group keeps a zero scale and zero codes."""
    import types

    import gguf

    from scratchllm.interop.gguf import _stored_blocks

    torch.manual_seed(0)
    w = torch.randn(48, 96) * torch.logspace(-4, 1, 48)[:, None]  # rows of very different sizes
    w[3, :32] = 0.0
    w[4, 5] = 127 * 0.5 / 3  # |w| / d lands half way between two codes: rounded away from zero, as np_roundf
    blocks = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q8_0)
    theirs = _stored_blocks(types.SimpleNamespace(tensor_type=gguf.GGMLQuantizationType.Q8_0, shape=[96, 48], data=blocks))
    ours = q8_0(w)
    assert theirs.kind == "q8_0" and ours.kind == "q8_0 rule" and ours.codes.dtype == torch.int8
    assert torch.equal(ours.codes, theirs.codes) and torch.equal(ours.scale, theirs.scale)
    dequantized = torch.from_numpy(gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q8_0)).reshape(48, 96)
    assert torch.equal(ours.dequantized(), dequantized)
    assert (ours.codes[3, :32] == 0).all() and ours.scale[3, 0] == 0
    # half a step of each group, plus the fp16 scale's rounding (2^-11 of it, times up to 127 codes), where the
    # scale is a normal fp16 number (>= 2^-14; the smallest rows here have subnormal scales, rounded coarser)
    step = ours.scale.repeat_interleave(GROUP, dim=1)
    normal = step >= 2**-14
    assert normal.float().mean() > 0.5
    assert ((ours.dequantized() - w).abs() <= step / 2 + 127 * 2**-11 * step)[normal].all()


def test_q8_0_rows_of_any_length_end_in_a_short_group():
    torch.manual_seed(0)
    w = torch.randn(5, 40)  # one whole group and 8 weights
    q = q8_0(w)
    assert q.codes.shape == (5, 40) and q.scale.shape == (5, 2)
    assert torch.equal(q.scale[:, 1], (w[:, 32:].abs().amax(1) / 127).half().float())  # the 8 weights' own scale
    assert (q.dequantized() - w).abs().max() <= q.scale.max() * (0.5 + 127 * 2**-11)


def _native():
    from scratchllm.layers import native

    return native.load("q8_0")


@pytest.mark.parametrize("in_features", [64, 80])  # 80: the kernel reads a short last group as zero codes
@pytest.mark.parametrize("rows", [1, 3, 17, 65, 300])  # the kernel up to native_rows (8 to 256, measured), then a float product
@pytest.mark.parametrize("out_features", [96, 98])  # several rows: 4 outputs at a time (AVX512), a last 2
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_int8_kernel_gives_the_product_of_the_dequantized_weights(dtype, out_features, rows, in_features):
    """The kernel sums fp32 products in its own order: within fp32's rounding of the sum of |x| |w| of the
    exact product (fp64 of the dequantized weights); a bf16 output adds half a bf16 step."""
    torch.manual_seed(0)
    w, bias = torch.randn(out_features, in_features), torch.randn(out_features)
    x = torch.randn(rows, in_features).to(dtype)
    q = Int8Weight(q8_0(w))
    y = q(x, bias.to(dtype))
    assert y.shape == (rows, out_features) and y.dtype == dtype
    exact = x.double() @ q.dequantized().double().t() + bias.to(dtype).double()
    size = x.double().abs() @ q.dequantized().double().abs().t() + bias.abs().double()
    bound = (2**-8 if dtype == torch.bfloat16 else 2**-18) * size
    assert ((y.double() - exact).abs() <= bound).all()


@pytest.mark.skipif(_native() is None, reason="no C compiler to build q8_0.c")
def test_the_int8_kernel_is_the_native_one_and_threads_do_not_change_it(monkeypatch):
    """Where a C compiler exists the decoding product (one row) runs q8_0.c (not the float fallback, which is
    slow: it dequantizes the weight at every call); each output is summed by one thread in one order, so one
    thread or two give the same bits, in both kernels, one row or several; the kernel refuses what it cannot
    take (no rows, part of a group)."""
    from scratchllm.layers import quantized

    torch.manual_seed(0)
    q = Int8Weight(q8_0(torch.randn(200, 96)))
    q4 = Int4Weight(q4_1(torch.randn(198, 96)))
    x, rows = torch.randn(1, 96), torch.randn(11, 96)
    quantized.native_rows("q8_0"), quantized.native_rows("q4_1")  # measured (with float products) before
    monkeypatch.setattr(torch.nn.functional, "linear", None)  # the fallback would fail: it is not taken
    threads = torch.get_num_threads()
    results = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            results.append([q(x, None), q4(x, None), q.product(rows, native=True), q4.product(rows, native=True)])
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(one, two) for one, two in zip(*results))
    kernel = quantized._kernel("q8_0")
    y = torch.empty(1, 200)
    assert kernel(torch.randn(1, 90).data_ptr(), q.codes.data_ptr(), q.scale.data_ptr(), y.data_ptr(), 1, 90, 200, 1) == 1
    assert kernel(torch.randn(1, 96).data_ptr(), q.codes.data_ptr(), q.scale.data_ptr(), y.data_ptr(), 0, 96, 200, 1) == 1


def test_without_a_compiler_int8_still_multiplies_and_says_it_is_slow(monkeypatch, tmp_path):
    """No compiler (or SCRATCHLLM_NO_NATIVE): the dequantized weight in a float product, the same result to
    fp32 rounding, and a warning that names why; a kernel, once built, is cached and not built again."""
    from scratchllm.layers import native, quantized

    torch.manual_seed(0)
    q = Int8Weight(q8_0(torch.randn(64, 96)))
    x = torch.randn(1, 96)
    exact = x.double() @ q.dequantized().double().t()
    monkeypatch.setenv("SCRATCHLLM_NO_NATIVE", "1")
    native.load.cache_clear()
    quantized._kernel.cache_clear()
    try:
        with pytest.warns(UserWarning, match="dequantize their weight at every call.*SCRATCHLLM_NO_NATIVE"):
            y = q(x, None)
        assert ((y.double() - exact).abs() <= 2**-18 * (x.double().abs() @ q.dequantized().double().abs().t())).all()
        monkeypatch.delenv("SCRATCHLLM_NO_NATIVE")
        monkeypatch.setenv("SCRATCHLLM_CACHE", str(tmp_path))
        monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))  # no cc, gcc or clang
        monkeypatch.delenv("CC", raising=False)
        native.load.cache_clear()
        assert native.load("q8_0") is None and "no C compiler" in native.why_not("q8_0")
    finally:
        native.load.cache_clear()
        quantized._kernel.cache_clear()


@pytest.mark.skipif(_native() is None, reason="no C compiler to build q8_0.c")
def test_a_kernel_is_built_once_per_cpu_and_then_loaded(monkeypatch, tmp_path):
    from scratchllm.layers import native

    monkeypatch.setenv("SCRATCHLLM_CACHE", str(tmp_path))
    native.load.cache_clear()
    try:
        assert native.load("q8_0") is not None
        built = list((tmp_path / "kernels").iterdir())
        assert len(built) == 1 and built[0].name.startswith("q8_0-") and built[0].suffix == ".so"  # no temporary left
        stamp = built[0].stat().st_mtime_ns
        native.load.cache_clear()
        assert native.load("q8_0") is not None and built[0].stat().st_mtime_ns == stamp
        assert list((tmp_path / "kernels").iterdir()) == built
    finally:
        native.load.cache_clear()


def _dequantized_product(self, x, bias):  # the same product in fp32 from the dequantized weights
    y = (x.float() @ self.dequantized().t()).to(x.dtype)
    return y if bias is None else y + bias


@pytest.mark.parametrize("kind, moves", [("int8", 0.1), ("int4", 0.3)])  # how far the rounding may move the logits
@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt])
def test_a_quantized_model_computes_its_dequantized_weights_logits(make, kind, moves, monkeypatch):
    """Every projection goes through its compact form (int4 where the kernel takes the Linear's shape, whole
    groups of 32 inputs, else int8), the tied head through int8; the float Linears' weights are gone."""
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
    assert (got - want).abs().max() < 1e-5 * want.abs().max()  # fp32 sums in the kernels' own order
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
    assert torch.equal(ours.codes, theirs.codes) and torch.equal(ours.scale, theirs.scale) and torch.equal(ours.min, theirs.min)
    assert (ours.codes[3, :32] == 0).all() and ours.dequantized()[3, :32].eq(0.25).all()


def test_int4_packing_keeps_every_code_scale_and_minimum():
    """Two codes a byte in GGUF's order (byte j of a group: code j low, code j + 16 high), the fp32 scale and
    Q4_1's minimum: the dequantized weights are the groups' own (the fp16 values of a file, exactly)."""
    torch.manual_seed(0)
    groups = q4_1(torch.randn(96, 64))
    q = Int4Weight(groups)
    assert torch.equal(q._codes(), groups.codes)  # the packed layout loses nothing
    assert q.codes.shape == (96, 32) and torch.equal(q.codes[:, :16] & 0x0F, groups.codes[:, :16])
    assert torch.equal(q.codes[:, :16] >> 4, groups.codes[:, 16:32])
    assert torch.allclose(q.dequantized(), groups.dequantized(), rtol=0, atol=1e-6 * groups.dequantized().abs().max())
    assert q.nbytes == 96 * 64 // 2 + 96 * 2 * 4 * 2  # half a byte a weight, fp32 scale and minimum per group


# q4_1.c: one row; up to 8 rows unpacked straight into registers (AVX512); more, through a dequantized tile
# of 4 weight rows (98 outputs: a last tile of 2); past native_rows (8 to 256, measured per CPU), a float product
@pytest.mark.parametrize("rows", [(1,), (2, 3), (3, 5), (17,), (65,), (300,)])
@pytest.mark.parametrize("out_features", [96, 98])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_int4_kernel_gives_the_product_of_the_dequantized_weights(dtype, out_features, rows):
    torch.manual_seed(0)
    w, bias = torch.randn(out_features, 64), torch.randn(out_features)
    x = torch.randn(*rows, 64).to(dtype)
    q = Int4Weight(q4_1(w))
    y = q(x, bias.to(dtype))
    assert y.shape == (*rows, out_features) and y.dtype == dtype
    exact = x.double() @ q.dequantized().double().t() + bias.to(dtype).double()
    size = x.double().abs() @ q.dequantized().double().abs().t() + bias.abs().double()
    bound = (2**-8 if dtype == torch.bfloat16 else 2**-18) * size
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
        assert lm.model.lm_head.quantized.kind == "q8_0"  # the file's Q8_0 head, as stored
    lm = scratchllm.load_pretrained(write_gguf(tmp_path / "q8.gguf", cfg, tensors, tok, file_type="q8_0"), precision="int4")
    assert lm.model.blocks[0].attn.qkv.quantized.kind == "q4_1 rule"


@pytest.mark.parametrize("tie", [False, True])
def test_a_q8_0_gguf_file_runs_as_stored(tmp_path, tie, monkeypatch):
    """--precision int8 on a Q8_0 file multiplies by its codes and scales exactly (Q8_0 is the int8 form): every
    projection, q and k rows permuted as the float weights are, and the head (a tied one: the embedding's
    blocks); its logits are the dequantized file's to fp32 rounding. A q4_1 file under int8: the Q4 values
    rounded again by Q8_0's rule, the Q8_0 head as stored."""
    from test_gguf import _tokenizer, hf_model, hf_tensors, tiny_config

    from scratchllm.interop.gguf import read_gguf, write_gguf

    tok = _tokenizer("gpt2")
    cfg = tiny_config(tie=tie)
    tensors = hf_tensors(hf_model(cfg))
    path = write_gguf(tmp_path / "q8.gguf", cfg, tensors, tok, file_type="q8_0")
    # the rest of the model in fp32 (on a CPU with native bf16 int8 keeps it in bf16): this compares the products
    monkeypatch.setattr(scratchllm.device, "cpu_has_fast_bf16", lambda: False)
    lm = scratchllm.load_pretrained(path, precision="int8")
    fp32 = scratchllm.load_pretrained(path, precision="fp32")
    g = read_gguf(path, keep_blocks=True)
    qkv = lm.model.blocks[0].attn.qkv.quantized
    assert isinstance(qkv, Int8Weight) and qkv.kind == "q8_0"
    names = [f"model.layers.0.self_attn.{p}_proj.weight" for p in "qkv"]
    assert torch.equal(qkv.blocks().codes, torch.cat([g.blocks[n].codes for n in names]))
    assert torch.equal(qkv.dequantized(), fp32.model.blocks[0].attn.qkv.weight.t())  # the file's weights, exactly
    kinds = {n: m.quantized.kind for n, m in lm.model.named_modules() if isinstance(m, (Linear, TiedHead))}
    assert set(kinds.values()) == {"q8_0"} and "lm_head" in kinds
    assert isinstance(lm.model.lm_head, TiedHead) == tie
    ids = torch.tensor([lm.encode("The quick brown fox")])
    with torch.no_grad():
        got, want = lm.model(ids), fp32.model(ids)
    assert (got - want).abs().max() < 1e-4 * want.abs().max()
    lm4 = scratchllm.load_pretrained(write_gguf(tmp_path / "q4.gguf", cfg, tensors, tok, file_type="q4_1"), precision="int8")
    assert lm4.model.blocks[0].attn.qkv.quantized.kind == "q8_0 rule" and lm4.model.lm_head.quantized.kind == "q8_0"


def test_a_run_loads_decodes_and_evaluates_in_int4(llama_run):
    from scratchllm.cli import main
    from scratchllm.evaluate import evaluate_checkpoint

    lm = scratchllm.load_pretrained(llama_run, precision="int4")
    kinds = {n: type(m.quantized) for n, m in lm.model.named_modules() if isinstance(m, Linear)}
    assert set(kinds.values()) == {Int4Weight}  # the untied head too: whole groups of inputs
    fp32 = evaluate_checkpoint(str(llama_run), precision="fp32", max_batches=2)["loss"]
    int4 = evaluate_checkpoint(str(llama_run), precision="int4", max_batches=2)["loss"]
    assert int4 == pytest.approx(fp32, rel=0.05) and int4 != fp32  # 16 levels per group of 32 cost a little loss
    assert main(["sample", "--checkpoint", str(llama_run), "--precision", "int4", "--max-new-tokens", "4",
                 "--prompt", "Thou"]) in (0, None)


def test_quantized_form_names_what_quantize_made():
    from scratchllm.layers.quantized import quantized_form

    from scratchllm.models.llama import Llama, LlamaConfig

    model = Llama(LlamaConfig(vocab_size=50, block_size=32, n_layer=1, n_head=4, n_kv_head=2, n_embd=48)).eval()
    assert quantized_form(model) is None
    quantize(model, "int4")
    assert quantized_form(model) == "int4 + int8"  # 48 inputs are not whole groups of 32: int8; the MLP's down (128) int4
    assert isinstance(model.blocks[0].mlp.down.quantized, Int4Weight)
    gpt = tiny_gpt()
    quantize(gpt, "int8")
    assert quantized_form(gpt) == "int8"


@pytest.mark.parametrize("kind", ["q8_0", "q4_1"])
def test_the_kernel_and_the_float_product_agree_at_any_row_count(kind):
    """Which of the two a product takes is a measured choice (native_rows): both must give the product of the
    dequantized weights within fp32's rounding, at the same rows."""
    torch.manual_seed(0)
    w = torch.randn(40, 96)
    weight = Int8Weight(q8_0(w)) if kind == "q8_0" else Int4Weight(q4_1(w))
    x = torch.randn(100, 96)
    exact = x.double() @ weight.dequantized().double().t()
    bound = 2**-18 * (x.double().abs() @ weight.dequantized().double().abs().t())
    for native in (True, False):
        assert ((weight.product(x, native).double() - exact).abs() <= bound).all()


@pytest.mark.skipif(_native() is None, reason="no C compiler to build the kernels")
def test_the_kernel_row_limit_is_measured_once_per_build_and_kept(monkeypatch):
    """native_rows measures the crossover on this CPU the first time (torch's random state untouched), keeps it
    as JSON beside the kernel's build, reads it back in a later process instead of measuring again, and
    measures again (replacing it) when the kept file does not hold one of the counts it tries."""
    import json
    from pathlib import Path

    from scratchllm.layers import native, quantized

    path = Path(native.load("q4_1")._name).with_suffix(".rows.json")
    monkeypatch.setattr(quantized, "native_rows", quantized.native_rows.__wrapped__)  # no process-wide memo here
    path.unlink(missing_ok=True)
    state = torch.get_rng_state()
    rows = quantized.native_rows("q4_1")
    assert torch.equal(torch.get_rng_state(), state)
    assert rows in (1, *quantized._ROW_STEPS)
    kept = json.loads(path.read_text())
    assert kept["rows"] == rows and len(kept["microseconds (kernel, float) by rows"]) >= 1

    def measure(name):
        raise AssertionError("measured again")

    monkeypatch.setattr(quantized, "_calibrate", measure)
    assert quantized.native_rows("q4_1") == rows  # read back
    for hostile in ('{"rows": 1000000000}', '{"rows": "all"}', "not json", '["rows"]'):
        path.write_text(hostile)
        monkeypatch.setattr(quantized, "_calibrate", lambda name: (16, {16: (1.0, 2.0)}))
        assert quantized.native_rows("q4_1") == 16
        assert json.loads(path.read_text())["rows"] == 16
    path.unlink()
