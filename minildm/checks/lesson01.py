"""Lesson 01 - forward diffusion (notebooks/01_forward_diffusion.ipynb): the lesson's exercise checks."""
from __future__ import annotations

import torch

from ._core import (CheckFailed, diagnose, expect_tensor, passed, per_example, run_student_function,
                    schedule_for_checks)


def q_sample(student_q_sample) -> None:
    """Exercise: x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, for any shape, one t per example.

    student_q_sample(schedule, x0, t, noise) -> xt
    """
    schedule = schedule_for_checks()
    g = torch.Generator().manual_seed(1)
    # Batch of 8 images of width 8: a (B,) tensor broadcast without reshaping lines up with W, silently.
    for shape in ((8, 3, 8, 8), (5, 2)):
        x0, noise = torch.rand(shape, generator=g) * 2 - 1, torch.randn(shape, generator=g)
        t = torch.randint(0, 1000, (shape[0],), generator=g)
        t[0], t[-1] = 0, 999
        try:
            got = run_student_function(student_q_sample, schedule, x0, t, noise, name="q_sample")
        except RuntimeError as err:
            raise CheckFailed(f"Not yet: q_sample crashed on x0 of shape {shape} ({err}). Each example has "
                              "its own t: reshape alpha_bar[t] from (B,) to (B, 1, 1, 1) (or use "
                              "schedule.extract-like reshaping) so it broadcasts over the other dims.") from err
        expect_tensor(got, shape, "q_sample's result")
        want = schedule.q_sample(x0, t, noise)
        if torch.allclose(got, want, atol=1e-5):
            continue
        ab = per_example(schedule.alpha_bar[t], len(shape))
        a = per_example(schedule.alpha[t], len(shape))
        wrong = {
            "you forgot a square root: x_t = sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * noise "
            "(the coefficients are standard deviations, their squares add to 1).":
                ab * x0 + (1 - ab) * noise,
            "only the noise term lost its square root: it is sqrt(1 - alpha_bar_t) * noise.":
                ab.sqrt() * x0 + (1 - ab) * noise,
            "only the signal term lost its square root: it is sqrt(alpha_bar_t) * x0.":
                ab * x0 + (1 - ab).sqrt() * noise,
            "you used alpha_t (one step) instead of alpha_bar_t (the product over all steps up to t).":
                a.sqrt() * x0 + (1 - a).sqrt() * noise,
            "x0 and noise are swapped: the signal gets sqrt(alpha_bar_t), the noise sqrt(1 - alpha_bar_t).":
                (1 - ab).sqrt() * x0 + ab.sqrt() * noise,
            "t is 0-based here: use alpha_bar[t], not alpha_bar[t - 1].":
                schedule.q_sample(x0, (t - 1).clamp(min=0), noise),
        }
        if len(shape) == 4:
            flat = schedule.alpha_bar[t]                                     # (B,) broadcast over W
            wrong["wrong broadcasting over t: alpha_bar[t] has shape (B,) and lined up with the last "
                  "dimension. Reshape it to (B, 1, 1, 1) so each example gets its own t."] = \
                flat.sqrt() * x0 + (1 - flat).sqrt() * noise
        diagnose(got, wrong, f"for x0 of shape {shape} your x_t differs from "
                              "sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * noise.")
    passed("q_sample matches the closed form for points and images, one t per example.")


def alpha_bar_from_betas(student_alpha_bar) -> None:
    """Exercise: alpha_bar_t = prod_{s <= t} (1 - beta_s).

    student_alpha_bar(beta (T,)) -> alpha_bar (T,)
    """
    for kind in ("linear", "cosine"):
        schedule = schedule_for_checks(kind)
        beta = schedule.beta.clone()
        got = run_student_function(student_alpha_bar, beta, name="alpha_bar_from_betas")
        expect_tensor(got, beta.shape, "alpha_bar")
        want = schedule.alpha_bar
        if torch.allclose(got.float(), want, rtol=1e-4, atol=1e-6):
            continue
        alpha = 1 - beta
        wrong = {
            "you returned alpha = 1 - beta; alpha_bar is the running product of alpha (torch.cumprod).": alpha,
            "you multiplied the betas; alpha_bar multiplies alpha = 1 - beta.": torch.cumprod(beta, 0),
            "1 - cumprod(beta) is not it: first alpha = 1 - beta, then the running product.":
                1 - torch.cumprod(beta, 0),
            "a sum is not a product: use torch.cumprod, not cumsum.": 1 - torch.cumsum(beta, 0),
            "that is alpha_bar shifted by one step (alpha_bar_{t-1}): t is 0-based, so alpha_bar[0] = alpha[0].":
                schedule.alpha_bar_prev,
            "you took the product of ALL alphas for every t; alpha_bar_t stops at t (a running product).":
                torch.full_like(beta, float(torch.prod(alpha))),
        }
        diagnose(got, wrong, f"for the {kind} schedule your alpha_bar differs from the running product "
                              "of (1 - beta).", atol=1e-6)
    passed("alpha_bar is the running product of (1 - beta) for the linear and cosine schedules.")
