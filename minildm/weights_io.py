"""Saving and loading weights safely: safetensors + a JSON config, never pickle.

A pickle file (the classic `torch.save(model)`) can run any code when loaded, so
a weights file from a classmate could do anything. safetensors files hold only
tensors and a JSON header: loading one cannot run code. Every model in minildm
is saved as

    folder/config.json          the dataclass config that rebuilds the model
    folder/model.safetensors    the weights

and every way a file can be wrong (missing, truncated, corrupt, from another
architecture) gives one WeightsError naming the file and what was expected.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError as SafetensorsError  # the class is SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

PACKAGE_WEIGHTS = Path(__file__).parent / "weights"  # shipped, read-only when installed


class WeightsError(ValueError):
    """A weights or config file that cannot be used; the message says why and what was expected."""


def _atomic_replace(tmp: Path, final: Path) -> None:
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, final)


def save_safetensors(state_dict: dict, path) -> None:
    """Write tensors to `path` atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # one temp file per process (torchrun)
    save_file(tensors, str(tmp))
    _atomic_replace(tmp, path)


def read_safetensors(path) -> dict:
    """Read a safetensors file into a dict of CPU tensors, with a clear error."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"weights file not found: {path}")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorsError, OSError, ValueError, RuntimeError) as err:
        raise WeightsError(f"cannot read weights file {path}: it is truncated or not a "
                           f"safetensors file ({err}). Re-download, re-train, or restore it.") from err


def load_safetensors(model: nn.Module, path) -> None:
    """Load a safetensors file into `model`; any mismatch names the file and the tensors."""
    tensors = read_safetensors(path)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong_shape = [f"{k}: file {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
                   for k, v in expected.items() if k in tensors and tensors[k].shape != v.shape]
    if missing or unexpected or wrong_shape:
        details = []
        if missing:
            details.append(f"missing {len(missing)} tensors (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
        if wrong_shape:
            details.append(f"{len(wrong_shape)} with the wrong shape (e.g. {wrong_shape[0]})")
        raise WeightsError(f"weights file {path} does not fit {type(model).__name__}: "
                           + "; ".join(details) + ". Was it saved from a different architecture or config?")
    model.load_state_dict(tensors)


def save_config(config, path) -> None:
    """A dataclass config -> JSON file (atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # one temp file per process (torchrun)
    tmp.write_text(json.dumps(dataclasses.asdict(config), indent=2))
    _atomic_replace(tmp, path)


def load_config(config_class, path):
    """JSON file -> config_class(**fields), rejecting unknown fields with a clear error."""
    path = Path(path)
    if not path.exists():
        raise WeightsError(f"config file not found: {path}")
    try:
        fields = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise WeightsError(f"config file {path} is not valid JSON ({err})") from err
    known = {f.name for f in dataclasses.fields(config_class)}
    if not isinstance(fields, dict) or set(fields) - known:
        unknown = sorted(set(fields) - known) if isinstance(fields, dict) else fields
        raise WeightsError(f"config file {path} does not describe a {config_class.__name__}: "
                           f"unknown fields {unknown}; expected fields {sorted(known)}")
    for f in dataclasses.fields(config_class):  # JSON turns tuples into lists
        if f.name in fields and isinstance(fields[f.name], list):
            fields[f.name] = tuple(fields[f.name])
    return config_class(**fields)


def save_pretrained(model: nn.Module, config, folder) -> Path:
    """Write folder/config.json and folder/model.safetensors."""
    folder = Path(folder)
    save_config(config, folder / "config.json")
    save_safetensors(model.state_dict(), folder / "model.safetensors")
    return folder


def resolve_folder(path, default_name: str) -> Path:
    """None -> the shipped weights folder minildm/weights/<default_name>; else the given path."""
    folder = PACKAGE_WEIGHTS / default_name if path is None else Path(path)
    if not folder.exists():
        hint = (" Train them with `python -m minildm train all --preset cpu`." if path is None else "")
        raise WeightsError(f"weights folder not found: {folder}.{hint}")
    return folder


def from_pretrained(model_class, config_class, path, default_name: str, device="cpu"):
    """Build model_class(config) from a folder written by save_pretrained and load its weights."""
    folder = resolve_folder(path, default_name)
    config = load_config(config_class, folder / "config.json")
    model = model_class(config)
    load_safetensors(model, folder / "model.safetensors")
    return model.to(device).eval()
