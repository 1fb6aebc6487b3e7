"""Recipe: a small MLP denoiser on 2-D point clouds (seconds on a CPU).

The first diffusion model of the course: the same loss (objectives.diffusion_loss)
and the same training loop as the image models, on data you can plot.

Taught in notebooks/02_ddpm.ipynb.
"""
from __future__ import annotations

import torch

from .. import train as training
from ..data import toy2d
from ..objectives import diffusion_loss, flow_matching_loss
from ..schedule import NoiseSchedule
from ..unet import MLPConfig, MLPDenoiser
from . import Job


def job(dataset: str = "ink_drop", steps: int = 3000, batch_size: int = 512, lr: float = 3e-3,
        schedule: NoiseSchedule | None = None, config: MLPConfig | None = None, seed: int = 0,
        device: str = "cpu", progress: bool = True, objective: str = "eps", offset=(0.0, 0.0)) -> Job:
    """The 2-D training run: each batch is a fresh draw of `batch_size` points of toy2d.make(dataset),
    moved by `offset` (lesson 08 moves the ink drop off-centre, where DDPM's paths curve).
    objective: "eps" (the DDPM loss over `schedule`) or "flow" (rectified flow: the MLP predicts
    the velocity, lesson 08)."""
    if dataset not in toy2d.DATASETS:
        raise ValueError(f"unknown 2-D dataset {dataset!r}; allowed: {', '.join(toy2d.DATASETS)}")
    if objective not in ("eps", "flow"):
        raise ValueError(f"objective must be 'eps' or 'flow', got {objective!r}")
    schedule = schedule or NoiseSchedule("linear", 1000)
    model = MLPDenoiser(config)

    def sample_batch(n, generator, device):
        seed = int(torch.randint(0, 2 ** 31, (1,), generator=generator))
        return (toy2d.make(dataset, n, seed=seed) + torch.tensor(offset)).to(device)   # (n, 2)

    sched = schedule.to(training.pick_device(device))
    cfg = training.TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=min(100, steps // 10),
                               ema_decay=0.99, device=device, seed=seed, log_every=max(1, steps // 50),
                               progress=progress)
    if objective == "flow":
        return Job(model, lambda m, x0: flow_matching_loss(m, x0), sample_batch, cfg, f"mlp_{dataset}_flow")
    return Job(model, lambda m, x0: diffusion_loss(m, sched, x0), sample_batch, cfg, f"mlp_{dataset}")


def fit_points(dataset: str = "ink_drop", steps: int = 3000, batch_size: int = 512, lr: float = 3e-3,
               schedule: NoiseSchedule | None = None, config: MLPConfig | None = None, seed: int = 0,
               device: str = "cpu", progress: bool = True, objective: str = "eps",
               offset=(0.0, 0.0)) -> training.TrainResult:
    """Train an MLPDenoiser on a 2-D point cloud (toy2d.make(dataset)) through train.train.

    Returns the TrainResult: result.model is the trained (EMA) denoiser, result.history
    the logged losses. Nothing is written to disk.
    objective="flow" trains the same MLP as a rectified flow (notebooks/08_sd3.ipynb).
    Taught in notebooks/02_ddpm.ipynb.
    """
    run = job(dataset, steps, batch_size, lr, schedule, config, seed, device, progress, objective, offset)
    return training.train(run.model, run.loss_fn, run.sample_batch, run.cfg, name=run.name)
