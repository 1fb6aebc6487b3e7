"""Numbers in a notebook's prose come from its code (issue 17, STYLE.md item 17).

A figure typed into a markdown cell goes stale the moment the weights, the data or the machine
change, and a student who catches one stale sentence stops trusting the rest. So every number in a
markdown cell must also appear in a code cell of the same notebook, in its source (a constant, an
assertion that checks the claim) or in its committed outputs (a printed line, or a sentence rendered
with IPython.display.Markdown). Measured figures therefore live in outputs, never in markdown.

What is exempt, and why, is listed below: definitions (the course's fixed sizes and constants from the
papers), references (lesson, section and equation numbers, years of citations) and one made-up example.
"""
import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
LESSONS = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))

# A number: 3,072 or 0.18215 or 1e-4; not part of a word like x0 or v2.
NUMBER = re.compile(r"(?<![\w.])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+|e-?\d+)?(?![\w])")

# References, not claims: "lesson 06", "notebooks 02 and 03", "lessons 01–03", "section 13", "Step 1",
# "Exercise 2", "## 12 ·" / "### 4.1" headings, the lesson table of notebook 00 ("| 03 | DDIM |"),
# a citation's year ("Ho et al., 2020"), and numbers inside LaTeX ($\bar\alpha_{t-1}$, \tfrac12).
REFERENCE = re.compile(
    r"(?:(?i:notebooks?|lessons?|sections?|step|exercise|eq\.)\s+\d+(?:\.\d+)?(?:\s*(?:and|–|-|,)\s*\d+)*)"
    r"|(?:^#+\s*\d+(?:\.\d+)?)"
    r"|(?:^\|\s*\d\d\s*\|)|(?:\|\s*(?:0\d)(?:[–,]\s*0\d)*\s*\|)"
    r"|(?:(?:et al\.|&\s*\w+),\s*(?:19|20)\d\d)"
    r"|(?:\$\$.*?\$\$|\$[^$\n]+\$)",
    re.MULTILINE | re.DOTALL)

# Definitions: true by construction of the course or quoted from a paper, not measured by a run.
ALLOWED = {
    "*": {
        "3072": "3 x 32 x 32, the numbers of one image (the product is written next to it)",
        "256": "4 x 8 x 8, the numbers of one latent (the product is written next to it)",
        "324": "the number of canonical captions (DESIGN.md; notebook 00 asserts it)",
        "1000": "T, the number of diffusion steps",
        "999": "T - 1, the last (0-based) timestep",
    },
    "01": {"1e-4": "the linear schedule's first beta (DDPM paper; the cell prints it)",
           "0.02": "the linear schedule's last beta (DDPM paper; the cell prints it)",
           "700": "an example timestep"},
    "02": {"998": "the timesteps of the reverse loop, 999, 998, ..., 0"},
    "04": {"0.07": "CLIP's initial temperature, t = log(1/0.07) (CLIP paper)",
           "14.3": "1 / 0.07, the scale that temperature gives",
           "1.0": "an argument in a command to try (crop_probability=1.0)"},
    "05": {"07": "the made-up ID number of the analogy", "1985": "the made-up ID number of the analogy",
           "06": "the made-up ID number of the analogy",
           "0042": "the made-up ID number of the analogy",
           "0.18215": "Stable Diffusion's latent scale factor (a constant of that model)",
           "10": "the PSNR formula, 10 log10(1 / MSE)", "30": "what 30 dB means (from the formula)"},
    "07": {"65504": "the largest float16 number (printed as 6.55e+04)",
           "29500": "the port in a torchrun command line",
           "50": "the DDIM steps the benchmark samples with (bench.py)"},
    "08": {"1024": "SD3's image side, 1024 x 1024 (a 128 x 128 x 16 latent; SD3 paper)"},
}


def _cells(path):
    return json.loads(path.read_text())["cells"]


def _numbers(text: str) -> list[tuple[str, int]]:
    return [((m.group(1) + (m.group(2) or "")).replace(",", ""), m.start()) for m in NUMBER.finditer(text)]


def _code_text(cell) -> str:
    parts = ["".join(cell["source"])]
    for out in cell.get("outputs", []):
        parts.append("".join(out.get("text", "")))
        for mime in ("text/plain", "text/markdown"):
            parts.append("".join(out.get("data", {}).get(mime, "")))
    return "\n".join(parts)


def unsupported_numbers(path) -> list[str]:
    """Numbers in the notebook's markdown that no code cell's source or output contains."""
    cells = _cells(path)
    produced = {n for c in cells if c["cell_type"] == "code" for n, _ in _numbers(_code_text(c))}
    allowed = {**ALLOWED["*"], **ALLOWED.get(path.name[:2], {})}
    found = []
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "markdown":
            continue
        text = "".join(cell["source"])
        exempt = [m.span() for m in REFERENCE.finditer(text)]
        for number, pos in _numbers(text):
            if number in produced or number in allowed or any(a <= pos < b for a, b in exempt):
                continue
            found.append(f"{path.name} cell {i}: {number!r} in ...{text[max(0, pos - 40):pos + 25]!r}...")
    return found


@pytest.mark.parametrize("path", LESSONS, ids=lambda p: p.name[:2])
def test_numbers_in_prose_come_from_code(path):
    found = unsupported_numbers(path)
    assert not found, ("numbers in markdown that no code cell of the notebook prints or checks; print them "
                       "from the cell that computes them (or render the sentence with IPython.display."
                       "Markdown), assert them, or, for a definition, add them to ALLOWED with the reason:\n"
                       + "\n".join(found))


def test_the_check_sees_a_typed_figure(tmp_path):
    """A measured figure typed into the prose is flagged; the same figure printed by a cell is not."""
    def notebook(markdown, output):
        return {"cells": [{"cell_type": "markdown", "source": [markdown]},
                          {"cell_type": "code", "source": ["print(rate)"],
                           "outputs": [{"output_type": "stream", "name": "stdout", "text": [output]}]}]}
    path = tmp_path / "09_x.ipynb"
    path.write_text(json.dumps(notebook("DDPM makes 98% clean images (lesson 03, Ho et al., 2020).", "95.8%")))
    assert [f for f in unsupported_numbers(path) if "'98'" in f] and len(unsupported_numbers(path)) == 1
    path.write_text(json.dumps(notebook("DDPM makes the share of clean images printed below.", "95.8%")))
    assert unsupported_numbers(path) == []


def test_every_allowed_number_is_still_used():
    """The allow-list does not outlive the sentences it excuses."""
    text = {p.name[:2]: "\n".join("".join(c["source"]) for c in _cells(p) if c["cell_type"] == "markdown")
            for p in LESSONS}
    for lesson, numbers in ALLOWED.items():
        for number in numbers:
            texts = text.values() if lesson == "*" else [text[lesson]]
            assert any(number in {n for n, _ in _numbers(t)} for t in texts), (lesson, number)
