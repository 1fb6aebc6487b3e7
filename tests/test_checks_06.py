"""The lesson 06 checks pass the reference and catch typical wrong answers."""
import pytest
import torch

from minildm import checks
from minildm.checks import CheckFailed
from minildm.samplers import img2img_start


def reference_guided_eps(eps_uncond, eps_cond, guidance_scale):
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)


def not_implemented(*args):
    raise NotImplementedError


def test_guided_eps_passes_reference(capsys):
    checks.guided_eps(reference_guided_eps)
    checks.guided_eps(lambda u, c, w: (1 - w) * u + w * c)     # the same thing, written differently
    assert "Correct!" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, hint", [
    (lambda u, c, w: c + w * (u - c), "started from eps_cond"),
    (lambda u, c, w: c + w * (c - u), "w \\+ 1. convention"),
    (lambda u, c, w: w * (c - u), "add it to eps_uncond"),
    (lambda u, c, w: w * c, "scaled the conditional prediction alone"),
    (lambda u, c, w: c, "unchanged"),
    (lambda u, c, w: (u + c) / 2, "averaged"),
    (lambda u, c, w: u + w * (c - u).mean(), "eps_uncond \\+ 3.0"),
    (lambda u, c, w: (u + w * (c - u))[0], "shape"),
    (lambda u, c, w: (u + w * (c - u)).tolist(), "torch.Tensor"),
    (not_implemented, "NotImplementedError"),
])
def test_guided_eps_catches(wrong, hint):
    with pytest.raises(CheckFailed, match=hint):
        checks.guided_eps(wrong)


def reference_start(sampler, z0, strength, noise):
    return img2img_start(sampler, z0, strength, noise=noise)


def written_out_start(sampler, z0, strength, noise):
    num = len(sampler.timesteps)
    start_index = num - round(strength * num)
    if start_index == num:
        return z0, start_index
    t = sampler.timesteps[start_index]
    ab = sampler.schedule.alpha_bar[t]
    return ab.sqrt() * z0 + (1 - ab).sqrt() * noise, start_index


def test_sdedit_start_passes_reference(capsys):
    checks.sdedit_start(reference_start)
    checks.sdedit_start(written_out_start)
    assert capsys.readouterr().out.count("Correct!") == 2


def inverted_index(sampler, z0, strength, noise):
    zt, start = img2img_start(sampler, z0, strength, noise=noise)
    return zt, len(sampler.timesteps) - start


def index_as_timestep(sampler, z0, strength, noise):
    num = len(sampler.timesteps)
    start = num - round(strength * num)
    if start == num:
        return z0, start
    ab = sampler.schedule.alpha_bar[start]
    return ab.sqrt() * z0 + (1 - ab).sqrt() * noise, start


def swapped_roots(sampler, z0, strength, noise):
    zt, start = written_out_start(sampler, z0, strength, noise)
    if start == len(sampler.timesteps):
        return zt, start
    ab = sampler.schedule.alpha_bar[sampler.timesteps[start]]
    return (1 - ab).sqrt() * z0 + ab.sqrt() * noise, start


def no_roots(sampler, z0, strength, noise):
    zt, start = written_out_start(sampler, z0, strength, noise)
    if start == len(sampler.timesteps):
        return zt, start
    ab = sampler.schedule.alpha_bar[sampler.timesteps[start]]
    return ab * z0 + (1 - ab) * noise, start


def noise_at_strength_zero(sampler, z0, strength, noise):
    num = len(sampler.timesteps)
    start = num - round(strength * num)
    t = sampler.timesteps[min(start, num - 1)]
    ab = sampler.schedule.alpha_bar[t]
    return ab.sqrt() * z0 + (1 - ab).sqrt() * noise, start


def continuous_t(sampler, z0, strength, noise):
    num = len(sampler.timesteps)
    start = num - round(strength * num)
    if start == num:
        return z0, start
    t = int(strength * (sampler.schedule.num_timesteps - 1))     # not on the sampler's grid
    ab = sampler.schedule.alpha_bar[t]
    return ab.sqrt() * z0 + (1 - ab).sqrt() * noise, start


def fresh_noise(sampler, z0, strength, noise):
    return img2img_start(sampler, z0, strength, noise=torch.randn_like(z0))


def truncating(sampler, z0, strength, noise):
    num = len(sampler.timesteps)
    start = num - int(strength * num * 0.99)                      # floor instead of round
    zt, _ = img2img_start(sampler, z0, strength, noise=noise)
    return zt, start


@pytest.mark.parametrize("wrong, hint", [
    (inverted_index, "number of steps to RUN"),
    (index_as_timestep, "index"),
    (swapped_roots, "swapped"),
    (no_roots, "square roots"),
    (noise_at_strength_zero, "strength 0"),
    (continuous_t, "sampler.timesteps\\[start_index\\]"),
    (fresh_noise, "noise given"),
    (truncating, "start_index should be"),
    (lambda s, z0, st, n: z0, "pair"),
    (lambda s, z0, st, n: (z0, "0"), "whole number"),
    (not_implemented, "NotImplementedError"),
])
def test_sdedit_start_catches(wrong, hint):
    with pytest.raises(CheckFailed, match=hint):
        checks.sdedit_start(wrong)
