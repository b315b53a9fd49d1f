"""The one-call decoding step (layers/llama_step.c, models/llama_step.py): the same logits and KV cache as the
model's own forward pass to fp32 rounding (fp32, int8, int4 weights), in any row of the engine's cache, on one
thread or two; in bf16 closer to the exact result than the forward pass in bf16 is; the engine takes it for a
Llama block and the model's forward pass for everything else."""

from __future__ import annotations

import pytest
import torch

from scratchllm.layers import pack_for_inference
from scratchllm.layers.quantized import quantize
from scratchllm.models.decode import GREEDY, Engine, Request, decoding_bf16_layout, kv_cache_dtype
from scratchllm.models.llama import Llama, LlamaConfig
from scratchllm.models.llama_step import FusedStep, fused_step, why_not_fused


def _model(kind: str | None, tie: bool = True, **changes) -> Llama:
    """kind: None (fp32), "bf16", "int8" or "int4"."""
    torch.manual_seed(0)
    config = dict(vocab_size=96, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=64, tie_embeddings=tie)
    model = Llama(LlamaConfig(**{**config, **changes})).eval()
    with torch.no_grad():  # weights of some size, so that the products and the softmax do something
        for p in model.parameters():
            p.add_(torch.randn_like(p) * (0.05 if p.dim() > 1 else 0.3))  # norms' weights away from 1 too
    if kind == "bf16":
        model.to(torch.bfloat16)
    elif kind is not None:
        quantize(model, kind)
    return model


needs_compiler = pytest.mark.skipif(why_not_fused(_model("int4")) is not None, reason="no C compiler to build llama_step.c")


@needs_compiler
@pytest.mark.parametrize("tie, qk_norm", [(True, False), (False, False), (True, True)])  # the head: the embedding
@pytest.mark.parametrize("kind", [None, "int8", "int4"])  # table (vocab, dim) or a Linear (dim, vocab); Qwen3's QK-norm
def test_the_fused_step_gives_the_forward_pass_logits_and_cache(kind, tie, qk_norm):
    """Row 1 of a 3-row cache, prefilled by the forward pass, then 8 steps each way: logits and every layer's
    keys and values within fp32 rounding of the forward pass's (sums in another order), rows 0 and 2 untouched."""
    model = _model(kind, tie, qk_norm=qk_norm)
    ids = torch.randint(0, 96, (1, 14))
    with torch.inference_mode():
        cache = model.new_cache(3, 32, torch.float32, "cpu")
        model(ids[:, :6], cache=cache.rows(1, 2, 0))
        step = fused_step(model, cache)
        assert isinstance(step, FusedStep)
        reference = model.new_cache(1, 32, torch.float32, "cpu")
        model(ids[:, :6], cache=reference)
        for t in range(6, 14):
            got = step.step(int(ids[0, t]), t, 1)
            want = model(ids[:, t:t + 1], cache=reference)[:, -1]
            assert got.shape == want.shape == (1, 96)
            assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    for mine, theirs in ((cache.k, reference.k), (cache.v, reference.v)):
        assert (mine[:, 1, :, :14] - theirs[:, 0, :, :14]).abs().max() <= 1e-5 * theirs.abs().max()
        assert mine[:, [0, 2]].abs().max() == 0 and mine[:, 1, :, 14:].abs().max() == 0


@needs_compiler
@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("layout", [None, "out_in"])
def test_in_bf16_the_fused_step_is_closer_to_exact_than_the_forward_pass(tie, layout):
    """bf16 weights and cache: the step keeps its activations in fp32 between products, where the forward pass
    rounds each op's output to bf16. Against the same bf16 weights run in fp32 throughout (the exact result of
    those weights), the step's logits are nearer than the bf16 forward pass's, and within 2^-6 of the largest;
    over the weights themselves and over the (out, in) copies (which, with AVX512-BF16, multiply x rounded to
    bf16: 7.4e-3 against 4.2e-3 off, the forward pass 1.4e-2, measured)."""
    model = _model("bf16", tie)
    if layout is not None:
        pack_for_inference(model, layout)
    exact = _model("bf16", tie).float()
    ids = torch.randint(0, 96, (1, 14))
    with torch.inference_mode():
        cache = model.new_cache(1, 32, torch.bfloat16, "cpu")
        model(ids[:, :6], cache=cache)
        step = fused_step(model, cache)
        bf16_cache, fp32_cache = model.new_cache(1, 32, torch.bfloat16, "cpu"), exact.new_cache(1, 32, torch.float32, "cpu")
        model(ids[:, :6], cache=bf16_cache)
        exact(ids[:, :6], cache=fp32_cache)
        fused_err = forward_err = 0.0
        for t in range(6, 14):
            want = exact(ids[:, t:t + 1], cache=fp32_cache)[:, -1]
            got = step.step(int(ids[0, t]), t, 0)
            forward = model(ids[:, t:t + 1], cache=bf16_cache)[:, -1].float()
            assert got.dtype == torch.float32 and (got - want).abs().max() <= 2**-6 * want.abs().max()
            fused_err, forward_err = max(fused_err, (got - want).abs().max()), max(forward_err, (forward - want).abs().max())
    assert fused_err < forward_err


@needs_compiler
def test_in_bf16_the_step_reads_the_out_in_copies_of_packing_and_never_a_stale_one():
    """Packed for decoding by this step, a bf16 Llama's projections have (out, in) copies (models/llama_step.py says
    why) and the step reads those: logits within bf16 rounding of the step over the weights themselves. A weight
    changed in place leaves its copy stale: the step then reads the weight again."""
    model = _model("bf16", tie=False)  # the head a Linear: copied too
    ids = [3, 17, 40, 5]

    def steps():
        with torch.inference_mode():
            step = fused_step(model, model.new_cache(1, 16, torch.bfloat16, "cpu"))
            return step, torch.cat([step.step(t, i, 0) for i, t in enumerate(ids)])

    plain_step, plain = steps()
    assert decoding_bf16_layout(model) == "out_in" and decoding_bf16_layout(model, fused=False) == "onednn"
    assert pack_for_inference(model, decoding_bf16_layout(model))
    packed_step, packed = steps()
    for part in ("qkv", "proj", "gate_up", "down"):
        assert getattr(plain_step.args, part)[0].kind == 16 and getattr(packed_step.args, part)[1].kind == 17
    assert plain_step.args.head.contents.kind == 16 and packed_step.args.head.contents.kind == 17
    # The two layouts sum in other orders: a key or value that lands on the other side of a bf16 rounding in
    # the cache moves the logits by up to ~1e-4 of the largest (5.6e-5 measured with the scalar build), so the
    # bound is the bf16 test's above; a misread weight is off by the logits' own size.
    assert (packed - plain).abs().max() <= 2**-6 * plain.abs().max()
    with torch.no_grad():
        model.blocks[0].mlp.down.weight.mul_(2.0)  # in place: the copy no longer equals it
    with torch.inference_mode():
        changed = torch.cat([packed_step.step(t, i, 0) for i, t in enumerate(ids)])
    assert packed_step.args.down[0].kind == 16  # rebuilt over the weight itself
    _, want = steps()
    assert not torch.equal(changed, packed) and torch.equal(changed, want)


@needs_compiler
@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_a_quantized_model_decodes_from_a_bf16_cache(kind):
    """A quantized model's engine keeps its KV cache in bf16 (half the bytes a long context reads a token); the step
    writes its keys and values there rounded as the forward pass's writes are, and reads them back: logits within
    the bf16 bound of the forward pass over its own bf16 cache (a misread cache is off by the logits' size)."""
    model = _model(kind)
    assert kv_cache_dtype(model) == torch.bfloat16 and kv_cache_dtype(_model(None)) == torch.float32
    assert Engine(model, 2, 16).cache.k.dtype == torch.bfloat16
    ids = torch.randint(0, 96, (1, 14), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        cache, reference = (model.new_cache(1, 32, torch.bfloat16, "cpu") for _ in range(2))
        model(ids[:, :6], cache=cache)
        model(ids[:, :6], cache=reference)
        step = fused_step(model, cache)
        assert step.args.cache_bf16 == 1
        for t in range(6, 14):
            got = step.step(int(ids[0, t]), t, 0)
            want = model(ids[:, t:t + 1], cache=reference)[:, -1]
            assert (got - want).abs().max() <= 2**-6 * want.abs().max()
    written = cache.k[:, 0, :, :14].float()
    assert written.abs().amax(-1).min() > 0 and cache.k[:, 0, :, 14:].abs().max() == 0
    assert (written == reference.k[:, 0, :, :14].float()).float().mean() > 0.99  # the same bf16 values, but a few


@needs_compiler
@pytest.mark.parametrize("kind, layout", [(None, None), ("bf16", "onednn"), ("bf16", "out_in"), ("int8", None),
                                          ("int4", None)])
@pytest.mark.parametrize("tie", [True, False])
def test_rows_stepped_together_get_the_bits_each_gets_alone(kind, layout, tie):
    """Several rows of a cache in one call (a server's batch), each at its own position: every row's logits and
    cache are the bits it gets stepped alone, whichever rows are beside it and in whatever order. (bf16 "onednn":
    the step over the (in, out) weights themselves, its chunked sums; "out_in": over the copies.)"""
    model = _model(kind, tie)
    if layout is not None:
        pack_for_inference(model, layout)
    dtype = model.embed.weight.dtype
    ids = torch.randint(0, 96, (4, 12), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        caches = [model.new_cache(4, 32, dtype, "cpu") for _ in range(2)]
        alone, together = (fused_step(model, cache) for cache in caches)
        for r in range(4):  # row r holds r tokens: each row at its own position
            for t in range(r):
                for step in (alone, together):
                    step.step(int(ids[r, t]), t, r)
        for k in range(6):
            rows = [3, 0, 2, 1] if k % 2 else [1, 3]
            got = together.step_rows([int(ids[r, r + k]) for r in rows], [r + k for r in rows], rows)
            want = torch.cat([alone.step(int(ids[r, r + k]), r + k, r) for r in rows])
            assert got.shape == (len(rows), 96) and torch.equal(got, want)
        with pytest.raises(ValueError, match="different rows"):
            together.step_rows([1, 2], [9, 9], [2, 2])
    assert torch.equal(caches[0].k, caches[1].k) and torch.equal(caches[0].v, caches[1].v)
    assert caches[1].k[:, :, :, 9:].abs().max() == 0 and caches[1].k[:, 3, :, :9].abs().amax(-1).min() > 0  # 0..8 written


@needs_compiler
@pytest.mark.parametrize("kind", [None, "bf16", "int8", "int4"])
def test_the_fused_step_gives_the_same_bits_on_one_thread_or_two(kind):
    """Each output of a product and each head's attention is summed by one thread in one order."""
    model = _model(kind)
    threads = torch.get_num_threads()
    out = []
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            with torch.inference_mode():
                step = fused_step(model, model.new_cache(1, 16, model.embed.weight.dtype, "cpu"))
                out.append(torch.cat([step.step(t, i, 0) for i, t in enumerate([5, 17, 3, 90])]))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(out[0], out[1])


@needs_compiler
@pytest.mark.parametrize("kind", [None, "int4", "int8"])
def test_the_engine_decodes_with_it_and_says_the_same_tokens(kind):
    """Greedy, the engine's replies with the fused step equal those of the forward pass (alone and beside another
    request, both rows in one call), and a row that slides past its context too."""
    model = _model(kind)
    fused, plain = Engine(model, 2, 24), Engine(model, 2, 24, fused=False)
    assert fused.fused is not None and plain.fused is None
    prompts = [[1, 5, 9, 33], [7, 7, 2]]
    for engine in (fused, plain):
        engine.replies = []
        for prompt in prompts:  # one at a time: the fused step
            tokens = [t.token for t in engine.add(Request(prompt, GREEDY.replace(max_tokens=40)))]
            while engine.running:
                tokens += [t.token for t in engine.step()]
            engine.replies.append(tokens)
        both = [[t.token for t in engine.add_all([Request(p, GREEDY.replace(max_tokens=10)) for p in prompts])]]
        while engine.running:
            both.append([t.token for t in engine.step()])
        engine.replies.append(both)
    assert fused.replies == plain.replies
    assert len(fused.replies[0]) == 40  # past the 24-position rows: slid and prefilled again


@needs_compiler
def test_a_row_that_slides_while_another_steps_gets_the_forward_passes_tokens():
    """Two requests out of step: when one passes its context and is prefilled again, the other still takes the
    fused step in that same engine step (each row's logits taken from the call's output by its place)."""
    model = _model("int8")
    replies = []
    for engine in (Engine(model, 2, 24), Engine(model, 2, 24, fused=False)):
        tokens = {0: [], 1: []}
        for t in engine.add(Request([1, 5, 9, 33], GREEDY.replace(max_tokens=40))):
            tokens[0].append(t.token)
        for _ in range(9):  # the first request runs ahead, so the two reach the end of the rows at different steps
            tokens[0] += [t.token for t in engine.step()]
        for t in engine.add(Request([7, 7, 2], GREEDY.replace(max_tokens=40))):
            tokens[1].append(t.token)
        steps_with_both = 0
        while engine.running:
            step = engine.step()
            steps_with_both += len(step) == 2
            for t in step:
                tokens[0 if t.request.prompt[0] == 1 else 1].append(t.token)
        replies.append(tokens)
        assert steps_with_both >= 20 and len(tokens[0]) == len(tokens[1]) == 40
    assert replies[0] == replies[1]


def test_only_a_llama_block_has_one():
    assert "Llama's own block" in why_not_fused(_model(None, norm_offset=1.0))
    half = _model(None).to(torch.float16)
    assert "fp32 or bf16" in why_not_fused(half) and Engine(half, 1, 16).fused is None  # the forward pass
    assert Engine(_model("int4"), 1, 16, use_cache=False).fused is None


@needs_compiler
def test_a_position_outside_the_cache_is_refused():
    model = _model("int8")
    with torch.inference_mode():
        step = fused_step(model, model.new_cache(1, 8, torch.float32, "cpu"))
        with pytest.raises(ValueError, match="outside the cache"):
            step.step(3, 8, 0)


@needs_compiler
def test_a_model_changed_after_the_step_was_built_is_read_as_it_is_now():
    """In place (an optimizer step) the step reads the new values at once; weights moved to new memory or a new
    quantization rebuild it: never freed memory or a stale copy."""
    model = _model(None)
    with torch.inference_mode():
        step = fused_step(model, model.new_cache(1, 16, torch.float32, "cpu"))
        before = step.step(3, 0, 0)
    with torch.no_grad():
        model.blocks[0].mlp.down.weight.mul_(2.0)  # in place
    with torch.inference_mode():
        changed = step.step(3, 0, 0)
        assert not torch.equal(changed, before)
        assert (changed - model(torch.tensor([[3]]))[:, -1]).abs().max() <= 1e-5 * changed.abs().max()
    model.load_state_dict({k: v.clone() * 0.5 for k, v in model.state_dict().items()})  # same Parameters, copied in
    model.blocks[1].attn.proj.weight = torch.nn.Parameter(model.blocks[1].attn.proj.weight.detach() * 3)  # a new one
    quantize(model, "int8")  # new forms, float weights dropped
    with torch.inference_mode():
        got = step.step(3, 0, 0)
        assert (got - model(torch.tensor([[3]]))[:, -1]).abs().max() <= 1e-5 * got.abs().max()


@needs_compiler
def test_lora_updates_added_after_the_step_was_built_are_run_or_refused():
    """Unmerged LoRA updates cannot run in C: the step refuses in one line rather than leave them out; merged
    into the weights, the step reads them there (the forward pass's logits)."""
    from scratchllm.errors import ScratchLLMError
    from scratchllm.layers.linear import LoRAConfig, merge_lora
    from scratchllm.models.spec import spec_of

    model = _model(None)
    with torch.inference_mode():
        step = fused_step(model, model.new_cache(1, 16, torch.float32, "cpu"))
        step.step(3, 0, 0)
    spec_of(model).add_lora(model, LoRAConfig(r=2, targets=("q", "v")))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".B" in name:
                p.normal_()  # B starts at zero: give the updates something to add
    with torch.inference_mode(), pytest.raises(ScratchLLMError, match="unmerged LoRA.*make a new Engine"):
        step.step(3, 1, 0)
    merge_lora(model)
    with torch.inference_mode():
        got, want = step.step(3, 0, 0), model(torch.tensor([[3]]))[:, -1]
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()
