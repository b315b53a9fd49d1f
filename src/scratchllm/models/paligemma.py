"""PaliGemma (Beyer et al. 2024): a SigLIP image encoder, a linear projector, and a Gemma decoder.

    image ──SigLIP (no head)──> patch features (B, N, d_v) ──linear──> (B, N, d) ─┐
    tokens: <image> x N, bos, prefix, "\n", suffix, eos ──Gemma embed──────────────┴─> the <image> slots take
    the projected patches ──> Gemma with a prefix-LM mask ──> logits; loss on the suffix only

The prefix-LM mask: the image and the prefix (the prompt) attend to each other in both directions;
the suffix (the answer) is causal, and sees the whole prefix. So the model reads the question with
full context and writes the answer left to right. Positions start at 1, as Hugging Face's do.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.config import DERIVED
from scratchllm.errors import ScratchLLMError
from scratchllm.layers import KVCache, Linear, packed_for_inference, padded_causal_mask
from scratchllm.models import gemma
from scratchllm.models.decode import GREEDY, Engine, Request, Sampling
from scratchllm.models.gemma import Gemma, GemmaConfig
from scratchllm.models.llama import LLAMA_LAYERS
from scratchllm.models.siglip import VISION, SiglipVision, SiglipVisionConfig, vision_config_from_hf
from scratchllm.models.spec import HFFormat, ModelSpec, Row, WeightMap, register
from scratchllm.models.tasks import ShapesWorld


@dataclass
class PaliGemmaConfig:
    vision: SiglipVisionConfig = field(default_factory=lambda: SiglipVisionConfig(use_head=False))
    text: GemmaConfig = field(default_factory=GemmaConfig)
    image_token_id: int = field(default=0, metadata=DERIVED)  # the id whose slots receive image features

    def __post_init__(self):
        if not 0 <= self.image_token_id < max(1, self.text.vocab_size):
            raise ScratchLLMError(f"image_token_id {self.image_token_id} is outside the vocabulary of {self.text.vocab_size}")


class PaliGemma(nn.Module):
    def __init__(self, config: PaliGemmaConfig):
        super().__init__()
        self.config = config
        self.vision = SiglipVision(config.vision)
        self.projector = Linear(config.vision.n_embd, config.text.n_embd)
        self.language = Gemma(config.text)

    def embed(self, ids: torch.Tensor, pixels: torch.Tensor) -> torch.Tensor:
        """Token embeddings (B, T, d) with the image slots replaced by projected patch features."""
        image = self.projector(self.vision(pixels)[0])  # (B, N, d)
        slots = ids == self.config.image_token_id
        embeds = self.language.embed_tokens(ids.masked_fill(slots, 0))  # text scaled by sqrt(d), images not
        return embeds.masked_scatter(slots[..., None], image.to(embeds.dtype))

    def forward(self, ids: torch.Tensor, pixels: torch.Tensor, prefix: torch.Tensor, valid: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, cache: KVCache | None = None):
        """ids (B, T) with N image slots per row; pixels (B, C, H, W); prefix (B, T) True for image and prompt;
        valid (B, T) False on padding; labels (B, T) the ids to predict, -100 where no loss (image, prompt,
        padding). Returns logits (B, T, vocab), and with labels (logits, loss)."""
        valid = valid if valid is not None else torch.ones_like(ids, dtype=torch.bool)
        positions = valid.long().cumsum(-1)  # 1-indexed, padding does not count
        mask = padded_causal_mask(valid, ids.size(1), prefix)  # the prefix-LM mask
        logits = self.language(None, positions=positions, cache=cache, mask=mask,
                               embeds=self.embed(ids, pixels))
        if labels is None:
            return logits
        # the logits at t predict the token at t + 1
        loss = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
        return logits, loss

    @torch.no_grad()
    def answer(self, tokenizer, pixels: torch.Tensor, prompts: list[str], max_new_tokens: int = 8, *,
               sampling: Sampling | None = None) -> list[str]:
        """Answers to `prompts` about the images `pixels` (B, C, H, W): greedy, or by `sampling` (a
        models.decode.Sampling, whose max_tokens then replaces max_new_tokens), until <eos>.

        The decoding loop is the engine's (models/decode.py), over the Gemma decoder: each row's image
        slots and prompt are prefilled with their embeddings (image features in the <image> slots) under
        the prefix-LM mask, positions counted from 1, as in training; then one token per step."""
        sp = tokenizer.special_tokens
        sampling = (sampling or GREEDY.replace(max_tokens=max_new_tokens)).replace(stop=(sp["<eos>"],))
        n_patches = self.config.vision.num_patches
        rows = [[sp["<image>"]] * n_patches + [sp["<bos>"]] + tokenizer.encode(p + "\n") for p in prompts]
        L = max(len(r) for r in rows)
        if L + sampling.max_tokens > self.config.text.block_size:
            raise ScratchLLMError(f"the image and prompt take {L} tokens; with {sampling.max_tokens} new ones that passes "
                                  f"the model's context of {self.config.text.block_size}: ask for fewer tokens or a "
                                  "shorter prompt")
        ids = torch.full((len(rows), L), sp["<pad>"], dtype=torch.long, device=pixels.device)
        for i, r in enumerate(rows):  # right padding: each row's prompt starts at position 1
            ids[i, :len(r)] = torch.tensor(r, device=pixels.device)
        embeds = self.embed(ids, pixels)  # (B, L, d): the vision tower runs once for the batch
        requests = [Request(r, sampling, embeds=embeds[i, :len(r)], prefix_lm=True) for i, r in enumerate(rows)]
        out: dict[int, list[int]] = {id(r): [] for r in requests}
        with packed_for_inference(self.language):  # the copies go when the answers are in (training may go on)
            engine = Engine(self.language, len(rows), L + sampling.max_tokens, on_full="stop", first_position=1)
            steps = engine.add_all(requests)
            while steps:
                for t in steps:
                    if t.token is not None:
                        out[id(t.request)].append(t.token)
                steps = engine.step()
        return [tokenizer.decode(out[id(r)]) for r in requests]


# -- spec: PaliGemma trains on shapes-world questions, reports held-out exact match, answers with `ask`

def _finish(config: PaliGemmaConfig, tokenizer) -> PaliGemmaConfig:
    if "<image>" not in tokenizer.special_tokens:
        raise ScratchLLMError("PaliGemma needs a tokenizer with an <image> special token")
    return dataclasses.replace(config, text=dataclasses.replace(config.text, vocab_size=tokenizer.vocab_size),
                               image_token_id=tokenizer.special_tokens["<image>"])


def _shapes_batches(config: PaliGemmaConfig, tokenizer, seed: int):
    from scratchllm.data.vision_language import ShapesBatches

    n = config.vision.num_patches  # the sequence: n image slots, the prompt and the answer (16 tokens are plenty)
    return ShapesBatches(tokenizer, config.vision.image_size, n, n + 16, seed, task="vqa")


def _exact_match(model, batches) -> float:
    from scratchllm.data.vision_language import exact_match

    return exact_match(model, batches)


def _config_from_hf(hf: dict) -> PaliGemmaConfig:
    if hf.get("text_config", {}).get("model_type", "gemma") != "gemma":
        raise ScratchLLMError(f"PaliGemma with a {hf['text_config'].get('model_type')} decoder is not supported (Gemma 1 is)")
    return PaliGemmaConfig(vision_config_from_hf({**hf["vision_config"], "vision_use_head": False}),
                           gemma.config_from_hf(hf["text_config"]), hf.get("image_token_id", hf.get("image_token_index")))


# transformers has saved these parts under two sets of names over its versions; import reads either
PALIGEMMA_WEIGHTS = (
    WeightMap("vision.", ("vision_tower.vision_model.", "vision_tower.", "model.vision_tower.vision_model.", "model.vision_tower."),
              VISION, lambda c: c.vision),
    WeightMap("projector.", ("multi_modal_projector.linear.", "model.multi_modal_projector.linear."),
              (Row("weight", ("weight",), transpose=True), Row("bias", ("bias",)))),
    WeightMap("language.", ("language_model.model.", "model.language_model."), LLAMA_LAYERS, lambda c: c.text),
)

SPEC = register(ModelSpec(
    "paligemma", PaliGemma, PaliGemmaConfig, task=ShapesWorld(_shapes_batches, "exact_match", _exact_match),
    finish_config=_finish, commands=frozenset({"train", "eval", "ask"}), vocab_size=lambda config: config.text.vocab_size,
    hf=HFFormat(("paligemma",), _config_from_hf, PALIGEMMA_WEIGHTS),
))
