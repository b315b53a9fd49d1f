"""From a preset name (or a checkpoint to resume) to a finished run: the library call behind `scratchllm train`."""

from __future__ import annotations

import contextlib
import gc
import time
from pathlib import Path
from typing import Any

import torch

from scratchllm import checkpoint as ckpt
from scratchllm.config import apply_overrides, from_dict, to_dict
from scratchllm.errors import ScratchLLMError
from scratchllm.fileio import FolderLock, check_output
from scratchllm.models import get_spec
from scratchllm.train.presets import DEFAULT_PRESET, get_preset
from scratchllm.tokenizers import TokenizerConfig, load_tokenizer, load_tokenizer_path
from scratchllm.train.config import TrainConfig
from scratchllm.train.distributed import init_distributed, shutdown
from scratchllm.train.trainer import Trainer, replace_train


def train(preset: str = DEFAULT_PRESET, data: str | None = None, out: str | Path | None = None,
          overrides: list[str] | None = None, max_steps: int | None = None, max_time: float | None = None,
          precision: str | None = None, compile: bool | None = None, resume: str | Path | None = None,
          tokenizer_path: str | Path | None = None, progress: bool = True, fsdp: bool | None = None) -> dict[str, Any]:
    """Train a preset on a corpus (default: the complete works of Shakespeare), or resume a run.

    `data` is a corpus name, a text file or folder, or a folder made by `scratchllm prepare` (the
    vision-language presets make their own data and refuse it); `tokenizer_path` replaces the
    preset's tokenizer with a saved one. Returns a summary: final step, train/val loss, best val
    loss, task metrics, seconds, precision and the run folder.
    """
    overrides = list(overrides or [])
    folder = None
    if resume is not None:
        folder = ckpt.resolve_checkpoint(resume)
        meta = ckpt.read_meta(folder)
        if "finetune" in meta:
            raise ScratchLLMError(f"{resume} is a fine-tune; continue it with scratchllm finetune --resume {resume}")
        spec, preset_name = get_spec(meta["model_type"]), meta.get("preset", "?")
        configs = {"model": from_dict(spec.config_class, meta["model"], where="model"),
                   "train": from_dict(TrainConfig, meta.get("train"), where="train"), "tokenizer": TokenizerConfig()}
        data = data or meta.get("data")
        tokenizer = load_tokenizer(folder)
        out_dir = Path(out) if out else folder.parent
    else:
        p = get_preset(preset)
        spec, preset_name = get_spec(p.model_type), p.name
        configs = {"model": p.model, "train": p.train, "tokenizer": p.tokenizer}
        tokenizer = load_tokenizer_path(tokenizer_path) if tokenizer_path else None
        out_dir = Path(out) if out else Path("runs") / f"{p.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        if ckpt.is_run_folder(out_dir):
            raise ScratchLLMError(f"{out_dir} already holds a run; continue it with --resume {out_dir} or choose another --out")
        check_output(out_dir, force_flag=False)  # a new run starts in a new or empty folder: nothing of the user's is touched
    if spec.task is None:
        raise ScratchLLMError(f"a {spec.model_type} model is not trained by scratchllm")
    # the command's flags first, then --set: the finished config is checked once, whatever set what
    configs["train"] = replace_train(configs["train"], max_steps=max_steps, max_time=max_time,
                                     precision=precision, compile=compile, fsdp=fsdp)
    before = dict(configs)
    configs = apply_overrides(configs, overrides)
    if resume is not None and (configs["model"] != before["model"] or configs["tokenizer"] != before["tokenizer"]):
        raise ScratchLLMError("a resumed run keeps its model and tokenizer; --set may change only trainer fields "
                              "(lr, max_steps, ...) with --resume; start a new run to change the model")
    t0, t1 = before["tokenizer"], configs["tokenizer"]
    if (t0.vocab_size, t0.pattern, t0.special_tokens) != (t1.vocab_size, t1.pattern, t1.special_tokens) and \
            (tokenizer_path is not None or not t1.learned):  # the settings would be ignored: say so
        raise ScratchLLMError("--set tokenizer.vocab_size / pattern / special_tokens apply to a BPE tokenizer the run trains; "
                              + ("--tokenizer gives this run's" if tokenizer_path is not None else
                                 "this preset's is character-level (add --set tokenizer.kind=bpe to train one)"))
    train_cfg = configs["train"]
    model_cfg, tokenizer, batches, data = spec.task.prepare(spec, configs["model"], tokenizer, configs["tokenizer"], data,
                                                            train_cfg.seed, progress)
    spec.build_meta(model_cfg, str(folder / ckpt.CONFIG) if folder else "this model", copies=4)  # before allocating it

    dist_info = init_distributed(train_cfg.device)
    try:
        # one writer per run folder: rank 0 holds its lock, and first tidies what a crash left there
        with FolderLock(out_dir) if dist_info.is_main else contextlib.nullcontext():
            if dist_info.is_main:
                ckpt.recover_run_folder(out_dir)
            torch.manual_seed(train_cfg.seed)  # the same initial weights on every rank and in every run
            model = spec.build(model_cfg)
            meta = {"model_type": spec.model_type, "model": to_dict(model_cfg), "preset": preset_name, "data": data,
                    "tokenizer": tokenizer.kind}
            trainer = Trainer(model, train_cfg, tokenizer, batches, out_dir, meta=meta, dist_info=dist_info,
                              resume_from=folder, progress=progress,
                              task_metrics=lambda m: spec.task.metrics(m, batches), shard_units=spec.shard_units)
            summary = trainer.fit()
            summary["n_params"] = sum(p.numel() for p in model.parameters())
            del trainer, model  # DDP and FSDP state goes before the process group it talks through
            gc.collect()  # FSDP's hooks keep the model in reference cycles: free it now, not at exit
        shutdown(dist_info, wait_for_all=True)
    finally:
        shutdown(dist_info)  # after an error: no barrier (another rank may be gone)
    summary["is_main"] = dist_info.is_main
    return summary
