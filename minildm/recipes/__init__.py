"""Recipes: how each trained thing of the course is trained and measured.

Model files (vae.py, clip.py, unet.py, pipeline.py) hold models; a recipe holds
everything else about one trained thing, always in the same shape:

    PRESETS          {"tiny", "cpu", "gpu"} -> a preset dataclass (architecture + TrainConfig + extras)
    job(preset, ...) -> Job: what the one training loop (train.train) needs
    fit(preset, out_dir, run_dir, **overrides)   trains through train.train and writes the weights
    evaluate(weights=None, quick=False)          measures a trained model; returns a JSON-able dict

`MODELS` below is the one table the CLI (`train`, `train all`, `evaluate`) and
`bench` read; `write_training_json` is the one writer of a model's training.json.

    python -m minildm train vae --preset cpu --out minildm/weights
    python -m minildm evaluate ldm
"""
from __future__ import annotations

import dataclasses
import importlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..train import TrainConfig, TrainResult

# What `train X`, `evaluate X` and `bench` use: name -> recipe module, in training order for `train all`
# (the latent UNet trains on the VAE and CLIP that `train all` has just written).
MODELS = {
    "vae": "minildm.recipes.vae",
    "clip": "minildm.recipes.clip",
    "ldm": "minildm.recipes.ldm",
    "flow": "minildm.recipes.flow",       # lesson 08: the same latents, rectified flow (a DiT or a UNet)
    "pixel_unet": "minildm.recipes.pixel_unet",
    "scenes_clip": "minildm.recipes.scenes_clip",  # lesson 10: CLIP on two-object scenes (before scenes)
    "scenes": "minildm.recipes.scenes",            # lesson 10: the latent diffusion model of scenes
}
TRAINING_FILE = "training.json"  # next to a model's weights: how it was trained


@dataclass
class Job:
    """One training run as train.train takes it: fit() runs it, bench times it."""
    model: nn.Module                 # freshly initialised (seeded) network
    loss_fn: Callable                # loss_fn(model, batch) -> loss or (loss, {"name": float})
    sample_batch: Callable           # sample_batch(batch_size, generator, device) -> batch
    cfg: TrainConfig                 # the preset's TrainConfig with the caller's overrides
    name: str                        # shown in logs; the run's subfolder in run_dir


def recipe(name: str):
    """The recipe module for a model name (ValueError naming the allowed names)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(MODELS)}")
    return importlib.import_module(MODELS[name])


def get_preset(presets: dict, preset):
    """A preset name (or a preset instance, returned as is) -> the preset."""
    if not isinstance(preset, str):
        return preset
    if preset not in presets:
        raise ValueError(f"unknown preset {preset!r}; allowed: {', '.join(presets)}")
    return presets[preset]


def train_config(preset_cfg: TrainConfig, run_dir, name: str, overrides: dict) -> TrainConfig:
    """The preset's TrainConfig with overrides; checkpoints and metrics in run_dir/name (None: nowhere)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(overrides) - fields
    if unknown:
        raise ValueError(f"unknown training settings {sorted(unknown)}; allowed: {sorted(fields)}")
    out_dir = str(Path(run_dir) / name) if run_dir is not None else None
    return dataclasses.replace(preset_cfg, out_dir=out_dir, **overrides)


def write_training_json(folder, preset: str, cfg: TrainConfig, result: TrainResult, seconds: float | None = None,
                        **extra) -> Path:
    """Write folder/training.json: preset, steps, batch, time, machine, the loss curve, and `extra`."""
    summary = {"preset": preset if isinstance(preset, str) else "custom", "steps": cfg.steps,
               "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed,
               "train_seconds": round(result.seconds if seconds is None else seconds, 1),
               "images_per_second": round(result.images_per_second, 1),
               "threads": torch.get_num_threads(),
               "device": str(next(result.raw_model.parameters()).device),
               **extra, "history": result.history}
    path = Path(folder) / TRAINING_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=1) + "\n")
    return path


def read_training_json(folder) -> dict | None:
    """folder/training.json without its loss curve, or None when there is none."""
    path = Path(folder) / TRAINING_FILE
    if not path.exists():
        return None
    return {k: v for k, v in json.loads(path.read_text()).items() if k != "history"}
