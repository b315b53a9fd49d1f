"""What a model type is and can do, stated once, by the model type itself.

Each model file ends with its `SPEC`: the model and config classes, how a config is finished from
the tokenizer (vocabulary size, image token id), what it trains on and reports (its `Task`), whether
and how it generates text, which commands apply to it, and its Hugging Face weight map. Everything
outside `models/` (training, generation, evaluation, the CLI, import and export) asks the spec;
nothing there tests a model's class or attributes.

A weight map is a table read in both directions. Each row names one of our tensors and the
Hugging Face tensors it is made of:

    ours "blocks.{i}.attn.qkv.weight"  <-  theirs "layers.{i}.self_attn.{q,k,v}_proj.weight", transposed

Import stacks their tensors along the output dimension (q, k, v -> one fused qkv), transposing
nn.Linear's (out, in) into our Linear's (in, out); export does the reverse, splitting by `split`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Container, Iterator

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from scratchllm.errors import ScratchLLMError

class _NoRandomInit(TorchFunctionMode):
    """Random initialisers do nothing: a model built on the meta device has no values to fill, and the
    first meta `normal_` imports torch._dynamo (measured: 1.5 s of every process that loads a checkpoint,
    of the 1.9 s it took to build SmolLM2's shapes; 0.02 s without)."""

    SKIP = {torch.Tensor.normal_, torch.Tensor.uniform_, nn.init.normal_, nn.init.uniform_, nn.init.trunc_normal_}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.SKIP:
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


COMMANDS = ("train", "sample", "eval", "ask", "chat", "serve", "convert", "finetune")


# -- weight maps -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Row:
    """One of our tensors and the Hugging Face tensors it is stacked from ("{i}": every layer)."""

    ours: str
    theirs: tuple[str, ...]
    transpose: bool = False  # theirs are nn.Linear weights, (out, in); ours (in, out)
    split: Callable[[Any], list[int]] | None = None  # output sizes of `theirs` (default: equal parts)
    when: Callable[[Any], bool] | None = None  # only for configs where this holds (untied head, QK-norm)


def linear(ours: str, *theirs: str, bias: bool, transpose: bool = True, split=None, when=None) -> list[Row]:
    """Rows for a Linear layer (weight, and bias when it has one) from one or more HF Linear layers."""
    rows = [Row(f"{ours}.weight", tuple(f"{t}.weight" for t in theirs), transpose, split, when)]
    if bias:
        rows.append(Row(f"{ours}.bias", tuple(f"{t}.bias" for t in theirs), False, split, when))
    return rows


def norm(ours: str, theirs: str, bias: bool = True) -> list[Row]:
    """Rows for a LayerNorm (weight and bias) or an RMSNorm (weight)."""
    return [Row(f"{ours}.weight", (f"{theirs}.weight",))] + ([Row(f"{ours}.bias", (f"{theirs}.bias",))] if bias else [])


@dataclass(frozen=True)
class WeightMap:
    """Rows under a prefix on each side. Hugging Face files name a part differently across versions
    (`vision_tower.vision_model.` or `model.vision_tower.vision_model.`): import takes the first
    prefix the file has, export writes the first. `config` picks the (sub)config the rows read."""

    ours_prefix: str
    theirs_prefixes: tuple[str, ...]
    rows: tuple[Row, ...]
    config: Callable[[Any], Any] = lambda c: c

    def _rows(self, cfg) -> Iterator[tuple[Row, int | None]]:
        c = self.config(cfg)
        for row in self.rows:
            if row.when is None or row.when(c):
                for i in (range(c.n_layer) if "{i}" in row.ours else (None,)):
                    yield row, i


def import_rows(maps: tuple[WeightMap, ...], theirs: Container[str], cfg) -> Iterator[tuple[str, list[str], bool]]:
    """(our tensor's name, the names of theirs stacked into it, transposed or not) for every row the config
    has, under the prefixes the names in `theirs` use."""
    for m in maps:
        first = next(m._rows(cfg), None)
        if first is None:
            continue
        probe = first[0].theirs[0].format(i=first[1])
        prefix = next((p for p in m.theirs_prefixes if p + probe in theirs), m.theirs_prefixes[0])
        for row, i in m._rows(cfg):
            yield m.ours_prefix + row.ours.format(i=i), [prefix + t.format(i=i) for t in row.theirs], row.transpose


def import_weights(maps: tuple[WeightMap, ...], theirs: dict[str, torch.Tensor], cfg, where: str) -> dict[str, torch.Tensor]:
    """Our state dict from a Hugging Face one, by the tables; a tensor the table needs and the file
    lacks is a one-line error."""
    out: dict[str, torch.Tensor] = {}
    for ours, names, transpose in import_rows(maps, theirs, cfg):
        missing = [n for n in names if n not in theirs]
        if missing:
            raise ScratchLLMError(f"{where} lacks the tensor {missing[0]}; the weights do not match the config")
        parts = [theirs[n] for n in names]
        if len({p.dim() for p in parts}) != 1 or (len(parts) > 1 and len({p.shape[1:] for p in parts}) != 1):
            raise ScratchLLMError(f"{where}: tensors {', '.join(names)} have shapes that do not stack")
        t = torch.cat(parts) if len(parts) > 1 else parts[0]
        out[ours] = t.t().contiguous() if transpose and t.dim() == 2 else t
    return out


def export_weights(maps: tuple[WeightMap, ...], ours: dict[str, torch.Tensor], cfg) -> dict[str, torch.Tensor]:
    """A Hugging Face state dict from ours: the same tables, read the other way."""
    out: dict[str, torch.Tensor] = {}
    for m in maps:
        prefix = m.theirs_prefixes[0]
        for row, i in m._rows(cfg):
            t = ours[m.ours_prefix + row.ours.format(i=i)]
            t = t.t() if row.transpose and t.dim() == 2 else t
            sizes = row.split(m.config(cfg)) if row.split else [t.size(0) // len(row.theirs)] * len(row.theirs)
            for name, part in zip(row.theirs, t.split(sizes)):
                out[prefix + name.format(i=i)] = part.contiguous()
    return out


@dataclass(frozen=True)
class HFFormat:
    """How a model type reads and writes Hugging Face folders (config.json + safetensors)."""

    model_types: tuple[str, ...]  # HF `model_type` values read into this model type
    config_from_hf: Callable[[dict], Any]
    weights: tuple[WeightMap, ...]
    config_to_hf: Callable[[Any], dict] | None = None  # None: import only


@dataclass(frozen=True)
class GGUFFormat:
    """How a model type reads and writes llama.cpp's GGUF files (interop/gguf.py), beside its Hugging Face
    form: the architecture name, the GGUF name of each Hugging Face tensor, one table read both ways
    ("blk.{i}.attn_q" <-> "model.layers.{i}.self_attn.q_proj", weights without ".weight", "{i}": every
    layer), and its RoPE settings (base, scaling or None) from a config."""

    architecture: str  # general.architecture
    tensors: tuple[tuple[str, str], ...]
    rope: Callable[[Any], tuple[float, Any]]

    def to_hf(self, gguf_name: str) -> str | None:
        """The Hugging Face name of a GGUF tensor ("blk.3.attn_q.weight" -> "model.layers.3.self_attn.q_proj.weight")."""
        return _rename(gguf_name, self.tensors)

    def to_gguf(self, hf_name: str) -> str | None:
        return _rename(hf_name, tuple((theirs, ours) for ours, theirs in self.tensors))


def _rename(name: str, table: tuple[tuple[str, str], ...]) -> str | None:
    stem, dot, leaf = name.rpartition(".")
    for source, target in table:
        pattern = "^" + re.escape(source).replace(re.escape("{i}"), r"(\d+)") + "$"
        m = re.match(pattern, stem)
        if m:
            return target.replace("{i}", m.group(1)) + dot + leaf if m.groups() else target + dot + leaf
    return None


# -- specs -----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelSpec:
    model_type: str  # the name in a checkpoint's config.json
    model_class: type[nn.Module]
    config_class: type
    task: Any | None  # a Task (models/tasks.py): what it trains on and reports; None: not trained here
    finish_config: Callable[[Any, Any], Any] = lambda config, tokenizer: config  # (config, tokenizer) -> config
    generation: str | None = None  # "cached": KV-cache decoding; "recompute": the whole context each step
    commands: frozenset[str] = field(default_factory=frozenset)
    hf: HFFormat | None = None
    shard_units: Callable[[nn.Module], Any] | None = None  # the blocks FSDP shards one by one (None: no FSDP)
    vocab_size: Callable[[Any], int] | None = lambda config: config.vocab_size  # ids with an embedding (None: reads no text)
    linear_weights: bool = True  # holds Linear layers (whose layout changed in checkpoint format 2)
    gguf: GGUFFormat | None = None  # its GGUF form (interop/gguf.py reads and writes by it); None: none
    # LoRA's targets: name -> (Linear's path, "{i}" for each block; its first and last + 1 output column), from
    # the config (a fused qkv holds q, k and v side by side). None: no LoRA. See layers/linear.py, train/finetune.py
    lora_targets: Callable[[Any], dict[str, tuple[str, int, int]]] | None = None
    quantizable: bool = False  # its projections can decode from int8 or int4 weights (`--precision int8|int4`, layers/quantized.py)
    # (model, KV cache) -> an object whose step_rows(tokens, positions, rows) gives a token's logits for each of
    # several cache rows in one call, or None where this model cannot have one (models/llama_step.py); None: the
    # engine runs the forward pass
    fused_step: Callable[[nn.Module, Any], Any] | None = None
    # model -> the layout ("onednn" or "out_in", layers/linear.py's pack_for_inference) its bf16 projections are
    # copied into for decoding by the fused step: the one that step reads fastest; None: oneDNN's
    decoding_bf16_layout: Callable[[nn.Module], str] | None = None

    def build(self, config) -> nn.Module:
        return self.model_class(config)

    def build_shapes(self, config) -> nn.Module:
        """The model on the meta device: its tensors' names, shapes and dtypes, no values, no memory."""
        with torch.device("meta"), _NoRandomInit():
            return self.build(config)

    def build_meta(self, config, where: str, copies: int = 1) -> nn.Module:
        """The model built on the meta device (shapes only, no memory), once `copies` times its weights
        are known to fit in free memory (training holds 4: weights, gradients, AdamW's two moments)."""
        model = self.build_shapes(config)
        check_memory(copies * sum(t.numel() * t.element_size() for t in model.state_dict().values()), where)
        return model

    def from_weights(self, config, tensors: dict[str, torch.Tensor], where: str) -> nn.Module:
        """A model with these weights, checked before anything is allocated: the model is built on
        the meta device (shapes only), its size is checked against free memory, every tensor's name,
        shape and dtype against the model's, and that every value is finite, and only then are the
        weights put in place (no random initialisation is computed and thrown away)."""
        model = self.build_meta(config, where)
        expected = model.state_dict()
        missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise ScratchLLMError(f"{where}: the weights do not match the config (missing {missing[:3]}, unexpected {unexpected[:3]})")
        for name, t in tensors.items():
            if t.shape != expected[name].shape:
                raise ScratchLLMError(f"{where}: tensor {name} has shape {tuple(t.shape)}, the config needs {tuple(expected[name].shape)}")
            if not t.is_floating_point():
                raise ScratchLLMError(f"{where}: tensor {name} is {t.dtype}, not floating point")
            if not t.is_meta and not bool(torch.isfinite(t).all()):  # it would sample from NaN probabilities
                raise ScratchLLMError(f"{where}: tensor {name} holds NaN or infinite values (a run that diverged?); "
                                      "use another checkpoint, e.g. an earlier best/")
        model.load_state_dict(tensors, strict=True, assign=True)
        return model.eval()

    def require(self, command: str, source: str = "this checkpoint") -> None:
        """A one-line error naming the commands that fit, when `command` does not apply to this model type."""
        if command in self.commands:
            return
        # the commands that use this model as `command` would have: generating ones first, eval when nothing else
        others = [c for c in COMMANDS if c in self.commands and c not in ("train", "convert", "eval", "finetune")] or \
            [c for c in ("eval",) if c in self.commands]
        hint = f"; use {' or '.join(f'scratchllm {c}' for c in others)}" if others else ""
        raise ScratchLLMError(f"{source} holds a {self.model_type} model, which `scratchllm {command}` does not apply to{hint}")


    def quantize(self, model: nn.Module, kind: str, source: str, stored: dict | None = None) -> nn.Module:
        """`--precision int8|int4`: the model's projections decode from compact integer weights
        (layers/quantized.py; `stored`: a GGUF file's Q4 blocks by module name, used as they are)."""
        from scratchllm.layers.quantized import quantize

        if not self.quantizable:
            raise ScratchLLMError(f"{source} holds a {self.model_type} model, which has no {kind} form; use --precision bf16 or fp32")
        quantize(model, kind, stored)
        return model

    def add_lora(self, model: nn.Module, cfg: Any) -> list[str]:
        """Give `model` the LoRA updates `cfg` (a layers.LoRAConfig) names, in every block, and freeze
        everything else: only the updates train. Returns the names of the trainable parameters."""
        from scratchllm.layers.linear import add_lora

        targets = self.lora_targets(model.config) if self.lora_targets is not None else {}
        if not targets:
            raise ScratchLLMError(f"a {self.model_type} model has no projections LoRA can adapt; fine-tune it in full")
        unknown = [t for t in cfg.targets if t not in targets]
        if unknown:
            raise ScratchLLMError(f"LoRA target {unknown[0]!r} names no projection of a {self.model_type} model; "
                                  f"choose from {','.join(targets)}")
        for p in model.parameters():
            p.requires_grad_(False)
        modules = dict(model.named_modules())
        for name in cfg.targets:
            path, start, stop = targets[name]
            for i in range(model.config.n_layer):
                add_lora(modules[path.format(i=i)], name, start, stop, cfg.r, cfg.alpha, cfg.dropout)
        return [n for n, p in model.named_parameters() if p.requires_grad]


def check_memory(n_bytes: int, where: str) -> None:
    """Refuse, in one line, a model that would not fit in this machine's free memory."""
    try:
        with open("/proc/meminfo") as f:
            available = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return  # not Linux: nothing to check against
    if n_bytes > available:
        raise ScratchLLMError(f"{where}: the model needs {n_bytes / 2**30:.1f} GiB and this machine has "
                              f"{available / 2**30:.1f} GiB free; is its config right?")


_SPECS: dict[str, ModelSpec] = {}
_BY_CLASS: dict[type, ModelSpec] = {}


def register(spec: ModelSpec) -> ModelSpec:
    _SPECS[spec.model_type] = spec
    _BY_CLASS[spec.model_class] = spec
    return spec


def get_spec(model_type: str) -> ModelSpec:
    if model_type not in _SPECS:
        raise ScratchLLMError(f"unknown model type '{model_type}'; known: {', '.join(_SPECS)}")
    return _SPECS[model_type]


def spec_of(model: nn.Module) -> ModelSpec:
    """The spec a model was built from: the one place that looks at a model's class."""
    return _BY_CLASS[type(model)]


def spec_for_gguf(architecture: str | None, where: str) -> ModelSpec:
    """The spec that reads GGUF files of this architecture (general.architecture)."""
    for spec in _SPECS.values():
        if spec.gguf is not None and spec.gguf.architecture == architecture:
            return spec
    known = sorted(s.gguf.architecture for s in _SPECS.values() if s.gguf)
    raise ScratchLLMError(f"{where} holds a {architecture!r} model; only the {' and '.join(repr(k) for k in known)} "
                          f"architecture{'s are' if len(known) > 1 else ' is'} supported (Llama, SmolLM, Mistral-style "
                          "dense decoders)")


def spec_for_hf(hf_model_type: str | None) -> ModelSpec:
    for spec in _SPECS.values():
        if spec.hf is not None and hf_model_type in spec.hf.model_types:
            return spec
    known = sorted(t for s in _SPECS.values() if s.hf for t in s.hf.model_types)
    raise ScratchLLMError(f"Hugging Face model type {hf_model_type!r} is not supported ({', '.join(known)} are)")
