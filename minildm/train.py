"""The one training loop: every model in the course (VAE, CLIP, pixel UNet,
latent UNet, the 2-D MLP) trains through `train()`.

Nothing here knows which model it trains. A model plugs in with two functions:

    sample_batch(batch_size, generator, device) -> batch      # fresh on-the-fly data
    loss_fn(model, batch) -> loss  or  (loss, {"name": float})

and the loop does the rest, in this order each step:

    1. learning rate: linear warm-up, then cosine decay        (lr_at)
    2. forward under autocast (bf16 on a GPU when asked)        (autocast_context)
    3. backward (DDP averages gradients across GPUs), gradient clipping, AdamW step
    4. EMA of the weights (the EMA copy is what gets sampled)   (EMA)
    5. every log_every steps: a JSON line in metrics.jsonl      (read_metrics)
    6. every checkpoint_every steps: an atomic checkpoint       (checkpoint.py)

The run folder (cfg.out_dir) is locked while the loop runs, and a folder that
already holds a run is only continued (resume=True) or started over
(overwrite=True) when asked (runs.py).

The same function runs on a CPU, one GPU (channels_last, bf16, torch.compile),
or several GPUs under `torchrun` (see distributed.py): each process then draws
its own batches (data generator seeded with seed + rank) and only rank 0 logs
and writes checkpoints.

A NaN loss stops the run with a clear message and leaves the last good
checkpoint untouched; so does a loss that blows up many-fold and stays up
(DivergenceWatch). `resume=True` continues a killed run exactly: weights,
EMA, optimizer, gradient scaler, step and every random number generator come back
(from the newest checkpoint that can be read), and a note lists any setting that
differs from the checkpoint's, since the run then no longer matches an uninterrupted one.

Taught in notebooks/07_scaling_up.ipynb.
"""
from __future__ import annotations

import contextlib
import copy
import math
import statistics
import time
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from . import distributed, runs
from .devices import pick_device  # noqa: F401  (train.pick_device: the recipes' and notebooks' name)
from .checkpoint import (CheckpointError, find_checkpoint, load_checkpoint,  # noqa: F401
                         load_newest, rng_state, save_checkpoint, set_rng_state)
from .runs import RunError, read_metrics  # noqa: F401  (train.read_metrics: the notebooks' name)



@dataclass
class TrainConfig:
    """How to train (not what): shared by every model. Presets override fields.

    Taught in notebooks/07_scaling_up.ipynb."""
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
    compile: bool = False          # torch.compile the model (worth it on a GPU)
    seed: int = 0                  # seeds the data stream and torch (+ rank under torchrun)
    log_every: int = 50            # steps between metric lines
    checkpoint_every: int = 0      # steps between checkpoints (0 = only at the end)
    out_dir: str | None = None     # where checkpoints and metrics go (None = nowhere)
    resume: bool = False           # continue from the newest readable checkpoint in out_dir
    overwrite: bool = False        # out_dir holds a run: delete it and start over (else an error)
    keep_checkpoints: int = 3      # checkpoints kept (the newest, and keep - 1 before it)
    progress: bool = True          # tqdm progress bar (and a start line naming device and seed)
    memory_format: str = "auto"    # auto (channels_last on CUDA) | channels_last | contiguous
    minutes: float = 0.0           # > 0: a wall-clock budget; `steps` is then set from the measured speed


BUDGET_PROBE_STEPS = 10            # with `minutes`, steps timed before the step count is fixed


@dataclass
class TrainResult:
    model: nn.Module               # the trained weights (the EMA copy when ema_decay > 0)
    raw_model: nn.Module           # the weights the optimizer stepped
    history: list = field(default_factory=list)  # one dict per logged step
    seconds: float = 0.0           # wall time of the steps run in this call
    steps_run: int = 0             # steps run in this call (less than cfg.steps after resume)

    @property
    def images_per_second(self) -> float:
        """Training throughput of all processes together."""
        if not self.history or self.seconds == 0:
            return 0.0
        last = self.history[-1]
        return last.get("batch_size", 0) * last.get("world_size", 1) * self.steps_run / self.seconds


def steps_for_budget(cfg: TrainConfig, elapsed: float, steps_done: int, seconds_per_step: float) -> TrainConfig:
    """Turn a wall-clock budget (cfg.minutes) into a step count, so the learning-rate schedule fits it.

    After BUDGET_PROBE_STEPS timed steps, the steps that still fit are
    (budget - elapsed) / seconds_per_step; the cosine decay then ends exactly when the
    budget does, so a 2-minute run is a complete (short) training run, not a long one cut
    off half way. `cfg.steps` stays the upper limit. Taught in notebooks/07_scaling_up.ipynb.
    """
    left = max(0.0, 60 * cfg.minutes - elapsed)
    steps = min(cfg.steps, steps_done + int(left / max(seconds_per_step, 1e-9) + 1e-6))  # 4.8 / 0.1 is 47.999...
    steps = max(steps, steps_done + 1)
    return replace(cfg, steps=steps, warmup_steps=min(cfg.warmup_steps, max(1, steps // 10)))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up for warmup_steps, then cosine decay to lr * min_lr_ratio.

    Taught in notebooks/07_scaling_up.ipynb (exercise 1)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * cosine)


class EMA:
    """Exponential moving average of a model's weights: ema = d * ema + (1 - d) * w.

    Sampling from the averaged weights gives smoother images than the last step's.
    The first steps use a smaller decay, min(d, (1 + n) / (10 + n)), so the
    average is not dominated by the random initial weights. Under DDP every rank
    holds identical weights after each step, so every rank's EMA is identical too.

    Taught in notebooks/07_scaling_up.ipynb (exercise 2).
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


def resolve_precision(precision: str, device: torch.device) -> str:
    """Check the precision name; a GPU without bf16 (before Ampere) falls back to fp16."""
    if precision not in ("fp32", "bf16", "fp16"):
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        print("this GPU has no bf16: using fp16 autocast with a GradScaler instead")
        return "fp16"
    return precision


def autocast_context(device: torch.device, precision: str):
    """Mixed precision: bf16 or fp16 autocast for the forward pass, or nothing.

    Inside autocast, matmuls and convolutions run in 16 bits (2x less memory
    traffic, tensor cores on a GPU) while reductions such as softmax and norms
    stay in fp32. bf16 keeps fp32's exponent range, so it needs no loss scaling;
    fp16 does (see the GradScaler in train()). CPUs support both, slowly.
    """
    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def use_channels_last(cfg: TrainConfig, device: torch.device) -> bool:
    """channels_last (NHWC) lets cuDNN use tensor-core convolution kernels on a GPU."""
    if cfg.memory_format not in ("auto", "channels_last", "contiguous"):
        raise ValueError(f"memory_format must be auto, channels_last or contiguous, "
                         f"got {cfg.memory_format!r}")
    return cfg.memory_format == "channels_last" or (cfg.memory_format == "auto" and device.type == "cuda")


def to_channels_last(batch):
    """Every 4-D floating tensor in a (nested) batch -> channels_last memory layout."""
    if isinstance(batch, torch.Tensor):
        if batch.ndim == 4 and batch.is_floating_point():
            return batch.contiguous(memory_format=torch.channels_last)
        return batch
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_channels_last(b) for b in batch)
    if isinstance(batch, dict):
        return {k: to_channels_last(v) for k, v in batch.items()}
    return batch


# ----------------------------------------------------------------------------
# The loop

class NaNLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class DivergedError(RuntimeError):
    """The loss blew up many-fold without becoming NaN; the checkpoints are kept."""


class DivergenceWatch:
    """Notices a run whose loss has blown up and stayed up, without ever being NaN.

    A learning rate at the edge of stability can knock a network into a state it does
    not come back from: the loss jumps ten-fold and stays there while the gradients stay
    small, and every step after it is wasted. Measured (docs/results_ddpm.md): the pixel
    UNet's fast recipe stretched to 10,500 steps, lr 6e-3, training seed 1, went from a
    loss of 0.03 to 0.37 around step 2,400 and was still at 0.39 at step 4,000, while
    15 healthy runs of every recipe (VAE, CLIP, latent and pixel UNets) never rose above
    1.92x their best. The watch follows the median of the last `window` logged losses (one noisy
    batch cannot trip it); the run has diverged when that median is `factor` times its lowest so far
    *and* back above its first value, where training began (a loss that has fallen from 1 to
    1e-6 and wobbles up to 5e-6 is a ratio of 5 but no divergence).
    """

    def __init__(self, factor: float = 4.0, window: int = 3):
        self.factor, self.window = factor, window
        self.recent: deque[float] = deque(maxlen=window)   # the last `window` logged losses
        self.first: float | None = None                     # the median of the first full window
        self.now = float("nan")                             # the median of the last full window
        self.best, self.best_step = float("inf"), None

    def diverged(self, step: int, loss: float) -> bool:
        """Add one logged loss; True once the rolling median is factor x its best and above its first."""
        self.recent.append(loss)
        if len(self.recent) < self.window:
            return False
        self.now = statistics.median(self.recent)
        if self.first is None:
            self.first = self.now
        if self.now < self.best:
            self.best, self.best_step = self.now, step
        return self.now > self.factor * self.best and self.now > self.first


class _LossModule(nn.Module):
    """loss_fn(model, batch) as one module, so DDP sees the whole loss computation
    as its forward() (loss_fn may call any method of the model)."""

    def __init__(self, model: nn.Module, loss_fn: Callable):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch):
        return self.loss_fn(self.model, batch)


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

    Taught in notebooks/07_scaling_up.ipynb.
    """
    # 1. Where: one device, or under torchrun one device per process.
    info, device = distributed.init_distributed(cfg.device)
    device = device or pick_device(cfg.device)
    main = info.is_main
    precision = resolve_precision(cfg.precision, device)
    channels_last = use_channels_last(cfg, device)
    if device.type == "cuda":  # TF32 matmuls for the fp32 parts: ~free speed on Ampere+
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(cfg.seed + info.rank)
    generator = torch.Generator().manual_seed(cfg.seed + info.rank)  # this rank's data stream

    # 2. What: the model (+ EMA copy), the optimizer, the loss as a module.
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)  # no decay on biases and norms
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=cfg.lr, betas=tuple(cfg.betas))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
    loss_module = _LossModule(torch.compile(model) if cfg.compile else model, loss_fn)
    if info.enabled:
        loss_module = distributed.wrap(loss_module, device)  # broadcasts rank 0's weights
    ema = EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None  # after the broadcast

    # 3. The run folder: lock it, then continue the run in it or start one (runs.py).
    out_dir = Path(cfg.out_dir) if cfg.out_dir else None
    ckpt_dir = out_dir / "checkpoint" if out_dir else None
    if cfg.keep_checkpoints < 1:
        raise ValueError(f"keep_checkpoints must be at least 1, got {cfg.keep_checkpoints}")
    lock = runs.open_run(out_dir, cfg.resume, cfg.overwrite, name) if out_dir and main else None
    with lock or contextlib.nullcontext():
        start = 0
        if out_dir is not None and cfg.resume:
            start = _resume(ckpt_dir, model, ema, optimizer, scaler, generator, device, info, cfg, name)
        if lock:
            runs.write_run_config(out_dir, {"name": name, "world_size": info.world_size, **asdict(cfg)})
            runs.keep_metrics_until(out_dir, start)
        if main and cfg.progress:
            print(f"[{name}] training on {device} x {info.world_size} | {precision} | seed {cfg.seed} "
                  f"| steps {start}..{cfg.steps} | batch {cfg.batch_size} per process")
        # 4. The loop.
        metrics = runs.MetricsLog(out_dir) if out_dir and main else None
        history: list[dict] = []
        watch = DivergenceWatch()
        model.train()
        t0 = time.perf_counter()
        bar = tqdm(total=cfg.steps, initial=start, desc=name, disable=not (cfg.progress and main),
                   dynamic_ncols=True)
        step, probe_start = start, None
        try:
            while step < cfg.steps:
                if cfg.minutes > 0 and step == start + 2:
                    probe_start = time.perf_counter()                    # after the first batches' set-up
                if cfg.minutes > 0 and step == start + 2 + BUDGET_PROBE_STEPS:
                    per_step = (time.perf_counter() - probe_start) / BUDGET_PROBE_STEPS
                    per_step = distributed.mean(torch.tensor(per_step), info)   # every rank: one count
                    cfg = steps_for_budget(cfg, time.perf_counter() - t0, step, per_step)
                    bar.total = cfg.steps
                    if main and cfg.progress:
                        print(f"[{name}] {cfg.minutes:g}-minute budget: {per_step:.3f} s per step -> "
                              f"{cfg.steps} steps")
                lr = lr_at(step, cfg)
                for group in optimizer.param_groups:
                    group["lr"] = lr
                batch = sample_batch(cfg.batch_size, generator, device)
                if channels_last:
                    batch = to_channels_last(batch)
                with autocast_context(device, precision):
                    out = loss_module(batch)
                loss, extra = out if isinstance(out, tuple) else (out, {})
                if distributed.any_rank(not torch.isfinite(loss).item(), info, device):
                    kept = find_checkpoint(ckpt_dir) if ckpt_dir else None
                    raise NaNLossError(
                        f"[{name}] loss is {loss.item()} at step {step}; stopping. "
                        + (f"The last good checkpoint, {kept}, is kept (continue from it with "
                           f"--resume). " if kept else "No checkpoint was written before it. ")
                        + "Try a lower learning rate (--lr) or fp32 precision.")
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()  # under DDP: gradients all-reduced here
                scaler.unscale_(optimizer)
                grad_norm = nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip or float("inf"))
                scaler.step(optimizer)  # fp16: skipped if a gradient overflowed
                scaler.update()
                if ema is not None:
                    ema.update(model)
                done = step + 1
                if done % cfg.log_every == 0 or done == cfg.steps:
                    row = {"step": done, "loss": distributed.mean(loss, info), "lr": lr,
                           "grad_norm": float(grad_norm), "batch_size": cfg.batch_size,
                           "world_size": info.world_size, "seconds": time.perf_counter() - t0,
                           **{k: float(v) for k, v in extra.items()}}
                    history.append(row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}")
                    if metrics:
                        metrics.write(row)
                    if watch.diverged(done, row["loss"]):   # every rank logs the same mean loss
                        raise DivergedError(
                            f"[{name}] the loss diverged at step {done}: {watch.now:.3g} (the median of the last "
                            f"{watch.window} logs) is {watch.now / watch.best:.0f}x its best, {watch.best:.3g} at "
                            f"step {watch.best_step}; stopping. "
                            + (f"The checkpoints in {ckpt_dir} are kept. " if ckpt_dir and find_checkpoint(ckpt_dir)
                               else "No checkpoint was written before it. ")
                            + f"Train again with a lower learning rate (--lr; this run's peak: {cfg.lr:g}) "
                            "or another --seed.")
                if ckpt_dir and ((cfg.checkpoint_every and done % cfg.checkpoint_every == 0)
                                 or done == cfg.steps):
                    rngs = distributed.gather(rng_state(generator, device), info)  # every rank's
                    if main:
                        save_checkpoint(ckpt_dir, model, ema, {
                            "step": done, "optimizer": optimizer.state_dict(),
                            "scaler": scaler.state_dict(), "ema_updates": ema.updates if ema else 0,
                            "rng": rngs, "world_size": info.world_size,
                            "settings": runs.settings(asdict(cfg), info.world_size)}, keep=cfg.keep_checkpoints)
                step = done
                bar.update(1)
        except KeyboardInterrupt:
            kept = find_checkpoint(ckpt_dir) if ckpt_dir else None
            if main:
                print(f"\n[{name}] interrupted during step {step}. "
                      + (f"{kept} is kept: continue with resume=True (--resume)." if kept else
                         "No checkpoint was written (set checkpoint_every and out_dir to keep progress)."))
            raise
        finally:
            bar.close()
            if metrics:
                metrics.close()
    for module in (model, ema.model if ema is not None else None):
        if module is not None:
            distributed.sync_buffers(module, info)  # BatchNorm statistics: rank 0's everywhere
    distributed.barrier(info)  # rank 0 has finished writing before anyone goes on
    seconds = time.perf_counter() - t0
    model.eval()
    final = ema.model if ema is not None else model
    return TrainResult(model=final, raw_model=model, history=history, seconds=seconds,
                       steps_run=max(0, step - start))


def _resume(ckpt_dir, model, ema, optimizer, scaler, generator, device, info, cfg, name) -> int:
    """Load the newest readable checkpoint into everything; return its step (0 if there is none)."""
    main = info.is_main
    found = load_newest(ckpt_dir, model, ema, optimizer, scaler, say=print if main else None)
    if found is None:
        if main:
            print(f"[{name}] no checkpoint in {ckpt_dir.parent} to resume from: starting at step 0")
        return 0
    state, folder = found
    try:
        if len(state["rng"]) == info.world_size:
            set_rng_state(state["rng"][info.rank], generator, device)
        else:  # another number of processes: fresh but reproducible streams
            torch.manual_seed(cfg.seed + info.rank + 7919 * state["step"])
            generator.manual_seed(cfg.seed + info.rank + 7919 * state["step"])
    except (KeyError, TypeError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{folder / 'state.pt'}: the random generator states cannot be "
                              f"restored ({type(err).__name__}: {err})") from err
    start = state["step"]
    if main:
        print(f"[{name}] resumed from {folder} at step {start}")
        changed = runs.changed_settings(state.get("settings"), runs.settings(asdict(cfg), info.world_size))
        if changed:
            print(f"[{name}] note: the checkpoint was written with other settings ({changed}); the "
                  f"run goes on, but it will no longer match an uninterrupted run with either")
    return start
