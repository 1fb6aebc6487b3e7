"""Diffusion training objectives, and the conversions between what a network predicts.

A denoiser sees x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps (schedule.q_sample)
and can be trained to output any one of three things, all equivalent given x_t:

    eps   the noise that was added                       (DDPM, Ho et al. 2020)
    v     sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0 (Salimans & Ho 2022)
    x0    the clean data itself

The conversions, written once here and used by the samplers and the pipeline:

    x0  = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)      x0_from_eps
    eps = (x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t)       eps_from_x0
    eps = sqrt(alpha_bar_t) v + sqrt(1 - alpha_bar_t) x_t            eps_from_v

The training objective is DDPM Algorithm 1 (`diffusion_loss`): draw t and eps,
noise x0, regress the network's output onto the target (eps or v).

Rectified flow (`flow_matching_loss`, lesson 08) replaces the schedule by a straight
line, x_s = (1 - s) x0 + s eps for s in [0, 1], and the network predicts the velocity
v = eps - x0 along it; x0 = x_s - s v (`x0_from_velocity`).

Every trained denoiser is saved with a `DiffusionConfig` (diffusion.json next to
its config.json): the schedule it was trained with, the prediction type and the
x0 clipping range its samplers use, so loading a model never guesses.

Taught in notebooks/01_forward_diffusion.ipynb (x0 from eps), 02_ddpm.ipynb (the loss, v)
and 08_sd3.ipynb (rectified flow).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .schedule import SCHEDULE_KINDS, NoiseSchedule, extract
from .weights_io import WeightsError, load_config, save_config

PREDICTIONS = ("eps", "v")        # what a network outputs: the noise, or v
MODEL_PREDICTIONS = PREDICTIONS + ("flow",)   # DiffusionConfig.prediction: also a rectified flow's velocity
DIFFUSION_FILE = "diffusion.json"  # next to a denoiser's config.json


# ----------------------------------------------------------------------------
# Conversions. alpha_bar is a Python float or a tensor that broadcasts against x_t.

def x0_from_eps(xt, eps, alpha_bar):
    """x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t): invert q_sample for x0 (DDPM eq. 15)."""
    return (xt - (1 - alpha_bar) ** 0.5 * eps) / alpha_bar ** 0.5


def eps_from_x0(xt, x0, alpha_bar):
    """eps = (x_t - sqrt(alpha_bar_t) x0) / sqrt(1 - alpha_bar_t): the noise that leads from x0 to x_t."""
    return (xt - alpha_bar ** 0.5 * x0) / (1 - alpha_bar) ** 0.5


def velocity(schedule: NoiseSchedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The "v" target: v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x0.

    v is the noise at low t and minus the image at high t, so a network predicting
    v never has to pull a whole image out of a tiny difference (which eps does near t = T).
    """
    alpha_bar = extract(schedule.alpha_bar.to(x0.device), schedule._batch_t(t, x0), x0.shape)   # (B, 1, ...)
    return alpha_bar.sqrt() * noise - (1 - alpha_bar).sqrt() * x0


def eps_from_v(schedule: NoiseSchedule, xt: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The noise implied by a v prediction: eps = sqrt(alpha_bar_t) v + sqrt(1 - alpha_bar_t) x_t."""
    alpha_bar = extract(schedule.alpha_bar.to(xt.device), schedule._batch_t(t, xt), xt.shape)   # (B, 1, ...)
    return alpha_bar.sqrt() * v + (1 - alpha_bar).sqrt() * xt


def predict_x0(schedule: NoiseSchedule, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """x0_from_eps with alpha_bar_t gathered for a batch of timesteps t (B,)."""
    alpha_bar = extract(schedule.alpha_bar.to(xt.device), schedule._batch_t(t, xt), xt.shape)   # (B, 1, ...)
    return (xt - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


# ----------------------------------------------------------------------------
# The loss (DDPM Algorithm 1)

def diffusion_loss(model, schedule: NoiseSchedule, x0: torch.Tensor, context=None, context_mask=None,
                   t: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                   generator: torch.Generator | None = None, snr_gamma: float | None = None,
                   prediction: str = "eps") -> torch.Tensor:
    """The simple DDPM loss: mean squared error between the added noise and its prediction.

        x0 ~ data,  t ~ Uniform{0..T-1},  eps ~ N(0, I)
        loss = || eps - eps_theta( sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps,  t ) ||^2

    x0: (B, ...) clean data (images in [-1, 1], latents, or 2-D points);
    context (B, L, D) and context_mask (B, L) are passed to the model when given.
    t (B,) and noise (like x0) may be given for a deterministic loss; otherwise
    t ~ Uniform{0..T-1} and noise ~ N(0, I) are drawn (from `generator` if given).
    prediction: "eps" (the target is the noise, DDPM) or "v" (the target is
    velocity(schedule, x0, t, noise); wrap the trained model with EpsFromV to sample).
    snr_gamma (optional, "min-SNR weighting", Hang et al. 2023): weight each example's
    error by min(SNR(t), gamma) / SNR(t). The plain eps loss spends most of its effort on
    nearly clean x_t (high SNR), where the details are easy; capping the weight there
    lets a small training budget go to the noise levels that decide the layout. With
    prediction="v" the same weight multiplies the v error: the plain v loss below SNR = gamma,
    capped above it (Hang et al.'s v form, min(SNR, gamma) / (SNR + 1), would also shrink the
    weight of the noisiest steps, where the v loss is already the x0 loss).
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
    target = noise if prediction == "eps" else velocity(schedule, x0, t, noise)
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
        return eps_from_v(self.schedule, xt, t, v)


def as_eps_model(model: nn.Module, schedule: NoiseSchedule, prediction: str) -> nn.Module:
    """The model itself for prediction="eps"; EpsFromV(model, schedule) for "v"."""
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {', '.join(PREDICTIONS)}, got {prediction!r}")
    return model if prediction == "eps" else EpsFromV(model, schedule).eval()


# ----------------------------------------------------------------------------
# Rectified flow (flow matching): a straight line from data to noise

FLOW_TIMESTEPS = 1000   # the network sees t = 1000 s (a float), on the same scale as DDPM's integer t
TIMESTEP_SAMPLING = ("uniform", "logit_normal")


def flow_interpolate(x0: torch.Tensor, s, noise: torch.Tensor) -> torch.Tensor:
    """x_s = (1 - s) x0 + s eps: the point a fraction s of the way along the line from x0 to eps.

    s is a float or a tensor (B,) with values in [0, 1]; s = 0 is the data, s = 1 pure noise.
    """
    s = torch.as_tensor(s, dtype=x0.dtype, device=x0.device).reshape(-1, *[1] * (x0.ndim - 1))  # (B or 1, 1, ...)
    return (1 - s) * x0 + s * noise


def x0_from_velocity(xs, v, s):
    """x0 = x_s - s v: walk back from x_s to s = 0 along the straight line (s a float or broadcastable)."""
    return xs - s * v


def sample_flow_time(batch_size: int, timestep_sampling: str = "uniform", generator=None, device="cpu"):
    """s (B,) in (0, 1): uniform, or SD3's logit-normal, s = sigmoid(n) with n ~ N(0, 1).

    The logit-normal density (Esser et al. 2024, eq. 19 with m = 0, s = 1) puts most
    training examples around s = 0.5, where predicting v is hardest, and few at the ends,
    where it is easy: near s = 0, x_s is almost x0 and the best v is almost -x_s; near
    s = 1, x_s is almost eps and the best v is almost x_s - mean(x0).
    """
    if timestep_sampling not in TIMESTEP_SAMPLING:
        raise ValueError(f"timestep_sampling must be one of {', '.join(TIMESTEP_SAMPLING)}, "
                         f"got {timestep_sampling!r}")
    gen_device = generator.device if generator is not None else device
    if timestep_sampling == "uniform":
        s = torch.rand(batch_size, generator=generator, device=gen_device)
    else:
        s = torch.sigmoid(torch.randn(batch_size, generator=generator, device=gen_device))
    return s.to(device)


def flow_matching_loss(model, x0: torch.Tensor, context=None, context_mask=None, s: torch.Tensor | None = None,
                       noise: torch.Tensor | None = None, generator: torch.Generator | None = None,
                       timestep_sampling: str = "uniform") -> torch.Tensor:
    """The rectified-flow loss (Liu et al. 2022; Lipman et al. 2022; SD3, Esser et al. 2024):

        x0 ~ data,  s ~ p(s) on [0, 1],  eps ~ N(0, I)
        x_s = (1 - s) x0 + s eps                   a straight line from the data (s = 0) to noise (s = 1)
        v   = d x_s / d s = eps - x0               the velocity along it: the target
        loss = || v - v_theta(x_s, t = 1000 s) ||^2

    The best possible v_theta is the average velocity E[eps - x0 | x_s] through each
    point; following it backwards from s = 1 to 0 (samplers.FlowEulerSampler) carries
    noise to data. The network gets t = 1000 s as a float, so the sinusoidal time
    embedding of the UNet and the DiT needs no change.

    x0 (B, ...), context (B, L, D) and context_mask (B, L) as in diffusion_loss;
    s (B,) and noise (like x0) may be given for a deterministic loss, otherwise
    drawn (from `generator` if given), s by timestep_sampling: "uniform" or
    "logit_normal". Returns a scalar tensor.

    Taught in notebooks/08_sd3.ipynb.
    """
    B = x0.shape[0]
    if s is None:
        s = sample_flow_time(B, timestep_sampling, generator, x0.device)
    elif timestep_sampling not in TIMESTEP_SAMPLING:
        raise ValueError(f"timestep_sampling must be one of {', '.join(TIMESTEP_SAMPLING)}, "
                         f"got {timestep_sampling!r}")
    s = torch.as_tensor(s, dtype=torch.float32, device=x0.device).reshape(-1).expand(B)   # (B,)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype,
                            device=generator.device if generator is not None else x0.device).to(x0.device)
    xs = flow_interpolate(x0, s, noise)                               # (B, ...)
    target = noise - x0                                               # v = eps - x0
    t = s * FLOW_TIMESTEPS                                            # (B,) float
    if context is None:
        pred = model(xs, t)
    else:
        pred = model(xs, t, context=context, context_mask=context_mask)
    return F.mse_loss(pred.float(), target.float())


# ----------------------------------------------------------------------------
# What a trained denoiser is saved with

@dataclass
class DiffusionConfig:
    """How a denoiser was trained and must be sampled (folder/diffusion.json).

    prediction="flow" is a rectified-flow model (flow_matching_loss: the network predicts the
    velocity eps - x0 at t = 1000 s). It has no noise schedule: schedule and num_timesteps are
    then unused (kept at their defaults), and the flow samplers (Euler, Heun) do not clip x0.
    """
    schedule: str = "cosine"       # noise schedule kind: linear | cosine (unused for "flow")
    num_timesteps: int = 1000      # T of the forward process (unused for "flow")
    prediction: str = "eps"        # network output: eps | v | flow (a rectified flow's velocity)
    clip_x0: float = 0.0           # samplers keep predicted x0 in [-clip_x0, clip_x0] (0 = no clipping)

    def __post_init__(self):
        if self.schedule not in SCHEDULE_KINDS:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULE_KINDS)}, got {self.schedule!r}")
        if isinstance(self.num_timesteps, bool) or not isinstance(self.num_timesteps, int) \
                or not 2 <= self.num_timesteps <= 10000:
            raise ValueError(f"num_timesteps must be an int in 2..10000, got {self.num_timesteps!r}")
        if self.prediction not in MODEL_PREDICTIONS:
            raise ValueError(f"prediction must be one of {', '.join(MODEL_PREDICTIONS)}, got {self.prediction!r}")
        if isinstance(self.clip_x0, bool) or not isinstance(self.clip_x0, (int, float)) \
                or not 0 <= self.clip_x0 < float("inf"):
            raise ValueError(f"clip_x0 must be a finite number >= 0 (0 = off), got {self.clip_x0!r}")

    def make_schedule(self) -> NoiseSchedule:
        return NoiseSchedule(self.schedule, self.num_timesteps)

    def save(self, folder) -> Path:
        """Write folder/diffusion.json."""
        path = Path(folder) / DIFFUSION_FILE
        save_config(self, path)
        return path

    @classmethod
    def load(cls, folder, legacy_default: "DiffusionConfig | None" = None) -> "DiffusionConfig":
        """Read folder/diffusion.json; folders written before it existed keep loading:

            schedule.json {"kind", "num_timesteps", "prediction"}   the old pixel UNet file
            pipeline.json {"schedule", "num_timesteps", "latent_clip", ...}   the old latent UNet file

        With none of them, legacy_default (or an error when it is None).
        """
        folder = Path(folder)
        if (folder / DIFFUSION_FILE).exists():
            return load_config(cls, folder / DIFFUSION_FILE)
        for name, keys in (("schedule.json", {"kind": "schedule", "num_timesteps": "num_timesteps",
                                              "prediction": "prediction"}),
                           ("pipeline.json", {"schedule": "schedule", "num_timesteps": "num_timesteps",
                                              "latent_clip": "clip_x0"})):
            path = folder / name
            if not path.exists():
                continue
            try:
                fields = json.loads(path.read_text())
                legacy = {new: fields[old] for old, new in keys.items() if old in fields}
                if name == "schedule.json":
                    legacy.setdefault("clip_x0", 1.0)        # the old pixel samplers clipped to [-1, 1]
                if "schedule" not in legacy:
                    continue
                return cls(**legacy)
            except (json.JSONDecodeError, UnicodeDecodeError, TypeError, ValueError, AttributeError) as err:
                raise WeightsError(f"{path} should describe the diffusion process "
                                   f"(expected fields {sorted(asdict(cls()))}): {err}") from err
        if legacy_default is not None:
            return legacy_default
        raise WeightsError(f"no {DIFFUSION_FILE} in {folder}: it says which schedule and prediction "
                           f"the weights were trained with (written by the recipe's fit)")
