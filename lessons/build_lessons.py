"""Build the course: each lesson's jupytext source (NN_name.py, the file to edit and review) becomes
its executed notebook (NN_name.ipynb, committed with its outputs so it reads on a code host).

    .venv/bin/python lessons/build_lessons.py          # every lesson
    .venv/bin/python lessons/build_lessons.py 03 04    # the lessons whose names start with 03 or 04

Each lesson runs top to bottom in a fresh kernel of this Python, from the lessons/ folder, so the
execution counts go 1..N. tests/test_lessons.py checks that each notebook matches its source and
was run in order, and runs every lesson again.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

LESSONS_DIR = Path(__file__).resolve().parent


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


def main(prefixes: list[str]) -> None:
    sources = [s for s in lesson_sources() if not prefixes or s.name.startswith(tuple(prefixes))]
    if not sources:
        sys.exit(f"error: no lesson in {LESSONS_DIR} starts with {' or '.join(prefixes)}")
    total = 0.0
    for source in sources:
        start = time.perf_counter()
        notebook = execute(source)
        seconds = time.perf_counter() - start
        total += seconds
        jupytext.write(notebook, source.with_suffix(".ipynb"))
        print(f"{source.with_suffix('.ipynb').name}: executed in {seconds:.1f} s")
    print(f"total: {total:.1f} s")


if __name__ == "__main__":
    main(sys.argv[1:])
