"""Grading generated images with the project's Shapes judge.

The judge itself (the pixel rules that read color, centre cell, size and shape
off an image) lives in `minildm/data/judge.py`, next to the renderer it mirrors.
This module turns its verdicts into the figures the evaluation commands print:

    grade_unconditional(images)        clean rate + how often each attribute value appears
                                       (the pixel UNet of lessons 02-03: no prompt to match)
    grade_conditional(images, labels)  per-attribute and all-four accuracy against the prompt's
                                       labels, and the clean rate (the latent diffusion model)

Used by `python -m minildm evaluate pixel_unet|ldm|vae`.
Taught in notebooks/03_ddim.ipynb and notebooks/06_latent_diffusion.ipynb.
"""
from __future__ import annotations

import torch

from .data import shapes
from .data.judge import attribute_accuracy, judge

__all__ = ["judge", "attribute_accuracy", "grade_unconditional", "grade_conditional"]


def grade_unconditional(images: torch.Tensor) -> dict:
    """Judge generated Shapes images (N, 3, H, W) in [0, 1]: clean rate and, among the clean
    ones, how often each attribute value appears (a healthy model covers them all)."""
    verdict = judge(images)
    labels, clean = verdict["labels"], verdict["clean"]
    result = {"n": len(images), "clean_rate": float(clean.float().mean())}
    for i, attribute in enumerate(shapes.ATTRIBUTES):
        values = shapes.ATTRIBUTE_VALUES[attribute]
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
