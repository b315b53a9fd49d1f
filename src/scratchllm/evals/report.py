"""Results a user can read: the table printed when an evaluation ends, the results file, and several
results compared, as a table and as a bar chart (base vs fine-tuned vs quantized in one picture).

A results file is the JSON `evaluate_tasks` returns: {"model": ..., "tasks": {"hellaswag": {"acc": 0.41,
"acc_stderr": 0.005, "items": 10042, ...}, ...}}. Files given to `--compare` are checked before use: a
file that is not such a JSON is a one-line error, never a traceback.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from scratchllm.errors import ScratchLLMError
from scratchllm.fileio import JSON_ERRORS, atomic_path, atomic_write, check_output

METRICS = ("acc", "acc_norm")


def table(results: dict) -> str:
    """One line per task and metric: value and standard error in %, the items scored, items per second."""
    lines = [f"{'task':<15} {'metric':<9} {'value':>7} {'stderr':>7} {'items':>7} {'items/s':>8}"]
    for name, r in results["tasks"].items():
        for i, metric in enumerate(m for m in METRICS if m in r):
            stderr = r.get(f"{metric}_stderr")
            speed = f"{r['items_per_s']:8.2f}" if i == 0 and "items_per_s" in r else " " * 8
            lines.append(f"{name if i == 0 else '':<15} {metric:<9} {100 * r[metric]:7.2f} "
                         f"{100 * stderr if stderr is not None else math.nan:7.2f} {r['items'] if i == 0 else '':>7} {speed}")
    shots = results.get("num_fewshot", 0)
    lines.append(f"{results['model']} ({results.get('dtype', '?')}, {shots}-shot); values and standard errors in %")
    return "\n".join(lines)


def write_results(results: dict, path: str | Path, force: bool = False) -> Path:
    """The results as JSON at `path`, written whole or not at all; an existing file only with `force`."""
    path = check_output(path, kind="file", force=force)
    atomic_write(path, json.dumps(results, indent=2) + "\n")
    return path


def read_results(path: str | Path) -> dict:
    """A results file, checked: a model name and tasks whose metrics are numbers from 0 to 1."""
    path = Path(path)
    if not path.is_file():
        raise ScratchLLMError(f"{path} does not exist or is not a file; give results written by `scratchllm eval --tasks ... --out`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except JSON_ERRORS as e:
        raise ScratchLLMError(f"{path} is not a JSON file ({type(e).__name__}); give results written by "
                              "`scratchllm eval --tasks ... --out`") from None
    ok = isinstance(data, dict) and isinstance(data.get("model"), str) and isinstance(data.get("tasks"), dict) \
        and data["tasks"] and all(isinstance(k, str) and isinstance(v, dict) for k, v in data["tasks"].items())
    for r in data["tasks"].values() if ok else ():
        for key in [m for m in METRICS if m in r] + [f"{m}_stderr" for m in METRICS if r.get(f"{m}_stderr") is not None]:
            value = r[key]
            ok = ok and type(value) in (int, float) and 0 <= value <= 1
        ok = ok and any(m in r for m in METRICS) and type(r.get("items")) is int and r["items"] > 0
    if not ok:
        raise ScratchLLMError(f"{path} is not a results file of `scratchllm eval --tasks` (a model and tasks with "
                              "acc values from 0 to 1)")
    return data


def _labels(paths: list[str | Path]) -> list[str]:
    """Each file's name without .json; the parent folder too where two names are the same."""
    stems = [Path(p).stem for p in paths]
    return [f"{Path(p).parent.name}/{s}" if stems.count(s) > 1 else s for p, s in zip(paths, stems)]


def _rows(runs: list[dict]) -> list[tuple[str, str]]:
    """The (task, metric) pairs of the first run, in its order, that every run has."""
    return [(t, m) for t, r in runs[0]["tasks"].items() for m in METRICS
            if m in r and all(m in run["tasks"].get(t, {}) for run in runs)]


def comparison(paths: list[str | Path]) -> tuple[list[str], list[dict]]:
    if len(paths) < 1:
        raise ScratchLLMError("--compare needs one or more results files")
    runs = [read_results(p) for p in paths]
    if not _rows(runs):
        raise ScratchLLMError("the results files have no task and metric in common; compare runs of the same tasks")
    return _labels(paths), runs


def comparison_table(labels: list[str], runs: list[dict]) -> str:
    """One line per task and metric, one column per run (value ± stderr in %)."""
    width = max(14, *(len(label) for label in labels))
    lines = [f"{'task':<15} {'metric':<9} " + " ".join(f"{label:>{width}}" for label in labels)]
    for task, metric in _rows(runs):
        cells = []
        for run in runs:
            r = run["tasks"][task]
            stderr = r.get(f"{metric}_stderr")
            cell = f"{100 * r[metric]:.2f}" + (f" ± {100 * stderr:.2f}" if stderr is not None else "")
            cells.append(f"{cell:>{width}}")
        lines.append(f"{task:<15} {metric:<9} " + " ".join(cells))
    return "\n".join(lines)


def comparison_plot(labels: list[str], runs: list[dict], out: str | Path, force: bool = False) -> Path:
    """A bar chart: a group of bars per task and metric, a bar per run, with its standard error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if Path(out).suffix.lower() not in (".png", ".svg", ".pdf"):
        raise ScratchLLMError(f"--plot {out}: name a .png, .svg or .pdf file")
    out = check_output(out, kind="file", force=force)
    rows = _rows(runs)
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows) * max(1, len(runs) / 2)), 4.0))
    for i, (label, run) in enumerate(zip(labels, runs)):
        values = [100 * run["tasks"][t][m] for t, m in rows]
        errors = [100 * (run["tasks"][t].get(f"{m}_stderr") or 0.0) for t, m in rows]
        x = [j + (i - (len(runs) - 1) / 2) * width for j in range(len(rows))]
        ax.bar(x, values, width, yerr=errors, capsize=3, label=label)
    ax.set_xticks(range(len(rows)), [f"{t}\n{m}" for t, m in rows], fontsize=8)
    ax.set_ylabel("accuracy (%), ± one standard error")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format=out.suffix.lower()[1:], dpi=120)
    plt.close(fig)
    return out
