"""A Llama's decoding step as one call into C (layers/llama_step.c): a token in, its logits out.

Decoding one token in torch is ~62 operator calls a layer, each costing microseconds of dispatch for a few
hundred numbers: for SmolLM2-135M in int4 that was two thirds of the step (the profile in the notes).
`FusedStep` hands the C step pointers to the model's own tensors (the compact weights as layers/quantized.py
keeps them, or the float weights in our Linear's layout; the norms and embedding; the engine's KV cache), so
nothing is copied and a prefill by the model's forward pass and the steps after it share one cache. bf16
weights are read from the (out, in) copies that packing for a one-row engine makes in place of oneDNN's
(`decoding_bf16_layout`): each thread then streams its own rows, 2-5x quicker than the (in, out) columns here. It serves
Llama's block (Qwen3's QK-norm too) in fp32, bf16, int8 or int4 on the CPU; `why_not_fused` says why not
otherwise, and the engine then runs the model's forward pass. In fp32, int8 and int4 the logits equal the
forward pass's to fp32 rounding; with bf16 weights the activations stay fp32 between products (the forward
pass rounds each op's output to bf16), which is nearer the exact result (tests/test_fused_step.py).
"""

from __future__ import annotations

import ctypes
from functools import lru_cache

import torch

from scratchllm.layers import KVCache
from scratchllm.errors import ScratchLLMError
from scratchllm.layers.linear import Linear, OutInWeight, TiedHead
from scratchllm.layers.quantized import Int4Weight, Int8Weight


class _QWeight(ctypes.Structure):
    _fields_ = [("kind", ctypes.c_int32), ("in_", ctypes.c_int32), ("out", ctypes.c_int32),
                ("codes", ctypes.c_void_p), ("scale", ctypes.c_void_p), ("min", ctypes.c_void_p)]


_FloatP = ctypes.POINTER(ctypes.c_float)


class _LlamaStep(ctypes.Structure):
    _fields_ = [("n_layers", ctypes.c_int32), ("dim", ctypes.c_int32), ("n_heads", ctypes.c_int32),
                ("n_kv_heads", ctypes.c_int32), ("head_dim", ctypes.c_int32), ("hidden", ctypes.c_int32),
                ("bf16", ctypes.c_int32), ("eps", ctypes.c_float), ("embed", ctypes.c_void_p), ("attn_norm", ctypes.POINTER(ctypes.c_void_p)),
                ("mlp_norm", ctypes.POINTER(ctypes.c_void_p)), ("q_norm", ctypes.POINTER(ctypes.c_void_p)),
                ("k_norm", ctypes.POINTER(ctypes.c_void_p)), ("final_norm", ctypes.c_void_p),
                ("qkv", ctypes.POINTER(_QWeight)), ("proj", ctypes.POINTER(_QWeight)),
                ("gate_up", ctypes.POINTER(_QWeight)), ("down", ctypes.POINTER(_QWeight)), ("head", ctypes.POINTER(_QWeight)),
                ("k_cache", ctypes.c_void_p), ("v_cache", ctypes.c_void_p),
                ("layer_stride", ctypes.c_int64), ("head_stride", ctypes.c_int64),
                ("scratch", ctypes.c_void_p), ("max_len", ctypes.c_int64)]


@lru_cache(maxsize=None)
def _library():
    from scratchllm.layers import native

    lib = native.load("llama_step")
    if lib is None:
        return None
    lib.llama_step.restype = ctypes.c_int
    lib.llama_step.argtypes = [ctypes.POINTER(_LlamaStep), ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p,
                               ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    lib.llama_step_scratch.restype = ctypes.c_int64
    lib.llama_step_scratch.argtypes = [ctypes.c_int32] * 5 + [ctypes.c_int64]
    return lib


_FLOAT_KINDS = {(torch.float32, "in_out"): 32, (torch.bfloat16, "in_out"): 16,
                (torch.float32, "out_in"): 33, (torch.bfloat16, "out_in"): 17}  # llama_step.c's enum


def _weight(module) -> _QWeight:
    """The C step's view of a projection: its compact form, or its float matrix as the module holds it (a
    Linear's (in, out), a tied head's embedding table (out, in) = (vocab, dim))."""
    q = module.quantized
    if isinstance(q, Int8Weight):
        return _QWeight(8, q.codes.size(1), q.out_features, q.codes.data_ptr(), q.scale.data_ptr(), None)
    if isinstance(q, Int4Weight):
        return _QWeight(4, q.in_features, q.out_features, q.codes.data_ptr(), q.scale.data_ptr(), q.min.data_ptr())
    w = module.weight
    layout = "out_in" if isinstance(module, TiedHead) else "in_out"
    copy = _out_in_copy(module)
    if copy is not None:
        w, layout = copy, "out_in"
    out, in_ = w.shape if layout == "out_in" else reversed(w.shape)
    return _QWeight(_FLOAT_KINDS[w.dtype, layout], in_, out, w.data_ptr(), None, None)


def _out_in_copy(module) -> torch.Tensor | None:
    """A Linear's (out, in) copy of its weight (layers/linear.py's OutInWeight), while it still equals it."""
    packed = module.packed if isinstance(module, Linear) else None
    if isinstance(packed, OutInWeight) and packed.matches(module.weight):
        return packed.tensor
    return None


# bf16 products of one row by SmolLM2-135M's weights in this step, 2 threads, AMD EPYC (AVX512), 2026-12-03
# (all 30 layers, microseconds): (in, out) columns against (out, in) rows: gate_up 5,494 / 3,223, down 5,022 /
# 1,296, qkv 1,769 / 671, proj 1,511 / 267. The columns' loop held 4-8 row streams per thread (hand-written
# AVX512 blocks did no better); a row's dot product holds one. fp32 columns already stream at the bound. (The
# step now sums a bf16 (in, out) weight's rows in chunks instead, 1.2-1.6x quicker than its columns: llama_step.c.)
# But several rows (a server's batched steps, the forward pass) multiply 1.6-2x quicker by oneDNN's packing
# than by torch's product with an (out, in) copy (576 x 3072, 8 rows: 102 against 176 us), and the copy takes
# the packing's place (one more copy of the weights, not two). `benchmarks/serve.py --model smollm2-135m-instruct
# --precision bf16 --clients 8 --requests 2 --new-tokens 32`, the copies against the packing: one client at a
# time 65.1 against 37.0 tok/s, 8 at once 93.0 against 114.3. So an engine of one row takes the copies.
def decoding_bf16_layout(model, max_batch: int) -> str:
    """"out_in" where this step serves the model and an engine of `max_batch` rows decodes every token with it
    (one row): its bf16 projections then get (out, in) copies, which it reads, in place of oneDNN's packing,
    which it cannot; else oneDNN's."""
    return "out_in" if max_batch == 1 and why_not_fused(model) is None else "onednn"


def _projections(model) -> list:
    return [b.attn.qkv for b in model.blocks] + [b.attn.proj for b in model.blocks] + \
        [b.mlp.gate_up for b in model.blocks] + [b.mlp.down for b in model.blocks] + [model.lm_head]


def why_not_fused(model) -> str | None:
    """Why `FusedStep` cannot serve this model (None: it can)."""
    from scratchllm.layers import native

    c = model.config
    if c.norm_offset != 0.0 or c.mlp_activation != "silu" or c.scale_embeddings:
        return "only Llama's own block (and Qwen3's QK-norm; not Gemma's norms or GeGLU) has a fused step"
    params = list(model.parameters())
    dtype = params[0].dtype
    if dtype not in (torch.float32, torch.bfloat16) or any(p.dtype != dtype or p.device.type != "cpu" for p in params):
        return "the fused step runs fp32 or bf16 weights, all of one dtype, on the CPU"
    for m in _projections(model):
        if m.quantized is not None:
            if not isinstance(m.quantized, (Int8Weight, Int4Weight)) or m.quantized.in_features % 32:
                return "a quantized projection whose width is not whole groups of 32"
        elif not m.weight.is_contiguous():
            return "a projection's weight is not contiguous"
        if getattr(m, "bias", None) is not None or (getattr(m, "lora", None) is not None and not m.lora.merged):
            return "a projection with a bias or unmerged LoRA updates"
    if c.head_size > 1024:
        return "heads wider than 1024"
    if _library() is None:
        return native.why_not("llama_step")
    return None


class FusedStep:
    """`step(token, position, row)` -> logits (1, vocab): the model's forward pass of one token at `position`
    of cache row `row` (which holds positions 0 .. position - 1), written into that row, in one C call."""

    def __init__(self, model, cache: KVCache):
        c = model.config
        self.model, self.cache, self.lib = model, cache, _library()
        self._keep = []  # the ctypes arrays the struct points into
        blocks = model.blocks
        weights = {name: (_QWeight * c.n_layer)(*(_weight(getattr(getattr(b, part), name)) for b in blocks))
                   for part, name in (("attn", "qkv"), ("attn", "proj"), ("mlp", "gate_up"), ("mlp", "down"))}
        head = _weight(model.lm_head)
        norms = {k: (ctypes.c_void_p * c.n_layer)(*(getattr(b, k).weight.data_ptr() for b in blocks))
                 for k in ("attn_norm", "mlp_norm")}
        if c.qk_norm:
            norms.update({k: (ctypes.c_void_p * c.n_layer)(*(getattr(b.attn, k).weight.data_ptr() for b in blocks))
                          for k in ("q_norm", "k_norm")})
        self._keep += [weights, head, norms, [_out_in_copy(m) for m in _projections(model)]]
        dtype = model.embed.weight.dtype
        if cache.k.dtype != dtype or not cache.k.is_contiguous():
            raise ValueError(f"the fused step needs a contiguous KV cache in the model's dtype ({dtype})")
        n_layers, batch, kv, max_len, d = cache.k.shape
        self.row_stride = kv * max_len * d  # floats from one row's layer-0 block to the next row's
        hidden = blocks[0].mlp.down.in_features
        size = self.lib.llama_step_scratch(c.n_embd, c.n_head, c.n_kv_head, c.head_size, hidden, max_len)
        self.scratch = torch.empty(size)
        self.rope = model._rope_tables(max_len + 1, torch.device("cpu"))  # (N, 2, head_dim): cos, signed sin
        self.logits = torch.empty(head.out)
        self.args = _LlamaStep(
            n_layers=c.n_layer, dim=c.n_embd, n_heads=c.n_head, n_kv_heads=c.n_kv_head, head_dim=c.head_size,
            hidden=hidden, bf16=int(dtype == torch.bfloat16), eps=c.norm_eps, embed=model.embed.weight.data_ptr(),
            attn_norm=norms["attn_norm"], mlp_norm=norms["mlp_norm"], q_norm=norms.get("q_norm"),
            k_norm=norms.get("k_norm"), final_norm=model.norm.weight.data_ptr(), qkv=weights["qkv"],
            proj=weights["proj"], gate_up=weights["gate_up"], down=weights["down"], head=ctypes.pointer(head),
            k_cache=cache.k.data_ptr(), v_cache=cache.v.data_ptr(), layer_stride=batch * kv * max_len * d,
            head_stride=max_len * d, scratch=self.scratch.data_ptr(), max_len=max_len)
        self._base = (cache.k.data_ptr(), cache.v.data_ptr())
        self._watched = self._modules()
        self.signature = self._signature()

    def _modules(self) -> list:
        m = self.model
        qk = [n for b in m.blocks for n in (b.attn.q_norm, b.attn.k_norm) if n is not None]
        return [m.embed, m.norm, *(b.attn_norm for b in m.blocks), *(b.mlp_norm for b in m.blocks), *qk, *_projections(m)]

    def _signature(self) -> list:
        # what each module holds (its quantized form, a float weight and where that weight's memory is): a `.to()`,
        # loaded weights or a new quantization show here, and the step is built again rather than read freed or
        # stale memory (in-place changes need nothing: the step reads the tensors' memory at each call; a
        # quantized form is never changed, only replaced; an (out, in) copy, below). ~100 us a step for SmolLM2
        # (80 without the copies' two reads), 1-1.5% of a step.
        out = []
        for module in self._watched:
            q = module.__dict__.get("quantized")
            if q is not None:
                out.append(q)
            else:
                weight = module.embedding.weight if isinstance(module, TiedHead) else module._parameters["weight"]
                out += [weight, weight.data_ptr()]
            if isinstance(module, Linear):  # LoRA updates added since, or unmerged: the step cannot run them
                lora = module.lora
                out += [lora, int(lora.merged) if lora is not None else 0]
                # the (out, in) copy the step may read in place of the weight: made, dropped or replaced, or stale
                # (the weight changed in place: its version moved). Not `_out_in_copy` here: its check cost 120 us a
                # step (SmolLM2, bf16), these two reads about 20.
                packed = module.packed
                out += [packed, module._parameters["weight"]._version if isinstance(packed, OutInWeight) else 0]
        return out

    def step(self, token: int, position: int, row: int) -> torch.Tensor:
        if not _same(self._signature(), self.signature):
            reason = why_not_fused(self.model)
            if reason is not None:
                raise ScratchLLMError(f"the model changed since its engine was made and has no fused step now ({reason}); "
                                      "make a new Engine")
            self.__init__(self.model, self.cache)
        if not 0 <= position < self.cache.max_len:
            raise ValueError(f"position {position} is outside the cache's {self.cache.max_len}")
        table = self.rope[position]  # (2, head_dim): this position's cos and signed sin
        offset = row * self.row_stride * self.cache.k.element_size()  # bytes
        self.args.k_cache, self.args.v_cache = self._base[0] + offset, self._base[1] + offset
        done = self.lib.llama_step(ctypes.byref(self.args), token, position, table[0].data_ptr(), table[1].data_ptr(),
                                   self.logits.data_ptr(), torch.get_num_threads())
        if done != 0:
            raise RuntimeError(f"llama_step failed ({done})")
        return self.logits.clone()[None]  # (1, vocab) fp32 (a bf16 model's forward pass rounds them to bf16)


def _same(a: list, b: list) -> bool:
    # objects by identity (never ==: a tensor's is elementwise), memory addresses by value
    return len(a) == len(b) and all(x == y if isinstance(x, int) else x is y for x, y in zip(a, b))


def fused_step(model, cache: KVCache) -> FusedStep | None:
    """The model's one-call decoding step over `cache`, or None where `why_not_fused` says it has none."""
    return None if why_not_fused(model) is not None else FusedStep(model, cache)
