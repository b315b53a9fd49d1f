"""Conversations to fine-tune on: read, rendered by the model's chat template, the assistant's tokens marked.

    file or name ──> records ──> messages ──template──> text, cut where each assistant turn starts and ends
        ──encode each piece──> ids (T,) + mask (T,): 1 on an assistant turn's tokens (its text and the
        end-of-turn marker the template writes after it), 0 on everything the model is only shown
        ──> right-padded batches: targets are the ids shifted by one, -100 (no loss) where the mask is 0

`--data` is one source or several joined by commas, each optionally `:N` for its first N records
(identity,alpaca-demo:45). Formats (each record is checked; a bad one is a one-line error naming the file
and record):
  - chat JSONL, OpenAI-style: {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}
  - Alpaca, JSON (a list) or JSONL: {"instruction": ..., "input": ..., "output": ...} -> user, assistant
  - named sets from the `llamafactory==0.9.5` sdist on PyPI (Apache-2.0), fetched once with pip:
      identity     91 question/answer pairs about the assistant itself, `{{name}}` and `{{author}}` filled
                   in from DataConfig.name / .author (`--set name=... --set author=...`)
      alpaca-demo  999 Alpaca records. Alpaca's data is licensed CC BY-NC 4.0 (non-commercial use only).
      alpaca-demo-short  its 467 records with a reply under 400 characters (for mixing in: identity,alpaca-demo-short:45)

Right padding needs no attention mask: under the causal mask a real token only ever sees the tokens
before it, and the padding comes after; its targets are -100, so it adds nothing to the loss.
"""

from __future__ import annotations

import json
import math
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from scratchllm.chat_template import ROLES, render_chat
from scratchllm.errors import ScratchLLMError
from scratchllm.fetch import cache_dir, has_sha256, pip_sdist
from scratchllm.fileio import JSON_ERRORS, atomic_path

IGNORE = -100  # the target of a token that adds no loss (cross_entropy's ignore_index)

LLAMAFACTORY = "llamafactory==0.9.5"
LLAMAFACTORY_SDIST = "llamafactory-0.9.5.tar.gz"
LLAMAFACTORY_SHA256 = "1702c0bfb864e80577a59521d2edcacd2aab05ec6aee06188fcba335a589681f"
# name -> (file in the sdist, its sha256, licence note)
NAMED = {
    "identity": ("llamafactory-0.9.5/data/identity.json",
                 "fd029da7dd3df283ed034c82375d16d125a7b07cf1cb0316d03fb8743057d5f2", "Apache-2.0 (LLaMA-Factory)"),
    "alpaca-demo": ("llamafactory-0.9.5/data/alpaca_en_demo.json",
                    "bcc37c64db1a739a0789a1b81f251146fcf4459f903474bc9e3c21bbb5628318",
                    "CC BY-NC 4.0 (Stanford Alpaca's data: non-commercial use only)"),
}
# sets made from a named one: name -> (the named set, which of its records). alpaca-demo-short: the 467 records
# whose reply is under 400 characters, a chat answer's length, to mix into a small set (identity) so that the
# model keeps answering other questions as it did: measured, identity alone costs 3-4 points of ARC-Easy,
# identity with the first 45 of these none (README, Benchmarks); 45 long ones, cut at 192 tokens, more
# training time and less of the name (16 of 20).
SHORT_REPLY_CHARS = 400
DERIVED = {"alpaca-demo-short": ("alpaca-demo", lambda r: isinstance(r, dict) and len(str(r.get("output", ""))) < SHORT_REPLY_CHARS)}


@dataclass
class DataConfig:
    """How fine-tuning data is read and cut. Every field can be set with `--set key=value`."""

    name: Optional[str] = None  # the identity set's {{name}}
    author: Optional[str] = None  # the identity set's {{author}}
    max_len: int = 512  # tokens of a conversation the model sees (longer ones are cut at the end)
    val_fraction: float = 0.1  # records held out to evaluate on (at least one)
    system: Optional[str] = None  # a system prompt put before every conversation that has none

    def __post_init__(self):
        if not 8 <= self.max_len < 1 << 20:
            raise ScratchLLMError(f"max_len must be from 8 to 2**20 - 1 tokens, got {self.max_len}")
        if not 0.0 < self.val_fraction < 1.0:
            raise ScratchLLMError(f"val_fraction must be between 0 and 1, got {self.val_fraction}")


# -- reading records --------------------------------------------------------------------------------------

def named_path(name: str) -> Path:
    """The cached file of a named set, fetched (with pip) and checked on first use."""
    member, sha256, _ = NAMED[name]
    out = cache_dir() / "llamafactory" / Path(member).name
    if has_sha256(out, sha256):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with pip_sdist(LLAMAFACTORY, LLAMAFACTORY_SDIST, LLAMAFACTORY_SHA256, f"the {name} fine-tuning data",
                   f"put {Path(member).name} from that sdist in {out.parent}") as sdist:
        try:
            with tarfile.open(sdist, "r:gz") as tar:
                for m, digest, _ in NAMED.values():  # both files: one download serves either name later
                    data = tar.extractfile(tar.getmember(m)).read()
                    with atomic_path(out.parent / Path(m).name) as tmp:
                        tmp.write_bytes(data)
        except (tarfile.TarError, KeyError, AttributeError, EOFError, OSError) as e:
            raise ScratchLLMError(f"{LLAMAFACTORY_SDIST} does not hold a readable {member} ({e.__class__.__name__})") from None
    if not has_sha256(out, sha256):
        raise ScratchLLMError(f"{out} does not have the expected sha256; delete it and retry")
    return out


def data_sources(data: str) -> list[tuple[str, int | None]]:
    """`--data` as (named set or file, how many of its first records or None for all): one source, or several
    joined by commas, each optionally `:N`, as LLaMA-Factory's `dataset: identity,alpaca_en_demo` with
    `max_samples` (e.g. identity,alpaca-demo:45 mixes general instructions in, so that a small set does not
    pull the whole model its way)."""
    if _is_source(data):
        return [(data, None)]
    sources = []
    for part in data.split(","):
        name, sep, count = part.rpartition(":")
        if not (sep and count.isdigit()) or _is_source(part):
            name, count = part, ""
        if not name:
            raise ScratchLLMError(f"--data {data!r} has an empty source; join named sets and files with commas, e.g. identity,alpaca-demo:45")
        if count and int(count) < 1:
            raise ScratchLLMError(f"--data {part!r} takes no records; after ':' give how many of its first records to use (1 or more)")
        sources.append((name, int(count) if count else None))
    return sources


def _is_source(name: str) -> bool:
    """A named set or an existing file, read whole (a file's name may hold commas and colons)."""
    return name in NAMED or name in DERIVED or Path(name).is_file()


def load_conversations(data: str, cfg: DataConfig | None = None) -> list[list[dict[str, str]]]:
    """The conversations of a named set or a file (or of several: `data_sources`), each a list of
    {"role", "content"} messages with at least one assistant turn; `cfg.system` put first where a
    conversation has no system message."""
    cfg = cfg or DataConfig()
    conversations = []
    for source, count in data_sources(data):
        conversations += _load_source(source, cfg)[:count]
    if cfg.system:
        conversations = [c if c[0]["role"] == "system" else [{"role": "system", "content": cfg.system}] + c for c in conversations]
    return conversations


def _load_source(data: str, cfg: DataConfig) -> list[list[dict[str, str]]]:
    if data == "identity" and not (cfg.name and cfg.author):
        raise ScratchLLMError("the identity set needs the assistant's name and author: --set name=NAME --set author=AUTHOR")
    keep = None
    if data in DERIVED:
        data, keep = DERIVED[data]
    if data in NAMED:
        path, where = named_path(data), data
    else:
        path, where = Path(data), data
        if not path.is_file():
            known = ", ".join([*NAMED, *DERIVED])
            raise ScratchLLMError(f"no fine-tuning data named {data!r} and no such file; give a .json / .jsonl file or one of {known}")
    records = _read_records(path, where)
    if keep is not None:
        records = [r for r in records if keep(r)]
    if data == "identity":
        records = [{k: v.replace("{{name}}", cfg.name).replace("{{author}}", cfg.author) if isinstance(v, str) else v
                    for k, v in r.items()} if isinstance(r, dict) else r for r in records]
    return [_messages(r, f"{where}: record {i + 1}") for i, r in enumerate(records)]


def _read_records(path: Path, where: str) -> list[Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ScratchLLMError(f"{where} is not UTF-8 text (bad byte at offset {e.start}); give a JSON or JSONL file") from None
    except OSError as e:
        raise ScratchLLMError(f"cannot read {where} ({e.strerror}); give a readable JSON or JSONL file") from None
    try:  # a JSON array (Alpaca's files), or one JSON object a line (JSONL)
        whole = json.loads(text)
        records = whole if isinstance(whole, list) else [whole]
    except (ValueError, RecursionError):
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except (ValueError, RecursionError):
                raise ScratchLLMError(f"{where} is not JSON or JSONL: line {n} does not parse; give one JSON record "
                                      "a line, or a JSON list of records") from None
    if not records:
        raise ScratchLLMError(f"{where} holds no records; give at least two conversations")
    return records


def _messages(record: Any, where: str) -> list[dict[str, str]]:
    """A record as messages: {"messages": [...]} as it is, an Alpaca record as a user and an assistant turn."""
    if isinstance(record, dict) and "messages" in record:
        messages = record["messages"]
    elif isinstance(record, dict) and "instruction" in record and "output" in record:
        prompt = record["instruction"]
        if isinstance(prompt, str) and isinstance(record.get("input"), str) and record["input"].strip():
            prompt = f"{prompt}\n{record['input']}"  # as LLaMA-Factory joins them
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": record["output"]}]
    else:
        raise ScratchLLMError(f"{where} is neither {{\"messages\": [...]}} nor an Alpaca record (instruction, input, output)")
    if not isinstance(messages, list) or not messages:
        raise ScratchLLMError(f"{where}: messages must be a non-empty list")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ScratchLLMError(f"{where}: each message must be {{\"role\": ..., \"content\": \"text\"}}")
        if m["role"] not in ROLES:
            raise ScratchLLMError(f"{where}: role {m['role'][:20]!r} is not one of {', '.join(ROLES)}")
    if not any(m["role"] == "assistant" and m["content"].strip() for m in messages):
        raise ScratchLLMError(f"{where} has no assistant turn to learn from; each conversation needs at least one")
    if messages[0]["role"] == "assistant":
        raise ScratchLLMError(f"{where} starts with the assistant; open the conversation with a system or user message")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


# -- rendering and masking --------------------------------------------------------------------------------

def encode_conversation(messages: list[dict[str, str]], tokenizer, template: str | None,
                        template_tokens: dict[str, str] | None = None) -> tuple[list[int], list[int]]:
    """(ids, mask) of a conversation as the chat template writes it: mask[t] is 1 where token t belongs
    to an assistant turn (its content and the template's end-of-turn text after it), else 0.

    The text is rendered whole and cut at the ends of the prefixes that open and close each assistant
    turn; each piece is encoded on its own, so a token never straddles a prompt and a reply. A template
    whose text for a conversation does not begin with its text for the conversation's start (it rewrites
    earlier turns) cannot be cut so: a one-line error."""
    names = template_tokens or {}
    full = render_chat(messages, template, add_generation_prompt=False, **names)
    cuts: list[tuple[int, int]] = []  # character spans of the assistant turns
    for k, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render_chat(messages[:k], template, add_generation_prompt=True, **names)
        through = render_chat(messages[:k + 1], template, add_generation_prompt=False, **names)
        if not (through.startswith(before) and full.startswith(through)):
            raise ScratchLLMError("this chat template rewrites earlier turns as a conversation goes on, so the "
                                  "assistant's tokens cannot be told apart; fine-tune with another template")
        cuts.append((len(before), len(through)))
    ids, mask, at = [], [], 0
    for start, stop in cuts + [(len(full), len(full))]:
        for text, flag in ((full[at:start], 0), (full[start:stop], 1)):
            if text:
                piece = tokenizer.encode(text, allowed_special="all")
                ids += piece
                mask += [flag] * len(piece)
        at = stop
    return ids, mask


@dataclass
class Example:
    """One conversation ready to train on: inputs (T,) and targets (T,), -100 where no loss is taken."""

    idx: list[int]
    targets: list[int]


def make_examples(conversations, tokenizer, template, template_tokens, max_len: int) -> tuple[list[Example], int]:
    """(examples, how many conversations were dropped because cutting them at max_len left no assistant token)."""
    examples, dropped = [], 0
    for messages in conversations:
        ids, mask = encode_conversation(messages, tokenizer, template, template_tokens)
        ids, mask = ids[:max_len + 1], mask[:max_len + 1]
        targets = [t if m else IGNORE for t, m in zip(ids[1:], mask[1:])]
        if all(t == IGNORE for t in targets):
            dropped += 1
            continue
        examples.append(Example(ids[:-1], targets))
    return examples, dropped


def split_examples(examples: list[Example], val_fraction: float, seed: int) -> tuple[list[Example], list[Example]]:
    """(train, held out): a seeded shuffle, then round(n * val_fraction) records (at least 1) held out."""
    if len(examples) < 2:
        raise ScratchLLMError(f"fine-tuning needs at least 2 conversations (one is held out), got {len(examples)}")
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = min(len(examples) - 1, max(1, round(len(examples) * val_fraction)))
    return [examples[i] for i in order[n_val:]], [examples[i] for i in order[:n_val]]


# -- batches ---------------------------------------------------------------------------------------------

class ChatBatches:
    """Batches of whole conversations for the Trainer, in the same shape as data.batches.TokenBatches:
    `draw_step` for training, fixed `eval_batches`, `count` and a checkpointable `state`.

    Training goes through the records epoch by epoch, each epoch in a new seeded order (of similar
    lengths side by side, see _order); the position
    reached is the one piece of state, kept (for the trainer's checkpoint, which stores a random
    generator's state here) as the seed of a generator."""

    WINDOW = 64

    def __init__(self, train: list[Example], val: list[Example], seed: int, pad_id: int = 0):
        self.splits = {"train": train, "val": val}
        self.seed, self.pad_id = seed, pad_id
        self.block_size = max(len(e.idx) for e in train + val)  # the longest row (for the trainer's token count)
        self.drawn = 0  # training records drawn so far, over all epochs

    @property
    def epoch_size(self) -> int:
        return len(self.splits["train"])

    def _order(self, epoch: int) -> list[int]:
        """The epoch's order: a seeded shuffle, then each window of WINDOW records sorted by length, so
        that the rows of a batch are of about one length (SFT records vary 5x: padding would cost a third)."""
        order = torch.randperm(self.epoch_size, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        lengths = [len(e.idx) for e in self.splits["train"]]
        return [i for w in range(0, len(order), self.WINDOW) for i in sorted(order[w:w + self.WINDOW], key=lengths.__getitem__)]

    def collate(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        """{"idx": (B, T), "targets": (B, T)}, right-padded to the longest: pad ids in, -100 out."""
        T = max(len(e.idx) for e in examples)
        idx = torch.full((len(examples), T), self.pad_id, dtype=torch.long)
        targets = torch.full((len(examples), T), IGNORE, dtype=torch.long)
        for row, e in enumerate(examples):
            idx[row, :len(e.idx)] = torch.tensor(e.idx)
            targets[row, :len(e.targets)] = torch.tensor(e.targets)
        return {"idx": idx, "targets": targets}

    def draw_step(self, batch_size: int, grad_accum: int, world_size: int = 1, rank: int = 0):
        """The micro-batches of one optimizer step for this process (each process its own rows)."""
        n = batch_size * grad_accum * world_size
        picks = []
        for k in range(self.drawn, self.drawn + n):
            epoch, i = divmod(k, self.epoch_size)
            if i == 0 or not picks:
                order = self._order(epoch)
            picks.append(self.splits["train"][order[i]])
        self.drawn += n
        micro = []
        for k in range(grad_accum):
            lo = (k * world_size + rank) * batch_size
            micro.append(self.collate(picks[lo:lo + batch_size]))
        return micro

    def eval_batches(self, split: str, batch_size: int, n_batches: int):
        """The held-out records in order (up to n_batches batches); for "train", the first records of a fixed order."""
        records = self.splits[split] if split == "val" else [self.splits["train"][i] for i in self._order(-1)]
        records = records[:batch_size * n_batches]
        for i in range(0, len(records), batch_size):
            yield self.collate(records[i:i + batch_size])

    @staticmethod
    def count(batch: dict[str, torch.Tensor], bytes_per_token: torch.Tensor) -> tuple[int, float]:
        """(targets the batch's mean loss is over: the assistant's, UTF-8 bytes they stand for)."""
        y = batch["targets"][batch["targets"] != IGNORE]
        return y.numel(), bytes_per_token[y].sum().item()

    def state(self) -> torch.Tensor:
        return torch.Generator().manual_seed(self.drawn).get_state()

    def set_state(self, state: torch.Tensor) -> None:
        g = torch.Generator()
        g.set_state(state)
        self.drawn = g.initial_seed()


def steps_for_epochs(epochs: float, n_train: int, rows_per_step: int) -> int:
    return max(1, math.ceil(epochs * n_train / rows_per_step))
