"""Batches for the vision-language presets: shapes-world examples as PaliGemma / SigLIP inputs.

PaliGemma's sequence for one example, right-padded to a fixed length:

    <image> x N_patches  <bos>  prompt  "\\n"  |  answer  <eos>  <pad> ...
    └────────────── prefix (bidirectional) ──┘ └─ suffix (causal; the loss) ─┘
"""

from __future__ import annotations

import torch

from scratchllm.data import shapes
from scratchllm.data.images import ImageProcessor
from scratchllm.errors import ScratchLLMError
from scratchllm.tokenizers import TokenizerConfig
from scratchllm.tokenizers.bpe_train import train_bpe

SPECIALS = ("<image>", "<bos>", "<eos>", "<pad>")  # the sequences below need all four


def shapes_tokenizer(config: TokenizerConfig):
    """A small byte-level BPE (a preset's tokenizer settings) trained on the shapes world's phrases:
    colours and shapes (which recur in every template) end up one token each; rarer words take a few."""
    missing = [s for s in SPECIALS if s not in config.special_tokens]
    if missing:
        raise ScratchLLMError(f"the shapes tokenizer needs the special tokens {', '.join(missing)}")
    return train_bpe(shapes.all_words(), config.vocab_size, config.pattern, config.special_tokens, progress=False)


def paligemma_inputs(tokenizer, n_patches: int, prompts: list[str], answers: list[str] | None, length: int):
    """ids, prefix, valid, labels (B, length): right-padded training rows, or (answers=None) prompt rows."""
    sp = tokenizer.special_tokens
    rows, prefixes, targets = [], [], []
    for i, prompt in enumerate(prompts):
        prefix = [sp["<image>"]] * n_patches + [sp["<bos>"]] + tokenizer.encode(prompt + "\n")
        suffix = (tokenizer.encode(answers[i]) + [sp["<eos>"]]) if answers is not None else []
        ids = (prefix + suffix)[:length]
        rows.append(ids)
        prefixes.append(len(prefix))
        targets.append([-100] * len(prefix) + suffix)
    B = len(rows)
    ids = torch.full((B, length), sp["<pad>"], dtype=torch.long)
    labels = torch.full((B, length), -100, dtype=torch.long)
    prefix = torch.zeros(B, length, dtype=torch.bool)
    valid = torch.zeros(B, length, dtype=torch.bool)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row)
        labels[i, :len(row)] = torch.tensor(targets[i][:len(row)])
        prefix[i, :prefixes[i]] = True
        valid[i, :len(row)] = True
    return ids, prefix, valid, labels


class ShapesBatches:
    """Infinite training examples drawn by seed (state: one torch generator), fixed held-out examples."""

    def __init__(self, tokenizer, image_size: int, n_patches: int, length: int, seed: int, task: str = "vqa",
                 n_held_out: int = 256, contrastive: bool = False):
        # contrastive: batches of images and their fixed-length captions, and which captions match (SigLIP's
        # sigmoid loss); else each image's slots, prompt and answer as one sequence for a decoder (PaliGemma)
        self.tokenizer, self.n_patches, self.length, self.task = tokenizer, n_patches, length, task
        self.contrastive = contrastive
        self.processor = ImageProcessor(image_size)
        self.block_size = length
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self.held_out = shapes.held_out(n_held_out, task)
        self._held_out_keys = {(e.scene, e.prompt) for e in self.held_out}

    def _batch(self, examples: list[shapes.Example]) -> dict:
        pixels = torch.stack([self.processor(e.image) for e in examples])
        if self.contrastive:
            ids = torch.tensor([self.caption_ids(shapes.caption(e.scene)) for e in examples])
            return {"pixels": pixels, "ids": ids, "labels": _same_caption(examples)}
        ids, prefix, valid, labels = paligemma_inputs(self.tokenizer, self.n_patches, [e.prompt for e in examples],
                                                      [e.answer for e in examples], self.length)
        return {"ids": ids, "pixels": pixels, "prefix": prefix, "valid": valid, "labels": labels}

    def count(self, batch: dict[str, torch.Tensor], bytes_per_token: torch.Tensor) -> tuple[int, float]:
        """(what the batch's mean loss is over, UTF-8 bytes of text predicted): SigLIP's loss is a mean
        over images and predicts no text; PaliGemma's over the answer tokens."""
        if self.contrastive:
            return batch["pixels"].size(0), 0.0
        y = batch["labels"][batch["labels"] != -100]
        return y.numel(), bytes_per_token[y].sum().item()

    def caption_ids(self, text: str) -> list[int]:
        """A caption as SigLIP's text tower reads it: cut or padded to a fixed length."""
        ids = self.tokenizer.encode(text)[: self.length]
        return ids + [self.tokenizer.special_tokens["<pad>"]] * (self.length - len(ids))

    def _train_examples(self, n: int, generator: torch.Generator | None = None) -> list[shapes.Example]:
        """n training examples, drawn by seed from `generator` (default: the sampler's own)."""
        generator = generator or self.generator
        out = []
        while len(out) < n:
            seed = int(torch.randint(shapes.HELD_OUT_BASE, (1,), generator=generator))
            e = shapes.example(seed, self.task)
            if (e.scene, e.prompt) not in self._held_out_keys:  # held out by content, not only by seed
                out.append(e)
        return out

    def draw_step(self, batch_size: int, grad_accum: int, world_size: int = 1, rank: int = 0):
        examples = self._train_examples(batch_size * grad_accum * world_size)
        return [self._batch(examples[(k * world_size + rank) * batch_size:][:batch_size]) for k in range(grad_accum)]

    def eval_batches(self, split: str, batch_size: int, n_batches: int):
        if split == "val":
            pool = self.held_out
        else:  # training examples, the same ones at every evaluation
            pool = self._train_examples(min(len(self.held_out), batch_size * n_batches),
                                        torch.Generator().manual_seed(self.seed + 1))
        for i in range(0, min(len(pool), batch_size * n_batches), batch_size):
            yield self._batch(pool[i:i + batch_size])

    def state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


def _same_caption(examples: list[shapes.Example]) -> torch.Tensor:
    """SigLIP labels (B, B): 1 where image i's caption equals caption j (repeats give several positives)."""
    caps = [shapes.caption(e.scene) for e in examples]
    return torch.tensor([[float(a == b) for b in caps] for a in caps])


@torch.no_grad()
def exact_match(model, batches: ShapesBatches, limit: int | None = None) -> float:
    """Greedy answers to the held-out questions, compared word for word with the truth."""
    examples = batches.held_out[:limit]
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(examples), 64):
        chunk = examples[i:i + 64]
        pixels = torch.stack([batches.processor(e.image) for e in chunk]).to(device)
        answers = model.answer(batches.tokenizer, pixels, [e.prompt for e in chunk])
        correct += sum(a.strip() == e.answer for a, e in zip(answers, chunk))
    return correct / len(examples)


@torch.no_grad()
def retrieval_at_1(model, batches: ShapesBatches) -> float:
    """Image-to-text R@1 over the held-out scenes' distinct captions: the nearest caption is the right one."""
    examples = batches.held_out
    captions = sorted({shapes.caption(e.scene) for e in examples})
    device = next(model.parameters()).device
    pixels = torch.stack([batches.processor(e.image) for e in examples]).to(device)
    ids = torch.tensor([batches.caption_ids(c) for c in captions], device=device)
    sims = model.embed_images(pixels) @ model.embed_texts(ids).t()
    best = sims.argmax(dim=-1).tolist()
    return sum(captions[b] == shapes.caption(e.scene) for b, e in zip(best, examples)) / len(examples)
