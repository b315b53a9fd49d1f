"""A conversation with a model: turns rendered by its chat template, replies streamed, the context kept.

    system + [user, assistant]* + user --template--> text --encode--> ids --generate--> reply tokens
                                                                   (oldest turns dropped when it will not fit)

`scratchllm chat` is a terminal loop around `ChatSession`; the server (`serve/`) renders and generates the
same way. A model without a template of its own gets chat_template.PLAIN_TEMPLATE.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Iterator

from scratchllm.chat_template import render_chat
from scratchllm.checkpoint import Pretrained
from scratchllm.errors import ScratchLLMError
from scratchllm.generate import TextStream, generate
from scratchllm.layers import pack_for_inference


@dataclass
class Sampling:
    """How a reply is sampled (the same options as `scratchllm sample`)."""

    max_new_tokens: int = 256
    temperature: float = 0.7
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    seed: int | None = None


@dataclass
class ReplyStats:
    prompt_tokens: int = 0
    new_tokens: int = 0
    seconds: float = 0.0
    finish: str = "length"  # "stop" (a stop token), "length" (max_new_tokens) or "interrupted"
    dropped_turns: int = 0  # turns left out, oldest first, so that the conversation fits the context

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class ChatSession:
    lm: Pretrained
    system: str | None = None
    sampling: Sampling = field(default_factory=Sampling)
    history: list[dict[str, str]] = field(default_factory=list)  # user and assistant turns, in order
    last: ReplyStats = field(default_factory=ReplyStats)

    def __post_init__(self):
        self.lm.spec.require("chat", self.lm.source)
        if self.lm.tokenizer is None:
            raise ScratchLLMError(f"{self.lm.source} has no tokenizer; a chat needs one")
        pack_for_inference(self.lm.model)  # CPU: packed once for the session, not at every reply (layers/linear.py)

    def reset(self) -> None:
        self.history.clear()

    def prompt_ids(self, user: str) -> tuple[list[int], int]:
        """(ids of the conversation with `user` appended, ready for the reply; turns dropped to fit)."""
        context = self.lm.model.config.block_size
        budget = context - min(self.sampling.max_new_tokens, context // 2)  # room left for the reply
        turns = self.history + [{"role": "user", "content": user}]
        dropped = 0
        while True:
            messages = ([{"role": "system", "content": self.system}] if self.system else []) + turns
            text = render_chat(messages, self.lm.chat_template, **self.lm.template_tokens)
            ids = self.lm.tokenizer.encode(text, allowed_special="all") if self.lm.tokenizer.special_tokens else \
                self.lm.tokenizer.encode(text)
            if len(ids) <= budget:
                return ids, dropped
            if len(turns) <= 1:
                raise ScratchLLMError(f"the message takes {len(ids)} tokens with the system prompt; the model's context "
                                      f"of {context} leaves {budget} for it; send a shorter one")
            turns = turns[2:] if len(turns) > 2 else turns[1:]  # the oldest user turn and its reply
            dropped += 1

    def reply(self, user: str) -> Iterator[str]:
        """Stream the reply to `user` as text pieces; the turn joins the history when the reply ends,
        or is interrupted (the part the user saw is kept). `self.last` holds the reply's figures."""
        if not user.strip():
            raise ScratchLLMError("the message is empty; type something to say")
        ids, dropped = self.prompt_ids(user)
        if dropped:
            self.history = self.history[2 * dropped:] if len(self.history) >= 2 * dropped else []
        s = self.sampling
        stats = ReplyStats(prompt_tokens=len(ids), dropped_turns=dropped)
        self.last = stats
        stream, parts = TextStream(self.lm.tokenizer), []
        start = time.perf_counter()
        try:
            for token in generate(self.lm.model, ids, s.max_new_tokens, s.temperature, s.top_k, s.top_p, s.seed, s.min_p,
                                  self.lm.stop_tokens):
                stats.new_tokens += 1
                piece = stream.push(token)
                parts.append(piece)
                yield piece
            stats.finish = "length" if stats.new_tokens >= s.max_new_tokens else "stop"
        except KeyboardInterrupt:
            stats.finish = "interrupted"
            raise
        finally:
            stats.seconds = time.perf_counter() - start
            parts.append(stream.flush())
            self.history += [{"role": "user", "content": user}, {"role": "assistant", "content": "".join(parts)}]
