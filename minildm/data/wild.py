"""Shapes "in the wild": images our renderer never makes, to measure generalisation honestly.

A model trained on `shapes.render` has only ever seen its exact edges, its exact sizes
and objects a margin away from the border. A user's own picture is none of these.
This module draws the same objects with an independent code path — PIL's polygon and
ellipse rasteriser instead of our signed-distance function — and varies what the
training renderer keeps fixed:

    edges      hard (aliased, no smoothing) or 4x supersampled and downscaled
    size       up to 20% smaller or larger than the training sizes
    position   anywhere, including objects touching or cut by the image border
    corners    a large square pushed into a corner (the hardest case for a VAE
               trained on centred objects: it comes back shrunken and blurred)

`wild_batch(n, kind, resolution, seed)` returns images (n, 3, R, R) in [0, 1] and
labels (n, 4) (shape, color, size, position of the object's centre; for cut objects
the label describes what was drawn, not what is visible). Used by the VAE's evaluation
(recipes/vae.py) and its tests; the VAE's training data use `shapes.render` with a
`border_geometry` jitter, never this module.

Taught in notebooks/05_vae.ipynb (how well does the VAE serve your own pictures?).
"""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from .shapes import BORDER_MARGIN, COLORS, SHAPES, SIZE_RANGES, SIZES, sample_labels

KINDS = ("hard", "supersampled", "border", "corner")
SIZE_JITTER = 0.2          # widths up to this fraction outside the training ranges
SUPERSAMPLE = 4


def _draw(shape: str, color, cx: float, cy: float, width: float, side: int, scale: int) -> np.ndarray:
    """One object on black with PIL at side*scale pixels, box-filtered back to side -> (side, side, 3)."""
    big = side * scale
    image = Image.new("RGB", (big, big), (0, 0, 0))
    draw = ImageDraw.Draw(image)
    fill = tuple(int(255 * c) for c in color)
    x, y, h = cx * big, cy * big, width * big / 2
    if shape == "circle":
        draw.ellipse([x - h, y - h, x + h, y + h], fill=fill)
    elif shape == "square":
        draw.rectangle([x - h, y - h, x + h, y + h], fill=fill)
    else:  # triangle pointing up, as in shapes.py
        draw.polygon([(x, y - h), (x - h, y + h), (x + h, y + h)], fill=fill)
    if scale > 1:
        image = image.resize((side, side), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.float32) / 255.0


def wild_batch(n: int, kind: str = "border", resolution: int = 32, seed: int = 0):
    """(images (n, 3, R, R) in [0, 1], labels (n, 4)) drawn by PIL, of one of KINDS."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; allowed: {', '.join(KINDS)}")
    rng = np.random.default_rng(seed)
    labels = sample_labels(n, "all", rng).clone()
    images = np.zeros((n, resolution, resolution, 3), dtype=np.float32)
    for i, (s, c, z, _) in enumerate(labels.tolist()):
        if kind == "corner":                                   # a large square in a corner, touching it
            s, z = SHAPES.index("square"), SIZES.index("large")
            width = rng.uniform(*SIZE_RANGES["large"])
            cx, cy = [width / 2 if rng.random() < 0.5 else 1 - width / 2 for _ in range(2)]
        else:
            lo, hi = SIZE_RANGES[SIZES[z]]
            width = rng.uniform(lo * (1 - SIZE_JITTER), hi * (1 + SIZE_JITTER))
            if kind == "border":                               # centre anywhere: may touch or cross the edge
                cx, cy = rng.uniform(0.05, 0.95, size=2)
            else:
                cx, cy = rng.uniform(width / 2 + BORDER_MARGIN, 1 - width / 2 - BORDER_MARGIN, size=2)
        position = min(int(cy * 3), 2) * 3 + min(int(cx * 3), 2)
        labels[i] = torch.tensor([s, c, z, position])
        scale = SUPERSAMPLE if kind == "supersampled" or (kind in ("border", "corner") and rng.random() < 0.5) else 1
        images[i] = _draw(SHAPES[s], list(COLORS.values())[c], cx, cy, width, resolution, scale)
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), labels
