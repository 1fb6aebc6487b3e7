"""Lesson 05 checks pass the reference and catch typical wrong answers."""
import pytest
import torch

from minildm import checks
from minildm.checks import CheckFailed
from minildm.vae import kl_divergence as ref_kl
from minildm.vae import reparameterize as ref_reparameterize


# ----------------------------------------------------------------------------
# reparameterize

def test_reparameterize_accepts_reference(capsys):
    checks.reparameterize(lambda mean, logvar, eps: ref_reparameterize(mean, logvar, eps))
    assert "Correct!" in capsys.readouterr().out


def test_reparameterize_accepts_std_written_differently():
    checks.reparameterize(lambda mean, logvar, eps: mean + torch.sqrt(torch.exp(logvar)) * eps)


@pytest.mark.parametrize("wrong, hint", [
    (lambda m, lv, eps: m + lv * eps, "logvar itself as the standard deviation"),
    (lambda m, lv, eps: m + torch.exp(lv) * eps, "variance"),
    (lambda m, lv, eps: m + 0.5 * lv * eps, "exp(0.5 * logvar)"),
    (lambda m, lv, eps: m + torch.exp(0.5 * lv), "eps is missing"),
    (lambda m, lv, eps: torch.exp(0.5 * lv) * eps, "mean is missing"),
    (lambda m, lv, eps: m, "returned the mean"),
    (lambda m, lv, eps: m + torch.exp(0.5 * lv) * torch.randn_like(m), "eps you are given"),
    (lambda m, lv, eps: (m + torch.exp(0.5 * lv) * eps).detach(), "no gradient"),
    (lambda m, lv, eps: m + torch.exp(0.5 * lv.detach()) * eps, "gradients do not reach"),
    (lambda m, lv, eps: (m + torch.exp(0.5 * lv) * eps)[0], "shape"),
    (lambda m, lv, eps: (m + torch.exp(0.5 * lv) * eps).tolist(), "torch.Tensor"),
])
def test_reparameterize_catches_wrong_answers(wrong, hint):
    with pytest.raises(CheckFailed, match="Not yet") as info:
        checks.reparameterize(wrong)
    assert hint in str(info.value)


def test_reparameterize_not_implemented_gives_hint():
    def stub(mean, logvar, eps):
        raise NotImplementedError
    with pytest.raises(CheckFailed, match="NotImplementedError"):
        checks.reparameterize(stub)


# ----------------------------------------------------------------------------
# kl_divergence

def test_kl_accepts_reference(capsys):
    checks.kl_divergence(ref_kl)
    assert "Correct!" in capsys.readouterr().out


def test_kl_accepts_other_correct_form():
    def kl(mean, logvar):  # -0.5 * sum(1 + logvar - mean^2 - var), the textbook form
        return -0.5 * torch.sum(1 + logvar - mean.pow(2) - logvar.exp(), dim=(1, 2, 3))
    checks.kl_divergence(kl)


def _per_number(m, lv):
    return 0.5 * (m ** 2 + lv.exp() - 1 - lv)


@pytest.mark.parametrize("wrong, hint", [
    (lambda m, lv: -_per_number(m, lv).sum((1, 2, 3)), "sign"),
    (lambda m, lv: _per_number(m, lv).mean((1, 2, 3)), "averaged"),
    (lambda m, lv: _per_number(m, lv).sum(), "one number for the whole batch"),
    (lambda m, lv: _per_number(m, lv).mean(), "one number for the whole batch"),
    (lambda m, lv: _per_number(m, lv), "one KL per image"),
    (lambda m, lv: _per_number(m, lv).sum((2, 3)), "one KL per image"),
    (lambda m, lv: (0.5 * (m ** 2 + lv ** 2 - 1 - torch.log(lv ** 2))).sum((1, 2, 3)), "standard deviation"),
    (lambda m, lv: (m ** 2 + lv.exp() - 1 - lv).sum((1, 2, 3)), "0.5"),
    (lambda m, lv: (0.5 * (m ** 2 + lv.exp() - lv)).sum((1, 2, 3)), "-1"),
    (lambda m, lv: (0.5 * (lv.exp() - 1 - lv)).sum((1, 2, 3)), "mean^2"),
    (lambda m, lv: (0.5 * (m ** 2 + lv.exp() - 1 + lv)).sum((1, 2, 3)), "0.5 * (mean^2 + exp(logvar) - 1 - logvar)"),
])
def test_kl_catches_wrong_answers(wrong, hint):
    with pytest.raises(CheckFailed, match="Not yet") as info:
        checks.kl_divergence(wrong)
    assert hint in str(info.value)


def test_kl_not_implemented_gives_hint():
    def stub(mean, logvar):
        raise NotImplementedError
    with pytest.raises(CheckFailed, match="NotImplementedError"):
        checks.kl_divergence(stub)


# ----------------------------------------------------------------------------
# vae_loss

def _loss_variant(kind):
    import torch.nn.functional as F
    from minildm.vae import kl_divergence, reparameterize

    def fn(vae, images, eps):
        mean, logvar = vae.encode_distribution(images)
        z = reparameterize(mean, logvar, eps)
        recon = (vae.decoder(z) + 1) / 2
        w, kl = vae.config.kl_weight, kl_divergence(mean, logvar)
        if kind == "ok":
            return F.mse_loss(recon, images) + w * kl.mean()
        if kind == "ok with metrics":
            from minildm.vae import vae_loss
            return vae_loss(recon, images, mean, logvar, w)
        if kind == "decode the mean":
            return F.mse_loss((vae.decoder(mean) + 1) / 2, images) + w * kl.mean()
        if kind == "no kl":
            return F.mse_loss(recon, images)
        if kind == "no kl weight":
            return F.mse_loss(recon, images) + kl.mean()
        if kind == "kl summed over batch":
            return F.mse_loss(recon, images) + w * kl.sum()
        if kind == "[-1, 1] vs [0, 1]":
            return F.mse_loss(vae.decoder(z), images) + w * kl.mean()
        if kind == "summed mse":
            return (recon - images).pow(2).sum() + w * kl.mean()
        if kind == "vae.decode":
            return F.mse_loss(vae.decode(z), images) + w * kl.mean()
        if kind == "fresh noise":
            return F.mse_loss((vae.decoder(reparameterize(mean, logvar)) + 1) / 2, images) + w * kl.mean()
        if kind == "detached":
            return (F.mse_loss(recon, images) + w * kl.mean()).detach()
        if kind == "per image":
            return (recon - images).pow(2).flatten(1).mean(1) + w * kl
        raise AssertionError(kind)
    return fn


def test_vae_loss_accepts_reference(capsys):
    checks.vae_loss(_loss_variant("ok"))
    assert "Correct!" in capsys.readouterr().out
    checks.vae_loss(_loss_variant("ok with metrics"))


@pytest.mark.parametrize("kind, hint", [
    ("decode the mean", "decode a *sample*"),
    ("no kl", "the KL term is missing"),
    ("no kl weight", "kl_weight"),
    ("kl summed over batch", "average the per-image KL"),
    ("[-1, 1] vs [0, 1]", "(decoder(z) + 1) / 2"),
    ("summed mse", "not the sum"),
    ("vae.decode", "scale_factor"),
    ("fresh noise", "differs from"),
    ("detached", "no gradient"),
    ("per image", "one number"),
])
def test_vae_loss_catches_wrong_answers(kind, hint):
    with pytest.raises(CheckFailed, match="Not yet") as info:
        checks.vae_loss(_loss_variant(kind))
    assert hint in str(info.value)


def test_vae_loss_not_implemented_gives_hint():
    with pytest.raises(CheckFailed, match="NotImplementedError"):
        checks.vae_loss(lambda vae, images, eps: (_ for _ in ()).throw(NotImplementedError()))
