"""LoRA adapters in peft's format (adapter_config.json + adapter_model.safetensors), written and read.

    ours   blocks.{i}.attn.qkv.lora.q.A  (in, r)        .B  (r, q columns)      columns 0:q of the fused qkv
    peft   base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight  (r, in)   .lora_B.weight  (q, r)

Which Hugging Face module a LoRA target is comes from the model's spec, read in the direction export
reads it: the target's Linear and columns (`spec.lora_targets`) are found among the rows of its Hugging
Face weight map, cut by the row's split (q, k, v of one qkv row are q_proj, k_proj, v_proj). A target
that is only part of a module Hugging Face keeps whole (GPT-2's c_attn) has no peft form.

`PeftModel.from_pretrained(transformers_model, folder)` loads what `save_peft_adapter` writes, and
`load_peft_adapter` reads what peft's `save_pretrained` writes (tested both ways, same logits).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from scratchllm.errors import ScratchLLMError
from scratchllm.fileio import JSON_ERRORS, save_safetensors, write_output_folder
from scratchllm.layers.linear import LoRAConfig, LowRank, lora_layers
from scratchllm.models import ModelSpec, spec_of

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PREFIX = "base_model.model."  # PeftModelForCausalLM wraps the transformers model as base_model.model


def peft_modules(model: nn.Module) -> dict[str, str | None]:
    """target -> its Hugging Face module's name, "{i}" for the block ("model.layers.{i}.self_attn.q_proj"),
    or None where the target is part of a module Hugging Face keeps whole."""
    spec, config = spec_of(model), model.config
    targets = spec.lora_targets(config) if spec.lora_targets is not None else {}
    named = dict(model.named_modules())
    out: dict[str, str | None] = {t: None for t in targets}
    for wmap in spec.hf.weights if spec.hf is not None else ():
        c = wmap.config(config)
        for row in wmap.rows:
            if row.when is not None and not row.when(c):
                continue
            for target, (path, start, stop) in targets.items():
                if wmap.ours_prefix + row.ours != f"{path}.weight":
                    continue
                width = named[path.format(i=0)].out_features
                sizes = row.split(c) if row.split else [width // len(row.theirs)] * len(row.theirs)
                offsets = [sum(sizes[:j]) for j in range(len(sizes) + 1)]
                for j, theirs in enumerate(row.theirs):
                    if (offsets[j], offsets[j + 1]) == (start, stop):
                        out[target] = wmap.theirs_prefixes[0] + theirs.removesuffix(".weight")
    return out


def lora_config_of(model: nn.Module) -> LoRAConfig:
    """The LoRAConfig a model's updates were made with (one rank, alpha and dropout for all of them)."""
    updates = {(name, u.r, u.alpha, u.dropout_p) for layer in lora_layers(model) for name, u in layer.lora.items()}
    if not updates:
        raise ScratchLLMError("this model has no LoRA updates to save")
    if len({u[1:] for u in updates}) != 1:
        raise ScratchLLMError("this model's LoRA updates differ in rank, alpha or dropout; peft's format needs one of each")
    _, r, alpha, dropout = next(iter(updates))
    spec = spec_of(model)
    order = list(spec.lora_targets(model.config))
    return LoRAConfig(r=r, alpha=alpha, dropout=dropout, targets=tuple(sorted({u[0] for u in updates}, key=order.index)))


def to_peft(model: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(adapter_config.json's contents, adapter_model.safetensors' tensors) of a model's LoRA updates."""
    spec, cfg = spec_of(model), lora_config_of(model)
    modules = peft_modules(model)
    whole = [t for t in cfg.targets if modules[t] is None]
    if whole:
        raise ScratchLLMError(f"LoRA target {whole[0]!r} is part of a layer Hugging Face keeps whole, which peft adapts "
                              "whole; export the merged model instead (scratchllm convert --to-hf)")
    named = dict(model.named_modules())
    tensors = {}
    for target in cfg.targets:
        path = spec.lora_targets(model.config)[target][0]
        for i in range(model.config.n_layer):
            update: LowRank = named[path.format(i=i)].lora[target]
            if named[path.format(i=i)].lora.merged:
                raise ScratchLLMError("the LoRA updates are merged into the weights; unmerge them before saving the adapter")
            theirs = PREFIX + modules[target].format(i=i)
            tensors[f"{theirs}.lora_A.weight"] = update.A.detach().t().contiguous().cpu()  # (r, in)
            tensors[f"{theirs}.lora_B.weight"] = update.B.detach().t().contiguous().cpu()  # (out, r)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": cfg.r, "lora_alpha": cfg.alpha, "lora_dropout": cfg.dropout,
              "target_modules": sorted({modules[t].rsplit(".", 1)[-1] for t in cfg.targets}), "bias": "none",
              "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "init_lora_weights": True,
              "inference_mode": True, "modules_to_save": None, "layers_to_transform": None, "layers_pattern": None,
              "rank_pattern": {}, "alpha_pattern": {}, "base_model_name_or_path": None, "revision": None}
    return config, tensors


def save_peft_adapter(model: nn.Module, folder: str | Path, base_model_name_or_path: str | None = None) -> Path:
    """Write a model's LoRA updates as a peft adapter folder (only its two files; see fileio.check_output)."""
    config, tensors = to_peft(model)
    config["base_model_name_or_path"] = base_model_name_or_path

    def write(tmp: Path) -> None:
        (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
        save_safetensors(save_file, tensors, tmp / ADAPTER_WEIGHTS, metadata={"format": "pt"})

    return write_output_folder(folder, write)


def is_peft_folder(path: str | Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def read_peft_config(folder: str | Path) -> dict[str, Any]:
    """adapter_config.json, checked: a plain LoRA (no DoRA, rsLoRA, biases, per-layer ranks or extra modules)."""
    path = Path(folder) / ADAPTER_CONFIG
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except JSON_ERRORS:
        raise ScratchLLMError(f"{path} is missing or not JSON; is {folder} a peft adapter folder?") from None
    if not isinstance(cfg, dict) or cfg.get("peft_type") != "LORA":
        raise ScratchLLMError(f"{path} is not a LoRA adapter's config (peft_type {cfg.get('peft_type') if isinstance(cfg, dict) else None!r})")
    unsupported = [k for k, plain in (("use_dora", False), ("use_rslora", False), ("fan_in_fan_out", False), ("bias", "none"),
                                      ("lora_bias", False)) if cfg.get(k, plain) != plain]
    unsupported += [k for k in ("rank_pattern", "alpha_pattern", "modules_to_save", "layers_to_transform", "layer_replication")
                    if cfg.get(k)]
    if unsupported:
        raise ScratchLLMError(f"{path} sets {unsupported[0]}, which scratchllm's LoRA does not have (plain LoRA only)")
    r, alpha = cfg.get("r"), cfg.get("lora_alpha")
    if type(r) is not int or r < 1 or type(alpha) not in (int, float) or not math.isfinite(alpha) or alpha <= 0:
        raise ScratchLLMError(f"{path} needs a whole rank r >= 1 and a positive lora_alpha, got r={r!r} lora_alpha={alpha!r}")
    return cfg


def load_peft_adapter(model: nn.Module, folder: str | Path) -> LoRAConfig:
    """Give `model` the LoRA updates of a peft adapter folder (as peft's save_pretrained writes it) and
    return their config; every tensor's name and shape is checked, and every block must have them."""
    from scratchllm.checkpoint import read_safetensors

    folder = Path(folder)
    cfg = read_peft_config(folder)
    tensors = read_safetensors(folder / ADAPTER_WEIGHTS)
    spec = spec_of(model)
    modules = {t: m for t, m in peft_modules(model).items() if m is not None}
    where: dict[str, tuple[str, int, str]] = {}  # tensor name -> (target, block, "A" | "B")
    for target, module in modules.items():
        for i in range(model.config.n_layer):
            for ours, theirs in (("A", "lora_A"), ("B", "lora_B")):
                where[f"{PREFIX}{module.format(i=i)}.{theirs}.weight"] = (target, i, ours)
    unknown = sorted(set(tensors) - set(where))
    if unknown:
        raise ScratchLLMError(f"{folder / ADAPTER_WEIGHTS}: tensor {unknown[0]} adapts no layer of this "
                              f"{spec.model_type} model; the adapter belongs to another model")
    targets = tuple(t for t in modules if any(where[k][0] == t for k in tensors))
    if not targets:
        raise ScratchLLMError(f"{folder / ADAPTER_WEIGHTS} holds no LoRA tensors")
    missing = [k for k, (t, _, _) in where.items() if t in targets and k not in tensors]
    if missing:
        raise ScratchLLMError(f"{folder / ADAPTER_WEIGHTS} lacks {missing[0]}; an adapter of only some layers is not supported")
    lora = LoRAConfig(r=cfg["r"], alpha=float(cfg["lora_alpha"]), dropout=float(cfg.get("lora_dropout") or 0.0), targets=targets)
    spec.add_lora(model, lora)
    named = dict(model.named_modules())
    with torch.no_grad():
        for key, t in tensors.items():
            target, i, part = where[key]
            update = named[spec.lora_targets(model.config)[target][0].format(i=i)].lora[target]
            param = getattr(update, part)
            if t.dim() != 2 or t.t().shape != param.shape or not t.is_floating_point():
                raise ScratchLLMError(f"{folder / ADAPTER_WEIGHTS}: {key} has shape {tuple(t.shape)}, this model needs "
                                      f"{tuple(param.t().shape)}")
            param.copy_(t.t())
    return lora

