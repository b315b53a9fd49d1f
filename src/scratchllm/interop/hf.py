"""Hugging Face folders <-> scratchllm models, through each model type's spec.

A folder is `config.json` + `model.safetensors` (or shards listed in `model.safetensors.index.json`),
with `tokenizer.json` or a tiktoken `tokenizer.model` beside it when present. Which model type reads
a folder, how its config translates and where each tensor goes are the spec's (`spec.hf`: its
`model_types`, `config_from_hf` / `config_to_hf` and the weight-map table read both ways); this
module only reads and writes the files.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from scratchllm.config import from_dict, to_dict
from scratchllm.errors import ScratchLLMError
from scratchllm.fileio import JSON_ERRORS, save_safetensors, write_output_folder
from scratchllm.models import ModelSpec, spec_for_hf, spec_of
from scratchllm.models.spec import export_weights, import_weights


def is_hf_folder(path: Path) -> bool:
    if not (Path(path) / "config.json").is_file():  # (a FIFO there would block the read for ever)
        return False
    try:
        cfg = json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))
    except JSON_ERRORS:
        return False
    return isinstance(cfg, dict) and "model_type" in cfg and cfg.get("format") != "scratchllm"


def _weight_files(folder: Path) -> list[Path]:
    """model.safetensors, or the shards its index names, each confined to the folder."""
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if not index.is_file():
        raise ScratchLLMError(f"{folder} has no model.safetensors or model.safetensors.index.json "
                              "(PyTorch .bin files are not read: no pickle)")
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        names = sorted(set(weight_map.values()))
    except (*JSON_ERRORS, KeyError, TypeError, AttributeError):
        raise ScratchLLMError(f"{index} is corrupt; it should map tensor names to shard files") from None
    root = folder.resolve()
    shards = []
    for name in names:
        try:
            shard = (folder / str(name)).resolve()
            inside = shard.parent == root and shard.name.endswith(".safetensors")  # no ../, no absolute paths, no other files
            present = inside and shard.is_file()
        except (OSError, ValueError):  # a name too long for the filesystem, a NUL byte in it
            inside = present = False
        if not inside:
            raise ScratchLLMError(f"{index} names the shard {str(name)[:80]!r}, which is not a .safetensors file inside {folder}")
        if not present:
            raise ScratchLLMError(f"{index} names the shard {name}, which is missing")
        shards.append(shard)
    return shards


def read_weights(folder: Path, meta_only: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor of a folder's safetensors files, on the CPU (or, with meta_only, on the meta
    device: the shapes and dtypes from the headers, nothing read)."""
    out: dict[str, torch.Tensor] = {}
    for path in _weight_files(folder):
        try:
            if meta_only:
                with safe_open(str(path), "pt") as f:
                    for k in f.keys():
                        s = f.get_slice(k)
                        out[k] = torch.empty(s.get_shape(), dtype=_DTYPES.get(s.get_dtype(), torch.uint8), device="meta")
            else:
                out.update(load_file(str(path)))
        except (SafetensorError, OSError, ValueError, RuntimeError, TypeError, OverflowError) as e:
            reason = (str(e).splitlines() or [type(e).__name__])[0][:100]
            raise ScratchLLMError(f"{path} is corrupt or truncated ({reason}); re-download or re-export it") from None
    return out


_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def read_config(folder: Path) -> dict[str, Any]:
    if not (folder / "config.json").is_file():
        raise ScratchLLMError(f"{folder / 'config.json'} is missing or not a regular file")
    try:
        hf = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except JSON_ERRORS:
        raise ScratchLLMError(f"{folder / 'config.json'} is missing or not JSON") from None
    if not isinstance(hf, dict):
        raise ScratchLLMError(f"{folder / 'config.json'} is not a JSON object")
    return hf


def config_from_hf(hf: dict[str, Any], where: str = "config.json") -> tuple[ModelSpec, Any]:
    """(spec, our config) from a Hugging Face config dict; a missing or mistyped field is one line."""
    spec = spec_for_hf(hf.get("model_type"))
    try:
        config = spec.hf.config_from_hf(hf)
    except KeyError as e:
        raise ScratchLLMError(f"{where} lacks the field {e.args[0]!r} that a {hf.get('model_type')} config needs") from None
    except (TypeError, ValueError, AttributeError) as e:
        raise ScratchLLMError(f"{where} has a field of the wrong type or value ({e})") from None
    # the translated values checked by type, as a checkpoint's are (a null or a 2.5 would otherwise reach the build)
    return spec, from_dict(type(config), to_dict(config), where=f"{where} (as {type(config).__name__})")


def from_hf(hf_config: dict[str, Any], tensors: dict[str, torch.Tensor], where: str) -> nn.Module:
    """A model in eval mode from a Hugging Face config dict and state dict (names and layouts as
    transformers saves them; tensors on the meta device give a check of names and shapes only)."""
    spec, config = config_from_hf(hf_config, where)
    return _build(spec, config, tensors, where)


def _build(spec: ModelSpec, config, tensors: dict[str, torch.Tensor], where: str) -> nn.Module:
    return spec.from_weights(config, import_weights(spec.hf.weights, tensors, config, where), where)


def to_hf(model: nn.Module) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(Hugging Face config dict, state dict) of a model whose spec can export."""
    spec = spec_of(model)
    if spec.hf is None or spec.hf.config_to_hf is None:
        raise ScratchLLMError(f"a {spec.model_type} model has no Hugging Face export")
    hf_config = spec.hf.config_to_hf(model.config)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return hf_config, export_weights(spec.hf.weights, sd, model.config)


def load_hf_folder(folder: str | Path):
    """(model in eval mode, tokenizer or None) from a Hugging Face folder."""
    from scratchllm.tokenizers import load_tokenizer_path

    folder = Path(folder)
    spec, config = config_from_hf(read_config(folder), str(folder / "config.json"))
    _build(spec, config, read_weights(folder, meta_only=True), str(folder))  # names, shapes and size from the headers first
    model = _build(spec, config, read_weights(folder), str(folder))
    tokenizer = None
    for name in ("tokenizer.json", "tokenizer.model"):
        if (folder / name).is_file():
            tokenizer = load_tokenizer_path(folder / name)
            break
    return model, tokenizer


def read_chat_settings(folder: Path, tokenizer) -> tuple[str | None, tuple[int, ...], dict[str, str]]:
    """(chat template, ids that end a reply, {"bos_token": ..., "eos_token": ...}) from a folder's
    tokenizer_config.json (and generation_config.json), where it has them."""
    def read(name: str) -> dict:
        if not (folder / name).is_file():
            return {}
        try:
            data = json.loads((folder / name).read_text(encoding="utf-8"))
        except JSON_ERRORS:
            return {}
        return data if isinstance(data, dict) else {}

    cfg, gen = read("tokenizer_config.json"), read("generation_config.json")
    template = cfg.get("chat_template")
    if isinstance(template, list):  # several named templates: the default one
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"), None)
    names = {}
    for key in ("bos_token", "eos_token"):
        value = cfg.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            names[key] = value
    stops = []
    specials = tokenizer.special_tokens if tokenizer is not None else {}
    if names.get("eos_token") in specials:
        stops.append(specials[names["eos_token"]])
    eos = gen.get("eos_token_id")
    for i in eos if isinstance(eos, list) else [eos]:
        if type(i) is int and i not in stops:
            stops.append(i)
    return (template if isinstance(template, str) else None), tuple(stops), names


def save_hf(model: nn.Module, folder: str | Path, tokenizer=None) -> Path:
    """Write a folder that `transformers`' `from_pretrained` loads (and `load_hf_folder` reads back)."""
    from scratchllm.tokenizers.formats import save_hf as save_hf_tokenizer

    hf_config, tensors = to_hf(model)

    def write(tmp: Path) -> None:
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        save_safetensors(save_file, tensors, tmp / "model.safetensors", metadata={"format": "pt"})
        if tokenizer is not None and tokenizer.byte_level:  # a character vocabulary has no tokenizer.json form
            save_hf_tokenizer(tokenizer, tmp / "tokenizer.json")

    return write_output_folder(folder, write)  # only its own files: `convert` checked the folder first
