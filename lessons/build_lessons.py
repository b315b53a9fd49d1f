"""Build the course: each lesson's jupytext source (NN_name.py, the file to edit and review) becomes
its executed notebook (NN_name.ipynb, committed with its outputs so it reads on a code host).

    .venv/bin/python lessons/build_lessons.py          # every lesson
    .venv/bin/python lessons/build_lessons.py 03 04    # the lessons whose names start with 03 or 04

Each lesson runs top to bottom in a fresh kernel of this Python, from the lessons/ folder, so the
execution counts go 1..N. tests/test_lessons.py checks that each notebook matches its source and
was run in order, and runs every lesson again.

Each lesson ends by printing its own running time ("This lesson ran in 41.2 s"); the build prints a
table of those beside the wall time of the whole execution (which adds the kernel's start-up).
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

LESSONS_DIR = Path(__file__).resolve().parent
BUDGET_SECONDS = 90  # each lesson runs in under this on 2 CPU cores
OWN_TIME = re.compile(r"This lesson ran in ([0-9.]+) s")


def lesson_sources() -> list[Path]:
    return sorted(LESSONS_DIR.glob("[0-9][0-9]_*.py"))


def execute(source: Path, timeout: int = 600) -> nbformat.NotebookNode:
    """The lesson as a notebook, executed in order from lessons/. Raises on the first failing cell."""
    notebook = jupytext.read(source)
    # record_timing=False: no per-cell timestamps in the metadata, so a rebuild changes only what the code prints
    NotebookClient(notebook, timeout=timeout, kernel_name="python3", record_timing=False,
                   resources={"metadata": {"path": str(LESSONS_DIR)}}).execute()
    for cell in notebook.cells:
        if cell.cell_type == "code":
            cell.outputs = merge_streams(cell.outputs)
    return notebook


def merge_streams(outputs: list) -> list:
    """Join consecutive prints to the same stream into one output, as JupyterLab shows and saves them:
    how the kernel happened to split a cell's printing into messages is timing, not content."""
    merged: list = []
    for out in outputs:
        if out.output_type == "stream" and merged and merged[-1].output_type == "stream" and merged[-1].name == out.name:
            merged[-1].text += out.text
        else:
            merged.append(out)
    return merged


def own_running_time(notebook: nbformat.NotebookNode) -> float | None:
    """The time the lesson printed for itself in its last code cell, or None if it printed none."""
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    text = "".join(out.get("text", "") for out in code[-1].outputs if out.output_type == "stream") if code else ""
    found = OWN_TIME.search(text)
    return float(found.group(1)) if found else None


def main(prefixes: list[str]) -> None:
    sources = [s for s in lesson_sources() if not prefixes or s.name.startswith(tuple(prefixes))]
    if not sources:
        sys.exit(f"error: no lesson in {LESSONS_DIR} starts with {' or '.join(prefixes)}")
    rows = []
    for source in sources:
        start = time.perf_counter()
        notebook = execute(source)
        wall = time.perf_counter() - start
        jupytext.write(notebook, source.with_suffix(".ipynb"))
        rows.append((source.stem, own_running_time(notebook), wall))
        print(f"{source.with_suffix('.ipynb').name}: executed in {wall:.1f} s", flush=True)
    print(f"\n{'lesson':<28} {'its own time':>12} {'wall':>8}")
    for name, own, wall in rows:
        own_text = f"{own:.1f} s" if own is not None else "(not printed)"
        flag = "  over the budget" if (own or wall) > BUDGET_SECONDS else ""
        print(f"{name:<28} {own_text:>12} {wall:>6.1f} s{flag}")
    print(f"{'total':<28} {sum(own or 0 for _, own, _ in rows):>10.1f} s {sum(w for *_, w in rows):>6.1f} s")
    print(f"(each lesson should run in under {BUDGET_SECONDS} s on 2 CPU cores)")


if __name__ == "__main__":
    main(sys.argv[1:])
