"""Every file reader, fuzzed (issue 11, item 7): a hostile or damaged file gives a working result or the
project's own one-line error (ScratchLLMError), never a KeyError, TypeError, RecursionError, ...

Each reader gets two kinds of input, drawn from a valid file of its kind:
  - structured-but-wrong JSON: the valid document with keys deleted, added or given other values
    (wrong types, null, NaN, infinities, huge and negative numbers, nested junk);
  - raw bytes: the valid file truncated, with bytes flipped, spliced or repeated, a 5,000-digit
    number or 100,000 nested brackets inserted, or random bytes.
What a reader accepts must then work: the tokenizer encodes and decodes, the model runs, the
trainer takes a step. Each test runs 100 examples in the default suite; its `_slow` twin runs 2,000.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from conftest import data_file
from scratchllm.errors import ScratchLLMError

DEFAULT_EXAMPLES, SLOW_EXAMPLES = 100, 2000


def fuzz(check):
    """(default-suite test, slow twin) running `check(base, data)` on 100 and 2,000 examples."""
    def make(n: int):
        @settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck))
        @given(data=st.data())
        def test(base, data):
            check(base, data)

        test.__doc__ = check.__doc__
        return test

    return make(DEFAULT_EXAMPLES), pytest.mark.slow(make(SLOW_EXAMPLES))


def survives(call):
    """call()'s result, or None when it raised the project's error (whose message must be one line)."""
    try:
        result = call()
    except ScratchLLMError as e:
        assert "\n" not in str(e), str(e)
        event("refused: " + str(e).split(";")[0][-40:])
        return None
    event("accepted")  # (pytest --hypothesis-show-statistics: how often a reader accepts)
    return result


# -- strategies ----------------------------------------------------------------------------------------

NUMBERS = st.sampled_from([0, -1, 1, 2, 255, 256, 1023, 1024, 65535, 65536, (1 << 24) - 1, 1 << 24, 2**31, 2**63 - 1,
                           2**63, 2**64, -(2**63), 10**30, 1e308, 5e-324, -0.0, 0.5, float("nan"), float("inf"),
                           -float("inf")])
WORDS = st.sampled_from(["", "gpt2", "llama3", "char", "bpe", "llama", "gpt", "BPE", "ByteLevel", "Split", "Sequence",
                         "<|endoftext|>", "float32", "uint16", "uint32", "uint8", "int64", "<u2", ">u2", "O", "V8",
                         "F32", "../x.safetensors", "/etc/passwd", "model.safetensors", ".", "\x00", "\udcff", "(", "[^"])
LEAVES = st.one_of(st.none(), st.booleans(), st.integers(), NUMBERS, st.floats(), WORDS, st.text(max_size=10))
JSON = st.recursive(LEAVES, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6) | WORDS, inner,
                                                                                       max_size=4), max_leaves=10)


def _paths(obj, prefix=()):
    yield prefix
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else ()
    for k, v in items:
        yield from _paths(v, prefix + (k,))


def _edit(doc, path, op, value, key):
    """`doc` with the node at `path` replaced, deleted, or given a new key (when it is an object)."""
    if not path:
        return value if op == "replace" else doc
    parent = doc
    for k in path[:-1]:
        try:
            parent = parent[k]
        except (KeyError, IndexError, TypeError):
            return doc  # an earlier edit removed the path
    last = path[-1]
    try:
        if op == "replace":
            parent[last] = value
        elif op == "delete":
            del parent[last]
        elif isinstance(parent[last], dict):
            parent[last][key] = value
        else:
            parent[last] = [parent[last], value]
    except (KeyError, IndexError, TypeError):
        pass
    return doc


def wrong_json(valid) -> st.SearchStrategy[bytes]:
    """The valid document with 1 to 4 nodes replaced, deleted or added to, serialised (NaN allowed)."""
    paths = list(_paths(valid))

    @st.composite
    def draw_one(draw):  # a closure, not an argument: hypothesis would repr a large document at every draw
        doc = copy.deepcopy(valid)
        for _ in range(draw(st.integers(1, 4))):
            doc = _edit(doc, draw(st.sampled_from(paths)), draw(st.sampled_from(["replace", "delete", "add"])),
                        draw(JSON), draw(st.text(max_size=6) | WORDS))
        return json.dumps(doc, ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")

    return draw_one()


def damaged_bytes(valid: bytes) -> st.SearchStrategy[bytes]:
    """The valid bytes truncated, flipped, spliced, repeated, with a 5,000-digit number or 100,000
    nested brackets inserted, or bytes of its own."""
    n = len(valid)

    @st.composite
    def draw_one(draw):
        kind = draw(st.sampled_from(["truncate", "flip", "splice", "repeat", "digits", "nesting", "random"]))
        at = draw(st.integers(0, n))
        if kind == "truncate":
            return valid[:at]
        if kind == "flip":
            out = bytearray(valid)
            for _ in range(draw(st.integers(1, 8))):
                if out:
                    out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
            return bytes(out)
        if kind == "splice":
            return valid[:at] + draw(st.binary(max_size=16)) + valid[draw(st.integers(at, n)):]
        if kind == "repeat":
            return valid[:at] + valid[at:draw(st.integers(at, n))] * draw(st.integers(2, 4)) + valid[at:]
        if kind == "digits":
            return valid[:at] + b"9" * 5000 + valid[at:]
        if kind == "nesting":
            return valid[:at] + b"[" * 100_000 + valid[at:]
        return draw(st.binary(max_size=300))

    return draw_one()


def json_file(valid) -> st.SearchStrategy[bytes]:
    raw = json.dumps(valid).encode()
    return st.one_of(wrong_json(valid), wrong_json(valid), damaged_bytes(raw), JSON.map(lambda v: json.dumps(v).encode()))


def tensors_file(valid: dict[str, torch.Tensor], raw: bytes) -> st.SearchStrategy[dict | bytes]:
    """A safetensors file's tensors with one dropped, added, or changed in shape, dtype or content; or
    its bytes damaged."""
    names = sorted(valid)

    @st.composite
    def changed(draw):
        out = dict(valid)
        name = draw(st.sampled_from(names))
        kind = draw(st.sampled_from(["drop", "add", "shape", "dtype", "values", "empty"]))
        if kind == "drop":
            del out[name]
        elif kind == "add":
            out[draw(st.text(min_size=1, max_size=12))] = torch.zeros(draw(st.integers(0, 4)))
        elif kind == "shape":
            out[name] = torch.zeros(draw(st.lists(st.integers(0, 5), max_size=3)), dtype=valid[name].dtype)
        elif kind == "dtype":
            out[name] = valid[name].to(draw(st.sampled_from([torch.float16, torch.int64, torch.uint8, torch.bool,
                                                              torch.float64])))
        elif kind == "values":
            out[name] = torch.full_like(valid[name], draw(st.sampled_from([0, 255, 1]))) if not valid[name].is_floating_point() \
                else torch.full_like(valid[name], draw(st.sampled_from([0.0, -1.0, 1e30, float("nan"), float("inf")])))
        else:
            out[name] = valid[name].reshape(-1)[:0]
        return out

    return st.one_of(changed(), changed(), damaged_bytes(raw[:400]).map(lambda head: head + raw[400:]), damaged_bytes(raw))


def write(path: Path, payload) -> None:
    """Bytes, or a dict of tensors (saved as safetensors), put in place by a rename: a file is never
    rewritten in place, since tensors read from it earlier are memory-mapped (safetensors maps files),
    and cutting a mapped file short would kill this process with SIGBUS."""
    tmp = path.with_name(path.name + ".fuzz-tmp")
    if isinstance(payload, dict):
        save_file(payload, str(tmp))
    else:
        tmp.write_bytes(payload)
    os.replace(tmp, path)


# -- the valid files everything is drawn from ---------------------------------------------------------------

@pytest.fixture(scope="module")
def base(trained, tmp_path_factory, corpus_60k):
    from scratchllm.pretrained import load_pretrained
    from scratchllm.data.tokens import prepare
    from scratchllm.interop.gguf import save_gguf
    from scratchllm.interop.hf import save_hf
    from scratchllm.tokenizers import CharTokenizer, load_tokenizer
    from scratchllm.tokenizers.formats import bytes_to_unicode, recover_merges, to_hf_json

    root = tmp_path_factory.mktemp("fuzz")
    b = SimpleNamespace(root=root)
    b.char = Path(shutil.copytree(trained("gpt-char-baby") / "best", root / "char"))
    b.bpe = Path(shutil.copytree(trained("llama-bpe-baby") / "latest", root / "bpe"))
    b.files = {}  # name -> (path, valid bytes): each test restores what it damages
    for name, path in (("char-config", b.char / "config.json"), ("bpe-config", b.bpe / "config.json"),
                       ("char-tokenizer", b.char / "tokenizer.json"), ("ranks", b.bpe / "tokenizer.model"),
                       ("bpe-meta", b.bpe / "tokenizer_meta.json"), ("state", b.bpe / "trainer_state.json"),
                       ("state-tensors", b.bpe / "trainer_state.safetensors")):
        b.files[name] = (path, path.read_bytes())
    b.state_tensors = load_file(str(b.bpe / "trainer_state.safetensors"))

    lm = load_pretrained(b.bpe)
    tok = lm.tokenizer
    b.hf_tokenizer = root / "hf-tokenizer.json"
    b.hf_tokenizer_valid = to_hf_json(tok)
    # GPT-2's two files, for this small vocabulary (the real ones take 0.1 s to parse)
    spell = lambda data: "".join(bytes_to_unicode()[x] for x in data)  # noqa: E731
    b.gpt2 = root / "gpt2"
    b.gpt2.mkdir()
    b.encoder_valid = {**{spell(t): i for t, i in tok.ranks.items()}, **tok.special_tokens}
    b.merges_valid = ("#version: 0.2\n" + "".join(f"{spell(x)} {spell(y)}\n" for x, y in recover_merges(tok.ranks))).encode()

    hf = save_hf(lm.model, root / "hf", tok)  # sharded: config.json + an index + two shards
    tensors = load_file(str(hf / "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[: len(names) // 2], "model-00002-of-00002.safetensors": names[len(names) // 2:]}
    for shard, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(hf / shard))
    (hf / "model.safetensors").unlink()
    b.hf = hf
    b.hf_config_valid = json.loads((hf / "config.json").read_text())
    b.index_valid = {"metadata": {"total_size": 0}, "weight_map": {k: s for s, keys in shards.items() for k in keys}}
    (hf / "model.safetensors.index.json").write_text(json.dumps(b.index_valid))
    b.shard = hf / "model-00001-of-00002.safetensors"
    b.shard_valid = b.shard.read_bytes()

    b.gguf = root / "model.gguf"
    save_gguf(lm.model, b.gguf, tok, file_type="f32")
    b.gguf_valid = b.gguf.read_bytes()

    b.tokens = root / "tokens"
    prepare(str(corpus_60k), CharTokenizer.train(corpus_60k.read_text()), b.tokens, progress=False)
    b.tokens_meta_valid = json.loads((b.tokens / "tokens.json").read_text())
    b.val_valid = (b.tokens / "val.bin").read_bytes()
    b.bpe_tokenizer = load_tokenizer(b.bpe)
    b.corpus = corpus_60k
    return b


def restore(b, *names: str) -> None:
    for name in names:
        path, valid = b.files[name]
        write(path, valid)


def check_tokenizer(tok, text: str = "Hello, world! 123 <|endoftext|> ünïcödé") -> None:
    """What a reader accepted must work: encoding text it can hold, and decoding every id it has."""
    if tok.kind == "char":
        text = "".join(c for c in text if c in tok.stoi) or tok.chars[0]
        assert tok.decode(tok.encode(text)) == text
        return
    ids = tok.encode(text, allowed_special="all")
    tok.decode(ids)
    tok.decode(list(tok._decoder))
    tok.bytes_per_token()


# -- config.json of a checkpoint: read_meta + from_dict + the model built against the weights ------------

def _config(b, data):
    """A checkpoint's config.json: load_checkpoint either refuses it or gives a model that runs."""
    from scratchllm.checkpoint import load_checkpoint

    name = data.draw(st.sampled_from(["char-config", "bpe-config"]))
    path, valid = b.files[name]
    write(path, data.draw(json_file(json.loads(valid))))
    try:
        loaded = survives(lambda: load_checkpoint(path.parent))
    finally:
        restore(b, name)
    if loaded is not None:
        model = loaded[0]
        assert model(torch.zeros(1, 2, dtype=torch.long))[0].shape[-1] == model.config.vocab_size


test_checkpoint_config_json, test_checkpoint_config_json_slow = fuzz(_config)


# -- trainer state: load_trainer_state, then the restore and one step of a real trainer ----------------------

def trainer_of(b):
    """A trainer of the tiny Llama, as `train --resume` builds it (without the run around it); made once."""
    if getattr(b, "trainer", None) is None:
        from scratchllm.checkpoint import read_meta
        from scratchllm.config import from_dict
        from scratchllm.models import get_spec
        from scratchllm.tokenizers import TokenizerConfig
        from scratchllm.train.config import TrainConfig
        from scratchllm.train.trainer import Trainer

        meta = read_meta(b.bpe)
        spec = get_spec(meta["model_type"])
        train_cfg = from_dict(TrainConfig, meta["train"])
        cfg, tok, batches, _ = spec.task.prepare(spec, from_dict(spec.config_class, meta["model"]), b.bpe_tokenizer,
                                                 TokenizerConfig(), str(b.corpus), train_cfg.seed, False)
        b.trainer = Trainer(spec.build(cfg), train_cfg, tok, batches, b.root / "trainer-out", meta=meta, progress=False)
    return b.trainer


def _trainer_state(b, data):
    """trainer_state.json / .safetensors: refused, or restored into a trainer that then takes a step."""
    trainer = trainer_of(b)
    name = data.draw(st.sampled_from(["state", "state-tensors"]))
    path, valid = b.files[name]
    payload = data.draw(json_file(json.loads(valid)) if name == "state" else tensors_file(b.state_tensors, valid))
    write(path, payload)
    try:
        restored = survives(lambda: trainer._restore(b.bpe) or True)
    finally:
        restore(b, name)
    if restored:
        survives(trainer.train_step)  # a diverged step is the project's error too


test_trainer_state, test_trainer_state_slow = fuzz(_trainer_state)


# -- tokenizer files -----------------------------------------------------------------------------------------

def _ranks(b, data):
    """A tiktoken ranks file (ours, Llama 3's tokenizer.model): read_ranks and the BPE built from it."""
    from scratchllm.tokenizers import BPETokenizer
    from scratchllm.tokenizers.ranks import read_ranks

    path, valid = b.files["ranks"]
    lines = valid.splitlines(keepends=True)
    line = st.sampled_from(lines) | st.binary(max_size=30).map(lambda x: x + b"\n") | \
        st.tuples(st.binary(max_size=6), NUMBERS.map(str)).map(lambda t: __import__("base64").b64encode(t[0]) + b" " + t[1].encode() + b"\n")
    payload = data.draw(damaged_bytes(valid) | st.lists(line, max_size=40).map(b"".join) |
                        st.lists(line, min_size=1, max_size=3).map(lambda extra: valid + b"".join(extra)))
    write(path, payload)
    try:
        ranks = survives(lambda: read_ranks(path))
        tok = survives(lambda: BPETokenizer(ranks, "llama3", {"<|endoftext|>": 1 << 21})) if ranks else None
    finally:
        restore(b, "ranks")
    if tok is not None:
        check_tokenizer(tok)


def _bpe_folder(b, data):
    """Our BPE folder (tokenizer_meta.json + tokenizer.model): BPETokenizer.load."""
    from scratchllm.tokenizers import load_tokenizer

    name = data.draw(st.sampled_from(["bpe-meta", "bpe-meta", "ranks"]))
    path, valid = b.files[name]
    write(path, data.draw(json_file(json.loads(valid)) if name == "bpe-meta" else damaged_bytes(valid)))
    try:
        tok = survives(lambda: load_tokenizer(b.bpe))
    finally:
        restore(b, name)
    if tok is not None:
        check_tokenizer(tok)


def _char_tokenizer(b, data):
    """The char tokenizer.json of a checkpoint: load_tokenizer."""
    from scratchllm.tokenizers import load_tokenizer

    path, valid = b.files["char-tokenizer"]
    write(path, data.draw(json_file(json.loads(valid))))
    try:
        tok = survives(lambda: load_tokenizer(b.char))
    finally:
        restore(b, "char-tokenizer")
    if tok is not None:
        check_tokenizer(tok, "First Citizen: ROMEO!")


def _hf_tokenizer(b, data):
    """A Hugging Face tokenizer.json: formats.load_hf (and load_tokenizer_path, which sends .json there)."""
    from scratchllm.tokenizers import load_tokenizer_path

    write(b.hf_tokenizer, data.draw(json_file(b.hf_tokenizer_valid)))
    tok = survives(lambda: load_tokenizer_path(b.hf_tokenizer))
    if tok is not None:
        check_tokenizer(tok)


def _gpt2(b, data):
    """OpenAI's GPT-2 files (encoder.json + vocab.bpe): formats.load_gpt2 through load_tokenizer_path."""
    from scratchllm.tokenizers import load_tokenizer_path

    which = data.draw(st.sampled_from(["encoder", "merges"]))
    encoder = data.draw(json_file(b.encoder_valid)) if which == "encoder" else json.dumps(b.encoder_valid).encode()
    merges = data.draw(damaged_bytes(b.merges_valid)) if which == "merges" else b.merges_valid
    write((b.gpt2 / "encoder.json"), encoder)
    write((b.gpt2 / "vocab.bpe"), merges)
    tok = survives(lambda: load_tokenizer_path(b.gpt2))
    if tok is not None:
        check_tokenizer(tok)


test_ranks_file, test_ranks_file_slow = fuzz(_ranks)
test_bpe_tokenizer_folder, test_bpe_tokenizer_folder_slow = fuzz(_bpe_folder)
test_char_tokenizer_json, test_char_tokenizer_json_slow = fuzz(_char_tokenizer)
test_hf_tokenizer_json, test_hf_tokenizer_json_slow = fuzz(_hf_tokenizer)
test_gpt2_tokenizer_files, test_gpt2_tokenizer_files_slow = fuzz(_gpt2)


# -- prepared token files -------------------------------------------------------------------------------------

def _tokens(b, data):
    """tokens.json (and val.bin) of a prepared folder: load_prepared refuses it or every id fits the vocabulary."""
    from scratchllm.data.tokens import load_prepared

    damage_bin = data.draw(st.booleans())
    write((b.tokens / "tokens.json"), json.dumps(b.tokens_meta_valid).encode() if damage_bin
                                           else data.draw(json_file(b.tokens_meta_valid)))
    write((b.tokens / "val.bin"), data.draw(damaged_bytes(b.val_valid)) if damage_bin else b.val_valid)
    loaded = survives(lambda: load_prepared(b.tokens))
    if loaded is not None:
        tok, train, val, _ = loaded
        for ids in (train, val):
            assert len(ids) == 0 or int(ids.max()) < tok.vocab_size
    write((b.tokens / "val.bin"), b.val_valid)


test_tokens_json, test_tokens_json_slow = fuzz(_tokens)


# -- Hugging Face folders: config.json, the shard index, a shard's header ----------------------------------------

def _hf_folder(b, data):
    """A Hugging Face folder: load_hf_folder refuses it or gives a model that runs."""
    from scratchllm.interop.hf import load_hf_folder

    which = data.draw(st.sampled_from(["config", "config", "index", "index", "shard"]))
    valid = {"config": json.dumps(b.hf_config_valid).encode(), "index": json.dumps(b.index_valid).encode()}
    write((b.hf / "config.json"), data.draw(json_file(b.hf_config_valid)) if which == "config" else valid["config"])
    write((b.hf / "model.safetensors.index.json"), data.draw(json_file(b.index_valid)) if which == "index" else valid["index"])
    write(b.shard, data.draw(damaged_bytes(b.shard_valid[:300])) + b.shard_valid[300:] if which == "shard" else b.shard_valid)
    loaded = survives(lambda: load_hf_folder(b.hf))
    write(b.shard, b.shard_valid)
    if loaded is not None:
        model, _ = loaded
        model(torch.zeros(1, 2, dtype=torch.long))


test_hf_folder, test_hf_folder_slow = fuzz(_hf_folder)


# -- GGUF ----------------------------------------------------------------------------------------------------

def _gguf(b, data):
    """A GGUF file, damaged in its header (metadata and tensor table) or anywhere: read_gguf + from_hf."""
    from scratchllm.interop.gguf import load_gguf

    head = data.draw(st.sampled_from([64, 512, 4096, len(b.gguf_valid)]))
    write(b.gguf, data.draw(damaged_bytes(b.gguf_valid[:head])) + b.gguf_valid[head:])
    loaded = survives(lambda: load_gguf(b.gguf))
    if loaded is not None:
        model, tok, _ = loaded
        model(torch.zeros(1, 2, dtype=torch.long))
        if tok is not None:
            check_tokenizer(tok)


test_gguf, test_gguf_slow = fuzz(_gguf)


# -- images (ask --image) ------------------------------------------------------------------------------------

IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "ICO")


def _image(b, data):
    """An image file in any format PIL opens, damaged: ImageProcessor.load gives (3, 32, 32) or refuses it."""
    from scratchllm.data.images import ImageProcessor

    if not hasattr(b, "images"):
        import io

        from PIL import Image

        b.images = {}
        for fmt in IMAGE_FORMATS:
            buf = io.BytesIO()
            Image.new("RGB", (20, 12), (200, 30, 90)).save(buf, format=fmt)
            b.images[fmt] = buf.getvalue()
    valid = b.images[data.draw(st.sampled_from(IMAGE_FORMATS))]
    path = b.root / "image"
    write(path, data.draw(damaged_bytes(valid)))
    pixels = survives(lambda: ImageProcessor(32).load(path))
    if pixels is not None:
        assert pixels.shape == (3, 32, 32)


test_image_file, test_image_file_slow = fuzz(_image)


def test_every_reader_has_a_default_and_a_slow_fuzz_test():
    tests = [name for name in globals() if name.startswith("test_") and name != "test_every_reader_has_a_default_and_a_slow_fuzz_test"]
    fast = [t for t in tests if not t.endswith("_slow")]
    assert len(fast) >= 10 and all(f"{t}_slow" in tests for t in fast)
    assert data_file("gpt2", "encoder.json").is_file()  # the real GPT-2 files are read in test_bpe.py and test_hostile.py
