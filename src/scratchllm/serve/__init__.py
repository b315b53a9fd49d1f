"""An OpenAI-compatible server and a playground page, on the batched KV-cache engine (generate.Engine).

    scratchllm serve --model NAME|PATH  ──>  uvicorn ──> app.py (routes, validation, SSE)
                                                          │ submit / tokens
                                                          v
                                                 worker.py (the engine's thread) ──> generate.Engine

`create_app(lm, name)` is the FastAPI app; `run` binds the socket and serves it until Ctrl-C;
`in_background(app)` serves it from a thread of this process (tests, benchmarks, notebooks).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from typing import Callable, Iterator

from scratchllm.device import release_openmp_threads
from scratchllm.pretrained import Pretrained
from scratchllm.errors import ScratchLLMError
from scratchllm.serve.app import create_app

__all__ = ["create_app", "in_background", "listen", "run"]


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on host:port (port 0: a free one, read back with getsockname)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        raise ScratchLLMError(f"cannot listen on {host}:{port} ({e.strerror or e}); choose another --port or --host") from None
    return sock


def run(lm: Pretrained, name: str, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
        max_batch: int = 8, max_len: int | None = None, queue_size: int = 64, threads: int | None = None,
        on_ready: Callable[[str], None] | None = None, on_full: str = "stop") -> None:
    """Serve `lm` as `name` until interrupted; `on_ready(url)` is called once the socket listens.

    A model on the CPU computes with `threads` torch threads, by default torch's (all cores). The engine steps
    on its own thread, and the OpenMP workers this thread used to load the model are released first
    (`release_openmp_threads`: with them idle beside the engine's, libgomp slept at every barrier of the step),
    and this thread, which then runs the HTTP loop, computes on one thread (a pool of its own never comes back).
    `benchmarks/serve.py --model smollm2-135m-instruct --clients 8 --requests 2 --new-tokens 32`, bf16, 2 cores
    (AMD EPYC, 2026-12-03), tokens/s one request at a time / 8 clients at once: 2 threads 75-83 / 165-201 with
    the workers released, 42-45 / 130-160 without; 1 thread (the default then, all cores but one) 46-62 / 119-128."""
    import torch
    import uvicorn

    cpu = lm.device.type == "cpu"
    if cpu:
        threads = threads or torch.get_num_threads()
        torch.set_num_threads(threads)

    app = create_app(lm, name, max_batch, max_len, queue_size, api_key, on_full, threads=threads if cpu else None)
    sock = listen(host, port)
    bound = sock.getsockname()
    shown = f"[{bound[0]}]" if sock.family == socket.AF_INET6 else bound[0]
    if on_ready is not None:
        on_ready(f"http://{shown}:{bound[1]}")
    if cpu:  # this thread loaded the model; the engine's own steps it from here, with its own count of threads
        release_openmp_threads()
        # and this one runs the HTTP loop: what it computes runs on it alone (OpenMP's and MKL's counts), so that
        # no pool of its own comes back beside the engine's (MKL's exp, for one, starts its own team)
        torch.set_num_threads(1)
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=3)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        if cpu:
            torch.set_num_threads(threads)  # this thread's count as it was, for a caller that goes on


@contextlib.contextmanager
def in_background(app, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve `app` from a thread while the block runs; yields its URL (port 0: a free port)."""
    import uvicorn

    sock = listen(host, port)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=3))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="scratchllm-http", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
