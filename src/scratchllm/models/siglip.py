"""SigLIP (Zhai et al. 2023): two transformer towers trained so that matching image-text pairs score high.

    image ──conv patches + positions──> [PreNormBlock, bidirectional] x L ──> LayerNorm ──> MAP head ──> z_img
    text  ──tokens + positions───────> [PreNormBlock, bidirectional] x L ──> LayerNorm ──> last token ──> linear ──> z_txt
    logits = exp(t') <z_img/|z_img|, z_txt/|z_txt|> + b;   loss = -sum log sigmoid(label * logits) / n_images

Labels are +1 for a matching pair and -1 otherwise: every pair is its own binary decision, so no
softmax over the batch is needed (the point of the paper). A caption that repeats in the batch
makes several positives in its row.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from scratchllm.config import DERIVED
from scratchllm.errors import ScratchLLMError
from scratchllm.layers import MLP, Attention, Linear, PreNormBlock
from scratchllm.models.limits import check_sizes
from scratchllm.models.spec import HFFormat, ModelSpec, Row, WeightMap, linear, norm, register
from scratchllm.models.tasks import ShapesWorld


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
        check_sizes(self, "image_size", "patch_size", "num_channels", "n_embd", "n_layer", "n_head", "intermediate_size")
        if self.n_embd % self.n_head:
            raise ScratchLLMError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")
        if self.image_size % self.patch_size:
            raise ScratchLLMError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclass
class SiglipTextConfig:
    vocab_size: int = field(default=0, metadata=DERIVED)  # set from the tokenizer
    block_size: int = 16  # max_position_embeddings: captions are padded to this length
    n_embd: int = 128
    n_layer: int = 4
    n_head: int = 4
    intermediate_size: int = 512
    norm_eps: float = 1e-6
    projection_size: Optional[int] = None  # default n_embd

    def __post_init__(self):
        check_sizes(self, "vocab_size", "block_size", "n_embd", "n_layer", "n_head", "intermediate_size", "projection_size")
        if self.n_embd % self.n_head:
            raise ScratchLLMError(f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}")


@dataclass
class SiglipConfig:
    vision: SiglipVisionConfig = field(default_factory=SiglipVisionConfig)
    text: SiglipTextConfig = field(default_factory=SiglipTextConfig)

    def __post_init__(self):
        if (self.text.projection_size or self.text.n_embd) != self.vision.n_embd:
            raise ScratchLLMError("the text projection must have the vision width (text.projection_size = vision.n_embd) "
                                  "so the embeddings can be compared")


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
        pixels = pixels.to(self.patch_embed.weight.dtype)  # images arrive as fp32; a bf16 model computes in bf16
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


# -- spec: SigLIP trains on shapes-world captions and reports held-out retrieval -----------------

def vision_config_from_hf(hf: dict) -> SiglipVisionConfig:
    return SiglipVisionConfig(image_size=hf["image_size"], patch_size=hf["patch_size"], num_channels=hf.get("num_channels", 3),
                              n_embd=hf["hidden_size"], n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
                              intermediate_size=hf["intermediate_size"], norm_eps=hf.get("layer_norm_eps", 1e-6),
                              use_head=hf.get("vision_use_head", True))


def _text_config_from_hf(hf: dict) -> SiglipTextConfig:
    return SiglipTextConfig(vocab_size=hf["vocab_size"], block_size=hf["max_position_embeddings"], n_embd=hf["hidden_size"],
                            n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
                            intermediate_size=hf["intermediate_size"], norm_eps=hf.get("layer_norm_eps", 1e-6),
                            projection_size=hf.get("projection_size") or hf["hidden_size"])


# Hugging Face's encoder layer (layer_norm1, self_attn q/k/v/out, layer_norm2, mlp fc1/fc2) -> our PreNormBlock
ENCODER = (
    *norm("blocks.{i}.ln_1", "encoder.layers.{i}.layer_norm1"), *norm("blocks.{i}.ln_2", "encoder.layers.{i}.layer_norm2"),
    *linear("blocks.{i}.attn.qkv", *(f"encoder.layers.{{i}}.self_attn.{p}_proj" for p in "qkv"), bias=True),
    *linear("blocks.{i}.attn.proj", "encoder.layers.{i}.self_attn.out_proj", bias=True),
    *linear("blocks.{i}.mlp.fc", "encoder.layers.{i}.mlp.fc1", bias=True),
    *linear("blocks.{i}.mlp.proj", "encoder.layers.{i}.mlp.fc2", bias=True),
)
_has_head = lambda c: c.use_head  # noqa: E731
VISION = (
    *linear("patch_embed", "embeddings.patch_embedding", bias=True, transpose=False),  # a Conv2d: the same layout
    Row("pos_embed.weight", ("embeddings.position_embedding.weight",)), *norm("post_norm", "post_layernorm"), *ENCODER,
    Row("head.probe", ("head.probe",), when=_has_head),
    Row("head.attn.qkv.weight", ("head.attention.in_proj_weight",), transpose=True, when=_has_head),  # q, k, v stacked already
    Row("head.attn.qkv.bias", ("head.attention.in_proj_bias",), when=_has_head),
    *linear("head.attn.proj", "head.attention.out_proj", bias=True, when=_has_head),
    *linear("head.mlp.fc", "head.mlp.fc1", bias=True, when=_has_head),
    *linear("head.mlp.proj", "head.mlp.fc2", bias=True, when=_has_head),
    *(Row(f"head.norm.{x}", (f"head.layernorm.{x}",), when=_has_head) for x in ("weight", "bias")),
)
TEXT = (
    Row("token_embed.weight", ("embeddings.token_embedding.weight",)),
    Row("pos_embed.weight", ("embeddings.position_embedding.weight",)),
    *norm("final_norm", "final_layer_norm"), *linear("head", "head", bias=True), *ENCODER,
)


def _shapes_batches(config: SiglipConfig, tokenizer, seed: int):
    from scratchllm.data.vision_language import ShapesBatches

    return ShapesBatches(tokenizer, config.vision.image_size, config.vision.num_patches, config.text.block_size, seed,
                         task="caption", contrastive=True)


def _retrieval(model, batches) -> float:
    from scratchllm.data.vision_language import retrieval_at_1

    return retrieval_at_1(model, batches)


SPEC = register(ModelSpec(
    "siglip", Siglip, SiglipConfig, task=ShapesWorld(_shapes_batches, "r@1", _retrieval),
    finish_config=lambda config, tokenizer: dataclasses.replace(
        config, text=dataclasses.replace(config.text, vocab_size=tokenizer.vocab_size)),
    commands=frozenset({"train", "eval"}), vocab_size=lambda config: config.text.vocab_size,
    hf=HFFormat(("siglip",), lambda hf: SiglipConfig(vision_config_from_hf(hf["vision_config"]), _text_config_from_hf(hf["text_config"])),
                (WeightMap("vision.", ("vision_model.",), VISION, lambda c: c.vision),
                 WeightMap("text.", ("text_model.",), TEXT, lambda c: c.text),
                 WeightMap("", ("",), (Row("logit_scale", ("logit_scale",)), Row("logit_bias", ("logit_bias",)))))),
))

# The vision tower alone, as SiglipVisionModel folders hold it: it encodes images, nothing more.
VISION_SPEC = register(ModelSpec(
    "siglip_vision", SiglipVision, SiglipVisionConfig, task=None, vocab_size=None,
    hf=HFFormat(("siglip_vision_model",), vision_config_from_hf, (WeightMap("", ("vision_model.", ""), VISION),)),
))
