"""Pixel space as a "VAE" that does nothing: diffusion on the 32x32x3 image itself.

Latent diffusion (Rombach et al. 2022) moves the denoiser from pixels into a VAE's latent
space: 32x32x3 images become 8x8x4 latents, 12x fewer numbers, so every training and sampling
step is cheaper. To measure what that buys (recipes/spaces.py, lesson 06), the same pipeline
and the same UNet code must also run on pixels. PixelSpace fills the pipeline's VAE slot with
the identity map - images in [0, 1] become "latents" in [-1, 1] (the range DDPM trains on) and
back - so the only difference between the two models is the space they denoise in.

    space = PixelSpace()                      # 32x32 images, "latents" (N, 3, 32, 32)
    z = space.encode(images)                  # images * 2 - 1
    images = space.decode(z)                  # (z + 1) / 2, clamped to [0, 1]

It has no weights, so nothing to train and nothing to save; the UNet then has to do in every
step the down- and up-sampling that the VAE's encoder and decoder do once.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class PixelSpaceConfig:
    """The fields the pipeline reads from a VAE's config: pixel space is its own latent space."""
    image_size: int = 32

    @property
    def latent_size(self) -> int:
        return self.image_size           # no down-sampling

    @property
    def latent_channels(self) -> int:
        return 3                         # RGB

    @property
    def compression(self) -> float:
        return 1.0


class PixelSpace(nn.Module):
    """The identity "autoencoder": encode(images) = 2 * images - 1, decode(z) = (z + 1) / 2."""

    def __init__(self, image_size: int = 32):
        super().__init__()
        self.config = PixelSpaceConfig(image_size)
        # No weights. A zero-size parameter only lets `next(space.parameters())` say which device
        # the space is on, as it does for a TinyVAE (recipes/ldm.encode_pool asks).
        self.device_anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    def _check(self, x: torch.Tensor, what: str) -> torch.Tensor:
        size = self.config.image_size
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, size, size):
            raise ValueError(f"{what} must have shape (N, 3, {size}, {size}), got {tuple(x.shape)}")
        return x.to(self.device_anchor.device, torch.float32)

    def encode(self, images: torch.Tensor, sample: bool = False, generator=None) -> torch.Tensor:
        """images (N, 3, H, W) in [0, 1] -> "latents" (N, 3, H, W) in [-1, 1]."""
        return self._check(images, "images") * 2 - 1

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """"latents" (N, 3, H, W) -> images (N, 3, H, W) clamped to [0, 1]."""
        return ((self._check(z, "latents") + 1) / 2).clamp(0, 1)
