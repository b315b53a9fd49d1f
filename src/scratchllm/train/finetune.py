"""Supervised fine-tuning of a model we load, in full or with LoRA: the library call behind `scratchllm finetune`.

    base: a name, a GGUF file, a Hugging Face folder, a run ──load_pretrained──> model, tokenizer, chat template
    data: chat JSONL, Alpaca, identity ──data/chat_data.py──> conversations, the loss on the assistant's tokens
    full: every weight trains       LoRA: spec.add_lora freezes the base and adds A, B beside chosen projections
        ──the one Trainer (train/trainer.py): resume, atomic checkpoints, metrics, loss plot, --max-time──>
    OUT/latest, OUT/best   full: a whole checkpoint; LoRA: the updates and the base's name, never its weights
    OUT/peft               LoRA: the best updates in peft's format, where the model maps onto Hugging Face modules

A fine-tuned run loads with `scratchllm.load_pretrained(OUT)` (a LoRA run as its base with the updates merged
in), so `chat`, `sample`, `serve`, `eval` and `convert` take it like any run. It keeps the base's chat
template and end-of-reply tokens in its config.json.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

from scratchllm import checkpoint as ckpt
from scratchllm.config import apply_overrides, from_dict, to_dict
from scratchllm.data.chat_data import ChatBatches, DataConfig, data_sources, load_conversations, make_examples, split_examples
from scratchllm.errors import ScratchLLMError
from scratchllm.fileio import FolderLock, check_output
from scratchllm.layers.linear import LoRAConfig
from scratchllm.train.config import TrainConfig
from scratchllm.train.trainer import Trainer, replace_train

# A few epochs of small batches, evaluated about once an epoch (eval_interval is set from the data);
# LoRA's few parameters take a learning rate ten to a hundred times full fine-tuning's.
FINETUNE_TRAIN = TrainConfig(batch_size=8, max_steps=0, lr=1e-3, min_lr=1e-4, warmup_steps=5, weight_decay=0.0,
                             betas=(0.9, 0.999), grad_clip=1.0, eval_interval=1, eval_batches=4, log_interval=5)
FULL_LR = 5e-5
DEFAULT_EPOCHS = 3.0


def base_reference(source: str) -> str:
    """How a run names its base: a pretrained model's name as it is, a path made absolute."""
    from scratchllm.pretrained import PRETRAINED

    return source if source in PRETRAINED else str(Path(source).resolve())


def finetune(model: str | None = None, data: str | None = None, out: str | Path | None = None,
             lora: LoRAConfig | None = None, overrides: list[str] | None = None, epochs: float | None = None,
             lr: float | None = None, max_steps: int | None = None, max_time: float | None = None,
             precision: str | None = None, resume: str | Path | None = None, progress: bool = True) -> dict[str, Any]:
    """Fine-tune `model` (a pretrained name, a .gguf file, a Hugging Face folder or a run) on `data` (a chat
    JSONL or Alpaca JSON/JSONL file, or "identity" / "alpaca-demo"), in full or, with `lora`, with LoRA
    updates; or continue the run in `resume`. `overrides` are `key=value` strings for the trainer
    (TrainConfig: lr, batch_size, ...) and the data (DataConfig: name, author, max_len, val_fraction, system).
    Returns the trainer's summary with "peft" (the peft adapter folder, or None) and "n_trained"."""
    from scratchllm.pretrained import load_pretrained

    folder = None
    configs = {"train": FINETUNE_TRAIN, "data": DataConfig()}
    if resume is not None:
        folder = ckpt.resolve_checkpoint(resume)
        meta = ckpt.read_meta(folder)
        info = ckpt.finetune_info(meta, folder)
        model, data = info["base"], meta["data"]
        lora = from_dict(LoRAConfig, info["lora"], where="lora") if info["lora"] is not None else None
        configs = {"train": from_dict(TrainConfig, meta.get("train"), where="train"),
                   "data": from_dict(DataConfig, info["data"], where="data")}
        out_dir = Path(out) if out else folder.parent
    else:
        if model is None or data is None:
            raise ScratchLLMError("finetune needs --model (what to fine-tune) and --data (what on), or --resume RUN")
        out_dir = Path(out) if out else Path("runs") / f"finetune-{Path(str(model)).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
        if ckpt.is_run_folder(out_dir):
            raise ScratchLLMError(f"{out_dir} already holds a run; continue it with --resume {out_dir} or choose another --out")
        from scratchllm.pretrained import PRETRAINED, pretrained_path

        base_path = pretrained_path(model).parent if model in PRETRAINED else Path(model)  # a named model's cache folder
        inputs = tuple(p for p in (base_path, *(Path(d) for d, _ in data_sources(data))) if p.exists())
        check_output(out_dir, inputs=inputs, force_flag=False)  # never inside the base's folder or the data
        peak = lr if lr is not None else (FINETUNE_TRAIN.lr if lora else FULL_LR)
        configs["train"] = dataclasses.replace(configs["train"], lr=peak, min_lr=peak / 10)
    configs["train"] = replace_train(configs["train"], max_time=max_time, precision=precision)
    if resume is not None and lr is not None:
        configs["train"] = dataclasses.replace(configs["train"], lr=lr, min_lr=min(lr, configs["train"].min_lr))
    before = dict(configs)
    configs = apply_overrides(configs, list(overrides or []))
    if resume is not None and configs["data"] != before["data"]:
        raise ScratchLLMError("a resumed fine-tune keeps its data settings; --set may change only trainer fields with --resume")
    data_cfg = configs["data"]

    conversations = load_conversations(data, data_cfg)  # (bad data is found before the model is loaded)
    if any(source in ("alpaca-demo", "alpaca-demo-short") for source, _ in data_sources(data)):
        print("alpaca-demo: Stanford Alpaca's data, licensed CC BY-NC 4.0 (non-commercial use only)", file=sys.stderr)
    lm = load_pretrained(model, device="cpu", precision="fp32")
    lm.spec.require("finetune", str(model))
    if lm.tokenizer is None:
        raise ScratchLLMError(f"{model} has no tokenizer; fine-tuning renders text, so it needs one")
    max_len = min(data_cfg.max_len, lm.model.config.block_size)
    examples, dropped = make_examples(conversations, lm.tokenizer, lm.chat_template, lm.template_tokens, max_len)
    train_cfg = configs["train"]
    train_set, val_set = split_examples(examples, data_cfg.val_fraction, train_cfg.seed)
    pad = lm.stop_tokens[0] if lm.stop_tokens else 0  # any id: padding is never attended to nor scored
    batches = ChatBatches(train_set, val_set, train_cfg.seed, pad_id=pad)

    rows = train_cfg.batch_size * train_cfg.grad_accum
    per_epoch = max(1, math.ceil(len(train_set) / rows))
    steps = max_steps if max_steps is not None else (
        train_cfg.max_steps if resume is not None or train_cfg.max_steps else math.ceil((epochs or DEFAULT_EPOCHS) * per_epoch))
    n_eval = max(1, math.ceil(len(val_set) / train_cfg.batch_size))
    changes = {"max_steps": steps}
    if resume is None:  # evaluated (and checkpointed) about once an epoch, on the whole held-out split
        changes.update(eval_interval=train_cfg.eval_interval if "eval_interval" in _keys(overrides) else per_epoch,
                       eval_batches=train_cfg.eval_batches if "eval_batches" in _keys(overrides) else n_eval,
                       warmup_steps=min(train_cfg.warmup_steps, max(0, steps - 1)))
    train_cfg = dataclasses.replace(train_cfg, **changes)

    net = lm.model
    torch.manual_seed(train_cfg.seed)  # the same A matrices in every run with this seed
    if lora is not None:
        lm.spec.add_lora(net, lora)
    source = base_reference(model) if resume is None else model
    meta = {"model_type": lm.spec.model_type, "model": to_dict(net.config), "preset": None, "data": data,
            "tokenizer": lm.tokenizer.kind,
            "finetune": {"base": source, "lora": dataclasses.asdict(lora) if lora is not None else None,
                         "data": to_dict(data_cfg), "dropped": dropped, "train_records": len(train_set),
                         "val_records": len(val_set)},
            "chat": {"template": lm.chat_template, "stop_tokens": list(lm.stop_tokens), "template_tokens": lm.template_tokens}}
    with FolderLock(out_dir):
        ckpt.recover_run_folder(out_dir)
        trainer = Trainer(net, train_cfg, lm.tokenizer, batches, out_dir, meta=meta, resume_from=folder, progress=progress)
        summary = trainer.fit()
        summary["peft"] = _write_peft(net, out_dir, source) if lora is not None else None
    summary.update(n_trained=sum(p.numel() for p in net.parameters() if p.requires_grad),
                   n_params=sum(p.numel() for p in net.parameters()),
                   train_records=len(train_set), val_records=len(val_set), dropped=dropped)
    return summary


def _keys(overrides) -> set[str]:
    return {o.split("=", 1)[0].strip().rsplit(".", 1)[-1] for o in overrides or [] if "=" in o}


def _write_peft(model, out_dir: Path, base: str) -> str | None:
    """OUT/peft: the best checkpoint's LoRA updates in peft's format; None where the model has no peft form."""
    from scratchllm.interop.peft import save_peft_adapter

    best = ckpt.read_safetensors(out_dir / "best" / ckpt.WEIGHTS)
    model.load_state_dict(best, strict=False)
    try:
        return str(save_peft_adapter(model, out_dir / "peft", base))
    except ScratchLLMError:
        return None  # (a GPT's q and v are parts of one c_attn, which peft adapts whole)


def evaluate_finetune(checkpoint: str | Path, data: str | None = None, batch_size: int = 32, max_batches: int | None = None,
                      device: str = "auto", precision: str = "fp32") -> dict[str, Any]:
    """`scratchllm eval` of a fine-tuned run: the loss on the assistant's tokens of its held-out records
    (the same split as in training), or of every record of `data` when given."""
    from scratchllm.models.tasks import bytes_per_token, mean_loss
    from scratchllm.pretrained import load_pretrained

    lm = load_pretrained(checkpoint, device=device, precision=precision)
    meta = lm.meta
    info = ckpt.finetune_info(meta, ckpt.resolve_checkpoint(checkpoint))
    data_cfg = from_dict(DataConfig, info["data"], where="data")
    conversations = load_conversations(data or meta["data"], data_cfg)
    max_len = min(data_cfg.max_len, lm.model.config.block_size)
    examples, _ = make_examples(conversations, lm.tokenizer, lm.chat_template, lm.template_tokens, max_len)
    if data is None:
        seed = from_dict(TrainConfig, meta.get("train"), where="train").seed
        _, examples = split_examples(examples, data_cfg.val_fraction, seed)
    if not examples:
        raise ScratchLLMError(f"{data}: no conversation has an assistant token within max_len; nothing to evaluate")
    batches = ChatBatches(examples, examples, seed=0)
    n = math.ceil(len(examples) / batch_size)
    loss, bpb = mean_loss(lm.model, batches, batches.eval_batches("val", batch_size, min(n, max_batches or n)), lm.device,
                          bytes_per_token(lm.tokenizer))
    return {"loss": loss, "bits_per_byte": bpb, "examples": len(examples), "data": f"{data or meta['data']} (assistant tokens)"}
