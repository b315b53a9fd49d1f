import pytest
import torch

from conftest import DEVICES
from scratchllm.generate import Sampling, generate, next_token_probs, sample_next
from scratchllm.models import GPT, GPTConfig
from scratchllm.pretrained import TextStream
from scratchllm.tokenizers import CharTokenizer


def tiny_model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=12, block_size=8, n_layer=1, n_head=2, n_embd=16)).eval()


def test_temperature_zero_is_greedy():
    logits = torch.tensor([[0.1, 2.0, 1.9], [5.0, -1.0, 0.0]])
    assert sample_next(logits, Sampling(temperature=0)).tolist() == [1, 0]


@pytest.mark.parametrize("device", DEVICES)
def test_a_tiny_temperature_samples_the_likeliest_token_on_every_device(device):
    """temperature=1e-45: CUDA divides by a scalar through its reciprocal (inf in fp32), so the best token's
    logit became 0 x inf = NaN and the draw a device-side assert that ended the process."""
    logits = torch.tensor([[0.1, 2.0, 1.9, -3.0], [5.0, -1.0, 0.0, 4.999]], device=device)
    g = torch.Generator(device=device).manual_seed(0)
    for t in (1e-45, 1e-38, 1e-30, 1e-9):
        probs = next_token_probs(logits, Sampling(temperature=t))
        assert torch.equal(probs.cpu(), torch.tensor([[0.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]])), t
        assert sample_next(logits, Sampling(temperature=t), g).tolist() == [1, 0], t


def test_top_k_top_p_and_min_p_restrict_the_choice():
    g = torch.Generator().manual_seed(0)
    logits = torch.tensor([[2.0, 1.0, 0.5, 0.0]]).repeat(500, 1)
    assert set(sample_next(logits, Sampling(top_k=2), g).tolist()) == {0, 1}
    assert set(sample_next(logits, Sampling(top_k=1), g).tolist()) == {0}
    # probs are about [0.61, 0.22, 0.14, 0.08]: top_p=0.7 keeps the first two, 0.5 only the first
    assert set(sample_next(logits, Sampling(top_p=0.7), g).tolist()) == {0, 1}
    assert set(sample_next(logits, Sampling(top_p=0.5), g).tolist()) == {0}
    # min_p=0.3 keeps tokens at least 0.3 x 0.61 likely: the first two
    assert set(sample_next(logits, Sampling(min_p=0.3), g).tolist()) == {0, 1}


def test_seeded_sampling_repeats_and_context_is_cropped():
    model = tiny_model()
    a = list(generate(model, [1, 2, 3], 30, temperature=1.0, seed=7))
    b = list(generate(model, [1, 2, 3], max_new_tokens=30, sampling=Sampling(temperature=1.0, seed=7)))
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
    assert stream.push(3) == ""  # an id with no text (a padded embedding row): nothing, not a crash
    assert CharTokenizer.train("é").token_bytes(0) == "é".encode()


# -- the KV-cache engine --------------------------------------------------------------------------

import pytest  # noqa: E402

from scratchllm.generate import generate_batch  # noqa: E402
from scratchllm.models import Llama, LlamaConfig  # noqa: E402


def tiny_llama(block_size=32):
    torch.manual_seed(0)
    return Llama(LlamaConfig(vocab_size=50, block_size=block_size, n_layer=2, n_head=4, n_kv_head=2, n_embd=32,
                             rope_theta=10000.0)).eval()


def tiny_gpt(block_size=32):
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=50, block_size=block_size, n_layer=2, n_head=2, n_embd=32)).eval()


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt])
def test_cached_decoding_equals_full_recomputation(make):
    model = make()
    prompts = [[1, 2, 3, 4, 5], [7], [9, 8, 7, 6, 5, 4, 3, 2, 1]]
    for kwargs in (dict(temperature=0), dict(temperature=1.0, top_k=10, seed=3), dict(temperature=0.8, top_p=0.9, seed=5)):
        cached = list(generate_batch(model, prompts, 20, use_cache=True, **kwargs))
        full = list(generate_batch(model, prompts, 20, use_cache=False, **kwargs))
        assert cached == full
    # the logits themselves agree step by step with a plain full forward pass
    ids = [3, 1, 4, 1, 5]
    cache = model.new_cache(1, 32, torch.float32, torch.device("cpu"))
    step_logits = [model(torch.tensor([ids]), cache=cache)[:, -1]]
    for t in [9, 2, 6]:
        step_logits.append(model(torch.tensor([[t]]), cache=cache)[:, -1])
        ids.append(t)
    full_logits = model(torch.tensor([ids]))[0, 4:]
    torch.testing.assert_close(torch.cat(step_logits), full_logits, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt])
def test_a_padded_batch_generates_what_each_prompt_does_alone(make):
    model = make()
    prompts = [[1, 2, 3, 4, 5, 6, 7], [7, 3], [11, 12, 13, 14]]
    together = list(zip(*generate_batch(model, prompts, 12, temperature=0)))
    for row, prompt in zip(together, prompts):
        alone = [step[0] for step in generate_batch(model, [prompt], 12, temperature=0)]
        assert list(row) == alone


def test_stop_tokens_min_p_and_sliding_past_the_context():
    model = tiny_llama(block_size=16)
    greedy = list(generate(model, [1, 2, 3], 10, temperature=0))
    stop = greedy[4]
    assert list(generate(model, [1, 2, 3], 10, temperature=0, stop_tokens=[stop])) == greedy[:greedy.index(stop)]
    assert list(generate(model, [1, 2, 3], 10, temperature=0, stop=[stop])) == greedy[:greedy.index(stop)]
    # a temperature too small to divide by (logits / 1e-45 is inf) samples the likeliest token
    assert list(generate(model, [1, 2, 3], 10, temperature=1e-45, seed=0)) == greedy
    long = list(generate(model, [1, 2, 3], 40, temperature=0))  # 43 tokens > 16: slides, keeps going
    assert len(long) == 40 and long[:10] == greedy
    stopped = list(generate(model, [1, 2, 3], 40, temperature=0, on_full="stop"))  # or stops with the context full
    assert stopped == long[:16 - 3]
    with pytest.raises(Exception, match="at least one token"):
        list(generate_batch(model, [[1], []], 3))
