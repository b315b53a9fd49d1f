"""Checkpoints: a folder with config.json, model.safetensors, the tokenizer and (optionally) trainer state.

Folders are written under a temporary name and renamed into place, so a crash mid-write never
leaves a half checkpoint where a good one was. No pickle anywhere: tensors go to safetensors,
everything else to JSON.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from scratchllm.errors import ScratchLLMError
from scratchllm.models import build_model
from scratchllm.tokenizers import load_tokenizer

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
STATE_JSON = "trainer_state.json"
STATE_TENSORS = "trainer_state.safetensors"
FORMAT = "scratchllm"
# 2: Linear weights stored (in, out) (layers/linear.py); version 1 (no field) stored nn.Linear's (out, in)
FORMAT_VERSION = 2


def _fsync_tree(folder: Path) -> None:
    for f in folder.iterdir():
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())


def write_folder_atomically(final: Path, write: Callable[[Path], None]) -> None:
    """Run `write(tmp)` into a fresh temporary folder, then swap it in for `final`.

    The swap is two renames (final -> .old, tmp -> final); `resolve_checkpoint` falls back to
    `.old` if a crash lands between them, so some complete checkpoint always exists.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    write(tmp)
    _fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def save_checkpoint(folder: Path, model: nn.Module, meta: dict[str, Any], tokenizer,
                    trainer_state: dict[str, Any] | None = None,
                    state_tensors: dict[str, torch.Tensor] | None = None) -> None:
    def write(tmp: Path) -> None:
        (tmp / CONFIG).write_text(json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **meta}, indent=2) + "\n")
        save_model(model, str(tmp / WEIGHTS))
        tokenizer.save(tmp)
        if trainer_state is not None:
            (tmp / STATE_JSON).write_text(json.dumps(trainer_state, indent=2) + "\n")
            save_file({k: v.detach().cpu().contiguous() for k, v in (state_tensors or {}).items()}, str(tmp / STATE_TENSORS))

    write_folder_atomically(Path(folder), write)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder itself, or a run folder's `latest/` (or its `.latest.old` after a crash mid-swap)."""
    path = Path(path)
    if not path.exists():
        raise ScratchLLMError(f"checkpoint {path} does not exist; pass a run folder or its latest/ or best/ folder")
    for candidate in (path, path / "latest", path / ".latest.old"):
        if (candidate / CONFIG).is_file():
            return candidate
    raise ScratchLLMError(f"{path} is not a checkpoint (no {CONFIG}); pass a run folder or its latest/ or best/ folder")


def read_meta(folder: Path) -> dict[str, Any]:
    try:
        meta = json.loads((folder / CONFIG).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ScratchLLMError(f"{folder / CONFIG} is unreadable or not JSON ({e.__class__.__name__}); the checkpoint is corrupt") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or "model_type" not in meta:
        raise ScratchLLMError(f"{folder / CONFIG} is not a scratchllm checkpoint config")
    if meta.get("format_version", 1) < FORMAT_VERSION and meta["model_type"] != "bigram":  # a bigram has no Linear
        raise ScratchLLMError(f"{folder} was written by an older scratchllm that stored linear weights transposed; "
                              "train it again with this version (its weights would load wrongly)")
    if meta.get("format_version", 1) > FORMAT_VERSION:
        raise ScratchLLMError(f"{folder} was written by a newer scratchllm (format {meta['format_version']}); upgrade scratchllm to read it")
    return meta


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode, tokenizer, meta) from a checkpoint or run folder."""
    folder = resolve_checkpoint(path)
    meta = read_meta(folder)
    model = build_model(meta["model_type"], meta["model"])
    weights = folder / WEIGHTS
    if not weights.is_file():
        raise ScratchLLMError(f"{weights} is missing; the checkpoint is incomplete")
    try:
        missing, unexpected = load_model(model, str(weights), strict=False)
    except Exception as e:  # safetensors raises its own error types for truncated or corrupt files
        raise ScratchLLMError(f"{weights} is corrupt or truncated ({str(e).splitlines()[0][:120]}); use another checkpoint, e.g. best/") from None
    if missing or unexpected:
        raise ScratchLLMError(f"{weights} does not match its config (missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    tokenizer = load_tokenizer(folder)
    return model.to(device).eval(), tokenizer, meta


def load_trainer_state(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    json_path, tensor_path = folder / STATE_JSON, folder / STATE_TENSORS
    if not json_path.is_file() or not tensor_path.is_file():
        raise ScratchLLMError(f"{folder} has no trainer state to resume from; it holds weights only (use it with sample or eval)")
    try:
        return json.loads(json_path.read_text()), load_file(str(tensor_path))
    except Exception as e:
        raise ScratchLLMError(f"trainer state in {folder} is corrupt ({e.__class__.__name__}); resume from best/ or start again") from None


def optimizer_state_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Split an optimizer state dict into JSON-able values and named tensors (safetensors cannot nest)."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{idx}.{k}"] = v
            else:
                scalars[f"{idx}.{k}"] = v
    return {"param_groups": sd["param_groups"], "scalars": scalars}, tensors


def optimizer_state_from_flat(info: dict[str, Any], tensors: dict[str, torch.Tensor]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = v
    for key, v in info["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    return {"state": state, "param_groups": info["param_groups"]}
