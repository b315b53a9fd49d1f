"""PaliGemma against transformers' PaliGemmaForConditionalGeneration (tiny random config, <= 1e-5)."""

import pytest
import torch

from scratchllm.interop.hf import load_hf_folder
from scratchllm.layers import padded_causal_mask

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

N_PATCHES, IMAGE_TOKEN, VOCAB = 16, 60, 64


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.PaliGemmaConfig(
        vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                           image_size=16, patch_size=4, projection_dim=48, initializer_range=0.2),
        text_config=dict(model_type="gemma", hidden_size=48, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=1, head_dim=12, vocab_size=VOCAB,
                         initializer_range=0.2),
        image_token_index=IMAGE_TOKEN, projection_dim=48)
    hf = transformers.PaliGemmaForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name and "language_model" in name:
                p.uniform_(-0.5, 0.5)
    folder = tmp_path_factory.mktemp("pg")
    hf.save_pretrained(folder)
    return hf, load_hf_folder(folder)[0]


def batch():
    g = torch.Generator().manual_seed(3)
    prefix_len, suffix_len = 5, 4
    text = torch.randint(1, 50, (2, prefix_len + suffix_len), generator=g)
    ids = torch.cat([torch.full((2, N_PATCHES), IMAGE_TOKEN), text], dim=1)
    token_type = torch.cat([torch.zeros(2, N_PATCHES + prefix_len), torch.ones(2, suffix_len)], dim=1).long()
    labels = ids.masked_fill(token_type == 0, -100)
    pixels = torch.randn(2, 3, 16, 16, generator=g)
    return ids, token_type, labels, pixels


def test_logits_and_loss_match(models):
    hf, ours = models
    ids, token_type, labels, pixels = batch()
    with torch.no_grad():
        theirs = hf(input_ids=ids, pixel_values=pixels, token_type_ids=token_type, labels=labels,
                    attention_mask=torch.ones_like(ids))
        logits, loss = ours(ids, pixels, prefix=token_type == 0, labels=labels)
    assert (logits - theirs.logits).abs().max() <= 1e-5
    assert abs(loss.item() - theirs.loss.item()) <= 1e-5


def test_prefix_is_bidirectional_and_suffix_is_causal(models):
    _, ours = models
    ids, token_type, labels, pixels = batch()
    prefix = token_type == 0
    with torch.no_grad():
        base = ours(ids, pixels, prefix)
        later_suffix = ids.clone()
        later_suffix[:, -1] = (later_suffix[:, -1] + 1) % 50 + 1
        changed = ours(later_suffix, pixels, prefix)
        assert torch.allclose(changed[:, :-1], base[:, :-1], atol=1e-6)  # a suffix token changes nothing before it
        later_prefix = ids.clone()
        last_prefix = N_PATCHES + 4
        later_prefix[:, last_prefix] = (later_prefix[:, last_prefix] + 1) % 50 + 1
        changed = ours(later_prefix, pixels, prefix)
        assert not torch.allclose(changed[:, N_PATCHES], base[:, N_PATCHES], atol=1e-4)  # earlier prefix sees it


def test_mask_shape_and_padding():
    valid = torch.tensor([[False, True, True, True]])
    prefix = torch.tensor([[False, True, True, False]])
    m = padded_causal_mask(valid, 4, prefix)[0, 0]
    assert m.tolist() == [[True, False, False, False],  # padding sees itself only
                          [False, True, True, False],  # prefix sees the prefix both ways
                          [False, True, True, False],
                          [False, True, True, True]]  # suffix: causal over real tokens
