"""Checkpoints that survive a crash: atomic folders, safetensors weights, no pickle.

    out_dir/checkpoint/            the latest complete checkpoint
        model.safetensors          the optimizer's weights
        ema.safetensors            the EMA weights (when EMA is on)
        state.pt                   step, optimizer, grad scaler, RNG states of every rank
                                   (plain tensors and numbers: torch.load(weights_only=True))

A new checkpoint is written to checkpoint.tmp/, then checkpoint/ is renamed
to checkpoint.old/, checkpoint.tmp/ to checkpoint/, and checkpoint.old/ removed.
A rename is atomic, so a kill at any moment leaves checkpoint/ or
checkpoint.old/ complete (tests/test_resume.py kills writers at random moments).

train.train writes and reads these; resume=True (--resume) continues a run exactly.
Taught in notebooks/07_scaling_up.ipynb.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from torch import nn

from .weights_io import WeightsError, load_safetensors, save_safetensors


class CheckpointError(WeightsError):
    """A checkpoint that cannot be resumed from; the message names the file."""


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable (POSIX; a no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(folder, model: nn.Module, ema: "EMA | None", state: dict) -> None:
    """Write model (+ EMA) weights and the training `state` dict as one atomic checkpoint."""
    folder = Path(folder)
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_safetensors(model.state_dict(), tmp / "model.safetensors")
    if ema is not None:
        save_safetensors(ema.model.state_dict(), tmp / "ema.safetensors")
    with open(tmp / "state.pt", "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    tmp.rename(folder)
    _fsync_dir(folder.parent)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(folder) -> Path | None:
    """The complete checkpoint folder to resume from (checkpoint/ or, after a kill
    mid-swap, checkpoint.old/), or None."""
    folder = Path(folder)
    for candidate in (folder, folder.with_name(folder.name + ".old")):
        if (candidate / "state.pt").exists() and (candidate / "model.safetensors").exists():
            return candidate
    return None


STATE_KEYS = ("step", "optimizer", "scaler", "ema_updates", "rng", "world_size")


def load_checkpoint(folder, model: nn.Module, ema: "EMA | None") -> dict:
    """Load the weights (+ EMA) into the models; return the training state dict.

    Any unreadable file raises CheckpointError naming it; nothing is deleted.
    """
    folder = Path(folder)
    path = folder / "state.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # no pickle code runs
    except Exception as err:  # truncated, corrupt, or not a checkpoint
        raise CheckpointError(f"cannot read training state {path}: the file is corrupt or "
                              f"truncated ({type(err).__name__}: {err}). Nothing was deleted: "
                              f"move the folder away to start over, or restore a backup.") from err
    missing = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a minildm training checkpoint (missing {missing})")
    try:
        load_safetensors(model, folder / "model.safetensors")
        if ema is not None:
            if (folder / "ema.safetensors").exists():
                load_safetensors(ema.model, folder / "ema.safetensors")
                ema.updates = state["ema_updates"]
            else:
                print(f"note: {folder} has no EMA weights; the EMA restarts from the model")
                ema.model.load_state_dict(model.state_dict())
    except WeightsError as err:
        raise CheckpointError(f"cannot resume from {folder}: {err}") from err
    return state


def rng_state(generator: torch.Generator, device: torch.device) -> dict:
    """This process's random number generators: torch (CPU), CUDA, and the data stream."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.empty(0, dtype=torch.uint8)
    return {"torch": torch.get_rng_state(), "cuda": cuda, "data": generator.get_state()}


def set_rng_state(state: dict, generator: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"].numel():
        torch.cuda.set_rng_state(state["cuda"], device)
    generator.set_state(state["data"])
