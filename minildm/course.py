"""Running the course: fast mode, notebook set-up, and student editions.

Fast mode. Every notebook reads the environment variable MINILDM_FAST:

    MINILDM_FAST=1   train for a few steps or load the shipped weights, small
                     batches (what CI runs under nbval; seconds per notebook)
    unset or 0       the full lesson (minutes per notebook on a laptop CPU)

Student edition. The notebooks in the repository are the *instructor edition*:
each exercise holds its solution between the nbgrader markers

    ### BEGIN SOLUTION
    ...
    ### END SOLUTION

`python -m minildm course student-edition OUT_DIR` writes every notebook with
each solution replaced by `raise NotImplementedError` and all outputs cleared;
the check after each exercise then fails with its hint until the student fills
the function in.
"""
from __future__ import annotations

import json
import os
import random
import re
import time
from pathlib import Path

import numpy as np
import torch

FAST_ENV = "MINILDM_FAST"
BEGIN, END = "### BEGIN SOLUTION", "### END SOLUTION"
STUB = "raise NotImplementedError  # your code here"
REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = REPO_ROOT / "notebooks"
_started = time.perf_counter()  # reset by setup(): when this notebook's run began


def fast_mode() -> bool:
    """True when MINILDM_FAST is set to 1/true/yes (CI and quick checks)."""
    return os.environ.get(FAST_ENV, "0").strip().lower() in ("1", "true", "yes")


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch so a notebook gives the same pictures every run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def setup(seed: int = 0) -> tuple[bool, torch.device]:
    """The first code cell of every notebook: seed, pick a device, say what mode we are in.

    Returns (fast, device).
    """
    from .train import pick_device
    global _started
    _started = time.perf_counter()
    seed_everything(seed)
    device = pick_device("auto")
    fast = fast_mode()
    mode = "FAST mode (MINILDM_FAST=1): tiny runs" if fast else "full mode"
    print(f"minildm course | device: {device} | {mode} | seed {seed}")
    return fast, device


def run_time() -> str:
    """How long this notebook has run since setup(), for its last cell: the time a lesson takes is
    printed by the run itself, never typed into the text."""
    minutes = (time.perf_counter() - _started) / 60
    return f"this run: {minutes:.1f} min ({'fast' if fast_mode() else 'full'} mode)"


# ----------------------------------------------------------------------------
# Student editions

_SOLUTION = re.compile(r"^([ \t]*)### BEGIN SOLUTION[^\n]*\n.*?^[ \t]*### END SOLUTION[^\n]*(\n|$)",
                       re.MULTILINE | re.DOTALL)


def strip_solutions(source: str) -> str:
    """Replace each solution block with a NotImplementedError stub at the same indent."""
    return _SOLUTION.sub(lambda m: f"{m.group(1)}{STUB}\n", source)


def student_notebook(notebook: dict) -> dict:
    """A notebook (nbformat JSON dict) -> its student edition (solutions stubbed, outputs cleared)."""
    notebook = json.loads(json.dumps(notebook))  # deep copy
    for cell in notebook.get("cells", []):
        source = "".join(cell.get("source", []))
        if cell.get("cell_type") == "code":
            source = strip_solutions(source)
            cell["outputs"] = []
            cell["execution_count"] = None
        cell["source"] = source.splitlines(keepends=True)
    return notebook


def write_student_edition(out_dir, notebooks_dir=None) -> list[Path]:
    """Write the student edition of every notebook in notebooks_dir to out_dir."""
    src = Path(notebooks_dir) if notebooks_dir else NOTEBOOKS
    if not src.is_dir():
        raise ValueError(f"notebooks folder not found: {src}")
    out = Path(out_dir)
    if out.resolve() == src.resolve():
        raise ValueError("the student edition must go to another folder than the notebooks")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for path in sorted(src.glob("[0-9][0-9]_*.ipynb")):
        notebook = json.loads(path.read_text())
        target = out / path.name
        target.write_text(json.dumps(student_notebook(notebook), indent=1) + "\n")
        written.append(target)
    return written
