"""SigLIP against transformers' SiglipVisionModel and SiglipModel (tiny random configs, <= 1e-5)."""

import pytest
import torch

from scratchllm.interop.hf import load_hf_folder
from scratchllm.models.siglip import Siglip, SiglipConfig, SiglipTextConfig, SiglipVisionConfig, sigmoid_loss

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

VISION = dict(hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4, image_size=16,
              patch_size=4, num_channels=3, initializer_range=0.2)
TEXT = dict(vocab_size=61, hidden_size=48, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=12, initializer_range=0.2)


def pixels(n=3):
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("use_head", [True, False])
def test_vision_tower_matches(tmp_path, use_head):
    torch.manual_seed(0)
    hf = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**VISION, vision_use_head=use_head)).eval()
    hf.save_pretrained(tmp_path)
    ours = load_hf_folder(tmp_path)[0]
    with torch.no_grad():
        theirs = hf(pixel_values=pixels())
        features, pooled = ours(pixels())
    assert (features - theirs.last_hidden_state).abs().max() <= 1e-5
    if use_head:
        assert (pooled - theirs.pooler_output).abs().max() <= 1e-5
    else:
        assert pooled is None


def test_two_tower_model_and_sigmoid_loss_match(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.SiglipConfig(text_config=TEXT, vision_config=VISION)
    hf = transformers.SiglipModel(cfg).eval()
    with torch.no_grad():
        hf.logit_scale.fill_(1.3)
        hf.logit_bias.fill_(-2.0)
    hf.save_pretrained(tmp_path)
    ours = load_hf_folder(tmp_path)[0]
    ids = torch.randint(61, (3, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        theirs = hf(input_ids=ids, pixel_values=pixels(), return_loss=True)
        logits, loss = ours(pixels(), ids)
    assert (logits - theirs.logits_per_image).abs().max() <= 1e-5
    assert abs(loss.item() - theirs.loss.item()) <= 1e-5


def test_init_and_repeated_captions():
    model = Siglip(SiglipConfig(SiglipVisionConfig(image_size=8, patch_size=4, n_embd=32, n_layer=1, n_head=2,
                                                   intermediate_size=64),
                                SiglipTextConfig(vocab_size=20, block_size=6, n_embd=32, n_layer=1, n_head=2,
                                                 intermediate_size=64)))
    assert model.logit_scale.exp().item() == pytest.approx(10.0) and model.logit_bias.item() == -10.0
    logits = torch.tensor([[2.0, -1.0], [0.5, 3.0]])
    labels = torch.tensor([[1, 1], [0, 1]])  # image 0 matches both captions (they repeat)
    expected = -(torch.nn.functional.logsigmoid(torch.tensor([2.0, -1.0])).sum()
                 + torch.nn.functional.logsigmoid(torch.tensor([-0.5, 3.0])).sum()) / 2
    assert sigmoid_loss(logits, labels).item() == pytest.approx(expected.item())
