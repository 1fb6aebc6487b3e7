"""2-D point clouds for the first lessons: diffusion you can see on a scatter plot.

The *ink drop* is the course's opening picture. A drop of ink in a glass of
water is a tight, structured blob; left alone it spreads until the colour is
the same everywhere. The forward diffusion process does the same to data: a
drop-shaped cloud of points, noised step by step, spreads into the standard
Gaussian N(0, I). Learning to diffuse *backwards* means learning to gather the
ink back into its drop.

All functions return a float32 tensor (n, 2), scaled to roughly [-1, 1] like
the images the models see, and are deterministic given `seed`.

Taught in notebooks/01_forward_diffusion.ipynb and 02_ddpm.ipynb.
"""
from __future__ import annotations

import math

import numpy as np
import torch


def _rng(seed):
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _check_n(n) -> int:
    if not isinstance(n, (int, np.integer)) or n <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}")
    return int(n)


def ink_drop(n: int = 2000, seed=0) -> torch.Tensor:
    """A drop of ink: a round body with a pointed tail above it -> (n, 2).

    Points fill the region r <= R(theta) of a teardrop curve, centred near
    (0, 0.3) so the spreading towards the origin-centred Gaussian is visible.
    """
    n, rng = _check_n(n), _rng(seed)
    theta = rng.uniform(0, 2 * math.pi, n)
    # Teardrop in polar form: the radius shrinks to a point at the top (theta = pi/2).
    radius = 0.35 * (1 - np.sin(theta)) ** 0.8 * np.sqrt(rng.uniform(0, 1, n))
    x = radius * np.cos(theta)
    y = radius * np.sin(theta) + 0.15 + 0.25 * (1 - (1 - np.sin(theta)) / 2)
    points = np.stack([x, y - 0.2], axis=1)
    return torch.from_numpy(points.astype(np.float32))


def two_moons(n: int = 2000, noise: float = 0.05, seed=0) -> torch.Tensor:
    """Two interleaving half circles -> (n, 2)."""
    n, rng = _check_n(n), _rng(seed)
    upper = rng.random(n) < 0.5
    angle = rng.uniform(0, math.pi, n)
    x = np.where(upper, np.cos(angle), 1 - np.cos(angle))
    y = np.where(upper, np.sin(angle), 0.5 - np.sin(angle))
    points = np.stack([x - 0.5, y - 0.25], axis=1) * 0.9 + rng.normal(0, noise, (n, 2))
    return torch.from_numpy(points.astype(np.float32))


def swiss_roll(n: int = 2000, noise: float = 0.03, seed=0) -> torch.Tensor:
    """A 2-D spiral (the swiss roll seen from its end) -> (n, 2)."""
    n, rng = _check_n(n), _rng(seed)
    t = 1.5 * math.pi * (1 + 2 * rng.random(n))
    points = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / 14.0
    points += rng.normal(0, noise, (n, 2))
    return torch.from_numpy(points.astype(np.float32))


DATASETS = {"ink_drop": ink_drop, "two_moons": two_moons, "swiss_roll": swiss_roll}


def make(name: str, n: int = 2000, seed=0) -> torch.Tensor:
    """A point cloud by name: 'ink_drop', 'two_moons' or 'swiss_roll'."""
    if name not in DATASETS:
        raise ValueError(f"unknown 2-D dataset {name!r}; allowed: {', '.join(DATASETS)}")
    return DATASETS[name](n, seed=seed)
