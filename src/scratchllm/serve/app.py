"""The HTTP side: OpenAI's routes on FastAPI, answered from the engine's thread (worker.py).

    GET  /v1/models              the one model served
    POST /v1/completions         text in, text out (prompt: a string or token ids)
    POST /v1/chat/completions    messages rendered by the model's chat template (a plain one without)
    GET  /health                 no key needed: status, rows busy, requests waiting, counters
    GET  /                       the playground page (static; it sends the key on its API calls)

A request's sampling options become one `generate.Sampling` (its range errors are 400s naming the
field). A reply is the engine's tokens turned into text as they come (`pretrained.ReplyText`), cut
before the first stop string (which is not returned, as OpenAI does) and held back while it may
still be the start of one. A request that extends an earlier one (a conversation's next turn) reuses
the keys and values its row kept of their shared prefix; `usage.prompt_tokens_details.cached_tokens`
says how many. With "stream": true it goes out as server-sent events, `data: {chunk}` per token and
`data: [DONE]` at the end; a client that goes away cancels its request. Errors are OpenAI's JSON
shape, {"error": {"message", "type", "param", "code"}}: 400 for anything wrong in a request
(validation included, as OpenAI answers it), 401 for a missing or wrong key, 404 for an unknown
model or route, 413 for a body over 1 MiB, 503 when the queue is full.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import AsyncIterator

from fastapi import Depends, FastAPI, Request as HTTPRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException

from scratchllm.errors import ScratchLLMError
from scratchllm.generate import Engine, Request, Sampling, SamplingError, Token
from scratchllm.pretrained import Pretrained, ReplyText, token_bytes
from scratchllm.serve.schemas import APIError, ChatRequest, CompletionRequest, _Sampling
from scratchllm.serve.worker import QueueFull, Worker

MAX_BODY = 1 << 20  # bytes of a request body


# -- the server's state -----------------------------------------------------------------------------

@dataclass
class Job:
    """One request on its way: its prompt and what the engine runs (its Sampling holds the stop strings)."""

    endpoint: str  # "completion" or "chat"
    body: _Sampling
    prompt: list[int]
    request: Request
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    created: int = field(default_factory=lambda: int(time.time()))


@dataclass
class Server:
    lm: Pretrained
    name: str
    worker: Worker
    api_key: str | None = None
    started: int = field(default_factory=lambda: int(time.time()))

    @property
    def engine(self) -> Engine:
        return self.worker.engine

    def check_model(self, model: str) -> None:
        if model != self.name:
            raise APIError(404, f"the model {model!r} does not exist; this server serves {self.name!r} (GET /v1/models)",
                           "model", "model_not_found")

    def job(self, endpoint: str, body: _Sampling, prompt: list[int], max_tokens: int | None, logprobs: int | None) -> Job:
        """Check the prompt and the reply's length against the context, and make the engine's request."""
        body.unsupported()
        where = "prompt" if endpoint == "completion" else "messages"
        if not prompt:
            raise APIError(400, "the prompt is empty", where)
        vocab = self.engine.vocab_size
        if any(not 0 <= t < vocab for t in prompt):
            raise APIError(400, f"token ids must be from 0 to {vocab - 1}", "prompt")
        limit, stopping = self.engine.max_len, self.engine.on_full == "stop"  # "slide": a long prompt's last part
        if stopping and len(prompt) >= limit:
            raise APIError(400, f"the prompt is {len(prompt)} tokens and the context {limit}, which leaves no room for "
                                "a reply; send a shorter prompt", where, "context_length_exceeded")
        room = max(1, limit - len(prompt))
        max_param = "max_completion_tokens" if getattr(body, "max_completion_tokens", None) is not None else "max_tokens"
        sampling = self.sampling(body, room if max_tokens is None else max_tokens, logprobs, max_param, "logprobs" if endpoint == "completion" else "top_logprobs")
        if stopping and sampling.max_tokens > room:
            raise APIError(400, f"{max_param} is {max_tokens}, but the prompt takes {len(prompt)} of the context's "
                                f"{limit} tokens; ask for at most {room}", max_param, "context_length_exceeded")
        return Job(endpoint, body, prompt, Request(prompt, sampling))

    def sampling(self, body: _Sampling, max_tokens: int, logprobs: int | None, max_param: str, logprobs_param: str) -> Sampling:
        """The request's Sampling, with the model's end-of-reply tokens; a value out of range is a 400 naming it."""
        try:
            return self.lm.with_stops(Sampling(
                max_tokens=max_tokens, temperature=body.temperature, top_k=body.top_k or 0, top_p=body.top_p,
                min_p=body.min_p or 0.0, seed=body.seed, stop=tuple(body.stop or ()), logprobs=logprobs))
        except SamplingError as e:
            param = {"max_tokens": max_param, "logprobs": logprobs_param}.get(e.field, e.field)
            raise APIError(400, f"{param} {e.rule}", param, "invalid_value") from None


# -- the app ----------------------------------------------------------------------------------------

def create_app(lm: Pretrained, name: str, max_batch: int = 8, max_len: int | None = None, queue_size: int = 64,
               api_key: str | None = None, on_full: str = "stop", threads: int | None = None) -> FastAPI:
    """The server for one model: FastAPI routes around an Engine of `max_batch` rows of `max_len` positions
    (default: the model's context) on its own thread, with at most `queue_size` requests waiting.
    on_full="stop" refuses a prompt and max_tokens that do not fit a row (OpenAI's way); "slide" lets a
    reply go on past the context (see generate.Engine)."""
    lm.spec.require("serve", lm.source)
    if lm.tokenizer is None:
        raise ScratchLLMError(f"{lm.source} has no tokenizer; a server needs one to read and write text")
    server = Server(lm, name, Worker(lm.new_engine(max_batch, max_len, on_full=on_full), queue_size, threads), api_key or None)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        server.worker.start(asyncio.get_running_loop())
        yield
        server.worker.stop()

    app = FastAPI(title="scratchllm", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    _error_handlers(app)
    app.add_middleware(_BodyLimit)

    def authorized(request: HTTPRequest) -> None:
        if server.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, key = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), server.api_key.encode()):
            raise APIError(401, "a valid API key is needed: send the header 'Authorization: Bearer KEY'"
                           if not given else "the API key is wrong", None, "invalid_api_key")

    keyed = [Depends(authorized)]

    @app.get("/health")
    async def health():
        engine = server.engine
        cache = engine.cache
        return {"status": "ok", "model": server.name, "running": len(engine.running), "rows": len(engine.rows),
                "waiting": server.worker.waiting.qsize(), **vars(server.worker.counters),
                "kv_cache_bytes": 2 * cache.k.numel() * cache.k.element_size() if cache is not None else 0}

    @app.get("/", response_class=HTMLResponse)
    async def playground():
        return resources.files("scratchllm.serve").joinpath("playground.html").read_text(encoding="utf-8")

    def model_card() -> dict:
        return {"id": server.name, "object": "model", "created": server.started, "owned_by": "scratchllm",
                "context_length": server.engine.max_len}

    @app.get("/v1/models", dependencies=keyed)
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model:path}", dependencies=keyed)
    async def model(model: str):
        server.check_model(model)
        return model_card()

    @app.post("/v1/completions", dependencies=keyed)
    async def completions(body: CompletionRequest, http: HTTPRequest):
        server.check_model(body.model)
        prompts = [body.prompt] if isinstance(body.prompt, str) or not body.prompt or isinstance(body.prompt[0], int) \
            else body.prompt
        if len(prompts) != 1:
            raise APIError(400, f"one prompt per request, got {len(prompts)}", "prompt", "unsupported_parameter")
        prompt = prompts[0]
        ids = list(prompt) if not isinstance(prompt, str) else _checked(lambda: server.lm.encode(prompt), "prompt")
        job = server.job("completion", body, ids, body.max_tokens, body.logprobs)
        return await _respond(server, job, http)

    @app.post("/v1/chat/completions", dependencies=keyed)
    async def chat_completions(body: ChatRequest, http: HTTPRequest):
        server.check_model(body.model)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text(f"messages.{i}.content")}
                    for i, m in enumerate(body.messages)]
        ids = _checked(lambda: server.lm.encode_chat(messages), "messages")
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        max_tokens = body.max_tokens if body.max_completion_tokens is None else body.max_completion_tokens
        job = server.job("chat", body, ids, max_tokens, logprobs)
        return await _respond(server, job, http)

    return app


def _checked(make, param: str):
    try:
        return make()
    except ScratchLLMError as e:  # text the tokenizer cannot encode, a template that fails on these messages
        raise APIError(400, str(e), param) from None


# -- replies ----------------------------------------------------------------------------------------

async def _respond(server: Server, job: Job, http: HTTPRequest):
    try:
        replies = server.worker.submit(job.request)
    except QueueFull:
        raise APIError(503, f"the server is busy ({server.worker.waiting.maxsize} requests are waiting); try again "
                            "shortly", None, "queue_full") from None
    if job.body.stream:
        return StreamingResponse(_stream(server, job, replies), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    watcher = asyncio.create_task(_cancel_on_disconnect(server, job, http))
    try:
        pieces, tokens, finish = [], [], "length"
        async for piece, token, end in _tokens(server, job, replies):
            pieces.append(piece)
            tokens.append(token)
            finish = end or finish
    finally:
        watcher.cancel()
    text = "".join(pieces)
    choice = {"index": 0, "logprobs": _logprobs(server, job, tokens), "finish_reason": finish}
    if job.endpoint == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, **choice}
        obj, prefix = "chat.completion", "chatcmpl-"
    else:
        choice = {"index": 0, "text": text, **choice}
        obj, prefix = "text_completion", "cmpl-"
    return {"id": prefix + job.id, "object": obj, "created": job.created, "model": server.name, "choices": [choice],
            "usage": _usage(job, len(tokens))}


async def _cancel_on_disconnect(server: Server, job: Job, http: HTTPRequest) -> None:
    while not job.request.cancelled:
        if await http.is_disconnected():
            server.worker.cancel(job.request)
            return
        await asyncio.sleep(0.25)


async def _tokens(server: Server, job: Job, replies: asyncio.Queue) -> AsyncIterator[tuple[str, Token, str | None]]:
    """(text released, the engine's token, finish reason or None) for every token of the reply."""
    text = ReplyText(server.lm.tokenizer, job.request.sampling.stop_strings)
    try:
        while True:
            t: Token = await replies.get()
            if t.finish is not None and t.finish.startswith("error"):
                raise APIError(500, f"generation failed ({t.finish[7:]})", None, "engine_error")
            piece = text.push(t.token) if t.token is not None else ""
            finish = "stop" if text.stopped else t.finish
            if text.stopped and t.finish is None:
                server.worker.cancel(job.request, served=True)  # the reply is complete: free its row
            if finish is not None:
                piece += text.finish()
            yield piece, t, finish
            if finish is not None:
                return
    finally:
        server.worker.cancel(job.request)  # the client went away (nothing happens when the reply is complete)


def _usage(job: Job, completion_tokens: int) -> dict:
    return {"prompt_tokens": len(job.prompt), "completion_tokens": completion_tokens,
            "total_tokens": len(job.prompt) + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": job.request.cached_tokens}}


def _entry(tokenizer, token: int, logprob: float) -> dict:
    raw = token_bytes(tokenizer, token)
    return {"token": raw.decode("utf-8", errors="replace"), "logprob": logprob, "bytes": list(raw)}


def _logprobs(server: Server, job: Job, tokens: list[Token]) -> dict | None:
    """OpenAI's logprobs of these tokens (the stop token left out): chat's {"content": [...]} or the
    completions API's {"tokens", "token_logprobs", "top_logprobs", "text_offset"}."""
    if job.request.sampling.logprobs is None:
        return None
    tok = server.lm.tokenizer
    kept = [t for t in tokens if t.token is not None and t.logprob is not None]
    if job.endpoint == "chat":
        return {"content": [{**_entry(tok, t.token, t.logprob),
                             "top_logprobs": [_entry(tok, i, lp) for i, lp in t.top_logprobs]} for t in kept]}
    texts = [_entry(tok, t.token, 0.0)["token"] for t in kept]
    offsets = [sum(len(x) for x in texts[:i]) for i in range(len(texts))]
    return {"tokens": texts, "token_logprobs": [t.logprob for t in kept],
            "top_logprobs": [{_entry(tok, i, 0.0)["token"]: lp for i, lp in t.top_logprobs} for t in kept],
            "text_offset": offsets}


async def _stream(server: Server, job: Job, replies: asyncio.Queue) -> AsyncIterator[str]:
    """Server-sent events: a chunk per token (and a first one with the role, for chat), the finish
    reason, the usage when asked for (stream_options.include_usage), then [DONE]."""
    chat = job.endpoint == "chat"
    head = {"id": ("chatcmpl-" if chat else "cmpl-") + job.id, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": job.created, "model": server.name}
    usage = job.body.stream_options is not None and job.body.stream_options.include_usage
    extra = {"usage": None} if usage else {}

    def event(choice: dict) -> str:
        return f"data: {json.dumps({**head, 'choices': [{'index': 0, **choice}], **extra})}\n\n"

    if chat:
        yield event({"delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None})
    count = 0
    try:
        async for piece, token, finish in _tokens(server, job, replies):
            count += 1
            logprobs = _logprobs(server, job, [token])
            if piece or (logprobs and (logprobs.get("content") or logprobs.get("tokens"))):
                content = {"delta": {"content": piece}} if chat else {"text": piece}
                yield event({**content, "logprobs": logprobs, "finish_reason": None})
            if finish is not None:
                yield event({"delta": {}, "logprobs": None, "finish_reason": finish} if chat else
                            {"text": "", "logprobs": None, "finish_reason": finish})
    except APIError as e:  # the status line is sent: the error goes in the stream, as OpenAI does
        yield f"data: {json.dumps(e.body())}\n\n"
        return
    if usage:
        yield f"data: {json.dumps({**head, 'choices': [], 'usage': _usage(job, count)})}\n\n"
    yield "data: [DONE]\n\n"


# -- errors and limits ------------------------------------------------------------------------------

def _error_handlers(app: FastAPI) -> None:
    def answer(e: APIError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    @app.exception_handler(APIError)
    async def api_error(request, e: APIError):
        return answer(e)

    @app.exception_handler(RequestValidationError)
    async def invalid(request, e: RequestValidationError):
        first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request", "type": ""}
        loc = [str(x) for x in first.get("loc", ()) if x != "body"]
        if first.get("type") == "json_invalid":
            return answer(APIError(400, f"the body is not valid JSON ({first.get('ctx', {}).get('error', 'parse error')})",
                                   None, "invalid_json"))
        if first.get("type") == "missing" and not loc:
            return answer(APIError(400, "the request needs a JSON body", None, "invalid_json"))
        param = ".".join(loc) or None
        return answer(APIError(400, f"{param}: {first.get('msg')}" if param else str(first.get("msg")), param,
                               first.get("type")))

    @app.exception_handler(HTTPException)
    async def http_error(request, e: HTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        message = f"no route {request.method} {request.url.path}" if e.status_code in (404, 405) else str(e.detail)
        return answer(APIError(e.status_code, message, None, code))


class _BodyLimit:
    """An ASGI middleware: a body announced larger than MAX_BODY is a 413 before it is read."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            length = dict(scope["headers"]).get(b"content-length", b"0")
            error = None if length.isdigit() and int(length) <= MAX_BODY else \
                APIError(413, f"the request body is over {MAX_BODY} bytes", None, "request_too_large") if length.isdigit() \
                else APIError(400, "the Content-Length header is not a number", None, "invalid_content_length")
            if error is not None:
                await JSONResponse(error.body(), status_code=error.status)(scope, receive, send)
                return
        await self.app(scope, receive, send)
