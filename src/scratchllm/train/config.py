"""The trainer's settings. Every field can be overridden with `--set key=value`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from scratchllm.device import PRECISIONS
from scratchllm.errors import ScratchLLMError


@dataclass
class TrainConfig:
    batch_size: int = 12  # sequences per micro-step, per process
    grad_accum: int = 1  # micro-steps per optimizer step
    max_steps: int = 2000  # optimizer steps
    max_time: Optional[float] = None  # wall-clock budget in seconds; stops early when spent
    lr: float = 1e-3  # peak learning rate, after warmup
    min_lr: float = 1e-4  # floor of the cosine decay
    warmup_steps: int = 100
    decay_steps: Optional[int] = None  # cosine reaches min_lr here; defaults to max_steps
    schedule: str = "steps"  # steps: cosine over decay_steps; time: cosine over max_time seconds (see optim.lr_at)
    weight_decay: float = 0.1  # on weights of 2 or more dimensions only
    betas: tuple[float, float] = (0.9, 0.99)
    grad_clip: float = 1.0  # max global gradient norm; 0 turns clipping off
    eval_interval: int = 250
    eval_batches: int = 20
    log_interval: int = 10
    seed: int = 1337
    precision: str = "auto"
    compile: bool = False
    compile_mode: str = "default"  # torch.compile's mode: default | reduce-overhead (CUDA graphs) | max-autotune
    device: str = "auto"  # auto: cuda when available, else cpu
    fsdp: bool = False  # under torchrun: shard parameters, gradients and optimizer state (FSDP2) instead of DDP

    def __post_init__(self):
        if self.compile_mode not in ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"):
            raise ScratchLLMError(f"compile_mode '{self.compile_mode}' is not one of default, reduce-overhead, max-autotune")
        if self.schedule not in ("steps", "time") or (self.schedule == "time" and self.max_time is None):
            raise ScratchLLMError(f"schedule must be steps, or time together with max_time; got {self.schedule}, max_time={self.max_time}")
        if self.precision not in PRECISIONS:
            raise ScratchLLMError(f"precision '{self.precision}' is not one of {', '.join(PRECISIONS)}")
        for name in ("batch_size", "grad_accum", "eval_interval", "eval_batches", "log_interval"):
            if getattr(self, name) < 1:
                raise ScratchLLMError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_steps < 0 or self.warmup_steps < 0:
            raise ScratchLLMError("max_steps and warmup_steps must not be negative")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ScratchLLMError(f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr} min_lr={self.min_lr}")
        if self.max_time is not None and self.max_time <= 0:
            raise ScratchLLMError(f"max_time must be positive seconds, got {self.max_time}")
        if self.lr > 10 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ScratchLLMError(f"need lr <= 10, weight_decay >= 0 and grad_clip >= 0, got lr={self.lr} "
                                  f"weight_decay={self.weight_decay} grad_clip={self.grad_clip}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ScratchLLMError(f"betas must each be in [0, 1), got {self.betas}")
        if not 0 <= self.seed < 2**63:
            raise ScratchLLMError(f"seed must be from 0 to 2**63 - 1, got {self.seed}")
        if max(self.batch_size, self.grad_accum, self.max_steps, self.warmup_steps, self.eval_batches) >= 1 << 31:
            raise ScratchLLMError("batch_size, grad_accum, max_steps, warmup_steps and eval_batches must be below 2**31")
