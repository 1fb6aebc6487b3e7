"""The DDPM recipe in pixel space: the training loss, the 2-D point denoiser, and
an unconditional UNet on 32x32 Shapes images.

Training a denoiser is one line of math (DDPM Algorithm 1):

    x0 ~ data,  t ~ Uniform{0..T-1},  eps ~ N(0, I)
    loss = || eps - eps_theta( sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps,  t ) ||^2

which is `diffusion_loss`. (The shipped pixel UNet learns the equivalent "v" target
instead, see EpsFromV; the samplers still receive eps.) Everything else here plugs it into the one training
loop (train.train): `fit_points` for the 2-D MLP (seconds), `fit` for the pixel
UNet (minutes on a CPU; the shipped weights in minildm/weights/pixel_unet/ come
from the cpu preset), and `evaluate`, which samples images and grades them with
the Shapes judge (data/judge.py).

    python -m minildm train pixel_unet --preset cpu --out minildm/weights
    python -m minildm evaluate pixel_unet

Taught in notebooks/02_ddpm.ipynb (and sampled with DDIM in 03_ddim.ipynb).
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .data.judge import grade_unconditional
from . import train as training
from .data import shapes, toy2d
from .samplers import DDIMSampler, DDPMSampler, sample
from .schedule import NoiseSchedule
from .unet import MLPConfig, MLPDenoiser, UNet, UNetConfig
from .weights_io import WeightsError, resolve_folder

NAME = "pixel_unet"
SCHEDULE_FILE = "schedule.json"  # next to config.json: the NoiseSchedule and prediction the weights were trained with
PREDICTIONS = ("eps", "v")       # what the network outputs: the noise, or v (see NoiseSchedule.velocity)


# ----------------------------------------------------------------------------
# The loss (DDPM Algorithm 1)

def diffusion_loss(model, schedule: NoiseSchedule, x0: torch.Tensor, context=None, context_mask=None,
                   t: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                   generator: torch.Generator | None = None, snr_gamma: float | None = None,
                   prediction: str = "eps") -> torch.Tensor:
    """The simple DDPM loss: mean squared error between the added noise and its prediction.

    x0: (B, ...) clean data (images in [-1, 1], latents, or 2-D points);
    context (B, L, D) and context_mask (B, L) are passed to the model when given.
    t (B,) and noise (like x0) may be given for a deterministic loss; otherwise
    t ~ Uniform{0..T-1} and noise ~ N(0, I) are drawn (from `generator` if given).
    prediction: "eps" (the target is the noise, DDPM) or "v" (the target is
    schedule.velocity(x0, t, noise); wrap the trained model with EpsFromV to sample).
    snr_gamma (optional, "min-SNR weighting", Hang et al. 2023): weight each example's
    error by min(SNR(t), gamma) / SNR(t). The plain eps loss spends most of its effort on
    nearly clean x_t (high SNR), where the details are easy; capping the weight there
    lets a small training budget go to the noise levels that decide the layout.
    Returns a scalar tensor.

    Taught in notebooks/02_ddpm.ipynb.
    """
    B = x0.shape[0]
    if t is None:
        t = torch.randint(0, schedule.num_timesteps, (B,), generator=generator,
                          device=generator.device if generator is not None else "cpu").to(x0.device)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype,
                            device=generator.device if generator is not None else x0.device).to(x0.device)
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")
    xt = schedule.q_sample(x0, t, noise)                              # (B, ...)
    target = noise if prediction == "eps" else schedule.velocity(x0, t, noise)
    if context is None:
        pred = model(xt, t)
    else:
        pred = model(xt, t, context=context, context_mask=context_mask)
    if snr_gamma is None:
        return F.mse_loss(pred.float(), target.float())
    per_example = ((pred.float() - target.float()) ** 2).flatten(1).mean(dim=1)   # (B,)
    snr = schedule.snr(t).to(per_example.device)
    weight = snr.clamp(max=snr_gamma) / snr                                        # (B,), <= 1
    return (weight * per_example).mean()


class EpsFromV(nn.Module):
    """Wrap a v-predicting network so that it predicts eps, like every sampler expects:

        eps = sqrt(alpha_bar_t) * v + sqrt(1 - alpha_bar_t) * x_t

    The shipped pixel UNet predicts v: an undertrained eps-network makes speckled
    images with few DDIM steps, because near t = T the image is recovered from
    x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), dividing a tiny error
    by sqrt(alpha_bar_999) (0.006 for the linear schedule, 0.00005 for the cosine one).
    A v-network predicts that image directly.
    Taught in notebooks/02_ddpm.ipynb.
    """

    def __init__(self, model: nn.Module, schedule: NoiseSchedule):
        super().__init__()
        self.model, self.schedule = model, schedule

    @property
    def config(self):
        return self.model.config

    def forward(self, xt, t, **kwargs):
        v = self.model(xt, t, **kwargs)
        return self.schedule.eps_from_v(xt, t, v)


def as_eps_model(model: nn.Module, schedule: NoiseSchedule, prediction: str) -> nn.Module:
    """The model itself for prediction="eps"; EpsFromV(model, schedule) for "v"."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")
    return model if prediction == "eps" else EpsFromV(model, schedule).eval()


# ----------------------------------------------------------------------------
# 2-D points: the MLP denoiser (seconds on a CPU)

def fit_points(dataset: str = "ink_drop", steps: int = 3000, batch_size: int = 512, lr: float = 3e-3,
               schedule: NoiseSchedule | None = None, config: MLPConfig | None = None, seed: int = 0,
               device: str = "cpu", progress: bool = True) -> training.TrainResult:
    """Train an MLPDenoiser on a 2-D point cloud (toy2d.make(dataset)) through train.train.

    Each batch is a fresh draw of `batch_size` points. Returns the TrainResult:
    result.model is the trained (EMA) denoiser, result.history the logged losses.
    Taught in notebooks/02_ddpm.ipynb.
    """
    if dataset not in toy2d.DATASETS:
        raise ValueError(f"unknown 2-D dataset {dataset!r}; allowed: {', '.join(toy2d.DATASETS)}")
    schedule = schedule or NoiseSchedule("linear", 1000)
    model = MLPDenoiser(config)

    def sample_batch(n, generator, device):
        seed = int(torch.randint(0, 2 ** 31, (1,), generator=generator))
        return toy2d.make(dataset, n, seed=seed).to(device)             # (n, 2)

    sched = schedule.to(training.pick_device(device))
    cfg = training.TrainConfig(steps=steps, batch_size=batch_size, lr=lr, warmup_steps=min(100, steps // 10),
                               ema_decay=0.99, device=device, seed=seed, log_every=max(1, steps // 50),
                               progress=progress)
    return training.train(model, lambda m, x0: diffusion_loss(m, sched, x0), sample_batch, cfg,
                          name=f"mlp_{dataset}")


# ----------------------------------------------------------------------------
# Pixel-space UNet on Shapes

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
    # a GPU: 64x64 images, a wider UNet, bf16
    "gpu": PixelPreset(
        model=UNetConfig(base_channels=64, channel_mults=(1, 2, 2, 2), attention_levels=(False, False, True, True),
                         num_heads=4, dropout=0.1),
        train=training.TrainConfig(steps=30000, batch_size=128, lr=2e-4, warmup_steps=1000, ema_decay=0.9995,
                                   precision="bf16", log_every=100, checkpoint_every=2000),
        resolution=64, eval_samples=500),
}


def get_preset(preset: str | PixelPreset) -> PixelPreset:
    if isinstance(preset, PixelPreset):
        return preset
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")
    return PRESETS[preset]


def shapes_batch_fn(resolution: int = 32):
    """sample_batch(n, generator, device) -> fresh Shapes images (n, 3, R, R) in [-1, 1]."""
    def sample_batch(n, generator, device):
        seed = int(torch.randint(0, 2 ** 31, (1,), generator=generator))
        images, _, _ = shapes.sample_batch(n, "train", resolution, seed=seed)
        return (images * 2 - 1).to(device)                            # [0, 1] -> [-1, 1]
    return sample_batch


def save_schedule(schedule: NoiseSchedule, folder, prediction: str = "eps") -> None:
    """Write folder/schedule.json: the schedule and the prediction type the weights go with."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / SCHEDULE_FILE).write_text(json.dumps(
        {"kind": schedule.kind, "num_timesteps": schedule.num_timesteps, "prediction": prediction}) + "\n")


def load_schedule(folder) -> tuple[NoiseSchedule, str]:
    """(NoiseSchedule, prediction) saved next to a model (linear, 1000, eps when the file is absent)."""
    path = Path(folder) / SCHEDULE_FILE
    if not path.exists():
        return NoiseSchedule("linear", 1000), "eps"
    try:
        fields = json.loads(path.read_text())
        prediction = fields.get("prediction", "eps")
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}")
        return NoiseSchedule(fields["kind"], int(fields["num_timesteps"])), prediction
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as err:
        raise WeightsError(f"{path} should hold {{'kind': 'linear'|'cosine', 'num_timesteps': int, "
                           f"'prediction': 'eps'|'v'}} ({err})") from err


def load_pixel_unet(weights=None, device="cpu"):
    """(eps_model, NoiseSchedule) from a folder written by fit (None -> the shipped minildm/weights/pixel_unet/).

    eps_model(xt, t) predicts the noise whatever the network was trained to output
    (a v-network comes wrapped in EpsFromV; the UNet itself is eps_model.model then).
    """
    folder = resolve_folder(weights, NAME)
    schedule, prediction = load_schedule(folder)
    return as_eps_model(UNet.from_pretrained(folder, device=device), schedule, prediction), schedule


def fit(preset: str | PixelPreset = "cpu", out_dir="weights", run_dir="runs", **overrides) -> nn.Module:
    """Train the pixel UNet on Shapes through train.train and save it to out_dir/pixel_unet/.

    overrides are TrainConfig fields (steps, batch_size, lr, device, ...).
    Returns the trained model as an eps-predictor (EpsFromV around the UNet for a v preset);
    model.schedule is the NoiseSchedule it was trained with (sample with that one).
    Taught in notebooks/02_ddpm.ipynb.
    """
    p = get_preset(preset)
    cfg = dataclasses.replace(p.train, out_dir=str(Path(run_dir) / NAME) if run_dir else None, **overrides)
    device = training.pick_device(cfg.device)
    schedule = NoiseSchedule(p.schedule, p.num_timesteps).to(device)
    torch.manual_seed(cfg.seed)                     # the same seed, the same initial weights
    model = UNet(p.model)
    result = training.train(model, lambda m, x0: diffusion_loss(m, schedule, x0, snr_gamma=p.snr_gamma,
                                                                 prediction=p.prediction),
                            shapes_batch_fn(p.resolution), cfg, name=NAME)
    model = result.model.cpu()
    if out_dir:
        folder = Path(out_dir) / NAME
        model.save_pretrained(folder)
        save_schedule(schedule, folder, p.prediction)
        print(f"[{NAME}] wrote {folder}/ ({sum(x.numel() for x in model.parameters()):,} parameters)")
    print(f"[{NAME}] trained {result.steps_run} steps in {result.seconds:.0f} s "
          f"({result.images_per_second:.0f} images/s) on {device}")
    schedule = schedule.to("cpu")
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


def grade(images: torch.Tensor) -> dict:
    """Judge generated Shapes images: clean rate and how often each attribute value appears."""
    return grade_unconditional(images)


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
        result[label] = {**grade(images), "eta": eta, "seconds_per_image": seconds / count}
    for label in ("ddim50", "ddim50_eta1"):
        result[f"{label}_vs_ddpm1000_clean_gap"] = result[label]["clean_rate"] - result["ddpm1000"]["clean_rate"]
    result["ddim50_speedup"] = result["ddpm1000"]["seconds_per_image"] / result["ddim50"]["seconds_per_image"]
    return result
