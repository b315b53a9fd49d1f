"""A conversation with a model: turns rendered by its chat template, replies streamed, the context kept.

    system + [user, assistant]* + user --template--> ids --Engine--> reply text (Pretrained.stream)
                                   (oldest turns dropped when the conversation will not fit)

The session keeps one engine row for the conversation, so its KV cache holds what was said: each turn
prefills only what is new (the user's message and the template's marks around it), not the history.
`repl` is `scratchllm chat`'s terminal loop around a session; the server (`serve/`) renders the same
way. A model without a template of its own gets chat_template.PLAIN_TEMPLATE.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable, Iterator, TextIO

from scratchllm.errors import ScratchLLMError
from scratchllm.generate import Sampling
from scratchllm.pretrained import Pretrained

DEFAULT_SAMPLING = Sampling(max_tokens=256, temperature=0.7)


@dataclass
class ReplyStats:
    prompt_tokens: int = 0
    cached_tokens: int = 0  # of the prompt: held in the session's cache from earlier turns, not prefilled again
    new_tokens: int = 0
    seconds: float = 0.0
    first_token_seconds: float = 0.0  # time to the first token: the prefill
    finish: str = "length"  # "stop" (a stop token), "length" (max_tokens or a full context) or "interrupted"
    dropped_turns: int = 0  # turns left out, oldest first, so that the conversation fits the context

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.seconds if self.seconds > 0 else 0.0


@dataclass
class ChatSession:
    lm: Pretrained
    system: str | None = None
    sampling: Sampling = DEFAULT_SAMPLING
    on_full: str = "slide"  # within a reply that fills the context (see generate.Engine)
    history: list[dict[str, str]] = field(default_factory=list)  # user and assistant turns, in order
    last: ReplyStats = field(default_factory=ReplyStats)
    reuse_cache: bool = True  # False: every turn prefills the whole conversation (for comparison)

    def __post_init__(self):
        self.lm.spec.require("chat", self.lm.source)
        if self.lm.tokenizer is None:
            raise ScratchLLMError(f"{self.lm.source} has no tokenizer; a chat needs one")
        # one row for the whole context: packed once for the session (layers/linear.py), cache kept between turns
        self.engine = self.lm.new_engine(1, on_full=self.on_full)

    def reset(self) -> None:
        self.history.clear()

    def prompt_ids(self, user: str) -> tuple[list[int], int]:
        """(ids of the conversation with `user` appended, ready for the reply; turns dropped to fit)."""
        context = self.lm.context
        budget = context - min(self.sampling.max_tokens, context // 2)  # room left for the reply
        turns = self.history + [{"role": "user", "content": user}]
        dropped = 0
        while True:
            messages = ([{"role": "system", "content": self.system}] if self.system else []) + turns
            ids = self.lm.encode_chat(messages)
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
        if not self.reuse_cache:
            self.engine = self.lm.new_engine(1, on_full=self.on_full)
        reply = self.lm.stream(ids, self.sampling, engine=self.engine)
        self.last = stats = ReplyStats(prompt_tokens=len(ids), dropped_turns=dropped)
        try:
            yield from reply
        finally:
            stats.cached_tokens, stats.new_tokens, stats.seconds = reply.cached_tokens, len(reply.tokens), reply.seconds
            stats.first_token_seconds, stats.finish = reply.first_token_seconds or 0.0, reply.finish
            self.history += [{"role": "user", "content": user}, {"role": "assistant", "content": reply.text}]


def repl(session: ChatSession, read: Callable[[str], str] | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> None:
    """`scratchllm chat`'s loop: read a message (`read`, default input), stream the reply; /reset forgets,
    /exit (or Ctrl-D) leaves, Ctrl-C stops a reply but not the session."""
    read, out, err = read or input, out or sys.stdout, err or sys.stderr
    lm = session.lm
    print(f"chatting with {lm.source} ({lm.dtype}, {lm.device}); /reset forgets, /exit (or Ctrl-D) leaves, "
          "Ctrl-C stops a reply", file=err)
    while True:
        try:
            user = read("> ")
        except EOFError:
            print(file=err)
            return
        except KeyboardInterrupt:
            print(file=err)
            continue
        command = user.strip()
        if command in ("/exit", "/quit"):
            return
        if command == "/reset":
            session.reset()
            print("(the conversation is forgotten)", file=err)
            continue
        if not command:
            continue
        try:
            for piece in session.reply(user):
                out.write(piece)
                out.flush()
        except KeyboardInterrupt:
            pass  # the reply stops; the session goes on
        except ScratchLLMError as e:
            print(f"error: {e}", file=err)
            continue
        s = session.last
        note = f"; {s.dropped_turns} oldest turn(s) left out to fit the context" if s.dropped_turns else ""
        print(f"\n[{s.new_tokens} tokens, {s.tokens_per_s:.1f} tokens/s, {s.finish}{note}]", file=err)
