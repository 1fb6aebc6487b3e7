"""Lesson 10's question for lesson 08's transformer: does joint attention bind better than cross-attention?

Issue 16. A caption of two objects ("a red circle to the left of a blue square") must be *bound*:
each colour to its shape, the relation to the pair. Lesson 08's DiT lets the text in two ways:

    dit-cross   the image tokens cross-attend to the frozen CLIP's per-token states (PixArt-alpha):
                the text is read, never rewritten
    dit-joint   image and text tokens share one attention, each with its own weights (SD3's MMDiT):
                the text states are updated by the image in every block, and by each other

Joint attention lets "red" see "circle" again inside the denoiser; is that worth anything for
binding, at the same budget? Two rectified-flow DiTs are trained here that differ ONLY in that
choice, and the scene judge (data/judge.py, grade_scenes) grades what they draw:

    data        the scenes recipe's stream (recipes/scenes.py): the shipped Shapes VAE's latents of a
                pool of two-object scenes, the frozen *scenes* CLIP's per-token states of paraphrased
                captions (scenes.caption_for_training, 10% ""); ONE sample_batch for both cells, so
                the same pool and the same batches in the same order (as recipes/compare.py)
    denoiser    flow.PRESETS["cpu"]'s DiT (width 128, depth 4, 2x2 patches), built by
                flow.build_denoiser with the scenes CLIP's text width; flow.make_pipeline puts the
                scenes CLIP next to it (run.clip), so sampling encodes captions as training did
    objective   rectified flow with logit-normal s (objectives.flow_matching_loss), sampled with Euler
    budget      the same steps, batch, learning-rate schedule, EMA and seed for both

(flow.job is not used: it reads the Shapes CLIP, whose vocabulary lacks the scenes' words.)

Measured per denoiser: parameters, GFLOPs per training step, ms per step and images/s (wall and
CPU time, with the load average and the torch threads next to them), and binding accuracy with
its error breakdown with Euler 50 and 8 steps, guidance 3, on a fixed subset of seen captions and
of held-out ones (an object from Shapes' held-out pairs), one seed each. binding_se is the
binomial standard error sqrt(p (1 - p) / n): two cells closer than about 2 of them are not told
apart by this many captions.

    python -m minildm compare attention --json docs/results_scenes_attention.json   # about 25 minutes
    python -m minildm compare attention --quick                                    # a smoke test

Taught in notebooks/10_composition.ipynb.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .. import bench
from ..data import scenes as scenes_data
from ..data.judge import grade_scenes
from ..objectives import flow_matching_loss
from ..train import TrainConfig, train
from . import Job, flow, scenes
from .compare import machine
from .ldm import _frozen_part, latent_batch_fn

DENOISERS = ("dit-cross", "dit-joint")


@dataclass
class AttentionConfig:
    """The budget both denoisers get, and what is measured."""
    steps: int = 1000                      # training steps per denoiser (each <= 10 min on one CPU thread)
    batch_size: int = 128                  # images per step (the flow and scenes cpu presets' batch)
    lr: float = 1e-3                       # AdamW peak (warm-up, then cosine), as flow.PRESETS["cpu"]
    warmup_steps: int = 100
    ema_decay: float = 0.995               # the EMA weights are sampled
    latent_pool: int = 16384               # scenes encoded once, shared by both denoisers
    seen_captions: int = 240               # a fixed random subset of the 744 seen captions
    held_captions: int = 120               # and of the 336 held-out ones; one seed each
    eval_steps: tuple = (50, 8)            # Euler steps
    guidance_scale: float = 3.0
    threads: int = 1                       # torch threads (the times are per-thread figures)
    seed: int = 0


QUICK = AttentionConfig(steps=10, batch_size=16, warmup_steps=2, latent_pool=256, seen_captions=12,
                        held_captions=6, eval_steps=(8,))


def data_stream(cfg: AttentionConfig, device=torch.device("cpu")) -> dict:
    """The frozen VAE and scenes CLIP, and the one sample_batch both denoisers train on."""
    vae, vae_dir = _frozen_part("vae", None, device)
    clip, clip_dir = scenes._scenes_clip(None, device)
    dropout = flow.PRESETS["cpu"].prompt_dropout
    sample_batch = latent_batch_fn(vae, clip, dropout, vae.config.image_size, cfg.latent_pool,
                                   pool_seed=cfg.seed + 1, dataset=scenes_data,
                                   caption_fn=lambda labels, rng: scenes.caption_for_training(labels, rng, dropout))
    return {"vae": vae, "vae_dir": vae_dir, "clip": clip, "clip_dir": clip_dir, "sample_batch": sample_batch}


def job(denoiser: str, cfg: AttentionConfig, parts: dict) -> Job:
    """One rectified-flow DiT on the scenes stream; only `denoiser` (dit-cross | dit-joint) differs.
    Attaches preset, vae, clip, vae_dir and clip_dir, as flow.job does, for flow.make_pipeline."""
    if denoiser not in DENOISERS:
        raise ValueError(f"denoiser must be one of {', '.join(DENOISERS)}, got {denoiser!r}")
    train_cfg = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, lr=cfg.lr, warmup_steps=cfg.warmup_steps,
                            ema_decay=cfg.ema_decay, seed=cfg.seed, log_every=max(1, cfg.steps // 20),
                            checkpoint_every=0, progress=False, device="cpu")
    p = dataclasses.replace(flow.PRESETS["cpu"], denoiser=denoiser, train=train_cfg, latent_pool=cfg.latent_pool)
    vae, clip = parts["vae"], parts["clip"]

    def loss_fn(model, batch):
        z0, context, mask = batch                             # (B, 4, 8, 8), (B, L, D), (B, L)
        return flow_matching_loss(model, z0, context, mask, timestep_sampling=p.timestep_sampling)

    torch.manual_seed(cfg.seed)
    model = flow.build_denoiser(p, clip.config.text_width, vae.config.latent_channels, vae.config.latent_size)
    run = Job(model, loss_fn, parts["sample_batch"], train_cfg, f"scenes/{denoiser}")
    run.preset, run.vae, run.clip, run.vae_dir, run.clip_dir = p, vae, clip, parts["vae_dir"], parts["clip_dir"]
    return run


def eval_labels(cfg: AttentionConfig) -> dict:
    """The fixed captions graded: {"seen": (cfg.seen_captions, 5), "held_out": (cfg.held_captions, 5)}."""
    g = torch.Generator().manual_seed(cfg.seed)
    seen, held = scenes_data.split_labels("test"), scenes_data.split_labels("heldout")   # (744, 5), (336, 5)
    return {"seen": seen[torch.randperm(len(seen), generator=g)[:cfg.seen_captions]],
            "held_out": held[torch.randperm(len(held), generator=g)[:cfg.held_captions]]}


def grade(pipe, labels: dict, num_steps: int, guidance_scale: float) -> dict:
    """Binding accuracy and the error breakdown, seen and held-out apart, with binding's standard error.
    Seeds as scenes.evaluate (seen from 0, held-out from 10,000)."""
    out, t0 = {}, time.perf_counter()
    for part, seed in (("seen", 0), ("held_out", 10_000)):
        graded = grade_scenes(scenes.generate(pipe, labels[part], num_steps, guidance_scale, seed=seed), labels[part])
        p, n = graded["binding"], graded["count"]
        out[part] = {**graded, "binding_se": round(math.sqrt(p * (1 - p) / n), 4)}
    out["seconds_per_image"] = round((time.perf_counter() - t0) / sum(len(v) for v in labels.values()), 4)
    return out


def run_denoiser(denoiser: str, cfg: AttentionConfig, parts: dict, labels: dict) -> dict:
    """Train one denoiser and measure it: its JSON row."""
    run = job(denoiser, cfg, parts)
    flops = bench.step_flops(run, torch.device("cpu"))
    before, cpu0 = machine(), time.process_time()
    result = train(run.model, run.loss_fn, run.sample_batch, run.cfg, name=run.name)
    cpu_seconds, history = time.process_time() - cpu0, result.history
    timed_steps = history[-1]["step"] - history[0]["step"]      # from the first log on: no warm-up
    seconds_per_step = (history[-1]["seconds"] - history[0]["seconds"]) / max(1, timed_steps)
    row = {"denoiser": denoiser, "attention": run.model.config.attention,
           "parameters": sum(t.numel() for t in run.model.parameters()),
           "context_dim": run.model.config.context_dim, "clip": str(run.clip_dir),
           "gflops_per_step": round(flops / 1e9, 3), "ms_per_step": round(1000 * seconds_per_step, 1),
           "cpu_ms_per_step": round(1000 * cpu_seconds / cfg.steps, 1),
           "images_per_second": round(cfg.batch_size / seconds_per_step, 1),
           "train_seconds": round(result.seconds, 1), "images_seen": cfg.steps * cfg.batch_size,
           "final_loss": round(sum(h["loss"] for h in history[-3:]) / len(history[-3:]), 4),
           "machine_before": before, "machine_after": machine()}
    pipe = flow.make_pipeline(run, result.model)
    assert pipe.clip is parts["clip"]                           # captions encoded as in training
    row["euler"] = {}
    for n in cfg.eval_steps:
        row["euler"][str(n)] = grade(pipe, labels, n, cfg.guidance_scale)
        print(f"  {denoiser}: Euler {n:>2}, binding {row['euler'][str(n)]['seen']['binding']:.3f} seen, "
              f"{row['euler'][str(n)]['held_out']['binding']:.3f} held-out", flush=True)
    return row


def compare_attention(cfg: AttentionConfig = AttentionConfig(), json_path=None) -> dict:
    """Train and measure both denoisers at cfg's budget; with json_path, write the JSON after each."""
    torch.set_num_threads(cfg.threads)
    parts = data_stream(cfg)
    parts["sample_batch"](1, torch.Generator().manual_seed(0), torch.device("cpu"))   # the pool, outside the timing
    labels = eval_labels(cfg)
    out = {"config": json.loads(json.dumps(asdict(cfg))), "objective": "flow", "timestep_sampling": "logit_normal",
           "sampler": "euler", "eval_captions": {k: len(v) for k, v in labels.items()}, "cells": {}}
    for denoiser in DENOISERS:
        t0 = time.perf_counter()
        print(f"== {denoiser} ({cfg.steps} steps x {cfg.batch_size}) ==", flush=True)
        out["cells"][denoiser] = run_denoiser(denoiser, cfg, parts, labels)
        out["cells"][denoiser]["cell_seconds"] = round(time.perf_counter() - t0, 1)
        if json_path:
            Path(json_path).parent.mkdir(parents=True, exist_ok=True)
            Path(json_path).write_text(json.dumps(out, indent=1) + "\n")
    return out


def markdown_table(out: dict) -> str:
    """One row per denoiser: size, speed, binding (+- its standard error) and the two commonest errors."""
    steps = out["config"]["eval_steps"]
    n = out["eval_captions"]
    head = (["denoiser", "params", "GFLOP/step", "ms/step", "img/s"]
            + [f"{part} ({n[key]}), {s} st." for s in steps for part, key in (("seen", "seen"), ("held-out", "held_out"))]
            + [f"top errors, seen, {steps[0]} st."])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in out["cells"].items():
        errors = row["euler"][str(steps[0])]["seen"]["errors"]
        top = sorted((k for k in errors if k != "correct"), key=lambda k: -errors[k])[:2]
        cells = ([name, f"{row['parameters'] / 1e6:.2f}M", f"{row['gflops_per_step']:.2f}", f"{row['ms_per_step']:.0f}",
                  f"{row['images_per_second']:.0f}"]
                 + [f"{100 * g['binding']:.1f}% ± {100 * g['binding_se']:.1f}" for s in steps
                    for g in (row["euler"][str(s)]["seen"], row["euler"][str(s)]["held_out"])]
                 + [", ".join(f"{k} {100 * errors[k]:.1f}%" for k in top)])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(args) -> dict:
    """`python -m minildm compare attention [--quick] [--steps N] [--json FILE]`."""
    cfg = QUICK if args.quick else AttentionConfig()
    if args.steps:
        cfg = dataclasses.replace(cfg, steps=args.steps)
    out = compare_attention(cfg, args.json)
    print(markdown_table(out))
    return out
