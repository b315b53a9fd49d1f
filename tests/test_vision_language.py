"""The shapes world, the image processor, PaliGemma's cached answering, and the two VL presets end to end."""

import numpy as np
import pytest
import torch
from PIL import Image

from scratchllm.cli import main
from scratchllm.data import shapes
from scratchllm.data.images import ImageProcessor
from scratchllm.data.vision_language import ShapesBatches, paligemma_inputs, shapes_tokenizer
from scratchllm.errors import ScratchLLMError
from scratchllm.models import GemmaConfig, PaliGemma, PaliGemmaConfig
from scratchllm.models.siglip import SiglipVisionConfig


def preset_tokenizer():
    from scratchllm.train.presets import get_preset

    return shapes_tokenizer(get_preset("paligemma-shapes").tokenizer)


def test_shapes_world_is_seeded_and_held_out_by_content():
    a, b = shapes.example(7), shapes.example(7)
    assert a.scene == b.scene and a.prompt == b.prompt and np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert a.image.size == (32, 32)
    for e in (shapes.example(i) for i in range(200)):
        assert any((e.prompt, e.answer) in qa for qa in shapes.questions(e.scene).values())
        assert len({t.cell for t in e.scene}) == len(e.scene)
    batches = ShapesBatches(preset_tokenizer(), 32, 64, 80, seed=0, n_held_out=64)
    held = {(e.scene, e.prompt) for e in batches.held_out}
    assert not any((e.scene, e.prompt) in held for e in batches._train_examples(500))


def test_colour_and_shape_words_are_single_tokens():
    tok = preset_tokenizer()
    for word in list(shapes.COLORS) + list(shapes.SHAPES):
        assert len(tok.encode(" " + word)) == 1, word
    for answer in list(shapes.CELLS.values()) + list(shapes.COUNTS.values()) + ["yes", "no"]:
        assert tok.decode(tok.encode(answer)) == answer


def test_shapes_tokenizer_needs_its_special_tokens():
    from scratchllm.tokenizers import TokenizerConfig

    with pytest.raises(ScratchLLMError, match="needs the special tokens <bos>, <eos>, <pad>"):
        shapes_tokenizer(TokenizerConfig(kind="bpe", vocab_size=300, pattern="gpt2", special_tokens=("<image>",)))


def test_image_processor(tmp_path):
    proc = ImageProcessor(32)
    x = proc(Image.new("RGB", (64, 48), (255, 0, 0)))
    assert x.shape == (3, 32, 32) and x[0].min() == 1.0 and x[1].max() == -1.0
    (tmp_path / "not.png").write_text("not an image")
    with pytest.raises(ScratchLLMError, match="is not an image"):
        proc.load(tmp_path / "not.png")


def tiny_paligemma(vocab):
    torch.manual_seed(0)
    return PaliGemma(PaliGemmaConfig(
        SiglipVisionConfig(image_size=16, patch_size=8, n_embd=32, n_layer=1, n_head=2, intermediate_size=64, use_head=False),
        GemmaConfig(vocab_size=vocab, block_size=64, n_layer=2, n_head=2, n_kv_head=1, n_embd=32, head_dim=16,
                    intermediate_size=64),
        image_token_id=0)).eval()


def test_cached_answers_equal_full_recomputation():
    tok = preset_tokenizer()
    model = tiny_paligemma(tok.vocab_size)
    model.config.image_token_id = tok.special_tokens["<image>"]
    pixels = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    prompts = ["how many shapes?", "where is the red circle?"]
    cached = model.answer(tok, pixels, prompts, max_new_tokens=6)
    for i, prompt in enumerate(prompts):  # recompute everything at every step, one row at a time
        ids, prefix, valid, _ = paligemma_inputs(tok, 4, [prompt], None, 4 + 1 + len(tok.encode(prompt + "\n")))
        out = []
        for _ in range(6):
            logits = model(ids, pixels[i:i + 1], prefix, valid)
            t = int(logits[0, -1].argmax())
            if t == tok.special_tokens["<eos>"]:
                break
            out.append(t)
            ids = torch.cat([ids, torch.tensor([[t]])], 1)
            prefix = torch.cat([prefix, torch.tensor([[False]])], 1)
            valid = torch.cat([valid, torch.tensor([[True]])], 1)
        assert cached[i] == tok.decode(out)


def test_paligemma_shapes_trains_and_answers_from_the_cli(tmp_path, capsys):
    from conftest import TINY

    out = tmp_path / "pg"
    assert main(["train", "--preset", "paligemma-shapes", "--out", str(out), "--max-steps", "6", "--no-progress",
                 *sum((["--set", s] for s in TINY["paligemma-shapes"] + ["eval_interval=6"]), [])]) == 0
    printed = capsys.readouterr().out
    assert "held-out exact_match" in printed and "scratchllm ask" in printed
    image = tmp_path / "scene.png"
    shapes.example(5).image.save(image)
    assert main(["ask", "--checkpoint", str(out), "--image", str(image), "--prompt", "how many shapes?"]) == 0
    import scratchllm

    lm = scratchllm.load_pretrained(out)
    pixels = ImageProcessor(32).load(image)[None]
    assert capsys.readouterr().out == lm.model.answer(lm.tokenizer, pixels, ["how many shapes?"])[0] + "\n"
    (tmp_path / "bad.png").write_bytes(b"\x00\x01 not a png")
    assert main(["ask", "--checkpoint", str(out), "--image", str(tmp_path / "bad.png"), "--prompt", "hi"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is not an image" in err


def test_siglip_shapes_trains_and_reports_retrieval(tmp_path, capsys):
    from conftest import TINY

    assert main(["train", "--preset", "siglip-shapes", "--out", str(tmp_path / "s"), "--max-steps", "4", "--no-progress",
                 *sum((["--set", s] for s in TINY["siglip-shapes"] + ["eval_interval=4"]), [])]) == 0
    assert "held-out r@1" in capsys.readouterr().out
