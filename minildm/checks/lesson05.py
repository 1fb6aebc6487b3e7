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


def _random_vae():
    """A small, randomly initialised TinyVAE with a KL weight and scale factor large enough that
    leaving them out shows."""
    from ..vae import TinyVAE, VAEConfig
    with torch.random.fork_rng():  # leave the notebook's random stream alone
        torch.manual_seed(5)
        return TinyVAE(VAEConfig(base_channels=8, kl_weight=0.05, scale_factor=1.7)).eval()


def vae_loss(student_loss) -> None:
    """Exercise: the VAE's training loss on a batch, with the noise eps given.

    student_loss(vae, images (B, 3, H, W) in [0, 1], eps (B, 4, h, w)) -> scalar tensor:
    (mean, logvar) = vae.encode_distribution(images); z = mean + exp(0.5 logvar) eps;
    reconstruction = (vae.decoder(z) + 1) / 2; loss = MSE(reconstruction, images)
    + vae.config.kl_weight * (KL per image, averaged over the batch).
    """
    import torch.nn.functional as F
    from ..data import shapes
    from ..vae import kl_divergence as kl, reparameterize as reference_reparameterize
    from ..vae import vae_loss as reference
    vae = _random_vae()
    images = shapes.sample_batch(4, "train", vae.config.image_size, seed=5)[0]
    eps = torch.randn(4, vae.config.latent_channels, vae.config.latent_size, vae.config.latent_size,
                      generator=torch.Generator().manual_seed(5))
    got = run_student_function(student_loss, vae, images.clone(), eps.clone(), name="my_vae_loss")
    got = got[0] if isinstance(got, tuple) else got                  # (loss, metrics) is fine too
    expect(isinstance(got, torch.Tensor), f"return a torch.Tensor, got {type(got).__name__}.")
    expect(got.numel() == 1, f"the loss is one number (average over the batch), got shape {tuple(got.shape)}.")
    got = got.reshape(())
    mean, logvar = vae.encode_distribution(images)
    z = reference_reparameterize(mean, logvar, eps)
    recon = (vae.decoder(z) + 1) / 2
    w = vae.config.kl_weight
    want, _ = reference(recon, images, mean, logvar, w)
    mse = F.mse_loss(recon, images)
    match_mistake(got.detach(), atol=1e-5, mistakes={
        "decode a *sample* z = mean + exp(0.5 * logvar) * eps (the reparameterisation trick), not the "
        "mean: the decoder must learn to cope with the encoder's noise.":
            F.mse_loss((vae.decoder(mean) + 1) / 2, images) + w * kl(mean, logvar).mean(),
        "the KL term is missing: loss = MSE + kl_weight * KL.": mse,
        "multiply the KL by vae.config.kl_weight.": mse + kl(mean, logvar).mean(),
        "average the per-image KL over the batch (.mean()), as the MSE is averaged.":
            mse + w * kl(mean, logvar).sum(),
        "the decoder outputs values in [-1, 1] and the images are in [0, 1]: map (decoder(z) + 1) / 2 "
        "before comparing.": F.mse_loss(vae.decoder(z), images) + w * kl(mean, logvar).mean(),
        "use the mean squared error (averaged over every pixel value), not the sum.":
            (recon - images).pow(2).sum() + w * kl(mean, logvar).mean(),
        "vae.decode expects latents multiplied by scale_factor (and clamps its output); in training "
        "decode the unscaled sample: (vae.decoder(z) + 1) / 2.":
            F.mse_loss(vae.decode(z), images) + w * kl(mean, logvar).mean(),
    })
    expect_close(got.detach(), want.detach(), "the loss differs from MSE((decoder(z) + 1) / 2, images) "
                                              "+ kl_weight * mean KL per image", atol=1e-5)
    expect(got.requires_grad, "the loss has no gradient: compute it from the VAE's outputs with torch "
                              "operations (no .item(), no torch.no_grad()) so training can follow it.")
    passed("MSE of a decoded sample + kl_weight * KL: the loss TinyVAE trains with.")
