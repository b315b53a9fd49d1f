"""The `scratchllm` command: argument parsing only; every command is a call into the library."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from scratchllm.errors import ScratchLLMError


class _Parser(argparse.ArgumentParser):
    """argparse, but its errors are one line (no usage block) and exit 2; a description may be a
    function, called only when the help is shown (so `--help` need not import torch)."""

    def error(self, message: str):
        raise ScratchLLMError(f"{self.prog}: {message} (see {self.prog} --help)")

    def format_help(self) -> str:
        if callable(self.description):
            self.description = self.description()
        return super().format_help()


DEFAULT_PRESET = "gpt-char-baby"  # presets.DEFAULT_PRESET, spelled here so that parsing imports no model (tested)


def _train_description() -> str:
    from scratchllm.presets import PRESETS

    return "Train a preset. Presets: " + "; ".join(f"{name}: {p.description}" for name, p in PRESETS.items()) + "."


def _count(low: int, high: int = 1 << 31):
    """An argparse type: an integer from `low` to `high` - 1."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if not low <= value < high:
            raise argparse.ArgumentTypeError(f"expected an integer from {low} to {high - 1}, got {text}")
        return value

    parse.__name__ = "integer"
    return parse


_positive_int = _count(0)  # steps, tokens: 0 is allowed (no training, no sample)
_seed = _count(0, 2**63)


def _finite(low: float, high: float):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"expected a number from {low} to {high}, got {text}")
        return value

    parse.__name__ = "number"
    return parse


def _device_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda (default auto)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                   help="the dtype of weights and KV cache: auto is bf16 on a GPU, fp32 on a CPU (default auto)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="scratchllm", description="Language models from scratch: train, sample, evaluate.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    t = sub.add_parser("train", help="train a model from a preset", description=_train_description)
    t.add_argument("--preset", default=DEFAULT_PRESET, help=f"preset name (default {DEFAULT_PRESET})")
    t.add_argument("--data", default=None, help="corpus: shakespeare (default), tinyshakespeare, or a path to a .txt file or folder")
    t.add_argument("--out", default=None, help="run folder (default runs/PRESET-TIMESTAMP)")
    t.add_argument("--max-steps", type=_positive_int, default=None, help="optimizer steps (default: the preset's)")
    t.add_argument("--max-time", type=_finite(1e-3, 1e9), default=None, help="stop after this many seconds of training")
    t.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=None, help="auto: bf16 autocast where the hardware is fast at it")
    t.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    t.add_argument("--fsdp", action="store_true", default=None,
                   help="under torchrun: shard parameters, gradients and optimizer state across processes (FSDP2)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a model or trainer field, e.g. --set n_layer=6 --set lr=3e-4 (repeatable)")
    t.add_argument("--resume", default=None, metavar="DIR", help="continue the run in DIR (a run folder or checkpoint)")
    t.add_argument("--tokenizer", default=None, metavar="PATH",
                   help="use this tokenizer instead of the preset's (ours, a tokenizer.json, GPT-2's folder, Llama 3's tokenizer.model)")
    t.add_argument("--sample-tokens", type=_positive_int, default=300, help="tokens to sample when training ends (0: none)")
    t.add_argument("--sample-device", default="auto", help="device for that sample: auto, cpu or cuda (default auto)")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = sub.add_parser("sample", help="generate text from a checkpoint", description="Sample text, streamed to stdout.")
    s.add_argument("--checkpoint", required=True, help="a run folder or a checkpoint folder (latest/, best/)")
    s.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    s.add_argument("--max-new-tokens", type=_positive_int, default=500)
    s.add_argument("--temperature", type=float, default=0.8, help="0 is greedy; otherwise from 0.01 to 100")
    s.add_argument("--top-k", type=int, default=None)
    s.add_argument("--top-p", type=float, default=None)
    s.add_argument("--min-p", type=float, default=None, help="drop tokens below min_p x the top probability")
    s.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop at this special token or single-token text (repeatable)")
    s.add_argument("--seed", type=_seed, default=None)
    s.add_argument("--no-cache", action="store_true", help="recompute the whole context at every step (slow; for checking)")
    _device_options(s)

    e = sub.add_parser("eval", help="validation loss and bits per character of a checkpoint",
                       description="Evaluate on the whole validation split (the last 10%% of the corpus).")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--data", default=None, help="corpus (default: the one the checkpoint was trained on)")
    e.add_argument("--batch-size", type=_count(1, 1 << 16), default=32)
    e.add_argument("--max-batches", type=_count(1), default=None, help="stop after this many batches")
    _device_options(e)

    a = sub.add_parser("ask", help="answer a question about an image (a PaliGemma checkpoint)",
                       description="Greedy answer of a PaliGemma checkpoint to a prompt about an image.")
    a.add_argument("--checkpoint", required=True, help="a paligemma run or checkpoint folder")
    a.add_argument("--image", required=True, help="an image file (PNG, JPEG, ...)")
    a.add_argument("--prompt", required=True, help='e.g. "what color is the circle?"')
    a.add_argument("--max-new-tokens", type=_count(1, 1 << 16), default=8)
    _device_options(a)

    ch = sub.add_parser("chat", help="talk with a model in the terminal (or answer one --prompt)",
                        description="An interactive chat: streamed replies, history, /reset, /exit; Ctrl-C stops a reply. "
                                    "The model's own chat template is used (a plain one when it has none).")
    ch.add_argument("--model", "--checkpoint", dest="model", required=True,
                    help="a pretrained name (smollm2-135m-instruct), a .gguf file, a Hugging Face folder or a run")
    ch.add_argument("--prompt", default=None, help="answer this one message and exit (for scripts)")
    ch.add_argument("--system", default=None, help="a system prompt")
    ch.add_argument("--max-new-tokens", type=_count(1, 1 << 20), default=256, help="the longest reply (default 256)")
    ch.add_argument("--temperature", type=float, default=0.7, help="0 is greedy; otherwise from 0.01 to 100")
    ch.add_argument("--top-k", type=int, default=None)
    ch.add_argument("--top-p", type=float, default=None)
    ch.add_argument("--min-p", type=float, default=None)
    ch.add_argument("--seed", type=_seed, default=None)
    _device_options(ch)

    sv = sub.add_parser("serve", help="an OpenAI-compatible HTTP server and a playground page",
                        description="Serve a model over HTTP: GET /v1/models, POST /v1/completions and "
                                    "/v1/chat/completions (OpenAI's API, streaming included), GET /health, and a "
                                    "chat page at /. Concurrent requests share one batched KV cache.")
    sv.add_argument("--model", "--checkpoint", dest="model", required=True,
                    help="a pretrained name (smollm2-135m-instruct), a .gguf file, a Hugging Face folder or a run")
    sv.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    sv.add_argument("--port", type=_count(0, 65536), default=8000, help="port (default 8000; 0: any free port)")
    sv.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on every route but /health "
                    "(default: $SCRATCHLLM_API_KEY; none when unset)")
    sv.add_argument("--name", default=None, help="the model's id in the API (default: --model as given)")
    sv.add_argument("--max-batch", type=_count(1, 1025), default=8, help="requests generated together (default 8)")
    sv.add_argument("--max-len", type=_count(1), default=2048,
                    help="positions of each row of the KV cache: prompt + reply (default 2048, or the model's context if shorter)")
    sv.add_argument("--queue", type=_count(1, 1 << 20), default=64, help="requests that may wait for a row; more get 503 (default 64)")
    sv.add_argument("--threads", type=_count(1, 1025), default=None,
                    help="torch threads for a model on the CPU (default: all cores but one, left for HTTP)")
    _device_options(sv)

    c = sub.add_parser("convert", help="export a checkpoint as a Hugging Face folder or a GGUF file",
                       description="Write config.json + model.safetensors (+ tokenizer.json) that transformers' "
                                   "from_pretrained loads, or a GGUF file that llama.cpp loads.")
    c.add_argument("checkpoint", help="a run or checkpoint folder, a Hugging Face folder, a .gguf file or a pretrained name")
    to = c.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-hf", metavar="OUT", help="folder to write")
    to.add_argument("--to-gguf", metavar="OUT.gguf", help="GGUF file to write (Llama models)")
    c.add_argument("--type", choices=["f32", "f16", "bf16", "q8_0"], default="f16", help="GGUF weight type (default f16)")
    c.add_argument("--force", action="store_true", help="write into a non-empty folder (only the files written are "
                   "replaced) or over an existing file")

    p = sub.add_parser("prepare", help="encode a corpus into train/val token files",
                       description="Encode a corpus into memory-mappable train.bin / val.bin (uint16, or uint32 above 65,536 tokens).")
    p.add_argument("--data", default="shakespeare", help="corpus name or path (default shakespeare)")
    p.add_argument("--tokenizer", required=True, metavar="PATH|char", help="a tokenizer (folder or file), or 'char'")
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--force", action="store_true", help="write into a non-empty folder (only the files written are replaced)")

    tk = sub.add_parser("tokenizer", help="train a BPE tokenizer, encode or decode with one",
                        description="Byte-level BPE tokenizers: train, encode, decode.")
    tsub = tk.add_subparsers(dest="tokenizer_command", metavar="ACTION", parser_class=_Parser)
    tt = tsub.add_parser("train", help="train a byte-level BPE on a corpus", description="Train a byte-level BPE.")
    tt.add_argument("--data", default="shakespeare", help="corpus name or path; trains on its training split (first 90%%)")
    tt.add_argument("--vocab-size", type=int, required=True, help="ids in all: 256 bytes + merges + special tokens")
    tt.add_argument("--pattern", default="llama3", help="split pattern: gpt2, gpt4, llama3, or a regex (default llama3)")
    tt.add_argument("--special", action="append", default=[], metavar="TOKEN", help="a special token (repeatable)")
    tt.add_argument("--out", required=True, help="folder to write (tokenizer.model + tokenizer_meta.json)")
    tt.add_argument("--hf", action="store_true", help="also write a Hugging Face tokenizer.json")
    tt.add_argument("--force", action="store_true", help="write into a non-empty folder (only the files written are replaced)")
    for action, what in (("encode", "text (argument or stdin) to ids"), ("decode", "ids (argument or stdin) to text")):
        ta = tsub.add_parser(action, help=what, description=f"Turn {what}.")
        ta.add_argument("--tokenizer", required=True, metavar="PATH")
        ta.add_argument("input", nargs="?", default=None, help="text / space-separated ids; stdin when left out")
        if action == "encode":
            ta.add_argument("--allow-special", action="store_true", help="encode special-token strings as special tokens")
    return parser


def cmd_train(args) -> None:
    from scratchllm.models import get_spec
    from scratchllm.train.run import train

    summary = train(preset=args.preset, data=args.data, out=args.out, overrides=args.overrides,
                    max_steps=args.max_steps, max_time=args.max_time, precision=args.precision,
                    compile=args.compile, resume=args.resume, tokenizer_path=args.tokenizer,
                    progress=not args.no_progress, fsdp=args.fsdp)
    if not summary["is_main"]:
        return
    out, spec = summary["out"], get_spec(summary["model_type"])
    print(f"trained {summary['n_params']:,} parameters for {summary['step']} steps in {summary['seconds']:.0f} s "
          f"({summary['precision']}): val loss {summary['val_loss']:.4f}"
          + (f" ({summary['val_bpb']:.4f} bits/byte)" if summary["val_bpb"] is not None else "")
          + f", best {summary['best_val']:.4f}")
    if summary["metrics"]:
        print("held-out " + ", ".join(f"{k} {v:.3f}" for k, v in summary["metrics"].items()))
    if "ask" in spec.commands:
        print(f"ask it: scratchllm ask --checkpoint {out}/best --image shapes.png --prompt 'how many shapes?'")
    if "sample" in spec.commands and args.sample_tokens:
        print("--- sample ---")
        _stream_sample(f"{out}/best", "\n", args.sample_tokens, 0.8, None, None, 1337, args.sample_device, "auto", None, [], True)
        print("\n--------------")
    print(f"checkpoint: {out}/latest (best: {out}/best)\nloss plot:  {out}/loss.png\nmetrics:    {out}/metrics.jsonl")
    if "sample" in spec.commands:
        print(f"sample more: scratchllm sample --checkpoint {out}/best --prompt 'ROMEO:'")


def _stream_sample(checkpoint, prompt, max_new_tokens, temperature, top_k, top_p, seed, device, precision, min_p, stop,
                   use_cache) -> None:
    from scratchllm.checkpoint import load_pretrained
    from scratchllm.generate import TextStream, generate

    if prompt == "":
        raise ScratchLLMError("the prompt is empty; give some text to continue, e.g. --prompt 'ROMEO:'")
    # bytes of argv that are not UTF-8 arrive as lone surrogates, which a UTF-8 stdout cannot echo:
    # U+FFFD instead, as the BPE tokenizer reads them
    prompt = prompt.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    _check_sampling(temperature, top_k, top_p, min_p)
    lm = load_pretrained(checkpoint, device=device, precision=precision)
    lm.spec.require("sample", str(checkpoint))
    tokenizer = lm.tokenizer
    if tokenizer is None:
        raise ScratchLLMError(f"{checkpoint} has no tokenizer (tokenizer.json or tokenizer.model); add one to sample from text")
    ids = tokenizer.encode(prompt)
    stop_ids = []
    for text in stop:
        special = tokenizer.special_tokens.get(text)
        encoded = [special] if special is not None else tokenizer.encode(text)
        if len(encoded) != 1:
            raise ScratchLLMError(f"--stop {text!r} is {len(encoded)} tokens; give a special token or a single-token text")
        stop_ids.append(encoded[0])
    stream = TextStream(tokenizer)
    sys.stdout.write(prompt)
    for token in generate(lm.model, ids, max_new_tokens, temperature, top_k, top_p, seed, min_p, stop_ids, use_cache):
        sys.stdout.write(stream.push(token))
        sys.stdout.flush()
    sys.stdout.write(stream.flush())
    sys.stdout.flush()


def _check_sampling(temperature, top_k, top_p, min_p) -> None:
    if top_k is not None and top_k < 1:
        raise ScratchLLMError(f"--top-k must be at least 1, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ScratchLLMError(f"--top-p must be in (0, 1], got {top_p}")
    if not (temperature == 0 or 0.01 <= temperature <= 100):  # 1e-45 would turn every logit into inf
        raise ScratchLLMError(f"--temperature must be 0 (greedy) or from 0.01 to 100, got {temperature}")
    if min_p is not None and not 0.0 <= min_p <= 1.0:
        raise ScratchLLMError(f"--min-p must be in [0, 1], got {min_p}")


def cmd_chat(args) -> None:
    from scratchllm.chat import ChatSession, Sampling
    from scratchllm.checkpoint import load_pretrained

    _check_sampling(args.temperature, args.top_k, args.top_p, args.min_p)
    lm = load_pretrained(args.model, device=args.device, precision=args.precision)
    session = ChatSession(lm, args.system, Sampling(args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                                                    args.min_p, args.seed))
    if args.prompt is not None:
        for piece in session.reply(args.prompt):
            sys.stdout.write(piece)
            sys.stdout.flush()
        print()
        return
    print(f"chatting with {args.model} ({lm.dtype}, {lm.device}); /reset forgets, /exit (or Ctrl-D) leaves, "
          "Ctrl-C stops a reply", file=sys.stderr)
    if hasattr(sys.stdin, "reconfigure"):  # typed or piped bytes that are not UTF-8 become U+FFFD, not a traceback
        sys.stdin.reconfigure(errors="replace")
    while True:
        try:
            user = input("> ")
        except EOFError:
            print(file=sys.stderr)
            return
        except KeyboardInterrupt:
            print(file=sys.stderr)
            continue
        command = user.strip()
        if command in ("/exit", "/quit"):
            return
        if command == "/reset":
            session.reset()
            print("(the conversation is forgotten)", file=sys.stderr)
            continue
        if not command:
            continue
        try:
            for piece in session.reply(user):
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            pass  # the reply stops; the session goes on
        except ScratchLLMError as e:
            print(f"error: {e}", file=sys.stderr)
            continue
        s = session.last
        note = f"; {s.dropped_turns} oldest turn(s) left out to fit the context" if s.dropped_turns else ""
        print(f"\n[{s.new_tokens} tokens, {s.tokens_per_s:.1f} tokens/s, {s.finish}{note}]", file=sys.stderr)


def cmd_serve(args) -> None:
    import os

    from scratchllm.checkpoint import load_pretrained
    from scratchllm.serve import run

    lm = load_pretrained(args.model, device=args.device, precision=args.precision)
    lm.spec.require("serve", str(args.model))
    name = args.name or str(args.model).rstrip("/")
    key = args.api_key if args.api_key is not None else os.environ.get("SCRATCHLLM_API_KEY")

    def ready(url: str) -> None:
        print(f"serving {name} ({lm.dtype}, {lm.device}) at {url}/v1 (playground: {url}/){'; key required' if key else ''}; "
              "Ctrl-C stops", flush=True)

    try:
        run(lm, name, args.host, args.port, key, args.max_batch, args.max_len, args.queue, args.threads, on_ready=ready)
    except KeyboardInterrupt:  # Ctrl-C is how a server is stopped: uvicorn has shut down cleanly
        print("stopped", file=sys.stderr)


def cmd_sample(args) -> None:
    _stream_sample(args.checkpoint, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                   args.seed, args.device, args.precision, args.min_p, args.stop, not args.no_cache)
    print()


def cmd_eval(args) -> None:
    from scratchllm.evaluate import evaluate_checkpoint

    r = evaluate_checkpoint(args.checkpoint, data=args.data, batch_size=args.batch_size,
                            max_batches=args.max_batches, device=args.device, precision=args.precision)
    if "bits_per_char" in r:
        print(f"val loss {r['loss']:.4f} nats/token | {r['bits_per_token']:.4f} bits/token | "
              f"{r['bits_per_char']:.4f} bits/char | {r['bits_per_byte']:.4f} bits/byte "
              f"({r['tokens']:,} tokens of {r['data']})")
    else:
        metrics = {k: v for k, v in r.items() if k not in ("loss", "bits_per_byte", "examples", "data")}
        print(f"held-out loss {r['loss']:.4f}"
              + (f" | {r['bits_per_byte']:.4f} bits/byte" if r["bits_per_byte"] is not None else "")
              + "".join(f" | {k} {v:.3f}" for k, v in metrics.items()) + f" ({r['examples']} held-out {r['data']} examples)")


def cmd_ask(args) -> None:
    from scratchllm.checkpoint import load_pretrained
    from scratchllm.data.images import ImageProcessor

    if not args.prompt.strip():
        raise ScratchLLMError("the prompt is empty; ask a question, e.g. --prompt 'how many shapes?'")
    lm = load_pretrained(args.checkpoint, device=args.device, precision=args.precision)
    lm.spec.require("ask", str(args.checkpoint))
    pixels = ImageProcessor(lm.model.config.vision.image_size).load(args.image)[None]
    pixels = pixels.to(device=lm.device, dtype=lm.dtype)
    print(lm.model.answer(lm.tokenizer, pixels, [args.prompt], args.max_new_tokens)[0])


def cmd_convert(args) -> None:
    from scratchllm.checkpoint import load_pretrained
    from scratchllm.fileio import check_output

    if args.to_hf is not None:
        check_output(args.to_hf, inputs=(args.checkpoint,), force=args.force)
    else:
        check_output(args.to_gguf, inputs=(args.checkpoint,), force=args.force, kind="file")
    lm = load_pretrained(args.checkpoint)
    lm.spec.require("convert", str(args.checkpoint))
    if args.to_hf is not None:
        from scratchllm.interop.hf import save_hf

        out = save_hf(lm.model, args.to_hf, lm.tokenizer)
        with_tokenizer = lm.tokenizer is not None and lm.tokenizer.kind == "bpe"
        print(f"wrote {out} (config.json, model.safetensors{', tokenizer.json' if with_tokenizer else ''}); "
              f"load it with transformers' AutoModelForCausalLM.from_pretrained('{out}')")
        return
    from scratchllm.interop.gguf import save_gguf

    if lm.tokenizer is not None and lm.tokenizer.kind != "bpe":
        raise ScratchLLMError("GGUF holds byte-level BPE vocabularies; this model's tokenizer is character-level")
    stops = dict(zip(("eos_id", "eot_id"), lm.stop_tokens))
    out = save_gguf(lm.model, args.to_gguf, lm.tokenizer, file_type=args.type, chat_template=lm.chat_template, **stops)
    print(f"wrote {out} ({args.type}); llama.cpp and transformers' from_pretrained(..., gguf_file=...) load it")


def cmd_prepare(args) -> None:
    from scratchllm.data.corpora import load_text
    from scratchllm.data.tokens import prepare
    from scratchllm.fileio import check_output, write_output_folder
    from scratchllm.tokenizers import CharTokenizer, load_tokenizer_path

    inputs = tuple(p for p in (args.data, args.tokenizer) if Path(p).exists())
    check_output(args.out, inputs=inputs, force=args.force)
    tokenizer = CharTokenizer.train(load_text(args.data)) if args.tokenizer == "char" else load_tokenizer_path(args.tokenizer)
    out = prepare(args.data, tokenizer, args.out, write_folder=write_output_folder)
    print(f"wrote {out}/train.bin and {out}/val.bin; train with: scratchllm train --data {out}")


def _read_input(value):
    """The argument, or stdin decoded as UTF-8 (bytes that are not UTF-8 become U+FFFD, not an error)."""
    return value if value is not None else sys.stdin.buffer.read().decode("utf-8", errors="replace")


def cmd_tokenizer(args) -> None:
    from scratchllm.tokenizers.io import load_tokenizer_path

    if args.tokenizer_command == "train":
        from scratchllm.data.batches import split_train_val
        from scratchllm.data.corpora import load_text
        from scratchllm.tokenizers.bpe_train import train_bpe
        from scratchllm.fileio import check_output, write_output_folder
        from scratchllm.tokenizers.formats import save_hf

        check_output(args.out, inputs=tuple(p for p in (args.data,) if Path(p).exists()), force=args.force)
        train_text, _ = split_train_val(load_text(args.data))
        tok = train_bpe(train_text, args.vocab_size, args.pattern, args.special)
        write_output_folder(args.out, lambda d: (tok.save(d), args.hf and save_hf(tok, d / "tokenizer.json")))
        print(f"trained {tok.vocab_size} tokens ({len(tok.ranks) - 256} merges, {len(tok.special_tokens)} special) -> {args.out}")
    elif args.tokenizer_command == "encode":
        tok = load_tokenizer_path(args.tokenizer)
        text = _read_input(args.input)
        ids = tok.encode(text, allowed_special="all") if args.allow_special and tok.kind == "bpe" else tok.encode(text)
        print(" ".join(map(str, ids)))
    elif args.tokenizer_command == "decode":
        tok = load_tokenizer_path(args.tokenizer)
        try:
            ids = [int(t) for t in _read_input(args.input).split()]
        except ValueError:
            raise ScratchLLMError("decode expects whitespace-separated integer ids") from None
        sys.stdout.write(tok.decode(ids) + "\n")
    else:
        raise ScratchLLMError("scratchllm tokenizer: choose train, encode or decode (see scratchllm tokenizer --help)")


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "eval": cmd_eval, "prepare": cmd_prepare, "tokenizer": cmd_tokenizer,
            "convert": cmd_convert, "ask": cmd_ask, "chat": cmd_chat, "serve": cmd_serve}


def _printable(message: str) -> str:
    """One line whatever a path or value in it holds: newlines, tabs and other control characters (a
    terminal's escape sequences, say) are written as escapes; other characters, accents included, stay."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in message)


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 2
        COMMANDS[args.command](args)
        return 0
    except ScratchLLMError as e:
        print(f"error: {_printable(str(e))}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`| head`): not an error
        return 0
    except OSError as e:  # the filesystem's word on it: no space left, permission denied, a file where a folder goes
        where = f" {e.filename}" if e.filename else ""
        print(_printable(f"error: cannot read or write{where}: {e.strerror or e}; free some space, fix the permissions or "
                         "choose another path (nothing already written was changed)"), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
