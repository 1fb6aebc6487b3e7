"""Recipe: a latent denoiser trained with rectified flow (lesson 08), as a UNet or a DiT.

The data are exactly those of recipes/ldm.py, imported from there: latents of a
pool of Shapes images encoded once by the frozen VAE, the frozen CLIP's per-token
states of paraphrased captions, 10% of them dropped to "" for classifier-free
guidance and some partial ("a red circle") (`latent_batch_fn`, `encode_pool`, `_frozen_part`). Three fields of the
preset choose what is trained:

    denoiser            unet | dit-cross | dit-joint   the UNet of lesson 06, or a DiT whose image
                                                       tokens cross-attend to the text (PixArt-alpha)
                                                       or share one attention with it (SD3's MMDiT)
    objective           flow | eps | v                 objectives.flow_matching_loss, sampled with
                                                       Euler; or the DDPM loss with the noise (lesson 06)
                                                       or v (lesson 02) as the target, sampled with DDIM
    timestep_sampling   uniform | logit_normal         how s is drawn for the flow loss (SD3: logit-normal)

    python -m minildm train flow --preset cpu --out minildm/weights    # the shipped minildm/weights/flow/
    python -m minildm evaluate flow

The trained denoiser is saved as a pipeline folder's denoiser (config.json, model.safetensors,
diffusion.json with prediction "flow", pipeline.json naming the class and the VAE and CLIP
fingerprints), so `LatentDiffusionPipeline.from_pretrained("flow")` loads it and warns when the
shipped VAE or CLIP have been retrained since. recipes/compare.py trains every
{denoiser} x {objective} cell at one budget through `job`.

Taught in notebooks/08_sd3.ipynb.
"""
from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..data import shapes
from ..data.judge import grade_conditional
from ..dit import DiT, DiTConfig
from ..objectives import DiffusionConfig, TIMESTEP_SAMPLING, diffusion_loss, flow_matching_loss
from ..pipeline import LatentDiffusionPipeline
from ..pipeline_config import PipelineConfig, fingerprint, latent_fingerprint
from ..schedule import NoiseSchedule
from ..text import VOCAB_SIZE
from ..train import TrainConfig, pick_device, train
from ..unet import UNet, UNetConfig
from . import Job, get_preset, train_config, write_training_json
from .ldm import (LATENT_CLIP_MARGIN, PARTIAL_PROMPTS, PROMPT_DROPOUT, _frozen_part, color_change_test, encode_pool,
                  latent_batch_fn)

NAME = "flow"                                  # minildm/weights/flow/: the shipped model's folder
DENOISERS = ("unet", "dit-cross", "dit-joint")
OBJECTIVES = ("flow", "eps", "v")              # flow: velocity + Euler; eps (lesson 06) or v (lesson 02): DDIM
EVAL_STEPS = (50, 8)                           # evaluate() grades every caption at these Euler step counts


def _unet(base: int, **kw) -> UNetConfig:
    return UNetConfig(in_channels=4, out_channels=4, base_channels=base, **kw)


@dataclass
class FlowPreset:
    """A latent denoiser's recipe: which network, which objective, and how to train it."""
    denoiser: str = "dit-cross"               # unet | dit-cross | dit-joint
    objective: str = "flow"                   # flow (rectified flow, Euler) | eps or v (DDPM, DDIM)
    timestep_sampling: str = "logit_normal"   # flow only: uniform | logit_normal (SD3)
    unet: UNetConfig = field(default_factory=lambda: _unet(32, channel_mults=(1, 2, 2), num_res_blocks=1,
                                                           attention_levels=(True, True, True), num_heads=4))
    dit: DiTConfig = field(default_factory=lambda: DiTConfig(width=128, depth=4, num_heads=4))
    train: TrainConfig = field(default_factory=TrainConfig)
    schedule: str = "cosine"                  # eps only: the noise schedule (as recipes/ldm.py)
    prompt_dropout: float = PROMPT_DROPOUT    # captions replaced by "" (classifier-free guidance)
    partial_prompts: float = PARTIAL_PROMPTS  # captions naming only some attributes ("a red circle")
    latent_pool: int = 0                      # images encoded once up front (0 = encode every batch)

    def __post_init__(self):
        for name, allowed in (("denoiser", DENOISERS), ("objective", OBJECTIVES),
                              ("timestep_sampling", TIMESTEP_SAMPLING)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")

    def diffusion(self, clip_x0: float = 0.0) -> DiffusionConfig:
        """Saved with the weights: a flow has no schedule and no clipping; eps and v as recipes/ldm.py."""
        if self.objective == "flow":
            return DiffusionConfig(prediction="flow")
        return DiffusionConfig(schedule=self.schedule, prediction=self.objective, clip_x0=clip_x0)


PRESETS = {
    # seconds: tests and fast notebooks (learns nothing useful)
    "tiny": FlowPreset(
        unet=_unet(16, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(True, True), num_heads=2),
        dit=DiTConfig(width=32, depth=1, num_heads=2),
        train=TrainConfig(steps=20, batch_size=16, lr=1e-3, warmup_steps=5, log_every=5, ema_decay=0.0,
                          progress=False)),
    # a laptop CPU: the shipped minildm/weights/flow/. A DiT-cross (1.5 M parameters) on the LDM's
    # data, with the LDM's step count and batch: a DiT step costs about 0.6x a UNet step on a CPU
    # (docs/results_flow.md has the measured times).
    "cpu": FlowPreset(
        train=TrainConfig(steps=1500, batch_size=128, lr=1e-3, warmup_steps=100, ema_decay=0.995,
                          log_every=25, checkpoint_every=250),
        latent_pool=16384),
    # a GPU: an SD3-like joint DiT, wider and deeper, on the gpu VAE's 16x16 latents, bf16
    "gpu": FlowPreset(
        denoiser="dit-joint", dit=DiTConfig(width=384, depth=12, num_heads=6, context_dim=64,
                                                 pooled_context=True),
        train=TrainConfig(steps=20000, batch_size=256, lr=3e-4, warmup_steps=1000, ema_decay=0.9995,
                          precision="bf16", log_every=100, checkpoint_every=2000)),
}


def build_denoiser(p: FlowPreset, context_dim: int, latent_channels: int = 4, latent_size: int = 8) -> nn.Module:
    """The preset's UNet or DiT, sized for the VAE's latents and CLIP's text width."""
    if p.denoiser == "unet":
        return UNet(dataclasses.replace(p.unet, in_channels=latent_channels, out_channels=latent_channels,
                                        context_dim=context_dim))
    return DiT(dataclasses.replace(p.dit, in_channels=latent_channels, input_size=latent_size,
                                   context_dim=context_dim, attention=p.denoiser.removeprefix("dit-")))


def partial_prompts(p: FlowPreset, clip) -> float:
    """The preset's fraction of partial captions, or 0 when the frozen CLIP's vocabulary predates
    the words they use ("a red shape"): such weights cannot encode them."""
    if p.partial_prompts and clip.config.vocab_size < VOCAB_SIZE:
        print(f"partial prompts off: the frozen CLIP knows {clip.config.vocab_size} of {VOCAB_SIZE} tokens")
        return 0.0
    return p.partial_prompts


def job(preset="cpu", run_dir="runs", frozen_dir=None, name: str = NAME, sample_batch=None,
        **overrides) -> Job:
    """One training run of a latent denoiser on the frozen VAE and CLIP found in frozen_dir (else shipped).

    overrides: TrainConfig fields, and the preset's denoiser / objective / timestep_sampling.
    sample_batch: reuse another job's data stream (recipes/compare.py: one pool for every cell).
    job.preset, job.vae, job.clip, job.vae_dir and job.clip_dir are attached for fit().
    """
    p = get_preset(PRESETS, preset)
    choices = {k: overrides.pop(k) for k in ("denoiser", "objective", "timestep_sampling") if k in overrides}
    p = dataclasses.replace(p, **choices)                    # FlowPreset checks the choices
    cfg = train_config(p.train, run_dir, name, overrides)
    device = pick_device(cfg.device)
    vae, vae_dir = _frozen_part("vae", frozen_dir, device)
    clip, clip_dir = _frozen_part("clip", frozen_dir, device)
    schedule = NoiseSchedule(p.schedule).to(device)

    def loss_fn(model, batch):
        z0, context, mask = batch                            # (B, 4, 8, 8), (B, L, D), (B, L)
        if p.objective == "flow":
            return flow_matching_loss(model, z0, context, mask, timestep_sampling=p.timestep_sampling)
        return diffusion_loss(model, schedule, z0, context=context, context_mask=mask, prediction=p.objective)

    if sample_batch is None:
        sample_batch = latent_batch_fn(vae, clip, p.prompt_dropout, vae.config.image_size, p.latent_pool,
                                       pool_seed=cfg.seed + 1, partial_prompts=partial_prompts(p, clip))
    torch.manual_seed(cfg.seed)                              # the same seed, the same initial weights
    model = build_denoiser(p, clip.config.text_width, vae.config.latent_channels, vae.config.latent_size)
    run = Job(model, loss_fn, sample_batch, cfg, name)
    run.preset, run.vae, run.clip, run.vae_dir, run.clip_dir = p, vae, clip, vae_dir, clip_dir
    return run


def make_pipeline(run: Job, model: nn.Module, clip_x0: float | None = None) -> LatentDiffusionPipeline:
    """The trained denoiser of `run` in a pipeline with the frozen VAE and CLIP it was trained on.

    An eps or v model clips its z0 guesses like recipes/ldm.py (LATENT_CLIP_MARGIN x the largest |z0| of
    512 training latents, computed unless clip_x0 is given); a flow model does not clip.
    """
    p, vae = run.preset, run.vae
    if p.objective != "flow" and clip_x0 is None:
        probe = encode_pool(vae, 512, seed=run.cfg.seed + 2, image_size=vae.config.image_size)[0]
        clip_x0 = round(float(probe.abs().max()) * LATENT_CLIP_MARGIN, 2)
    config = PipelineConfig(latent_channels=vae.config.latent_channels, latent_size=vae.config.latent_size,
                            image_size=vae.config.image_size, vae_fingerprint=latent_fingerprint(run.vae_dir),
                            clip_fingerprint=fingerprint(run.clip_dir),
                            denoiser="unet" if p.denoiser == "unet" else "dit")
    return LatentDiffusionPipeline(vae, run.clip, model.eval(), config, diffusion=p.diffusion(clip_x0 or 0.0),
                                   sources={"vae": run.vae_dir, "clip": run.clip_dir})


def fit(preset: str = "cpu", out_dir="weights", run_dir="runs", name: str = NAME,
        **overrides) -> LatentDiffusionPipeline:
    """Train the preset's denoiser and write out_dir/<name>/ (config, weights as float16, diffusion.json,
    pipeline.json, training.json). The VAE and CLIP come from out_dir when `train all` has just
    written them there, else the shipped ones. Returns the pipeline."""
    run = job(preset, run_dir, frozen_dir=out_dir, name=name, **overrides)
    t0, cpu0 = time.perf_counter(), time.process_time()
    result = train(run.model, run.loss_fn, run.sample_batch, run.cfg, name=name)
    seconds = time.perf_counter() - t0                       # the pool's encoding included
    cpu_seconds = time.process_time() - cpu0                 # what a shared machine's load does not inflate
    pipe = make_pipeline(run, result.model)
    pipe.save_pretrained(out_dir, name=name)
    p = run.preset
    write_training_json(Path(out_dir) / name, preset, run.cfg, result, seconds=seconds,
                        latent_pool=p.latent_pool, denoiser=p.denoiser, objective=p.objective,
                        timestep_sampling=p.timestep_sampling, cpu_seconds=round(cpu_seconds, 1),
                        load_average=[round(x, 2) for x in os.getloadavg()],
                        parameters=sum(t.numel() for t in result.model.parameters()))
    print(f"wrote {Path(out_dir) / name} ({result.steps_run} steps in {seconds / 60:.1f} min)")
    return pipe


# ----------------------------------------------------------------------------
# Evaluation: the judge grades generated captions (as recipes/ldm.py's evaluate)

def generate_and_grade(pipe: LatentDiffusionPipeline, labels: torch.Tensor, num_steps: int, seeds: int = 1,
                       guidance_scale: float = 3.0, batch_size: int = 108, sampler: str | None = None,
                       return_images: bool = False) -> dict:
    """One image per caption of `labels` (N, 4) and seed, graded by the judge, seen and held-out
    (shape, color) pairs apart. Seeds as recipes/ldm.py's evaluate (1000 * seed + batch start)."""
    captions = [shapes.caption(l) for l in labels]
    images, t0 = [], time.perf_counter()
    for seed in range(seeds):
        for i in range(0, len(captions), batch_size):
            images.append(pipe(captions[i:i + batch_size], num_steps=num_steps, guidance_scale=guidance_scale,
                               seed=1000 * seed + i, sampler=sampler).cpu())
    seconds = time.perf_counter() - t0
    images, all_labels = torch.cat(images), labels.repeat(seeds, 1)
    held = shapes.is_held_out(all_labels)
    out = {"steps": num_steps, "images": len(images),
           "all": grade_conditional(images, all_labels),
           "seen": grade_conditional(images[~held], all_labels[~held]),
           "held_out": grade_conditional(images[held], all_labels[held]) if held.any() else None,
           "seconds_per_image": round(seconds / len(images), 4)}
    return (out, images) if return_images else out


def evaluate(weights=None, quick: bool = False, seeds: int = 3, steps=EVAL_STEPS, guidance_scale: float = 3.0,
             batch_size: int = 108, device="auto", sampler: str | None = None) -> dict:
    """Every canonical caption (3 seeds each) at each Euler step count in `steps`, graded by the judge,
    seen and held-out pairs apart, and the img2img colour change at strength 0.6 with steps[0] steps.
    weights: a pipeline folder or shipped name (default "flow"). quick: 36 captions, 1 seed, 20 and 8 steps."""
    device = pick_device(device)
    pipe = LatentDiffusionPipeline.from_pretrained(weights or NAME, device=device)
    labels = shapes.all_labels()                                                 # (324, 4)
    if quick:
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
        labels, seeds, steps = labels[order[:36]], 1, (20, 8)
    by_steps = {n: generate_and_grade(pipe, labels, n, seeds, guidance_scale, batch_size, sampler)
                for n in steps}
    edit = color_change_test(pipe, n=12 if quick else 108, num_steps=steps[0], guidance_scale=guidance_scale)
    first = by_steps[steps[0]]
    return {
        "weights": str(pipe.sources["ldm"]), "sampler": f"{sampler or pipe.samplers[0]} {steps[0]} steps",
        "guidance_scale": guidance_scale, "images": first["images"], "device": str(device),
        "seen": first["seen"], "held_out": first["held_out"], "seconds_per_image": first["seconds_per_image"],
        "by_steps": {str(n): {k: r[k] for k in ("seen", "held_out", "seconds_per_image")}
                     for n, r in by_steps.items()},
        "img2img_color_change": edit,
    }


def headline(result: dict) -> str:
    """One line of an evaluate() result: what a student wants to know first."""
    held = result["held_out"]["all_four"] if result.get("held_out") else float("nan")
    return (f"all four attributes right with {result['sampler']}: {result['seen']['all_four']:.1%} seen, "
            f"{held:.1%} held-out pairs")
