"""A tiny Stable Diffusion: text-conditioned latent diffusion from the course's own parts.

The five steps of Stable Diffusion, each done by a module you met earlier:

    1. image encoder    TinyVAE.encode: pixels (N, 3, 32, 32) -> latents z0 (N, 4, 8, 8)   (lesson 05)
    2. latent diffusion  q_sample noises z0 -> zt; DDPM/DDIM walk back zT -> z0       (lessons 01-03)
    3. text encoder     MiniCLIP.text_hidden_states: prompt -> context (N, 16, D)          (lesson 04)
    4. denoiser         UNet eps_pred(zt, t, context), cross-attending to the prompt's
                        tokens, with classifier-free guidance; starts from noise
                        (text2img) or from a noised image latent (img2img, SDEdit)
    5. image decoder    TinyVAE.decode: z0 -> pixels in [0, 1]                              (lesson 05)

The VAE and CLIP are frozen; only the UNet trains (minildm/recipes/ldm.py), on the
VAE's scaled latents (unit variance), through the one training loop, with 10%
of the captions replaced by the empty prompt "" so the same network also learns
the unconditional prediction that guidance needs:

    eps_guided = eps_uncond + guidance_scale * (eps_cond - eps_uncond)

Weights on disk. A pipeline folder holds

    ldm/config.json        the UNet's UNetConfig
    ldm/model.safetensors  the UNet's weights (the only part this lesson trains)
    ldm/diffusion.json     DiffusionConfig: schedule, prediction type, latent clipping range
    ldm/pipeline.json      PipelineConfig: latent shape, the denoiser's class (unet | dit) and
                           fingerprints of the VAE encoder and CLIP the UNet was trained with
    ldm/training.json      how it was trained and its loss curve (minildm/recipes/ldm.py)
    vae/, clip/            optional: when absent, the shipped minildm/weights/vae
                           and minildm/weights/clip are used

so `python -m minildm train all --out weights` gives a complete folder
(weights/vae, weights/clip, weights/ldm), and the shipped pipeline is simply
minildm/weights/ with no VAE or CLIP weights stored twice.

Taught in notebooks/06_latent_diffusion.ipynb.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import torch

from . import ecosystem
from .attention_maps import AttentionStore, attention_hook
from .editing import KnownRegion, latent_mask
from .guidance import classifier_free_guidance, perpendicular_negative_guidance
from .inputs import check_float, check_images, check_int, check_masks, check_prompts
from .objectives import DiffusionConfig, as_eps_model
from .pipeline_config import (DENOISERS, PipelineConfig, check_parts, fingerprint, latent_fingerprint,
                              load_pipeline_config)
from .samplers import DDIMSampler, DDPMSampler, FlowEulerSampler, FlowHeunSampler, img2img_start, sample
from .schedule import LAMBDA_MIN, start_timestep
from .text import PAD_ID, tokenize
from .unet import UNet
from .weights_io import (PACKAGE_WEIGHTS, WeightsError, check_device, save_config,
                         save_safetensors)

NAME = "ldm"                    # subfolder of the UNet in a pipeline folder
MAX_STEPS = 1000                # num_steps allowed: 1..MAX_STEPS
MAX_GUIDANCE = 50.0             # guidance_scale allowed: 0..MAX_GUIDANCE
DEFAULT_STEPS = 50              # num_steps=None: 50 steps (DDPM always runs all T)
SAMPLERS = ("ddim", "ddpm")    # for noise-predicting (eps / v) denoisers; the first is their default
SAMPLERS += ecosystem.SAMPLERS  # diffusers' solvers (lesson 09; `pip install minildm[diffusers]`)
FLOW_SAMPLERS = ("euler", "heun")  # for rectified-flow denoisers (lesson 08); the first is their default
def plural(n: int, word: str) -> str:
    """plural(1, "image") -> "1 image"; plural(2, "image") -> "2 images"."""
    return f"{n} {word}{'s' if n != 1 else ''}"


def image_generators(seed: int, n: int) -> list:
    """One CPU generator per image, image i seeded with seed + i: the noise of an image depends
    on its seed alone, not on its place in the batch (and is the same on every device)."""
    return [torch.Generator().manual_seed(seed + i) for i in range(n)]



# ----------------------------------------------------------------------------
# The pipeline

class LatentDiffusionPipeline:
    """Text -> image (and image + text -> image) with a frozen VAE and CLIP and a trained UNet.

        pipe = LatentDiffusionPipeline.from_pretrained()          # the shipped weights
        x = pipe(["a large red circle in the top left"], num_steps=50, guidance_scale=3.0, seed=0)
        x = pipe.img2img(x, "a large blue circle in the top left", strength=0.6, seed=0)
        flow = LatentDiffusionPipeline.from_pretrained("flow")    # rectified flow: sampler="euler"

    Taught in notebooks/06_latent_diffusion.ipynb (and 08_sd3.ipynb: a flow model, a DiT).
    """

    def __init__(self, vae, clip, unet: UNet, config: PipelineConfig | None = None, sources=None,
                 diffusion: DiffusionConfig | None = None):
        self.vae, self.clip, self.unet = vae.eval(), clip.eval(), unet.eval()
        self.config = config or PipelineConfig()
        self.diffusion = diffusion or DiffusionConfig()  # schedule, prediction, latent clipping range
        self.sources = dict(sources or {})  # part -> folder it was loaded from
        self.device = next(unet.parameters()).device
        self.schedule = self.diffusion.make_schedule().to(self.device)   # unused by a flow model
        self.lambda_min = LAMBDA_MIN  # DDIM and the solvers start where log-SNR >= this (None: at T - 1)
        self.denoiser = self._sampler_model()                    # predicts eps (or a flow's velocity)

    # -- loading and saving ------------------------------------------------

    @classmethod
    def from_pretrained(cls, path=None, device="cpu") -> "LatentDiffusionPipeline":
        """Load a pipeline folder (see the module docstring); None = the shipped weights.

        `path` may be the pipeline folder (holding ldm/) or the ldm/ folder itself, or a
        bare name that is not an existing path: "flow" is minildm/weights/flow/ (the
        shipped rectified-flow model of lesson 08), any name N is minildm/weights/N/.
        VAE and CLIP come from path/vae and path/clip when present, else the shipped ones.
        """
        from .clip import MiniCLIP
        from .vae import TinyVAE
        device = check_device(device)                                # before any work
        root = PACKAGE_WEIGHTS if path is None else Path(path)
        if path is not None and not root.exists() and isinstance(path, str) and Path(path).name == path:
            root = PACKAGE_WEIGHTS / path                            # a shipped model's name
            if not root.exists():
                raise WeightsError(f"no folder {path!r} here and no shipped model {path!r} in {PACKAGE_WEIGHTS} "
                                   f"(train it with `python -m minildm train {path} --out minildm/weights`)")
        if not root.exists():
            raise WeightsError(f"pipeline folder not found: {root}")
        if not root.is_dir():
            raise WeightsError(f"{root} is a file; give a pipeline folder (holding ldm/) or its ldm/ folder")
        if (root / "pipeline.json").exists():  # given the ldm/ folder itself
            ldm_dir, root = root, root.parent
        else:
            ldm_dir = root / NAME
        if not (ldm_dir / "pipeline.json").exists():
            hint = " Train it with `python -m minildm train ldm --preset cpu`." if path is None else ""
            raise WeightsError(f"no latent diffusion weights in {root}: expected {ldm_dir}/pipeline.json, "
                               f"config.json and model.safetensors (written by save_pretrained or "
                               f"`python -m minildm train ldm`).{hint}")
        config = load_pipeline_config(ldm_dir)
        diffusion = DiffusionConfig.load(ldm_dir, legacy_default=DiffusionConfig())
        unet = DENOISERS[config.denoiser].from_pretrained(ldm_dir, device=device)
        sources = {NAME: ldm_dir}
        parts = {}
        for part, model_class in (("vae", TinyVAE), ("clip", MiniCLIP)):
            folder = root / part if (root / part / "model.safetensors").exists() else PACKAGE_WEIGHTS / part
            parts[part] = model_class.from_pretrained(folder, device=device)
            sources[part] = folder
            expected = getattr(config, f"{part}_fingerprint")
            # the VAE's is that of its encoder (older pipelines: of the whole file); the CLIP's of its file
            found = {fingerprint(folder)} | ({latent_fingerprint(folder)} if part == "vae" else set())
            if expected and expected not in found:
                warnings.warn(f"the UNet in {ldm_dir} was trained with other {part.upper()} weights "
                              f"than {folder}; images may look wrong. Keep a pipeline's vae/, clip/ "
                              f"and ldm/ folders together.")
        check_parts(config, ldm_dir, parts["vae"], parts["clip"], unet)
        return cls(parts["vae"], parts["clip"], unet, config, sources, diffusion)

    def save_pretrained(self, folder, dtype=torch.float16, name: str = NAME) -> Path:
        """Write folder/ldm/ (and folder/vae/, folder/clip/ unless they are the shipped ones).

        The UNet's weights are stored as `dtype` (float16 halves the file; loading
        casts them back to the model's float32). `name` replaces "ldm" as the
        denoiser's subfolder (recipes/flow.py writes folder/flow/).
        """
        folder = Path(folder)
        ldm_dir = folder / name
        save_config(self.unet.config, ldm_dir / "config.json")
        save_safetensors({k: v.to(dtype) if v.is_floating_point() else v
                          for k, v in self.unet.state_dict().items()}, ldm_dir / "model.safetensors")
        save_config(self.config, ldm_dir / "pipeline.json")
        self.diffusion.save(ldm_dir)
        for part in ("vae", "clip"):
            source = self.sources.get(part)
            shipped = source is not None and Path(source).resolve() == (PACKAGE_WEIGHTS / part).resolve()
            if not shipped and Path(folder / part).resolve() != Path(source or "").resolve():
                getattr(self, part).save_pretrained(folder / part)
        return folder

    def to(self, device) -> "LatentDiffusionPipeline":
        """Move the three networks and the schedule to `device` (in place); returns self."""
        self.device = check_device(device)
        for model in (self.vae, self.clip, self.unet):
            model.to(self.device)
        self.schedule = self.schedule.to(self.device)
        self.denoiser = self._sampler_model()
        return self

    @property
    def is_flow(self) -> bool:
        """True for a rectified-flow denoiser (it predicts a velocity; Euler/Heun sample it)."""
        return self.diffusion.prediction == "flow"

    @property
    def samplers(self) -> tuple:
        """The sampler names this pipeline's denoiser allows; the first is its default."""
        return FLOW_SAMPLERS if self.is_flow else SAMPLERS

    def _sampler_model(self):
        """What the samplers call: the flow's velocity model itself, else eps (EpsFromV for "v")."""
        return self.unet if self.is_flow else as_eps_model(self.unet, self.schedule, self.diffusion.prediction)

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
        """Step 5: latents (N, 4, 8, 8) -> images (N, 3, 32, 32) in [0, 1].

        NaN or infinite latents raise ValueError: they would decode to black images
        that look like a result."""
        if not torch.isfinite(z0).all():
            raise ValueError("sampling gave NaN or infinite latents, so there is no image to return: the "
                             "weights may be broken (re-train or restore them) or the sampler diverged "
                             "(try a lower guidance_scale)")
        return self.vae.decode(z0.to(self.device)).clamp(0, 1)

    def make_sampler(self, sampler: str | None, num_steps: int):
        """"ddim" (num_steps steps, eta = 0) or "ddpm" (all T steps) over this pipeline's schedule;
        for a flow model "euler" or "heun" (num_steps ODE steps from s = 1 to 0; Heun calls the
        network twice per step). None = the model's default: "ddim", or "euler" for a flow.

        Where DDIM and the diffusers solvers start: at schedule.start_timestep(self.lambda_min),
        the last timestep whose log-SNR is at least lambda_min (t = 979 for the cosine schedule
        with the default LAMBDA_MIN = -3.5), not at T - 1. At t = 999 alpha_bar is ~2e-9: an eps
        model sees pure noise and its first z0 guess cannot be right; from 979 the shipped latent
        UNet draws all four attributes right in 99% of images instead of 96-97% (docs/results_ldm.md,
        lesson 09). Set pipe.lambda_min = None for the textbook start at T - 1. DDPM walks all T steps.

        Latents are unit-variance, not images in [-1, 1]: the sampler clips the predicted z0
        to the range saved in diffusion.json (the largest |z0| of the training latents x 1.1),
        not to [-1, 1]. Near t = T a tiny error in eps becomes a huge z0 without that limit.
        """
        sampler = self.samplers[0] if sampler is None else sampler
        if sampler not in self.samplers:
            kind = "rectified-flow" if self.is_flow else f"{self.diffusion.prediction}-prediction"
            raise ValueError(f"sampler must be one of {', '.join(self.samplers)} for this {kind} model "
                             f"(or None for {self.samplers[0]}), got {sampler!r}")
        if sampler in FLOW_SAMPLERS:
            return FlowEulerSampler(num_steps) if sampler == "euler" else FlowHeunSampler(num_steps)
        clip = self.diffusion.clip_x0 or None
        lambda_min = None if self.lambda_min is None else check_float(self.lambda_min, "pipe.lambda_min (or None)", -30.0, 30.0)
        if sampler == "ddim":
            first = start_timestep(self.schedule, lambda_min)
            if num_steps > first + 1:
                raise ValueError(f"num_steps must be at most {first + 1} for DDIM here (one step per timestep "
                                 f"0..{first}, where sampling starts), got {num_steps}")
            return DDIMSampler(self.schedule, num_steps=num_steps, eta=0.0, clip_x0=clip, first_timestep=first)
        if sampler in ecosystem.SAMPLERS:
            return ecosystem.DiffusersSampler(sampler, self.diffusion, num_steps, clip_x0=clip, lambda_min=lambda_min)
        return DDPMSampler(self.schedule, clip_x0=clip)  # all T steps; num_steps is for DDIM

    def _prepare(self, prompts, n, num_steps, guidance_scale, seed, sampler, negative_prompt,
                 negative_scale=None):
        """Validate everything, encode the prompts, make the guided eps_fn and the sampler."""
        prompts = check_prompts(prompts)
        if n is not None and len(prompts) == 1 and n > 1:
            prompts = prompts * n                                    # broadcast one prompt
        if n is not None and len(prompts) != n:
            raise ValueError(f"got {plural(n, 'image')} and {plural(len(prompts), 'prompt')}; give one "
                             f"prompt per image, or a single prompt for all")
        if sampler == "ddpm" and not self.is_flow and num_steps not in (None, self.schedule.num_timesteps):
            raise ValueError(f"sampler='ddpm' always runs all {self.schedule.num_timesteps} steps (DDPM "
                             f"Algorithm 2), so num_steps={num_steps!r} would be ignored; leave num_steps "
                             f"out, or use sampler='ddim' for fewer steps")
        num_steps = DEFAULT_STEPS if num_steps is None else num_steps
        num_steps = check_int(num_steps, "num_steps", 1, min(MAX_STEPS, self.schedule.num_timesteps))
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
        if negative_scale is None:                                   # SD: the negative replaces the empty prompt
            uncond, uncond_mask = self.encode_prompts(negative)
            eps_fn = classifier_free_guidance(self.denoiser, context, uncond, guidance_scale,
                                              context_mask=mask, uncond_mask=uncond_mask)
        else:                                                        # Perp-Neg: pushed away from, separately
            if negative_prompt is None:
                raise ValueError("negative_scale weighs a negative_prompt; give one (e.g. negative_prompt='red')")
            negative_scale = check_float(negative_scale, "negative_scale", 0.0, MAX_GUIDANCE)
            uncond, uncond_mask = self.encode_prompts([""])
            negative_context, negative_mask = self.encode_prompts(negative)
            eps_fn = perpendicular_negative_guidance(self.denoiser, context, uncond, negative_context,
                                                     guidance_scale, negative_scale, context_mask=mask,
                                                     uncond_mask=uncond_mask, negative_mask=negative_mask)
        generator = image_generators(seed, len(prompts))             # one per image: seed + i
        return prompts, eps_fn, self.make_sampler(sampler, num_steps), generator

    def _noise(self, n: int, generator: list) -> torch.Tensor:
        """zT (N, 4, 8, 8): image i's noise from its own generator, drawn on the CPU."""
        c, s = self.config.latent_channels, self.config.latent_size
        return torch.stack([torch.randn(c, s, s, generator=g) for g in generator[:n]]).to(self.device)

    def _finish(self, z0, trajectory, return_trajectory):
        images = self.decode_latents(z0)
        if not return_trajectory:
            return images
        frames = torch.stack([self.decode_latents(z) for z in trajectory])  # (T, N, 3, H, W)
        return images, frames

    @torch.no_grad()
    def __call__(self, prompts, num_steps: int | None = None, guidance_scale: float = 3.0, seed: int = 0,
                 sampler: str | None = None, negative_prompt=None, return_trajectory: bool = False,
                 progress: bool = False, return_attention: bool = False, negative_scale: float | None = None):
        """Text to image: one image per prompt -> float (N, 3, 32, 32) in [0, 1].

        Image i has its own random generator, torch.Generator().manual_seed(seed + i) on the
        CPU, so image i of a batch is the image that prompt gives alone with seed + i
        (whatever the other prompts): any image can be regenerated by itself.
        num_steps=None is DEFAULT_STEPS (50); DDPM always runs all T steps.

        Steps 3 -> 4 -> 5: encode the prompts, denoise pure noise zT with guidance,
        decode. With return_trajectory=True also returns the decoded intermediate
        latents, (T, N, 3, 32, 32). sampler="ddpm" runs all T steps (num_steps is for DDIM);
        sampler=None is the model's default, "ddim" (or "euler" for a flow model).
        negative_prompt: what not to draw. By default its prediction replaces the empty prompt's
        in guidance (Stable Diffusion's way); with negative_scale=w_neg it is pushed away from
        separately, only along what the prompt does not share with it (Perp-Neg; see
        samplers.perpendicular_negative_guidance: three predictions per step instead of two).
        With return_attention=True the last item returned is each prompt token's cross-attention
        map (N, L, 8, 8), averaged over heads, layers and steps, summing to 1 over the grid
        (padding tokens: zeros; see attention_maps.py).
        """
        prompts, eps_fn, sampler, generator = self._prepare(
            prompts, None, num_steps, guidance_scale, seed, sampler, negative_prompt, negative_scale)
        zT = self._noise(len(prompts), generator)
        store = AttentionStore(len(prompts), self.config.latent_size) if return_attention else None
        with attention_hook(self.unet, store):
            out = sample(eps_fn, sampler, zT, generator=generator, progress=progress,
                         return_trajectory=return_trajectory)
        z0, trajectory = out if return_trajectory else (out, None)
        images = self._finish(z0, trajectory, return_trajectory)
        if store is None:
            return images
        return (*images, store.maps()) if return_trajectory else (images, store.maps())

    @torch.no_grad()
    def img2img(self, images, prompts, strength: float = 0.6, num_steps: int | None = None,
                guidance_scale: float = 3.0, seed: int = 0, sampler: str | None = None,
                negative_prompt=None, return_trajectory: bool = False, progress: bool = False,
                negative_scale: float | None = None):
        """Image + text to image (SDEdit): encode, noise to the strength's timestep, denoise.

        strength 0 keeps the image (up to the VAE's reconstruction), 1 starts from
        pure noise and ignores it. One prompt per image, or one for all. Image i is
        noised with its own generator (seed + i), as in __call__. A flow model
        starts on the straight line at s = strength: (1 - s) z0 + s noise.
        """
        strength = check_float(strength, "strength", 0.0, 1.0)
        images = check_images(images, self.config.image_size)
        prompts, eps_fn, sampler, generator = self._prepare(
            prompts, len(images), num_steps, guidance_scale, seed, sampler, negative_prompt, negative_scale)
        z0 = self.encode_images(images)                              # step 1: (N, 4, 8, 8)
        zt, start_index = img2img_start(sampler, z0, strength, generator=generator)
        out = sample(eps_fn, sampler, zt, generator=generator, start_index=start_index,
                     progress=progress, return_trajectory=return_trajectory)
        z0, trajectory = out if return_trajectory else (out, None)
        return self._finish(z0, trajectory, return_trajectory)

    # -- the toolbox (lesson 09) -------------------------------------------

    @torch.no_grad()
    def inpaint(self, images, masks, prompts, num_steps: int | None = None, guidance_scale: float = 3.0,
                seed: int = 0, sampler: str | None = None, negative_prompt=None, progress: bool = False,
                paste_back: bool = True, negative_scale: float | None = None):
        """Repaint the masked part of images to match the prompts, keep the rest.

        images float (N, 3, 32, 32) in [0, 1]; masks (N, 1, 32, 32) or (N, 32, 32), bool or
        float in {0, 1}, 1 = repaint (one mask may serve all images) -> float (N, 3, 32, 32).
        Text to image, with the known region's latents re-noised and pasted back after every
        step (editing.KnownRegion), and the kept pixels pasted back at the end: outside the
        mask the output is the input exactly (paste_back=False shows what the blend alone gives).
        """
        images = check_images(images, self.config.image_size).to(self.device)
        masks = check_masks(masks, len(images), self.config.image_size).to(self.device)
        prompts, eps_fn, sampler, generator = self._prepare(
            prompts, len(images), num_steps, guidance_scale, seed, sampler, negative_prompt, negative_scale)
        zT = self._noise(len(images), generator)                     # (N, 4, 8, 8)
        known = KnownRegion(sampler, self.encode_images(images), latent_mask(masks, self.config.latent_size),
                            noise=zT)
        z0 = sample(eps_fn, sampler, zT, generator=generator, progress=progress, callback=known)
        painted = self.decode_latents(z0)
        return masks * painted + (1 - masks) * images if paste_back else painted
