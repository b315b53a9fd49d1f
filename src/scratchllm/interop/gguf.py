"""GGUF files (llama.cpp's format) <-> Hugging Face-form Llama tensors, a BPETokenizer and a chat template.

A GGUF file is one header of typed key/value metadata (the config, the tokenizer, the chat template)
followed by a table of tensors, each stored as F32, F16, BF16 or quantized blocks (Q8_0: 32 weights
share one fp16 scale; Q4_1: 32 four-bit weights, a scale and a minimum; K-quants: super-blocks of 256).
`read_gguf` validates the file, dequantizes every tensor to fp32 and renames it to Hugging Face's
LlamaForCausalLM names (and, asked to, keeps Q4_0 / Q4_1 blocks as 4-bit codes for `--precision int4`,
layers/quantized.py); `write_gguf` does the reverse for f32, f16, bf16, q8_0, q4_0 or q4_1, in a file that
llama.cpp and `transformers`' GGUF loader read. Both use the `gguf` package (llama.cpp's own Python
reader, writer and (de)quantizers). Three things change on the way besides names:

  - RoPE row order. Hugging Face Llama rotates the two halves of each head's q/k vector together
    (dimension i with i + d/2); llama.cpp rotates adjacent pairs (2i with 2i + 1), so its converter
    permutes the rows of q_proj and k_proj: row h*d + s*d/2 + i (half s) moves to h*d + 2i + s.
    `layers.rope.halves_to_interleaved` applies that permutation, `interleaved_to_halves` undoes it.
  - Llama 3.1 RoPE scaling is no config key in GGUF but a `rope_freqs.weight` tensor of per-frequency
    divisors; it is computed on export and recognised on import.
  - The tokenizer is stored as lists: tokens in GPT-2's byte-to-unicode spelling (control tokens as
    their text), the merges ("a b"), token types, and the pre-tokenizer by name (`tokenizer.ggml.pre`),
    which llama.cpp maps to a fixed sequence of split regexes; `PRE_TOKENIZERS` holds each as one regex.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.fileio import atomic_path
from scratchllm.interop.hf import config_from_hf, from_hf, to_hf
from scratchllm.layers.quantized import GroupQuantized, Q8Blocks
from scratchllm.layers.rope import halves_to_interleaved, interleaved_to_halves
from scratchllm.models.spec import export_weights, import_rows, spec_for_gguf, spec_of
from scratchllm.tokenizers.bpe import BPETokenizer, bpe_merge
from scratchllm.tokenizers.formats import bytes_to_unicode, recover_merges
from scratchllm.tokenizers.patterns import GPT2, LLAMA3

# -- pre-tokenizers --------------------------------------------------------------------------------
# llama.cpp (llama-vocab.cpp) splits text with a sequence of regexes, each applied to the pieces the
# previous one left (matches and the text between them both become pieces). Each sequence below is
# folded into one regex that cuts text into the same pieces; the tests check them against llama.cpp.

# smollm, starcoder, refact, command-r, codeshell, exaone, minerva: `\p{N}` (every digit alone), then
# GPT-2's regex. Folded: digits first and alone, no ` ?\p{N}+`, and a digit ends a whitespace run the
# way the end of a piece does for `\s+(?!\S)`.
SMOLLM = r"""\p{N}|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""
# default (also for files with no pre-tokenizer name): `[\p{P}$+<=>^~|]+` (runs of punctuation), then
# GPT-2's regex on the rest, then `\p{N}+`, then `[0-9]{3}`. Folded: punctuation runs whole (so the
# contractions never match: ' is punctuation), digit runs apart from the space before them and cut into
# threes from the left, and punctuation ends a whitespace run as the end of a piece does.
_PUNCT = r"\p{P}$+<=>^~|"
DEFAULT = (rf"""[{_PUNCT}]+| ?\p{{L}}+|[0-9]{{3}}|(?:(?![0-9]{{3}})\p{{N}})+| ?[^\s\p{{L}}\p{{N}}{_PUNCT}]+"""
           rf"""|\s+(?![^\s{_PUNCT}])|\s+""")
# qwen2 / stablelm2: Llama 3's regex with single digits.
QWEN2 = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""

PRE_TOKENIZERS: dict[str, str] = {
    "default": DEFAULT,
    **dict.fromkeys(("gpt2", "gpt-2", "phi-2", "mpt", "olmo", "jais"), GPT2),
    **dict.fromkeys(("llama-bpe", "llama3", "llama-v3", "falcon3", "dbrx", "smaug-bpe"), LLAMA3),
    **dict.fromkeys(("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b"), SMOLLM),
    **dict.fromkeys(("qwen2", "stablelm2"), QWEN2),
}
# the name written for a tokenizer's pattern (llama.cpp knows GPT-2's as "gpt-2", not "gpt2")
_PRE_NAME = {GPT2: "gpt-2", LLAMA3: "llama-bpe", SMOLLM: "smollm", DEFAULT: "default", QWEN2: "qwen2"}

# token types (llama.cpp's llama_token_type)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

FILE_TYPES = ("f32", "f16", "bf16", "q8_0", "q4_0", "q4_1")
_SPECIAL_ID_KEYS = ("bos", "eos", "eot", "eom", "unknown", "padding", "seperator", "cls", "mask")
_EOT_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|end_of_turn|>")  # llama.cpp's guesses


@dataclass
class GGUFModel:
    """What `read_gguf` returns. `tensors` are fp32, in LlamaForCausalLM's names and layout."""

    hf_config: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    tokenizer: BPETokenizer | None
    chat_template: str | None
    file_type: str  # "f32", "f16", "bf16", "q8_0", "q4_1", "q4_k_m", ... (llama.cpp's LlamaFileType)
    special_ids: dict[str, int] = field(default_factory=dict)  # {"bos": 1, "eos": 2, "padding": 2, ...}
    name: str | None = None  # general.name
    # Q4_0 / Q4_1 / Q8_0 tensors' codes (read with keep_blocks=True), by Hugging Face name (load_gguf: by our
    # Linear's or tied head's)
    blocks: dict[str, GroupQuantized | Q8Blocks] = field(default_factory=dict)

    @property
    def bos_id(self) -> int | None:
        return self.special_ids.get("bos")

    @property
    def eos_id(self) -> int | None:
        return self.special_ids.get("eos")

    @property
    def eot_id(self) -> int | None:
        return self.special_ids.get("eot")

    @property
    def stop_ids(self) -> list[int]:
        """Ids that end a reply: end of sequence, of turn, of message."""
        return sorted({self.special_ids[k] for k in ("eos", "eot", "eom") if k in self.special_ids})


# -- reading ---------------------------------------------------------------------------------------

def read_gguf(path: str | Path, keep_blocks: bool = False) -> GGUFModel:
    """A Llama GGUF file, validated and dequantized: config, fp32 tensors (HF names), tokenizer, template;
    with `keep_blocks`, also the codes of its Q4_0, Q4_1 and Q8_0 tensors as stored (GGUFModel.blocks)."""
    import gguf

    path = Path(path)
    reader = _open(path)
    meta = {k: _value(f, path) for k, f in reader.fields.items() if not k.startswith("tokenizer.ggml.") or k in _SMALL_TOKENIZER_KEYS}
    arch = meta.get("general.architecture")
    spec = spec_for_gguf(arch, str(path))  # its tensor table and RoPE settings
    infos = {t.name: t for t in reader.tensors}
    try:
        hf_config = _hf_config(meta, infos, path, spec)
        special_ids = {k: int(meta[f"tokenizer.ggml.{k}_token_id"]) for k in _SPECIAL_ID_KEYS
                       if f"tokenizer.ggml.{k}_token_id" in meta}
    except (TypeError, ValueError) as e:
        raise ScratchLLMError(f"{path} has metadata of the wrong type ({str(e)[:80]}); the file is corrupt") from None
    bad = {k: i for k, i in special_ids.items() if not 0 <= i < hf_config["vocab_size"]}
    if bad:
        raise ScratchLLMError(f"{path}: special token ids {bad} are outside the vocabulary of {hf_config['vocab_size']}")
    tokenizer = _read_tokenizer(reader, meta, hf_config["vocab_size"], path)
    if tokenizer is not None and "eot" not in special_ids:  # as llama.cpp: guess the end of turn from the text
        for text in _EOT_TEXTS:
            if text in tokenizer.special_tokens:
                special_ids["eot"] = tokenizer.special_tokens[text]
                break
    hf_config["bos_token_id"], hf_config["eos_token_id"] = special_ids.get("bos"), special_ids.get("eos")
    config = _check_tensors(spec, hf_config, infos, path)  # names and shapes, before anything is dequantized
    hf_config = {**spec.hf.config_to_hf(config), **hf_config}  # the spec's Hugging Face form, as the file has it

    n_head, n_kv = hf_config["num_attention_heads"], hf_config["num_key_value_heads"]
    tensors: dict[str, torch.Tensor] = {}
    blocks: dict[str, GroupQuantized | Q8Blocks] = {}
    for name, info in infos.items():
        if name == "rope_freqs.weight":
            continue
        try:
            w = gguf.quants.dequantize(info.data, info.tensor_type)
        except (NotImplementedError, ValueError) as e:
            raise ScratchLLMError(f"{path}: tensor {name} is stored as {info.tensor_type.name}, which cannot be "
                                  f"dequantized ({str(e)[:60]}); convert the model to f16, q8_0, q4_* or a K-quant") from None
        w = torch.from_numpy(np.array(w, dtype=np.float32, copy=True)).reshape(_torch_shape(info))
        groups = _stored_blocks(info) if keep_blocks else None
        heads = n_head if name.endswith(".attn_q.weight") else n_kv if name.endswith(".attn_k.weight") else None
        if heads is not None:
            w = interleaved_to_halves(w, heads)
            if isinstance(groups, GroupQuantized):  # the same rows, each with its blocks
                groups = GroupQuantized(*(interleaved_to_halves(t, heads) for t in (groups.codes, groups.scale, groups.min)), groups.kind)
            elif isinstance(groups, Q8Blocks):
                groups = Q8Blocks(*(interleaved_to_halves(t, heads) for t in (groups.codes, groups.scale)), groups.kind)
        tensors[spec.gguf.to_hf(name)] = w
        if groups is not None:
            blocks[spec.gguf.to_hf(name)] = groups
    del reader  # the tensors are copies: let the memory map go
    return GGUFModel(hf_config=hf_config, tensors=tensors, tokenizer=tokenizer,
                     chat_template=meta.get("tokenizer.chat_template"), file_type=_file_type_name(meta.get("general.file_type")),
                     special_ids=special_ids, name=meta.get("general.name"), blocks=blocks)


def _stored_blocks(info) -> GroupQuantized | Q8Blocks | None:
    """A 2-D Q8_0, Q4_0 or Q4_1 tensor's blocks as they are stored (None for any other type)."""
    import gguf

    if info.tensor_type == gguf.GGMLQuantizationType.Q8_0 and len(info.shape) == 2:
        return _q8_0_blocks(info)
    return _q4_groups(info)


def _q8_0_blocks(info) -> Q8Blocks:
    """A Q8_0 tensor's blocks: each an fp16 scale d and 32 int8 codes q, w = d q."""
    rows, cols = int(info.shape[1]), int(info.shape[0])  # GGUF lists the fastest-varying dimension first
    raw = np.asarray(info.data, dtype=np.uint8).reshape(rows, cols // 32, 2 + 32)
    d = torch.from_numpy(raw[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32))  # (rows, cols / 32)
    codes = torch.from_numpy(raw[..., 2:].copy().view(np.int8)).reshape(rows, cols)
    return Q8Blocks(codes, d, "q8_0")


def _q4_groups(info) -> GroupQuantized | None:
    """A Q4_0 or Q4_1 tensor's blocks as codes, scales and minimums (None for any other type). A block holds an
    fp16 scale d (Q4_1: then an fp16 minimum m) and 16 bytes of codes: byte j's low nibble is weight j, its
    high nibble weight j + 16. Q4_1: w = d q + m; Q4_0: w = d (q - 8), a minimum of -8 d (exact in fp32)."""
    import gguf

    kind = {gguf.GGMLQuantizationType.Q4_0: "q4_0", gguf.GGMLQuantizationType.Q4_1: "q4_1"}.get(info.tensor_type)
    if kind is None or len(info.shape) != 2:
        return None
    rows, cols = int(info.shape[1]), int(info.shape[0])  # GGUF lists the fastest-varying dimension first
    header = 2 if kind == "q4_0" else 4
    raw = np.asarray(info.data, dtype=np.uint8).reshape(rows, cols // 32, header + 16)
    d = torch.from_numpy(raw[..., 0:2].copy().view(np.float16)[..., 0].astype(np.float32))  # (rows, cols / 32)
    packed = torch.from_numpy(raw[..., header:].copy())  # (rows, cols / 32, 16)
    codes = torch.cat([packed & 0x0F, packed >> 4], dim=-1).reshape(rows, cols)
    if kind == "q4_0":
        low = -8 * d
    else:
        low = torch.from_numpy(raw[..., 2:4].copy().view(np.float16)[..., 0].astype(np.float32))
    return GroupQuantized(codes, d, low, kind)


def stored_groups(model, g: GGUFModel) -> dict[str, GroupQuantized | Q8Blocks]:
    """The blocks `read_gguf(keep_blocks=True)` kept, by the name of our Linear they belong to (parts
    stacked as the weights are: q, k and v into a fused qkv, when all of them are of one type); a tied
    output head gets its embedding's."""
    from scratchllm.layers.linear import TiedHead

    spec = spec_of(model)
    modules = dict(model.named_modules())
    tied = {f"{n}.weight": name for name, m in modules.items() if isinstance(m, TiedHead)
            for n, e in modules.items() if e is m.embedding}  # "embed.weight" -> "lm_head"
    out = {}
    for ours, names, transpose in import_rows(spec.hf.weights, g.tensors, model.config):
        parts = [g.blocks.get(n) for n in names]
        if not names or any(p is None for p in parts) or len({type(p) for p in parts}) != 1:
            continue
        if transpose and ours.endswith(".weight"):
            out[ours[: -len(".weight")]] = type(parts[0]).cat(parts)
        elif ours in tied and isinstance(parts[0], Q8Blocks):  # the table is already (vocab, dim), the head's (out, in)
            out[tied[ours]] = parts[0]
    return out


_SMALL_TOKENIZER_KEYS = {"tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.add_bos_token",
                         "tokenizer.ggml.add_eos_token", *(f"tokenizer.ggml.{k}_token_id" for k in _SPECIAL_ID_KEYS)}


@lru_cache(maxsize=None)
def _reader_class():
    """gguf's GGUFReader, reading its fields through a plain array view of the memory map. The stock reader
    slices the np.memmap itself, about 800,000 times for SmolLM2's 49,152 tokens and merges, and each slice
    of that subclass pays its bookkeeping (measured: 5.9 s of a 13 s load)."""
    import gguf

    class Reader(gguf.GGUFReader):
        def _get(self, offset, dtype, count=1, override_order=None):
            if type(self.data) is np.memmap:
                self.data = self.data.view(np.ndarray)  # the same mapped bytes, without memmap's __getitem__
            return super()._get(offset, dtype, count, override_order)

    return Reader


def _open(path: Path):
    """A GGUFReader, after checking that the file is a GGUF at all and that every tensor lies inside it."""
    import gguf

    if path.exists() and not path.is_file():  # a FIFO would block the read for ever; /dev/zero never end
        raise ScratchLLMError(f"{path} is not a regular file; give the path of a .gguf file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
    except FileNotFoundError:
        raise ScratchLLMError(f"{path} does not exist") from None
    except (IsADirectoryError, PermissionError) as e:
        raise ScratchLLMError(f"{path} cannot be read ({e.strerror}); give the path of a .gguf file") from None
    if len(head) < 8 or head[:4] != b"GGUF":
        raise ScratchLLMError(f"{path} is not a GGUF file (it does not start with 'GGUF'); give a llama.cpp .gguf model")
    version = struct.unpack("<I", head[4:])[0]
    if version not in (2, 3):
        raise ScratchLLMError(f"{path} is GGUF version {version}; versions 2 and 3 are supported (re-convert it with a current llama.cpp)")
    try:
        reader = _reader_class()(path)
    except ValueError as e:  # an unknown ggml type id is a ValueError of the enum
        if "GGMLQuantizationType" in str(e):
            raise ScratchLLMError(f"{path} holds tensors of a type the gguf package does not know ({e}); "
                                  "upgrade gguf or convert the model to a common type (f16, q8_0, q4_k_m)") from None
        raise ScratchLLMError(f"{path} is truncated or corrupt ({str(e).splitlines()[0][:80]}); download it again") from None
    except (IndexError, KeyError, TypeError, OverflowError, UnicodeDecodeError, struct.error, MemoryError) as e:
        raise ScratchLLMError(f"{path} is truncated or corrupt ({e.__class__.__name__}); download it again") from None
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size or t.data.nbytes != t.n_bytes:
            raise ScratchLLMError(f"{path} is truncated: tensor {t.name} ends at byte {t.data_offset + t.n_bytes}, "
                                  f"the file has {size}; download it again")
    return reader


def _value(f, path: Path) -> Any:
    try:  # the reader decodes a field only when asked: a corrupt string or array fails here
        v = f.contents()
    except (UnicodeDecodeError, ValueError, IndexError, TypeError, OverflowError) as e:
        raise ScratchLLMError(f"{path} is truncated or corrupt ({e.__class__.__name__} in {f.name}); download it again") from None
    return v.tolist() if isinstance(v, np.ndarray) else v


def _torch_shape(info) -> tuple[int, ...]:
    """ggml lists dimensions fastest-moving first (columns, rows); torch the other way round."""
    return tuple(int(d) for d in reversed(info.shape.tolist()))


def _file_type_name(ft: int | None) -> str:
    import gguf

    if ft is None:
        return "unknown"
    try:
        name = gguf.LlamaFileType(int(ft) & ~1024).name  # 1024: "guessed" flag
    except ValueError:
        return f"type-{ft}"
    return {"ALL_F32": "f32"}.get(name, name.removeprefix("MOSTLY_").lower())


def _hf_config(meta: dict, infos: dict, path: Path, spec) -> dict[str, Any]:
    """A Hugging Face-form config dict from the {architecture}.* keys (the model type's spec reads it, as it
    reads a config.json)."""
    arch = spec.gguf.architecture

    def key(name: str, default: Any = None, required: bool = True) -> Any:
        v = meta.get(f"{arch}.{name}", default)
        if v is None and required:
            raise ScratchLLMError(f"{path} lacks the metadata key {arch}.{name}; the file is incomplete, re-convert it")
        if isinstance(v, list):
            raise ScratchLLMError(f"{path}: {arch}.{name} varies by layer, which a model with one shape per layer cannot hold")
        return v

    if key("expert_count", 0, required=False):
        raise ScratchLLMError(f"{path} is a mixture-of-experts model ({key('expert_count')} experts); only dense Llama models are supported")
    hidden, n_layer, n_head = int(key("embedding_length")), int(key("block_count")), int(key("attention.head_count"))
    n_kv = int(key("attention.head_count_kv", n_head))
    head_dim = int(key("attention.key_length", hidden // n_head))
    if int(key("attention.value_length", head_dim)) != head_dim:
        raise ScratchLLMError(f"{path}: key and value heads of different widths are not supported")
    if int(key("rope.dimension_count", head_dim)) != head_dim:
        raise ScratchLLMError(f"{path}: RoPE on {key('rope.dimension_count')} of {head_dim} head dimensions (partial rotary) is not supported")
    embd = infos.get("token_embd.weight")
    if embd is None:
        raise ScratchLLMError(f"{path} has no token_embd.weight tensor; it is not a complete Llama model")
    vocab = int(key("vocab_size", _torch_shape(embd)[0]))
    cfg: dict[str, Any] = {
        "model_type": spec.hf.model_types[0], "vocab_size": vocab, "hidden_size": hidden,
        "intermediate_size": int(key("feed_forward_length")), "num_hidden_layers": n_layer,
        "num_attention_heads": n_head, "num_key_value_heads": n_kv, "head_dim": head_dim,
        "rms_norm_eps": _f32(key("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": _f32(key("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(key("context_length", 2048)),
        "tie_word_embeddings": "output.weight" not in infos, "hidden_act": "silu",
        "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32",
    }
    scaling = key("rope.scaling.type", None, required=False)
    if scaling not in (None, "none"):
        cfg["rope_scaling"] = {"rope_type": scaling, "factor": _f32(key("rope.scaling.factor", 1.0, required=False))}
    if "rope_freqs.weight" in infos:
        cfg["rope_scaling"] = _llama3_scaling(infos["rope_freqs.weight"], head_dim, cfg["rope_theta"], path)

    return cfg


def _check_tensors(spec, hf_config: dict[str, Any], infos: dict, path: Path):
    """Our config, once every tensor the model needs is in the file, of its shape, and nothing else is: the
    model is built on the meta device (shapes only) from the config, its Hugging Face tensors named the GGUF way."""
    _, config = config_from_hf(hf_config, str(path))
    model = spec.build_shapes(config)
    expected = {spec.gguf.to_gguf(name): tuple(t.shape)
                for name, t in export_weights(spec.hf.weights, model.state_dict(), config).items()}
    for name, shape in expected.items():
        if name not in infos:
            raise ScratchLLMError(f"{path} lacks tensor {name}; the file is incomplete or not a {spec.model_type} model")
        if _torch_shape(infos[name]) != shape:
            raise ScratchLLMError(f"{path}: tensor {name} has shape {_torch_shape(infos[name])}, the config says {shape}; "
                                  "the file is corrupt")
    extra = sorted(set(infos) - set(expected) - {"rope_freqs.weight"})
    if extra:
        raise ScratchLLMError(f"{path} holds tensors a {spec.model_type} model without biases does not have "
                              f"({', '.join(extra[:3])}); this variant is not supported")
    return config


def _f32(v) -> float:
    """A float32 metadata value as the shortest decimal that is the same float32 (1e-05, not 9.9999997e-06)."""
    return float(str(np.float32(v)))


def _llama3_factors(head_dim: int, theta: float, factor: float, low: float = 1.0, high: float = 4.0,
                    original: int = 8192) -> torch.Tensor:
    """llama.cpp's rope_freqs: what Llama 3.1 scaling divides each RoPE frequency by."""
    from scratchllm.layers.rope import RopeScaling, inverse_frequencies

    return inverse_frequencies(head_dim, theta) / inverse_frequencies(head_dim, theta, RopeScaling(factor, low, high, original))


def _llama3_scaling(info, head_dim: int, theta: float, path: Path) -> dict[str, Any]:
    """Llama 3.1 scaling parameters from a rope_freqs tensor (the file keeps only the divisors: the
    parameters are recognised by recomputing the divisors of Llama 3.1 / 3.2's low 1, high 4, 8192)."""
    import gguf

    got = torch.from_numpy(np.array(gguf.quants.dequantize(info.data, info.tensor_type), dtype=np.float32)).flatten()
    factor = _f32(got.max())
    if got.numel() == head_dim // 2 and torch.allclose(got, _llama3_factors(head_dim, theta, factor), rtol=1e-4, atol=1e-5):
        return {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}
    raise ScratchLLMError(f"{path}: its rope_freqs are not Llama 3.1's scaling (low 1, high 4, 8192 positions); "
                          "this RoPE variant is not supported")


def _read_tokenizer(reader, meta: dict, vocab_size: int, path: Path) -> BPETokenizer | None:
    model = meta.get("tokenizer.ggml.model")
    if model is None:
        return None
    if model != "gpt2":
        kind = {"llama": "a SentencePiece ('llama')", "bert": "a WordPiece ('bert')", "t5": "a Unigram ('t5')"}.get(model, repr(model))
        raise ScratchLLMError(f"{path} has {kind} vocabulary; only byte-level BPE ('gpt2') vocabularies are supported")
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise ScratchLLMError(f"{path}: pre-tokenizer {pre!r} is not supported ({', '.join(sorted(PRE_TOKENIZERS))} are)")
    fields = reader.fields
    if "tokenizer.ggml.tokens" not in fields:
        raise ScratchLLMError(f"{path} names a tokenizer but holds no tokenizer.ggml.tokens; the file is incomplete")
    tokens = _value(fields["tokenizer.ggml.tokens"], path)
    types = _value(fields["tokenizer.ggml.token_type"], path) if "tokenizer.ggml.token_type" in fields else [NORMAL] * len(tokens)
    if len(types) != len(tokens) or len(tokens) > vocab_size:
        raise ScratchLLMError(f"{path}: {len(tokens)} tokens, {len(types)} token types and {vocab_size} embeddings "
                              "do not fit together; the file is corrupt")
    ranks: dict[bytes, int] = {}
    specials: dict[str, int] = {}
    for i, (tok, kind) in enumerate(zip(tokens, types)):
        if kind in (CONTROL, USER_DEFINED):
            specials[tok] = i
        elif kind == NORMAL:
            data = _spelled_bytes(tok)
            if data in ranks:
                raise ScratchLLMError(f"{path}: tokens {ranks[data]} and {i} spell the same bytes; not a byte-level BPE vocabulary")
            ranks[data] = i
        # UNKNOWN, UNUSED (padding slots) and BYTE (SentencePiece) tokens are never produced by BPE
    merges = _value(fields["tokenizer.ggml.merges"], path) if "tokenizer.ggml.merges" in fields else []
    if not merges and any(len(t) > 1 for t in ranks):
        raise ScratchLLMError(f"{path} has a byte-level BPE vocabulary without tokenizer.ggml.merges; the file is incomplete")
    _check_merge_order(merges, ranks, path)
    return BPETokenizer(ranks, PRE_TOKENIZERS[pre], specials)  # a vocabulary may lack some single bytes (see bpe.py)


@lru_cache(maxsize=1)
def _alphabet() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def _spelled_bytes(token: str) -> bytes:
    """A token's bytes from GPT-2's byte-to-unicode spelling; a token outside that alphabet is read as
    UTF-8 text, as llama.cpp and transformers read it."""
    alphabet = _alphabet()
    try:
        return bytes(alphabet[c] for c in token)
    except KeyError:
        return token.encode("utf-8")


def _check_merge_order(merges: list[str], ranks: dict[bytes, int], path: Path) -> None:
    """BPETokenizer merges by token id (tiktoken); llama.cpp by the order of the merges list. They agree
    when every merge makes a token and the tokens made come in increasing id order."""
    last = -1
    for n, m in enumerate(merges):
        a, _, b = m.partition(" ")
        made = ranks.get(_spelled_bytes(a) + _spelled_bytes(b))
        if made is None or made <= last:
            raise ScratchLLMError(f"{path}: merge {n} ({m!r}) does not make tokens in id order; this vocabulary "
                                  "cannot be encoded by rank (tiktoken-style), so it is not supported")
        last = made


# -- writing ---------------------------------------------------------------------------------------

def write_gguf(path: str | Path, hf_config: dict[str, Any], tensors: dict[str, torch.Tensor], tokenizer: BPETokenizer | None,
               chat_template: str | None = None, file_type: str = "f16", bos_id: int | None = None,
               eos_id: int | None = None, eot_id: int | None = None, pad_id: int | None = None,
               name: str | None = None, add_bos: bool = False) -> Path:
    """A GGUF file from Hugging Face-form tensors (fp32) and config, written atomically. The config is read
    by its model type's spec (as a config.json is), whose GGUF form names the architecture, the tensors and
    the RoPE settings.

    `file_type`: "f32", "f16" or "bf16" (2-D weights in that type, norms in f32), or "q8_0", "q4_0", "q4_1"
    (2-D weights in blocks of 32, by gguf-py's quantizers, llama.cpp's rules; one whose width is not a
    multiple of 32 falls back to f16, as llama.cpp does). q4_*: the token embedding in q8_0, as llama.cpp's
    quantizer keeps it (it is also the output head of a tied model)."""
    import gguf

    path = Path(path)
    if file_type not in FILE_TYPES:
        raise ScratchLLMError(f"GGUF file type {file_type!r} is not supported; use one of {', '.join(FILE_TYPES)}")
    spec, config = config_from_hf(hf_config, "the model's config")  # biases, RoPE variants: refused there
    if spec.gguf is None:
        raise ScratchLLMError(f"a {spec.model_type} model has no GGUF form here; export it with --to-hf instead")
    arch = spec.gguf.architecture
    theta, scaling = spec.gguf.rope(config)
    c = hf_config
    n_head, hidden = c["num_attention_heads"], c["hidden_size"]
    n_kv = c.get("num_key_value_heads") or n_head
    head_dim = c.get("head_dim") or hidden // n_head
    tied = c.get("tie_word_embeddings", False)

    q = gguf.GGMLQuantizationType
    qtype = {"f32": q.F32, "f16": q.F16, "bf16": q.BF16, "q8_0": q.Q8_0, "q4_0": q.Q4_0, "q4_1": q.Q4_1}[file_type]
    ftype = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16,
             "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0, "q4_0": gguf.LlamaFileType.MOSTLY_Q4_0,
             "q4_1": gguf.LlamaFileType.MOSTLY_Q4_1}[file_type]

    # tensors first: a name or shape that does not fit fails before anything is written
    arrays: list[tuple[str, np.ndarray, Any]] = []
    for hf_name, t in tensors.items():
        if tied and hf_name == "lm_head.weight":
            continue
        gname = spec.gguf.to_gguf(hf_name)
        if gname is None:
            raise ScratchLLMError(f"tensor {hf_name} has no place in a GGUF {arch} model; is this a state dict of "
                                  f"{', '.join(c.get('architectures') or [spec.model_type])}?")
        w = t.detach().to("cpu", torch.float32)
        if gname.endswith(".attn_q.weight"):
            w = halves_to_interleaved(w, n_head)
        elif gname.endswith(".attn_k.weight"):
            w = halves_to_interleaved(w, n_kv)
        embedding = gname in ("token_embd.weight", "output.weight") and qtype in (q.Q4_0, q.Q4_1)
        arrays.append((gname, *_encode_tensor(w.numpy(), q.Q8_0 if embedding else qtype)))
    if scaling is not None:  # Llama 3.1's: what it divides each frequency by, as llama.cpp keeps it
        factors = _llama3_factors(head_dim, theta, scaling.factor, scaling.low_freq_factor, scaling.high_freq_factor,
                                  scaling.original_max_position_embeddings)
        arrays.append(("rope_freqs.weight", factors.numpy().astype(np.float32), None))

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        w = gguf.GGUFWriter(tmp, arch)
        w.add_type("model")
        w.add_name(name or f"scratchllm {arch}")
        w.add_vocab_size(c["vocab_size"])
        w.add_context_length(c.get("max_position_embeddings", 2048))
        w.add_embedding_length(hidden)
        w.add_block_count(c["num_hidden_layers"])
        w.add_feed_forward_length(c["intermediate_size"])
        w.add_rope_dimension_count(head_dim)
        w.add_head_count(n_head)
        w.add_head_count_kv(n_kv)
        if head_dim != hidden // n_head:
            w.add_key_length(head_dim)
            w.add_value_length(head_dim)
        w.add_layer_norm_rms_eps(c.get("rms_norm_eps", 1e-6))
        w.add_rope_freq_base(theta)
        w.add_file_type(ftype)
        w.add_quantization_version(gguf.GGML_QUANT_VERSION)
        if tokenizer is not None:
            _write_tokenizer(w, tokenizer, c["vocab_size"])
            w.add_add_bos_token(add_bos)
            w.add_add_eos_token(False)
        for key, value in (("bos", bos_id), ("eos", eos_id), ("eot", eot_id), ("pad", pad_id)):
            if value is not None:
                getattr(w, f"add_{key}_token_id")(int(value))
        if chat_template:
            w.add_chat_template(chat_template)
        for gname, data, raw_dtype in arrays:
            w.add_tensor(gname, data, raw_dtype=raw_dtype)
        try:
            w.write_header_to_file()
            w.write_kv_data_to_file()
            w.write_tensors_to_file()
        finally:
            w.close()
    return path


def _encode_tensor(a: np.ndarray, qtype) -> tuple[np.ndarray, Any]:
    """(data, raw_dtype for GGUFWriter.add_tensor): 1-D tensors (norms) stay f32, as llama.cpp keeps them."""
    import gguf

    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
        return a, None
    if qtype == gguf.GGMLQuantizationType.F16:
        return a.astype(np.float16), None
    blocks = (gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_0, gguf.GGMLQuantizationType.Q4_1)
    if qtype in blocks and a.shape[-1] % 32:  # rows must be whole blocks of 32
        return a.astype(np.float16), None
    return gguf.quants.quantize(a, qtype), qtype


def _write_tokenizer(w, tok: BPETokenizer, vocab_size: int) -> None:
    if tok.pattern not in _PRE_NAME:
        raise ScratchLLMError("this tokenizer's split pattern has no llama.cpp pre-tokenizer name; GGUF can hold "
                              "only the gpt2, llama3 (gpt4), smollm, qwen2 and default patterns")
    if tok.vocab_size > vocab_size:
        raise ScratchLLMError(f"the tokenizer has {tok.vocab_size} ids but the model only {vocab_size} embeddings")
    spell = bytes_to_unicode()
    specials = {i: s for s, i in tok.special_tokens.items()}
    ordinary = {i: b for b, i in tok.ranks.items()}
    tokens, types = [], []
    for i in range(vocab_size):
        if i in specials:
            tokens.append(specials[i])
            types.append(CONTROL)
        elif i in ordinary:
            tokens.append("".join(spell[b] for b in ordinary[i]))
            types.append(NORMAL)
        else:  # an id the tokenizer never produces (a padded embedding table), as llama.cpp's converter writes it
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(_PRE_NAME[tok.pattern])
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(["".join(spell[x] for x in a) + " " + "".join(spell[x] for x in b) for a, b in recover_merges(tok.ranks)])


# -- scratchllm models ---------------------------------------------------------------------------

def load_gguf(path: str | Path, device: str = "cpu", keep_blocks: bool = False):
    """(our model in eval mode, its tokenizer or None, the GGUFModel read, with its tensors dropped; with
    `keep_blocks`, its `blocks` are the stored codes by the name of our module they belong to: see stored_groups)."""
    g = read_gguf(path, keep_blocks)
    model = from_hf(g.hf_config, g.tensors, str(path))
    if keep_blocks:
        g.blocks = stored_groups(model, g)
    g.tensors = {}  # the model holds the weights now
    return model.to(device), g.tokenizer, g


def save_gguf(model, path: str | Path, tokenizer: BPETokenizer | None = None, file_type: str = "f16",
              chat_template: str | None = None, **special_ids: int | None) -> Path:
    """One of our Llamas as a GGUF file (see `write_gguf` for file_type and the special ids)."""
    if tokenizer is not None and not tokenizer.byte_level:
        raise ScratchLLMError(f"GGUF holds byte-level BPE vocabularies; this model's tokenizer is not one ({tokenizer.kind})")
    hf_config, tensors = to_hf(model)
    return write_gguf(path, hf_config, tensors, tokenizer, chat_template=chat_template, file_type=file_type, **special_ids)
