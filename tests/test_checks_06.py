"""The lesson 06 checks pass the reference and catch typical wrong answers."""
import re
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


# ----------------------------------------------------------------------------
# cross-attention

def attention_variant(kind):
    import math

    def fn(attn, x, context, mask):
        B, N, C = x.shape
        nh = 1 if kind in ("one head", "one head, head scale") else attn.num_heads
        hs = C // nh
        source = x if kind == "self-attention" else context
        q = attn.to_q(x).view(B, N, nh, hs).transpose(1, 2)
        k = attn.to_k(source).view(B, -1, nh, hs).transpose(1, 2)
        v = attn.to_v(source).view(B, -1, nh, hs).transpose(1, 2)
        scale = {"no scale": 1.0, "width scale": 1 / math.sqrt(C),
                 "one head, head scale": 1 / math.sqrt(C // attn.num_heads)}.get(kind, 1 / math.sqrt(hs))
        scores = q @ k.transpose(-2, -1) * scale
        if kind != "no mask":
            keep = ~mask if kind == "inverted mask" else mask
            scores = scores.masked_fill(~keep[:, None, None, :], float("-inf"))
        weights = scores.softmax(dim=-2 if kind == "softmax over queries" else -1).nan_to_num()
        y = (weights @ v).transpose(1, 2).reshape(B, N, C)
        return y if kind == "no to_out" else attn.to_out(y)
    return fn


def test_cross_attention_accepts_reference(capsys):
    checks.cross_attention(attention_variant("ok"))
    checks.cross_attention(lambda attn, x, context, mask: attn(x, context, mask))
    assert "Correct!" in capsys.readouterr().out


@pytest.mark.parametrize("kind, hint", [
    ("no scale", "1 / sqrt(head size) before the softmax"),
    ("width scale", "not by 1 / sqrt of the full width"),
    ("no mask", "padding tokens must get no attention"),
    ("inverted mask", "True for REAL tokens"),
    ("softmax over queries", "softmax goes over the tokens"),
    ("one head, head scale", "split into attn.num_heads = 4 heads"),
    ("one head", "one head of the full width"),
    ("no to_out", "attn.to_out"),
    ("self-attention", "keys and values from the context"),
])
def test_cross_attention_catches(kind, hint):
    with pytest.raises(CheckFailed, match=re.escape(hint)):
        checks.cross_attention(attention_variant(kind))


def test_cross_attention_stub_gives_hint():
    with pytest.raises(CheckFailed, match="NotImplementedError"):
        checks.cross_attention(not_implemented)
