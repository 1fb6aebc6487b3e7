"""Lesson 09 - the Stable Diffusion toolbox (notebooks/09_toolbox.ipynb): the lesson's exercise checks."""
from __future__ import annotations

import torch

from ._core import (CheckFailed, diagnose, expect_close, expect_tensor, match_mistake, passed,
                    run_student_function, schedule_for_checks)


def _known(schedule, z_known: torch.Tensor, prev_t: int, noise: torch.Tensor) -> torch.Tensor:
    """The known region at prev_t: q_sample(z_known, prev_t, noise), or z_known itself after the last step."""
    if prev_t < 0:
        return z_known
    ab = schedule.alpha_bar[prev_t]
    return ab.sqrt() * z_known + (1 - ab).sqrt() * noise


def inpaint_blend(student_blend) -> None:
    """Exercise: the inpainting blend after one sampler step (editing.KnownRegion).

    student_blend(schedule, z, z_known, mask, prev_t, noise) -> m * z + (1 - m) * q_sample(z_known, prev_t, noise),
    with prev_t = -1 (after the last step) meaning the known region is z_known itself.
    """
    schedule = schedule_for_checks("cosine")
    g = torch.Generator().manual_seed(9)
    z, z_known, noise = (torch.randn(3, 4, 8, 8, generator=g) for _ in range(3))
    mask = torch.zeros(3, 1, 8, 8)
    mask[0, :, 2:6, 1:5] = 1                                              # one box per image, 1 = repaint
    mask[1, :, 0:3, 4:8] = 1
    mask[2, :, 5:8, 0:8] = 1
    for prev_t in (879, 499, 19, -1):
        got = run_student_function(student_blend, schedule, z.clone(), z_known.clone(), mask.clone(), prev_t,
                                   noise.clone(), name="the blend")
        if prev_t < 0 and isinstance(got, torch.Tensor) and not torch.isfinite(got).all():
            raise CheckFailed("Not yet: after the last step (prev_t = -1) you got NaN or inf. There the known "
                              "region is z_known itself: alpha_bar = 1, no noise.")
        expect_tensor(got, z.shape, f"the blend at prev_t = {prev_t}")
        want = mask * z + (1 - mask) * _known(schedule, z_known, prev_t, noise)
        if torch.allclose(got, want, atol=1e-5):
            continue
        ab = schedule.alpha_bar[prev_t] if prev_t >= 0 else torch.tensor(1.0)
        last = schedule.alpha_bar[-1]
        diagnose(got, {
            "the mask is the other way round: 1 = repaint, so the sampler's z stays where mask = 1 and the "
            "known region goes where mask = 0: m * z + (1 - m) * known.":
                (1 - mask) * z + mask * _known(schedule, z_known, prev_t, noise),
            "you pasted the clean z_known into a noisy sample: re-noise it to the step's timestep first, "
            "known = sqrt(alpha_bar_prev) * z_known + sqrt(1 - alpha_bar_prev) * noise.":
                mask * z + (1 - mask) * z_known if prev_t >= 0 else None,
            "prev_t = -1 means 'after the last step': the known region is z_known itself (alpha_bar = 1). "
            "alpha_bar[-1] is Python's last entry, the noisiest timestep.":
                mask * z + (1 - mask) * (last.sqrt() * z_known + (1 - last).sqrt() * noise) if prev_t < 0 else None,
            "q_sample takes square roots: sqrt(alpha_bar) * z_known + sqrt(1 - alpha_bar) * noise.":
                mask * z + (1 - mask) * (ab * z_known + (1 - ab) * noise) if prev_t >= 0 else None,
            "you returned the sampler's z unchanged: the kept region must follow the image.": z,
            "you returned the known region everywhere: the masked part is the sampler's to paint.":
                _known(schedule, z_known, prev_t, noise),
        }, f"at prev_t = {prev_t} your blend differs from m * z + (1 - m) * q_sample(z_known, prev_t, noise).",
            atol=1e-5)
    passed("m * z + (1 - m) * q_sample(z_known, prev_t, noise), and z_known itself after the last step: "
           "the blend editing.KnownRegion runs after every step.")


def ddim_inversion_step(student_step) -> None:
    """Exercise: one DDIM inversion step (samplers.DDIMInversion.step), without clipping.

    student_step(schedule, x_prev, eps_pred, from_t, t) -> x_t, from_t < t (from_t = -1: x_prev is the
    clean x0, alpha_bar = 1).
    """
    from ..samplers import DDIMInversion
    schedule = schedule_for_checks("cosine")
    g = torch.Generator().manual_seed(9)
    inversion = DDIMInversion(schedule, 10, clip_x0=False)               # t = 99, 199, ..., 999 ascending
    steps = [(-1, 99), (99, 199), (499, 599), (899, 999)]
    for from_t, t in steps:
        x_prev, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
        got = run_student_function(student_step, schedule, x_prev.clone(), eps.clone(), from_t, t,
                                   name="the inversion step")
        if from_t < 0 and isinstance(got, torch.Tensor) and not torch.isfinite(got).all():
            raise CheckFailed("Not yet: from_t = -1 gave NaN or inf: there x_prev is the clean x0 itself "
                              "(alpha_bar = 1).")
        expect_tensor(got, x_prev.shape, f"x_t for {from_t} -> {t}")
        want, _ = inversion.step(eps, t, x_prev)
        if torch.allclose(got, want, atol=1e-3, rtol=1e-3):
            continue
        ab_from = schedule.alpha_bar[from_t] if from_t >= 0 else torch.tensor(1.0)
        ab_t, last = schedule.alpha_bar[t], schedule.alpha_bar[-1]
        x0 = (x_prev - (1 - ab_from).sqrt() * eps) / ab_from.sqrt()
        diagnose(got, {
            "you took a DDIM step down (alpha_bars swapped): inversion goes UP, x0_pred from x_prev with "
            "alpha_bar[from_t], then sqrt(alpha_bar[t]) x0_pred + sqrt(1 - alpha_bar[t]) eps.":
                ab_from.sqrt() * (x_prev - (1 - ab_t).sqrt() * eps) / ab_t.sqrt() + (1 - ab_from).sqrt() * eps,
            "you noised x_prev as if it were clean (q_sample): first take out its own noise, x0_pred = "
            "(x_prev - sqrt(1 - alpha_bar[from_t]) eps) / sqrt(alpha_bar[from_t]).":
                ab_t.sqrt() * x_prev + (1 - ab_t).sqrt() * eps if from_t >= 0 else None,
            "from_t = -1 means x_prev is the clean x0 (alpha_bar = 1); alpha_bar[-1] is Python's last entry, "
            "the noisiest timestep.":
                ab_t.sqrt() * (x_prev - (1 - last).sqrt() * eps) / last.sqrt() + (1 - ab_t).sqrt() * eps
                if from_t < 0 else None,
            "the square roots are missing: x_t = sqrt(alpha_bar_t) x0_pred + sqrt(1 - alpha_bar_t) eps.":
                ab_t * x0 + (1 - ab_t) * eps,
            "you returned x0_pred: the step must end at timestep t, sqrt(alpha_bar_t) x0_pred + "
            "sqrt(1 - alpha_bar_t) eps.": x0,
        }, f"for {from_t} -> {t} your x_t differs from sqrt(alpha_bar[t]) x0_pred + sqrt(1 - alpha_bar[t]) eps "
           "with x0_pred = (x_prev - sqrt(1 - alpha_bar[from_t]) eps) / sqrt(alpha_bar[from_t]).", atol=1e-3)
    passed("your step matches DDIMInversion: x0_pred from x_prev, re-noised to the higher timestep with "
           "the same eps.")
