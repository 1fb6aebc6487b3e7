"""A run folder: everything one training run needs to continue after a crash.

    run_dir/
        run.lock              held while a process trains here; holds its PID
        run.json              the TrainConfig of the run (never config.json: that is a model's name)
        metrics.jsonl         one JSON line per logged step (read_metrics)
        checkpoint/           the newest checkpoint, and checkpoint-000150/ ... before it
                              (checkpoint.py)

Three rules keep work from being lost:

    1. One writer. The first process locks run.lock (an OS lock, released even by
       `kill -9`); a second one gets RunLockedError naming the first one's PID.
    2. No silent restart. A folder that already holds a run is continued
       (resume=True, --resume) or explicitly started over (overwrite=True,
       --overwrite, which deletes the run files listed above and nothing else);
       anything else is a RunExistsError that touches nothing.
    3. No shared names. A model's weights folder holds config.json and
       model.safetensors; a run writes only the names above. So --out and
       --run-dir may be the same folder and neither overwrites the other.

train.train uses open_run(), MetricsLog and settings(); notebooks read metrics with read_metrics.
Taught in notebooks/07_scaling_up.ipynb.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import time
from pathlib import Path

from .checkpoint import checkpoint_step, checkpoints_newest_first
from .weights_io import write_atomic

try:
    import fcntl                   # POSIX: flock
except ImportError:                # Windows: msvcrt.locking
    fcntl = None
    import msvcrt

LOCK, RUN_CONFIG, METRICS = "run.lock", "run.json", "metrics.jsonl"


class RunError(ValueError):
    """A run folder that cannot be used as asked; the message says what to do."""


class RunLockedError(RunError):
    """Another process is training in this run folder."""


class RunExistsError(RunError):
    """The folder holds a run, and neither resume nor overwrite was asked for."""


# ----------------------------------------------------------------------------
# 1. One writer: an OS lock on run.lock

def _try_lock(fd: int) -> bool:
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        else:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        return True
    except OSError:  # BlockingIOError: someone holds it
        return False


def _holder(path: Path) -> str:
    """Who holds the lock, from the line it wrote ("PID on HOST since TIME")."""
    for _ in range(20):                      # the holder writes its line just after locking
        try:
            text = path.read_text().strip()
        except OSError:
            text = ""
        if text:
            return text
        time.sleep(0.05)
    return "another process"


class RunLock:
    """An exclusive lock on folder/run.lock, released by release() or when the process dies."""

    def __init__(self, folder):
        self.path = Path(folder) / LOCK
        self.fd = None

    def acquire(self) -> "RunLock":
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            if not _try_lock(fd):
                os.close(fd)
                raise RunLockedError(f"run folder {self.path.parent} is in use by process "
                                     f"{_holder(self.path)} (it holds {self.path}); wait for it to "
                                     f"finish or stop it, or use another --run-dir")
            try:  # a holder that just finished unlinks the file: then lock the new one
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} on {socket.gethostname()} since {time.strftime('%H:%M:%S')}\n".encode())
        self.fd = fd
        return self

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def release(self) -> None:
        if self.fd is None:
            return
        if fcntl is not None:
            self.path.unlink(missing_ok=True)        # unlink while still holding it (see acquire)
        os.close(self.fd)
        self.fd = None


# ----------------------------------------------------------------------------
# 2. No silent restart

def describe_run(folder) -> str | None:
    """What a previous run left in `folder` ("a checkpoint at step 200, 40 metric lines"), or None."""
    folder = Path(folder)
    found = []
    checkpoints = checkpoints_newest_first(folder / "checkpoint")
    if checkpoints:
        step = checkpoint_step(checkpoints[0])
        found.append(f"{len(checkpoints)} checkpoint(s), the newest {checkpoints[0].name}"
                     + (f" at step {step}" if step is not None else ""))
    metrics = folder / METRICS
    if metrics.is_file() and metrics.stat().st_size:
        found.append(f"{METRICS} with {len(metrics.read_bytes().splitlines())} lines")
    if (folder / RUN_CONFIG).is_file() and not found:
        found.append(RUN_CONFIG)
    return ", ".join(found) or None


def _delete_run_files(folder: Path) -> None:
    """--overwrite: the files a run writes, and nothing else (a model's files stay)."""
    for path in checkpoints_newest_first(folder / "checkpoint") + list(folder.glob("checkpoint.*")):
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    for name in (METRICS, RUN_CONFIG):
        (folder / name).unlink(missing_ok=True)


def open_run(folder, resume: bool, overwrite: bool, name: str = "model") -> RunLock:
    """Create and lock the run folder, then apply rule 2. Returns the held lock.

    resume: an existing run is continued (the caller loads its checkpoint).
    overwrite: an existing run's files are deleted first.
    """
    folder = Path(folder)
    if resume and overwrite:
        raise RunError("resume and overwrite exclude each other: --resume continues the run in "
                       f"{folder}, --overwrite deletes it and starts over; choose one")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock = RunLock(folder).acquire()
    except OSError as err:
        raise RunError(f"cannot create or lock run folder {folder}: {err.strerror or err}") from err
    for stale in [*folder.glob(RUN_CONFIG + ".*.tmp"), *folder.glob(METRICS + ".*.tmp")]:
        stale.unlink(missing_ok=True)  # temp files of a writer killed mid-write (we hold the lock)
    previous = describe_run(folder)
    if previous and not resume:
        if not overwrite:
            lock.release()
            raise RunExistsError(f"run folder {folder} already holds a training run ({previous}); "
                                 f"continue it with --resume, start over with --overwrite (deletes "
                                 f"it), or choose another --run-dir")
        _delete_run_files(folder)
        print(f"[{name}] --overwrite: deleted the previous run in {folder} ({previous})")
    return lock


def write_run_config(folder, config: dict) -> None:
    """run.json: the settings of the run (for people; the checkpoint keeps its own copy)."""
    write_atomic((json.dumps(config, indent=2, default=str) + "\n").encode(), Path(folder) / RUN_CONFIG)


# Resuming: the settings that decide a run's numbers are saved in every checkpoint, so
# a resume with another --lr or --seed can say that it no longer continues the run exactly.

RESULT_FIELDS = ("steps", "batch_size", "lr", "warmup_steps", "min_lr_ratio", "weight_decay",
                 "betas", "grad_clip", "ema_decay", "precision", "seed")


def settings(train_config: dict, world_size: int) -> dict:
    """The RESULT_FIELDS of a TrainConfig (as a dict) and the number of processes."""
    return {**{k: list(v) if isinstance(v, tuple) else v for k, v in train_config.items()
               if k in RESULT_FIELDS}, "world_size": world_size}


def changed_settings(saved, now: dict) -> str:
    """'lr 0.001 -> 0.002, seed 0 -> 1', or '' when nothing differs (or the checkpoint predates this)."""
    if not isinstance(saved, dict):
        return ""
    return ", ".join(f"{k} {saved[k]} -> {v}" for k, v in now.items() if k in saved and saved[k] != v)


# ----------------------------------------------------------------------------
# Metrics: one JSON line per logged step (plot: viz.loss_curve)

class MetricsLog:
    """Appends rows to folder/metrics.jsonl, one JSON line each, flushed at once.
    A write that fails (a full disk) raises RunError naming the file."""

    def __init__(self, folder):
        self.path = Path(folder) / METRICS
        try:
            self.file = open(self.path, "a")
        except OSError as err:
            raise RunError(f"cannot write {self.path}: {err.strerror or err}") from err

    def write(self, row: dict) -> None:
        try:
            self.file.write(json.dumps(row) + "\n")
            self.file.flush()
        except OSError as err:
            raise RunError(f"cannot write {self.path}: {err.strerror or err}") from err

    def close(self) -> None:
        try:
            self.file.close()
        except OSError:  # a full disk: write() has said so already
            pass


def _parse_lines(path: Path) -> list[dict]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:   # the last line of a run killed while writing it
                break
            raise RunError(f"metrics file {path}: line {i + 1} is not JSON ({line[:40]!r})") from None
    return rows


def read_metrics(path) -> list[dict]:
    """The rows of a run's metrics.jsonl (path: the file or the run folder)."""
    path = Path(path)
    path = path / METRICS if path.is_dir() else path
    if not path.is_file():
        raise RunError(f"metrics file not found: {path}")
    return _parse_lines(path)


def keep_metrics_until(folder, step: int) -> None:
    """On resume, drop the metric lines logged after the checkpoint (they get redone), atomically."""
    path = Path(folder) / METRICS
    if path.is_file():
        rows = [row for row in _parse_lines(path) if row.get("step", 0) <= step]
        write_atomic("".join(json.dumps(row) + "\n" for row in rows).encode(), path)
