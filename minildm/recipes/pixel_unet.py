"""Recipe: an unconditional UNet on 32x32 Shapes pixels (lessons 02-03).

The loss is objectives.diffusion_loss (DDPM Algorithm 1, here with the v target);
this module plugs it into the one training loop, saves the UNet with its
DiffusionConfig, samples with DDPM or DDIM, and grades the samples with the judge.

    python -m minildm train pixel_unet --preset cpu --out minildm/weights
    python -m minildm evaluate pixel_unet

Taught in notebooks/02_ddpm.ipynb (and sampled with DDIM in 03_ddim.ipynb).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import train as training
from ..data import shapes
from ..data.judge import grade_unconditional
from ..objectives import DiffusionConfig, as_eps_model, diffusion_loss
from ..samplers import DDIMSampler, DDPMSampler, sample
from ..schedule import NoiseSchedule
from ..unet import UNet, UNetConfig
from ..weights_io import resolve_folder
from . import Job, get_preset, train_config, write_training_json

NAME = "pixel_unet"
LEGACY = DiffusionConfig(schedule="linear", num_timesteps=1000, prediction="eps", clip_x0=1.0)  # no file at all


@dataclass
class PixelPreset:
    """Everything that makes one pixel-UNet training run: architecture, schedule, data, training."""
    model: UNetConfig                                   # the denoiser
    train: training.TrainConfig                         # how to train it
    schedule: str = "cosine"                            # NoiseSchedule kind (cosine: see the cpu preset)
    num_timesteps: int = 1000                           # T
    resolution: int = 32                                # Shapes image side (32 or 64)
    eval_samples: int = 200                             # images sampled by evaluate() per sampler
    prediction: str = "v"                               # network output: "v" (stable with few DDIM steps) or "eps"
    snr_gamma: float | None = None                      # min-SNR loss weighting (None = plain MSE)

    def diffusion(self) -> DiffusionConfig:
        """Saved with the weights; pixels live in [-1, 1], so samplers clip x0 there."""
        return DiffusionConfig(self.schedule, self.num_timesteps, self.prediction, clip_x0=1.0)


PRESETS = {
    # seconds: tests and fast notebooks (learns nothing useful)
    "tiny": PixelPreset(
        model=UNetConfig(base_channels=8, channel_mults=(1, 2), attention_levels=(False, True), num_heads=2),
        train=training.TrainConfig(steps=4, batch_size=4, lr=1e-3, warmup_steps=1, ema_decay=0.9,
                                   log_every=2),
        eval_samples=4),
    # a laptop CPU (see docs/results_ddpm.md for measured times); the shipped weights.
    # Attention only at 8x8 keeps it cheap; v-prediction makes short training usable.
    # The cosine schedule matters with few DDIM steps: the same 6000 steps with the linear
    # schedule gave 92% clean images with DDIM-50, with cosine 98% (64 images each): on 32x32
    # images the linear schedule leaves almost nothing to learn after t = 500, the cosine one
    # spreads the steps over the noise levels where colour and shape are decided.
    "cpu": PixelPreset(
        model=UNetConfig(base_channels=16, channel_mults=(1, 2, 2), attention_levels=(False, False, True),
                         num_heads=4),
        train=training.TrainConfig(steps=6000, batch_size=32, lr=2e-3, warmup_steps=100, ema_decay=0.995,
                                   log_every=50, checkpoint_every=500)),
    # five idle 2-core minutes (issue 18; docs/results_ddpm.md, "A cheaper step"): self-attention in the
    # middle block only (the 8x8 level's three attention layers were 40% of the cpu preset's step), a
    # higher rate and min-SNR weighting. Three trainings: DDIM-50 eta 1 91.6-95.1% clean, eta 0 79-87%,
    # below the cpu preset's 97.6 / 89.6%; 368 s with 2 threads: the shipped weights keep the cpu preset.
    "fast": PixelPreset(
        model=UNetConfig(base_channels=16, channel_mults=(1, 2, 2), attention_levels=(False, False, False),
                         num_heads=4),
        train=training.TrainConfig(steps=3500, batch_size=32, lr=6e-3, warmup_steps=100, ema_decay=0.995,
                                   memory_format="channels_last", log_every=50, checkpoint_every=500),
        snr_gamma=5.0),
    # a GPU: 64x64 images, a wider UNet, bf16
    "gpu": PixelPreset(
        model=UNetConfig(base_channels=64, channel_mults=(1, 2, 2, 2), attention_levels=(False, False, True, True),
                         num_heads=4, dropout=0.1),
        train=training.TrainConfig(steps=30000, batch_size=128, lr=2e-4, warmup_steps=1000, ema_decay=0.9995,
                                   precision="bf16", log_every=100, checkpoint_every=2000),
        resolution=64, eval_samples=500),
}


def shapes_batch_fn(resolution: int = 32):
    """sample_batch(n, generator, device) -> fresh Shapes images (n, 3, R, R) in [-1, 1]."""
    def sample_batch(n, generator, device):
        seed = int(torch.randint(0, 2 ** 31, (1,), generator=generator))
        images, _, _ = shapes.sample_batch(n, "train", resolution, seed=seed)
        return (images * 2 - 1).to(device)                            # [0, 1] -> [-1, 1]
    return sample_batch


def job(preset="cpu", run_dir="runs", **overrides) -> Job:
    """The pixel UNet's training run: a seeded UNet, the diffusion loss, fresh Shapes batches."""
    p = get_preset(PRESETS, preset)
    cfg = train_config(p.train, run_dir, NAME, overrides)
    schedule = NoiseSchedule(p.schedule, p.num_timesteps).to(training.pick_device(cfg.device))
    torch.manual_seed(cfg.seed)                     # the same seed, the same initial weights
    model = UNet(p.model)
    loss_fn = lambda m, x0: diffusion_loss(m, schedule, x0, snr_gamma=p.snr_gamma, prediction=p.prediction)
    return Job(model, loss_fn, shapes_batch_fn(p.resolution), cfg, NAME)


def load_pixel_unet(weights=None, device="cpu"):
    """(eps_model, NoiseSchedule) from a folder written by fit (None -> the shipped minildm/weights/pixel_unet/).

    eps_model(xt, t) predicts the noise whatever the network was trained to output
    (a v-network comes wrapped in EpsFromV; the UNet itself is eps_model.model then).
    """
    folder = resolve_folder(weights, NAME)
    diffusion = DiffusionConfig.load(folder, legacy_default=LEGACY)
    schedule = diffusion.make_schedule()
    return as_eps_model(UNet.from_pretrained(folder, device=device), schedule, diffusion.prediction), schedule


def fit(preset: str | PixelPreset = "cpu", out_dir="weights", run_dir="runs", **overrides) -> nn.Module:
    """Train the pixel UNet on Shapes through train.train and save it to out_dir/pixel_unet/.

    overrides are TrainConfig fields (steps, batch_size, lr, device, ...).
    Returns the trained model as an eps-predictor (EpsFromV around the UNet for a v preset);
    model.schedule is the NoiseSchedule it was trained with (sample with that one).
    Taught in notebooks/02_ddpm.ipynb.
    """
    p = get_preset(PRESETS, preset)
    run = job(p, run_dir, **overrides)
    result = training.train(run.model, run.loss_fn, run.sample_batch, run.cfg, name=NAME)
    model = result.model.cpu()
    if out_dir:
        folder = Path(out_dir) / NAME
        model.save_pretrained(folder)
        p.diffusion().save(folder)
        write_training_json(folder, preset, run.cfg, result)
        print(f"[{NAME}] wrote {folder}/ ({sum(x.numel() for x in model.parameters()):,} parameters)")
    print(f"[{NAME}] trained {result.steps_run} steps in {result.seconds:.0f} s "
          f"({result.images_per_second:.0f} images/s) on {training.pick_device(run.cfg.device)}")
    schedule = NoiseSchedule(p.schedule, p.num_timesteps)
    model = as_eps_model(model, schedule, p.prediction)
    model.schedule = schedule                         # EpsFromV has it already; an eps-UNet gets it here
    model.train_seconds, model.images_per_second = result.seconds, result.images_per_second
    return model


@torch.no_grad()
def generate(model: UNet, schedule: NoiseSchedule, n: int = 16, sampler: str = "ddim", num_steps: int = 50,
             eta: float = 0.0, seed: int = 0, resolution: int = 32, batch_size: int = 256,
             progress: bool = True, return_trajectory: bool = False):
    """Sample n images (n, 3, R, R) in [0, 1] from an unconditional pixel UNet.

    sampler: "ddim" (num_steps, eta) or "ddpm" (all T steps). Same seed, same images.
    With return_trajectory (one batch only), also returns the list of x_t in [-1, 1].
    Taught in notebooks/02_ddpm.ipynb and 03_ddim.ipynb.
    """
    if sampler not in ("ddim", "ddpm"):
        raise ValueError(f"sampler must be 'ddim' or 'ddpm', got {sampler!r}")
    device = next(model.parameters()).device
    schedule = schedule.to(device)
    chosen = DDPMSampler(schedule) if sampler == "ddpm" else DDIMSampler(schedule, num_steps, eta)
    generator = torch.Generator().manual_seed(seed)
    out, trajectory = [], None
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        xT = torch.randn(b, model.config.in_channels, resolution, resolution, generator=generator).to(device)
        result = sample(lambda x, t: model(x, t), chosen, xT, generator=generator, progress=progress,
                        return_trajectory=return_trajectory)
        if return_trajectory:
            result, trajectory = result
        out.append(result.cpu())
    images = (torch.cat(out) + 1) / 2                                      # [-1, 1] -> [0, 1]
    images = images.clamp(0, 1)
    return (images, trajectory) if return_trajectory else images


def evaluate(weights=None, quick: bool = False, n: int | None = None, n_ddpm: int | None = None,
             seed: int = 0, device: str = "cpu", progress: bool = True) -> dict:
    """Sample with DDIM-50 (eta 0 and eta 1) and DDPM-1000, grade with the judge, and time them.

    n images with each DDIM setting (default 600) and n_ddpm with DDPM (default 200:
    its 1000 steps take ~15 CPU-minutes for 200 images). Every sampler starts from the
    same seeded noise, so the first min(n, n_ddpm) images are paired. At ~95% clean a
    rate measured on 200 images is uncertain by about +-1.5 points (one standard error),
    hence the larger DDIM sample. quick: 16 DDIM images and 4 DDPM images.
    Returns a JSON-able dict: clean rates, attribute counts among clean images,
    seconds per image for each sampler, DDIM's gaps to DDPM and its speed-up.
    """
    model, schedule = load_pixel_unet(weights, device=training.pick_device(device))
    n_ddim = 16 if quick else (n or 3 * PRESETS["cpu"].eval_samples)
    n_ddpm = 4 if quick else (n_ddpm or PRESETS["cpu"].eval_samples)
    result = {"weights": str(resolve_folder(weights, NAME)), "device": device}
    ddim_steps = min(50, schedule.num_timesteps)
    runs = (("ddim50", "ddim", ddim_steps, 0.0, n_ddim), ("ddim50_eta1", "ddim", ddim_steps, 1.0, n_ddim),
            ("ddpm1000", "ddpm", 0, 0.0, n_ddpm))
    for label, kind, steps, eta, count in runs:
        t0 = time.perf_counter()
        images = generate(model, schedule, count, sampler=kind, num_steps=steps, eta=eta, seed=seed,
                          progress=progress)
        seconds = time.perf_counter() - t0
        result[label] = {**grade_unconditional(images), "eta": eta, "seconds_per_image": seconds / count}
    for label in ("ddim50", "ddim50_eta1"):
        result[f"{label}_vs_ddpm1000_clean_gap"] = result[label]["clean_rate"] - result["ddpm1000"]["clean_rate"]
    result["ddim50_speedup"] = result["ddpm1000"]["seconds_per_image"] / result["ddim50"]["seconds_per_image"]
    return result


def headline(result: dict) -> str:
    """One line of an evaluate() result: what a student wants to know first."""
    return f"DDIM-50 images judged clean: {result['ddim50']['clean_rate']:.1%}"
