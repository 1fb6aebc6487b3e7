"""Recipe: train and measure the latent UNet of the tiny Stable Diffusion (lesson 06).

The VAE and CLIP are frozen; only the UNet trains, on the VAE's scaled latents
(unit variance) of Shapes images, with the frozen CLIP's per-token states of
paraphrased captions as context. PROMPT_DROPOUT of the captions are replaced by
"" so the same network also learns the unconditional prediction that
classifier-free guidance needs. The loss is objectives.diffusion_loss.

    python -m minildm train ldm --preset fast --out minildm/weights    # the shipped UNet (cpu: the longer recipe)
    python -m minildm evaluate ldm

Taught in notebooks/06_latent_diffusion.ipynb.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..clip import MiniCLIP
from ..data import shapes
from ..data.judge import grade_conditional, judge
from ..objectives import DiffusionConfig, diffusion_loss
from ..pipeline import NAME, LatentDiffusionPipeline
from ..pipeline_config import PipelineConfig, fingerprint, latent_fingerprint
from ..schedule import NoiseSchedule
from ..text import PAD_ID, tokenize
from ..train import TrainConfig, pick_device, train
from ..unet import UNet, UNetConfig
from ..vae import TinyVAE
from ..weights_io import PACKAGE_WEIGHTS
from . import Job, get_preset, train_config, write_training_json

PROMPT_DROPOUT = 0.1            # fraction of captions replaced by "" in training (for guidance)
# Partial prompts (lesson 09) are off in the default model and on in the "partial" preset: a model that
# learns to leave unnamed attributes open also leans more on the image in img2img (colour change at
# strength 0.6: 100% -> 67%), so lesson 06's model stays as it is (docs/results_ldm.md, "Partial prompts").
PARTIAL_PROMPTS = 0.0
SNR_GAMMA = 5.0                 # min-SNR weighting of the "partial" preset (Hang et al. 2023)
LATENT_CLIP_MARGIN = 1.1        # clip_x0 = this x the largest |z0| of 512 training latents



@dataclass
class LDMPreset:
    """A recipe for the latent UNet: architecture, training, and the frozen parts' folders."""
    model: UNetConfig
    train: TrainConfig
    schedule: str = "cosine"              # noise schedule (cosine keeps the layout longer: better img2img)
    prompt_dropout: float = PROMPT_DROPOUT  # captions replaced by "" (classifier-free guidance)
    partial_prompts: float = PARTIAL_PROMPTS  # captions that name only some attributes (partial prompts)
    latent_pool: int = 0                  # images encoded once up front (0 = encode every batch)
    snr_gamma: float | None = None        # min-SNR loss weighting (objectives.diffusion_loss); None = plain


def _unet_config(base: int, context_dim: int = 0, **kw) -> UNetConfig:
    return UNetConfig(in_channels=4, out_channels=4, base_channels=base, context_dim=context_dim or None,
                      **kw)


PRESETS = {
    # seconds: tests and fast notebooks (learns nothing useful)
    "tiny": LDMPreset(
        model=_unet_config(16, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(True, True),
                           num_heads=2),
        train=TrainConfig(steps=20, batch_size=16, lr=1e-3, warmup_steps=5, log_every=5,
                          ema_decay=0.0, progress=False)),
    # 7-10 idle minutes on a 2-core CPU: the shipped weights until 2026-12-01 (now "fast", below, with
    # this architecture). Cross-attention at 8x8, 4x4 and 2x2; 1.6M parameters, stored as float16 (3 MB).
    "cpu": LDMPreset(
        model=_unet_config(32, channel_mults=(1, 2, 2), num_res_blocks=1,
                           attention_levels=(True, True, True), num_heads=4),
        train=TrainConfig(steps=1500, batch_size=128, lr=1.5e-3, warmup_steps=100, ema_decay=0.995,
                          log_every=25, checkpoint_every=250),
        latent_pool=16384),
    # a GPU: wider, longer, bf16, fresh images every batch (16x16 latents of the gpu VAE)
    "gpu": LDMPreset(
        model=_unet_config(128, channel_mults=(1, 2, 2), num_res_blocks=2,
                           attention_levels=(True, True, True), num_heads=8),
        train=TrainConfig(steps=20000, batch_size=256, lr=5e-4, warmup_steps=500, ema_decay=0.9995,
                          precision="bf16", log_every=100, checkpoint_every=2000)),
}


# The lesson 09 model minildm/weights/partial/ (ldm/ and its own clip/): "cpu" with 30% of the captions
# naming only some attributes, min-SNR-5 loss weighting and, since 2026-12-01, the fast recipe's peak lr 3e-3
# (named attributes right 93.8% -> 97.3%, full captions 96.3 / 95.7% -> 98.3 / 98.8%; docs/results_ldm.md).
#   python -m minildm train clip --preset cpu --out minildm/weights/partial
#   python -m minildm train ldm --preset partial --out minildm/weights/partial
# It trains on lesson 06's split like every Shapes model: DESIGN.md's contract keeps the held-out pairs out of all
# training. Trained on every pair instead (2026-12-02), the same recipe let "a blue shape" be a triangle too (every
# unnamed attribute's entropy over all values >= 0.86 at guidance 2, against 0.67) but broke that contract, so it
# was not shipped (docs/results_toolbox.md, the box at the top).
PRESETS["partial"] = dataclasses.replace(PRESETS["cpu"], partial_prompts=0.3, snr_gamma=SNR_GAMMA,
                                        train=dataclasses.replace(PRESETS["cpu"].train, lr=3e-3))
# `train stack --preset fast` (the whole tiny Stable Diffusion in minutes): min-SNR-5 weighting, half-size
# batches, twice as many, at twice the peak rate: 1,300 x 64 at lr 3e-3 on a freshly trained fast VAE and
# CLIP reach 97.0% seen / 95.1% held-out (at lr 1.5e-3: 88.5% / 79.6%) in 3.5 minutes with 2 threads
# (docs/results_bench.md, "The fast stack"). The shipped UNet since 2026-12-01 (on the shipped VAE: 97.9% / 98.1%).
PRESETS["fast"] = dataclasses.replace(PRESETS["cpu"], snr_gamma=SNR_GAMMA, train=dataclasses.replace(
    PRESETS["cpu"].train, steps=1300, batch_size=64, lr=3e-3))


def _frozen_part(part: str, out_dir, device):
    """The VAE or CLIP to train against: out_dir/<part> if trained there (train all), else shipped."""
    model_class = {"vae": TinyVAE, "clip": MiniCLIP}[part]
    folder = Path(out_dir) / part if out_dir is not None else PACKAGE_WEIGHTS / part
    if not (folder / "model.safetensors").exists():
        folder = PACKAGE_WEIGHTS / part
    model = model_class.from_pretrained(folder, device=device).eval().requires_grad_(False)
    print(f"frozen {part}: {folder}")
    return model, folder


@torch.no_grad()
def encode_pool(vae, n: int, seed: int, image_size: int = 32, batch_size: int = 256, dataset=shapes):
    """Render n training images once and encode them: (z0 (n, 4, 8, 8) on the CPU, labels (n, 4)).

    The frozen VAE gives the same latent for the same image every time, so encoding
    a pool once instead of every batch saves about half the training time on a CPU.
    dataset: the module whose sample_batch renders them (data.shapes, or data.scenes: labels (n, 5)).
    """
    device = next(vae.parameters()).device
    images, _, labels = dataset.sample_batch(n, "train", image_size, seed=seed)
    z0 = torch.cat([vae.encode(images[i:i + batch_size].to(device)).cpu()
                    for i in range(0, n, batch_size)])
    return z0, labels


def captions_for_training(labels, rng: np.random.Generator, prompt_dropout: float = PROMPT_DROPOUT,
                          partial_prompts: float = 0.0) -> list[str]:
    """The captions a batch of training images (B, 4) gets: a paraphrase of the full caption;
    with probability partial_prompts a partial caption instead, keeping each attribute with
    probability 1/2 ("a red circle", "a large shape on the left": the model can learn to vary
    what a prompt leaves out); and "" with probability prompt_dropout (guidance needs the
    unconditional prediction). With partial_prompts = 0.3: 10% empty, 27% partial, 63% full.
    """
    captions = [shapes.paraphrase(l, rng) for l in labels]
    drop = rng.random(len(captions)) < prompt_dropout                       # (B,)
    if partial_prompts > 0:
        partial = rng.random(len(captions)) < partial_prompts               # (B,)
        keep = rng.random((len(captions), len(shapes.ATTRIBUTES))) < 0.5    # (B, 4)
        captions = [shapes.partial_caption(l, {a for a, k in zip(shapes.ATTRIBUTES, row) if k}, rng) if p else c
                    for l, c, p, row in zip(labels, captions, partial, keep)]
    return ["" if d else c for d, c in zip(drop, captions)]


class TextStateCache:
    """The frozen CLIP's per-token states of each caption, computed once per distinct caption.

    The text encoder never changes during the UNet's training, and the captions come from a
    finite set (324 labels x paraphrases x partial subsets), so after a few hundred steps
    every caption of a batch is a dictionary lookup instead of a Transformer forward.
    """

    def __init__(self, clip):
        self.clip, self.states = clip, {}

    @torch.no_grad()
    def __call__(self, captions: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        """captions (B,) -> (context (B, L, D), mask (B, L) True = real token), on `device`."""
        missing = sorted(set(captions) - set(self.states))
        if missing:
            tokens = tokenize(missing).to(next(self.clip.parameters()).device)   # (M, L)
            for caption, state, mask in zip(missing, self.clip.text_hidden_states(tokens), tokens != PAD_ID):
                self.states[caption] = (state, mask)
        context = torch.stack([self.states[c][0] for c in captions]).to(device)   # (B, L, D)
        mask = torch.stack([self.states[c][1] for c in captions]).to(device)      # (B, L)
        return context, mask


def latent_batch_fn(vae, clip, prompt_dropout: float = PROMPT_DROPOUT, image_size: int = 32,
                    pool_size: int = 0, pool_seed: int = 0, partial_prompts: float = 0.0,
                    dataset=shapes, caption_fn=None):
    """sample_batch for train.train -> (z0 (B, 4, 8, 8), context (B, L, D), context_mask (B, L)).

    z0 are the VAE's scaled latents: of fresh Shapes images, or (pool_size > 0)
    drawn from a pool of pool_size images encoded once, on the first call.
    context holds the frozen CLIP's per-token states of the captions of
    `captions_for_training` (paraphrased, some partial, a prompt_dropout fraction "").
    dataset and caption_fn(labels, rng) -> str replace data.shapes and captions_for_training
    (recipes/scenes.py: two-object scenes).
    """
    pool = []  # filled on the first call: (z0 (P, 4, 8, 8), labels (P, 4))
    text_states = TextStateCache(clip)

    def sample_batch(batch_size: int, generator: torch.Generator, device):
        seed = int(torch.randint(0, 2 ** 31, (1,), generator=generator))
        rng = np.random.default_rng(seed)
        if pool_size and not pool:
            pool.extend(encode_pool(vae, pool_size, pool_seed, image_size, dataset=dataset))
        if not pool_size:
            images, _, labels = dataset.sample_batch(batch_size, "train", image_size, seed=rng)
            with torch.no_grad():
                z0 = vae.encode(images.to(device))                          # (B, 4, 8, 8)
        else:
            index = torch.from_numpy(rng.integers(len(pool[0]), size=batch_size))
            z0, labels = pool[0][index].to(device), pool[1][index]
        if caption_fn is None:
            captions = captions_for_training(labels, rng, prompt_dropout, partial_prompts)
        else:
            captions = [caption_fn(l, rng) for l in labels]
        context, mask = text_states(captions, device)                       # (B, L, D), (B, L)
        return z0, context, mask
    return sample_batch


def job(preset="cpu", run_dir="runs", frozen_dir=None, **overrides) -> Job:
    """The latent UNet's training run on the frozen VAE and CLIP found in frozen_dir (else the shipped).

    job.vae, job.clip, job.vae_dir, job.clip_dir and job.schedule are attached for fit().
    """
    p = get_preset(PRESETS, preset)
    cfg = train_config(p.train, run_dir, NAME, overrides)
    device = pick_device(cfg.device)
    vae, vae_dir = _frozen_part("vae", frozen_dir, device)
    clip, clip_dir = _frozen_part("clip", frozen_dir, device)
    schedule = NoiseSchedule(p.schedule).to(device)

    def loss_fn(model, batch):
        z0, context, mask = batch
        return diffusion_loss(model, schedule, z0, context=context, context_mask=mask, snr_gamma=p.snr_gamma)

    sample_batch = latent_batch_fn(vae, clip, p.prompt_dropout, vae.config.image_size,
                                   p.latent_pool, pool_seed=cfg.seed + 1, partial_prompts=p.partial_prompts)
    torch.manual_seed(cfg.seed)                     # the same seed, the same initial weights
    unet = UNet(dataclasses.replace(p.model, context_dim=clip.config.text_width))
    run = Job(unet, loss_fn, sample_batch, cfg, NAME)
    run.vae, run.clip, run.vae_dir, run.clip_dir, run.schedule = vae, clip, vae_dir, clip_dir, schedule
    return run


def trained_pipeline(run: Job, model, dataset=shapes) -> LatentDiffusionPipeline:
    """The trained UNet in a pipeline with the frozen VAE and CLIP that `run` (a job() of this module or
    of recipes/scenes.py) trained it on: eps prediction on the run's schedule, z0 clipped at
    LATENT_CLIP_MARGIN x the largest |z0| of 512 training latents of `dataset`, and the fingerprints
    of the frozen parts (loading warns when they change)."""
    vae = run.vae
    probe = encode_pool(vae, 512, seed=run.cfg.seed + 2, image_size=vae.config.image_size, dataset=dataset)[0]
    diffusion = DiffusionConfig(schedule=run.schedule.kind, num_timesteps=run.schedule.num_timesteps,
                                prediction="eps", clip_x0=round(float(probe.abs().max()) * LATENT_CLIP_MARGIN, 2))
    config = PipelineConfig(latent_channels=vae.config.latent_channels, latent_size=vae.config.latent_size,
                            image_size=vae.config.image_size, vae_fingerprint=latent_fingerprint(run.vae_dir),
                            clip_fingerprint=fingerprint(run.clip_dir))
    return LatentDiffusionPipeline(vae, run.clip, model.eval(), config,
                                   sources={"vae": run.vae_dir, "clip": run.clip_dir}, diffusion=diffusion)


def fit(preset: str = "cpu", out_dir="weights", run_dir="runs", **overrides) -> LatentDiffusionPipeline:
    """Train the latent UNet named "ldm" and write out_dir/ldm/ (see pipeline.py's docstring).

    The VAE and CLIP are read from out_dir/vae and out_dir/clip when `train all`
    has just written them, else from the shipped weights. Returns the pipeline.
    """
    p = get_preset(PRESETS, preset)
    run = job(p, run_dir, frozen_dir=out_dir, **overrides)
    result = train(run.model, run.loss_fn, run.sample_batch, run.cfg, name=NAME)
    pipe = trained_pipeline(run, result.model)
    pipe.save_pretrained(out_dir)
    write_training_json(Path(out_dir) / NAME, preset, run.cfg, result, latent_pool=p.latent_pool)
    print(f"wrote {Path(out_dir) / NAME} ({result.steps_run} steps in {result.seconds / 60:.1f} min)")
    return pipe


# ----------------------------------------------------------------------------
# Evaluation: the judge grades every canonical caption

def color_change_test(pipe: LatentDiffusionPipeline, n: int = 108, strength: float = 0.6,
                      num_steps: int = 50, guidance_scale: float = 3.0, seed: int = 0,
                      batch_size: int = 108) -> dict:
    """img2img edit: render n seen objects, ask for the same caption with another color.

    Success = the judge reads the new color at the original position.
    """
    rng = np.random.default_rng(seed)
    labels = shapes.sample_labels(n, "train", rng)                           # (n, 4)
    images = shapes.render(labels, pipe.config.image_size, rng)
    target = labels.clone()
    for i in range(n):  # a new color whose (shape, color) pair is still a seen one
        options = [c for c in range(len(shapes.COLOR_NAMES)) if c != int(labels[i, 1])
                   and not shapes.is_held_out(torch.tensor([int(labels[i, 0]), c, 0, 0]))]
        target[i, 1] = int(rng.choice(options))
    prompts = [shapes.caption(t) for t in target]
    outputs = torch.cat([pipe.img2img(images[i:i + batch_size], prompts[i:i + batch_size],
                                      strength=strength, num_steps=num_steps,
                                      guidance_scale=guidance_scale, seed=seed + i)
                         for i in range(0, n, batch_size)])
    read = judge(outputs)["labels"]
    ok_color, ok_position = read[:, 1] == target[:, 1], read[:, 3] == target[:, 3]
    rate = lambda ok: round(float(ok.float().mean()), 4)
    return {"success": rate(ok_color & ok_position), "new_color": rate(ok_color),
            "same_position": rate(ok_position), "same_shape": rate(read[:, 0] == target[:, 0]),
            "count": n, "strength": strength}


def evaluate(weights=None, quick: bool = False, seeds: int = 3, num_steps: int = 50,
             guidance_scale: float = 3.0, batch_size: int = 108, device="auto", sampler: str | None = None) -> dict:
    """Generate every canonical caption (a few seeds each) and grade with the judge.

    Returns per-attribute accuracy, all-four accuracy and clean rate on the seen
    captions and, separately, on the held-out (shape, color) pairs; seconds per
    image; and the img2img color-change test. quick: 36 captions, 1 seed, 20 steps.
    sampler: None = the pipeline's default (DDIM from t = 979, pipe.lambda_min); e.g. "euler-discrete"
    is the same DDIM in other coordinates, from the same start.
    """
    device = pick_device(device)
    pipe = LatentDiffusionPipeline.from_pretrained(weights, device=device)
    labels = shapes.all_labels()                                                 # (324, 4)
    if quick:
        labels, seeds, num_steps = labels[torch.randperm(len(labels), generator=torch.Generator()
                                                         .manual_seed(0))[:36]], 1, 20
    captions = [shapes.caption(l) for l in labels]
    images, t0 = [], time.perf_counter()
    for seed in range(seeds):
        for i in range(0, len(captions), batch_size):
            images.append(pipe(captions[i:i + batch_size], num_steps=num_steps, sampler=sampler,
                               guidance_scale=guidance_scale, seed=1000 * seed + i).cpu())
    seconds = time.perf_counter() - t0
    images, all_labels = torch.cat(images), labels.repeat(seeds, 1)
    held = shapes.is_held_out(all_labels)
    edit = color_change_test(pipe, n=12 if quick else 108, num_steps=num_steps,
                             guidance_scale=guidance_scale)
    return {
        "weights": str(pipe.sources[NAME]), "sampler": f"{sampler or 'ddim'} {num_steps} steps",
        "guidance_scale": guidance_scale, "images": len(images), "device": str(device),
        "seen": grade_conditional(images[~held], all_labels[~held]),
        "held_out": grade_conditional(images[held], all_labels[held]) if held.any() else None,
        "seconds_per_image": round(seconds / len(images), 4),
        "img2img_color_change": edit,
    }


def headline(result: dict) -> str:
    """One line of an evaluate() result: what a student wants to know first."""
    held = result["held_out"]["all_four"] if result.get("held_out") else float("nan")
    return f"all four attributes right: {result['seen']['all_four']:.1%} seen, {held:.1%} held-out pairs"
