"""Root conftest: applies to tests/ and to the notebooks nbval collects."""
import os

os.environ.setdefault("MINILDM_FAST", "1")  # notebook kernels inherit this: fast mode in CI
os.environ.setdefault("MPLBACKEND", "Agg")


def pytest_configure(config):
    """Under pytest-xdist (pyproject's addopts: two worker processes, each file on one worker) every
    worker, and every notebook kernel it starts, computes with one thread: two workers on two cores
    instead of four threads fighting over them. `pytest -n 0` runs in one process with torch's default."""
    if hasattr(config, "workerinput"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")               # the kernels nbval starts inherit it
        import torch
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
