"""Chat templates: a model's own Jinja template turns a conversation into the text it was trained on.

    [{"role": "system", ...}, {"role": "user", "content": "Hi"}]  --template-->  "<|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n"

A template is code that comes with a downloaded model, so it runs in Jinja's immutable sandbox (no
attribute access to Python internals, no mutation of the messages), set up exactly as `transformers`'
`apply_chat_template` sets it up: `trim_blocks` and `lstrip_blocks`, the `loopcontrols` extension,
`raise_exception`, `strftime_now`, a `tojson` that does not escape HTML, and the special tokens as
variables (`bos_token`, `eos_token`, ...). The same template and messages give the same text (tested).
Models without a template (ours, trained on plain text) get `PLAIN_TEMPLATE`.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any

from scratchllm.errors import ScratchLLMError

# Turns as plain lines, for models that know no chat format: "User: ...", a blank line, "Assistant:".
PLAIN_TEMPLATE = (
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] }}\n\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)

ROLES = ("system", "user", "assistant", "tool")


def render_chat(messages: list[dict[str, str]], template: str | None = None, add_generation_prompt: bool = True,
                bos_token: str | None = None, eos_token: str | None = None, **variables: Any) -> str:
    """The text of `messages` (dicts with "role" and "content") under `template` (PLAIN_TEMPLATE when None).

    `add_generation_prompt` ends the text with what opens the assistant's turn. `variables` are passed
    to the template as they are (other special tokens, `tools`, `enable_thinking`, ...)."""
    _check_messages(messages)
    compiled = _compile(template if template is not None else PLAIN_TEMPLATE)
    context = {"tools": None, "documents": None, **{k: v for k, v in (("bos_token", bos_token), ("eos_token", eos_token)) if v is not None},
               **variables}
    try:
        return compiled.render(messages=[dict(m) for m in messages], add_generation_prompt=add_generation_prompt, **context)
    except Exception as e:  # the template is foreign code: anything it raises is a problem with the template
        raise ScratchLLMError(f"the chat template failed to render this conversation: {_one_line(e)}") from None


def _check_messages(messages: Any) -> None:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise ScratchLLMError("a conversation is a non-empty list of messages ({'role': ..., 'content': ...})")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ScratchLLMError(f"message {i} is not {{'role': str, 'content': str}}: {str(m)[:60]}")
        if m["role"] not in ROLES:
            raise ScratchLLMError(f"message {i} has role {m['role']!r}; use one of {', '.join(ROLES)}")


def _one_line(e: Exception) -> str:
    text = " ".join(str(e).split()) or e.__class__.__name__
    return text[:200]


def _raise_exception(message: str):
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys: bool = False) -> str:
    """Jinja's own `tojson` escapes <, >, & and ' for HTML; chat templates want plain JSON."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def _compile(template: str):
    try:
        import jinja2
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise ScratchLLMError("chat templates need the jinja2 package: pip install jinja2") from None
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except jinja2.exceptions.TemplateError as e:
        raise ScratchLLMError(f"the chat template is not valid Jinja: {_one_line(e)}") from None
