"""From a preset name (or a checkpoint to resume) to a finished run: the library call behind `scratchllm train`."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from scratchllm.config import apply_overrides, from_dict, to_dict
from scratchllm.data.batches import TokenBatches
from scratchllm.data.tokens import TokenizerConfig, corpus_tokens
from scratchllm.errors import ScratchLLMError
from scratchllm.models import VISION_LANGUAGE, build_model, config_class
from scratchllm.models.presets import DEFAULT_PRESET, get_preset
from scratchllm.tokenizers import load_tokenizer
from scratchllm.tokenizers.io import load_tokenizer_path
from scratchllm.train import checkpoint as ckpt
from scratchllm.train.config import TrainConfig
from scratchllm.train.distributed import init_distributed, shutdown
from scratchllm.train.trainer import Trainer, replace_train


def train(preset: str = DEFAULT_PRESET, data: str | None = None, out: str | Path | None = None,
          overrides: list[str] | None = None, max_steps: int | None = None, max_time: float | None = None,
          precision: str | None = None, compile: bool | None = None, resume: str | Path | None = None,
          tokenizer_path: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Train a preset on a corpus (default: the complete works of Shakespeare), or resume a run.

    `data` is a corpus name, a text file or folder, or a folder made by `scratchllm prepare`;
    `tokenizer_path` replaces the preset's tokenizer with a saved one. Returns a summary: final step,
    train/val loss, best val loss, seconds, precision and the run folder.
    """
    overrides = list(overrides or [])
    if resume is not None:
        folder = ckpt.resolve_checkpoint(resume)
        meta = ckpt.read_meta(folder)
        model_type, preset_name = meta["model_type"], meta.get("preset", "?")
        configs = {"model": from_dict(config_class(model_type), meta["model"]), "train": from_dict(TrainConfig, meta["train"]),
                   "tokenizer": TokenizerConfig()}
        data = data or meta["data"]
        tokenizer = load_tokenizer(folder)
        out_dir = Path(out) if out else folder.parent
    else:
        p = get_preset(preset)
        model_type, preset_name = p.model_type, p.name
        configs = {"model": p.model, "train": p.train, "tokenizer": p.tokenizer}
        data = data or "shakespeare"
        tokenizer = load_tokenizer_path(tokenizer_path) if tokenizer_path else None
        out_dir = Path(out) if out else Path("runs") / f"{p.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        if (out_dir / "latest").exists() or (out_dir / "best").exists():
            raise ScratchLLMError(f"{out_dir} already holds a run; continue it with --resume {out_dir} or choose another --out")
    configs = apply_overrides(configs, overrides)
    configs["train"] = replace_train(configs["train"], max_steps=max_steps, max_time=max_time,
                                     precision=precision, compile=compile)
    model_cfg, train_cfg = configs["model"], configs["train"]

    extra_eval = None
    if model_type in VISION_LANGUAGE:
        data = "shapes"
        model_cfg, tokenizer, batches, extra_eval = _shapes_setup(model_type, model_cfg, train_cfg, tokenizer,
                                                                  configs["tokenizer"])
    else:
        tokenizer, train_tokens, val_tokens = corpus_tokens(data, tokenizer, configs["tokenizer"], progress=progress)
        model_cfg = dataclasses.replace(model_cfg, vocab_size=tokenizer.vocab_size)
        batches = TokenBatches(train_tokens, val_tokens, model_cfg.block_size, seed=train_cfg.seed)

    dist_info = init_distributed(train_cfg.device)
    try:
        torch.manual_seed(train_cfg.seed)  # the same initial weights on every rank and in every run
        model = build_model(model_type, model_cfg)
        meta = {"model_type": model_type, "model": to_dict(model_cfg), "preset": preset_name, "data": data,
                "tokenizer": tokenizer.kind}
        trainer = Trainer(model, train_cfg, tokenizer, batches, out_dir, meta=meta,
                          dist_info=dist_info, resume_from=folder if resume is not None else None, progress=progress,
                          extra_eval=extra_eval)
        summary = trainer.fit()
    finally:
        shutdown(dist_info)
    summary["is_main"] = dist_info.is_main
    summary["n_params"] = sum(p.numel() for p in trainer.model.parameters())
    return summary


def _shapes_setup(model_type: str, model_cfg, train_cfg: TrainConfig, tokenizer, tokenizer_cfg: TokenizerConfig):
    """The shapes world for siglip / paligemma: its tokenizer, vocabulary sizes, batches and task metric."""
    from scratchllm.data.vision_language import ShapesBatches, exact_match, retrieval_at_1, shapes_tokenizer

    tokenizer = tokenizer or shapes_tokenizer(tokenizer_cfg)  # a resumed run brings its own
    if model_type == "siglip":
        model_cfg = dataclasses.replace(model_cfg, text=dataclasses.replace(model_cfg.text, vocab_size=tokenizer.vocab_size))
        batches = ShapesBatches(tokenizer, model_cfg.vision.image_size, model_cfg.vision.num_patches,
                                model_cfg.text.block_size, train_cfg.seed, task="caption", kind="siglip")
        return model_cfg, tokenizer, batches, lambda model: {"r@1": retrieval_at_1(model, batches)}
    text = dataclasses.replace(model_cfg.text, vocab_size=tokenizer.vocab_size)
    model_cfg = dataclasses.replace(model_cfg, text=text, image_token_id=tokenizer.special_tokens["<image>"])
    batches = ShapesBatches(tokenizer, model_cfg.vision.image_size, model_cfg.vision.num_patches,
                            model_cfg.vision.num_patches + 16, train_cfg.seed, task="vqa")
    return model_cfg, tokenizer, batches, lambda model: {"exact_match": exact_match(model, batches)}
