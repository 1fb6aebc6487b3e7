"""Installed read-only: the package never writes into its own folder.

A wheel is installed into a temporary site folder; the CLI then runs from another
folder. Afterwards the installed files must be exactly as installed (we compare a
snapshot of names, sizes and modification times; bytecode writing is disabled as
it would be on a read-only file system), and the outputs must be where we asked.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("readonly")
    wheel_dir, site = root / "wheel", root / "site"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation",
                            "-w", str(wheel_dir), "-q"], capture_output=True, text=True, timeout=300)
    if build.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {build.stderr[-300:]}")
    wheel = next(wheel_dir.glob("minildm-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), "-q", str(wheel)],
                   check=True, timeout=300)
    return root, site


def test_cli_writes_only_where_asked(installed):
    root, site = installed
    package = site / "minildm"
    shipped = sorted(p.name for p in (package / "weights").iterdir())
    before = snapshot(package)
    work = root / "work"
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "PYTHONDONTWRITEBYTECODE": "1", "MPLBACKEND": "Agg"}
    for args in (["demo", "--out", "demo.png"], ["data", "preview", "--out", "out/preview.png", "-n", "4"]):
        result = subprocess.run([sys.executable, "-m", "minildm", *args], cwd=work, env=env,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
    assert (work / "demo.png").exists() and (work / "out" / "preview.png").exists()
    assert snapshot(package) == before, "the CLI wrote into the installed package"
    assert shipped == sorted(p.name for p in (package / "weights").iterdir())
    # the shipped weights travel with the wheel
    for name in shipped:
        if (package / "weights" / name).is_dir():
            assert (package / "weights" / name / "config.json").exists()
