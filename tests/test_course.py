"""Student editions: solutions stripped, outputs cleared, and the checks then fail with a hint."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from minildm import checks, course

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def test_strip_solutions_keeps_indent_and_code_around():
    source = ("def f(x):\n    y = 1\n    ### BEGIN SOLUTION\n    return x + y\n    ### END SOLUTION\n\n"
              "### BEGIN SOLUTION\nanswer = 42\n### END SOLUTION\nprint('after')\n")
    out = course.strip_solutions(source)
    assert "return x + y" not in out and "answer = 42" not in out
    assert "    y = 1\n    raise NotImplementedError" in out
    assert "\nraise NotImplementedError  # your code here\nprint('after')" in out
    compile(out, "<student>", "exec")


def test_every_notebook_has_exercises_and_checks():
    notebooks = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    assert notebooks, "no notebooks found"
    for path in notebooks:
        nb = json.loads(path.read_text())
        sources = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
        n_solutions = sum(s.count(course.BEGIN) for s in sources)
        assert n_solutions >= 2, f"{path.name} has {n_solutions} exercises; every lesson needs at least two"
        assert all(s.count(course.BEGIN) == s.count(course.END) for s in sources), path.name
        assert any("checks." in s for s in sources), f"{path.name} calls no lesson check"
        assert path.stat().st_size < 3_000_000, f"{path.name} is over 3 MB"


def test_student_edition_command(tmp_path):
    out = tmp_path / "student"
    result = subprocess.run([sys.executable, "-m", "minildm", "course", "student-edition", str(out)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    written = sorted(out.glob("*.ipynb"))
    assert [p.name for p in written] == sorted(p.name for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
    for path in written:
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            source = "".join(cell["source"])
            assert course.BEGIN not in source and course.END not in source
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None


def test_student_edition_checks_fail_with_a_hint_until_filled_in(tmp_path):
    """Run the welcome notebook's student edition up to the first check: it must fail kindly."""
    course.write_student_edition(tmp_path)
    nb = json.loads((tmp_path / "00_welcome.ipynb").read_text())
    namespace: dict = {}
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        if "checks.caption_of" in source:
            with pytest.raises(checks.CheckFailed, match="NotImplementedError"):
                exec(compile(source, "<cell>", "exec"), namespace)
            return
        exec(compile(source, "<cell>", "exec"), namespace)
    pytest.fail("the check cell was not found")



def test_student_edition_refuses_to_overwrite_the_instructor_edition():
    with pytest.raises(ValueError, match="another folder"):
        course.write_student_edition(NOTEBOOKS, NOTEBOOKS)
