import torch

from scratchllm.generate import TextStream, generate, sample_next
from scratchllm.models import GPT, GPTConfig
from scratchllm.tokenizers import CharTokenizer


def tiny_model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=12, block_size=8, n_layer=1, n_head=2, n_embd=16)).eval()


def test_temperature_zero_is_greedy():
    logits = torch.tensor([[0.1, 2.0, 1.9], [5.0, -1.0, 0.0]])
    assert sample_next(logits, temperature=0).tolist() == [1, 0]


def test_top_k_and_top_p_restrict_the_choice():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0]]).repeat(500, 1)
    assert set(sample_next(logits, top_k=2, generator=g).tolist()) == {0, 1}
    assert set(sample_next(logits, top_k=1, generator=g).tolist()) == {0}
    # probs are about [0.61, 0.22, 0.14, 0.08]: top_p=0.7 keeps the first two, 0.5 only the first
    assert set(sample_next(logits, top_p=0.7, generator=g).tolist()) == {0, 1}
    assert set(sample_next(logits, top_p=0.5, generator=g).tolist()) == {0}


def test_seeded_sampling_repeats_and_context_is_cropped():
    model = tiny_model()
    a = list(generate(model, [1, 2, 3], 30, temperature=1.0, seed=7))
    b = list(generate(model, [1, 2, 3], 30, temperature=1.0, seed=7))
    assert a == b and len(a) == 30  # 33 tokens > block_size 8: cropping keeps it running
    greedy = list(generate(model, [1, 2, 3], 10, temperature=0))
    # greedy equals argmax over a full recomputation on the last block_size tokens
    ids = [1, 2, 3]
    for _ in range(10):
        ids.append(int(model(torch.tensor([ids[-8:]]))[0, -1].argmax()))
    assert greedy == ids[3:]


def test_text_stream_holds_back_partial_utf8():
    class Bytes:
        def token_bytes(self, i):
            return [b"\xc3", b"\xa9", b"a"][i]

    stream = TextStream(Bytes())
    assert stream.push(0) == ""
    assert stream.push(1) == "é"
    assert stream.push(2) == "a"
    assert CharTokenizer.train("é").token_bytes(0) == "é".encode()
