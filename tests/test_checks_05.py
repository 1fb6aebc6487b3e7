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
# latent_numbers

def test_latent_numbers(capsys):
    checks.latent_numbers(256)
    assert "Correct!" in capsys.readouterr().out
    checks.latent_numbers(lambda: 4 * 8 * 8)
    for wrong, hint in [(3072, "pixel count"), (64, "multiply"), (256.0, "whole number"),
                        (lambda: 3 * 32 * 32, "pixel count")]:
        with pytest.raises(CheckFailed, match=hint):
            checks.latent_numbers(wrong)


def test_latent_numbers_not_implemented_gives_hint():
    def stub():
        raise NotImplementedError
    with pytest.raises(CheckFailed, match="NotImplementedError"):
        checks.latent_numbers(stub)
