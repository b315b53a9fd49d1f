"""One inference layer: one sampling contract (Sampling), one decoding loop (Engine), one text front
(Pretrained). The same greedy request gives the same tokens through `sample`, `chat --prompt`, Python
and the server; every out-of-range option is the same one-line error in each; a conversation's cache
is reused, with the tokens of a cold prefill."""

import contextlib
import json
import math

import pytest
import torch

import scratchllm
from scratchllm.chat import ChatSession
from scratchllm.cli import main
from scratchllm.errors import ScratchLLMError
from scratchllm.generate import Engine, Request, Sampling, SamplingError, generate, next_token_probs, sample_next

from test_generate import tiny_gpt, tiny_llama

httpx = pytest.importorskip("httpx")

# every field out of its range, once: (field, value)
OUT_OF_RANGE = [("max_tokens", 0), ("temperature", -1.0), ("temperature", math.inf), ("top_k", -1), ("top_p", 0.0),
                ("top_p", 1.5), ("min_p", 1.0), ("min_p", -0.1), ("seed", -1), ("seed", 2**64), ("logprobs", 21),
                ("stop", [""])]
FLAGS = {"max_tokens": "--max-new-tokens", "temperature": "--temperature", "top_k": "--top-k", "top_p": "--top-p",
         "min_p": "--min-p", "seed": "--seed", "stop": "--stop"}


# -- the sampling contract ----------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", OUT_OF_RANGE)
def test_an_out_of_range_option_is_a_one_line_value_error_naming_it(field, value):
    with pytest.raises(ValueError, match=f"^{field} must ") as e:
        Sampling(**{field: value})
    assert isinstance(e.value, SamplingError) and e.value.field == field and "\n" not in str(e.value)
    if field != "logprobs":  # the same error from generate(), before any work
        with pytest.raises(ValueError, match=f"^{field} must "):
            list(generate(tiny_llama(), [1, 2, 3], **{field: value}))


def test_sampling_is_frozen_keyword_only_and_checked_again_on_replace():
    s = Sampling(temperature=0.5, stop="\n\n")
    assert s.stop == ("\n\n",) and s.stop_strings == ("\n\n",) and s.stop_ids == frozenset()
    with pytest.raises(Exception):
        s.temperature = 1.0
    with pytest.raises(TypeError):
        Sampling(16, 0.5)  # keyword-only
    with pytest.raises(SamplingError, match="top_k"):
        s.replace(top_k=-2)
    with pytest.raises(SamplingError, match="stop strings need a tokenizer|stop strings"):
        list(generate(tiny_llama(), [1, 2], 3, stop=["x"]))


def test_next_token_probs_is_the_distribution_sample_next_draws_from():
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.0, -1.0]])
    for s in (Sampling(), Sampling(temperature=0.5), Sampling(top_k=2), Sampling(top_p=0.8), Sampling(min_p=0.2),
              Sampling(temperature=2.0, top_k=4, top_p=0.9, min_p=0.05)):
        probs = next_token_probs(logits, s)[0]
        assert float(probs.sum()) == pytest.approx(1.0)
        draws = torch.bincount(sample_next(logits.repeat(4000, 1), s, torch.Generator().manual_seed(0)), minlength=5)
        assert set(draws.nonzero().flatten().tolist()) <= set(probs.nonzero().flatten().tolist())  # none filtered out
        assert torch.allclose(draws / 4000, probs, atol=0.03)  # and the same shares
    assert next_token_probs(logits, Sampling(temperature=0))[0].tolist() == [1.0, 0.0, 0.0, 0.0, 0.0]


# -- the engine's cache, reused --------------------------------------------------------------------

@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt])
def test_a_prompt_that_extends_a_rows_last_one_prefills_only_the_new_part_and_gets_the_same_tokens(make):
    model = make(block_size=64)
    engine = Engine(model, max_batch=2, max_len=64)
    greedy = Sampling(max_tokens=8, temperature=0)

    def run(prompt, sampling=greedy):
        request, tokens = Request(prompt, sampling), []
        steps = engine.add(request)
        while True:
            tokens += [t.token for t in steps if t.request is request and t.token is not None]
            if not engine.running:
                return request, tokens
            steps = engine.step()

    first_prompt = [5, 6, 7, 8, 9, 10, 11]
    _, first = run(first_prompt)
    second_prompt = first_prompt + first + [12, 13, 14]  # the next turn: what was said, and more
    request, second = run(second_prompt)
    assert request.cached_tokens == len(first_prompt) + len(first) - 1  # all but the last reply token were fed
    assert second == list(generate(model, second_prompt, 8, temperature=0))  # a cold prefill's tokens
    # sampled, the same seed gives the same tokens, cached or cold
    request, sampled = run(second_prompt + [15], Sampling(max_tokens=8, temperature=1.0, top_p=0.9, seed=3))
    assert request.cached_tokens > 0
    assert sampled == list(generate(model, second_prompt + [15], 8, temperature=1.0, top_p=0.9, seed=3))
    # a prompt that shares nothing takes the other row: the conversation's prefix stays for later
    request, _ = run([40, 41, 42])
    assert request.cached_tokens == 0
    request, _ = run(second_prompt + [15, 16])
    assert request.cached_tokens > len(second_prompt)


@pytest.fixture(scope="module")
def llama_run(trained):
    return trained("llama-bpe-baby")


def test_chat_prefills_only_the_new_turn_and_says_what_a_cold_session_says(llama_run):
    import dataclasses

    lm = scratchllm.load_pretrained(llama_run)
    # room for a few turns: a Llama's context is a number in its config (RoPE has no table of positions)
    lm.model.config = dataclasses.replace(lm.model.config, block_size=128)
    greedy = Sampling(max_tokens=6, temperature=0)
    warm, cold = ChatSession(lm, sampling=greedy), ChatSession(lm, sampling=greedy, reuse_cache=False)
    for turn in ("Hail, good sir.", "Whither goest thou?", "Then fare thee well."):
        assert "".join(warm.reply(turn)) == "".join(cold.reply(turn))
        assert cold.last.cached_tokens == 0
    assert warm.last.cached_tokens > warm.last.prompt_tokens // 2  # the earlier turns came from the cache
    assert warm.history == cold.history


# -- one request, four ways --------------------------------------------------------------------------

@contextlib.contextmanager
def served(lm):
    from scratchllm.serve import create_app, in_background

    with in_background(create_app(lm, "m")) as url:
        yield url


def four_ways(capsys, lm, source: str, user: str, n: int) -> dict[str, str]:
    """The greedy reply to one user message through `sample` (its rendered prompt), `chat --prompt`, Python
    and the server, each as text."""
    messages = [{"role": "user", "content": user}]
    prompt = lm.tokenizer.decode(lm.encode_chat(messages))
    device = ["--device", "cpu", "--precision", "fp32"]
    out = {}
    assert main(["sample", "--checkpoint", source, "--prompt", prompt, "--max-new-tokens", str(n), "--temperature", "0",
                 *device]) == 0
    text = capsys.readouterr().out
    assert text.startswith(prompt) and text.endswith("\n")
    out["sample"] = text[len(prompt):-1]
    assert main(["chat", "--model", source, "--prompt", user, "--max-new-tokens", str(n), "--temperature", "0", *device]) == 0
    out["chat"] = capsys.readouterr().out[:-1]
    reply = lm.complete(lm.encode_chat(messages), max_tokens=n, temperature=0)
    out["python"] = reply.text
    with served(lm) as url:
        r = httpx.post(url + "/v1/chat/completions", timeout=120,
                       json={"model": "m", "messages": messages, "max_tokens": n, "temperature": 0})
    assert r.status_code == 200, r.text
    out["server"] = r.json()["choices"][0]["message"]["content"]
    assert r.json()["usage"]["completion_tokens"] == len(reply.tokens) + (reply.finish == "stop" and len(reply.tokens) < n)
    return out


def test_the_same_greedy_request_gives_the_same_reply_four_ways_on_a_trained_run(capsys, llama_run):
    lm = scratchllm.load_pretrained(llama_run)
    capsys.readouterr()
    out = four_ways(capsys, lm, str(llama_run), "Hail!", 8)
    assert len(set(out.values())) == 1 and out["python"], out


def test_the_same_greedy_request_gives_the_same_reply_four_ways_on_smollm2(capsys, monkeypatch, smollm2_cache):
    monkeypatch.setenv("SCRATCHLLM_CACHE", str(smollm2_cache))
    lm = scratchllm.load_pretrained("smollm2-135m-instruct")
    out = four_ways(capsys, lm, "smollm2-135m-instruct", "What is the capital of France?", 12)
    assert len(set(out.values())) == 1 and "Paris" in out["python"], out


# -- out of range, everywhere ------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [c for c in OUT_OF_RANGE if c[0] != "logprobs"])
def test_the_cli_names_the_flag_of_an_out_of_range_option(capsys, llama_run, field, value):
    value = value[0] if isinstance(value, list) else value
    code = main(["sample", "--checkpoint", str(llama_run), "--prompt", "hi", FLAGS[field], str(value)])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: {FLAGS[field]} must "), err


def test_the_server_answers_an_out_of_range_option_with_a_400_naming_it(llama_run):
    lm = scratchllm.load_pretrained(llama_run)
    names = {"max_tokens": "max_tokens", "logprobs": "logprobs"}
    with served(lm) as url:
        for field, value in OUT_OF_RANGE:
            if value == math.inf:
                continue  # not JSON
            body = {"model": "m", "prompt": "hi", names.get(field, field): value}
            r = httpx.post(url + "/v1/completions", json=body, timeout=30)
            error = r.json()["error"]
            assert r.status_code == 400 and error["param"] == field and error["type"] == "invalid_request_error", r.text
            assert error["message"].split(", got")[0] == str(_error(field, value)).split(", got")[0]
        r = httpx.post(url + "/v1/chat/completions", timeout=30,
                       json={"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 0})
        assert r.status_code == 400 and r.json()["error"]["param"] == "max_completion_tokens"


def _error(field, value) -> SamplingError:
    with pytest.raises(SamplingError) as e:
        Sampling(**{field: value})
    return e.value


# -- what used to crash the sampling path ------------------------------------------------------------

def test_a_checkpoint_of_nan_weights_is_refused_when_loaded(tmp_path, llama_run, capsys):
    import shutil

    from safetensors.torch import load_file, save_file

    run = tmp_path / "nan"
    shutil.copytree(llama_run / "latest", run)
    weights = load_file(str(run / "model.safetensors"))
    save_file({k: torch.full_like(v, math.nan) for k, v in weights.items()}, str(run / "model.safetensors"))
    code = main(["sample", "--checkpoint", str(run), "--prompt", "hi"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "holds NaN or infinite values" in err, err


def test_a_hugging_face_folder_whose_tokenizer_outgrows_the_embedding_is_refused_when_loaded(tmp_path, llama_run, capsys):
    from scratchllm.interop.hf import save_hf
    from scratchllm.tokenizers import BPETokenizer

    lm = scratchllm.load_pretrained(llama_run)
    folder = save_hf(lm.model, tmp_path / "hf", lm.tokenizer)
    tok = lm.tokenizer
    bigger = BPETokenizer(tok.ranks, tok.pattern, {**tok.special_tokens, "<|extra|>": tok.vocab_size + 40})
    from scratchllm.tokenizers.formats import save_hf as save_tokenizer

    save_tokenizer(bigger, folder / "tokenizer.json")
    capsys.readouterr()
    code = main(["sample", "--checkpoint", str(folder), "--prompt", "<|extra|>"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "does not belong to this model" in err, err
    with pytest.raises(ScratchLLMError, match="outside the model's vocabulary"):  # ids in Python: the engine says so
        lm.complete([tok.vocab_size + 5], max_tokens=2)
    assert json.loads((folder / "config.json").read_text())["vocab_size"] == tok.vocab_size
