"""The request bodies of the OpenAI API that the server reads, as pydantic models (FastAPI validates with them).

Strict types, as OpenAI checks them: "max_tokens": "16" or "stream": 1 is a 400, not coerced. The
ranges of the sampling options are `generate.Sampling`'s, checked when the server builds one (a 400
with Sampling's message). Fields of OpenAI's API that this server does not implement are refused
with a 400 naming them when they would change the reply (n > 1, echo, suffix, penalties, logit_bias,
tools), rather than ignored; fields that change nothing (user, metadata, ...) are ignored.
"""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, field_validator

MAX_STOP = 16  # OpenAI allows 4; llama.cpp and vLLM more


class APIError(Exception):
    """An error answered in OpenAI's shape: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampling(_Body):
    """What both /v1/completions and /v1/chat/completions take."""

    model: StrictStr
    max_tokens: Optional[int] = None
    temperature: float = 1.0  # 0: greedy
    top_p: float = 1.0
    top_k: Optional[int] = None  # an extra (llama.cpp, vLLM); 0 or absent: off
    min_p: Optional[float] = None  # an extra
    stop: Union[StrictStr, list[StrictStr], None] = None
    seed: Optional[int] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: int = Field(1, ge=1, le=128)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: Optional[dict[str, float]] = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v):
        stops = [v] if isinstance(v, str) else (v or [])
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop strings")
        return stops

    def unsupported(self) -> None:
        """A 400 for each field whose asked-for behaviour this server does not have."""
        if self.n != 1:
            raise APIError(400, "n > 1 is not supported: send one request per reply", "n", "unsupported_parameter")
        for name in ("frequency_penalty", "presence_penalty"):
            if getattr(self, name):
                raise APIError(400, f"{name} is not supported; leave it at 0", name, "unsupported_parameter")
        if self.logit_bias:
            raise APIError(400, "logit_bias is not supported", "logit_bias", "unsupported_parameter")


class CompletionRequest(_Sampling):
    prompt: Union[StrictStr, list[StrictInt], list[StrictStr], list[list[StrictInt]]]
    max_tokens: Optional[int] = 16  # OpenAI's default for completions
    logprobs: Optional[int] = None
    echo: bool = False
    suffix: Optional[StrictStr] = None
    best_of: Optional[int] = Field(None, ge=1)

    def unsupported(self) -> None:
        super().unsupported()
        if self.echo:
            raise APIError(400, "echo is not supported", "echo", "unsupported_parameter")
        if self.suffix:
            raise APIError(400, "suffix (insertion) is not supported", "suffix", "unsupported_parameter")
        if self.best_of not in (None, 1):
            raise APIError(400, "best_of > 1 is not supported", "best_of", "unsupported_parameter")


class ContentPart(_Body):
    type: StrictStr
    text: Optional[StrictStr] = None


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[StrictStr, list[ContentPart], None] = None

    def text(self, where: str) -> str:
        if self.content is None or isinstance(self.content, str):
            return self.content or ""
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise APIError(400, f"content parts of type {part.type!r} are not supported (text is)", where,
                               "unsupported_content")
        return "".join(part.text for part in self.content)


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = None
    logprobs: bool = False
    top_logprobs: Optional[int] = None
    tools: Optional[list] = None

    def unsupported(self) -> None:
        super().unsupported()
        if self.tools:
            raise APIError(400, "tools (function calling) are not supported", "tools", "unsupported_parameter")
        if self.top_logprobs is not None and not self.logprobs:
            raise APIError(400, "top_logprobs needs logprobs: true", "top_logprobs")
