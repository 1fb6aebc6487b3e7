"""A tiny VAE: squeeze 32x32x3 Shapes images into an 8x8x4 latent space and back.

Stable Diffusion does not denoise pixels. It denoises *latents*: a variational
autoencoder (VAE) first compresses each image into a small grid of numbers, the
diffusion model works there, and the VAE's decoder turns the result back into
pixels. This module is that autoencoder, small enough to train on a laptop CPU.

Symbols (Kingma & Welling 2014, "Auto-Encoding Variational Bayes"):

    x            an image, (B, 3, H, W) in [0, 1] at the API, [-1, 1] inside
    mean, logvar the encoder's diagonal Gaussian q(z|x) = N(mean, exp(logvar)),
                 each (B, 4, H/f, W/f) with f = config.downsample
    eps          standard normal noise of the same shape
    z            a latent: mean + exp(0.5 * logvar) * eps   (reparameterisation)
    scale_factor 1 / std of the latent means on data, so the latents the
                 diffusion model sees have unit variance (as Stable Diffusion's 0.18215)

The loss (`vae_loss`) is

    mean squared error(decoder(z), x)  +  kl_weight * KL(q(z|x) || N(0, I))

Reconstruction: the mean squared error, because the PSNR the course reports is
exactly -10 log10(MSE), and on these flat-coloured images L2 does not blur much
(an L1 loss would give slightly sharper edges but optimise a different number).
KL: a *small* weight keeps the latent space smooth and centred (nearby latents
decode to similar images, random latents decode to something) without throwing
away the detail the decoder needs.

Training (minildm/recipes/vae.py) has two stages: the whole VAE with the loss above, then a short
decoder-only fine-tuning (`finetune_decoder`, the encoder and so the latents stay
fixed) that scores reconstructions after `black_floor`, so the black background
decodes to exactly black instead of a faint glow.

The public API (used by the latent diffusion pipeline, keep it exact):

    vae = TinyVAE.from_pretrained()          # shipped weights, or a folder
    z = vae.encode(images)                   # (B, 3, H, W) in [0, 1] -> (B, 4, H/4, W/4), scaled
    images = vae.decode(z)                   # scaled latents -> (B, 3, H, W) in [0, 1]

Taught in notebooks/05_vae.ipynb.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from . import weights_io

NAME = "vae"                  # folder name under weights/ and runs/
RANGE_TOLERANCE = 1e-3        # how far outside [0, 1] an input image may stray (float rounding)


# ----------------------------------------------------------------------------
# Config

@dataclass
class VAEConfig:
    """Architecture of a TinyVAE (what to build, not how to train it).

    Taught in notebooks/05_vae.ipynb.
    """
    image_size: int = 32          # side of the square input images (32; the gpu preset uses 64)
    in_channels: int = 3          # RGB
    latent_channels: int = 4      # channels of the latent grid, as in Stable Diffusion
    downsample: int = 4           # spatial factor, a power of 2: 4 -> 32x32x3 to 8x8x4; 8 -> 4x4x4
    base_channels: int = 16       # feature channels at full resolution (few: 32x32 convs are the costly ones)
    channel_mult: tuple = (1, 2, 4)  # channels per level = base * mult: 16 @32x32, 32 @16x16, 64 @8x8
    blocks_per_level: int = 1     # residual blocks at each resolution level
    kl_weight: float = 1e-6       # KL weight: per-image KL (summed over 256 numbers) vs per-pixel MSE
    scale_factor: float = 1.0     # 1 / std of latent means on data; set by fit() after training

    # Allowed values (checked before a model is built from a config file; see validate.py).
    LIMITS: ClassVar[dict] = {"image_size": (8, 256), "in_channels": (1, 16), "latent_channels": (1, 64),
                              "downsample": (1, 64), "base_channels": (1, 512), "channel_mult": (1, 16),
                              "blocks_per_level": (1, 8), "kl_weight": (0.0, 1.0), "scale_factor": (1e-6, 1e6)}

    def __post_init__(self):
        levels = int(round(math.log2(self.downsample))) if self.downsample > 0 else -1
        if self.downsample < 1 or 2 ** levels != self.downsample:
            raise ValueError(f"downsample must be a power of 2 (e.g. 4 or 8), got {self.downsample}")
        if len(self.channel_mult) != levels + 1:
            raise ValueError(f"channel_mult needs log2(downsample) + 1 = {levels + 1} entries "
                             f"(one per resolution level), got {tuple(self.channel_mult)}")
        if self.image_size % self.downsample:
            raise ValueError(f"image_size {self.image_size} must be divisible by downsample {self.downsample}")
        if not self.scale_factor > 0:
            raise ValueError(f"scale_factor must be positive, got {self.scale_factor}")

    @property
    def latent_size(self) -> int:
        """Side of the latent grid: image_size / downsample."""
        return self.image_size // self.downsample

    @property
    def compression(self) -> float:
        """How many pixel numbers per latent number (12 for 32x32x3 -> 8x8x4)."""
        return (self.in_channels * self.image_size ** 2) / (self.latent_channels * self.latent_size ** 2)


# ----------------------------------------------------------------------------
# Building blocks

def _norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, channels // 4) or 1, channels)


class ResBlock(nn.Module):
    """norm -> SiLU -> conv3x3 -> norm -> SiLU -> conv3x3, plus a skip connection."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.block = nn.Sequential(
            _norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1),
            _norm(c_out), nn.SiLU(), nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.block(x)  # (B, c_out, H, W)


class Encoder(nn.Module):
    """x (B, 3, H, W) in [-1, 1] -> (mean, logvar), each (B, latent_channels, H/f, W/f)."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        chans = [cfg.base_channels * m for m in cfg.channel_mult]
        self.conv_in = nn.Conv2d(cfg.in_channels, chans[0], 3, padding=1)
        layers, c = [], chans[0]
        for level, c_level in enumerate(chans):
            for _ in range(cfg.blocks_per_level):
                layers.append(ResBlock(c, c_level))
                c = c_level
            if level < len(chans) - 1:           # halve H and W: a strided convolution
                layers.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
        self.body = nn.Sequential(*layers)
        self.out = nn.Sequential(_norm(c), nn.SiLU(), nn.Conv2d(c, 2 * cfg.latent_channels, 3, padding=1))

    def forward(self, x: torch.Tensor):
        h = self.out(self.body(self.conv_in(x)))   # (B, 2 * latent_channels, H/f, W/f)
        mean, logvar = h.chunk(2, dim=1)            # each (B, latent_channels, H/f, W/f)
        return mean, logvar.clamp(-30.0, 20.0)      # keep exp(logvar) finite


class Decoder(nn.Module):
    """z (B, latent_channels, H/f, W/f), unscaled -> image (B, 3, H, W) in about [-1, 1]."""

    def __init__(self, cfg: VAEConfig):
        super().__init__()
        chans = [cfg.base_channels * m for m in cfg.channel_mult][::-1]   # deepest level first
        self.conv_in = nn.Conv2d(cfg.latent_channels, chans[0], 3, padding=1)
        layers, c = [], chans[0]
        for level, c_level in enumerate(chans):
            for _ in range(cfg.blocks_per_level):
                layers.append(ResBlock(c, c_level))
                c = c_level
            if level < len(chans) - 1:           # double H and W: nearest upsampling + conv
                c_next = chans[level + 1]
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c_next, 3, padding=1)]
                c = c_next
        self.body = nn.Sequential(*layers)
        self.out = nn.Sequential(_norm(c), nn.SiLU(), nn.Conv2d(c, cfg.in_channels, 3, padding=1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(self.conv_in(z)))  # (B, 3, H, W)


# ----------------------------------------------------------------------------
# The two formulas of a VAE: sampling a latent, and the KL term

def reparameterize(mean: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """The reparameterisation trick: z = mean + std * eps, std = exp(0.5 * logvar), eps ~ N(0, I).

    Sampling z ~ N(mean, std^2) directly has no gradient with respect to mean and
    std; writing the sample as a deterministic function of (mean, logvar) and an
    outside noise eps lets gradients flow into the encoder.

    Taught in notebooks/05_vae.ipynb.
    """
    if eps is None:
        eps = torch.randn(mean.shape, generator=generator,
                          device=generator.device if generator is not None else mean.device)
        eps = eps.to(mean.device, mean.dtype)
    return mean + torch.exp(0.5 * logvar) * eps


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL( N(mean, exp(logvar)) || N(0, I) ) per image, summed over its latent numbers -> (B,).

    For one number: KL = 0.5 * (mean^2 + exp(logvar) - 1 - logvar), which is >= 0
    and exactly 0 for the prior itself (mean = 0, logvar = 0).

    Taught in notebooks/05_vae.ipynb.
    """
    kl = 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)   # (B, C, h, w)
    return kl.flatten(1).sum(dim=1)                           # (B,)


def vae_loss(reconstruction: torch.Tensor, images: torch.Tensor, mean: torch.Tensor,
             logvar: torch.Tensor, kl_weight: float):
    """reconstruction MSE + kl_weight * KL, both averaged over the batch.

    Args:
        reconstruction, images: (B, 3, H, W) in [0, 1] (reconstruction unclamped).
        mean, logvar: (B, C, h, w) from the encoder.
    Returns:
        (loss, {"mse": float, "kl": float, "psnr": float}).

    Taught in notebooks/05_vae.ipynb.
    """
    mse = F.mse_loss(reconstruction, images)          # per pixel number: PSNR = -10 log10(mse)
    kl = kl_divergence(mean, logvar).mean()           # per image
    loss = mse + kl_weight * kl
    return loss, {"mse": mse.item(), "kl": kl.item(), "psnr": psnr_from_mse(mse.item())}


def psnr_from_mse(mse: float) -> float:
    """Peak signal-to-noise ratio in dB for images in [0, 1]: 10 log10(1 / MSE)."""
    return 10.0 * math.log10(1.0 / max(mse, 1e-12))


# ----------------------------------------------------------------------------
# The model

class TinyVAE(nn.Module):
    """Convolutional VAE: images (B, 3, H, W) in [0, 1] <-> scaled latents (B, 4, H/f, W/f).

    Taught in notebooks/05_vae.ipynb.
    """

    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        self.config = config or VAEConfig()
        self.encoder = Encoder(self.config)
        self.decoder = Decoder(self.config)

    # -- input checks: say what is allowed --
    def _check_images(self, images) -> torch.Tensor:
        cfg = self.config
        want = (cfg.in_channels, cfg.image_size, cfg.image_size)
        if not isinstance(images, torch.Tensor):
            raise ValueError(f"images must be a torch.Tensor (B, {', '.join(map(str, want))}), "
                             f"got {type(images).__name__}")
        if images.ndim != 4 or tuple(images.shape[1:]) != want:
            raise ValueError(f"images must have shape (B, {', '.join(map(str, want))}) for this VAE "
                             f"(config.image_size={cfg.image_size}), got {tuple(images.shape)}")
        if not images.is_floating_point():
            raise ValueError(f"images must be float in [0, 1], got dtype {images.dtype}")
        if images.numel() == 0:
            raise ValueError("images is an empty batch; pass at least one image")
        lo, hi = images.min().item(), images.max().item()
        if not (lo >= -RANGE_TOLERANCE and hi <= 1 + RANGE_TOLERANCE):   # also catches NaN
            raise ValueError(f"images must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}] "
                             f"(did you pass [-1, 1] or 0..255 images?)")
        p = next(self.parameters())
        return images.to(p.device, p.dtype)

    def _check_latents(self, z) -> torch.Tensor:
        cfg = self.config
        want = (cfg.latent_channels, cfg.latent_size, cfg.latent_size)
        if not isinstance(z, torch.Tensor) or z.ndim != 4 or tuple(z.shape[1:]) != want:
            got = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
            raise ValueError(f"latents must have shape (B, {', '.join(map(str, want))}) for this VAE, got {got}")
        p = next(self.parameters())
        return z.to(p.device, p.dtype)

    # -- the API --
    def encode_distribution(self, images: torch.Tensor):
        """images (B, 3, H, W) in [0, 1] -> (mean, logvar), each (B, 4, H/f, W/f), NOT scaled."""
        x = self._check_images(images) * 2 - 1          # [0, 1] -> [-1, 1]
        return self.encoder(x)

    def encode(self, images: torch.Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> latents z (B, 4, H/f, W/f), multiplied by scale_factor.

        sample=False returns the mean of q(z|x) (deterministic: what diffusion trains on);
        sample=True draws z = mean + std * eps with the optional generator.
        """
        mean, logvar = self.encode_distribution(images)
        z = reparameterize(mean, logvar, generator=generator) if sample else mean
        return z * self.config.scale_factor

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, 4, H/f, W/f) -> images (B, 3, H, W) clamped to [0, 1]."""
        z = self._check_latents(z) / self.config.scale_factor
        return ((self.decoder(z) + 1) / 2).clamp(0, 1)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None):
        """Training pass: images (B, 3, H, W) in [0, 1] ->
        (reconstruction (B, 3, H, W) in about [0, 1], unclamped; mean; logvar (unscaled))."""
        mean, logvar = self.encode_distribution(images)
        z = reparameterize(mean, logvar, generator=generator)    # (B, 4, h, w)
        reconstruction = (self.decoder(z) + 1) / 2                # (B, 3, H, W)
        return reconstruction, mean, logvar

    # -- weights --
    @classmethod
    def from_pretrained(cls, path=None, device="cpu") -> "TinyVAE":
        """Load a folder written by save_pretrained (None -> the shipped minildm/weights/vae)."""
        return weights_io.from_pretrained(cls, VAEConfig, path, NAME, device)

    def save_pretrained(self, folder) -> Path:
        """Write folder/config.json and folder/model.safetensors."""
        return weights_io.save_pretrained(self, self.config, folder)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
