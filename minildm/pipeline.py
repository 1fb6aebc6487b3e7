"""A tiny Stable Diffusion: text-conditioned latent diffusion from the course's own parts.

The five steps of Stable Diffusion, each done by a module you met earlier:

    1. image encoder    TinyVAE.encode: pixels (N, 3, 32, 32) -> latents z0 (N, 4, 8, 8)   (lesson 05)
    2. latent diffusion  q_sample noises z0 -> zt; DDPM/DDIM walk back zT -> z0       (lessons 01-03)
    3. text encoder     MiniCLIP.text_hidden_states: prompt -> context (N, 16, D)          (lesson 04)
    4. denoiser         UNet eps_pred(zt, t, context), cross-attending to the prompt's
                        tokens, with classifier-free guidance; starts from noise
                        (text2img) or from a noised image latent (img2img, SDEdit)
    5. image decoder    TinyVAE.decode: z0 -> pixels in [0, 1]                              (lesson 05)

The VAE and CLIP are frozen; only the UNet trains, on the VAE's scaled latents
(unit variance), through the one training loop (minildm.train.train), with 10%
of the captions replaced by the empty prompt "" so the same network also learns
the unconditional prediction that guidance needs:

    eps_guided = eps_uncond + guidance_scale * (eps_cond - eps_uncond)

Weights on disk. A pipeline folder holds

    ldm/config.json        the UNet's UNetConfig
    ldm/model.safetensors  the UNet's weights (the only part this lesson trains)
    ldm/pipeline.json      PipelineConfig: schedule, latent shape, latent clipping range
                           and fingerprints of the VAE and CLIP the UNet was trained with
    ldm/training.json      how it was trained and its loss curve (written by fit)
    vae/, clip/            optional: when absent, the shipped minildm/weights/vae
                           and minildm/weights/clip are used

so `python -m minildm train all --out weights` gives a complete folder
(weights/vae, weights/clip, weights/ldm), and the shipped pipeline is simply
minildm/weights/ with no VAE or CLIP weights stored twice.

Taught in notebooks/06_latent_diffusion.ipynb.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data.judge import grade_conditional
from .data import shapes
from .data.judge import judge
from .schedule import NoiseSchedule, extract
from .samplers import DDIMSampler, DDPMSampler, classifier_free_guidance, img2img_start, sample
from .text import PAD_ID, PromptError, tokenize
from .train import TrainConfig, pick_device, train
from .unet import UNet, UNetConfig
from .weights_io import PACKAGE_WEIGHTS, WeightsError, load_config, save_config, save_safetensors

NAME = "ldm"                    # subfolder of the UNet in a pipeline folder
PROMPT_DROPOUT = 0.1            # fraction of captions replaced by "" in training (for guidance)
MAX_STEPS = 1000                # num_steps allowed: 1..MAX_STEPS
MAX_GUIDANCE = 50.0             # guidance_scale allowed: 0..MAX_GUIDANCE
SAMPLERS = ("ddim", "ddpm")
LATENT_CLIP_MARGIN = 1.1        # latent_clip = this x the largest |z0| of 512 training latents


@dataclass
class PipelineConfig:
    """What the pipeline needs besides the three networks (ldm/pipeline.json)."""
    schedule: str = "cosine"        # noise schedule the UNet was trained with: linear | cosine
    num_timesteps: int = 1000       # T of the forward process
    latent_channels: int = 4        # VAE latent channels
    latent_size: int = 8            # VAE latent side (32 / 4)
    image_size: int = 32            # pixel side the VAE works at
    latent_clip: float = 0.0        # keep predicted z0 in [-latent_clip, latent_clip] (0 = off); see clip_x0
    vae_fingerprint: str = ""       # sha256 prefix of the VAE weights used in training ("" = unknown)
    clip_fingerprint: str = ""      # same for the CLIP weights


# ----------------------------------------------------------------------------
# Checking what a user passes (every bad value gets a ValueError saying what is allowed)

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


def fingerprint(folder) -> str:
    """A short sha256 of folder/model.safetensors: which weights a UNet was trained with."""
    path = Path(folder) / "model.safetensors"
    if not path.is_file():
        return ""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def clip_x0(eps_fn, schedule: NoiseSchedule, limit: float):
    """Wrap eps_fn so the z0 it implies stays in [-limit, limit] (static thresholding for latents).

    The sampler turns eps into z0_pred = (zt - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t).
    Near t = T the cosine schedule's alpha_bar_T is ~1e-9, so a tiny error in eps becomes a
    huge z0_pred. Pixel models clip x0 to [-1, 1]; latents have no fixed range, so the
    limit is the largest |z0| seen on the training data (PipelineConfig.latent_clip).
    We clip z0 and hand the sampler the eps consistent with it.
    """
    def clipped(zt, t):
        eps = eps_fn(zt, t)
        alpha_bar = extract(schedule.alpha_bar, t, zt.shape)                 # (B, 1, 1, 1)
        z0 = ((zt - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()).clamp(-limit, limit)
        return (zt - alpha_bar.sqrt() * z0) / (1 - alpha_bar).sqrt()
    return clipped


# ----------------------------------------------------------------------------
# The pipeline

class LatentDiffusionPipeline:
    """Text -> image (and image + text -> image) with a frozen VAE and CLIP and a trained UNet.

        pipe = LatentDiffusionPipeline.from_pretrained()          # the shipped weights
        x = pipe(["a large red circle in the top left"], num_steps=50, guidance_scale=3.0, seed=0)
        x = pipe.img2img(x, "a large blue circle in the top left", strength=0.6, seed=0)

    Taught in notebooks/06_latent_diffusion.ipynb.
    """

    def __init__(self, vae, clip, unet: UNet, config: PipelineConfig | None = None, sources=None):
        self.vae, self.clip, self.unet = vae.eval(), clip.eval(), unet.eval()
        self.config = config or PipelineConfig()
        self.sources = dict(sources or {})  # part -> folder it was loaded from
        self.device = next(unet.parameters()).device
        self.schedule = NoiseSchedule(self.config.schedule, self.config.num_timesteps).to(self.device)

    # -- loading and saving ------------------------------------------------

    @classmethod
    def from_pretrained(cls, path=None, device="cpu") -> "LatentDiffusionPipeline":
        """Load a pipeline folder (see the module docstring); None = the shipped weights.

        `path` may be the pipeline folder (holding ldm/) or the ldm/ folder itself.
        VAE and CLIP come from path/vae and path/clip when present, else the shipped ones.
        """
        from .clip import MiniCLIP
        from .vae import TinyVAE
        root = PACKAGE_WEIGHTS if path is None else Path(path)
        if not root.exists():
            raise WeightsError(f"pipeline folder not found: {root}")
        if (root / "pipeline.json").exists():  # given the ldm/ folder itself
            ldm_dir, root = root, root.parent
        else:
            ldm_dir = root / NAME
        if not (ldm_dir / "pipeline.json").exists():
            hint = " Train it with `python -m minildm train ldm --preset cpu`." if path is None else ""
            raise WeightsError(f"no latent diffusion weights in {root}: expected {ldm_dir}/pipeline.json, "
                               f"config.json and model.safetensors (written by save_pretrained or "
                               f"`python -m minildm train ldm`).{hint}")
        config = load_config(PipelineConfig, ldm_dir / "pipeline.json")
        unet = UNet.from_pretrained(ldm_dir, device=device)
        sources = {NAME: ldm_dir}
        parts = {}
        for part, model_class in (("vae", TinyVAE), ("clip", MiniCLIP)):
            folder = root / part if (root / part / "model.safetensors").exists() else PACKAGE_WEIGHTS / part
            parts[part] = model_class.from_pretrained(folder, device=device)
            sources[part] = folder
            expected = getattr(config, f"{part}_fingerprint")
            if expected and fingerprint(folder) != expected:
                warnings.warn(f"the UNet in {ldm_dir} was trained with other {part.upper()} weights "
                              f"than {folder}; images may look wrong. Keep a pipeline's vae/, clip/ "
                              f"and ldm/ folders together.")
        return cls(parts["vae"], parts["clip"], unet, config, sources)

    def save_pretrained(self, folder, dtype=torch.float16) -> Path:
        """Write folder/ldm/ (and folder/vae/, folder/clip/ unless they are the shipped ones).

        The UNet's weights are stored as `dtype` (float16 halves the file; loading
        casts them back to the model's float32).
        """
        folder = Path(folder)
        ldm_dir = folder / NAME
        save_config(self.unet.config, ldm_dir / "config.json")
        save_safetensors({k: v.to(dtype) if v.is_floating_point() else v
                          for k, v in self.unet.state_dict().items()}, ldm_dir / "model.safetensors")
        save_config(self.config, ldm_dir / "pipeline.json")
        for part in ("vae", "clip"):
            source = self.sources.get(part)
            shipped = source is not None and Path(source).resolve() == (PACKAGE_WEIGHTS / part).resolve()
            if not shipped and Path(folder / part).resolve() != Path(source or "").resolve():
                getattr(self, part).save_pretrained(folder / part)
        return folder

    def to(self, device) -> "LatentDiffusionPipeline":
        """Move the three networks and the schedule to `device` (in place); returns self."""
        self.device = torch.device(device)
        for model in (self.vae, self.clip, self.unet):
            model.to(self.device)
        self.schedule = self.schedule.to(self.device)
        return self

    # -- the five steps ----------------------------------------------------

    @torch.no_grad()
    def encode_prompts(self, prompts) -> tuple[torch.Tensor, torch.Tensor]:
        """Step 3: prompts -> (context (N, L, D) per-token CLIP states, mask (N, L) True = real token)."""
        tokens = tokenize(check_prompts(prompts)).to(self.device)   # (N, L)
        context = self.clip.text_hidden_states(tokens)              # (N, L, D)
        return context, tokens != PAD_ID

    @torch.no_grad()
    def encode_images(self, images) -> torch.Tensor:
        """Step 1: images (N, 3, 32, 32) in [0, 1] -> scaled latents z0 (N, 4, 8, 8)."""
        return self.vae.encode(check_images(images, self.config.image_size).to(self.device))

    @torch.no_grad()
    def decode_latents(self, z0: torch.Tensor) -> torch.Tensor:
        """Step 5: latents (N, 4, 8, 8) -> images (N, 3, 32, 32) in [0, 1]."""
        return self.vae.decode(z0.to(self.device)).clamp(0, 1)

    def make_sampler(self, sampler: str, num_steps: int):
        """"ddim" (num_steps steps, eta = 0) or "ddpm" (all T steps) over this pipeline's schedule."""
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
        # Latents are unit-variance, not images in [-1, 1]: never clip x0_pred to [-1, 1].
        if sampler == "ddim":
            return DDIMSampler(self.schedule, num_steps=num_steps, eta=0.0, clip_x0=False)
        return DDPMSampler(self.schedule, clip_x0=False)  # all T steps; num_steps is for DDIM

    def _prepare(self, prompts, n, num_steps, guidance_scale, seed, sampler, negative_prompt):
        """Validate everything, encode the prompts, make the guided eps_fn and the sampler."""
        prompts = check_prompts(prompts)
        if n is not None and len(prompts) == 1 and n > 1:
            prompts = prompts * n                                    # broadcast one prompt
        if n is not None and len(prompts) != n:
            raise ValueError(f"got {n} images and {len(prompts)} prompts; give one prompt per "
                             f"image, or a single prompt for all")
        num_steps = check_int(num_steps, "num_steps", 1, min(MAX_STEPS, self.config.num_timesteps))
        guidance_scale = check_float(guidance_scale, "guidance_scale", 0.0, MAX_GUIDANCE)
        seed = check_int(seed, "seed", 0, 2 ** 63 - 1)
        negative = check_prompts(negative_prompt if negative_prompt is not None else "",
                                 "negative_prompt")
        if len(negative) == 1:
            negative = negative * len(prompts)
        if len(negative) != len(prompts):
            raise ValueError(f"give one negative prompt, or one per prompt ({len(prompts)}); "
                             f"got {len(negative)}")
        context, mask = self.encode_prompts(prompts)                 # (N, L, D), (N, L)
        uncond, uncond_mask = self.encode_prompts(negative)
        eps_fn = classifier_free_guidance(self.unet, context, uncond, guidance_scale,
                                          context_mask=mask, uncond_mask=uncond_mask)
        if self.config.latent_clip > 0:
            eps_fn = clip_x0(eps_fn, self.schedule, self.config.latent_clip)
        generator = torch.Generator().manual_seed(seed)              # CPU: same noise on every device
        return prompts, eps_fn, self.make_sampler(sampler, num_steps), generator

    def _noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        c, s = self.config.latent_channels, self.config.latent_size
        return torch.randn(n, c, s, s, generator=generator).to(self.device)  # (N, 4, 8, 8)

    def _finish(self, z0, trajectory, return_trajectory):
        images = self.decode_latents(z0)
        if not return_trajectory:
            return images
        frames = torch.stack([self.decode_latents(z) for z in trajectory])  # (T, N, 3, H, W)
        return images, frames

    @torch.no_grad()
    def __call__(self, prompts, num_steps: int = 50, guidance_scale: float = 3.0, seed: int = 0,
                 sampler: str = "ddim", negative_prompt=None, return_trajectory: bool = False,
                 progress: bool = False):
        """Text to image: one image per prompt -> float (N, 3, 32, 32) in [0, 1].

        Steps 3 -> 4 -> 5: encode the prompts, denoise pure noise zT with guidance,
        decode. With return_trajectory=True also returns the decoded intermediate
        latents, (T, N, 3, 32, 32). sampler="ddpm" runs all T steps (num_steps is for DDIM).
        """
        prompts, eps_fn, sampler, generator = self._prepare(
            prompts, None, num_steps, guidance_scale, seed, sampler, negative_prompt)
        zT = self._noise(len(prompts), generator)
        out = sample(eps_fn, sampler, zT, generator=generator, progress=progress,
                     return_trajectory=return_trajectory)
        z0, trajectory = out if return_trajectory else (out, None)
        return self._finish(z0, trajectory, return_trajectory)

    @torch.no_grad()
    def img2img(self, images, prompts, strength: float = 0.6, num_steps: int = 50,
                guidance_scale: float = 3.0, seed: int = 0, sampler: str = "ddim",
                negative_prompt=None, return_trajectory: bool = False, progress: bool = False):
        """Image + text to image (SDEdit): encode, noise to the strength's timestep, denoise.

        strength 0 keeps the image (up to the VAE's reconstruction), 1 starts from
        pure noise and ignores it. One prompt per image, or one for all.
        """
        strength = check_float(strength, "strength", 0.0, 1.0)
        images = check_images(images, self.config.image_size)
        prompts, eps_fn, sampler, generator = self._prepare(
            prompts, len(images), num_steps, guidance_scale, seed, sampler, negative_prompt)
        z0 = self.encode_images(images)                              # step 1: (N, 4, 8, 8)
        zt, start_index = img2img_start(sampler, z0, strength, generator=generator)
        out = sample(eps_fn, sampler, zt, generator=generator, start_index=start_index,
                     progress=progress, return_trajectory=return_trajectory)
        z0, trajectory = out if return_trajectory else (out, None)
        return self._finish(z0, trajectory, return_trajectory)


# ----------------------------------------------------------------------------
# Training the latent UNet: the VAE and CLIP frozen, the data made on the fly

@dataclass
class LDMPreset:
    """A recipe for the latent UNet: architecture, training, and the frozen parts' folders."""
    model: UNetConfig
    train: TrainConfig
    schedule: str = "cosine"              # noise schedule (cosine keeps the layout longer: better img2img)
    prompt_dropout: float = PROMPT_DROPOUT  # captions replaced by "" (classifier-free guidance)
    latent_pool: int = 0                  # images encoded once up front (0 = encode every batch)


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
    # ~30 minutes on a 2-core CPU: the shipped weights. Cross-attention at 8x8, 4x4 and 2x2;
    # 1.6M parameters, stored as float16 (3 MB).
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


def _frozen_part(part: str, out_dir, device):
    """The VAE or CLIP to train against: out_dir/<part> if trained there (train all), else shipped."""
    from .clip import MiniCLIP
    from .vae import TinyVAE
    model_class = {"vae": TinyVAE, "clip": MiniCLIP}[part]
    folder = Path(out_dir) / part
    if not (folder / "model.safetensors").exists():
        folder = PACKAGE_WEIGHTS / part
    model = model_class.from_pretrained(folder, device=device).eval().requires_grad_(False)
    print(f"frozen {part}: {folder}")
    return model, folder


@torch.no_grad()
def encode_pool(vae, n: int, seed: int, image_size: int = 32, batch_size: int = 256):
    """Render n training images once and encode them: (z0 (n, 4, 8, 8) on the CPU, labels (n, 4)).

    The frozen VAE gives the same latent for the same image every time, so encoding
    a pool once instead of every batch saves about half the training time on a CPU.
    """
    device = next(vae.parameters()).device
    images, _, labels = shapes.sample_batch(n, "train", image_size, seed=seed)
    z0 = torch.cat([vae.encode(images[i:i + batch_size].to(device)).cpu()
                    for i in range(0, n, batch_size)])
    return z0, labels


def latent_batch_fn(vae, clip, prompt_dropout: float = PROMPT_DROPOUT, image_size: int = 32,
                    pool_size: int = 0, pool_seed: int = 0):
    """sample_batch for train.train -> (z0 (B, 4, 8, 8), context (B, L, D), context_mask (B, L)).

    z0 are the VAE's scaled latents: of fresh Shapes images, or (pool_size > 0)
    drawn from a pool of pool_size images encoded once, on the first call.
    context holds the frozen CLIP's per-token states of paraphrased captions, a
    prompt_dropout fraction of them replaced by "" so the UNet also learns the
    unconditional prediction guidance needs.
    """
    pool = []  # filled on the first call: (z0 (P, 4, 8, 8), labels (P, 4))

    def sample_batch(batch_size: int, generator: torch.Generator, device):
        seed = int(torch.randint(0, 2 ** 31, (1,), generator=generator))
        rng = np.random.default_rng(seed)
        if pool_size and not pool:
            pool.extend(encode_pool(vae, pool_size, pool_seed, image_size))
        if not pool_size:
            images, _, labels = shapes.sample_batch(batch_size, "train", image_size, seed=rng)
            with torch.no_grad():
                z0 = vae.encode(images.to(device))                          # (B, 4, 8, 8)
        else:
            index = torch.from_numpy(rng.integers(len(pool[0]), size=batch_size))
            z0, labels = pool[0][index].to(device), pool[1][index]
        captions = [shapes.paraphrase(l, rng) for l in labels]
        drop = rng.random(batch_size) < prompt_dropout                       # (B,)
        captions = ["" if d else c for d, c in zip(drop, captions)]
        with torch.no_grad():
            tokens = tokenize(captions).to(device)                           # (B, L)
            context = clip.text_hidden_states(tokens)                        # (B, L, D)
        return z0, context, tokens != PAD_ID
    return sample_batch


def fit(preset: str = "cpu", out_dir="weights", run_dir="runs", **overrides) -> LatentDiffusionPipeline:
    """Train the latent UNet named "ldm" and write out_dir/ldm/ (see the module docstring).

    The VAE and CLIP are read from out_dir/vae and out_dir/clip when `train all`
    has just written them, else from the shipped weights. Returns the pipeline.
    """
    from .ddpm import diffusion_loss
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")
    recipe = PRESETS[preset]
    cfg = dataclasses.replace(recipe.train, out_dir=str(Path(run_dir) / NAME), **overrides)
    device = pick_device(cfg.device)
    vae, vae_dir = _frozen_part("vae", out_dir, device)
    clip, clip_dir = _frozen_part("clip", out_dir, device)
    unet_config = dataclasses.replace(recipe.model, context_dim=clip.config.text_width)
    schedule = NoiseSchedule(recipe.schedule).to(device)

    def loss_fn(model, batch):
        z0, context, mask = batch
        return diffusion_loss(model, schedule, z0, context=context, context_mask=mask)

    sample_batch = latent_batch_fn(vae, clip, recipe.prompt_dropout, vae.config.image_size,
                                   recipe.latent_pool, pool_seed=cfg.seed + 1)
    result = train(UNet(unet_config), loss_fn, sample_batch, cfg, name=NAME)
    probe = encode_pool(vae, 512, seed=cfg.seed + 2, image_size=vae.config.image_size)[0]  # (512, 4, 8, 8)
    config = PipelineConfig(schedule=recipe.schedule, num_timesteps=schedule.num_timesteps,
                            latent_clip=round(float(probe.abs().max()) * LATENT_CLIP_MARGIN, 2),
                            latent_channels=vae.config.latent_channels, latent_size=vae.config.latent_size,
                            image_size=vae.config.image_size, vae_fingerprint=fingerprint(vae_dir),
                            clip_fingerprint=fingerprint(clip_dir))
    pipe = LatentDiffusionPipeline(vae, clip, result.model.eval(), config,
                                   sources={"vae": vae_dir, "clip": clip_dir})
    pipe.save_pretrained(out_dir)
    summary = {"preset": preset, "steps": cfg.steps, "batch_size": cfg.batch_size,
               "train_seconds": round(result.seconds, 1), "threads": torch.get_num_threads(),
               "device": str(device), "latent_pool": recipe.latent_pool, "history": result.history}
    (Path(out_dir) / NAME / "training.json").write_text(json.dumps(summary, indent=1) + "\n")
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
             guidance_scale: float = 3.0, batch_size: int = 108, device="auto") -> dict:
    """Generate every canonical caption (a few seeds each) and grade with the judge.

    Returns per-attribute accuracy, all-four accuracy and clean rate on the seen
    captions and, separately, on the held-out (shape, color) pairs; seconds per
    image; and the img2img color-change test. quick: 36 captions, 1 seed, 20 steps.
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
            images.append(pipe(captions[i:i + batch_size], num_steps=num_steps,
                               guidance_scale=guidance_scale, seed=1000 * seed + i).cpu())
    seconds = time.perf_counter() - t0
    images, all_labels = torch.cat(images), labels.repeat(seeds, 1)
    held = shapes.is_held_out(all_labels)
    edit = color_change_test(pipe, n=12 if quick else 108, num_steps=num_steps,
                             guidance_scale=guidance_scale)
    return {
        "weights": str(pipe.sources[NAME]), "sampler": f"ddim {num_steps} steps",
        "guidance_scale": guidance_scale, "images": len(images), "device": str(device),
        "seen": grade_conditional(images[~held], all_labels[~held]),
        "held_out": grade_conditional(images[held], all_labels[held]) if held.any() else None,
        "seconds_per_image": round(seconds / len(images), 4),
        "img2img_color_change": edit,
    }


# ----------------------------------------------------------------------------
# Command line: python -m minildm generate / img2img

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        Image.fromarray(pixels).save(path)
    except (ValueError, KeyError) as err:  # PIL: unknown file extension
        raise ValueError(f"cannot write {path}: {err}; use a .png file name") from err
    return path


def generate_command(args) -> Path:
    """`python -m minildm generate PROMPT -n 8 --out grid.png`."""
    pipe = LatentDiffusionPipeline.from_pretrained(args.weights, device=pick_device("auto"))
    n = check_int(args.num_images, "--num-images", 1, 1024)
    images = pipe([args.prompt] * n, num_steps=args.steps, guidance_scale=args.guidance,
                  seed=args.seed, sampler=args.sampler, progress=True)
    path = save_images(images, args.out)
    print(f"seed {args.seed}: wrote {n} image(s) for {args.prompt!r} to {path}")
    return path


def img2img_command(args) -> Path:
    """`python -m minildm img2img in.png PROMPT --strength 0.6 --out out.png`."""
    check_float(args.strength, "--strength", 0.0, 1.0)
    check_prompts(args.prompt)
    pipe = LatentDiffusionPipeline.from_pretrained(args.weights, device=pick_device("auto"))
    image = load_image(args.image, pipe.config.image_size)
    edited = pipe.img2img(image, args.prompt, strength=args.strength, num_steps=args.steps,
                          guidance_scale=args.guidance, seed=args.seed, progress=True)
    path = save_images(edited, args.out)
    print(f"seed {args.seed}: wrote {path} ({args.image} -> {args.prompt!r}, strength {args.strength})")
    return path
