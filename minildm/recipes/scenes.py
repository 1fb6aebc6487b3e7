"""Recipe: the latent diffusion model of two-object scenes, and its binding accuracy (lesson 10).

The same pipeline as lesson 06 (pipeline.LatentDiffusionPipeline) and the same training
machinery (recipes/ldm.py's latent pool and text-state cache), with three parts:

    VAE    the shipped Shapes VAE, frozen: scenes are made of Shapes' own small objects, so it
           reconstructs them well (vae_reconstruction, in evaluate(): about 31 dB PSNR; the strict
           judge still reads about 5% of the reconstructions as a mixed colour or a wrong shape,
           a ceiling on what the diffusion model can score)
    CLIP   the scenes CLIP (recipes/scenes_clip.py), frozen; its Transformer's per-token states
           are the context the UNet cross-attends to
    UNet   lesson 06's cpu architecture, trained here on the latents of scenes with paraphrased
           captions ("a blue square to the right of a red circle"), 10% of them "" (guidance)

The shipped pipeline folder is minildm/weights/scenes/ (ldm/ and clip/; the VAE is the shipped
one), so `LatentDiffusionPipeline.from_pretrained("scenes")` loads it.

    python -m minildm train scenes_clip --preset cpu --out minildm/weights   # first: the CLIP
    python -m minildm train scenes --preset cpu --out minildm/weights
    python -m minildm evaluate scenes

Binding accuracy = both objects' shape and colour and the relation right, read by the scene
judge (data/judge.py, grade_scenes), on seen captions and on held-out ones.

Taught in notebooks/10_composition.ipynb.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch

from ..data import scenes
from ..data.judge import grade_scenes
from ..objectives import diffusion_loss
from ..pipeline import LatentDiffusionPipeline
from ..schedule import NoiseSchedule
from ..train import pick_device, train
from ..unet import UNet
from ..weights_io import PACKAGE_WEIGHTS
from . import Job, get_preset, read_training_json, train_config, write_training_json
from .ldm import PRESETS as LDM_PRESETS
from .ldm import PROMPT_DROPOUT, SNR_GAMMA, _frozen_part, latent_batch_fn, trained_pipeline
from .scenes_clip import FOLDER as CLIP_FOLDER

NAME = "scenes"                 # the pipeline folder: out_dir/scenes/{ldm, clip}

# The latent UNet recipes of lesson 06, but for the cpu preset's length (binding kept rising with
# steps: docs/results_scenes.json, binding_by_step_plain) and its min-SNR-5 loss weighting, which
# lifted binding from 85.8% to 93.7% on seen captions at the same 2,400 steps (docs/results_scenes.md).
# Measured from scratch: 33.7 min wall on one thread of a shared 2-core machine (load 3-5); 14.0 min
# on the idle machine with 2 threads (docs/results_scenes.md). The gpu preset
# trains at 64 x 64 with a 64 x 64 VAE and CLIP in the same out_dir (train vae / scenes_clip first).
PRESETS = {
    "tiny": LDM_PRESETS["tiny"],                                              # seconds: tests and notebooks
    "cpu": dataclasses.replace(LDM_PRESETS["cpu"], snr_gamma=SNR_GAMMA,
                               train=dataclasses.replace(LDM_PRESETS["cpu"].train, steps=2400)),   # shipped
    "gpu": LDM_PRESETS["gpu"],
}


def caption_for_training(labels, rng: np.random.Generator, prompt_dropout: float = PROMPT_DROPOUT) -> str:
    """"" with probability prompt_dropout (guidance), else a paraphrase: either object first
    ("A left of B" or "B right of A"), and a relation wording ("left of", "on top of", ...)."""
    if rng.random() < prompt_dropout:
        return ""
    return scenes.paraphrase(labels, rng)


def _scenes_clip(out_dir, device):
    """The frozen scenes CLIP: out_dir/scenes/clip when trained there, else the shipped one."""
    from ..clip import MiniCLIP
    folder = Path(out_dir) / CLIP_FOLDER if out_dir is not None else PACKAGE_WEIGHTS / CLIP_FOLDER
    if not (folder / "model.safetensors").exists():
        folder = PACKAGE_WEIGHTS / CLIP_FOLDER
    if not (folder / "model.safetensors").exists():
        raise FileNotFoundError(f"no scenes CLIP in {folder}: train it first with "
                                f"`python -m minildm train scenes_clip --preset cpu --out {out_dir or 'minildm/weights'}`")
    print(f"frozen clip: {folder}")
    return MiniCLIP.from_pretrained(folder, device=device).eval().requires_grad_(False), folder


def job(preset="cpu", run_dir="runs", frozen_dir=None, **overrides) -> Job:
    """The scenes UNet's training run on the VAE (frozen_dir/vae, else the shipped one) and the
    scenes CLIP (frozen_dir/scenes/clip, else the shipped one). Attaches vae, clip, their folders
    and the schedule for fit()."""
    p = get_preset(PRESETS, preset)
    cfg = train_config(p.train, run_dir, NAME, overrides)
    device = pick_device(cfg.device)
    vae, vae_dir = _frozen_part("vae", frozen_dir, device)
    clip, clip_dir = _scenes_clip(frozen_dir, device)
    schedule = NoiseSchedule(p.schedule).to(device)

    def loss_fn(model, batch):
        z0, context, mask = batch
        return diffusion_loss(model, schedule, z0, context=context, context_mask=mask, snr_gamma=p.snr_gamma)

    sample_batch = latent_batch_fn(vae, clip, p.prompt_dropout, vae.config.image_size, p.latent_pool,
                                   pool_seed=cfg.seed + 1, dataset=scenes,
                                   caption_fn=lambda labels, rng: caption_for_training(labels, rng, p.prompt_dropout))
    torch.manual_seed(cfg.seed)
    unet = UNet(dataclasses.replace(p.model, context_dim=clip.config.text_width))
    run = Job(unet, loss_fn, sample_batch, cfg, NAME)
    run.vae, run.clip, run.vae_dir, run.clip_dir, run.schedule = vae, clip, vae_dir, clip_dir, schedule
    return run


def fit(preset: str = "cpu", out_dir="weights", run_dir="runs", **overrides) -> LatentDiffusionPipeline:
    """Train the scenes UNet and write the pipeline folder out_dir/scenes/ (ldm/, and clip/ when the
    CLIP came from elsewhere). Returns the pipeline."""
    p = get_preset(PRESETS, preset)
    run = job(p, run_dir, frozen_dir=out_dir, **overrides)
    result = train(run.model, run.loss_fn, run.sample_batch, run.cfg, name=NAME)
    pipe = trained_pipeline(run, result.model, dataset=scenes)
    folder = Path(out_dir) / NAME
    pipe.save_pretrained(folder)
    write_training_json(folder / "ldm", preset, run.cfg, result, latent_pool=p.latent_pool)
    print(f"wrote {folder} ({result.steps_run} steps in {result.seconds / 60:.1f} min)")
    return pipe


# ----------------------------------------------------------------------------
# Evaluation: the scene judge grades every caption

@torch.no_grad()
def vae_reconstruction(vae, n: int = 512, seed: int = 7) -> dict:
    """Does the (Shapes) VAE keep scenes? PSNR of decode(encode(x)) and the scene judge on it."""
    device = next(vae.parameters()).device
    images, _, labels = scenes.sample_batch(n, "all", vae.config.image_size, seed=seed)
    recon = vae.decode(vae.encode(images.to(device))).clamp(0, 1).cpu()
    mse = ((recon - images) ** 2).flatten(1).mean(1)                            # (n,)
    graded = grade_scenes(recon, labels)
    return {"psnr_db": round(float((10 * torch.log10(1 / mse)).mean()), 2),
            "binding": graded["binding"], "clean": graded["clean"], "count": n}


def generate(pipe: LatentDiffusionPipeline, labels: torch.Tensor, num_steps: int = 50,
             guidance_scale: float = 3.0, seed: int = 0, batch_size: int = 120) -> torch.Tensor:
    """Images (N, 3, H, W) for the canonical captions of scene labels (N, 5); image i has seed + i."""
    captions = [scenes.caption(l) for l in labels]
    return torch.cat([pipe(captions[i:i + batch_size], num_steps=num_steps, guidance_scale=guidance_scale,
                           seed=seed + i).cpu() for i in range(0, len(captions), batch_size)])


def evaluate(weights=None, quick: bool = False, num_steps: int = 50, guidance_scale: float = 3.0,
             device="auto") -> dict:
    """Generate every caption once (744 seen, 336 held-out; quick: 60 + 30, 20 steps) and grade
    them with the scene judge: per-field and binding accuracy, and the share of each error kind.

    `python -m minildm evaluate scenes` (the shipped minildm/weights/scenes) or `--weights DIR`.
    """
    device = pick_device(device)
    pipe = LatentDiffusionPipeline.from_pretrained(NAME if weights is None else weights, device=device)
    seen, held = scenes.split_labels("test"), scenes.split_labels("heldout")     # (744, 5), (336, 5)
    if quick:
        g = torch.Generator().manual_seed(0)
        seen, held = seen[torch.randperm(len(seen), generator=g)[:60]], held[torch.randperm(len(held), generator=g)[:30]]
        num_steps = 20
    t0 = time.perf_counter()
    seen_images = generate(pipe, seen, num_steps, guidance_scale, seed=0)
    held_images = generate(pipe, held, num_steps, guidance_scale, seed=10_000)
    seconds = time.perf_counter() - t0
    out = {"weights": str(pipe.sources["ldm"].parent), "sampler": f"ddim {num_steps} steps",
           "guidance_scale": guidance_scale, "device": str(device),
           "seen": grade_scenes(seen_images, seen), "held_out": grade_scenes(held_images, held),
           "seconds_per_image": round(seconds / (len(seen) + len(held)), 4),
           "vae_reconstruction": vae_reconstruction(pipe.vae, n=128 if quick else 512)}
    info = read_training_json(pipe.sources["ldm"])
    if info is not None:
        out["training"] = info
    return out


def binding_over_training(pipe: LatentDiffusionPipeline, run_dir, n: int = 120, num_steps: int = 50,
                          guidance_scale: float = 3.0) -> list[dict]:
    """Binding accuracy of each checkpoint in run_dir (checkpoint-*/ema.safetensors, the EMA weights
    train.train saves) on the same n seen captions: how the binding mistakes fall with training.
    The pipeline's UNet is restored afterwards."""
    from ..weights_io import load_safetensors
    labels = scenes.split_labels("test")[torch.randperm(744, generator=torch.Generator().manual_seed(1))[:n]]
    saved = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    rows = []
    try:
        for folder in sorted(Path(run_dir).glob("checkpoint-*")):
            if not (folder / "ema.safetensors").exists():
                continue
            load_safetensors(pipe.unet, folder / "ema.safetensors")
            graded = grade_scenes(generate(pipe, labels, num_steps, guidance_scale, seed=0), labels)
            rows.append({"step": int(folder.name.split("-")[1]), "binding": graded["binding"],
                         "errors": graded["errors"]})
    finally:
        pipe.unet.load_state_dict(saved)
    return rows


def headline(result: dict) -> str:
    """One line of an evaluate() result: what a student wants to know first."""
    return (f"binding accuracy (both objects and the relation right): {result['seen']['binding']:.1%} seen, "
            f"{result['held_out']['binding']:.1%} held-out captions")
