"""Which device to run on: 'auto' picks the best one here; any other name is checked.

    pick_device("auto")   cuda if available, else mps (Apple), else cpu
    pick_device("cuda:1") that GPU, or a ValueError saying what this machine has

The command line's --device, TrainConfig.device and every from_pretrained(device=...)
go through here, so a device that does not exist ("foo", "meta", "cuda" on a laptop)
gets one clear error before any work starts.

Taught in notebooks/07_scaling_up.ipynb.
"""
from __future__ import annotations

import torch

DEVICE_TYPES = ("cpu", "cuda", "mps")   # what minildm runs on ("meta" and others are refused)


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if available, else mps, else cpu; any other name is checked
    (ValueError if that device does not exist here). Taught in notebooks/07_scaling_up.ipynb."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if not isinstance(name, str):
        raise ValueError(f"device must be a name such as 'auto', 'cpu', 'cuda' or 'mps', got {name!r}")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {name!r}; allowed: auto, cpu, cuda, cuda:N, mps") from err
    if device.type not in DEVICE_TYPES:
        raise ValueError(f"unknown device {name!r}; allowed: auto, cpu, cuda, cuda:N, mps")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but no CUDA GPU is available; use 'auto' or 'cpu'")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"there is no {device}: this machine has {torch.cuda.device_count()} GPU(s)")
    mps = getattr(torch.backends, "mps", None)
    if device.type == "mps" and not (mps is not None and mps.is_available()):
        raise ValueError("device 'mps' asked for, but Apple's MPS is not available; use 'auto' or 'cpu'")
    return device


def check_device(device) -> torch.device:
    """A device name or torch.device -> torch.device, checked by pick_device."""
    return pick_device(str(device) if isinstance(device, torch.device) else device)
