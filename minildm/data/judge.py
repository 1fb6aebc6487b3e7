"""The Shapes judge: read the four attributes back off an image, by rules.

A trained classifier would share the blind spots of the models it grades, so the
course's judge is a handful of transparent measurements instead:

    mask      pixels whose brightest channel is above 0.5
    color     the mean RGB over the mask, each channel rounded to 0 or 1
    position  the 3x3 cell of the centre of the mask's bounding box
    size      the bounding box's longer side: small if under 3/8 of the image
    shape     an ideal circle, square and triangle with the object's area and
              centre of mass are drawn; the one closest to the image wins

An image is *clean* when it looks like the data: one object, an exact palette
color, a black background and nothing lit outside the object's box.

On rendered data the judge agrees with the labels on all four attributes (see
tests/test_judge.py). This is the one place that grades images: the evaluation
commands (`python -m minildm evaluate pixel_unet|ldm|vae`) turn its verdicts into
figures with

    grade_unconditional(images)        clean rate + how often each attribute value appears
                                       (the pixel UNet of lessons 02-03: no prompt to match)
    grade_conditional(images, labels)  per-attribute and all-four accuracy against the prompt's
                                       labels, and the clean rate (the latent diffusion model)

Taught in notebooks/06_latent_diffusion.ipynb.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .shapes import ATTRIBUTE_VALUES, ATTRIBUTES, COLORS, render

SIZE_THRESHOLD = 0.375        # between small (<= 0.30) and large (>= 0.45) widths
COLOR_TOLERANCE = 0.35        # max distance of the mean color from a palette color
STRAY_LIGHT_MAX = 0.02        # max fraction of lit pixels outside the (dilated) box
PALETTE = torch.tensor(list(COLORS.values()))  # (6, 3)


@torch.no_grad()
def judge(images: torch.Tensor) -> dict:
    """Grade images (N, 3, H, W) in [0, 1].

    Returns a dict:
        labels: (N, 4) long, the attributes read off each image (ATTRIBUTES order)
        clean:  (N,) bool, the image looks like a Shapes image
        fill:   (N,) float, mask area / bounding-box area
        width:  (N,) float, bounding-box side / image side
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"judge expects images (N, 3, H, W), got shape {tuple(images.shape)}")
    images = images.detach().float().cpu().clamp(0, 1)
    n, _, h, w = images.shape
    labels = torch.zeros(n, len(ATTRIBUTES), dtype=torch.long)
    clean = torch.zeros(n, dtype=torch.bool)
    fill = torch.zeros(n)
    width = torch.zeros(n)
    brightness = images.amax(dim=1)                                    # (N, H, W)
    for i in range(n):
        mask = brightness[i] > 0.5                                     # (H, W)
        if not mask.any():
            continue
        rows = torch.nonzero(mask.any(dim=1)).flatten()
        cols = torch.nonzero(mask.any(dim=0)).flatten()
        top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        box_h, box_w = float(bottom - top), float(right - left)
        fill[i] = mask.sum() / (box_h * box_w)
        width[i] = max(box_h, box_w) / max(h, w)
        cy, cx = float(top + bottom) / 2 / h, float(left + right) / 2 / w
        position = min(int(cy * 3), 2) * 3 + min(int(cx * 3), 2)
        mean_rgb = images[i][:, mask].mean(dim=1)                      # (3,)
        color_dist = (PALETTE - mean_rgb).norm(dim=1)                  # (6,)
        color = int(color_dist.argmin())
        size = int(width[i] >= SIZE_THRESHOLD)
        # Draw the three ideal shapes with the object's ink (area) and centre of
        # mass, as white, and keep the one closest to the image's brightness.
        ink = brightness[i]                                           # (H, W) soft coverage
        area = float(ink.sum()) / (h * w)                             # fraction of the image
        ys = (torch.arange(h) + 0.5) / h
        xs = (torch.arange(w) + 0.5) / w
        mx = float((ink.sum(0) * xs).sum() / ink.sum())               # centre of mass
        my = float((ink.sum(1) * ys).sum() / ink.sum())
        side_circle, side_square, side_triangle = 2 * math.sqrt(area / math.pi), \
            math.sqrt(area), math.sqrt(2 * area)
        geometry = np.array([[mx, my, side_circle], [mx, my, side_square],
                             # a triangle's centre of mass sits 1/6 of its height below its box centre
                             [mx, my - side_triangle / 6, side_triangle]])
        templates = render(torch.tensor([[k, 0, 0, 0] for k in range(3)]), h,
                           geometry=geometry)[:, 0]                 # (3, H, W)
        shape = int((templates - brightness[i]).abs().sum(dim=(1, 2)).argmin())
        labels[i] = torch.tensor([shape, color, size, position])
        # Clean: palette color, nothing lit outside the box grown by one pixel.
        lit = brightness[i] > 0.25
        box = torch.zeros_like(lit)
        box[max(top - 1, 0):bottom + 1, max(left - 1, 0):right + 1] = True
        stray = (lit & ~box).float().mean()
        clean[i] = bool(color_dist[color] < COLOR_TOLERANCE) and bool(stray < STRAY_LIGHT_MAX)
    return {"labels": labels, "clean": clean, "fill": fill, "width": width}


def attribute_accuracy(predicted: torch.Tensor, target: torch.Tensor) -> dict:
    """Per-attribute and all-four accuracy of (N, 4) predicted vs target labels."""
    correct = predicted == target                                     # (N, 4)
    result = {name: float(correct[:, i].float().mean()) for i, name in enumerate(ATTRIBUTES)}
    result["all_four"] = float(correct.all(dim=1).float().mean())
    return result


def grade_unconditional(images: torch.Tensor) -> dict:
    """Judge generated Shapes images (N, 3, H, W) in [0, 1]: clean rate and, among the clean
    ones, how often each attribute value appears (a healthy model covers them all)."""
    verdict = judge(images)
    labels, clean = verdict["labels"], verdict["clean"]
    result = {"n": len(images), "clean_rate": float(clean.float().mean())}
    for i, attribute in enumerate(ATTRIBUTES):
        values = ATTRIBUTE_VALUES[attribute]
        counts = torch.bincount(labels[clean, i], minlength=len(values)).tolist()
        result[f"{attribute}_counts"] = dict(zip(values, counts))
    return result


def grade_conditional(images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Judge images generated for prompts with label vectors (N, 4): per-attribute and
    all-four accuracy, the clean rate, and the count."""
    graded = judge(images)
    result = {k: round(v, 4) for k, v in attribute_accuracy(graded["labels"], labels).items()}
    result["clean"] = round(float(graded["clean"].float().mean()), 4)
    result["count"] = len(labels)
    return result
