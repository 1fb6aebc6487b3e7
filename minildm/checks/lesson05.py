"""Lesson 05 - VAE (notebooks/05_vae.ipynb): the lesson's exercise checks."""
from __future__ import annotations

import torch

from ._core import expect, expect_close, expect_tensor, match_mistake, passed, run_student_function


def reparameterize(student_reparameterize) -> None:
    """Exercise: z = mean + exp(0.5 * logvar) * eps, with gradients flowing to mean and logvar."""
    from ..vae import reparameterize as reference
    g = torch.Generator().manual_seed(5)
    mean = torch.randn(3, 4, 8, 8, generator=g)
    logvar = torch.randn(3, 4, 8, 8, generator=g) - 0.5
    eps = torch.randn(3, 4, 8, 8, generator=g)
    m, lv = mean.clone().requires_grad_(True), logvar.clone().requires_grad_(True)
    got = run_student_function(student_reparameterize, m, lv, eps, name="reparameterize")
    expect_tensor(got, mean.shape, "z")
    want = reference(mean, logvar, eps)
    std = torch.exp(0.5 * logvar)
    match_mistake(got, {
        "you used logvar itself as the standard deviation. logvar is log(std^2): "
        "std = exp(0.5 * logvar).": mean + logvar * eps,
        "you used exp(logvar) as the standard deviation, but exp(logvar) is the variance std^2; "
        "std = exp(0.5 * logvar).": mean + torch.exp(logvar) * eps,
        "you multiplied eps by 0.5 * logvar; the standard deviation is exp(0.5 * logvar).":
            mean + 0.5 * logvar * eps,
        "eps is missing: z = mean + std * eps, where eps is the given N(0, 1) noise.": mean + std,
        "the mean is missing: z = mean + std * eps.": std * eps,
        "you returned the mean: a sample also needs the noise term std * eps.": mean,
    })
    expect_close(got, want, "z should be mean + exp(0.5 * logvar) * eps, using the eps you are given "
                            "(do not draw new noise inside the function).")
    expect(got.requires_grad, "z has no gradient: build it from mean and logvar with torch operations "
                              "(no .detach(), no torch.normal) - letting gradients through is the trick's point.")
    got.sum().backward()
    expect(m.grad is not None and lv.grad is not None,
           "gradients do not reach both mean and logvar; build z from both.")
    expect_close(m.grad, torch.ones_like(mean), "dz/dmean should be 1 everywhere.")
    expect_close(lv.grad, 0.5 * std * eps, "dz/dlogvar should be 0.5 * std * eps.")
    passed("z = mean + exp(0.5 * logvar) * eps, and gradients flow to the encoder's mean and logvar.")


def kl_divergence(student_kl) -> None:
    """Exercise: per-image KL(N(mean, exp(logvar)) || N(0, I)), summed over latent numbers -> (B,)."""
    from ..vae import kl_divergence as reference
    g = torch.Generator().manual_seed(5)
    mean = torch.randn(3, 4, 8, 8, generator=g)
    logvar = torch.randn(3, 4, 8, 8, generator=g) * 0.5 - 0.3
    got = run_student_function(student_kl, mean, logvar, name="kl_divergence")
    expect(isinstance(got, torch.Tensor), f"return a torch.Tensor, got {type(got).__name__}.")
    expect(got.numel() != 1, "you returned one number for the whole batch: return one KL per image, "
                             "shape (B,) - sum over dims 1, 2, 3, not over the batch.")
    expect(got.ndim == 1, f"return one KL per image, shape (B,) = (3,), got {tuple(got.shape)}: "
                          f"sum over the latent numbers (channels, height, width).")
    expect_tensor(got, (3,), "the KL")
    want = reference(mean, logvar)
    per_number = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar)             # (B, C, h, w)
    match_mistake(got, {
        "the sign is flipped: a KL divergence is never negative. "
        "Use 0.5 * (mean^2 + exp(logvar) - 1 - logvar).": -want,
        "you averaged over the latent numbers; the KL of independent numbers adds up: "
        "sum over dims 1, 2, 3.": per_number.flatten(1).mean(1),
        "you used logvar as the standard deviation: the variance is exp(logvar), not logvar^2.":
            (0.5 * (mean ** 2 + logvar ** 2 - 1 - torch.log(logvar ** 2))).flatten(1).sum(1),
        "the factor 0.5 is missing.": 2 * want,
        "the -1 is missing (without it the prior N(0, 1) would not have KL 0).":
            want + 0.5 * mean[0].numel(),
        "mean^2 is missing: moving the mean away from 0 must cost something.":
            want - 0.5 * (mean ** 2).flatten(1).sum(1),
    })
    expect_close(got, want, "the KL per image should be sum of 0.5 * (mean^2 + exp(logvar) - 1 - logvar) "
                            "over the latent numbers.", atol=1e-3)
    prior = run_student_function(student_kl, torch.zeros(2, 4, 8, 8), torch.zeros(2, 4, 8, 8),
                                 name="kl_divergence")
    expect_close(prior, torch.zeros(2), "the KL of the prior itself (mean 0, logvar 0) should be 0.")
    passed("KL(q(z|x) || N(0, I)) per image matches the reference, and is 0 for the prior.")


def latent_numbers(student_numbers) -> None:
    """Exercise: how many numbers does the UNet see per step for one 32x32 image, in latent space?

    student_numbers: the student's function (called with no arguments) or its answer."""
    if callable(student_numbers):
        student_numbers = run_student_function(student_numbers, name="my_latent_numbers")
    expect(isinstance(student_numbers, int), f"give a whole number, got {type(student_numbers).__name__}.")
    expect(student_numbers != 3 * 32 * 32, "that is the pixel count (3 x 32 x 32); the UNet works on latents.")
    expect(student_numbers == 4 * 8 * 8, "multiply latent channels x latent height x latent width "
                                         "(32 / 4 = 8 on each side).")
    passed(f"{4 * 8 * 8} numbers per latent, {3 * 32 * 32 // (4 * 8 * 8)}x fewer than 3 x 32 x 32 pixels.")
