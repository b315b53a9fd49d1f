"""Hugging Face folders <-> scratchllm models (GPT2LMHeadModel, LlamaForCausalLM; Qwen3ForCausalLM in).

A folder is `config.json` + `model.safetensors` (or shards listed in `model.safetensors.index.json`),
with `tokenizer.json` or a tiktoken `tokenizer.model` beside it when present. The maps below are the
whole story: which tensor goes where, and the two layout changes:
  - our Linear stores its weight (in, out) (see layers/linear.py), as GPT-2's Conv1D does; the
    nn.Linear weights of Llama, Gemma and SigLIP are (out, in), so they are transposed (`_t`);
  - Llama and SigLIP store q, k and v as separate projections (GPT-2 as one); ours is one fused `qkv`;
  - a tied output head is the embedding table itself: it has no tensor of its own.
Llama's q and k rows are already in the split-halves RoPE layout our RoPE uses (see layers/rope.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from scratchllm.errors import ScratchLLMError
from scratchllm.models import GemmaConfig, GPTConfig, LlamaConfig, build_model

# -- configs ---------------------------------------------------------------------------------------

_GPT2_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}


def config_from_hf(hf: dict[str, Any]) -> tuple[str, Any]:
    kind = hf.get("model_type")
    if kind == "gpt2":
        if hf.get("activation_function", "gelu_new") not in _GPT2_ACTIVATIONS:
            raise ScratchLLMError(f"GPT-2 activation {hf.get('activation_function')!r} is not supported")
        if not hf.get("tie_word_embeddings", True):
            raise ScratchLLMError("untied GPT-2 embeddings are not supported")
        return "gpt", GPTConfig(vocab_size=hf["vocab_size"], block_size=hf["n_positions"], n_layer=hf["n_layer"],
                                n_head=hf["n_head"], n_embd=hf["n_embd"], dropout=0.0, bias=True,
                                activation=_GPT2_ACTIVATIONS[hf.get("activation_function", "gelu_new")],
                                norm_eps=hf.get("layer_norm_epsilon", 1e-5))
    if kind == "gemma":
        if hf.get("hidden_activation", hf.get("hidden_act")) not in ("gelu_pytorch_tanh", "gelu_tanh", None):
            raise ScratchLLMError(f"Gemma activation {hf.get('hidden_activation')!r} is not supported")
        rope = dict(hf.get("rope_parameters") or {})
        return "gemma", GemmaConfig(
            vocab_size=hf["vocab_size"], block_size=hf.get("max_position_embeddings", 8192),
            n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
            n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"], n_embd=hf["hidden_size"],
            head_dim=hf.get("head_dim"), intermediate_size=hf["intermediate_size"], norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)))
    if kind in ("llama", "qwen3"):  # Qwen3 is Llama plus QK-norm
        if hf.get("attention_bias") or hf.get("mlp_bias"):
            raise ScratchLLMError("Llama checkpoints with attention or MLP biases are not supported")
        rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
        theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type not in ("default", "llama3"):
            raise ScratchLLMError(f"RoPE type {rope_type!r} is not supported (default and llama3 are)")
        scaled = rope_type == "llama3"
        return "llama", LlamaConfig(
            vocab_size=hf["vocab_size"], block_size=hf.get("max_position_embeddings", 2048),
            n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
            n_kv_head=hf.get("num_key_value_heads") or hf["num_attention_heads"], n_embd=hf["hidden_size"],
            head_dim=hf.get("head_dim"), intermediate_size=hf["intermediate_size"], norm_eps=hf.get("rms_norm_eps", 1e-6),
            rope_theta=theta, rope_factor=rope["factor"] if scaled else None,
            rope_low_freq_factor=rope.get("low_freq_factor", 1.0), rope_high_freq_factor=rope.get("high_freq_factor", 4.0),
            rope_original_max_position=rope.get("original_max_position_embeddings", 8192),
            tie_embeddings=hf.get("tie_word_embeddings", False), qk_norm=kind == "qwen3")
    raise ScratchLLMError(f"Hugging Face model type {kind!r} is not supported (gpt2, llama, qwen3 and gemma are)")


def config_to_hf(model_type: str, c) -> dict[str, Any]:
    if model_type == "gpt":
        act = {v: k for k, v in _GPT2_ACTIVATIONS.items()}[c.activation] if c.activation != "gelu_tanh" else "gelu_new"
        if not c.bias:
            raise ScratchLLMError("GPT-2's format has biases; this GPT was built with bias=False and cannot be exported as GPT-2")
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": c.vocab_size,
                "n_positions": c.block_size, "n_embd": c.n_embd, "n_layer": c.n_layer, "n_head": c.n_head,
                "n_inner": None, "activation_function": act, "layer_norm_epsilon": c.norm_eps,
                "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "tie_word_embeddings": True,
                "bos_token_id": None, "eos_token_id": None, "torch_dtype": "float32"}
    if model_type == "llama":
        out = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": c.vocab_size,
               "max_position_embeddings": c.block_size, "hidden_size": c.n_embd, "intermediate_size": c.hidden_dim,
               "num_hidden_layers": c.n_layer, "num_attention_heads": c.n_head, "num_key_value_heads": c.n_kv_head,
               "head_dim": c.head_size, "hidden_act": "silu", "rms_norm_eps": c.norm_eps,
               "rope_theta": c.rope_theta, "attention_bias": False, "mlp_bias": False,
               "tie_word_embeddings": c.tie_embeddings, "bos_token_id": None, "eos_token_id": None, "torch_dtype": "float32"}
        if c.qk_norm:
            raise ScratchLLMError("LlamaForCausalLM has no QK-norm; a model with qk_norm=true cannot be exported as Llama")
        if c.rope_factor is not None:
            out["rope_scaling"] = {"rope_type": "llama3", "factor": c.rope_factor, "low_freq_factor": c.rope_low_freq_factor,
                                   "high_freq_factor": c.rope_high_freq_factor,
                                   "original_max_position_embeddings": c.rope_original_max_position}
        return out
    raise ScratchLLMError(f"model type {model_type!r} has no Hugging Face export")


# -- state dicts -----------------------------------------------------------------------------------

def _t(w: torch.Tensor) -> torch.Tensor:
    """nn.Linear's (out, in) weight <-> our Linear's (in, out)."""
    return w.t().contiguous()


def state_dict_from_hf(model_type: str, sd: dict[str, torch.Tensor], c, prefix: str | None = None) -> dict[str, torch.Tensor]:
    """Our names from theirs. `prefix` is where a Llama-style decoder's tensors sit (default "model.")."""
    out: dict[str, torch.Tensor] = {}
    if model_type == "gpt":
        p = "transformer."
        out["wte.weight"], out["wpe.weight"] = sd[p + "wte.weight"], sd[p + "wpe.weight"]
        out["ln_f.weight"], out["ln_f.bias"] = sd[p + "ln_f.weight"], sd[p + "ln_f.bias"]
        for i in range(c.n_layer):
            h, b = f"{p}h.{i}.", f"blocks.{i}."
            for ours, theirs in (("ln_1", "ln_1"), ("ln_2", "ln_2")):
                out[b + ours + ".weight"], out[b + ours + ".bias"] = sd[h + theirs + ".weight"], sd[h + theirs + ".bias"]
            for ours, theirs in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"), ("mlp.fc", "mlp.c_fc"),
                                 ("mlp.proj", "mlp.c_proj")):
                out[b + ours + ".weight"] = sd[h + theirs + ".weight"]  # Conv1D is (in, out) already
                out[b + ours + ".bias"] = sd[h + theirs + ".bias"]
        return out
    p = prefix if prefix is not None else "model."
    out["embed.weight"], out["norm.weight"] = sd[p + "embed_tokens.weight"], sd[p + "norm.weight"]
    if not c.tie_embeddings:
        out["lm_head.weight"] = _t(sd.get("lm_head.weight", sd[p + "embed_tokens.weight"]))
    for i in range(c.n_layer):
        h, b = f"{p}layers.{i}.", f"blocks.{i}."
        a = h + "self_attn."
        out[b + "attn.qkv.weight"] = _t(torch.cat([sd[a + "q_proj.weight"], sd[a + "k_proj.weight"], sd[a + "v_proj.weight"]]))
        out[b + "attn.proj.weight"] = _t(sd[a + "o_proj.weight"])
        out[f"{b}mlp.gate_up.weight"] = _t(torch.cat([sd[f"{h}mlp.gate_proj.weight"], sd[f"{h}mlp.up_proj.weight"]]))
        out[f"{b}mlp.down.weight"] = _t(sd[f"{h}mlp.down_proj.weight"])
        out[b + "attn_norm.weight"] = sd[h + "input_layernorm.weight"]
        out[b + "mlp_norm.weight"] = sd[h + "post_attention_layernorm.weight"]
        if c.qk_norm:
            out[b + "attn.q_norm.weight"], out[b + "attn.k_norm.weight"] = sd[a + "q_norm.weight"], sd[a + "k_norm.weight"]
    return out


def state_dict_to_hf(model_type: str, sd: dict[str, torch.Tensor], c) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    if model_type == "gpt":
        p = "transformer."
        out[p + "wte.weight"], out[p + "wpe.weight"] = sd["wte.weight"], sd["wpe.weight"]
        out[p + "ln_f.weight"], out[p + "ln_f.bias"] = sd["ln_f.weight"], sd["ln_f.bias"]
        for i in range(c.n_layer):
            h, b = f"{p}h.{i}.", f"blocks.{i}."
            for name in ("ln_1", "ln_2"):
                out[h + name + ".weight"], out[h + name + ".bias"] = sd[b + name + ".weight"], sd[b + name + ".bias"]
            for ours, theirs in (("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"), ("mlp.fc", "mlp.c_fc"),
                                 ("mlp.proj", "mlp.c_proj")):
                out[h + theirs + ".weight"] = sd[b + ours + ".weight"]
                out[h + theirs + ".bias"] = sd[b + ours + ".bias"]
        return out
    p = "model."
    out[p + "embed_tokens.weight"], out[p + "norm.weight"] = sd["embed.weight"], sd["norm.weight"]
    if not c.tie_embeddings:
        out["lm_head.weight"] = _t(sd["lm_head.weight"])
    head_dim = c.head_size
    for i in range(c.n_layer):
        h, b = f"{p}layers.{i}.", f"blocks.{i}."
        q, k, v = _t(sd[b + "attn.qkv.weight"]).split([c.n_head * head_dim, c.n_kv_head * head_dim, c.n_kv_head * head_dim])
        a = h + "self_attn."
        out[a + "q_proj.weight"], out[a + "k_proj.weight"], out[a + "v_proj.weight"] = q.contiguous(), k.contiguous(), v.contiguous()
        out[a + "o_proj.weight"] = _t(sd[b + "attn.proj.weight"])
        gate, up = _t(sd[f"{b}mlp.gate_up.weight"]).chunk(2)
        out[f"{h}mlp.gate_proj.weight"], out[f"{h}mlp.up_proj.weight"] = gate.contiguous(), up.contiguous()
        out[f"{h}mlp.down_proj.weight"] = _t(sd[f"{b}mlp.down.weight"])
        out[h + "input_layernorm.weight"] = sd[b + "attn_norm.weight"]
        out[h + "post_attention_layernorm.weight"] = sd[b + "mlp_norm.weight"]
    return out


# -- folders ---------------------------------------------------------------------------------------

def is_hf_folder(path: Path) -> bool:
    try:
        cfg = json.loads((Path(path) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(cfg, dict) and "model_type" in cfg and cfg.get("format") != "scratchllm"


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    try:
        if single.is_file():
            return load_file(str(single))
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            sd: dict[str, torch.Tensor] = {}
            for shard in shards:
                sd.update(load_file(str(folder / shard)))
            return sd
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise ScratchLLMError(f"weights in {folder} are unreadable ({e.__class__.__name__}); re-download or re-export them") from None
    except Exception as e:  # safetensors' own error for truncated files
        raise ScratchLLMError(f"weights in {folder} are corrupt or truncated ({str(e).splitlines()[0][:100]})") from None
    raise ScratchLLMError(f"{folder} has no model.safetensors or model.safetensors.index.json (PyTorch .bin files are not read: no pickle)")


def load_hf(folder: str | Path, device: str = "cpu"):
    """(model in eval mode, tokenizer or None, model_type) from a Hugging Face folder."""
    from scratchllm.tokenizers.io import load_tokenizer_path

    folder = Path(folder)
    model_type, cfg = config_from_hf(json.loads((folder / "config.json").read_text()))
    model = build_model(model_type, cfg)
    sd = state_dict_from_hf(model_type, _read_weights(folder), cfg)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise ScratchLLMError(f"{folder}: weights do not match the config (missing {sorted(missing)[:3]}, unexpected {unexpected[:3]})")
    tokenizer = None
    for name in ("tokenizer.json", "tokenizer.model"):
        if (folder / name).is_file():
            tokenizer = load_tokenizer_path(folder / name)
            break
    return model.to(device).eval(), tokenizer, model_type


def save_hf(model, model_type: str, folder: str | Path, tokenizer=None) -> Path:
    """Write a folder that `transformers`' `from_pretrained` loads (and `load_hf` reads back)."""
    from scratchllm.train.checkpoint import write_folder_atomically
    from scratchllm.tokenizers.formats import save_hf as save_hf_tokenizer

    cfg = model.config
    hf_config = config_to_hf(model_type, cfg)
    sd = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}

    def write(tmp: Path) -> None:
        (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
        save_file(state_dict_to_hf(model_type, sd, cfg), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if tokenizer is not None and getattr(tokenizer, "kind", None) == "bpe":
            save_hf_tokenizer(tokenizer, tmp / "tokenizer.json")

    write_folder_atomically(Path(folder), write)
    return Path(folder)


# -- SigLIP ----------------------------------------------------------------------------------------

def siglip_vision_config_from_hf(hf: dict[str, Any]):
    from scratchllm.models.siglip import SiglipVisionConfig

    return SiglipVisionConfig(image_size=hf["image_size"], patch_size=hf["patch_size"], num_channels=hf.get("num_channels", 3),
                              n_embd=hf["hidden_size"], n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
                              intermediate_size=hf["intermediate_size"], norm_eps=hf.get("layer_norm_eps", 1e-6),
                              use_head=hf.get("vision_use_head", True))


def siglip_text_config_from_hf(hf: dict[str, Any]):
    from scratchllm.models.siglip import SiglipTextConfig

    return SiglipTextConfig(vocab_size=hf["vocab_size"], block_size=hf["max_position_embeddings"], n_embd=hf["hidden_size"],
                            n_layer=hf["num_hidden_layers"], n_head=hf["num_attention_heads"],
                            intermediate_size=hf["intermediate_size"], norm_eps=hf.get("layer_norm_eps", 1e-6),
                            projection_size=hf.get("projection_size") or hf["hidden_size"])


def _siglip_encoder(sd, theirs: str, ours: str, n_layer: int, out: dict) -> None:
    """HF's encoder layers (layer_norm1, self_attn q/k/v/out, layer_norm2, mlp fc1/fc2) -> our PreNormBlocks."""
    for i in range(n_layer):
        h, b = f"{theirs}encoder.layers.{i}.", f"{ours}blocks.{i}."
        for x in ("weight", "bias"):
            out[f"{b}ln_1.{x}"], out[f"{b}ln_2.{x}"] = sd[f"{h}layer_norm1.{x}"], sd[f"{h}layer_norm2.{x}"]
        _linear(out, f"{b}attn.qkv", *(sd[f"{h}self_attn.{p}_proj.{x}"] for p in ("q", "k", "v") for x in ("weight", "bias")))
        _linear(out, f"{b}attn.proj", sd[f"{h}self_attn.out_proj.weight"], sd[f"{h}self_attn.out_proj.bias"])
        _linear(out, f"{b}mlp.fc", sd[f"{h}mlp.fc1.weight"], sd[f"{h}mlp.fc1.bias"])
        _linear(out, f"{b}mlp.proj", sd[f"{h}mlp.fc2.weight"], sd[f"{h}mlp.fc2.bias"])


def _linear(out: dict, ours: str, *weights_and_biases: torch.Tensor) -> None:
    """One of our Linear layers from one or more nn.Linear (weight, bias) pairs, stacked by output (q, k, v)."""
    weights, biases = weights_and_biases[0::2], weights_and_biases[1::2]
    out[f"{ours}.weight"], out[f"{ours}.bias"] = _t(torch.cat(weights)), torch.cat(biases)


def siglip_vision_from_hf(sd: dict[str, torch.Tensor], c, theirs: str = "vision_model.", ours: str = "") -> dict:
    out: dict[str, torch.Tensor] = {}
    e = theirs + "embeddings."
    for x in ("weight", "bias"):
        out[f"{ours}patch_embed.{x}"] = sd[f"{e}patch_embedding.{x}"]
        out[f"{ours}post_norm.{x}"] = sd[f"{theirs}post_layernorm.{x}"]
    out[f"{ours}pos_embed.weight"] = sd[f"{e}position_embedding.weight"]
    _siglip_encoder(sd, theirs, ours, c.n_layer, out)
    if c.use_head:
        h = theirs + "head."
        out[f"{ours}head.probe"] = sd[h + "probe"]
        _linear(out, f"{ours}head.attn.qkv", sd[h + "attention.in_proj_weight"], sd[h + "attention.in_proj_bias"])
        _linear(out, f"{ours}head.attn.proj", sd[f"{h}attention.out_proj.weight"], sd[f"{h}attention.out_proj.bias"])
        _linear(out, f"{ours}head.mlp.fc", sd[f"{h}mlp.fc1.weight"], sd[f"{h}mlp.fc1.bias"])
        _linear(out, f"{ours}head.mlp.proj", sd[f"{h}mlp.fc2.weight"], sd[f"{h}mlp.fc2.bias"])
        for x in ("weight", "bias"):
            out[f"{ours}head.norm.{x}"] = sd[f"{h}layernorm.{x}"]
    return out


def siglip_text_from_hf(sd: dict[str, torch.Tensor], c, theirs: str = "text_model.", ours: str = "") -> dict:
    out: dict[str, torch.Tensor] = {}
    out[f"{ours}token_embed.weight"] = sd[f"{theirs}embeddings.token_embedding.weight"]
    out[f"{ours}pos_embed.weight"] = sd[f"{theirs}embeddings.position_embedding.weight"]
    for x in ("weight", "bias"):
        out[f"{ours}final_norm.{x}"] = sd[f"{theirs}final_layer_norm.{x}"]
    _linear(out, f"{ours}head", sd[f"{theirs}head.weight"], sd[f"{theirs}head.bias"])
    _siglip_encoder(sd, theirs, ours, c.n_layer, out)
    return out


def load_hf_siglip(folder: str | Path):
    """A SiglipVisionModel folder -> SiglipVision; a SiglipModel folder -> Siglip (both towers)."""
    from scratchllm.models.siglip import Siglip, SiglipConfig, SiglipVision

    folder = Path(folder)
    hf = json.loads((folder / "config.json").read_text())
    sd = _read_weights(folder)
    if hf.get("model_type") == "siglip_vision_model":
        cfg = siglip_vision_config_from_hf(hf)
        prefix = "vision_model." if "vision_model.embeddings.patch_embedding.weight" in sd else ""  # saved either way
        model, ours = SiglipVision(cfg), siglip_vision_from_hf(sd, cfg, theirs=prefix)
    elif hf.get("model_type") == "siglip":
        cfg = SiglipConfig(siglip_vision_config_from_hf(hf["vision_config"]), siglip_text_config_from_hf(hf["text_config"]))
        model = Siglip(cfg)
        ours = {**siglip_vision_from_hf(sd, cfg.vision, ours="vision."), **siglip_text_from_hf(sd, cfg.text, ours="text."),
                "logit_scale": sd["logit_scale"].reshape(1), "logit_bias": sd["logit_bias"].reshape(1)}
    else:
        raise ScratchLLMError(f"{folder} is not a SigLIP folder (model_type {hf.get('model_type')!r})")
    model.load_state_dict(ours, strict=True)
    return model.eval()


def load_hf_paligemma(folder: str | Path):
    """A PaliGemmaForConditionalGeneration folder (Gemma 1 decoder) -> PaliGemma."""
    from scratchllm.models.paligemma import PaliGemma, PaliGemmaConfig

    folder = Path(folder)
    hf = json.loads((folder / "config.json").read_text())
    if hf.get("model_type") != "paligemma":
        raise ScratchLLMError(f"{folder} is not a PaliGemma folder (model_type {hf.get('model_type')!r})")
    kind, text_cfg = config_from_hf(hf["text_config"])
    if kind != "gemma":
        raise ScratchLLMError(f"PaliGemma with a {kind} decoder is not supported (Gemma 1 is)")
    vision_cfg = siglip_vision_config_from_hf({**hf["vision_config"], "vision_use_head": False})
    cfg = PaliGemmaConfig(vision_cfg, text_cfg, hf.get("image_token_id", hf.get("image_token_index")))
    sd = _read_weights(folder)

    def prefix_of(suffix: str) -> str:  # where a part sits: versions of transformers save different names
        found = [k[: -len(suffix)] for k in sd if k.endswith(suffix)]
        if len(found) != 1:
            raise ScratchLLMError(f"{folder}: cannot find a unique '{suffix}' in the weights")
        return found[0]

    projector = prefix_of("multi_modal_projector.linear.weight") + "multi_modal_projector.linear."
    ours = {**siglip_vision_from_hf(sd, vision_cfg, theirs=prefix_of("embeddings.patch_embedding.weight"), ours="vision."),
            "projector.weight": _t(sd[projector + "weight"]), "projector.bias": sd[projector + "bias"]}
    for k, v in state_dict_from_hf("gemma", sd, text_cfg, prefix=prefix_of("embed_tokens.weight")).items():
        ours["language." + k] = v
    model = PaliGemma(cfg)
    model.load_state_dict(ours, strict=True)
    return model.eval()


def load_hf_folder(folder: str | Path, device: str = "cpu"):
    """(model in eval mode, tokenizer or None) from any Hugging Face folder this module reads."""
    kind = json.loads((Path(folder) / "config.json").read_text()).get("model_type")
    if kind == "paligemma":
        return load_hf_paligemma(folder).to(device), None
    if kind in ("siglip", "siglip_vision_model"):
        return load_hf_siglip(folder).to(device), None
    model, tokenizer, _ = load_hf(folder, device=device)
    return model, tokenizer
