"""SigLIP (Zhai et al. 2023): two transformer towers trained so that matching image-text pairs score high.

    image ──conv patches + positions──> [PreNormBlock, bidirectional] x L ──> LayerNorm ──> MAP head ──> z_img
    text  ──tokens + positions───────> [PreNormBlock, bidirectional] x L ──> LayerNorm ──> last token ──> linear ──> z_txt
    logits = exp(t') <z_img/|z_img|, z_txt/|z_txt|> + b;   loss = -sum log sigmoid(label * logits) / n_images

Labels are +1 for a matching pair and -1 otherwise: every pair is its own binary decision, so no
softmax over the batch is needed (the point of the paper). A caption that repeats in the batch
makes several positives in its row.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.errors import ScratchLLMError
from scratchllm.layers import MLP, Attention, Linear, PreNormBlock


@dataclass
class SiglipVisionConfig:
    image_size: int = 32
    patch_size: int = 4
    num_channels: int = 3
    n_embd: int = 128
    n_layer: int = 4
    n_head: int = 4
    intermediate_size: int = 512
    norm_eps: float = 1e-6
    use_head: bool = True  # the attention-pooling ("MAP") head; PaliGemma uses the patch tokens instead

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ScratchLLMError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass
class SiglipTextConfig:
    vocab_size: int = 0
    block_size: int = 16  # max_position_embeddings: captions are padded to this length
    n_embd: int = 128
    n_layer: int = 4
    n_head: int = 4
    intermediate_size: int = 512
    norm_eps: float = 1e-6
    projection_size: Optional[int] = None  # default n_embd


@dataclass
class SiglipConfig:
    vision: SiglipVisionConfig = field(default_factory=SiglipVisionConfig)
    text: SiglipTextConfig = field(default_factory=SiglipTextConfig)


def _encoder(n_layer, dim, n_head, hidden, eps) -> nn.ModuleList:
    return nn.ModuleList(PreNormBlock(dim, n_head, hidden, "gelu_tanh", bias=True, causal=False, norm_eps=eps)
                         for _ in range(n_layer))


class AttentionPoolingHead(nn.Module):
    """Multihead attention pooling (MAP): one learned query attends over all patches, then an MLP."""

    def __init__(self, dim: int, n_head: int, hidden: int, eps: float):
        super().__init__()
        self.probe = nn.Parameter(torch.randn(1, 1, dim))
        self.attn = Attention(dim, n_head, bias=True, causal=False)
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, hidden, "gelu_tanh", bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.attn(self.probe.expand(x.size(0), -1, -1), context=x)  # (B, 1, dim)
        h = h + self.mlp(self.norm(h))
        return h[:, 0]  # (B, dim)


class SiglipVision(nn.Module):
    def __init__(self, c: SiglipVisionConfig):
        super().__init__()
        self.config = c
        self.patch_embed = nn.Conv2d(c.num_channels, c.n_embd, kernel_size=c.patch_size, stride=c.patch_size)
        self.pos_embed = nn.Embedding(c.num_patches, c.n_embd)
        self.blocks = _encoder(c.n_layer, c.n_embd, c.n_head, c.intermediate_size, c.norm_eps)
        self.post_norm = nn.LayerNorm(c.n_embd, eps=c.norm_eps)
        self.head = AttentionPoolingHead(c.n_embd, c.n_head, c.intermediate_size, c.norm_eps) if c.use_head else None

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """pixels (B, C, H, W) -> (patch features (B, N, dim), pooled (B, dim) or None)."""
        x = self.patch_embed(pixels).flatten(2).transpose(1, 2)  # (B, dim, H/p, W/p) -> (B, N, dim)
        x = x + self.pos_embed.weight[None]
        for block in self.blocks:
            x = block(x)
        x = self.post_norm(x)
        return x, (self.head(x) if self.head is not None else None)


class SiglipText(nn.Module):
    def __init__(self, c: SiglipTextConfig):
        super().__init__()
        self.config = c
        self.token_embed = nn.Embedding(c.vocab_size, c.n_embd)
        self.pos_embed = nn.Embedding(c.block_size, c.n_embd)
        self.blocks = _encoder(c.n_layer, c.n_embd, c.n_head, c.intermediate_size, c.norm_eps)
        self.final_norm = nn.LayerNorm(c.n_embd, eps=c.norm_eps)
        self.head = Linear(c.n_embd, c.projection_size or c.n_embd)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids (B, T), padded to a fixed length -> (token features (B, T, dim), pooled (B, proj)).
        Like SigLIP, no padding mask: the pooled feature is the last position's."""
        T = ids.size(1)
        x = self.token_embed(ids) + self.pos_embed.weight[None, :T]
        for block in self.blocks:
            x = block(x)
        x = self.final_norm(x)
        return x, self.head(x[:, -1])


def sigmoid_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """logits (n_images, n_texts); labels 1 where the pair matches, else 0. Sum over pairs, mean over images."""
    signs = 2.0 * labels.float() - 1.0
    return -F.logsigmoid(signs * logits.float()).sum(dim=-1).mean()


class Siglip(nn.Module):
    def __init__(self, config: SiglipConfig):
        super().__init__()
        self.config = config
        self.vision = SiglipVision(config.vision)
        self.text = SiglipText(config.text)
        if (config.text.projection_size or config.text.n_embd) != config.vision.n_embd:
            raise ScratchLLMError("the text projection must have the vision width so the embeddings can be compared")
        self.logit_scale = nn.Parameter(torch.tensor([math.log(10.0)]))  # t' = log 10: temperature 10 at init
        self.logit_bias = nn.Parameter(torch.tensor([-10.0]))  # b = -10: start near "no pair matches"

    def embed_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.vision(pixels)[1], dim=-1)

    def embed_texts(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text(ids)[1], dim=-1)

    def forward(self, pixels: torch.Tensor, ids: torch.Tensor, labels: torch.Tensor | None = None):
        """(logits_per_image (B_img, B_txt), loss or None). Without labels, image i matches text i."""
        img, txt = self.embed_images(pixels), self.embed_texts(ids)
        logits = img @ txt.t() * self.logit_scale.exp() + self.logit_bias
        if labels is None:
            labels = torch.eye(len(img), len(txt), device=logits.device)
        return logits, sigmoid_loss(logits, labels)
