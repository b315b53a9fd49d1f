"""`scratchllm eval`: a checkpoint on the data its task evaluates on.

A language model: loss over the whole validation split in consecutive windows, in nats/token,
bits/char and bits/byte (bits per byte divides the information by the UTF-8 bytes of the text
predicted, so models with different tokenizers compare on one scale). A vision-language model:
loss over the held-out shapes-world scenes and its task metric (R@1, exact match).
"""

from __future__ import annotations

from scratchllm.checkpoint import load_checkpoint, read_meta, resolve_checkpoint
from scratchllm.device import QUANTIZED_PRECISIONS, inference_dtype, resolve_device


def evaluate_checkpoint(checkpoint: str, data: str | None = None, batch_size: int = 32, max_batches: int | None = None,
                        device: str = "auto", precision: str = "fp32", progress: bool = False) -> dict:
    if "finetune" in read_meta(resolve_checkpoint(checkpoint)):  # held-out conversations, not a corpus
        from scratchllm.train.finetune import evaluate_finetune

        return evaluate_finetune(checkpoint, data, batch_size, max_batches, device, precision)
    dev = resolve_device(device, precision)
    model, tokenizer, meta, spec = load_checkpoint(checkpoint, dev, inference_dtype(precision, dev))
    spec.require("eval", str(checkpoint))
    if precision in QUANTIZED_PRECISIONS:
        spec.quantize(model, precision, str(checkpoint))
    return spec.task.evaluate(model, tokenizer, data or meta.get("data"), batch_size, max_batches, progress)
