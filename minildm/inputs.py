"""Checking what a user passes, and reading and writing image files.

Every public entry point (the pipeline, the command line) validates its inputs
here first, so a bad value gets one ValueError that says what is allowed instead
of a traceback from deep inside torch.

Taught in notebooks/06_latent_diffusion.ipynb.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch

from .text import PromptError


def check_prompts(prompts, name: str = "prompts") -> list[str]:
    """A str or a non-empty list of str -> list of str (words are checked by the tokenizer)."""
    if isinstance(prompts, str):
        return [prompts]
    if isinstance(prompts, tuple):
        prompts = list(prompts)
    if not isinstance(prompts, list):
        raise PromptError(f"{name} must be a str or a list of str, got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise PromptError(f"{name} is an empty list; give at least one prompt")
    for p in prompts:
        if not isinstance(p, str):
            raise PromptError(f"every entry of {name} must be a str, got {type(p).__name__} ({p!r})")
    return prompts


def check_int(value, name: str, low: int, high: int | None = None) -> int:
    """A whole number in [low, high]; bools and floats are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a whole number (int), got {type(value).__name__} {value!r}")
    if value < low or (high is not None and value > high):
        allowed = f"{low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be in {allowed}, got {value}")
    return int(value)


def check_float(value, name: str, low: float, high: float) -> float:
    """A finite real number in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{name} must be a finite number in [{low:g}, {high:g}], got {value}")
    return value


def check_images(images, size: int = 32) -> torch.Tensor:
    """A float tensor (N, 3, size, size) or (3, size, size) in [0, 1] -> (N, 3, size, size) float32."""
    allowed = f"a float tensor (N, 3, {size}, {size}) or (3, {size}, {size}) with values in [0, 1]"
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be {allowed}, got {type(images).__name__} "
                         f"(for an image file use minildm.pipeline.load_image(path))")
    if not images.is_floating_point():
        raise ValueError(f"images must be {allowed}, got dtype {images.dtype} "
                         f"(for uint8 pixels divide by 255)")
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[1] != 3 or tuple(images.shape[2:]) != (size, size):
        raise ValueError(f"images must be {allowed}, got shape {tuple(images.shape)}")
    if len(images) == 0:
        raise ValueError("images is empty; give at least one image")
    if not torch.isfinite(images).all():
        raise ValueError("images contain NaN or inf values")
    low, high = float(images.min()), float(images.max())
    if low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(f"images must have values in [0, 1], got [{low:.3g}, {high:.3g}] "
                         f"(images in [-1, 1]? use (x + 1) / 2)")
    return images.float().clamp(0, 1)


def check_masks(masks, n: int, size: int = 32) -> torch.Tensor:
    """Inpainting masks for n images -> (n, 1, size, size) float32 in {0, 1} (1 = repaint, 0 = keep).

    Accepted: a bool or float tensor (N, 1, size, size), (N, size, size) or (size, size) with
    values 0 and 1; N = n, or 1 for one mask shared by all the images.
    """
    allowed = (f"a bool or float tensor (N, 1, {size}, {size}) or (N, {size}, {size}) with values 0 "
               f"(keep) and 1 (repaint), one per image")
    if not isinstance(masks, torch.Tensor):
        raise ValueError(f"masks must be {allowed}, got {type(masks).__name__}")
    if masks.dtype != torch.bool and not masks.is_floating_point():
        raise ValueError(f"masks must be {allowed}, got dtype {masks.dtype} (use masks.bool() or masks.float())")
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim == 3:
        masks = masks[:, None]                                             # (N, 1, H, W)
    if masks.ndim != 4 or masks.shape[1] != 1 or tuple(masks.shape[2:]) != (size, size):
        raise ValueError(f"masks must be {allowed}, got shape {tuple(masks.shape)}")
    if len(masks) not in (1, n):
        raise ValueError(f"got {len(masks)} masks for {n} images; give one mask per image, or one for all")
    masks = masks.float()
    if not ((masks == 0) | (masks == 1)).all():
        raise ValueError("masks must hold only 0 (keep) and 1 (repaint); for a soft mask "
                         "threshold it first, e.g. masks > 0.5")
    return masks.expand(n, -1, -1, -1).contiguous()


def load_image(path, size: int = 32) -> torch.Tensor:
    """An image file -> (1, 3, size, size) float in [0, 1]; clear errors for bad files."""
    from PIL import Image, UnidentifiedImageError
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot read {path} as an image ({err}); give a PNG or JPEG file") from err
    if img.size != (size, size):
        raise ValueError(f"{path} is {img.size[0]}x{img.size[1]} pixels; the pipeline works on "
                         f"{size}x{size} RGB images (resize it first, e.g. with PIL's Image.resize)")
    pixels = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)  # (H, W, 3)
    return pixels.permute(2, 0, 1)[None]                                  # (1, 3, H, W)




def load_mask(path, size: int = 32) -> torch.Tensor:
    """A mask image file (white = repaint, black = keep) -> (1, 1, size, size) bool."""
    return load_image(path, size).mean(dim=1, keepdim=True) > 0.5       # (1, 1, H, W)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")   # what save_images writes


def check_output_file(path, suffixes=IMAGE_SUFFIXES) -> Path:
    """An output file checked before any work is done: its name ends in one of `suffixes`,
    it is not a folder, and its folder can be written (it is created if needed).
    ValueError naming the path and what is allowed otherwise."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path} is a folder; give a file name ending in {' or '.join(suffixes)}")
    if path.suffix.lower() not in suffixes:
        raise ValueError(f"cannot write {path}: the file name must end in {' or '.join(suffixes)}")
    for parent in path.parents:
        if parent.exists() and not parent.is_dir():
            raise ValueError(f"cannot write {path}: {parent} is a file, not a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = path.parent / f".minildm-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"cannot write {path}: {err.strerror or err} (in {path.parent})") from err
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"cannot write {path}: the file exists and is read-only")
    return path


def save_images(images: torch.Tensor, path, ncols: int = 8, gap: int = 2) -> Path:
    """Write images (N, 3, H, W) in [0, 1] as one PNG: the image itself when N = 1,
    else a grid with `gap` black pixels around and between the images."""
    from PIL import Image
    images = images.detach().float().cpu().clamp(0, 1)
    n, _, h, w = images.shape
    if n == 1:
        gap = 0
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    grid = torch.zeros(3, nrows * (h + gap) + gap, ncols * (w + gap) + gap)
    for i, image in enumerate(images):
        top, left = gap + (i // ncols) * (h + gap), gap + (i % ncols) * (w + gap)
        grid[:, top:top + h, left:left + w] = image
    pixels = (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)  # (H, W, 3)
    path = check_output_file(path)
    try:
        Image.fromarray(pixels).save(path)
    except (ValueError, KeyError) as err:  # PIL: unknown file extension
        raise ValueError(f"cannot write {path}: {err}; use a .png file name") from err
    return path
