"""Checkpoints, for training and inference alike: a folder with config.json, model.safetensors,
the tokenizer and (for `latest/`) the trainer's state.

    runs/NAME/latest/   config.json  model.safetensors  tokenizer files  trainer_state.{json,safetensors}
    runs/NAME/best/     the same, without the trainer state

Folders are written whole under a temporary name and swapped in (fileio.write_folder_atomically),
so a crash never leaves half a checkpoint where a good one was. No pickle anywhere: tensors go to
safetensors, everything else to JSON, and every file is checked before it is trusted.

`load_pretrained` is the one entry point for inference: a checkpoint or run folder, a Hugging Face
folder, a GGUF file, or the name of a pretrained model.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from scratchllm.config import from_dict
from scratchllm.device import inference_dtype, resolve_device
from scratchllm.errors import ScratchLLMError
from scratchllm.fileio import JSON_ERRORS, write_folder_atomically
from scratchllm.models import ModelSpec, get_spec, spec_of
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
        save_file(_unshared(weights), str(tmp / WEIGHTS))
        tokenizer.save(tmp)
        if trainer_state is not None:
            (tmp / STATE_JSON).write_text(json.dumps(trainer_state, indent=2) + "\n")
            save_file({k: v.detach().cpu().contiguous() for k, v in (state_tensors or {}).items()}, str(tmp / STATE_TENSORS))

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
    if version < FORMAT_VERSION and meta["model_type"] != "bigram":  # a bigram has no Linear
        raise ScratchLLMError(f"{folder} was written by an older scratchllm that stored linear weights transposed; "
                              "train it again with this version (its weights would load wrongly)")
    if version > FORMAT_VERSION:
        raise ScratchLLMError(f"{folder} was written by a newer scratchllm (format {version}); upgrade scratchllm to read it")
    if not isinstance(meta.get("model"), dict):
        raise ScratchLLMError(f"{folder / CONFIG} has no model config; the checkpoint is corrupt")
    if not all(meta.get(k) is None or isinstance(meta[k], str) for k in ("data", "preset")):  # a corpus path, a name
        raise ScratchLLMError(f"{folder / CONFIG} has a data or preset entry that is not a string; the checkpoint is corrupt")
    return meta


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, on the CPU; a truncated or foreign file is a one-line error."""
    if not path.is_file():
        raise ScratchLLMError(f"{path} is missing; the checkpoint is incomplete")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError, OverflowError) as e:
        reason = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise ScratchLLMError(f"{path} is corrupt or truncated ({reason}); use another checkpoint, e.g. best/") from None


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32):
    """(model in eval mode, tokenizer, meta, spec) from a checkpoint or run folder."""
    folder = resolve_checkpoint(path)
    meta = read_meta(folder)
    spec = get_spec(meta["model_type"])
    config = from_dict(spec.config_class, meta["model"], where=f"{folder / CONFIG} model")
    tokenizer = load_tokenizer(folder)
    model = spec.from_weights(config, read_safetensors(folder / WEIGHTS), str(folder / WEIGHTS))
    check_vocabularies(model, spec, tokenizer, str(folder))
    return model.to(device=device, dtype=dtype), tokenizer, meta, spec


def check_vocabularies(model: nn.Module, spec: ModelSpec, tokenizer, where: str) -> None:
    """A checkpoint trained here has exactly its tokenizer's vocabulary (and image token); anything
    else means the tokenizer files were swapped or edited."""
    if spec.finish_config(model.config, tokenizer) != model.config:
        raise ScratchLLMError(f"{where}: the tokenizer ({tokenizer.vocab_size} ids) does not match the model's "
                              "vocabulary; the files do not belong together")


# -- trainer state ---------------------------------------------------------------------------------

def load_trainer_state(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
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
    for name in ("rng.torch", "rng.batches") if ok else ():
        try:
            torch.Generator().set_state(tensors[name])  # a random-number state of the right size and content
        except (RuntimeError, TypeError):
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


# -- inference -------------------------------------------------------------------------------------

@dataclass
class Pretrained:
    """A model ready for inference and what goes beside it: its tokenizer, its spec (what it can do),
    its chat template, the tokens that end a reply, and the special tokens a template may name."""

    model: nn.Module
    tokenizer: Any | None
    spec: ModelSpec
    source: str
    chat_template: str | None = None
    stop_tokens: tuple[int, ...] = ()
    template_tokens: dict[str, str] = field(default_factory=dict)  # {"bos_token": "<s>", "eos_token": ...}
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype


def load_pretrained(source: str | Path, device: str = "cpu", precision: str = "fp32") -> Pretrained:
    """A model for inference from any source this project reads:

      - a scratchllm checkpoint or run folder;
      - a Hugging Face folder (GPT-2, Llama, Qwen3, Gemma, SigLIP, PaliGemma: config.json + safetensors,
        its tokenizer and chat template when the folder has them);
      - a GGUF file (llama.cpp's format; Llama architecture);
      - the name of a pretrained model (`scratchllm.pretrained.PRETRAINED`, fetched once with pip).

    device: auto | cpu | cuda; precision: auto | fp32 | bf16 (the dtype weights and the KV cache are held in).
    `pretrained.model(idx)` with idx (batch, time) returns logits (batch, time, vocab)."""
    from scratchllm.interop.hf import is_hf_folder, load_hf_folder, read_chat_settings
    from scratchllm.pretrained import PRETRAINED, pretrained_path

    dev = resolve_device(device)
    dtype = inference_dtype(precision, dev)
    path = pretrained_path(str(source)) if str(source) in PRETRAINED else Path(source)
    if path.suffix == ".gguf" and not path.is_dir():
        from scratchllm.interop.gguf import load_gguf

        model, tokenizer, g = load_gguf(path)
        names = {f"{k}_token": tokenizer.decode([i]) for k, i in (("bos", g.bos_id), ("eos", g.eos_id))
                 if i is not None and tokenizer is not None}
        return Pretrained(model.to(device=dev, dtype=dtype), tokenizer, spec_of(model), str(source), g.chat_template,
                          tuple(g.stop_ids), names)
    if is_hf_folder(path):
        model, tokenizer = load_hf_folder(path)
        template, stops, names = read_chat_settings(path, tokenizer)
        return Pretrained(model.to(device=dev, dtype=dtype), tokenizer, spec_of(model), str(source), template, stops, names)
    model, tokenizer, meta, spec = load_checkpoint(path, dev, dtype)
    stops = tuple(tokenizer.special_tokens[s] for s in ("<|endoftext|>", "<eos>") if s in tokenizer.special_tokens)
    return Pretrained(model, tokenizer, spec, str(source), stop_tokens=stops, meta=meta)
