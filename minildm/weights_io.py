"""Saving and loading weights safely: safetensors + a JSON config, never pickle.

A pickle file (the classic `torch.save(model)`) can run any code when loaded, so
a weights file from a classmate could do anything. safetensors files hold only
tensors and a JSON header: loading one cannot run code. Every model in minildm
is saved as

    folder/config.json          the dataclass config that rebuilds the model
    folder/model.safetensors    the weights

and every way a file can be wrong (missing, truncated, corrupt, from another
architecture, NaN weights, a config with wrong types or absurd sizes) gives one
WeightsError naming the file and what was expected. A folder is checked before
the model is built (validate.py), so a hostile config.json costs no memory.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError as SafetensorsError  # the class is SafetensorError
from safetensors import safe_open
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from .devices import check_device  # noqa: F401  (pipeline.py checks its device with it too)
from .validate import WeightsError, build_config, meta_model

PACKAGE_WEIGHTS = Path(__file__).parent / "weights"  # shipped, read-only when installed


def write_atomic(data: bytes, path) -> None:
    """Write bytes to `path` all or nothing: a temp file per process, fsync, then rename.

    A kill or a full disk leaves the previous file untouched. Write errors raise
    OSError (errno ENOSPC for a full disk) after the temp file is removed.
    """
    path = Path(path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # one temp file per process (torchrun)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        raise


def save_safetensors(state_dict: dict, path, metadata: dict | None = None) -> None:
    """Write tensors to `path` atomically (temp file, then rename); `metadata` ({str: str})
    goes into the file's JSON header (read back with read_metadata, without the tensors)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    write_atomic(safetensors_bytes(tensors, metadata=metadata), path)


def read_metadata(path) -> dict:
    """The {str: str} metadata of a safetensors file's header ({} if it has none)."""
    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}
    except (SafetensorsError, OSError, ValueError, RuntimeError) as err:
        raise WeightsError(f"cannot read weights file {path}: it is truncated or not a "
                           f"safetensors file ({err})") from err


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise WeightsError(f"{what} not found: {path}")
    if not path.is_file():
        raise WeightsError(f"{what} {path} is a folder or a device; expected a file")


def read_safetensors(path) -> dict:
    """Read a safetensors file into a dict of CPU tensors, with a clear error.

    A tensor holding NaN or an infinity is refused (WeightsError naming it): such
    weights would turn every image black without any other sign of trouble.
    """
    path = Path(path)
    _check_file(path, "weights file")
    try:
        tensors = load_file(str(path), device="cpu")
    except (SafetensorsError, OSError, ValueError, RuntimeError) as err:
        raise WeightsError(f"cannot read weights file {path}: it is truncated or not a "
                           f"safetensors file ({err}). Re-download, re-train, or restore it.") from err
    for name, tensor in tensors.items():
        # A sum is NaN or inf whenever an entry is (one cheap reduction); only then count them.
        if tensor.is_floating_point() and not torch.isfinite(tensor.sum(dtype=torch.float32)) \
                and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise WeightsError(f"weights file {path}: tensor {name} holds {bad} NaN or infinite "
                               f"value(s); only finite weights can be loaded. Re-train or restore it.")
    return tensors


def read_shapes(path) -> dict:
    """{tensor name: shape} from a safetensors file's header, without reading any tensor."""
    path = Path(path)
    _check_file(path, "weights file")
    try:
        with safe_open(str(path), "pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorsError, OSError, ValueError, RuntimeError) as err:
        raise WeightsError(f"cannot read weights file {path}: it is truncated or not a "
                           f"safetensors file ({err}). Re-download, re-train, or restore it.") from err


def check_shapes(expected: dict, found: dict, path, model_name: str) -> None:
    """WeightsError naming the file and the first mismatch unless the names and shapes agree."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong_shape = [f"{k}: file {tuple(found[k])} vs model {tuple(v)}"
                   for k, v in expected.items() if k in found and tuple(found[k]) != tuple(v)]
    if missing or unexpected or wrong_shape:
        details = []
        if missing:
            details.append(f"missing {len(missing)} tensors (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
        if wrong_shape:
            details.append(f"{len(wrong_shape)} with the wrong shape (e.g. {wrong_shape[0]})")
        raise WeightsError(f"weights file {path} does not fit {model_name}: "
                           + "; ".join(details) + ". Was it saved from a different architecture or config?")


def load_safetensors(model: nn.Module, path) -> None:
    """Load a safetensors file into `model`; any mismatch names the file and the tensors."""
    tensors = read_safetensors(path)
    check_shapes({k: v.shape for k, v in model.state_dict().items()},
                 {k: v.shape for k, v in tensors.items()}, path, type(model).__name__)
    model.load_state_dict(tensors)


def save_config(config, path) -> None:
    """A dataclass config -> JSON file (atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(json.dumps(dataclasses.asdict(config), indent=2).encode(), path)


def load_config(config_class, path):
    """JSON file -> config_class(**fields), every field checked first (validate.py).

    Unknown fields, wrong types and out-of-range values are refused with a
    WeightsError naming the file and the field; missing fields take their defaults.
    """
    return build_config(config_class, read_json(path), path)


def read_json(path):
    """A JSON file's content, or WeightsError naming the file (missing, a folder, not JSON)."""
    path = Path(path)
    _check_file(path, "config file")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise WeightsError(f"config file {path} is not valid JSON ({err})") from err
    except RecursionError as err:
        raise WeightsError(f"config file {path} is nested too deeply to be a config") from err
    except OSError as err:
        raise WeightsError(f"cannot read config file {path}: {err.strerror or err}") from err


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
    if not folder.is_dir():
        raise WeightsError(f"weights folder {folder} is a file; expected a folder holding "
                           f"config.json and model.safetensors")
    return folder


def check_writable_folder(folder) -> Path:
    """Make sure `folder` can be written before long work starts: create it if needed and
    write (then remove) a probe file. Raises WeightsError naming the folder otherwise."""
    folder = Path(folder)
    for path in (folder, *folder.parents):
        if path.exists() and not path.is_dir():
            raise WeightsError(f"cannot write to output folder {folder}: {path} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise WeightsError(f"cannot write to output folder {folder}: {err.strerror or err}") from err
    return folder


def from_pretrained(model_class, config_class, path, default_name: str, device="cpu"):
    """Build model_class(config) from a folder written by save_pretrained and load its weights.

    In order, cheapest first, so a hostile folder costs no memory: check the device,
    the config (types, ranges), the model's size on the meta device, the weights
    file's names and shapes (header only); then build the model and load the weights.
    """
    device = check_device(device)
    folder = resolve_folder(path, default_name)
    config = load_config(config_class, folder / "config.json")
    skeleton = meta_model(model_class, config, folder / "config.json")
    weights = folder / "model.safetensors"
    check_shapes({k: v.shape for k, v in skeleton.state_dict().items()}, read_shapes(weights),
                 weights, model_class.__name__)
    model = model_class(config)
    load_safetensors(model, weights)
    return model.to(device).eval()
