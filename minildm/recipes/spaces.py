"""Latent versus pixel space at equal training minutes: the claim latent diffusion rests on.

    python -m minildm compare spaces --json docs/results_spaces.json      # 2 x (1, 2, 5, 10, 20) minutes
    python -m minildm compare spaces --space pixel --minutes 5 --json docs/results_spaces.json   # one cell
    python -m minildm compare spaces --quick                               # a smoke test (a minute)

Rombach et al. (2022) argue that diffusion in a VAE's latent space reaches the quality of pixel
diffusion for much less compute. Per step that is plain (a 8x8x4 latent has 12x fewer numbers
than a 32x32x3 image); what matters is quality at equal cost. Two text-conditioned models built
from the same parts - the same UNet code, the same frozen CLIP text states, the same captions,
prompt dropout, loss (eps with min-SNR-5 weighting), batch, learning rate, EMA and seed:

    latent: the shipped LDM's UNet (cross-attention at 8x8, 4x4, 2x2) on the shipped VAE's latents
    pixel:  the same UNet with two attention-free levels in front (32x32, 16x16), on pixels in
            [-1, 1] (pixel_space.PixelSpace): it does in every step the 4x down- and up-sampling
            that the VAE's encoder and decoder do once

each trained for M minutes (M = 1, 2, 5, 10, 20), then graded by the judge on all 324 canonical
captions (DDIM 50, guidance 3, one seed), seen and held-out (shape, colour) pairs apart.

Minutes become steps as in recipes/compare.py: a shared machine's load would otherwise decide
the result. The two UNets' training steps are first timed in turns (interleaved, `--timing-threads`
torch threads, on a machine as idle as you can get), and the time to render (pixel) or render and
encode (latent) the pool of training images is timed too; a cell of M minutes then trains for
floor((60 M - pool seconds) / seconds per step) steps, whatever the machine does meanwhile, so cells
can run side by side. The VAE itself is not counted: it is trained once (1.6 minutes, README) and
serves every model trained on it. Each cell records its steps, images seen, its real training time
and the load; sampling cost per image is measured on the trained model.

Taught in notebooks/06_latent_diffusion.ipynb.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..data import shapes
from ..objectives import diffusion_loss
from ..pixel_space import PixelSpace
from ..schedule import NoiseSchedule
from ..train import TrainConfig, train
from ..unet import UNet, UNetConfig
from ..weights_io import save_safetensors
from . import Job, flow, ldm
from .compare import eval_labels, machine, samples_path, steps_for_minutes

SPACES = ("latent", "pixel")
MINUTES = (1, 2, 5, 10, 20)
TARGET = 0.90                  # "minutes to reach": all four attributes right on seen captions


@dataclass
class SpacesConfig:
    """What every cell shares (the ldm cpu recipe with min-SNR weighting)."""
    minutes: tuple = MINUTES
    batch_size: int = 128
    lr: float = 1.5e-3
    warmup_steps: int = 100              # shortened to steps // 10 for short budgets
    ema_decay: float = 0.995
    snr_gamma: float = ldm.SNR_GAMMA
    pool: int = 16384                    # training images rendered (and for latent: encoded) once
    num_steps: int = 50                  # DDIM steps when grading
    captions: int = 324                  # canonical captions graded (324 = all; fewer: a fixed random subset)
    guidance_scale: float = 3.0
    samples: int = 8                     # images kept per cell for the notebook
    timing_threads: int = 2
    timing_rounds: int = 8
    seed: int = 0


QUICK = SpacesConfig(minutes=(0.05,), batch_size=16, pool=256, captions=24, timing_rounds=3, samples=4)


def unet_config(space: str, context_dim: int) -> UNetConfig:
    """The latent UNet of ldm's cpu preset; for pixels, two attention-free levels in front of it."""
    latent = dataclasses.replace(ldm.PRESETS["cpu"].model, context_dim=context_dim)
    if space == "latent":
        return latent
    return dataclasses.replace(latent, in_channels=3, out_channels=3,
                               channel_mults=(1, 1) + tuple(latent.channel_mults),           # 32, 16 | 8, 4, 2
                               attention_levels=(False, False) + tuple(latent.attention_levels))


def job(space: str, cfg: SpacesConfig, steps: int = 1, warmup_steps: int = 1) -> Job:
    """One cell's training run; job.vae (a TinyVAE or PixelSpace), clip, schedule as ldm.job."""
    if space not in SPACES:
        raise ValueError(f"unknown space {space!r}; allowed: {', '.join(SPACES)}")
    clip, clip_dir = ldm._frozen_part("clip", None, "cpu")
    if space == "latent":
        vae, vae_dir = ldm._frozen_part("vae", None, "cpu")
    else:
        vae, vae_dir = PixelSpace(), "pixel-space (no weights)"
    schedule = NoiseSchedule(ldm.PRESETS["cpu"].schedule)

    def loss_fn(model, batch):
        z0, context, mask = batch                     # z0: (B, 4, 8, 8) latents or (B, 3, 32, 32) pixels
        return diffusion_loss(model, schedule, z0, context=context, context_mask=mask, snr_gamma=cfg.snr_gamma)

    sample_batch = ldm.latent_batch_fn(vae, clip, pool_size=cfg.pool, pool_seed=cfg.seed + 1)
    train_cfg = TrainConfig(steps=steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=warmup_steps,
                            ema_decay=cfg.ema_decay, seed=cfg.seed, log_every=max(1, steps // 20),
                            checkpoint_every=0, progress=False, device="cpu")
    torch.manual_seed(cfg.seed)
    run = Job(UNet(unet_config(space, clip.config.text_width)), loss_fn, sample_batch, train_cfg, space)
    run.vae, run.clip, run.vae_dir, run.clip_dir, run.schedule = vae, clip, vae_dir, clip_dir, schedule
    return run


def timing(cfg: SpacesConfig) -> dict:
    """Seconds to build each space's pool, then ms per training step of both UNets measured in turns
    (one step of each, cfg.timing_rounds times; medians, the first two rounds left out)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.timing_threads)
    try:
        runs, batches, out = {s: job(s, cfg) for s in SPACES}, {}, {"machine_before": machine()}
        for space, run in runs.items():
            t0 = time.perf_counter()
            run.sample_batch(cfg.batch_size, torch.Generator().manual_seed(0), torch.device("cpu"))  # builds the pool
            out[space] = {"pool_seconds": round(time.perf_counter() - t0, 1),
                          "parameters": sum(p.numel() for p in run.model.parameters())}
            batches[space] = run.sample_batch(cfg.batch_size, torch.Generator().manual_seed(1), torch.device("cpu"))
        optimizers = {s: torch.optim.AdamW(run.model.parameters(), cfg.lr) for s, run in runs.items()}
        times = {s: [] for s in SPACES}
        for _ in range(cfg.timing_rounds):
            for space, run in runs.items():
                t0 = time.perf_counter()
                loss = run.loss_fn(run.model, batches[space])
                optimizers[space].zero_grad()
                loss.backward()
                optimizers[space].step()
                times[space].append(time.perf_counter() - t0)
        for space in SPACES:
            kept = sorted(times[space][2:] or times[space])
            out[space]["ms_per_step"] = round(1000 * kept[len(kept) // 2], 1)
        out["threads"], out["machine_after"] = cfg.timing_threads, machine()
        out["pixel_over_latent"] = round(out["pixel"]["ms_per_step"] / out["latent"]["ms_per_step"], 2)
        return out
    finally:
        torch.set_num_threads(previous)


def steps_of(cell_minutes: float, space_timing: dict, warmup_steps: int) -> tuple[int, int]:
    """(steps, warm-up) of a cell: its minutes less the pool's seconds, at the timed ms per step."""
    left = max(0.0, cell_minutes - space_timing["pool_seconds"] / 60)
    return steps_for_minutes(left, space_timing["ms_per_step"], warmup_steps)


def run_cell(space: str, minutes: float, cfg: SpacesConfig, space_timing: dict) -> tuple[dict, torch.Tensor]:
    """Train one cell for its steps, grade it; returns (its JSON row, sample images (S, 3, 32, 32) uint8)."""
    steps, warmup = steps_of(minutes, space_timing, cfg.warmup_steps)
    run = job(space, cfg, steps, warmup)
    before = machine()
    result = train(run.model, run.loss_fn, run.sample_batch, run.cfg, name=f"{space}/{minutes:g}")
    pipe = ldm.trained_pipeline(run, result.model)
    labels = shapes.all_labels() if cfg.captions >= 324 else eval_labels(cfg.captions, cfg.seed)
    graded, images = flow.generate_and_grade(pipe, labels, cfg.num_steps, 1, cfg.guidance_scale, return_images=True)
    row = {"space": space, "minutes": minutes, "steps": steps, "warmup_steps": warmup,
           "images_seen": steps * cfg.batch_size, "budget_ms_per_step": space_timing["ms_per_step"],
           "train_seconds": round(result.seconds, 1), "threads": torch.get_num_threads(),
           "machine_before": before, "machine_after": machine(),
           "final_loss": round(sum(h["loss"] for h in result.history[-3:]) / len(result.history[-3:]), 4),
           "seen": graded["seen"], "held_out": graded["held_out"],
           "seconds_per_image": graded["seconds_per_image"], "sampler": f"ddim {cfg.num_steps} steps"}
    held = f"{graded['held_out']['all_four']:.1%}" if graded["held_out"] else "-"
    print(f"  {space}/{minutes:g} min: {steps} steps, all four {graded['seen']['all_four']:.1%} seen, {held} held-out, "
          f"{graded['seconds_per_image']:.3f} s/image", flush=True)
    return row, (images[:cfg.samples] * 255).round().to(torch.uint8)


@contextmanager
def locked(json_path: Path):
    """Hold an exclusive lock on json_path (rewritten in place): cells run side by side merge into one file."""
    json_path.parent.mkdir(parents=True, exist_ok=True)
    with open(json_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def read(json_path) -> dict:
    path = Path(json_path) if json_path else None
    text = path.read_text() if path and path.exists() else ""
    return json.loads(text) if text.strip() else {}


def merge(json_path, update, samples: dict | None = None) -> dict:
    """Re-read the JSON under the lock, apply update(out) and write it back (and add `samples`, name ->
    uint8 images, to the samples file next to it, under the same lock); returns the merged dict."""
    path = Path(json_path)
    with locked(path):
        out = read(path)
        update(out)
        out["summary"] = summary(out)
        path.write_text(json.dumps(out, indent=1) + "\n")
        if samples:
            stored = {}
            if samples_path(path).exists():
                from safetensors.torch import load_file
                stored = load_file(samples_path(path))
            save_safetensors({**stored, **samples}, samples_path(path))
    return out


def summary(out: dict) -> dict:
    """Per space: the smallest budget reaching TARGET on seen captions (and a log-linear estimate between it
    and the budget before), the sampling cost there, and the best accuracy."""
    result = {"target_all_four_seen": TARGET}
    for space in SPACES:
        rows = sorted((r for r in out.get("cells", {}).values() if r["space"] == space), key=lambda r: r["minutes"])
        reached = [r for r in rows if r["seen"]["all_four"] >= TARGET]
        below = [r for r in rows if r["seen"]["all_four"] < TARGET and (not reached or r["minutes"] < reached[0]["minutes"])]
        estimate = None
        if reached and below:        # straight line between the two budgets around the target, on log minutes
            (m0, a0), (m1, a1) = [(r["minutes"], r["seen"]["all_four"]) for r in (below[-1], reached[0])]
            estimate = round(math.exp(math.log(m0) + (TARGET - a0) / (a1 - a0) * math.log(m1 / m0)), 1)
        result[space] = {"budgets": [r["minutes"] for r in rows],
                         "minutes_to_target": reached[0]["minutes"] if reached else None,
                         "minutes_to_target_interpolated": estimate,
                         "seconds_per_image_at_target": reached[0]["seconds_per_image"] if reached else None,
                         "best_seen": max((r["seen"]["all_four"] for r in rows), default=None)}
    return result


def compare_spaces(cfg: SpacesConfig = SpacesConfig(), spaces=SPACES, json_path=None,
                   timing_only: bool = False) -> dict:
    """Time both spaces (unless json_path already holds a timing: then cells re-use it), train and
    grade each (space, minutes) cell, merging each into json_path as it finishes."""
    out = read(json_path)
    if "timing" not in out:
        measured, config = timing(cfg), json.loads(json.dumps(asdict(cfg)))
        out = {"config": config, "timing": measured, "cells": {}}
        print(f"timing ({cfg.timing_threads} threads): latent {measured['latent']['ms_per_step']} ms/step, "
              f"pixel {measured['pixel']['ms_per_step']} ms/step ({measured['pixel_over_latent']}x)", flush=True)
        if json_path:
            out = merge(json_path, lambda o: o.update(config=config, timing=measured, cells=o.get("cells", {})))
    if timing_only:
        return out
    for space in spaces:
        for minutes in cfg.minutes:
            row, images = run_cell(space, minutes, cfg, out["timing"][space])
            name = f"{space}/{minutes:g}"
            out.setdefault("cells", {})[name] = row
            if json_path:
                out = merge(json_path, lambda o: o.setdefault("cells", {}).__setitem__(name, row), {name: images})
    out["summary"] = summary(out)
    return out


def table(out: dict) -> str:
    """Markdown: one row per budget, both spaces side by side."""
    cells = out.get("cells", {})
    lines = ["| minutes | latent steps | latent seen | latent held-out | pixel steps | pixel seen | pixel held-out |",
             "|---|---|---|---|---|---|---|"]
    for minutes in sorted({r["minutes"] for r in cells.values()}):
        row = [f"{minutes:g}"]
        for space in SPACES:
            cell = cells.get(f"{space}/{minutes:g}")
            held = f"{cell['held_out']['all_four']:.1%}" if cell and cell["held_out"] else "-"
            row += [f"{cell['steps']}", f"{cell['seen']['all_four']:.1%}", held] if cell else ["-", "-", "-"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(args) -> dict:
    """`python -m minildm compare spaces [--quick] [--space S ...] [--minutes M ...] [--timing-only] [--json FILE]`."""
    cfg = QUICK if args.quick else SpacesConfig()
    if args.minutes:
        cfg = dataclasses.replace(cfg, minutes=tuple(args.minutes))
    if args.timing_threads:
        cfg = dataclasses.replace(cfg, timing_threads=args.timing_threads)
    out = compare_spaces(cfg, args.space or SPACES, args.json, args.timing_only)
    print(table(out))
    for space in SPACES:
        s = out["summary"][space]
        print(f"{space}: {TARGET:.0%} all-four-correct (seen) after "
              f"{s['minutes_to_target'] if s['minutes_to_target'] is not None else 'more than the largest budget'} "
              f"minutes; best {s['best_seen'] if s['best_seen'] is not None else '-'}")
    return out
