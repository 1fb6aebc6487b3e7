"""Behaviour must not change when code moves: the shipped weights at fixed seeds give
exactly the outputs recorded before the restructure (tests/golden_cases.py, recorded by
tools/record_golden.py into tests/golden/golden.safetensors)."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from golden_cases import compute_golden

GOLDEN = Path(__file__).parent / "golden" / "golden.safetensors"


@pytest.fixture(scope="module")
def outputs():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)                # the recording used one thread: same reduction order
    try:
        return compute_golden()
    finally:
        torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(load_file(str(GOLDEN))))
def test_output_unchanged(outputs, name):
    expected = load_file(str(GOLDEN))[name]
    got = outputs[name]
    assert got.shape == expected.shape, f"{name}: shape {tuple(got.shape)} != {tuple(expected.shape)}"
    err = (got - expected).abs().max().item()
    assert err <= 1e-6, f"{name} changed: largest difference {err:.3g} from the recorded output"


def test_every_case_recorded(outputs):
    assert set(outputs) == set(load_file(str(GOLDEN))), "a golden case was added or removed: re-record"
