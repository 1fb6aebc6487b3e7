"""The student edition works for every exercise (issue 17, item 3).

`python -m minildm course student-edition` replaces each solution with `raise NotImplementedError`.
For every exercise of every lesson this test runs, in a fresh namespace, the notebook's imports, the
exercises before it, the stubbed exercise cell and its check cell, and asserts that the check answers
with a hint (a CheckFailed whose message starts with "Not yet"), not with a NameError or any other
exception. The instructor edition's solutions must pass the same checks.
"""
import ast
import contextlib
import io
import json
import os
from pathlib import Path

import pytest
import torch

from minildm import checks, course

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
LESSONS = sorted(p.name for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def code_cells(notebook: dict) -> list[str]:
    return ["".join(c["source"]) for c in notebook["cells"] if c["cell_type"] == "code"]


def exercises(notebook: dict) -> list[tuple[int, int]]:
    """(exercise cell, check cell) positions among the code cells: a cell with a solution (or its stub)
    and the next cell that calls a lesson check."""
    sources, pairs = code_cells(notebook), []
    for i, source in enumerate(sources):
        if course.BEGIN in source or course.STUB in source:
            check = next((j for j in range(i + 1, len(sources)) if "checks." in sources[j]), None)
            assert check is not None, f"exercise cell {i} has no check cell after it"
            pairs.append((i, check))
    return pairs


def imports_of(source: str) -> str:
    """The import statements of a cell (all a check cell needs of the notebook's set-up)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return ""
    return "\n".join(ast.unparse(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom)))


def run_exercise(notebook: dict, exercise: int, check: int) -> str:
    """Run the notebook's imports and exercise cells up to `exercise`, then the exercise and its check.
    Returns what the check printed; exceptions propagate."""
    sources = code_cells(notebook)
    namespace: dict = {"FAST": True, "device": torch.device("cpu")}
    exec(compile("\n".join(imports_of(s) for s in sources[:exercise]), "<imports>", "exec"), namespace)
    for i, earlier in exercises(notebook):
        if i < exercise:
            exec(compile(sources[i], f"<exercise cell {i}>", "exec"), namespace)
    try:
        exec(compile(sources[exercise], f"<exercise cell {exercise}>", "exec"), namespace)
    except NotImplementedError as err:
        raise AssertionError(f"exercise cell {exercise} itself raises NotImplementedError: the solution must "
                             "sit inside a function, so that the check can call it and give a hint") from err
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(sources[check], f"<check cell {check}>", "exec"), namespace)
    return out.getvalue()


CASES = [(name, k) for name in LESSONS
         for k in range(len(exercises(json.loads((NOTEBOOKS / name).read_text()))))]


@pytest.fixture(scope="module")
def student_edition(tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    course.write_student_edition(out)
    return out


@pytest.fixture(autouse=True)
def _fast_and_single_threaded(monkeypatch):
    monkeypatch.setenv(course.FAST_ENV, "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_every_lesson_has_its_exercises():
    assert len(LESSONS) == 11
    for name in LESSONS:
        assert len(exercises(json.loads((NOTEBOOKS / name).read_text()))) >= 2, name


@pytest.mark.parametrize("name, k", CASES, ids=[f"{n[:2]}-ex{k + 1}" for n, k in CASES])
def test_stub_gets_a_hint(student_edition, name, k):
    notebook = json.loads((student_edition / name).read_text())
    exercise, check = exercises(notebook)[k]
    with pytest.raises(checks.CheckFailed) as info:
        run_exercise(notebook, exercise, check)
    assert str(info.value).startswith("Not yet"), str(info.value)
    assert "NotImplementedError" in str(info.value), str(info.value)


@pytest.mark.parametrize("name, k", CASES, ids=[f"{n[:2]}-ex{k + 1}" for n, k in CASES])
def test_solution_passes(name, k):
    notebook = json.loads((NOTEBOOKS / name).read_text())
    exercise, check = exercises(notebook)[k]
    assert "Correct!" in run_exercise(notebook, exercise, check)


def test_a_bare_raise_is_caught(tmp_path):
    """What happened to notebook 00's old exercise 2: a solution at the top level of its cell becomes a
    bare `raise`, and the check cell then fails with a NameError instead of a hint."""
    notebook = {"cells": [
        {"cell_type": "code", "source": ["from minildm import checks\n"]},
        {"cell_type": "code", "source": [f"{course.BEGIN}\nanswer = 256\n{course.END}\n"]},
        {"cell_type": "code", "source": ["checks.tokenize(answer)\n"]}]}
    student = course.student_notebook(notebook)
    with pytest.raises(AssertionError, match="must sit inside a function"):
        run_exercise(student, *exercises(student)[0])
