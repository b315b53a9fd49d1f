"""Validation loss over the whole validation split, in nats/token, bits/char and bits/byte.

Bits per byte divides the total information by the UTF-8 bytes of the text predicted, so models
with different tokenizers (characters, BPE) compare on one scale.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from scratchllm.data.batches import TokenBatches
from scratchllm.data.tokens import corpus_tokens
from scratchllm.train.checkpoint import load_checkpoint


@torch.no_grad()
def evaluate_checkpoint(checkpoint: str, data: str | None = None, batch_size: int = 32,
                        max_batches: int | None = None, device: str = "cpu", progress: bool = False) -> dict:
    model, tokenizer, meta = load_checkpoint(checkpoint, device=device)
    data = data or meta["data"]
    _, _, val = corpus_tokens(data, tokenizer, progress=progress)
    T = model.config.block_size
    batches = TokenBatches(val, val, T, seed=0)
    nats, n_tokens = 0.0, 0
    for b, (x, y) in enumerate(batches.sequential("val", batch_size)):
        if max_batches is not None and b >= max_batches:
            break
        logits = model(x.to(device))
        nats += F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten(), reduction="sum").item()
        n_tokens += y.numel()
    # the windows start at 0, T, 2T, ...: their targets are exactly the ids val[1 : n_tokens + 1]
    target_bytes = tokenizer.decode_bytes(np.asarray(val[1:n_tokens + 1]).tolist())
    n_bytes, n_chars = len(target_bytes), len(target_bytes.decode("utf-8", errors="replace"))
    loss = nats / n_tokens
    return {"loss": loss, "bits_per_token": loss / math.log(2), "bits_per_char": nats / math.log(2) / n_chars,
            "bits_per_byte": nats / math.log(2) / n_bytes, "tokens": n_tokens, "data": data}
