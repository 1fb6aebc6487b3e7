"""Lesson 03 - DDIM (notebooks/03_ddim.ipynb): the lesson's exercise checks."""
from __future__ import annotations

import torch

from ..objectives import predict_x0 as reference_predict_x0
from ._core import (CheckFailed, diagnose, expect_tensor, passed, per_example, run_student_function,
                    schedule_for_checks)


def predict_x0(student_predict_x0) -> None:
    """Exercise: invert q_sample, x0_pred = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t).

    student_predict_x0(schedule, xt, t (B,), eps_pred) -> x0_pred
    """
    schedule = schedule_for_checks()
    g = torch.Generator().manual_seed(4)
    xt, eps = torch.randn(8, 3, 8, 8, generator=g), torch.randn(8, 3, 8, 8, generator=g)
    t = torch.tensor([0, 3, 50, 200, 400, 600, 800, 999])
    try:
        got = run_student_function(student_predict_x0, schedule, xt, t, eps, name="predict_x0")
    except RuntimeError as err:
        raise CheckFailed(f"Not yet: predict_x0 crashed ({err}). Reshape alpha_bar[t] to (B, 1, 1, 1) "
                          "so each example uses its own t.") from err
    expect_tensor(got, xt.shape, "x0_pred")
    want = reference_predict_x0(schedule, xt, t, eps)
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
        ab = per_example(schedule.alpha_bar[t], 4)
        a = per_example(schedule.alpha[t], 4)
        flat = schedule.alpha_bar[t]
        diagnose(got, {
            "you forgot a square root: x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t).":
                (xt - (1 - ab) * eps) / ab,
            "divide by sqrt(alpha_bar_t), not alpha_bar_t.": (xt - (1 - ab).sqrt() * eps) / ab,
            "subtract the noise, do not add it: x_t = sqrt(ab) x0 + sqrt(1 - ab) eps, solved for x0.":
                (xt + (1 - ab).sqrt() * eps) / ab.sqrt(),
            "use alpha_bar_t (the whole way from x0), not alpha_t (one step).":
                (xt - (1 - a).sqrt() * eps) / a.sqrt(),
            "wrong broadcasting over t: reshape alpha_bar[t] from (B,) to (B, 1, 1, 1).":
                (xt - (1 - flat).sqrt() * eps) / flat.sqrt(),
        }, "your x0_pred differs from (x_t - sqrt(1 - alpha_bar_t) * eps) / sqrt(alpha_bar_t).", atol=1e-3)
    passed("x0_pred inverts q_sample for every t in the batch.")


def ddim_step(student_step) -> None:
    """Exercise: one DDIM update from t to prev_t (prev_t = -1 means the last step, alpha_bar = 1).

    student_step(schedule, xt, eps_pred, t: int, prev_t: int, eta: float, z) -> x_prev
    """
    from ..samplers import DDIMSampler
    schedule = schedule_for_checks()
    g = torch.Generator().manual_seed(5)
    for num_steps, eta, t in ((50, 0.0, 999), (50, 0.0, 19), (10, 0.0, 499), (10, 1.0, 599),
                              (50, 0.5, 199), (10, 1.0, 99)):
        sampler = DDIMSampler(schedule, num_steps, eta=eta, clip_x0=False)
        prev_t = sampler.prev_timestep(t)
        xt, eps = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
        noise_seed = int(torch.randint(0, 2 ** 31, (1,), generator=g))
        z = torch.randn(xt.shape, generator=torch.Generator().manual_seed(noise_seed))
        got = run_student_function(student_step, schedule, xt, eps, t, prev_t, eta, z, name="ddim_step")
        if prev_t < 0 and isinstance(got, torch.Tensor) and not torch.isfinite(got).all():
            raise CheckFailed("Not yet: the last step (prev_t = -1) gave NaN. prev_t = -1 means 'after the "
                              "last step': use alpha_bar_prev = 1 there, not alpha_bar[-1] (Python's -1 "
                              "index is the LAST timestep, pure noise).")
        expect_tensor(got, xt.shape, "x_prev")
        want, x0_pred = sampler.step(eps, t, xt, generator=torch.Generator().manual_seed(noise_seed))
        if torch.allclose(got, want, atol=1e-3, rtol=1e-3):
            continue
        ab = schedule.alpha_bar[t]
        ab_prev = schedule.alpha_bar[prev_t] if prev_t >= 0 else torch.tensor(1.0)
        sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()
        last = schedule.alpha_bar[-1]
        noise_term = sigma * z if prev_t >= 0 else 0 * z
        wrong = {
            "prev_t = -1 means 'after the last step': use alpha_bar_prev = 1 there, not alpha_bar[-1] "
            "(Python's -1 index is the LAST timestep, pure noise).":
                last.sqrt() * x0_pred + (1 - last).sqrt() * eps if prev_t < 0 else None,
            "the x0 term needs sqrt(alpha_bar_prev), not alpha_bar_prev.":
                ab_prev * x0_pred + (1 - ab_prev - sigma ** 2).sqrt() * eps + noise_term,
            "the direction term is sqrt(1 - alpha_bar_prev - sigma^2) * eps: you forgot the square root.":
                ab_prev.sqrt() * x0_pred + (1 - ab_prev - sigma ** 2) * eps + noise_term,
            "with eta > 0 the direction shrinks: sqrt(1 - alpha_bar_prev - sigma^2), not sqrt(1 - alpha_bar_prev).":
                ab_prev.sqrt() * x0_pred + (1 - ab_prev).sqrt() * eps + noise_term if eta > 0 else None,
            "with eta > 0 add fresh noise sigma * z, sigma = eta * sqrt((1 - ab_prev) / (1 - ab)) "
            "* sqrt(1 - ab / ab_prev).":
                ab_prev.sqrt() * x0_pred + (1 - ab_prev - sigma ** 2).sqrt() * eps if eta > 0 else None,
        }
        if eta > 0:
            wrong[f"your step ignores eta: with eta = {eta:g} it returned the eta = 0 update. Compute "
                  "sigma = eta * sqrt((1 - ab_prev) / (1 - ab)) * sqrt(1 - ab / ab_prev), shrink the direction "
                  "to sqrt(1 - ab_prev - sigma^2) * eps and add sigma * z."] = \
                ab_prev.sqrt() * x0_pred + (1 - ab_prev).sqrt() * eps
        a_t = schedule.alpha[t]
        x0_alpha = (xt - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        wrong["use alpha_bar (cumulative), not alpha: x0_pred = (x_t - sqrt(1 - alpha_bar_t) eps) / "
              "sqrt(alpha_bar_t)."] = ab_prev.sqrt() * x0_alpha + (1 - ab_prev - sigma ** 2).sqrt() * eps + noise_term
        diagnose(got, wrong, f"for t = {t} -> prev_t = {prev_t} with eta = {eta} your x_prev differs from "
                              "sqrt(ab_prev) x0_pred + sqrt(1 - ab_prev - sigma^2) eps + sigma z.", atol=1e-3)
    passed("your DDIM step matches DDIMSampler for eta = 0, 0.5 and 1, including the last step.")
