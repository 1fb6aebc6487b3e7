"""Samplers: DDIM(eta=1, all steps) == DDPM, DDIM(eta=0) deterministic and invertible,
guidance, img2img start, errors."""
import pytest
import torch

from minildm.samplers import (DDIMInversion, DDIMSampler, DDPMSampler, classifier_free_guidance, img2img_start,
                              perpendicular_negative_guidance,
                              sample)
from minildm.schedule import NoiseSchedule

torch.set_num_threads(1)
SCHEDULE = NoiseSchedule("linear", 1000)


def toy_eps_fn(xt, t):
    """A fixed, smooth, t-dependent 'network' so samplers can be compared exactly."""
    scale = (t.float() / 1000).view(-1, *[1] * (xt.ndim - 1))
    return torch.tanh(0.7 * xt + 0.3 * scale)


def test_ddpm_timesteps_and_ddim_spacing():
    assert DDPMSampler(SCHEDULE).timesteps.tolist() == list(range(999, -1, -1))
    ddim = DDIMSampler(SCHEDULE, num_steps=50)
    ts = ddim.timesteps
    assert ts.dtype == torch.long and len(ts) == 50 and ts[0] == 999 and ts[-1] == 19
    assert (ts[:-1] - ts[1:] == 20).all()
    assert DDIMSampler(SCHEDULE, 1000).timesteps.tolist() == list(range(999, -1, -1))
    assert DDIMSampler(SCHEDULE, 1).timesteps.tolist() == [999]


def test_ddim_can_start_later_with_the_same_spacing():
    """first_timestep = 979: trailing steps over 0..979 (the latent pipeline's start); bad values say what is allowed."""
    assert DDIMSampler(SCHEDULE, 10, first_timestep=979).timesteps.tolist() == [979, 881, 783, 685, 587, 489, 391,
                                                                                 293, 195, 97]
    assert DDIMSampler(SCHEDULE, 10, first_timestep=999).timesteps.tolist() == DDIMSampler(SCHEDULE, 10).timesteps.tolist()
    assert DDIMSampler(SCHEDULE, 980, first_timestep=979).timesteps.tolist() == list(range(979, -1, -1))
    inversion = DDIMInversion(SCHEDULE, 10, strength=0.5, first_timestep=979)
    assert inversion.timesteps.tolist() == [97, 195, 293, 391, 489]      # the same timesteps, walked up
    with pytest.raises(ValueError, match=r"first_timestep must be an int in 0\.\.999"):
        DDIMSampler(SCHEDULE, 10, first_timestep=1000)
    with pytest.raises(ValueError, match=r"num_steps must be an int in 1\.\.980"):
        DDIMSampler(SCHEDULE, 981, first_timestep=979)


@pytest.mark.parametrize("clip_x0", [True, False])
def test_ddim_eta1_all_steps_equals_ddpm_step(clip_x0):
    """Every single step of DDIM(eta=1, 1000 steps) is DDPM's posterior sampling step (same noise)."""
    ddpm = DDPMSampler(SCHEDULE, clip_x0=clip_x0)
    ddim = DDIMSampler(SCHEDULE, num_steps=1000, eta=1.0, clip_x0=clip_x0)
    xt = torch.randn(3, 3, 4, 4)
    for t in (999, 998, 500, 37, 1, 0):
        eps = toy_eps_fn(xt, torch.full((3,), t))
        a, a0 = ddpm.step(eps, t, xt, generator=torch.Generator().manual_seed(t))
        b, b0 = ddim.step(eps, t, xt, generator=torch.Generator().manual_seed(t))
        assert torch.allclose(a, b, atol=1e-5), t
        assert torch.allclose(a0, b0, atol=1e-6)


def test_ddpm_step_unclipped_is_algorithm_2():
    ddpm = DDPMSampler(SCHEDULE, clip_x0=False)
    xt, t = torch.randn(2, 2), 400
    eps = torch.randn(2, 2)
    z = torch.randn(2, 2, generator=torch.Generator().manual_seed(1))
    got, _ = ddpm.step(eps, t, xt, generator=torch.Generator().manual_seed(1))
    b, a, ab = SCHEDULE.beta[t], SCHEDULE.alpha[t], SCHEDULE.alpha_bar[t]
    want = (xt - b / (1 - ab).sqrt() * eps) / a.sqrt() + SCHEDULE.posterior_variance[t].sqrt() * z
    assert torch.allclose(got, want, atol=1e-5)


def test_full_chains_match_ddim_eta1_vs_ddpm():
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    a = sample(toy_eps_fn, DDPMSampler(SCHEDULE), x_T, torch.Generator().manual_seed(5), progress=False)
    b = sample(toy_eps_fn, DDIMSampler(SCHEDULE, 1000, eta=1.0), x_T, torch.Generator().manual_seed(5),
               progress=False)
    assert torch.allclose(a, b, atol=1e-4)


def test_ddim_eta0_is_deterministic_and_eta1_is_not():
    x_T = torch.randn(2, 3, 8, 8)
    ddim = DDIMSampler(SCHEDULE, 20, eta=0.0)
    a = sample(toy_eps_fn, ddim, x_T, torch.Generator().manual_seed(0), progress=False)
    b = sample(toy_eps_fn, ddim, x_T, torch.Generator().manual_seed(1), progress=False)
    assert torch.equal(a, b)
    noisy = DDIMSampler(SCHEDULE, 20, eta=1.0)
    c = sample(toy_eps_fn, noisy, x_T, torch.Generator().manual_seed(0), progress=False)
    d = sample(toy_eps_fn, noisy, x_T, torch.Generator().manual_seed(1), progress=False)
    e = sample(toy_eps_fn, noisy, x_T, torch.Generator().manual_seed(0), progress=False)
    assert not torch.allclose(c, d) and torch.equal(c, e)


def test_ddim_eta0_encode_then_decode_returns_the_image():
    """Run DDIM(eta=0) backwards (x0 -> x_T) with the true eps of a point mass, then forwards."""
    x0 = torch.rand(2, 3, 8, 8) * 1.6 - 0.8

    def eps_exact(xt, t):  # the ideal denoiser when the data is exactly x0
        ab = SCHEDULE.alpha_bar[t].view(-1, 1, 1, 1)
        return (xt - ab.sqrt() * x0) / (1 - ab).sqrt()

    ddim = DDIMSampler(SCHEDULE, 50, eta=0.0)
    ts = ddim.timesteps.flip(0).tolist()                 # ascending: 19, 39, ..., 999
    x, ab_prev = x0.clone(), torch.tensor(1.0)
    for t in ts:                                         # DDIM inversion: the same update read backwards
        ab = SCHEDULE.alpha_bar[t]
        eps = eps_exact(x, torch.full((2,), t)) if ab_prev < 1 else torch.zeros_like(x)
        x0_pred = (x - (1 - ab_prev).sqrt() * eps) / ab_prev.sqrt()
        x = ab.sqrt() * x0_pred + (1 - ab).sqrt() * eps if ab_prev < 1 else ab.sqrt() * x0 + (1 - ab).sqrt() * torch.randn_like(x0)
        ab_prev = ab
    decoded = sample(eps_exact, ddim, x, progress=False)
    assert torch.allclose(decoded, x0, atol=1e-3)


def test_trajectory_and_start_index():
    x_T = torch.randn(1, 2)
    x0, traj = sample(toy_eps_fn, DDIMSampler(SCHEDULE, 10), x_T, return_trajectory=True, progress=False)
    assert len(traj) == 11 and torch.equal(traj[0], x_T) and torch.equal(traj[-1], x0)
    _, traj = sample(toy_eps_fn, DDIMSampler(SCHEDULE, 10), x_T, start_index=4, return_trajectory=True,
                     progress=False)
    assert len(traj) == 7


def test_sampler_errors():
    with pytest.raises(ValueError, match="1..1000"):
        DDIMSampler(SCHEDULE, num_steps=0)
    with pytest.raises(ValueError, match="1..1000"):
        DDIMSampler(SCHEDULE, num_steps=1001)
    with pytest.raises(ValueError, match=r"eta must be in \[0, 1\]"):
        DDIMSampler(SCHEDULE, eta=1.5)
    with pytest.raises(ValueError, match=r"eta must be in \[0, 1\]"):
        DDIMSampler(SCHEDULE, eta=-0.1)
    with pytest.raises(ValueError, match="NoiseSchedule"):
        DDPMSampler("linear")
    with pytest.raises(ValueError, match="not one of"):
        DDIMSampler(SCHEDULE, 10).step(torch.zeros(1, 2), 500, torch.zeros(1, 2))
    with pytest.raises(ValueError, match="must equal xt shape"):
        DDPMSampler(SCHEDULE).step(torch.zeros(1, 3), 5, torch.zeros(1, 2))


class TinyConditional(torch.nn.Module):
    def forward(self, x, t, context=None, context_mask=None):
        pooled = (context * context_mask[..., None]).sum(1) if context_mask is not None else context.sum(1)
        return x * 0.5 + pooled.mean(1).view(-1, 1, 1, 1) + t.float().view(-1, 1, 1, 1) / 1000


def test_guidance_scales():
    model = TinyConditional()
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([1, 500, 999])
    cond, uncond = torch.randn(3, 5, 6), torch.randn(1, 5, 6)
    mask = torch.tensor([[1, 1, 1, 0, 0]] * 3, dtype=torch.bool)
    eps_c = model(x, t, cond, mask)
    eps_u = model(x, t, uncond.expand(3, -1, -1), torch.ones(3, 5, dtype=torch.bool))
    w1 = classifier_free_guidance(model, cond, uncond, 1.0, context_mask=mask)(x, t)
    assert torch.allclose(w1, eps_c, atol=1e-6)              # w = 1: the conditional model
    w0 = classifier_free_guidance(model, cond, uncond, 0.0, context_mask=mask)(x, t)
    assert torch.allclose(w0, eps_u, atol=1e-6)              # w = 0: the unconditional model
    w3 = classifier_free_guidance(model, cond, uncond, 3.0, context_mask=mask)(x, t)
    assert torch.allclose(w3, eps_u + 3 * (eps_c - eps_u), atol=1e-5)


class SpatialConditional(torch.nn.Module):
    """eps = 0.5 x + (the prompt's first 4 pooled numbers, one per channel) x a fixed 8x8 pattern:
    prompts differ along different directions, so a projection has something to remove."""
    pattern = torch.randn(1, 1, 8, 8, generator=torch.Generator().manual_seed(0))

    def forward(self, x, t, context=None, context_mask=None):
        weights = torch.ones(context.shape[:2]) if context_mask is None else context_mask.float()
        pooled = (context * weights[..., None]).sum(1)                            # (B, D)
        return x * 0.5 + pooled[:, :4, None, None] * self.pattern


def test_perpendicular_negative_guidance_pushes_only_across_the_prompt():
    """Perp-Neg: eps_u + w (eps_c - eps_u) - w_neg perp(eps_n - eps_u, eps_c - eps_u); the push is
    orthogonal to the prompt's direction, zero for a negative prompt equal to the empty one."""
    model, w, w_neg = SpatialConditional(), 3.0, 5.0
    x, t = torch.randn(3, 4, 8, 8), torch.tensor([1, 500, 999])
    cond, uncond, negative = torch.randn(3, 5, 6), torch.randn(1, 5, 6), torch.randn(3, 5, 6)
    ones = torch.ones(3, 5, dtype=torch.bool)
    eps_c, eps_u, eps_n = (model(x, t, c, ones) for c in (cond, uncond.expand(3, -1, -1), negative))
    guided = perpendicular_negative_guidance(model, cond, uncond, negative, w, w_neg)(x, t)
    push = (eps_u + w * (eps_c - eps_u) - guided) / w_neg                       # = perp(eps_n - eps_u, ...)
    along = (push.flatten(1) * (eps_c - eps_u).flatten(1)).sum(1)
    assert along.abs().max() < 1e-3 * (eps_c - eps_u).flatten(1).norm(dim=1).max()   # orthogonal to the prompt
    assert push.abs().max() > 0.1                                              # and not nothing
    d, c = (eps_n - eps_u).flatten(1), (eps_c - eps_u).flatten(1)
    expected = d - (d * c).sum(1, keepdim=True) / c.pow(2).sum(1, keepdim=True) * c
    torch.testing.assert_close(push.flatten(1), expected, atol=1e-4, rtol=1e-4)
    same = perpendicular_negative_guidance(model, cond, uncond, uncond.expand(3, -1, -1), w, w_neg)(x, t)
    torch.testing.assert_close(same, classifier_free_guidance(model, cond, uncond, w)(x, t), atol=1e-5, rtol=1e-5)


def test_guidance_uses_one_batched_forward():
    calls = []

    class Counting(TinyConditional):
        def forward(self, x, t, context=None, context_mask=None):
            calls.append(x.shape[0])
            return super().forward(x, t, context, context_mask)

    eps_fn = classifier_free_guidance(Counting(), torch.randn(2, 3, 4), torch.randn(2, 3, 4), 7.5)
    eps_fn(torch.randn(2, 4, 8, 8), torch.tensor([3, 4]))
    assert calls == [4]


def test_img2img_start_edges():
    ddim = DDIMSampler(SCHEDULE, 50)
    x0 = torch.rand(2, 3, 8, 8) * 2 - 1
    xt, start = img2img_start(ddim, x0, 0.0)
    assert torch.equal(xt, x0) and start == 50
    noise = torch.randn_like(x0)
    xt, start = img2img_start(ddim, x0, 1.0, noise=noise)
    assert start == 0 and torch.allclose(xt, SCHEDULE.q_sample(x0, torch.full((2,), 999), noise))
    xt, start = img2img_start(ddim, x0, 0.6, noise=noise)
    assert start == 20 and torch.allclose(xt, SCHEDULE.q_sample(x0, torch.full((2,), int(ddim.timesteps[20])), noise))
    a, _ = img2img_start(ddim, x0, 0.5, generator=torch.Generator().manual_seed(3))
    b, _ = img2img_start(ddim, x0, 0.5, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    for bad in (-0.1, 1.01, "0.5", float("nan")):
        with pytest.raises(ValueError, match=r"strength must be a number in \[0, 1\]"):
            img2img_start(ddim, x0, bad)
    out = sample(toy_eps_fn, ddim, x0, start_index=50, progress=False)
    assert torch.equal(out, x0)                              # strength 0: nothing to run


def test_callback_sees_every_step_and_can_replace_xt():
    """sample(..., callback=) is the hook inpainting uses: called once per step with the new x_t
    and that step's x0 guess; a returned tensor replaces x_t."""
    sampler = DDIMSampler(SCHEDULE, num_steps=5)
    xT = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    eps_fn = lambda x, t: 0.5 * x
    seen = []
    plain = sample(eps_fn, sampler, xT, progress=False,
                   callback=lambda i, t, xt, x0: seen.append((i, t, xt.shape, x0.shape)))
    assert [s[:2] for s in seen] == list(enumerate(sampler.timesteps.tolist()))
    assert all(s[2] == s[3] == xT.shape for s in seen)
    assert torch.equal(plain, sample(eps_fn, sampler, xT, progress=False))   # returning None changes nothing
    zeroed = sample(eps_fn, sampler, xT, progress=False, callback=lambda i, t, xt, x0: torch.zeros_like(xt))
    assert torch.equal(zeroed, torch.zeros_like(xT))                          # the last replacement is returned


def test_clip_x0_accepts_a_range():
    xt, eps = torch.randn(2, 3, 4, 4) * 50, torch.randn(2, 3, 4, 4)
    for clip, bound in ((True, 1.0), (3.0, 3.0)):
        assert DDIMSampler(SCHEDULE, 10, clip_x0=clip).step(eps, 999, xt)[1].abs().max() <= bound
    assert DDIMSampler(SCHEDULE, 10, clip_x0=None).step(eps, 999, xt)[1].abs().max() > 3.0
    with pytest.raises(ValueError, match="clip_x0 must be"):
        DDIMSampler(SCHEDULE, 10, clip_x0=-2.0)
