"""The server (scratchllm serve), with real parts: the official `openai` client against a live server on
127.0.0.1, raw HTTP for what a client library would never send, the real `scratchllm serve` command in a
subprocess, and Debian's chromium driven by Playwright for the playground page. The engine under it
(generate.Engine) is tested first on its own: batched rows give exactly what each request gives alone."""

import contextlib
import dataclasses
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from scratchllm.pretrained import load_pretrained
from scratchllm.generate import Engine, Request, Sampling, generate
from scratchllm.layers import KVCache
from scratchllm.models import Bigram, BigramConfig

from test_generate import tiny_gpt, tiny_llama

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

NAME = "baby-llama"
KEY = "sk-test-key"


# -- the engine -----------------------------------------------------------------------------------

def run_engine(engine: Engine, requests: list[Request], seed: int = 0) -> dict[int, list[int]]:
    """Requests join at random steps (a few at a time, while rows are free); their tokens by id."""
    rng, out, pending = random.Random(seed), {id(r): [] for r in requests}, list(requests)
    while pending or engine.running:
        steps = engine.add(pending.pop(0)) if pending and engine.free_rows and rng.random() < 0.5 else engine.step()
        for t in steps:
            if t.token is not None:
                out[id(t.request)].append(t.token)
    return out


def random_bigram():
    torch.manual_seed(0)
    model = Bigram(BigramConfig(vocab_size=50, block_size=8)).eval()
    torch.nn.init.normal_(model.table.weight)
    return model


@pytest.mark.parametrize("make", [tiny_llama, tiny_gpt, random_bigram])
def test_engine_rows_generate_what_each_request_does_alone(make):
    model = make()
    rng = random.Random(1)
    requests = []
    for i in range(14):
        prompt = [rng.randrange(50) for _ in range(rng.randint(1, 12))]
        options = dict(temperature=0) if i % 2 else dict(temperature=0.9, top_k=20, top_p=0.95, seed=i)
        requests.append(Request(prompt, Sampling(max_tokens=rng.randint(1, 32 - len(prompt)), stop=[7], **options)))
    engine = Engine(model, max_batch=5, max_len=32)
    out = run_engine(engine, requests)
    for r in requests:  # token for token, greedy and seeded sampling alike
        assert out[id(r)] == list(generate(model, r.prompt, sampling=r.sampling))
    assert engine.free_rows == 5 and not engine.running


def test_engine_logprobs_cancellation_and_limits():
    model = tiny_llama()
    engine = Engine(model, max_batch=2, max_len=16)
    r = Request([1, 2, 3], Sampling(max_tokens=4, temperature=0, logprobs=3))
    first = engine.add(r)[0]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([[1, 2, 3]]))[0, -1], -1)
    assert first.token == int(logp.argmax()) and first.top_logprobs[0][0] == first.token
    assert first.logprob == pytest.approx(float(logp.max()), abs=1e-5)
    assert [lp for _, lp in first.top_logprobs] == sorted((lp for _, lp in first.top_logprobs), reverse=True)
    other = Request([4, 5], Sampling(max_tokens=10, temperature=0))
    engine.add(other)
    other.cancelled = True  # dropped at the next step, its row freed
    assert [t.request for t in engine.step()] == [r] and engine.free_rows == 1
    with pytest.raises(Exception, match="at least one token"):
        engine.add(Request([], Sampling(max_tokens=3)))
    with pytest.raises(Exception, match="outside the model's vocabulary"):
        engine.add(Request([1, 50], Sampling(max_tokens=3)))
    stopping = Engine(model, max_batch=1, max_len=16, on_full="stop")
    with pytest.raises(Exception, match="leaves no room for a reply"):
        stopping.add(Request([1] * 16, Sampling(max_tokens=3)))
    steps = [stopping.add(Request([1] * 10, Sampling(max_tokens=20, temperature=0)))]
    while stopping.running:
        steps.append(stopping.step())
    assert len(steps) == 6 and steps[-1][0].finish == "length"  # 10 + 6 tokens fill the 16 positions


def test_kv_cache_rows_share_memory_and_write_where_each_row_is():
    cache = KVCache(n_layers=1, batch=3, n_kv_heads=1, max_len=6, head_dim=2)
    one = cache.rows(1, 2)  # a request prefilled alone into row 1
    keys, _ = one.update(0, torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2))
    one.advance(2)
    assert keys.shape == (1, 1, 2, 2) and cache.k[0, 1, 0, :2].sum() == 4 and cache.k[0, 0].sum() == 0
    cache.write_rows_at(torch.tensor([0, 2, 4]), span=5)  # then each row writes at its own length
    k = torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 1, 2) + 10
    keys, _ = cache.update(0, k, k)
    cache.advance(1)
    assert keys.shape == (3, 1, 5, 2) and cache.row_positions is None
    assert cache.k[0, 0, 0, 0, 0] == 10 and cache.k[0, 1, 0, 2, 0] == 11 and cache.k[0, 2, 0, 4, 0] == 12
    assert cache.k[0, 1, 0, :2].sum() == 4  # row 1's prompt is untouched


# -- a live server --------------------------------------------------------------------------------

CONTEXT = 128


def load_llama(run, end_of_reply: bool = True):
    """The tiny Llama run, its context lifted from 32 to CONTEXT positions: room for replies. A Llama's
    context is a number in its config (RoPE has no table of positions); a GPT's is its wpe table.
    The run has had a few steps of training, so <|endoftext|> is about as likely as any of its 300 tokens:
    a sampled reply ends early now and then. `end_of_reply=False` serves a copy that never stops at it,
    for tests that need a reply to run on while a client acts."""
    lm = load_pretrained(run)
    lm.model.config = dataclasses.replace(lm.model.config, block_size=CONTEXT)
    if not end_of_reply:
        lm.stop_tokens = ()
    return lm


@contextlib.contextmanager
def live(run, name=NAME, end_of_reply: bool = True, **options):
    """A server of the tiny Llama on a free port of 127.0.0.1 in this process: (url, its state)."""
    from scratchllm.serve import create_app, in_background

    app = create_app(load_llama(run, end_of_reply), name, **options)
    with in_background(app) as url:
        yield url, app.state.server


@contextlib.contextmanager
def slow_steps(server, seconds: float):
    """Each engine step takes at least `seconds`: time for a client to act in the middle of a reply."""
    step = server.engine.step

    def slow():
        time.sleep(seconds)
        return step()

    server.engine.step = slow
    try:
        yield
    finally:
        server.engine.step = step


@pytest.fixture(scope="module")
def llama_run(trained):
    return trained("llama-bpe-baby")


@pytest.fixture(scope="module")
def llama_lm(llama_run):
    """A second copy of the served model, to compute what each request gives alone."""
    return load_llama(llama_run)


@pytest.fixture(scope="module")
def server(llama_run):
    with live(llama_run, max_batch=4) as (url, state):
        yield url, state


@pytest.fixture
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=30)


def chat_ids(lm, messages):
    from scratchllm.chat_template import render_chat

    return lm.tokenizer.encode(render_chat(messages, lm.chat_template, **lm.template_tokens), allowed_special="all")


def alone(lm, ids, n, **options) -> str:
    tokens = list(generate(lm.model, ids, n, stop_tokens=lm.stop_tokens, **options))
    return lm.tokenizer.decode_bytes(tokens).decode("utf-8", errors="replace"), tokens


def test_models_completions_and_chat_with_the_openai_client(client, llama_lm):
    assert [m.id for m in client.models.list().data] == [NAME]
    assert client.models.retrieve(NAME).id == NAME
    ids = llama_lm.tokenizer.encode("ROMEO:")
    c = client.completions.create(model=NAME, prompt="ROMEO:", max_tokens=10, temperature=0)
    text, tokens = alone(llama_lm, ids, 10, temperature=0)
    assert c.choices[0].text == text and c.object == "text_completion"
    assert c.usage.prompt_tokens == len(ids) and c.usage.completion_tokens == len(tokens) + (len(tokens) < 10)
    assert c.choices[0].finish_reason == ("length" if len(tokens) == 10 else "stop")
    assert client.completions.create(model=NAME, prompt=ids, max_tokens=10, temperature=0).choices[0].text == text

    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who art thou?"}]
    r = client.chat.completions.create(model=NAME, messages=messages, max_tokens=6, temperature=0)
    ids = chat_ids(llama_lm, messages)
    assert r.choices[0].message.content == alone(llama_lm, ids, 6, temperature=0)[0]
    assert r.choices[0].message.role == "assistant" and r.usage.prompt_tokens == len(ids)
    # no max_tokens: as many as the context has room for
    r = client.chat.completions.create(model=NAME, messages=messages, temperature=0)
    assert r.usage.total_tokens <= CONTEXT and (r.choices[0].finish_reason == "stop" or r.usage.total_tokens == CONTEXT)


def test_streaming_with_usage_equals_the_whole_reply(client):
    messages = [{"role": "user", "content": "Speak, friend."}]
    whole = client.chat.completions.create(model=NAME, messages=messages, max_tokens=8, temperature=0)
    chunks = list(client.chat.completions.create(model=NAME, messages=messages, max_tokens=8, temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == \
        [whole.choices[0].finish_reason]
    # the same counts (how many prompt tokens the cache held from the request before may differ)
    counts = lambda usage: {k: v for k, v in usage.model_dump().items() if k != "prompt_tokens_details"}  # noqa: E731
    assert chunks[-1].choices == [] and counts(chunks[-1].usage) == counts(whole.usage)
    texts = list(client.completions.create(model=NAME, prompt="KING:", max_tokens=8, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in texts) == \
        client.completions.create(model=NAME, prompt="KING:", max_tokens=8, temperature=0).choices[0].text


def test_stop_strings_cut_the_reply_before_them(client):
    full = client.completions.create(model=NAME, prompt="To be", max_tokens=20, temperature=0).choices[0].text
    stop = full[4:6]
    cut = full[:full.find(stop)]
    for stream in (False, True):
        r = client.completions.create(model=NAME, prompt="To be", max_tokens=20, temperature=0, stop=[stop, "@@@@"],
                                      stream=stream)
        chunks = list(r) if stream else [r]
        assert "".join(c.choices[0].text for c in chunks) == cut
        assert chunks[-1].choices[0].finish_reason == "stop"


def test_same_seed_same_reply_whatever_runs_beside_it(client, server, llama_lm):
    import concurrent.futures

    def ask(seed):
        return client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Sing."}], max_tokens=12,
                                              temperature=1.0, top_p=0.95, seed=seed).choices[0].message.content

    first = ask(5)
    with concurrent.futures.ThreadPoolExecutor(6) as pool:  # the same requests, now among others
        together = list(pool.map(ask, [5, 6, 5, 7, 5, 8]))
    assert together[0] == together[2] == together[4] == first
    assert len({first, *together[1::2]}) > 1
    ids = chat_ids(llama_lm, [{"role": "user", "content": "Sing."}])
    assert first == alone(llama_lm, ids, 12, temperature=1.0, top_p=0.95, seed=5)[0]  # and what generate() gives


def test_concurrent_greedy_requests_get_what_they_get_alone(server, llama_lm):
    import asyncio

    prompts = ["ROMEO:", "JULIET: O", "First Citizen:\nBefore we proceed", "A", "What, ho!", "KING HENRY:", "Ay", "No"]

    async def main():
        client = openai.AsyncOpenAI(base_url=server[0] + "/v1", api_key="unused", max_retries=0, timeout=60)

        async def one(prompt):
            stream = await client.completions.create(model=NAME, prompt=prompt, max_tokens=16, temperature=0, stream=True)
            return "".join([c.choices[0].text async for c in stream])

        return await asyncio.gather(*(one(p) for p in prompts))

    for prompt, text in zip(prompts, asyncio.run(main())):
        assert text == alone(llama_lm, llama_lm.tokenizer.encode(prompt), 16, temperature=0)[0]


def test_logprobs_in_both_shapes(client):
    r = client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
                                       temperature=0, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens - (r.choices[0].finish_reason == "stop")
    for entry in content:  # greedy: the token taken is the likeliest
        assert len(entry.top_logprobs) == 3 and entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
        assert entry.logprob <= 0 and bytes(entry.bytes).decode("utf-8", "replace") == entry.token
    c = client.completions.create(model=NAME, prompt="Hi", max_tokens=4, temperature=0, logprobs=2)
    lp = c.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert all(len(top) <= 2 for top in lp.top_logprobs) and lp.text_offset[0] == 0


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    return body["error"]


def test_bad_requests_get_openai_shaped_4xx_and_the_server_keeps_serving(client, server):
    url = server[0]
    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="gpt-4o", prompt="hi", max_tokens=2)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=NAME, prompt="hi", max_tokens=2, n=2)
    assert e.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=10_000)
    assert e.value.body["param"] == "max_tokens" and e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=NAME, prompt="word " * CONTEXT, max_tokens=2)
    assert e.value.body["code"] == "context_length_exceeded"

    post = lambda path, **kw: httpx.post(url + path, timeout=10, **kw)  # noqa: E731
    cases = [
        (post("/v1/chat/completions", content=b'{"model": "x", "messages": [', headers={"content-type": "application/json"}), 400, None),
        (post("/v1/completions", content=b"\xff\xfe not json", headers={"content-type": "application/json"}), 400, None),
        (post("/v1/completions", json={"model": NAME, "prompt": "hi", "max_tokens": "10"}), 400, "max_tokens"),
        (post("/v1/completions", json={"model": NAME, "prompt": "hi", "temperature": -1}), 400, "temperature"),
        (post("/v1/completions", json={"model": NAME, "prompt": "hi", "stream": "yes"}), 400, "stream"),
        (post("/v1/completions", json={"model": NAME, "prompt": "hi", "max_tokens": 0}), 400, "max_tokens"),
        (post("/v1/completions", json={"model": NAME, "prompt": "hi", "max_tokens": 10**12}), 400, "max_tokens"),
        (post("/v1/completions", json={"model": NAME, "prompt": [1, 2, 10**6]}), 400, "prompt"),
        (post("/v1/completions", json={"model": NAME}), 400, "prompt"),
        (post("/v1/completions", json=[1, 2]), 400, None),
        (post("/v1/chat/completions", json={"model": NAME, "messages": []}), 400, "messages"),
        (post("/v1/chat/completions", json={"model": NAME, "messages": [{"role": "wizard", "content": "hi"}]}), 400, "messages.0.role"),
        (post("/v1/chat/completions", json={"model": NAME, "messages": [{"role": "user", "content": "hi"}], "stop": [""]}), 400, "stop"),
        (post("/v1/completions", content=b"x" * (2 << 20), headers={"content-type": "application/json"}), 413, None),
        (httpx.get(url + "/v2/nothing", timeout=10), 404, None),
        (httpx.delete(url + "/v1/models", timeout=10), 405, None),
    ]
    for response, status, param in cases:
        assert response.status_code == status, response.text
        assert error_of(response)["param"] == param
    r = client.completions.create(model=NAME, prompt="still there?", max_tokens=3, temperature=0)
    assert r.usage.completion_tokens >= 1 and httpx.get(url + "/health").json()["running"] == 0


def test_api_key_guards_every_route_but_health(llama_run):
    with live(llama_run, api_key=KEY) as (url, _):
        assert httpx.get(url + "/health").status_code == 200
        assert httpx.get(url + "/").status_code == 200  # the page itself holds nothing; its API calls send the key
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            r = httpx.get(url + "/v1/models", headers=headers)
            assert r.status_code == 401 and error_of(r)["code"] == "invalid_api_key"
            r = httpx.post(url + "/v1/completions", headers=headers, json={"model": NAME, "prompt": "hi"})
            assert r.status_code == 401
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        good = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        assert good.completions.create(model=NAME, prompt="hi", max_tokens=2).usage.prompt_tokens > 0


def test_a_full_queue_answers_503_and_a_gone_client_frees_its_row(llama_run):
    with live(llama_run, max_batch=1, queue_size=1) as (url, state), slow_steps(state, 0.05):
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=30)
        body = {"model": NAME, "prompt": "ROMEO:", "max_tokens": 20, "temperature": 0, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as first:
            lines = first.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))  # it runs: the one row is taken
            waiting = threading.Thread(target=lambda: client.completions.create(model=NAME, prompt="hi", max_tokens=2))
            waiting.start()  # waits in the queue of one
            deadline = time.monotonic() + 10
            while httpx.get(url + "/health").json()["waiting"] < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            with pytest.raises(openai.InternalServerError) as e:
                client.completions.create(model=NAME, prompt="hi", max_tokens=2)
            assert e.value.status_code == 503 and e.value.body["code"] == "queue_full"
        # the first client went away after one chunk: its request is cancelled, the waiting one runs
        waiting.join(timeout=20)
        assert not waiting.is_alive()
        health = httpx.get(url + "/health").json()
        assert health["cancelled"] == 1 and health["running"] == 0 and health["tokens"] < 20 + 2


def test_a_client_gone_before_a_whole_reply_frees_its_row(server):
    url, state = server
    # The model has had a few steps of training: about 1 sample in 40 ends at <|endoftext|> within 10 tokens,
    # and then the client has its whole reply before it gives up (CI saw that once). So the request carries a
    # seed whose reply is first checked to run all 60 tokens.
    for seed in range(50):
        body = {"model": NAME, "prompt": "ROMEO:", "max_tokens": 60, "seed": seed}
        whole = httpx.post(url + "/v1/completions", json=body, timeout=30).json()
        if whole["choices"][0]["finish_reason"] == "length":
            break
    assert whole["usage"]["completion_tokens"] == 60
    before = httpx.get(url + "/health").json()["cancelled"]
    with slow_steps(state, 0.05):
        with pytest.raises(httpx.ReadTimeout):  # 60 tokens take 3 s; the client gives up after 0.5 s and closes
            httpx.post(url + "/v1/completions", json=body, timeout=0.5)
        deadline = time.monotonic() + 10
        while (httpx.get(url + "/health").json()["running"] or httpx.get(url + "/health").json()["cancelled"] == before) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
    health = httpx.get(url + "/health").json()
    assert health["cancelled"] == before + 1 and health["running"] == 0


def test_memory_does_not_grow_over_200_requests(server):
    psutil = pytest.importorskip("psutil")
    url = server[0]
    body = {"model": NAME, "messages": [{"role": "user", "content": "Hail!"}], "max_tokens": 8, "temperature": 0.8}
    with httpx.Client(base_url=url, timeout=30) as http:
        for _ in range(30):  # warm up: allocator pools, kernels, the tokenizer's caches
            http.post("/v1/chat/completions", json=body).raise_for_status()
        before = psutil.Process().memory_info().rss
        for i in range(200):
            http.post("/v1/chat/completions", json={**body, "seed": i, "stream": i % 2 == 0}).raise_for_status()
        growth = psutil.Process().memory_info().rss - before
    print(f"RSS growth over 200 requests: {growth / 2**20:.1f} MiB")
    assert growth < 16 * 2**20


# -- the real command and the real browser ---------------------------------------------------------

def test_the_scratchllm_serve_command_answers_the_openai_client(trained):
    run = trained("gpt-char-baby")
    env = {**os.environ, "SCRATCHLLM_API_KEY": KEY, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "scratchllm", "serve", "--model", str(run), "--name", "baby-gpt",
                             "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert "serving baby-gpt" in line and "key required" in line, line + proc.stderr.read()
        url = line.split(" at ")[1].split("/v1")[0]
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0, timeout=30)
        assert [m.id for m in client.models.list().data] == ["baby-gpt"]
        r = client.chat.completions.create(model="baby-gpt", messages=[{"role": "user", "content": "Hi"}], max_tokens=5)
        assert r.usage.completion_tokens == 5 and r.choices[0].finish_reason == "length"
        assert httpx.get(url + "/v1/models").status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed with apt-get when missing (a fresh machine); never `playwright install`."""
    if not os.path.exists(CHROMIUM):
        if shutil.which("apt-get") is None:
            pytest.skip("chromium is not installed and there is no apt-get to install it")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "chromium"]
        if subprocess.run(install, env=env, capture_output=True).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
            done = subprocess.run(install, env=env, capture_output=True, text=True)
            assert done.returncode == 0, f"apt-get install chromium failed: {done.stderr[-2000:]}"
    return CHROMIUM


def test_the_playground_streams_a_reply_and_stops_it_in_a_browser(chromium, llama_run):
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    with live(llama_run, end_of_reply=False) as (url, state), slow_steps(state, 0.15), sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page()
            page.goto(url + "/")
            page.wait_for_function("document.querySelector('#model').options.length > 0")
            assert page.locator("#model").input_value() == NAME
            page.fill("#system", "You are a player.")
            page.fill("#input", "Speak the speech, I pray you.")
            page.keyboard.press("Enter")
            reply = page.locator(".msg.assistant").last
            page.wait_for_function("document.querySelector('.msg.assistant').textContent.length > 0"
                                   " && document.querySelector('#status').textContent.includes('tokens/s')", timeout=20_000)
            assert page.locator("#stop").is_enabled()  # still streaming
            page.click("#stop")
            page.wait_for_function("document.querySelector('#status').textContent.startsWith('stopped')", timeout=10_000)
            shown = reply.inner_text()
            assert shown and page.locator("#send").is_enabled()
            deadline = time.monotonic() + 10
            while httpx.get(url + "/health").json()["running"] and time.monotonic() < deadline:
                time.sleep(0.05)  # the server sees the connection close and frees the row at its next step
            health = httpx.get(url + "/health").json()
            assert health["cancelled"] == 1 and health["running"] == 0
            time.sleep(0.3)
            assert reply.inner_text() == shown  # nothing more arrived
            # a second turn goes through to the end (the history holds the stopped one)
            page.fill("#max-tokens", "3")
            page.fill("#input", "Again.")
            page.click("#send")
            page.wait_for_function("document.querySelector('#status').textContent.includes('(length)')"
                                   " || document.querySelector('#status').textContent.includes('(stop)')", timeout=20_000)
            assert page.locator(".msg.user").count() == 2 and page.locator(".msg.error").count() == 0
        finally:
            browser.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="libgomp's thread pools (Linux)")
@pytest.mark.parametrize("another_libgomp", [False, True], ids=["torch-alone", "beside-another"])
def test_released_openmp_workers_end_and_new_work_makes_new_ones(another_libgomp, tmp_path):
    """device.release_openmp_threads ends the OpenMP workers that this thread's parallel work started (libgomp
    keeps them, and past one thread a core it sleeps at every barrier instead of spinning: the server's engine
    stepped 2x slower beside the idle workers of the thread that loaded the model); parallel work makes them again.
    Also with a second libgomp in the process (scikit-learn's wheel brings its own, and lm-eval imports it), which
    /proc/self/maps lists first when it was loaded last: pausing only the first one found left torch's workers
    running (an Intel Xeon's test run, 2026-12-04). Here a copy of torch's own plays the other package's."""
    import ctypes
    import shutil

    from scratchllm.device import loaded_libgomps, release_openmp_threads

    if another_libgomp:
        loaded = loaded_libgomps()
        if not loaded:
            pytest.skip("torch runs no libgomp here")
        ctypes.CDLL(str(shutil.copy(loaded[0], tmp_path / "libgomp-another.so.1")))  # stays loaded, unused

    def tasks() -> set[str]:
        return set(os.listdir("/proc/self/task"))

    def parallel_work():
        torch.ones(1 << 20).exp_()  # past torch's grain size: split over the threads

    result = {}

    def on_a_thread():  # a thread of its own: no pool yet, whatever ran on the test's thread before
        torch.set_num_threads(2)  # this thread's own count (OpenMP's is per thread; the test workers' is 1)
        result["threads"] = torch.get_num_threads()
        before = tasks()
        parallel_work()
        workers = tasks() - before
        released = release_openmp_threads()
        after = tasks()
        parallel_work()
        result.update(workers=workers, released=released, after=after, again=tasks() - after)

    threads = torch.get_num_threads()
    thread = threading.Thread(target=on_a_thread)
    try:
        thread.start()
        thread.join()
    finally:
        torch.set_num_threads(threads)  # torch keeps a count of its own for every thread: the test's as it was
    if result["threads"] < 2:
        pytest.skip("one OpenMP thread: no workers to release")
    assert len(result["workers"]) == result["threads"] - 1  # the pool: the thread itself and its workers
    assert result["released"] and not result["workers"] & result["after"]
    assert len(result["again"]) == result["threads"] - 1


def test_serve_releases_the_loading_threads_openmp_workers_before_the_engine_steps(llama_run, monkeypatch):
    """`scratchllm serve` loads the model on its main thread and steps it on the engine's: the main thread's OpenMP
    workers are released before the server starts (the effect is measured in serve.run's docstring)."""
    import uvicorn

    import scratchllm.serve as serve

    events, made = [], {}
    create_app = serve.create_app
    monkeypatch.setattr(serve, "create_app", lambda *a, **kw: made.update(kw) or create_app(*a, **kw))
    monkeypatch.setattr(serve, "release_openmp_threads", lambda: events.append("released") or True)
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: events.append(("serving", torch.get_num_threads())))
    threads = torch.get_num_threads()
    try:
        serve.run(load_llama(llama_run), NAME, port=0, threads=2)
        assert events == ["released", ("serving", 1)]  # the HTTP loop's thread computes alone
        assert made["threads"] == 2 and torch.get_num_threads() == 2  # the engine's count; this thread's again after
    finally:
        torch.set_num_threads(threads)


def test_the_engine_thread_computes_with_the_servers_thread_count(llama_run):
    """The engine's thread sets its own torch thread count (OpenMP's and MKL's are per thread): the HTTP loop's
    thread runs on one, and a new thread would otherwise take that."""
    threads = torch.get_num_threads()
    seen = []
    try:
        torch.set_num_threads(1)  # as serve.run leaves the HTTP loop's thread; new threads start from it too
        with live(llama_run, threads=2) as (url, server):
            step = server.engine.step
            server.engine.step = lambda: seen.append(torch.get_num_threads()) or step()
            r = httpx.post(url + "/v1/completions", timeout=10, json={"model": NAME, "prompt": "hi", "max_tokens": 3})
            assert r.status_code == 200
    finally:
        torch.set_num_threads(threads)
    assert seen and set(seen) == {2}
