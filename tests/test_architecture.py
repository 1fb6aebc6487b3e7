"""The package's design, checked from its source so it stays true (../shared/DESIGN.md):

- model files hold models: they import no training loop, no recipe and no judge;
- the import graph of minildm has no cycles (imports inside functions included);
- every module stays small enough to read in one sitting;
- notebooks are the one source of each lesson: no generator script writes them.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "minildm"
MODEL_FILES = ("unet.py", "dit.py", "clip.py", "vae.py", "pipeline.py")
FORBIDDEN_IN_MODELS = ("minildm.train", "minildm.recipes", "minildm.data.judge", "minildm.bench")
MAX_LINES = 450   # STYLE.md asks for 100-400; a little slack for docstrings


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every minildm module `path` imports, at the top or inside a function."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("minildm")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("minildm"):
                continue
            for alias in node.names:   # `from . import train` imports the module minildm.train
                candidate = f"{target}.{alias.name}"
                found.add(candidate if (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").exists()
                          or (PACKAGE.parent / candidate.replace(".", "/")).is_dir() else target)
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {name: {i for i in imports_of(path) if i in MODULES and i != name} for name, path in MODULES.items()}


@pytest.mark.parametrize("filename", MODEL_FILES)
def test_model_files_import_no_training_recipe_or_judge(filename):
    path = PACKAGE / filename
    if not path.exists():
        pytest.skip(f"{filename} not written yet")
    bad = sorted(i for i in imports_of(path) if i.startswith(FORBIDDEN_IN_MODELS))
    assert not bad, f"{filename} is a model file but imports {bad}; move that code into minildm/recipes/"


def test_import_graph_has_no_cycles():
    # Packages import their submodules for re-export (checks/__init__ -> checks.lesson01); an edge from a
    # package's __init__ to its own children is not a cycle of ideas, so those edges are left out.
    graph = {name: {i for i in deps if not i.startswith(name + ".")} for name, deps in GRAPH.items()}
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_checker_sees_imports():
    """The parser itself: pipeline.py does import the samplers, recipes/ldm.py the training loop."""
    assert "minildm.samplers" in GRAPH["minildm.pipeline"]
    assert "minildm.train" in GRAPH["minildm.recipes.ldm"]
    assert "minildm.data.judge" in GRAPH["minildm.recipes.pixel_unet"]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_stay_readable(name):
    lines = len(MODULES[name].read_text().splitlines())
    assert lines <= MAX_LINES, f"{MODULES[name]} has {lines} lines; split it by idea (at most {MAX_LINES})"


def test_notebooks_have_one_source():
    tools = PACKAGE.parent / "tools"
    generators = [p.name for p in tools.glob("*.py") if "nbformat" in p.read_text() or "ipynb" in p.read_text()]
    assert not generators, f"{generators} write notebooks; the .ipynb files are the one source (CONTRIBUTING.md)"
