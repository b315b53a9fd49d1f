"""Chat templates render as transformers' apply_chat_template renders them, in the same sandbox."""

import pytest

from scratchllm.chat_template import PLAIN_TEMPLATE, render_chat
from scratchllm.errors import ScratchLLMError

# SmolLM2-Instruct's template (as its GGUF file carries it): ChatML, with a default system prompt
CHATML = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
          "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
          "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")

# Llama 3 style: bos_token, whitespace control, trim_blocks / lstrip_blocks at work, a namespace-free
# loop with `loop.index0`, strftime_now, raise_exception, tojson and a loop control
LLAMA3_STYLE = """{{- bos_token }}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] | trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "Today is " + strftime_now("%Y") | length | string + " chars." %}
{%- endif %}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" + system_message + "<|eot_id|>" }}
{%- for message in messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['content'] == 'skip me' %}{% continue %}{% endif %}
    {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
{#- a comment #}
{{- {"n": messages | length, "last": messages[-1]['content']} | tojson }}
"""

# a template written without whitespace control: trim_blocks and lstrip_blocks decide its output
BLOCKY = """{% for m in messages %}
  {% if m.role == 'system' %}
[SYS] {{ m.content }}
  {% else %}
[{{ m.role | upper }}] {{ m.content }}{{ eos_token }}
  {% endif %}
{% endfor %}
{% if add_generation_prompt %}
[ASSISTANT]
{% endif %}"""

CONVERSATIONS = [
    ([{"role": "user", "content": "What is the capital of France?"}], True),
    ([{"role": "system", "content": "You answer in one word."}, {"role": "user", "content": "Colour of the sky?"}], True),
    ([{"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello. How can I help?"},
      {"role": "user", "content": "Tell me a joke."}, {"role": "assistant", "content": "Why did the chicken..."}], False),
    ([{"role": "system", "content": "  Be brief.  "}, {"role": "user", "content": "Ça va? 你好 😀 <b>&amp;</b>"},
      {"role": "assistant", "content": "Très bien 👍 — 谢谢"}, {"role": "user", "content": "skip me"}], True),
    ([{"role": "user", "content": "line one\nline two\n\n  indented"}, {"role": "assistant", "content": ""},
      {"role": "user", "content": "\"quotes\" and 'apostrophes' and {{ braces }}"}], False),
]


def _hf_tokenizer(template: str):
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {"<s>": 0, "</s>": 1, "a": 2}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="a")),
                                  bos_token="<s>", eos_token="</s>")
    tok.chat_template = template
    return tok


@pytest.mark.parametrize("template", [CHATML, LLAMA3_STYLE, BLOCKY], ids=["chatml", "llama3-style", "blocky"])
def test_rendering_equals_transformers(template):
    hf = _hf_tokenizer(template)
    for messages, add_generation_prompt in CONVERSATIONS:
        for gen in (add_generation_prompt, not add_generation_prompt):
            ours = render_chat(messages, template, add_generation_prompt=gen, bos_token="<s>", eos_token="</s>")
            theirs = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
            assert ours == theirs, (messages, gen)


def test_chatml_text():
    text = render_chat([{"role": "user", "content": "Hi"}], CHATML)
    assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
                    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_plain_fallback():
    text = render_chat([{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hello"}])
    assert text == "System: Be kind.\n\nUser: Hello\n\nAssistant:"
    assert render_chat([{"role": "user", "content": "Hello"}], PLAIN_TEMPLATE, add_generation_prompt=False) == "User: Hello\n\n"


def test_template_errors_are_one_line():
    with pytest.raises(ScratchLLMError, match="roles must alternate") as e:
        render_chat([{"role": "assistant", "content": "x"}], LLAMA3_STYLE, bos_token="<s>")
    assert "\n" not in str(e.value)
    with pytest.raises(ScratchLLMError, match="not valid Jinja"):
        render_chat([{"role": "user", "content": "x"}], "{% for m in messages %}{{ m.content }")
    with pytest.raises(ScratchLLMError, match="failed to render"):  # the sandbox refuses Python internals
        render_chat([{"role": "user", "content": "x"}], "{{ messages.__class__.__mro__ }}{{ ''.__class__.__subclasses__() }}")
    with pytest.raises(ScratchLLMError, match="failed to render"):  # and mutation
        render_chat([{"role": "user", "content": "x"}], "{{ messages.append(1) }}")
    with pytest.raises(ScratchLLMError, match="role"):
        render_chat([{"role": "narrator", "content": "x"}], CHATML)
    with pytest.raises(ScratchLLMError, match="non-empty list"):
        render_chat([], CHATML)
