"""The training loop, shared by every model that returns `(logits, loss)` from `model(x, targets)`.

    for each step: lr from the schedule -> grad_accum micro-batches (forward under autocast, backward)
                   -> all-reduce (DDP, on the last micro-batch only) -> clip -> AdamW step
    every eval_interval steps: train/val loss on fixed batches -> metrics.jsonl, loss.png,
                               latest/ (with trainer state) and best/ checkpoints
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from scratchllm import checkpoint as ckpt
from scratchllm.config import to_dict
from scratchllm.device import autocast, keep_freed_memory, resolve_device, resolve_precision, tf32_matmuls
from scratchllm.errors import ScratchLLMError
from scratchllm.fetch import cache_dir
from scratchllm.layers.native import machine_key
from scratchllm.models.tasks import bytes_per_token, mean_loss
from scratchllm.train.config import TrainConfig
from scratchllm.train.distributed import DistInfo, average
from scratchllm.train.metrics import MetricsLog
from scratchllm.train import fsdp
from scratchllm.train.optim import build_optimizer, lr_at, parameter_names


class Trainer:
    def __init__(self, model: nn.Module, cfg: TrainConfig, tokenizer, batches, out_dir: Path, meta: dict[str, Any],
                 dist_info: DistInfo | None = None, resume_from: Path | None = None, progress: bool = True,
                 task_metrics=None, shard_units=None):
        """`batches` gives each step's micro-batches (dicts of a model's keyword arguments) and fixed
        evaluation batches; `meta` goes into every checkpoint's config.json (model_type, model config,
        preset, data); `task_metrics(model) -> {name: value}` adds the task's metrics (retrieval,
        exact match) to each evaluation; `shard_units(model)` names the blocks FSDP shards one by one
        (cfg.fsdp under torchrun)."""
        self.task_metrics = task_metrics
        self.cfg, self.tokenizer, self.batches = cfg, tokenizer, batches
        self.out_dir, self.dist = Path(out_dir), dist_info or DistInfo()
        self.device = resolve_device(cfg.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.precision = resolve_precision(cfg.precision, self.device)
        if self.device.type == "cpu":
            keep_freed_memory()  # no fresh pages for each step's activations (device.py: 8-19% of a gpt-char step)
        self.progress = progress and self.dist.is_main
        self.meta = {**meta, "train": to_dict(cfg)}
        # bytes of text each token stands for, so evaluations also report bits per byte (comparable across tokenizers)
        self.bytes_per_token = bytes_per_token(tokenizer)
        self.model = model.to(self.device)
        self.sharded = cfg.fsdp and self.dist.enabled
        if self.sharded:
            if shard_units is None:
                raise ScratchLLMError("this model type is not sharded by FSDP (GPT, Llama and Gemma are); train it without --fsdp")
            fsdp.shard(self.model, shard_units(self.model), self.device)
        self.optimizer = build_optimizer(self.model, cfg)
        self.trained = {n for n, p in self.model.named_parameters() if p.requires_grad}
        self.frozen = {n for n, p in self.model.named_parameters() if not p.requires_grad} or None
        if self.frozen is not None and self.sharded:
            raise ScratchLLMError("a model with frozen parameters (LoRA) is not sharded by FSDP here; train it without --fsdp")
        self.step, self.best_val = 0, math.inf
        self.elapsed = 0.0  # seconds of training so far, over every resumption (for schedule="time")
        self.resumed = resume_from is not None
        if resume_from is not None:
            self._restore(resume_from)

        self.step_model: nn.Module = self.model
        if self.dist.enabled and not self.sharded:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.step_model = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if cfg.compile:  # "reduce-overhead" adds CUDA graphs: one launch for a whole forward or backward
            keep_compiled_in_our_cache()
            self.step_model = torch.compile(self.step_model, mode=None if cfg.compile_mode == "default" else cfg.compile_mode)
        self.metrics = MetricsLog(self.out_dir / "metrics.jsonl", truncate_after_step=self.step if self.resumed else None) \
            if self.dist.is_main else None

    # -- state ---------------------------------------------------------------------------------

    def _full_state(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """(model state dict, optimizer state dict) as one process holds them, on the CPU. Under FSDP
        this gathers the shards: every rank must call it."""
        if self.sharded:
            self.model.reshard()  # an evaluation (no backward) leaves the root's full weights in place of its shards
            names = parameter_names(self.model)
            # before the first step there is no state to gather (and DCP would make some with a step of lr 0,
            # counted by Adam: the next update would differ from a one-process run)
            optimizer_state = fsdp.full_optimizer_state(self.model, self.optimizer, names) if self.optimizer.state \
                else self.optimizer.state_dict()
            return fsdp.full_model_state(self.model), optimizer_state
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items() if self._saved(k)}, self.optimizer.state_dict()

    def _saved(self, name: str) -> bool:
        """Whether a state-dict entry goes into checkpoints: all of them, unless some parameters are
        frozen (LoRA: the base model's weights), when only the trained ones do (the base stays where it was)."""
        return self.frozen is None or name in self.trained


    def _restore(self, folder: Path) -> None:
        state, tensors = ckpt.load_trainer_state(folder, self.device)
        weights = ckpt.read_safetensors(folder / ckpt.WEIGHTS)
        try:
            optimizer_state = ckpt.optimizer_state_from_flat(state["optimizer"], tensors, like=self.optimizer)
            if self.sharded:
                fsdp.load_full_state(self.model, self.optimizer, parameter_names(self.model), weights, optimizer_state)
            else:
                if self.frozen is not None and set(weights) != {k for k in self.model.state_dict() if self._saved(k)}:
                    raise KeyError("the checkpoint's tensors are not this model's trained ones")
                self.model.load_state_dict(weights, strict=self.frozen is None)
                self.optimizer.load_state_dict(optimizer_state)
        except (ValueError, KeyError, RuntimeError, TypeError, IndexError):
            raise ScratchLLMError(f"the weights or optimizer state in {folder} do not fit its config (was config.json "
                                  "edited?); resume an unchanged run, or start a new one") from None
        torch.set_rng_state(tensors["rng.torch"])
        self.batches.set_state(tensors["rng.batches"])
        if "rng.cuda" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors["rng.cuda"], self.device)
        self.step = state["step"]
        self.best_val = state["best_val"] if state["best_val"] is not None else math.inf
        elapsed = state.get("elapsed", 0.0)
        self.elapsed = float(elapsed) if isinstance(elapsed, (int, float)) and math.isfinite(elapsed) and elapsed >= 0 else 0.0

    def _save(self, val_loss: float) -> None:
        """latest/ with the trainer state, and best/ when this evaluation is the best so far. Every rank
        calls it (FSDP gathers the state from all of them); rank 0 writes."""
        if not (self.sharded or self.dist.is_main):
            return
        weights, optimizer_state = self._full_state()
        if not self.dist.is_main:
            return
        info, tensors = ckpt.optimizer_state_to_flat(optimizer_state)
        tensors["rng.torch"] = torch.get_rng_state()
        tensors["rng.batches"] = self.batches.state()
        if self.device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(self.device)
        state = {"step": self.step, "best_val": self.best_val if math.isfinite(self.best_val) else None,
                 "elapsed": round(self.elapsed, 3),
                 "world_size": self.dist.world_size, "optimizer": info}
        meta = {**self.meta, "step": self.step, "val_loss": val_loss}
        ckpt.save_checkpoint(self.out_dir / "latest", weights, meta, self.tokenizer, state, tensors)
        if val_loss < self.best_val:
            self.best_val = val_loss
            ckpt.save_checkpoint(self.out_dir / "best", weights, meta, self.tokenizer)

    # -- loop ----------------------------------------------------------------------------------

    def evaluate(self) -> dict[str, float]:
        out = {}
        for split in ("train", "val"):
            batches = self.batches.eval_batches(split, self.cfg.batch_size, self.cfg.eval_batches)
            out[split], out[f"{split}_bpb"] = mean_loss(self.model, self.batches, batches, self.device, self.bytes_per_token,
                                                        lambda: autocast(self.precision, self.device))
        if self.task_metrics is not None:
            out.update(self.task_metrics(self.model))
        self.model.train()
        return out

    def _forward(self, model: nn.Module, batch: dict[str, torch.Tensor]):
        """A micro-batch is a dict of the model's keyword arguments; the model returns (logits, loss).
        To a GPU the batch goes from pinned memory, asynchronously: the copy overlaps the GPU's work."""
        if self.device.type == "cuda":
            batch = {k: v.pin_memory() for k, v in batch.items()}
        return model(**{k: v.to(self.device, non_blocking=True) for k, v in batch.items()})

    def train_step(self) -> float:
        cfg = self.cfg
        lr = lr_at(self.step, cfg, self.elapsed)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        micro = self.batches.draw_step(cfg.batch_size, cfg.grad_accum, self.dist.world_size, self.dist.rank)
        total = None
        for k, batch in enumerate(micro):
            last = k == len(micro) - 1
            # Under DDP, skip the gradient all-reduce on all but the last micro-batch (FSDP: its reduce-scatter).
            if self.sharded:
                self.model.set_requires_gradient_sync(last)
                sync = contextlib.nullcontext()
            else:
                sync = contextlib.nullcontext() if (last or not self.dist.enabled) else self.step_model.no_sync()
            with sync:
                with autocast(self.precision, self.device):
                    _, loss = self._forward(self.step_model, batch)
                (loss / len(micro)).backward()
            # kept on the device: reading it (.item()) would make the CPU wait for the GPU at every step
            total = loss.detach() / len(micro) if total is None else total + loss.detach() / len(micro)
        if self.device.type == "cpu":  # on the CPU the check is free, so a bad step never reaches the weights
            self._check_finite(total)
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return total

    def _check_finite(self, loss: torch.Tensor, at_step: int | None = None) -> float:
        """The loss averaged over processes, as a float; a non-finite one stops the run."""
        value = average(loss.item(), self.dist, self.device)
        if not math.isfinite(value):
            self.optimizer.zero_grad(set_to_none=True)
            raise self._diverged(f"loss is {value} at step {at_step or self.step + 1}")
        return value

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _diverged(self, what: str) -> ScratchLLMError:
        """The error for a run gone non-finite. Nothing is saved from it: `latest/` holds the last
        evaluation that was finite (only finite evaluations are ever saved)."""
        where = f"; the last good checkpoint is {self.out_dir / 'latest'}" if (self.out_dir / "latest").exists() else "; nothing was saved"
        return ScratchLLMError(f"{what}{where}; lower the learning rate (--set lr=...) or use --precision fp32")

    def fit(self) -> dict[str, Any]:
        with tf32_matmuls(self.device):
            return self._fit()

    def _fit(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.resumed and self.step >= cfg.max_steps:
            raise ScratchLLMError(f"the run in {self.out_dir} already finished at step {self.step}; "
                                  f"to train it further, resume with --max-steps above {self.step}")
        tokens_per_step = cfg.batch_size * cfg.grad_accum * self.dist.world_size * self.batches.block_size
        bar = tqdm(total=cfg.max_steps, initial=self.step, unit="step", disable=not self.progress,
                   dynamic_ncols=True, mininterval=0.5, desc="train")
        start = time.time()
        elapsed_before = self.elapsed
        window_start, window_steps = time.perf_counter(), 0
        last_eval: dict[str, float] = {}
        train_seconds, steps_done = 0.0, 0  # time in training steps only, for a clean tokens/s
        skip_eval = self.resumed  # the checkpoint we resumed from was evaluated and saved already
        self.model.train()
        while True:
            self.elapsed = elapsed_before + time.time() - start
            time_up = cfg.max_time is not None and time.time() - start >= cfg.max_time
            done = self.step >= cfg.max_steps or time_up
            if (self.step % cfg.eval_interval == 0 or done) and not skip_eval:
                self._sync()
                train_seconds += time.perf_counter() - window_start if window_steps else 0.0
                last_eval = self.evaluate()
                if not (math.isfinite(last_eval["train"]) and math.isfinite(last_eval["val"])):
                    raise self._diverged(f"evaluation loss is {last_eval['val']} at step {self.step}")
                if self.dist.is_main:
                    extra = _task_metrics(last_eval)
                    self.metrics.log(kind="eval", step=self.step, train_loss=last_eval["train"], val_loss=last_eval["val"],
                                     val_bpb=last_eval["val_bpb"], **extra, elapsed=round(time.time() - start, 3))
                    bpb = f" ({last_eval['val_bpb']:.4f} bits/byte)" if last_eval["val_bpb"] is not None else ""
                    bar.write(f"step {self.step}: train loss {last_eval['train']:.4f}, val loss {last_eval['val']:.4f}{bpb}"
                              + "".join(f", {k} {v:.3f}" for k, v in extra.items()))
                self._save(last_eval["val"])
                if self.dist.is_main:
                    self.metrics.plot(self.out_dir / "loss.png", title=self.meta.get("preset", ""))
                window_start, window_steps = time.perf_counter(), 0  # do not count evaluation time in tokens/s
            skip_eval = False
            if done:
                break
            loss = self.train_step()
            steps_done += 1
            window_steps += 1
            bar.update(1)
            if self.step % cfg.log_interval == 0 or self.step == 1:
                value = self._check_finite(loss, self.step)  # on a GPU, the one wait per log interval
                now = time.perf_counter()
                rate = tokens_per_step * window_steps / max(1e-9, now - window_start)
                train_seconds += now - window_start
                if self.dist.is_main:
                    self.metrics.log(kind="train", step=self.step, loss=value, lr=lr_at(self.step - 1, cfg, self.elapsed),
                                     tokens_per_s=round(rate, 1), elapsed=round(time.time() - start, 3))
                bar.set_postfix(loss=f"{value:.4f}", tok_s=f"{rate:,.0f}")
                window_start, window_steps = now, 0
        bar.close()
        return {"metrics": _task_metrics(last_eval), "model_type": self.meta.get("model_type"),
                "step": self.step, "val_loss": last_eval.get("val"), "train_loss": last_eval.get("train"),
                "val_bpb": last_eval.get("val_bpb"),
                "best_val": self.best_val, "seconds": time.time() - start, "precision": self.precision,
                "tokens_per_s": tokens_per_step * steps_done / train_seconds if steps_done else None,
                "out": str(self.out_dir)}


def keep_compiled_in_our_cache() -> None:
    """torch.compile's compiled graphs and kernels go to $SCRATCHLLM_CACHE/inductor/<machine key>, not to /tmp,
    which a reboot empties: compiling gpt-char-baby's training step takes 33-38 s cold and 2.4-4 s from this cache
    (AMD EPYC, 2 threads); the compiled step there is 1.1-1.2x the eager one, so only from the cache does
    compiling pay for itself within the preset's 2,000 steps.
    One folder per CPU (layers/native.machine_key): inductor's own cache tells graphs apart by torch's version
    and settings, not by the vector width it generated their loops for. A graph compiled under AVX512 and
    reloaded under ATEN_CPU_CAPABILITY=avx2 ran its 512-bit loops with 256-bit vectors and left half of a
    buffer unwritten: NaN attention outputs, and a segfault in a compiled model (2026-12-04); a cache folder on a
    disk that moves between CPUs, as this project's machine does, would meet the same.
    A TORCHINDUCTOR_CACHE_DIR of the user's stands; torch's own default is what importing torch._dynamo puts
    there, so that one is replaced (inductor reads the variable at each use)."""
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    if os.environ.get("TORCHINDUCTOR_CACHE_DIR") in (None, default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir() / "inductor" / machine_key())


def _task_metrics(evaluation: dict[str, float]) -> dict[str, float]:
    """The task metrics of an evaluation (exact match, R@1), apart from the losses."""
    return {k: v for k, v in evaluation.items() if k not in ("train", "val", "train_bpb", "val_bpb")}


def replace_train(cfg: TrainConfig, **changes) -> TrainConfig:
    """A copy of `cfg` with the non-None `changes` applied (CLI flags that default to the preset)."""
    return dataclasses.replace(cfg, **{k: v for k, v in changes.items() if v is not None})
