"""A Llama's decoding step as one call into C (layers/llama_step.c): a token for each of an engine's running rows
in, their logits out.

Decoding one token in torch is ~62 operator calls a layer, each costing microseconds of dispatch for a few
hundred numbers: for SmolLM2-135M in int4 that was two thirds of the step (the profile in the notes).
`FusedStep` hands the C step pointers to the model's own tensors (the compact weights as layers/quantized.py
keeps them, or the float weights in our Linear's layout; the norms and embedding; the engine's KV cache), so
nothing is copied and a prefill by the model's forward pass and the steps after it share one cache. Several rows
(a server's requests) step in one call: each weight is read from memory once for all of them, and each row's
sums run in the order they would alone (its logits are the same bits beside other rows or alone). bf16
weights are read from the (out, in) copies that packing makes in place of oneDNN's for an engine with this step
(`decoding_bf16_layout`): each thread then streams its own rows, 2-5x quicker than the (in, out) columns here. It serves
Llama's block (Qwen3's QK-norm too) in fp32, bf16, int8 or int4 on the CPU; `why_not_fused` says why not
otherwise, and the engine then runs the model's forward pass. In fp32, int8 and int4 the logits equal the
forward pass's to fp32 rounding; with bf16 weights the activations stay fp32 between products (the forward
pass rounds each op's output to bf16), which is nearer the exact result (tests/test_fused_step.py).
"""

from __future__ import annotations

import ctypes
import operator
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
                ("layer_stride", ctypes.c_int64), ("head_stride", ctypes.c_int64), ("row_stride", ctypes.c_int64),
                ("scratch", ctypes.c_void_p), ("max_len", ctypes.c_int64), ("max_rows", ctypes.c_int32),
                ("cache_bf16", ctypes.c_int32)]


@lru_cache(maxsize=None)
def _library():
    from scratchllm.layers import native

    lib = native.load("llama_step")
    if lib is None:
        return None
    lib.llama_step.restype = ctypes.c_int
    lib.llama_step.argtypes = [ctypes.POINTER(_LlamaStep), ctypes.c_int32] + [ctypes.c_void_p] * 4 + \
        [ctypes.c_int64, ctypes.c_void_p, ctypes.c_int]
    lib.llama_step_scratch.restype = ctypes.c_int64
    lib.llama_step_scratch.argtypes = [ctypes.c_int32] * 5 + [ctypes.c_int64, ctypes.c_int32]
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
# A server's batched steps are this step too, over several rows (each weight read once for all), so the copies
# serve every decoding step; torch's own products of several rows by them are 1.6-2x slower than by oneDNN's
# packing (576 x 3072, 8 rows: 176 against 102 us), so an engine that runs the forward pass instead
# (`fused=False`) keeps the packing.
def decoding_bf16_layout(model) -> str:
    """"out_in" where this step serves the model: its bf16 projections then get (out, in) copies, which it reads,
    in place of oneDNN's packing, which it cannot; else oneDNN's."""
    return "out_in" if why_not_fused(model) is None else "onednn"


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
    """`step_rows(tokens, positions, rows)` -> logits (n, vocab): the model's forward pass of tokens[i] at
    positions[i] of cache row rows[i] (which holds positions 0 .. positions[i] - 1), written into that row, for
    n different rows in one C call; `step(token, position, row)` for one."""

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
        if cache.k.dtype not in (dtype, torch.bfloat16) or not cache.k.is_contiguous():
            raise ValueError(f"the fused step needs a contiguous KV cache in the model's dtype ({dtype}) or bf16")
        n_layers, batch, kv, max_len, d = cache.k.shape
        hidden = blocks[0].mlp.down.in_features
        size = self.lib.llama_step_scratch(c.n_embd, c.n_head, c.n_kv_head, c.head_size, hidden, max_len, batch)
        self.scratch = torch.empty(size)
        self.rope = model._rope_tables(max_len + 1, torch.device("cpu")).contiguous()  # (N, 2, head_dim): cos, signed sin
        self.batch, self.vocab = batch, head.out
        self.args = _LlamaStep(
            n_layers=c.n_layer, dim=c.n_embd, n_heads=c.n_head, n_kv_heads=c.n_kv_head, head_dim=c.head_size,
            hidden=hidden, bf16=int(dtype == torch.bfloat16), eps=c.norm_eps, embed=model.embed.weight.data_ptr(),
            attn_norm=norms["attn_norm"], mlp_norm=norms["mlp_norm"], q_norm=norms.get("q_norm"),
            k_norm=norms.get("k_norm"), final_norm=model.norm.weight.data_ptr(), qkv=weights["qkv"],
            proj=weights["proj"], gate_up=weights["gate_up"], down=weights["down"], head=ctypes.pointer(head),
            k_cache=cache.k.data_ptr(), v_cache=cache.v.data_ptr(), layer_stride=batch * kv * max_len * d,
            head_stride=max_len * d, row_stride=kv * max_len * d, scratch=self.scratch.data_ptr(), max_len=max_len,
            max_rows=batch, cache_bf16=int(cache.k.dtype == torch.bfloat16))
        self._watch()
        self.signature = self._signature()

    def _watch(self) -> None:
        """The modules the step was built from, gathered once: `_signature` reads what they hold at every step."""
        m = self.model
        qk = [n for b in m.blocks for n in (b.attn.q_norm, b.attn.k_norm) if n is not None]
        plain = [m.embed, m.norm, *(b.attn_norm for b in m.blocks), *(b.mlp_norm for b in m.blocks), *qk]
        projections = _projections(m)
        self._linears = [p for p in projections if isinstance(p, Linear)]
        self._heads = [p for p in projections if isinstance(p, TiedHead)]
        # where each module's weight is registered (a tied head's: its embedding's); None for a quantized Linear's
        self._weight_slots = [(p.embedding if isinstance(p, TiedHead) else p)._parameters for p in plain + projections]

    def _signature(self) -> tuple[list, list]:
        # (objects, numbers): each weight (its Parameter, and where its memory is), each projection's quantized form
        # and packed copy, each Linear's LoRA updates (added since, or unmerged: the step cannot run them) and the
        # version of a weight with an (out, in) copy the step may read in its place (changed in place, the copy is
        # stale). A `.to()`, loaded weights, a new quantization, packing or LoRA show here, and the step is built again
        # rather than read freed or stale memory (other in-place changes need nothing: the step reads the tensors'
        # memory at each call; a quantized form is never changed, only replaced). Gathered by list comprehensions
        # and compared by identity and value in C (`_same`), for SmolLM2: 40 us alone where one loop over the
        # modules building one mixed list and comparing it item by item took 117; in the decoding loop, where the
        # step has just pushed all these objects out of the caches, 0.16-0.21 ms of an int8 token against 0.27-0.32.
        weights = [slot["weight"] for slot in self._weight_slots]
        linears, heads = self._linears, self._heads
        loras, packed = [x.lora for x in linears], [x.packed for x in linears]
        objects = [*weights, *loras, *packed, *[x.quantized for x in linears], *[h.quantized for h in heads],
                   *[h.packed for h in heads]]
        numbers = [*[w.data_ptr() for w in weights if w is not None],
                   *[x._parameters["weight"]._version for x, c in zip(linears, packed) if isinstance(c, OutInWeight)],
                   *[lora.merged for lora in loras if lora is not None]]
        return objects, numbers

    def step(self, token: int, position: int, row: int) -> torch.Tensor:
        """Logits (1, vocab) of `token` at `position` of cache row `row`."""
        return self.step_rows([token], [position], [row])

    def step_rows(self, tokens: list[int], positions: list[int], rows: list[int]) -> torch.Tensor:
        """Logits (n, vocab) of tokens[i] at positions[i] of cache row rows[i], for n different rows in one call:
        each weight is read once for all of them, and each row's logits are the bits it gets alone."""
        if not _same(self._signature(), self.signature):
            reason = why_not_fused(self.model)
            if reason is not None:
                raise ScratchLLMError(f"the model changed since its engine was made and has no fused step now ({reason}); "
                                      "make a new Engine")
            self.__init__(self.model, self.cache)
        n, batch = len(tokens), self.batch
        if not 0 < n == len(positions) == len(rows) or len(set(rows)) != n or not all(0 <= r < batch for r in rows):
            raise ValueError(f"one token and position for each of 1 to {batch} different rows of the cache")
        if not all(0 <= p < self.cache.max_len for p in positions):
            raise ValueError(f"a position {positions} is outside the cache's {self.cache.max_len}")
        ints = torch.tensor([*tokens, *positions, *rows], dtype=torch.int64)  # (3 n,): tokens, positions, rows
        logits = torch.empty(n, self.vocab)  # written by the step itself: no copy out of a buffer of its own
        at, size = ints.data_ptr(), ints.element_size() * n
        done = self.lib.llama_step(ctypes.byref(self.args), n, at, at + size, at + 2 * size, self.rope.data_ptr(),
                                   self.rope.size(0), logits.data_ptr(), torch.get_num_threads())
        if done != 0:
            raise RuntimeError(f"llama_step failed ({done}): a token outside the vocabulary?")
        return logits  # (n, vocab) fp32 (a bf16 model's forward pass rounds them to bf16)


def _same(a: tuple[list, list], b: tuple[list, list]) -> bool:
    # objects by identity (never ==: a tensor's is elementwise), addresses, versions and flags by value
    (objects_a, numbers_a), (objects_b, numbers_b) = a, b
    return len(objects_a) == len(objects_b) and all(map(operator.is_, objects_a, objects_b)) and numbers_a == numbers_b


def fused_step(model, cache: KVCache) -> FusedStep | None:
    """The model's one-call decoding step over `cache`, or None where `why_not_fused` says it has none."""
    return None if why_not_fused(model) is not None else FusedStep(model, cache)
