"""Lesson 06 - latent diffusion (notebooks/06_latent_diffusion.ipynb): the lesson's exercise checks."""
from __future__ import annotations

import torch

from ._core import expect, expect_close, expect_tensor, match_mistake, passed, run_student_function


def guided_eps(student_guided_eps) -> None:
    """Exercise: classifier-free guidance, eps = eps_uncond + w * (eps_cond - eps_uncond).

    student_guided_eps(eps_uncond, eps_cond, guidance_scale) -> eps
    """
    g = torch.Generator().manual_seed(6)
    eps_u, eps_c = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    for w in (3.0, 7.5, 0.0, 1.0):
        got = run_student_function(student_guided_eps, eps_u.clone(), eps_c.clone(), w, name="guided_eps")
        expect_tensor(got, eps_u.shape, f"guided_eps(..., guidance_scale={w})")
        want = eps_u + w * (eps_c - eps_u)
        if w not in (0.0, 1.0):
            match_mistake(got, atol=1e-5, mistakes={
                "you started from eps_cond and pushed towards eps_uncond; guidance starts from the "
                "unconditional prediction and moves w times the difference towards the conditional one.":
                    eps_c + w * (eps_u - eps_c),
                "that is the 'w + 1' convention (eps_cond + w * (eps_cond - eps_uncond)). In this course "
                "guidance_scale = 1 must give exactly the conditional prediction: "
                "eps_uncond + w * (eps_cond - eps_uncond).": eps_c + w * (eps_c - eps_u),
                "only the difference is there: add it to eps_uncond.": w * (eps_c - eps_u),
                "you scaled the conditional prediction alone; guidance extrapolates from eps_uncond "
                "along (eps_cond - eps_uncond).": w * eps_c,
                "you returned the conditional prediction unchanged: guidance_scale must matter.": eps_c,
                "you averaged the two predictions; guidance extrapolates past eps_cond when w > 1.":
                    (eps_u + eps_c) / 2,
            })
        expect_close(got, want, f"with guidance_scale = {w} the result should be "
                                f"eps_uncond + {w} * (eps_cond - eps_uncond).", atol=1e-5)
    passed("eps_uncond + w * (eps_cond - eps_uncond): w = 0 is unconditional, w = 1 conditional, "
           "w > 1 follows the prompt more strongly.")


def sdedit_start(student_start) -> None:
    """Exercise: SDEdit's start for img2img from strength.

    student_start(sampler, z0, strength, noise) -> (zt, start_index) where
    start_index = len(timesteps) - round(strength * len(timesteps)), t = timesteps[start_index]
    and zt = q_sample(z0, t, noise); strength 0 returns z0 and start_index = len(timesteps).
    """
    from ..samplers import DDIMSampler, img2img_start
    from ..schedule import NoiseSchedule
    schedule = NoiseSchedule("linear", 1000)
    g = torch.Generator().manual_seed(6)
    z0, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for num_steps, strength in ((50, 0.6), (20, 0.3), (50, 1.0), (50, 0.0), (10, 0.75)):
        sampler = DDIMSampler(schedule, num_steps=num_steps)
        result = run_student_function(student_start, sampler, z0.clone(), strength, noise.clone(),
                                      name="sdedit_start")
        expect(isinstance(result, tuple) and len(result) == 2,
               "return a pair (zt, start_index).")
        zt, start_index = result
        want_zt, want_index = img2img_start(sampler, z0, strength, noise=noise)
        num = len(sampler.timesteps)
        expect(isinstance(start_index, int) or (isinstance(start_index, torch.Tensor) and start_index.numel() == 1),
               f"start_index should be a whole number, got {type(start_index).__name__}.")
        start_index = int(start_index)
        expect(start_index != round(strength * num) or start_index == want_index,
               f"for strength {strength} with {num} steps you start at index {start_index}: that is the "
               f"number of steps to RUN. Skip the others: start_index = {num} - round(strength * {num}).")
        expect(start_index == want_index,
               f"for strength {strength} with {num} steps, start_index should be {want_index} "
               f"(= {num} - round(strength * {num})), got {start_index}.")
        expect_tensor(zt, z0.shape, "zt")
        if want_index == num:
            expect_close(zt, z0, "with strength 0 nothing is denoised, so the start is z0 itself (no noise).")
            continue
        t = int(sampler.timesteps[start_index])
        ab = schedule.alpha_bar[t]
        match_mistake(zt, atol=1e-5, mistakes={
            f"you looked up alpha_bar at the index {start_index} into the sampler's list; use the "
            f"timestep t = sampler.timesteps[start_index] = {t}.":
                schedule.alpha_bar[start_index].sqrt() * z0 + (1 - schedule.alpha_bar[start_index]).sqrt() * noise,
            "the two square roots are swapped: zt = sqrt(alpha_bar_t) z0 + sqrt(1 - alpha_bar_t) noise.":
                (1 - ab).sqrt() * z0 + ab.sqrt() * noise,
            "you forgot the square roots: zt = sqrt(alpha_bar_t) z0 + sqrt(1 - alpha_bar_t) noise.":
                ab * z0 + (1 - ab) * noise,
        })
        expect_close(zt, want_zt, f"zt should be z0 noised to t = sampler.timesteps[start_index] = {t}: "
                                  f"sqrt(alpha_bar_t) z0 + sqrt(1 - alpha_bar_t) noise, with the noise given.",
                     atol=1e-4)
    passed("strength picks how many of the sampler's steps to run; img2img starts from z0 noised "
           "to the first of them.")
