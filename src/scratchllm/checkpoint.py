"""Checkpoints, for training and inference alike: a folder with config.json, model.safetensors,
the tokenizer and (for `latest/`) the trainer's state.

    runs/NAME/latest/   config.json  model.safetensors  tokenizer files  trainer_state.{json,safetensors}
    runs/NAME/best/     the same, without the trainer state

Folders are written whole under a temporary name and swapped in (fileio.write_folder_atomically),
so a crash never leaves half a checkpoint where a good one was. No pickle anywhere: tensors go to
safetensors, everything else to JSON, and every file is checked before it is trusted.

For inference from any source (this folder, a Hugging Face folder, a GGUF file, a name), see
`pretrained.load_pretrained`.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from scratchllm.config import from_dict
from scratchllm.errors import ScratchLLMError
from scratchllm.fileio import JSON_ERRORS, save_safetensors, write_folder_atomically
from scratchllm.models import ModelSpec, get_spec
from scratchllm.tokenizers import load_tokenizer

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
STATE_JSON = "trainer_state.json"
STATE_TENSORS = "trainer_state.safetensors"
FORMAT = "scratchllm"
# 2: Linear weights stored (in, out) (layers/linear.py); version 1 (no field) stored nn.Linear's (out, in)
FORMAT_VERSION = 2


def save_checkpoint(folder: Path, weights: dict[str, torch.Tensor], meta: dict[str, Any], tokenizer,
                    trainer_state: dict[str, Any] | None = None,
                    state_tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Write a checkpoint folder: `weights` is the model's state dict (whole, as one process holds it)."""
    def write(tmp: Path) -> None:
        (tmp / CONFIG).write_text(json.dumps({"format": FORMAT, "format_version": FORMAT_VERSION, **meta}, indent=2) + "\n")
        save_safetensors(save_file, _unshared(weights), tmp / WEIGHTS)  # a full disk: OSError, not safetensors' own error
        tokenizer.save(tmp)
        if trainer_state is not None:
            (tmp / STATE_JSON).write_text(json.dumps(trainer_state, indent=2) + "\n")
            save_safetensors(save_file, {k: v.detach().cpu().contiguous() for k, v in (state_tensors or {}).items()},
                             tmp / STATE_TENSORS)

    write_folder_atomically(Path(folder), write)


def recover_run_folder(out: Path) -> None:
    """Before a run writes to `out`, tidy what a crash left: a `.latest.old` / `.best.old` beside a
    complete `latest/` / `best/` is dropped (one without it stays: it is the checkpoint, and readers
    take it), and temporary files and folders of writers that died are removed."""
    from scratchllm.fileio import remove_stale_temporaries

    for name in ("latest", "best"):
        if (out / name / CONFIG).is_file() and (out / f".{name}.old").is_dir():
            shutil.rmtree(out / f".{name}.old")
    remove_stale_temporaries(out)


def is_run_folder(out: Path) -> bool:
    return any((out / name / CONFIG).is_file() for name in ("latest", "best", ".latest.old", ".best.old"))


def _unshared(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU tensors safetensors can write: ours share no memory, but a model from elsewhere may tie two
    names to one tensor (GPT-2's lm_head and wte), which safetensors refuses; such a twin is copied."""
    out, seen = {}, set()
    for k, v in weights.items():
        v = v.detach().cpu().contiguous()
        out[k] = v.clone() if v.data_ptr() in seen else v
        seen.add(v.data_ptr())
    return out


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder itself, or a run folder's `latest/`; after a crash between the two renames
    of a swap, the `.latest.old` / `.best.old` that the swap kept."""
    path = Path(path)
    for candidate in (path, path / "latest", path / ".latest.old", path.with_name(f".{path.name}.old")):
        if (candidate / CONFIG).is_file():
            return candidate
    if not path.exists():
        raise ScratchLLMError(f"checkpoint {path} does not exist; pass a run folder or its latest/ or best/ folder")
    raise ScratchLLMError(f"{path} is not a checkpoint (no {CONFIG}); pass a run folder or its latest/ or best/ folder")


def read_meta(folder: Path) -> dict[str, Any]:
    try:
        meta = json.loads((folder / CONFIG).read_text(encoding="utf-8"))
    except JSON_ERRORS as e:
        raise ScratchLLMError(f"{folder / CONFIG} is unreadable or not JSON ({e.__class__.__name__}); the checkpoint is corrupt") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or not isinstance(meta.get("model_type"), str):
        raise ScratchLLMError(f"{folder / CONFIG} is not a scratchllm checkpoint config")
    version = meta.get("format_version", 1)
    if not isinstance(version, int):
        raise ScratchLLMError(f"{folder / CONFIG} has a format_version that is not an integer; the checkpoint is corrupt")
    if version < FORMAT_VERSION and get_spec(meta["model_type"]).linear_weights:  # (a model with no Linear reads alike)
        raise ScratchLLMError(f"{folder} was written by an older scratchllm that stored linear weights transposed; "
                              "train it again with this version (its weights would load wrongly)")
    if version > FORMAT_VERSION:
        raise ScratchLLMError(f"{folder} was written by a newer scratchllm (format {version}); upgrade scratchllm to read it")
    if not isinstance(meta.get("model"), dict):
        raise ScratchLLMError(f"{folder / CONFIG} has no model config; the checkpoint is corrupt")
    if not all(meta.get(k) is None or isinstance(meta[k], str) for k in ("data", "preset")):  # a corpus path, a name
        raise ScratchLLMError(f"{folder / CONFIG} has a data or preset entry that is not a string; the checkpoint is corrupt")
    return meta


def finetune_info(meta: dict[str, Any], folder: Path) -> dict[str, Any]:
    """A fine-tuned run's "finetune" entry (train/finetune.py), checked: its base (a name or a path), its
    LoRA settings (None: a full fine-tune, whose weights are all in the checkpoint) and data settings."""
    info = meta.get("finetune")
    if not (isinstance(info, dict) and isinstance(info.get("base"), str)
            and (info.get("lora") is None or isinstance(info["lora"], dict)) and isinstance(info.get("data"), dict)):
        raise ScratchLLMError(f"{folder / CONFIG} has no valid finetune entry; it is not a fine-tuned run, or it is corrupt")
    return info


def chat_settings(meta: dict[str, Any], folder: Path) -> tuple[str | None, tuple[int, ...], dict[str, str]] | None:
    """(chat template, end-of-reply ids, template token names) that a fine-tuned run keeps from its base,
    checked; None for a run that has none (trained here from scratch)."""
    chat = meta.get("chat")
    if chat is None:
        return None
    ok = (isinstance(chat, dict) and (chat.get("template") is None or isinstance(chat["template"], str))
          and isinstance(chat.get("stop_tokens"), list) and all(type(i) is int and i >= 0 for i in chat["stop_tokens"])
          and isinstance(chat.get("template_tokens"), dict)
          and all(isinstance(k, str) and isinstance(v, str) for k, v in chat["template_tokens"].items()))
    if not ok:
        raise ScratchLLMError(f"{folder / CONFIG}: its chat settings are corrupt")
    return chat["template"], tuple(chat["stop_tokens"]), dict(chat["template_tokens"])


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, on the CPU; a truncated or foreign file is a one-line error."""
    if not path.is_file():
        raise ScratchLLMError(f"{path} is missing; the checkpoint is incomplete")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError, OverflowError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise ScratchLLMError(f"{path} is corrupt or truncated ({reason}); use another checkpoint, e.g. best/") from None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    load_base: Callable[[str], nn.Module] | None = None):
    """(model in eval mode, tokenizer, meta, spec) from a checkpoint or run folder.

    A LoRA fine-tune's folder holds only its updates and its base's name: `load_base(name_or_path)` gives
    the base model (fp32, on the CPU; `pretrained.load_pretrained` passes one), the updates are merged in."""
    folder = resolve_checkpoint(path)
    meta = read_meta(folder)
    spec = get_spec(meta["model_type"])
    config = from_dict(spec.config_class, meta["model"], where=f"{folder / CONFIG} model")
    tokenizer = load_tokenizer(folder)
    if "finetune" in meta and finetune_info(meta, folder)["lora"] is not None:
        model = _with_lora_updates(folder, meta, spec, config, load_base)
    else:
        model = spec.from_weights(config, read_safetensors(folder / WEIGHTS), str(folder / WEIGHTS))
    check_vocabularies(model, spec, tokenizer, str(folder))
    return model.to(device=device, dtype=dtype), tokenizer, meta, spec


def _with_lora_updates(folder: Path, meta: dict[str, Any], spec: ModelSpec, config, load_base) -> nn.Module:
    """A LoRA run's base with its updates merged into the weights (and dropped: a plain model). The base
    must be the model the run was trained on: same config, and the updates' names and shapes checked."""
    from scratchllm.layers.linear import LoRAConfig, fold_lora

    info = finetune_info(meta, folder)
    if load_base is None:
        raise ScratchLLMError(f"{folder} holds LoRA updates over {info['base']}, not a whole model; load it with "
                              "scratchllm.load_pretrained")
    model = load_base(info["base"])
    if model.config != config:
        raise ScratchLLMError(f"{folder}: its base {info['base']} is not the model it was trained on (the configs differ)")
    spec.add_lora(model, from_dict(LoRAConfig, info["lora"], where=f"{folder / CONFIG} finetune.lora"))
    weights = read_safetensors(folder / WEIGHTS)
    expected = {n: p for n, p in model.named_parameters() if p.requires_grad}
    if set(weights) != set(expected) or any(weights[n].shape != p.shape or not weights[n].is_floating_point()
                                            for n, p in expected.items()):
        raise ScratchLLMError(f"{folder / WEIGHTS} does not hold this run's LoRA updates; the checkpoint is corrupt")
    with torch.no_grad():
        for n, p in expected.items():
            p.copy_(weights[n])
    fold_lora(model)  # inference at the base's speed, and a plain model to export
    return model.requires_grad_(True).eval()


def check_vocabularies(model: nn.Module, spec: ModelSpec, tokenizer, where: str) -> None:
    """A checkpoint trained here has exactly its tokenizer's vocabulary (and image token); anything
    else means the tokenizer files were swapped or edited."""
    if spec.finish_config(model.config, tokenizer) != model.config:
        raise ScratchLLMError(f"{where}: the tokenizer ({tokenizer.vocab_size} ids) does not match the model's "
                              "vocabulary; the files do not belong together")


# -- trainer state ---------------------------------------------------------------------------------

def load_trainer_state(folder: Path, device: torch.device = torch.device("cpu")) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(trainer_state.json, its tensors), checked; `device`: where the run resumes (a CUDA device's random state,
    when the run was saved from one, is checked there too; a run resumed on the CPU leaves CUDA untouched)."""
    json_path, tensor_path = folder / STATE_JSON, folder / STATE_TENSORS
    if not json_path.is_file() or not tensor_path.is_file():
        raise ScratchLLMError(f"{folder} has no trainer state to resume from; it holds weights only (use it with sample or eval)")
    try:
        state = json.loads(json_path.read_text(encoding="utf-8"))
    except JSON_ERRORS:
        raise ScratchLLMError(f"{json_path} is corrupt; resume from another run or start again") from None
    tensors = read_safetensors(tensor_path)
    ok = (isinstance(state, dict) and type(state.get("step")) is int and state["step"] >= 0
          and "best_val" in state and (state["best_val"] is None or (type(state["best_val"]) in (int, float)
                                                                     and math.isfinite(state["best_val"])))
          and isinstance(state.get("optimizer"), dict) and isinstance(state["optimizer"].get("param_groups"), list)
          and isinstance(state["optimizer"].get("scalars"), dict) and {"rng.torch", "rng.batches"} <= set(tensors))
    # each a random-number state of the right size and content
    generators = {"rng.torch": "cpu", "rng.batches": "cpu", "rng.cuda": device if device.type == "cuda" else None}
    for name, where in generators.items() if ok else ():
        if where is None or name not in tensors:
            continue
        try:
            torch.Generator(device=where).set_state(tensors[name])
        except (RuntimeError, TypeError, ValueError):
            ok = False
    if not ok:
        raise ScratchLLMError(f"trainer state in {folder} is incomplete or corrupt; resume from another run or start again")
    return state, tensors


def optimizer_state_to_flat(sd: dict[str, Any]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Split an optimizer state dict into JSON-able values and named tensors (safetensors cannot nest)."""
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{idx}.{k}"] = v
            else:
                scalars[f"{idx}.{k}"] = v
    return {"param_groups": sd["param_groups"], "scalars": scalars}, tensors


def optimizer_state_from_flat(info: dict[str, Any], tensors: dict[str, torch.Tensor],
                              like: torch.optim.Optimizer | None = None) -> dict[str, Any]:
    """The optimizer state dict back from its flat form. With `like` (the AdamW it is for) it is
    checked before it is loaded: the same groups over the same parameters, each setting of the same
    type, and for each parameter a step and moments of the parameter's shape. The state of another
    model, or an edited one, is a one-line error here instead of a crash at the first step."""
    state: dict[int, dict[str, Any]] = {}
    try:
        for key, v in tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = v
        for key, v in info["scalars"].items():
            idx, name = key.split(".", 1)
            state.setdefault(int(idx), {})[name] = v
    except ValueError:
        raise ScratchLLMError("the optimizer state in the trainer state is corrupt; resume from another run") from None
    if like is not None and not _fits(state, info["param_groups"], like):
        raise ScratchLLMError("the optimizer state in the trainer state does not fit this model and optimizer; "
                              "resume an unchanged run, or start a new one")
    return {"state": state, "param_groups": info["param_groups"]}


def _fits(state: dict[int, dict[str, Any]], groups: Any, like: torch.optim.Optimizer) -> bool:
    def same_kind(saved, current) -> bool:
        if isinstance(current, (list, tuple)):
            return isinstance(saved, list) and len(saved) == len(current) and all(map(same_kind, saved, current))
        if isinstance(current, (int, float)) and not isinstance(current, bool):
            return type(saved) in (int, float) and math.isfinite(saved)
        return type(saved) is type(current)  # bool, None, str

    current = like.state_dict()["param_groups"]
    if not isinstance(groups, list) or len(groups) != len(current):
        return False
    for saved, now in zip(groups, current):
        if not isinstance(saved, dict) or set(saved) != set(now) or saved["params"] != now["params"] or \
                any(type(i) is not int for i in saved["params"]) or \
                not all(same_kind(saved[k], v) for k, v in now.items() if k != "params"):
            return False
    params = [p for g in like.param_groups for p in g["params"]]
    moments = {"exp_avg", "exp_avg_sq"} | ({"max_exp_avg_sq"} if like.defaults.get("amsgrad") else set())
    for idx, st in state.items():
        if not 0 <= idx < len(params) or (st and set(st) != moments | {"step"}):
            return False
        for name, v in st.items():
            if not (torch.is_tensor(v) and v.is_floating_point()
                    and (v.shape == params[idx].shape if name != "step" else v.dim() == 0 and bool(v >= 0))):
                return False
    return True
