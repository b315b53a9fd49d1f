"""Our GPT and Llama against transformers' GPT2LMHeadModel and LlamaForCausalLM: tiny random configs,
weights copied across through the Hugging Face folder format, logits equal to 1e-5 in fp32; in bf16,
as close to the fp32 logits as transformers' own bf16 run; on CUDA too where there is a GPU."""

import json

import pytest
import torch

import scratchllm
from conftest import DEVICES
from scratchllm.errors import ScratchLLMError
from scratchllm.interop.hf import load_hf_folder, save_hf

transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()

ROPE_LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32}
LLAMA_CONFIGS = {
    "gqa-llama3-rope-tied": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                 intermediate_size=96, vocab_size=101, max_position_embeddings=128,
                                 rope_scaling=ROPE_LLAMA3, tie_word_embeddings=True, rms_norm_eps=1e-5),
    "mha-untied-odd": dict(hidden_size=48, num_hidden_layers=3, num_attention_heads=3, num_key_value_heads=3,
                           intermediate_size=83, vocab_size=97, max_position_embeddings=64, tie_word_embeddings=False,
                           rope_theta=10000.0),
    "mqa-head-dim": dict(hidden_size=40, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                         head_dim=12, intermediate_size=70, vocab_size=53, max_position_embeddings=64,
                         tie_word_embeddings=False, rope_scaling=ROPE_LLAMA3),
}


def hf_llama(name):
    torch.manual_seed(0)
    # a larger init than the default 0.02 gives logits of order 1, so a wrong detail shows well above 1e-5
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**LLAMA_CONFIGS[name], initializer_range=0.2)).eval()


def hf_gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=48, n_layer=2, n_head=4, vocab_size=101, n_positions=64,
                                  bos_token_id=0, eos_token_id=0, initializer_range=0.2)
    return transformers.GPT2LMHeadModel(cfg).eval()


def logits(model, idx):
    out = model(idx)
    return getattr(out, "logits", out).float()  # transformers' models return an output object


def max_diff(ours, theirs, vocab, T=40, device="cpu"):
    idx = torch.randint(vocab, (2, T), generator=torch.Generator().manual_seed(1)).to(device)
    with torch.no_grad():
        return (logits(ours, idx) - logits(theirs, idx)).abs().max().item()


def load(folder, device="cpu", precision="fp32"):
    return scratchllm.load_pretrained(folder, device=device, precision=precision).model


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["gqa-llama3-rope-tied", "gpt2"])
def test_bf16_is_as_close_to_fp32_as_transformers_bf16(tmp_path, name, device):
    """In bf16 both implementations round; ours may not round worse than theirs (and fp32 holds 1e-5 on any device)."""
    hf = (hf_gpt2() if name == "gpt2" else hf_llama(name)).to(device)
    hf.save_pretrained(tmp_path)
    vocab = hf.config.vocab_size
    assert max_diff(load(tmp_path, device), hf, vocab, device=device) <= 1e-5
    ours16 = load(tmp_path, device, "bf16")
    assert next(ours16.parameters()).dtype == torch.bfloat16
    ours_error = max_diff(ours16, hf, vocab, device=device)
    theirs16 = (hf_gpt2() if name == "gpt2" else hf_llama(name)).to(device=device, dtype=torch.bfloat16)
    hf_error = max_diff(theirs16, hf, vocab, device=device)
    assert 0 < ours_error <= 1.5 * hf_error, (ours_error, hf_error)


@pytest.mark.parametrize("name", list(LLAMA_CONFIGS))
def test_llama_import_matches_transformers(tmp_path, name):
    hf = hf_llama(name)
    hf.save_pretrained(tmp_path)
    ours = load(tmp_path)
    assert max_diff(ours, hf, hf.config.vocab_size) <= 1e-5


def test_gpt2_import_matches_transformers(tmp_path):
    hf = hf_gpt2()
    hf.save_pretrained(tmp_path)
    ours = load(tmp_path)
    assert max_diff(ours, hf, 101) <= 1e-5


def test_sharded_checkpoint(tmp_path):
    hf = hf_llama("mha-untied-odd")
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert max_diff(load(tmp_path), hf, 97) <= 1e-5


@pytest.mark.parametrize("name", ["gqa-llama3-rope-tied", "mha-untied-odd"])
def test_llama_export_loads_in_transformers(tmp_path, name):
    hf = hf_llama(name)
    hf.save_pretrained(tmp_path / "in")
    ours, _ = load_hf_folder(tmp_path / "in")
    save_hf(ours, tmp_path / "out")
    again = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert max_diff(ours, again, hf.config.vocab_size) <= 1e-5


def test_gpt_export_loads_in_transformers(tmp_path):
    hf_gpt2().save_pretrained(tmp_path / "in")
    ours, _ = load_hf_folder(tmp_path / "in")
    save_hf(ours, tmp_path / "out")
    again = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "out").eval()
    assert max_diff(ours, again, 101) <= 1e-5


def test_unsupported_and_broken_folders(tmp_path):
    hf = hf_llama("mha-untied-odd")
    hf.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ScratchLLMError, match="corrupt or truncated"):
        scratchllm.load_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "model_type": "mamba"}))
    with pytest.raises(ScratchLLMError, match="'mamba' is not supported"):
        scratchllm.load_pretrained(tmp_path)


@pytest.mark.parametrize("name", ["gqa-llama3-rope-tied", "mqa-head-dim", "gpt2"])
def test_greedy_generation_is_token_identical_to_hf_generate(tmp_path, name):
    from scratchllm.generate import generate_batch

    hf = hf_gpt2() if name == "gpt2" else hf_llama(name)
    hf.save_pretrained(tmp_path)
    ours = load(tmp_path)
    prompt = torch.randint(hf.config.vocab_size, (1, 7), generator=torch.Generator().manual_seed(2))
    theirs = hf.generate(prompt, max_new_tokens=30, do_sample=False, pad_token_id=0, eos_token_id=None,
                         attention_mask=torch.ones_like(prompt))[0, 7:].tolist()
    mine = [step[0] for step in generate_batch(ours, prompt.tolist(), 30, temperature=0)]
    assert mine == theirs


@pytest.mark.parametrize("name", ["gqa-llama3-rope-tied", "mqa-head-dim", "gpt2"])
def test_bf16_generation_follows_hf_bf16_within_rounding(tmp_path, name):
    """In bf16 two correct implementations may part where two logits are closer than bf16 rounds
    (random tiny models have many near-ties). So: at every step of transformers' bf16 greedy reply,
    the token it chose is our bf16 argmax, or within our own bf16-vs-fp32 error of it; and our bf16
    cached decoding runs (the KV cache in bf16)."""
    from scratchllm.generate import generate_batch

    hf = hf_gpt2() if name == "gpt2" else hf_llama(name)
    hf.save_pretrained(tmp_path)
    ours16, ours32 = load(tmp_path, precision="bf16"), load(tmp_path)
    prompt = torch.randint(hf.config.vocab_size, (1, 7), generator=torch.Generator().manual_seed(2))
    seq = hf.to(torch.bfloat16).generate(prompt, max_new_tokens=30, do_sample=False, pad_token_id=0, eos_token_id=None,
                                         attention_mask=torch.ones_like(prompt))[0]
    with torch.no_grad():
        lo16, lo32 = logits(ours16, seq[None, :-1])[0], logits(ours32, seq[None, :-1])[0]
    for t in range(6, len(seq) - 1):
        gap = lo16[t].max() - lo16[t, seq[t + 1]]
        assert gap <= (lo16[t] - lo32[t]).abs().max(), (t, gap)
    assert len(list(generate_batch(ours16, prompt.tolist(), 30, temperature=0))) == 30


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["gqa-llama3-rope-tied", "gpt2"])
def test_cuda_generation_equals_cpu_greedy_tokens(tmp_path, name):
    from scratchllm.generate import generate_batch

    (hf_gpt2() if name == "gpt2" else hf_llama(name)).save_pretrained(tmp_path)
    prompts = [[5, 9, 2, 7], [3, 1]]
    cpu = list(generate_batch(load(tmp_path), prompts, 30, temperature=0))
    cuda = list(generate_batch(load(tmp_path, "cuda"), prompts, 30, temperature=0))
    assert cuda == cpu


def test_qk_norm_matches_qwen3(tmp_path):
    """Our optional QK-norm is Qwen3's: a per-head RMSNorm on q and k before RoPE."""
    torch.manual_seed(0)
    cfg = transformers.Qwen3Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   head_dim=16, intermediate_size=96, vocab_size=101, max_position_embeddings=128,
                                   tie_word_embeddings=False, initializer_range=0.2)
    hf = transformers.Qwen3ForCausalLM(cfg).eval()
    with torch.no_grad():  # norms start at 1; make them matter
        for layer in hf.model.layers:
            layer.self_attn.q_norm.weight.uniform_(0.5, 1.5)
            layer.self_attn.k_norm.weight.uniform_(0.5, 1.5)
    hf.save_pretrained(tmp_path)
    ours = load(tmp_path)
    assert ours.config.qk_norm
    assert max_diff(ours, hf, 101) <= 1e-5
    save_hf(ours, tmp_path / "out")  # and back out, as a Qwen3 folder
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(again).__name__ == "Qwen3ForCausalLM" and max_diff(ours, again, 101) <= 1e-5


def test_trained_llama_converts_to_hf_with_its_tokenizer(tmp_path, corpus_60k, trained, capsys):
    from scratchllm.cli import main

    out, small_corpus = trained("llama-bpe-baby"), corpus_60k
    assert main(["convert", str(out), "--to-hf", str(tmp_path / "hf")]) == 0
    ours = scratchllm.load_pretrained(out)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    assert max_diff(ours.model, theirs, 300, T=32) <= 1e-5
    tokenizers = pytest.importorskip("tokenizers")
    text = small_corpus.read_text()[:3000]
    assert tokenizers.Tokenizer.from_file(str(tmp_path / "hf" / "tokenizer.json")).encode(text).ids == ours.tokenizer.encode(text)
    again = scratchllm.load_pretrained(tmp_path / "hf")
    assert again.tokenizer.encode(text) == ours.tokenizer.encode(text)
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(tmp_path / "hf"), "--prompt", "ROMEO:", "--max-new-tokens", "5",
                 "--temperature", "0", "--stop", "<|endoftext|>"]) == 0
    assert capsys.readouterr().out.startswith("ROMEO:")


def test_gemma_matches_transformers(tmp_path):
    """Gemma = the Llama code with (1 + w) RMSNorm, GeGLU, sqrt(d)-scaled embeddings, tied head, MQA."""
    torch.manual_seed(0)
    cfg = transformers.GemmaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=1,
                                   head_dim=16, intermediate_size=96, vocab_size=101, max_position_embeddings=128,
                                   initializer_range=0.2)
    hf = transformers.GemmaForCausalLM(cfg).eval()
    with torch.no_grad():  # Gemma's norm weights start at 0 (= scale 1); make them matter
        for name, p in hf.named_parameters():
            if "norm" in name:
                p.uniform_(-0.5, 0.5)
    hf.save_pretrained(tmp_path)
    ours = scratchllm.load_pretrained(tmp_path)
    assert ours.spec.model_type == "gemma" and ours.model.config.norm_offset == 1.0
    assert max_diff(ours.model, hf, 101) <= 1e-5
