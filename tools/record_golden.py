"""Record golden outputs of the shipped weights (tests/golden/golden.safetensors).

Run once before a refactor; tests/test_golden.py then checks that the code still
produces exactly these numbers. Each LDM call uses one image so the outputs do not
depend on how noise is shared across a batch.

    python tools/record_golden.py
"""
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.golden_cases import compute_golden  # noqa: E402

if __name__ == "__main__":
    torch.set_num_threads(1)
    out = Path(__file__).resolve().parents[1] / "tests" / "golden" / "golden.safetensors"
    tensors = compute_golden()
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out))
    print(f"wrote {out}: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in tensors.items()))
