"""The output head and the next-token loss, computed together: logits only where a target counts.

Fine-tuning data marks the prompt's positions (the system prompt, the user's turns) with target -100: no
loss. There the output head, the largest product of a small model (SmolLM2's 576 x 49,152 is a fifth of
its weights), computes logits that nothing uses: in the identity demo's batches over half the positions.
So on the CPU, where finding those positions costs nothing, the head runs on the counted positions only
(the same mean over the same positions: the same loss and gradients, tested). Measured on that demo's
LoRA steps (8 rows, 46% of positions counted, AMD EPYC AVX2, 2 threads, 2026-12-02): 4.06 against 4.49 s
a step, 1.10x. On a GPU that would make each step wait for it (the positions' count is data), so there, and
under torch.compile, the head runs on every position and cross_entropy's ignore_index drops the rest.
Benchmark scoring (evals/scoring.py) uses the same path to get logits only where a choice's token is
predicted.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE = -100  # the target of a position that adds no loss (cross_entropy's ignore_index)


def logits_and_loss(head: nn.Module, x: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, T, C), targets (B, T) -> (logits, mean cross-entropy over the positions whose target is not
    IGNORE). Logits are (B, T, vocab), or (N, vocab) for the N counted positions when some are ignored on
    the CPU."""
    if x.device.type == "cpu" and not torch.compiler.is_compiling():
        keep = targets != IGNORE  # (B, T)
        if not bool(keep.all()):
            logits = head(x[keep])  # (N, vocab)
            return logits, F.cross_entropy(logits.float(), targets[keep])
    logits = head(x)  # (B, T, vocab)
    return logits, F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
