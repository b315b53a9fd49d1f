"""Random windows of a token stream, as (input, target) batches; the target is the input shifted by one.

The streams are numpy arrays, often `np.memmap`s of prepared token files: a batch reads only the
windows it needs, so a corpus never has to fit in memory.
"""

from __future__ import annotations

import numpy as np
import torch

from scratchllm.errors import ScratchLLMError


def split_train_val(tokens, train_fraction: float = 0.9):
    """First 90% for training, the last 10% for validation, as nanoGPT does."""
    n = int(train_fraction * len(tokens))
    return tokens[:n], tokens[n:]


class TokenBatches:
    """Samples windows of `block_size + 1` tokens with its own generator, so its state can be checkpointed.

    One optimizer step draws `rows_per_step = batch_size * grad_accum * world_size` windows at once;
    process `rank`'s micro-step `k` takes rows `(k * world_size + rank) * batch_size` onwards. Every
    process draws the same windows, so 2 processes see exactly the rows 1 process would.
    """

    def __init__(self, train, val, block_size: int, seed: int):
        for name, part in (("training", train), ("validation", val)):
            if len(part) < block_size + 1:
                raise ScratchLLMError(
                    f"the {name} split has {len(part)} tokens, fewer than block_size + 1 = {block_size + 1}; "
                    "use a longer corpus or a smaller block_size (--set block_size=N)")
        self.splits = {"train": np.asarray(train), "val": np.asarray(val)}  # memmaps stay views, not copies
        self.block_size = block_size
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def _windows(self, split: str, starts: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"idx": inputs (N, block), "targets": the same windows shifted by one}: a model's keyword arguments."""
        data = self.splits[split]
        index = starts.numpy()[:, None] + np.arange(self.block_size + 1)
        rows = torch.from_numpy(data[index].astype(np.int64))  # (N, block + 1); reads only these windows
        return {"idx": rows[:, :-1].contiguous(), "targets": rows[:, 1:].contiguous()}  # plain tensors: any model's .view works

    @staticmethod
    def count(batch: dict[str, torch.Tensor], bytes_per_token: torch.Tensor) -> tuple[int, float]:
        """(targets the batch's mean loss is over, UTF-8 bytes of text they stand for)."""
        y = batch["targets"]
        return y.numel(), bytes_per_token[y].sum().item()

    def draw_step(self, batch_size: int, grad_accum: int, world_size: int = 1, rank: int = 0):
        """The micro-batches of one optimizer step for this process: a list of grad_accum batches."""
        n = len(self.splits["train"]) - self.block_size
        starts = torch.randint(n, (batch_size * grad_accum * world_size,), generator=self.generator)
        micro = []
        for k in range(grad_accum):
            lo = (k * world_size + rank) * batch_size
            micro.append(self._windows("train", starts[lo:lo + batch_size]))
        return micro

    def eval_batches(self, split: str, batch_size: int, n_batches: int):
        """The same windows at every evaluation (a fixed seed), so curves are comparable and runs resumable."""
        g = torch.Generator().manual_seed(self.seed + 1)
        n = len(self.splits[split]) - self.block_size
        for _ in range(n_batches):
            yield self._windows(split, torch.randint(n, (batch_size,), generator=g))

    def sequential(self, split: str, batch_size: int):
        """All of a split in consecutive, non-overlapping windows (for `scratchllm eval`)."""
        data = self.splits[split]
        T = self.block_size
        starts = torch.arange(0, len(data) - T, T)
        for i in range(0, len(starts), batch_size):
            yield self._windows(split, starts[i:i + batch_size])

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)
