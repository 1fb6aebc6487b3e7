"""What a pipeline folder's ldm/pipeline.json says, and how it is checked against the networks.

PipelineConfig records what the pipeline needs besides the three networks and the
DiffusionConfig: the latent shape, the denoiser's class (unet | dit), and fingerprints
of the VAE encoder and the CLIP the denoiser was trained with, so a folder whose parts
do not belong together fails to load with a message instead of drawing noise.

Used by minildm/pipeline.py (LatentDiffusionPipeline.from_pretrained / save_pretrained)
and by the recipes that write pipeline folders (recipes/ldm.py, recipes/flow.py).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from safetensors.torch import load_file

from .dit import DiT
from .unet import UNet
from .validate import build_config
from .weights_io import WeightsError, load_config, read_json

DENOISERS = {"unet": UNet, "dit": DiT}  # PipelineConfig.denoiser -> the class ldm/config.json describes


@dataclass
class PipelineConfig:
    """What the pipeline needs besides the three networks and the DiffusionConfig (ldm/pipeline.json)."""
    latent_channels: int = 4        # VAE latent channels
    latent_size: int = 8            # VAE latent side (32 / 4)
    image_size: int = 32            # pixel side the VAE works at
    vae_fingerprint: str = ""       # sha256 prefix of the VAE's encoder used in training ("" = unknown)
    clip_fingerprint: str = ""      # same for the CLIP weights
    denoiser: str = "unet"          # the denoiser's class: unet | dit (a diffusion transformer, lesson 08)

    # Allowed values (validate.py checks them before anything is built; check_parts checks
    # them against the networks: the VAE's image and latent shape, the denoiser's channels).
    LIMITS: ClassVar[dict] = {"latent_channels": (1, 64), "latent_size": (1, 256), "image_size": (8, 256)}

    def __post_init__(self):
        if self.denoiser not in DENOISERS:
            raise ValueError(f"denoiser must be one of {', '.join(DENOISERS)}, got {self.denoiser!r}")


LEGACY_DIFFUSION_KEYS = ("schedule", "num_timesteps", "latent_clip")  # pipeline.json before diffusion.json


def load_pipeline_config(ldm_dir: Path) -> PipelineConfig:
    """ldm/pipeline.json -> PipelineConfig; a file written before diffusion.json existed also holds
    the diffusion keys, which DiffusionConfig.load reads from it and this function skips."""
    path = ldm_dir / "pipeline.json"
    if (ldm_dir / "diffusion.json").exists():
        return load_config(PipelineConfig, path)
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise WeightsError(f"config file {path} should hold a JSON object of PipelineConfig fields")
    return build_config(PipelineConfig, {k: v for k, v in raw.items() if k not in LEGACY_DIFFUSION_KEYS}, path)


def check_parts(config: PipelineConfig, ldm_dir: Path, vae, clip, unet) -> None:
    """pipeline.json must agree with the networks it names; WeightsError naming the file and the
    allowed value otherwise (a 64 where the VAE works at 32 would give wrong images, silently)."""
    path = ldm_dir / "pipeline.json"
    expected = {"image_size": vae.config.image_size, "latent_size": vae.config.latent_size,
                "latent_channels": vae.config.latent_channels}
    for name, value in expected.items():
        if getattr(config, name) != value:
            raise WeightsError(f"{path}: {name} = {getattr(config, name)}, but the VAE it uses works with "
                               f"{name} = {value}; allowed: {value}")
    channels = unet.config.in_channels
    if channels != config.latent_channels:
        raise WeightsError(f"{ldm_dir / 'config.json'}: in_channels = {channels}, but the VAE's latents "
                           f"have {config.latent_channels} channels; allowed: {config.latent_channels}")
    context = getattr(unet.config, "context_dim", None)
    if context != clip.config.text_width:
        raise WeightsError(f"{ldm_dir / 'config.json'}: context_dim = {context}, but the CLIP text encoder "
                           f"gives {clip.config.text_width}-wide tokens; allowed: {clip.config.text_width}")


def fingerprint(folder) -> str:
    """A short sha256 of folder/model.safetensors: which weights a UNet was trained with."""
    path = Path(folder) / "model.safetensors"
    if not path.is_file():
        return ""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def latent_fingerprint(vae_folder) -> str:
    """A short sha256 of the VAE's encoder tensors only: which latent space a UNet was trained in.

    The encoder alone decides the latents; a decoder fine-tuned later (recipes/vae.py,
    stage 2, as Stable Diffusion's VAE updates did) keeps every UNet valid, so it keeps
    this fingerprint too.
    """
    path = Path(vae_folder) / "model.safetensors"
    if not path.is_file():
        return ""
    digest = hashlib.sha256()
    for name, tensor in sorted(load_file(path).items()):
        if name.startswith("encoder."):
            digest.update(name.encode())
            digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]
