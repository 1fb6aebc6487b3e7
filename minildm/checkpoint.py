"""Checkpoints that survive a crash, a full disk and a corrupt file: safetensors, no pickle.

    out_dir/checkpoint/            the newest complete checkpoint
        model.safetensors          the optimizer's weights
        ema.safetensors            the EMA weights (when EMA is on)
        state.pt                   step, optimizer, grad scaler, RNG states of every rank, the
                                   settings that shape the run (plain tensors and numbers:
                                   torch.load(weights_only=True))
    out_dir/checkpoint-000150/     the checkpoints before it, named by their step
                                   (`keep` checkpoints in all, TrainConfig.keep_checkpoints)

Writing a checkpoint (save_checkpoint) is four steps, each safe to be killed in:

    1. write checkpoint.tmp-<pid>/ completely, fsync     killed: checkpoint/ is untouched
    2. rename checkpoint/ -> checkpoint-<its step>/       killed: that one is the newest
    3. rename checkpoint.tmp-<pid>/ -> checkpoint/        (a rename is atomic)
    4. delete the oldest beyond `keep`

A full disk (or any write error) in step 1 removes the temp folder and raises
CheckpointError; the previous checkpoint stays as it was.

Resuming (load_newest) tries the checkpoints newest first - checkpoint/, then
checkpoint.old/ (left by older minildm versions), then checkpoint-NNNNNN/ by
step - and says which one it used and why the newer ones could not be read.
Nothing is ever deleted while reading (tests/test_reliability_runs.py kills
writers at random moments and corrupts files on purpose).

train.train writes and reads these; resume=True (--resume) continues a run exactly.
Taught in notebooks/07_scaling_up.ipynb.
"""
from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path

import torch
from torch import nn

from .weights_io import WeightsError, load_safetensors, read_metadata, save_safetensors

HISTORY = re.compile(r"checkpoint-(\d+)$")      # checkpoint-000150: an older checkpoint, by step


class CheckpointError(WeightsError):
    """A checkpoint that cannot be written or resumed from; the message names the file."""


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


def checkpoint_step(folder) -> int | None:
    """The step a checkpoint folder was written at, or None if it cannot be read.

    Read from model.safetensors' header (save_checkpoint puts it there), which costs
    microseconds; checkpoints of older minildm versions need their state.pt read.
    """
    folder = Path(folder)
    try:
        step = int(read_metadata(folder / "model.safetensors")["step"])
    except (WeightsError, KeyError, ValueError):
        try:
            step = torch.load(folder / "state.pt", map_location="cpu", weights_only=True, mmap=True)["step"]
        except Exception:  # noqa: BLE001 - unreadable for any reason: no step
            return None
    return step if isinstance(step, int) and not isinstance(step, bool) and step >= 0 else None


def checkpoints_newest_first(folder) -> list[Path]:
    """Every checkpoint folder next to `folder` (the path of checkpoint/), newest first."""
    folder = Path(folder)
    history = []
    if folder.parent.is_dir():
        for path in folder.parent.iterdir():
            match = HISTORY.match(path.name)
            if match and path.is_dir():
                history.append((int(match.group(1)), path))
    legacy = folder.with_name(folder.name + ".old")
    return ([folder] if folder.is_dir() else []) + ([legacy] if legacy.is_dir() else []) \
        + [path for _, path in sorted(history, reverse=True)]


def find_checkpoint(folder) -> Path | None:
    """The newest checkpoint folder with both its files, or None (nothing is loaded)."""
    for candidate in checkpoints_newest_first(folder):
        if (candidate / "state.pt").is_file() and (candidate / "model.safetensors").is_file():
            return candidate
    return None


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(folder, model: nn.Module, ema: "EMA | None", state: dict, keep: int = 3) -> Path:
    """Write model (+ EMA) weights and the training `state` as folder/ (the newest checkpoint),
    keeping the `keep` newest checkpoints in all. Returns the folder."""
    folder = Path(folder)
    if keep < 1:
        raise ValueError(f"keep must be at least 1 (checkpoints kept), got {keep}")
    # 1. The new checkpoint, complete, in a temp folder of this process.
    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    for stale in folder.parent.glob(folder.name + ".tmp*"):  # left by a killed writer
        shutil.rmtree(stale, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        save_safetensors(model.state_dict(), tmp / "model.safetensors", {"step": str(state["step"])})
        if ema is not None:
            save_safetensors(ema.model.state_dict(), tmp / "ema.safetensors")
        buffer = io.BytesIO()
        torch.save(state, buffer)  # in memory first: a full disk then fails as a plain OSError
        _write(tmp / "state.pt", buffer.getvalue())
        _fsync_dir(tmp)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        kept = find_checkpoint(folder)
        raise CheckpointError(
            f"cannot write checkpoint {tmp}: {err.strerror or err}. "
            + (f"The previous checkpoint, {kept}, is intact: free some space, then continue with "
               f"--resume." if kept else "No earlier checkpoint exists.")) from err
    # 2.-3. The current newest becomes history; the new one takes its name.
    if folder.exists():
        step = checkpoint_step(folder)
        demoted = folder.with_name(f"checkpoint-{step:06d}" if step is not None else folder.name + ".corrupt")
        shutil.rmtree(demoted, ignore_errors=True)  # same step written twice: the newer one wins
        folder.rename(demoted)
    tmp.rename(folder)
    _fsync_dir(folder.parent)
    # 4. Keep the keep - 1 newest older checkpoints.
    older = [p for p in checkpoints_newest_first(folder)
             if HISTORY.match(p.name) and int(HISTORY.match(p.name).group(1)) < state["step"]]
    for path in older[keep - 1:]:
        shutil.rmtree(path, ignore_errors=True)
    return folder


STATE_TYPES = {"step": int, "optimizer": dict, "scaler": dict, "ema_updates": int, "rng": list,
               "world_size": int}


def _check_state(state, path: Path) -> None:
    """Every field of state.pt has the right type (a hand-edited or foreign file gets one clear error)."""
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} is not a minildm training checkpoint (it holds a "
                              f"{type(state).__name__}, not a dict)")
    missing = [k for k in STATE_TYPES if k not in state]
    if missing:
        raise CheckpointError(f"{path} is not a minildm training checkpoint (missing {missing})")
    for key, kind in STATE_TYPES.items():
        value = state[key]
        if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
            raise CheckpointError(f"{path}: {key} is {value!r:.60}; expected "
                                  + ("a whole number >= 0" if kind is int else f"a {kind.__name__}"))


def load_checkpoint(folder, model: nn.Module, ema: "EMA | None", optimizer=None, scaler=None) -> dict:
    """Load the weights (+ EMA, optimizer, grad scaler) of one checkpoint; return its state dict.

    Any unreadable file raises CheckpointError naming it; nothing is deleted.
    """
    folder = Path(folder)
    path = folder / "state.pt"
    if not path.is_file():
        raise CheckpointError(f"{folder} has no state.pt (an incomplete checkpoint)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # no pickle code runs
    except Exception as err:  # noqa: BLE001 - truncated, corrupt, or not a checkpoint
        raise CheckpointError(f"cannot read training state {path}: the file is corrupt or "
                              f"truncated ({type(err).__name__}: {err}). Nothing was deleted: "
                              f"move the folder away to start over, or restore a backup.") from err
    _check_state(state, path)
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
    try:
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state["scaler"] and scaler.is_enabled():
            scaler.load_state_dict(state["scaler"])
    except (ValueError, KeyError, TypeError, RuntimeError) as err:
        raise CheckpointError(f"{path}: the optimizer state does not fit this model "
                              f"({type(err).__name__}: {err})") from err
    return state


def load_newest(folder, model: nn.Module, ema, optimizer=None, scaler=None, say=print):
    """Resume from the newest checkpoint that loads -> (state, its folder), or None if there is none.

    A newer checkpoint that cannot be read is skipped, and `say` names it and the one used.
    If checkpoints exist but none loads, CheckpointError lists them all; nothing is deleted.
    """
    folder = Path(folder)
    problems = []
    for candidate in checkpoints_newest_first(folder):
        try:
            state = load_checkpoint(candidate, model, ema, optimizer, scaler)
        except CheckpointError as err:
            problems.append(str(err))
            continue
        if problems and say:
            say(f"note: {len(problems)} newer checkpoint(s) could not be read ({' | '.join(problems)}); "
                f"resuming from the newest valid one, {candidate} (step {state['step']})")
        return state, candidate
    if problems:
        raise CheckpointError(f"no checkpoint in {folder.parent} can be resumed from: "
                              f"{' | '.join(problems)}. Nothing was deleted: move the folder away "
                              f"or start over with --overwrite, or restore a backup.")
    return None


def rng_state(generator: torch.Generator, device: torch.device) -> dict:
    """This process's random number generators: torch (CPU), CUDA, and the data stream."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else torch.empty(0, dtype=torch.uint8)
    return {"torch": torch.get_rng_state(), "cuda": cuda, "data": generator.get_state()}


def set_rng_state(state: dict, generator: torch.Generator, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and state["cuda"].numel():
        torch.cuda.set_rng_state(state["cuda"], device)
    generator.set_state(state["data"])
