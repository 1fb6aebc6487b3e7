"""Root conftest: applies to tests/ and to the notebooks nbval collects."""
import os

os.environ.setdefault("MINILDM_FAST", "1")  # notebook kernels inherit this: fast mode in CI
os.environ.setdefault("MPLBACKEND", "Agg")
