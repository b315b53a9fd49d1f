"""The engine on its own thread: the one place the model runs while the server answers HTTP.

    handlers (event loop) ──submit──> bounded queue ──> engine thread: add (prefill) / step ──┐
         ^                                                                                    │
         └──── per-request asyncio.Queue <── loop.call_soon_threadsafe(one call per step) ────┘

A full queue is refused at once (the server answers 503). A request whose client went away is
marked cancelled: it is skipped if still waiting and dropped from the batch at the next step.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from dataclasses import dataclass

import torch

from scratchllm.generate import Engine, Request, Token


class QueueFull(Exception):
    pass


@dataclass
class Counters:
    served: int = 0  # requests answered whole (a stop token or string, or max tokens)
    cancelled: int = 0  # requests dropped because their client went away
    tokens: int = 0  # tokens generated, all requests together
    failed: int = 0  # requests ended by an error in the engine


class Worker:
    def __init__(self, engine: Engine, queue_size: int = 64, threads: int | None = None):
        self.engine = engine
        # torch threads the engine's thread computes with, set on that thread (OpenMP's and MKL's counts are a
        # thread's own: the HTTP loop's thread may run on one); None: what torch gives a new thread
        self.threads = threads
        self.waiting: queue.Queue[Request] = queue.Queue(maxsize=queue_size)
        self.counters = Counters()
        self._replies: dict[Request, asyncio.Queue] = {}  # touched on the event loop's thread only
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="scratchllm-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def submit(self, request: Request) -> asyncio.Queue:
        """Queue a request (on the event loop's thread); its tokens arrive on the returned queue."""
        replies: asyncio.Queue = asyncio.Queue()
        self._replies[request] = replies
        try:
            self.waiting.put_nowait(request)
        except queue.Full:
            del self._replies[request]
            raise QueueFull from None
        return replies

    def cancel(self, request: Request, served: bool = False) -> None:
        """The client has gone (or, `served`, a stop string ended the reply): free the row at the next step."""
        if not request.cancelled and self._replies.pop(request, None) is not None:
            request.cancelled = True
            if served:
                self.counters.served += 1
            else:
                self.counters.cancelled += 1

    # -- the engine's thread ---------------------------------------------------------------------

    def _run(self) -> None:
        if self.threads:  # OpenMP's and MKL's thread counts are per thread: this one sets its own
            torch.set_num_threads(self.threads)
        while not self._stopping.is_set():
            try:
                if not self.engine.running:  # idle: sleep until a request comes
                    try:
                        self._admit(self.waiting.get(timeout=0.1))
                    except queue.Empty:
                        continue
                while self.engine.free_rows and not self.waiting.empty():  # join the batch at this step
                    self._admit(self.waiting.get_nowait())
                if self.engine.running:
                    self._publish(self.engine.step())
            except Exception as e:  # a bug or out of memory: fail the running requests, keep serving
                failed = self.engine.running
                for request in failed:
                    request.cancelled = True
                self.engine.step()  # drops them
                self._publish([Token(r, None, finish=f"error: {e.__class__.__name__}: {e}") for r in failed])

    def _admit(self, request: Request) -> None:
        if request.cancelled:
            return
        try:
            tokens = self.engine.add(request)
        except Exception as e:  # the handler checked the request: this is a bug or out of memory
            tokens = [Token(request, None, finish=f"error: {e.__class__.__name__}: {e}")]
        self._publish(tokens)

    def _publish(self, tokens: list[Token]) -> None:
        if tokens:
            try:
                self._loop.call_soon_threadsafe(self._deliver, tokens)
            except RuntimeError:  # the event loop is closed: the server is shutting down
                pass

    def _deliver(self, tokens: list[Token]) -> None:
        c = self.counters
        for t in tokens:
            replies = self._replies.get(t.request)
            if replies is None:  # cancelled meanwhile
                continue
            replies.put_nowait(t)
            failed = t.finish is not None and t.finish.startswith("error")
            c.tokens += not failed
            if t.finish is not None:
                del self._replies[t.request]
                c.failed += failed
                c.served += not failed
