"""Recipe: train and measure the tiny VAE (lesson 05).

Two stages, through the one training loop:

    1. the whole VAE with vae_loss (reconstruction MSE + a small KL)
    2. decoder-only fine-tuning scored after `black_floor`: the encoder, and so the
       latents a diffusion model trains on, stays fixed (as Stable Diffusion's later
       VAE releases did), the black background decodes to exactly black, and half of
       the images are drawn beyond the training ranges (`wild_geometry`: touching the
       border, sizes +-20%, hard edges), so users' own pictures come back too

then `compute_scale_factor` gives the latents unit variance.

    python -m minildm train vae --preset cpu --out minildm/weights
    python -m minildm train vae --preset cpu --init minildm/weights/vae --out DIR   # stage 2 only
    python -m minildm evaluate vae

Taught in notebooks/05_vae.ipynb.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .. import weights_io
from ..data import shapes, wild
from ..data.judge import attribute_accuracy, judge
from ..train import TrainConfig, train
from ..vae import NAME, TinyVAE, VAEConfig, psnr_from_mse, reparameterize, vae_loss
from . import Job, get_preset, read_training_json, train_config, write_training_json


# ----------------------------------------------------------------------------
# Scale factor: unit-variance latents for the diffusion model

@torch.no_grad()
def compute_scale_factor(vae: TinyVAE, n: int = 2048, seed: int = 1234, batch_size: int = 256) -> float:
    """1 / std of the (unscaled) latent means over n training images, as Stable Diffusion does.

    Taught in notebooks/05_vae.ipynb.
    """
    images = shapes.sample_batch(n, "train", vae.config.image_size, seed=seed)[0]
    means = torch.cat([vae.encode_distribution(images[i:i + batch_size])[0].cpu()
                       for i in range(0, n, batch_size)])
    return float(1.0 / means.std())


# ----------------------------------------------------------------------------
# Presets, training and evaluation

@dataclass
class VAEPreset:
    model: VAEConfig
    train: TrainConfig
    data_split: str = "train"  # the Shapes split the VAE trains on
    scale_images: int = 2048   # training images used to measure the latent std (scale_factor)
    decoder_steps: int = 0     # stage 2: decoder-only fine-tuning steps with black_floor (0 = off)
    decoder_lr: float = 5e-4   # stage 2 peak learning rate
    wild_fraction: float = 0.0  # stage 1: images per batch drawn anywhere (touching the border), sizes
                                # +-20%, half of them with hard edges (changes the latents: see docs)
    decoder_wild_fraction: float = 0.0  # the same in stage 2: the decoder learns users' pictures while
                                        # the encoder, so the latents, stay as they are


PRESETS = {
    # seconds: tests and fast notebooks
    "tiny": VAEPreset(VAEConfig(base_channels=8),
                      TrainConfig(steps=30, batch_size=16, lr=3e-3, warmup_steps=5, log_every=10),
                      scale_images=256, decoder_steps=5),
    # minutes on a laptop CPU: the shipped weights (small batches, many steps: fastest to 30 dB)
    "cpu": VAEPreset(VAEConfig(),
                     TrainConfig(steps=1500, batch_size=16, lr=3e-3, warmup_steps=50, log_every=50),
                     decoder_steps=1500, decoder_wild_fraction=0.5),   # stage-1 wild_fraction: see docs
    # GPU: 64x64 images -> 16x16x4 latents, wider, bf16
    "gpu": VAEPreset(VAEConfig(image_size=64, base_channels=32),
                     TrainConfig(steps=6000, batch_size=64, lr=2e-3, warmup_steps=200,
                                 precision="bf16", log_every=100, checkpoint_every=1000),
                     decoder_steps=1000),
}
# `train stack --preset fast` (the whole tiny Stable Diffusion in minutes): the VAE's cpu recipe is
# already its short one - half of stage 1 (750 steps) reconstructs at 32.5 dB instead of 37.8.
PRESETS["fast"] = PRESETS["cpu"]


def wild_geometry(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) (cx, cy, width): any centre in [0, 1] (objects may touch or cross the border),
    widths from 20% under the small size to 20% over the large one."""
    lo, hi = shapes.SIZE_RANGES["small"][0] * 0.8, shapes.SIZE_RANGES["large"][1] * 1.2
    return np.stack([rng.random(n), rng.random(n), lo + (hi - lo) * rng.random(n)], axis=1)


def _data_fn(image_size: int, split: str, wild_fraction: float = 0.0):
    """sample_batch -> images (B, 3, H, W) in [0, 1]: Shapes renders, a wild_fraction of them
    placed and sized beyond the training ranges (wild_geometry), half of those with hard edges."""
    def sample_batch(batch_size: int, generator: torch.Generator, device):
        seed = int(torch.randint(0, 2 ** 31, (1,), generator=generator))
        if wild_fraction == 0:
            images, _, _ = shapes.sample_batch(batch_size, split, image_size, seed=seed)
            return images.to(device)                                # (B, 3, H, W) in [0, 1]
        rng = np.random.default_rng(seed)
        labels = shapes.sample_labels(batch_size, split, rng)
        geometry = shapes.sample_geometry(labels, rng)
        wild = rng.random(batch_size) < wild_fraction               # (B,)
        geometry[wild] = wild_geometry(int(wild.sum()), rng)
        images = shapes.render(labels, image_size, geometry=geometry)
        hard = torch.from_numpy(wild & (rng.random(batch_size) < 0.5))
        images[hard] = (images[hard] >= 0.5).float()                 # aliased edges, palette colours
        return images.to(device)
    return sample_batch


def _loss_fn(model: TinyVAE, images: torch.Tensor):
    cfg = (model._orig_mod if hasattr(model, "_orig_mod") else model).config
    reconstruction, mean, logvar = model(images)
    return vae_loss(reconstruction.float(), images, mean.float(), logvar.float(), cfg.kl_weight)


def black_floor(reconstruction: torch.Tensor, leak: float = 0.0) -> torch.Tensor:
    """Values below black count as black (times `leak`): decode() clamps them to 0 anyway.

    With plain MSE the decoder's background wobbles +-0.01 around 0; after the
    clamp the + half stays as a faint glow over the whole image. Scoring the
    reconstruction after this floor lets the decoder park the background safely
    below 0, so it decodes to exactly black.
    """
    return torch.where(reconstruction < 0, leak * reconstruction, reconstruction)


def _decoder_loss_fn(leak: float):
    def loss_fn(model: TinyVAE, images: torch.Tensor):
        with torch.no_grad():                                          # the encoder is frozen
            mean, logvar = model.encode_distribution(images)
            z = reparameterize(mean, logvar)
        reconstruction = black_floor((model.decoder(z) + 1) / 2, leak)
        return vae_loss(reconstruction.float(), images, mean, logvar, 0.0)
    return loss_fn


def finetune_decoder(vae: TinyVAE, cfg: TrainConfig, leak: float = 0.0, split: str = "train",
                     wild_fraction: float = 0.0, return_result: bool = False):
    """Stage 2: train the decoder only, scored after black_floor; the encoder (so the latents) stays fixed.

    Like Stable Diffusion's later VAE releases, which fine-tuned only the decoder:
    a diffusion model trained on the latents stays valid. wild_fraction: the share of
    images drawn beyond the training ranges (`wild_geometry`), so the decoder also
    learns objects at the border and in corners. Returns the VAE (and the TrainResult).

    Taught in notebooks/05_vae.ipynb.
    """
    vae.encoder.requires_grad_(False)
    result = train(vae, _decoder_loss_fn(leak), _data_fn(vae.config.image_size, split, wild_fraction), cfg,
                   name=NAME + "_decoder")
    tuned = result.model.cpu().eval()
    tuned.encoder.requires_grad_(True)
    return (tuned, result) if return_result else tuned


def job(preset="cpu", run_dir="runs", **overrides) -> Job:
    """Stage 1 of the VAE's training: a seeded TinyVAE, vae_loss, fresh Shapes images."""
    p = get_preset(PRESETS, preset)
    cfg = train_config(p.train, run_dir, NAME, overrides)
    torch.manual_seed(cfg.seed)                     # the same seed, the same initial weights
    model = TinyVAE(replace(p.model))
    return Job(model, _loss_fn, _data_fn(p.model.image_size, p.data_split, p.wild_fraction), cfg, NAME)


def fit(preset: str = "cpu", out_dir="weights", run_dir="runs", init=None, **overrides) -> TinyVAE:
    """Train a TinyVAE with a preset, set its scale_factor, write out_dir/vae/.

    init: a trained VAE's folder: stage 1 is skipped and stage 2 fine-tunes that VAE's
    decoder, so its encoder (and the latents every diffusion model was trained on) stay
    exactly as they are. `overrides` (steps, lr, ...) then apply to stage 2.

    Command (shipped weights): python -m minildm train vae --preset cpu --out minildm/weights

    Taught in notebooks/05_vae.ipynb.
    """
    p = get_preset(PRESETS, preset)
    if init is not None and not p.decoder_steps:
        raise ValueError(f"--init runs stage 2 only, and the {preset!r} preset has no stage 2 (decoder_steps=0)")
    run = job(p, run_dir, **({} if init is not None else overrides))
    cfg, model = run.cfg, run.model
    if init is None:
        print(f"[vae] {model.num_parameters():,} parameters, {cfg.steps} steps of batch {cfg.batch_size}, "
              f"{p.model.image_size}x{p.model.image_size} -> {p.model.latent_size}x{p.model.latent_size}"
              f"x{p.model.latent_channels}", flush=True)
        result = train(model, run.loss_fn, run.sample_batch, cfg, name=NAME)
        vae, seconds, stage1 = result.model.cpu().eval(), result.seconds, None
    else:                                    # stage 1 done before: keep that VAE's encoder
        vae, seconds = TinyVAE.from_pretrained(init), 0.0
        stage1 = {"init": str(init), "init_training": read_training_json(init)}
        print(f"[vae] stage 2 only, on {init} (its encoder and latents kept)", flush=True)
    if p.decoder_steps:                      # stage 2: sharpen the decoder, latents unchanged
        t0 = time.perf_counter()
        stage2 = replace(cfg, steps=p.decoder_steps, lr=p.decoder_lr, warmup_steps=min(20, p.decoder_steps),
                         out_dir=str(Path(run_dir) / (NAME + "_decoder")) if run_dir is not None else None)
        if init is not None:
            stage2 = train_config(stage2, run_dir, NAME + "_decoder", overrides)
        vae, stage2_result = finetune_decoder(vae, stage2, split=p.data_split,
                                              wild_fraction=p.decoder_wild_fraction, return_result=True)
        seconds += time.perf_counter() - t0
        result = result if init is None else stage2_result
    if init is None:                         # with init: the encoder, so the scale factor, is unchanged
        vae.config.scale_factor = compute_scale_factor(vae, n=p.scale_images)
    folder = vae.save_pretrained(Path(out_dir) / NAME)
    write_training_json(folder, preset, cfg if init is None else stage2, result, seconds=seconds,
                        decoder_steps=p.decoder_steps, decoder_wild_fraction=p.decoder_wild_fraction,
                        scale_factor=vae.config.scale_factor, **(stage1 or {}))
    print(f"[vae] trained in {seconds:.0f} s; scale_factor = {vae.config.scale_factor:.4f}; "
          f"wrote {folder}", flush=True)
    return vae


@torch.no_grad()
def reconstruct(vae: TinyVAE, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """encode (mean) then decode, in batches -> (N, 3, H, W) in [0, 1] on the CPU."""
    return torch.cat([vae.decode(vae.encode(images[i:i + batch_size])).cpu()
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def evaluate(weights=None, quick: bool = False, n: int | None = None, seed: int = 2024) -> dict:
    """Reconstruction quality on fresh test images (and the held-out pairs): PSNR, judge agreement.

    Command: python -m minildm evaluate vae [--weights DIR] [--quick]

    Taught in notebooks/05_vae.ipynb.
    """
    t0 = time.perf_counter()
    vae = TinyVAE.from_pretrained(weights)
    cfg = vae.config
    n = n or (128 if quick else 2000)
    result = {"weights": str(weights_io.resolve_folder(weights, NAME)), "images": n,
              "image_shape": [cfg.in_channels, cfg.image_size, cfg.image_size],
              "latent_shape": [cfg.latent_channels, cfg.latent_size, cfg.latent_size],
              "compression_ratio": cfg.compression, "parameters": vae.num_parameters(),
              "weights_mb": round((weights_io.resolve_folder(weights, NAME) / "model.safetensors")
                                  .stat().st_size / 1e6, 2)}
    for split in ("test", "heldout"):
        images, _, labels = shapes.sample_batch(n, split, cfg.image_size, seed=seed)
        recon = reconstruct(vae, images)
        mse_per_image = (recon - images).pow(2).flatten(1).mean(1)            # (N,)
        verdict = judge(recon)
        accuracy = attribute_accuracy(verdict["labels"], labels)
        result[split] = {
            "psnr_db": round(psnr_from_mse(mse_per_image.mean().item()), 2),
            "psnr_db_mean_per_image": round(sum(psnr_from_mse(m) for m in mse_per_image.tolist()) / n, 2),
            "judge_all_four": accuracy["all_four"],
            "judge_per_attribute": {k: v for k, v in accuracy.items() if k != "all_four"},
            "judge_clean": float(verdict["clean"].float().mean()),
        }
        if split == "test":
            z = torch.cat([vae.encode(images[i:i + 256]) for i in range(0, n, 256)])
            result["scaled_latent_std"] = round(z.std().item(), 4)
            result["scaled_latent_mean"] = round(z.mean().item(), 4)
    # images our renderer never makes (data/wild.py): PIL-drawn, hard or supersampled edges,
    # sizes +-20%, objects touching the border, large squares in corners
    mses = []
    for kind in wild.KINDS:
        images, _ = wild.wild_batch(n // 4, kind, cfg.image_size, seed=seed + 7)
        mse = (reconstruct(vae, images) - images).pow(2).flatten(1).mean(1)             # (n/4,)
        mses.append(mse)
        result.setdefault("wild", {})[kind] = round(psnr_from_mse(mse.mean().item()), 2)
    result["wild"]["overall"] = round(psnr_from_mse(torch.cat(mses).mean().item()), 2)
    result["scale_factor"] = cfg.scale_factor
    training = read_training_json(weights_io.resolve_folder(weights, NAME))
    if training is not None:
        result["training"] = training
    result["evaluate_seconds"] = round(time.perf_counter() - t0, 1)
    return result


def headline(result: dict) -> str:
    """One line of an evaluate() result: what a student wants to know first."""
    return (f"reconstruction PSNR {result['test']['psnr_db']:.1f} dB, judge reads all four attributes "
            f"{result['test']['judge_all_four']:.1%}")
