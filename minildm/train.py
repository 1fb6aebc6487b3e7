"""The one training loop: every model in the course (VAE, CLIP, pixel UNet,
latent UNet, the 2-D MLP) trains through `train()`.

Nothing here knows which model it trains. A model plugs in with two functions:

    sample_batch(batch_size, generator, device) -> batch      # fresh on-the-fly data
    loss_fn(model, batch) -> loss  or  (loss, {"name": float})

and the loop does the rest, in this order each step:

    1. learning rate: linear warm-up, then cosine decay        (lr_at)
    2. forward under autocast (bf16 on CUDA when asked)         (autocast_context)
    3. backward, gradient clipping, AdamW step
    4. EMA of the weights (the EMA copy is what gets sampled)   (EMA)
    5. every log_every steps: a JSON line in metrics.jsonl
    6. every checkpoint_every steps: an atomic checkpoint       (save_checkpoint)

A NaN loss stops the run with a clear message and leaves the last good
checkpoint untouched. `resume=True` continues a killed run exactly: weights,
EMA, optimizer, step and every random number generator come back.

Taught in notebooks/07_scaling_up.ipynb.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from .weights_io import load_safetensors, save_safetensors


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> cuda if available, else mps, else cpu. Any other name is used as is."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"unknown device {name!r}; allowed: auto, cpu, cuda, cuda:N, mps") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' asked for, but no CUDA GPU is available; use 'auto' or 'cpu'")
    return device


@dataclass
class TrainConfig:
    """How to train (not what): shared by every model. Presets override fields."""
    steps: int = 1000              # optimizer steps
    batch_size: int = 64           # per process (per GPU under torchrun)
    lr: float = 1e-3               # peak learning rate after warm-up
    warmup_steps: int = 100        # linear warm-up from 0 to lr
    min_lr_ratio: float = 0.1      # cosine decays to lr * min_lr_ratio
    weight_decay: float = 0.0      # AdamW decoupled weight decay
    betas: tuple = (0.9, 0.999)    # AdamW momentum terms
    grad_clip: float = 1.0         # max global gradient norm (0 = off)
    ema_decay: float = 0.0         # EMA of weights per step (0 = off, e.g. 0.999)
    device: str = "auto"           # auto | cpu | cuda | mps
    precision: str = "fp32"        # fp32 | bf16 | fp16 (autocast; fp16 adds a GradScaler)
    compile: bool = False          # torch.compile the model (CUDA only, optional)
    seed: int = 0                  # seeds the data stream and torch
    log_every: int = 50            # steps between metric lines
    checkpoint_every: int = 0      # steps between checkpoints (0 = only at the end)
    out_dir: str | None = None     # where checkpoints and metrics go (None = nowhere)
    resume: bool = False           # continue from out_dir/checkpoint if present
    progress: bool = True          # tqdm progress bar


@dataclass
class TrainResult:
    model: nn.Module               # the trained weights (the EMA copy when ema_decay > 0)
    raw_model: nn.Module           # the weights the optimizer stepped
    history: list = field(default_factory=list)  # one dict per logged step
    seconds: float = 0.0           # wall time of the steps run in this call
    steps_run: int = 0             # steps run in this call (less than cfg.steps after resume)

    @property
    def images_per_second(self) -> float:
        if not self.history or self.seconds == 0:
            return 0.0
        return self.history[-1].get("batch_size", 0) * self.steps_run / self.seconds


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up for warmup_steps, then cosine decay to lr * min_lr_ratio."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


class EMA:
    """Exponential moving average of a model's weights: ema = d * ema + (1 - d) * w.

    Sampling from the averaged weights gives smoother images than the last step's.
    The first steps use a smaller decay, min(d, (1 + n) / (10 + n)), so the
    average is not dominated by the random initial weights.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for ema_p, p in zip(self.model.state_dict().values(), model.state_dict().values()):
            if ema_p.dtype.is_floating_point:
                ema_p.lerp_(p.detach(), 1 - d)
            else:
                ema_p.copy_(p)


def autocast_context(device: torch.device, precision: str):
    """Mixed precision: bf16 or fp16 autocast for the forward pass, or nothing."""
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# ----------------------------------------------------------------------------
# Checkpoints: a folder per checkpoint, published by an atomic rename.
#
#   out_dir/checkpoint/            the latest complete checkpoint
#       model.safetensors          the optimizer's weights
#       ema.safetensors            the EMA weights (when EMA is on)
#       state.pt                   optimizer, step, RNG states (torch.load weights_only=True)
#
# A new checkpoint is written to checkpoint.tmp/, then checkpoint/ is renamed
# to checkpoint.old/, checkpoint.tmp/ to checkpoint/, and checkpoint.old/ removed.
# A kill at any moment leaves checkpoint/ or checkpoint.old/ complete.

def save_checkpoint(folder: Path, model: nn.Module, ema: EMA | None, optimizer, step: int,
                    generator: torch.Generator, extra: dict | None = None) -> None:
    folder = Path(folder)
    tmp, old = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_safetensors(model.state_dict(), tmp / "model.safetensors")
    if ema is not None:
        save_safetensors(ema.model.state_dict(), tmp / "ema.safetensors")
    state = {
        "step": step,
        "optimizer": optimizer.state_dict(),
        "ema_updates": ema.updates if ema is not None else 0,
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "data_rng": generator.get_state(),
        "extra": json.dumps(extra or {}),
    }
    with open(tmp / "state.pt", "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    if folder.exists():
        shutil.rmtree(old, ignore_errors=True)
        folder.rename(old)
    tmp.rename(folder)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint(folder: Path) -> Path | None:
    """The complete checkpoint folder to resume from (checkpoint/ or, after a kill
    mid-swap, checkpoint.old/), or None."""
    folder = Path(folder)
    for candidate in (folder, folder.with_name(folder.name + ".old")):
        if (candidate / "state.pt").exists() and (candidate / "model.safetensors").exists():
            return candidate
    return None


def load_checkpoint(folder: Path, model: nn.Module, ema: EMA | None, optimizer,
                    generator: torch.Generator) -> int:
    """Restore everything save_checkpoint wrote; returns the step to continue from."""
    folder = Path(folder)
    load_safetensors(model, folder / "model.safetensors")
    try:
        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    except Exception as err:  # truncated or not a checkpoint
        raise ValueError(f"cannot read training state {folder / 'state.pt'}: the file is "
                         f"corrupt or truncated ({type(err).__name__}). Delete the folder "
                         f"to start over, or restore a backup.") from err
    if ema is not None:
        if (folder / "ema.safetensors").exists():
            load_safetensors(ema.model, folder / "ema.safetensors")
        ema.updates = state["ema_updates"]
    optimizer.load_state_dict(state["optimizer"])
    torch.set_rng_state(state["torch_rng"])
    if torch.cuda.is_available() and state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    generator.set_state(state["data_rng"])
    return int(state["step"])


# ----------------------------------------------------------------------------
# The loop

class NaNLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def train(model: nn.Module, loss_fn: Callable, sample_batch: Callable, cfg: TrainConfig,
          name: str = "model") -> TrainResult:
    """Train `model` for cfg.steps steps on batches from `sample_batch`.

    Args:
        model: any nn.Module; moved to the chosen device.
        loss_fn: loss_fn(model, batch) -> scalar loss, or (loss, metrics dict).
        sample_batch: sample_batch(batch_size, generator, device) -> batch.
        cfg: a TrainConfig.
        name: shown on the progress bar and in the metrics.
    Returns:
        TrainResult with the trained model (EMA weights if enabled) and the metric history.
    """
    device = pick_device(cfg.device)
    torch.manual_seed(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)  # the data stream (CPU generator)
    model = model.to(device)
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)  # no decay on biases and norms
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=cfg.lr, betas=tuple(cfg.betas))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    forward_model = torch.compile(model) if cfg.compile else model

    out_dir = Path(cfg.out_dir) if cfg.out_dir else None
    ckpt_dir = out_dir / "checkpoint" if out_dir else None
    start = 0
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
        if cfg.resume and (found := find_checkpoint(ckpt_dir)) is not None:
            start = load_checkpoint(found, model, ema, optimizer, generator)
            print(f"[{name}] resumed from {found} at step {start}")
        with open(out_dir / "config.json", "w") as f:
            json.dump({"name": name, **asdict(cfg)}, f, indent=2, default=str)
    metrics_file = open(out_dir / "metrics.jsonl", "a" if start else "w") if out_dir else None

    history: list[dict] = []
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(range(start, cfg.steps), desc=name, disable=not cfg.progress,
               initial=start, total=cfg.steps, dynamic_ncols=True)
    try:
        for step in bar:
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            batch = sample_batch(cfg.batch_size, generator, device)
            with autocast_context(device, cfg.precision):
                out = loss_fn(forward_model, batch)
            loss, extra = out if isinstance(out, tuple) else (out, {})
            if not torch.isfinite(loss):
                raise NaNLossError(
                    f"[{name}] loss is {loss.item()} at step {step}; stopping. "
                    + (f"The last good checkpoint in {ckpt_dir} is kept; " if ckpt_dir else "")
                    + "try a lower learning rate (--lr) or fp32 precision.")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                ema.update(model)
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                row = {"step": done, "loss": loss.item(), "lr": lr, "grad_norm": float(grad_norm),
                       "batch_size": cfg.batch_size, "seconds": time.perf_counter() - t0,
                       **{k: float(v) for k, v in extra.items()}}
                history.append(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}")
                if metrics_file:
                    metrics_file.write(json.dumps(row) + "\n")
                    metrics_file.flush()
            if ckpt_dir and ((cfg.checkpoint_every and done % cfg.checkpoint_every == 0)
                             or done == cfg.steps):
                save_checkpoint(ckpt_dir, model, ema, optimizer, done, generator)
    finally:
        bar.close()
        if metrics_file:
            metrics_file.close()
    seconds = time.perf_counter() - t0
    model.eval()
    final = ema.model if ema is not None else model
    return TrainResult(model=final, raw_model=model, history=history, seconds=seconds,
                       steps_run=cfg.steps - start)
