"""Validation loss over the whole validation split, in nats/token, bits/char and bits/byte.

Bits per byte divides the total information by the UTF-8 bytes of the text predicted, so models
with different tokenizers (characters, BPE) compare on one scale.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from scratchllm.data.batches import TokenBatches, split_train_val
from scratchllm.data.tokens import encode_corpus
from scratchllm.train.checkpoint import load_checkpoint


@torch.no_grad()
def evaluate_checkpoint(checkpoint: str, data: str | None = None, batch_size: int = 32,
                        max_batches: int | None = None, device: str = "cpu") -> dict:
    model, tokenizer, meta = load_checkpoint(checkpoint, device=device)
    data = data or meta["data"]
    _, tokens = encode_corpus(data, tokenizer)
    _, val = split_train_val(tokens)
    batches = TokenBatches(val, val, model.config.block_size, seed=0)
    byte_len = torch.tensor([len(tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size)])
    char_len = torch.tensor([len(tokenizer.token_bytes(i).decode("utf-8", errors="replace")) for i in range(tokenizer.vocab_size)])
    nats, n_tokens, n_bytes, n_chars = 0.0, 0, 0, 0
    for b, (x, y) in enumerate(batches.sequential("val", batch_size)):
        if max_batches is not None and b >= max_batches:
            break
        logits = model(x.to(device))
        nats += F.cross_entropy(logits.float().flatten(0, 1), y.to(device).flatten(), reduction="sum").item()
        n_tokens += y.numel()
        n_bytes += int(byte_len[y].sum())
        n_chars += int(char_len[y].sum())
    loss = nats / n_tokens
    return {"loss": loss, "bits_per_token": loss / math.log(2), "bits_per_char": nats / math.log(2) / n_chars,
            "bits_per_byte": nats / math.log(2) / n_bytes, "tokens": n_tokens, "data": data}
