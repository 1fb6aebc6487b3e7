"""Editing with a text-to-image model: inpainting, and editing a real image by DDIM inversion.

Inpainting: repaint the masked part, keep the rest.

The shipped UNet has no inpainting head (SD's inpainting models take the mask and
the masked image as extra input channels). A plain text-to-image model can still
inpaint by sampling as usual while forcing the known region to follow the
image's own noisy path (the "blended" method, Avrahami et al. 2022; diffusers'
legacy inpainting pipeline):

    1. z0 = VAE(image), m = the mask at latent resolution (1 = repaint)
    2. after each sampler step (t -> prev_t):
           known = q_sample(z0, prev_t, eps) = sqrt(alpha_bar_prev) z0 + sqrt(1 - alpha_bar_prev) eps
           z     = m * z + (1 - m) * known             (the last step: known = z0 itself)
    3. decode, then paste the kept pixels back: x = M * x + (1 - M) * image

Step 2 is the `callback` of samplers.sample (`KnownRegion`): no second sampling
loop. The model sees the known region at every step and paints the masked part to
fit it; step 3 makes sure nothing outside the mask changes at all. The pipeline's
`inpaint` runs it.

Editing a real image (`invert`, `edit`): DDIM with eta = 0 is a deterministic map from
noise to images, so it can be walked backwards (samplers.DDIMInversion): the image's
own z_t replaces img2img's random noise, and regenerating from it with the same prompt
gives the image back. With one word changed, the layout mostly stays and the word's
attribute changes. Prompt-to-prompt (Hertz et al. 2022) holds the layout tighter: the
source and the edited prompt are sampled side by side from that z_t, and for the first
steps the edited prompt's cross-attention weights are replaced by the source's
(attention_maps.AttentionInjector).

Taught in notebooks/09_toolbox.ipynb.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .attention_maps import AttentionInjector, attention_hook
from .guidance import classifier_free_guidance
from .inputs import check_float, check_images, check_prompts
from .samplers import DDIMInversion, sample


def latent_mask(masks: torch.Tensor, latent_size: int) -> torch.Tensor:
    """Pixel masks (N, 1, H, W) in {0, 1} -> latent masks (N, 1, S, S) in {0, 1}.

    Max-pooling by H / S: a latent cell is repainted when any of its pixels is, so
    no repainted pixel is decoded from a latent that was held to the old image.
    """
    factor = masks.shape[-1] // latent_size
    return F.max_pool2d(masks.float(), kernel_size=factor)                # (N, 1, S, S)


class KnownRegion:
    """samplers.sample callback: after each step, put back the known region noised to the new timestep.

    sampler: the sampler being run (its `prev_timestep` and `schedule` say where the step went);
    z0 (N, C, S, S): the image's latents; mask (N, 1, S, S): 1 = repaint; noise (N, C, S, S):
    the eps of the known region's path (the sample's own starting noise keeps both parts on
    one trajectory).
    """

    def __init__(self, sampler, z0: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor):
        if not hasattr(sampler, "schedule") or not hasattr(sampler, "prev_timestep"):
            raise ValueError(f"inpainting needs a sampler over a noise schedule (ddim, ddpm or a diffusers "
                             f"one), got {type(sampler).__name__}")
        self.sampler, self.z0, self.mask, self.noise = sampler, z0, mask.to(z0.device), noise.to(z0.device)

    def known(self, t: int) -> torch.Tensor:
        """The known latents at timestep t: q_sample(z0, t, noise), or z0 itself for t = -1."""
        if t < 0:
            return self.z0
        t_batch = torch.full((len(self.z0),), t, dtype=torch.long, device=self.z0.device)
        return self.sampler.schedule.q_sample(self.z0, t_batch, self.noise)

    def __call__(self, i, t, xt, x0_pred) -> torch.Tensor:
        """After step i (from t): xt is at prev_t -> the blend m * xt + (1 - m) * known(prev_t)."""
        known = self.known(self.sampler.prev_timestep(int(t)))
        return self.mask * xt + (1 - self.mask) * known


# ----------------------------------------------------------------------------
# Editing a real image: DDIM inversion, and prompt-to-prompt

def _one_per_image(prompts, n: int, name: str = "prompts") -> list[str]:
    prompts = check_prompts(prompts, name)
    prompts = prompts * n if len(prompts) == 1 else prompts
    if len(prompts) != n:
        raise ValueError(f"got {n} images and {len(prompts)} {name}; give one per image, or one for all")
    return prompts


def _guided_eps_fn(pipe, prompts: list[str], guidance_scale: float):
    """The pipeline's denoiser with classifier-free guidance towards prompts (the empty prompt as the
    unconditional one); guidance 1 is the conditional prediction alone (one forward, not two)."""
    context, mask = pipe.encode_prompts(prompts)                       # (N, L, D), (N, L)
    if guidance_scale == 1.0:
        return lambda x, t: pipe.denoiser(x, t, context=context, context_mask=mask)
    uncond, uncond_mask = pipe.encode_prompts([""] * len(prompts))
    return classifier_free_guidance(pipe.denoiser, context, uncond, guidance_scale,
                                    context_mask=mask, uncond_mask=uncond_mask)


@torch.no_grad()
def invert(pipe, images, prompts, num_steps: int = 50, strength: float = 1.0,
           progress: bool = False) -> tuple[torch.Tensor, int]:
    """DDIM inversion: images (N, 3, 32, 32) in [0, 1] -> (zt (N, 4, 8, 8), start_index) such that
    DDIM (eta 0) from zt, sample(..., start_index=start_index), gives (nearly) the images back.

    prompts describe the images (one per image, or one for all); the inversion follows the
    conditional prediction alone (guidance 1), as editing by inversion usually does.
    strength: the fraction of the num_steps DDIM steps walked up (1 = up to t = T - 1).
    """
    images = check_images(images, pipe.config.image_size)
    strength = check_float(strength, "strength", 0.0, 1.0)
    eps_fn = _guided_eps_fn(pipe, _one_per_image(prompts, len(images)), 1.0)
    sampler = pipe.make_sampler("ddim", num_steps)
    inversion = DDIMInversion(pipe.schedule, sampler.num_steps, strength, clip_x0=sampler.clip_x0,
                              first_timestep=int(sampler.timesteps[0]))       # the same timesteps, walked up
    zt = sample(eps_fn, inversion, pipe.encode_images(images), progress=progress)
    return zt, len(sampler) - len(inversion)


@torch.no_grad()
def edit(pipe, images, source_prompts, prompts, strength: float = 1.0, inject_fraction: float = 0.0,
         num_steps: int = 50, guidance_scale: float = 3.0, progress: bool = False) -> torch.Tensor:
    """Edit real images: invert them with source_prompts, regenerate with prompts (DDIM, eta 0).

    inject_fraction > 0 is prompt-to-prompt: sources and targets are sampled side by side from
    the inverted latents, and for that fraction of the steps the targets take the sources'
    cross-attention weights. Returns float (N, 3, 32, 32) in [0, 1].
    """
    inject_fraction = check_float(inject_fraction, "inject_fraction", 0.0, 1.0)
    guidance_scale = check_float(guidance_scale, "guidance_scale", 0.0, float("inf"))
    zt, start_index = invert(pipe, images, source_prompts, num_steps, strength, progress)
    n = len(zt)
    sources, targets = _one_per_image(source_prompts, n, "source_prompts"), _one_per_image(prompts, n)
    sampler = pipe.make_sampler("ddim", num_steps)
    if inject_fraction == 0:                                           # plain inversion + regeneration
        eps_fn, injector = _guided_eps_fn(pipe, targets, guidance_scale), None
    else:                                                              # batch [sources; targets]
        eps_fn, zt = _guided_eps_fn(pipe, sources + targets, guidance_scale), torch.cat([zt, zt])
        injector = AttentionInjector(n, round(inject_fraction * (len(sampler) - start_index)))
    with attention_hook(pipe.unet, injector):
        z0 = sample(eps_fn, sampler, zt, start_index=start_index, progress=progress,
                    callback=injector and injector.step_done)
    return pipe.decode_latents(z0[-n:])                                # the targets
