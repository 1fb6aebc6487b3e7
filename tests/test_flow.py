"""Rectified flow: the objective by hand, Euler/Heun against the exact velocity of Gaussian data,
guidance on v, the flow img2img start, float timesteps in both denoisers, errors."""
import math

import pytest
import torch

from minildm.dit import DiT, DiTConfig
from minildm.objectives import FLOW_TIMESTEPS, flow_interpolate, flow_matching_loss, sample_flow_time
from minildm.samplers import FlowEulerSampler, FlowHeunSampler, classifier_free_guidance, img2img_start, sample
from minildm.unet import UNet, UNetConfig

torch.set_num_threads(1)
MU, SIGMA = 1.5, 0.5     # the "data": x0 ~ N(MU, SIGMA^2), each coordinate


def gaussian_velocity(x, s):
    """The exact marginal velocity E[eps - x0 | x_s = x] for x0 ~ N(mu, sigma^2), eps ~ N(0, 1).

    x_s = (1 - s) x0 + s eps and eps - x0 are jointly Gaussian, so the conditional mean is linear:
        E[eps - x0] = -mu,  Cov(eps - x0, x_s) = s - (1 - s) sigma^2,  Var(x_s) = (1 - s)^2 sigma^2 + s^2
        v(x, s) = -mu + (s - (1 - s) sigma^2) / ((1 - s)^2 sigma^2 + s^2) * (x - (1 - s) mu)
    It carries z ~ N(0, 1) at s = 1 to mu + sigma z at s = 0 along x_s = (1 - s) mu + std(s) z.
    """
    s = s.view(-1, *[1] * (x.ndim - 1))
    return -MU + (s - (1 - s) * SIGMA ** 2) / ((1 - s) ** 2 * SIGMA ** 2 + s ** 2) * (x - (1 - s) * MU)


def exact_v_fn(x, t):
    assert t.dtype == torch.float32                      # flow samplers hand the network float t = 1000 s
    return gaussian_velocity(x, t / FLOW_TIMESTEPS)


def test_loss_target_and_value_by_hand():
    x0, eps = torch.tensor([[1.0, -2.0]]), torch.tensor([[0.5, 0.5]])
    seen = {}

    def model(xs, t):
        seen["xs"], seen["t"] = xs, t
        return xs

    loss = flow_matching_loss(model, x0, s=torch.tensor([0.25]), noise=eps)
    # x_s = 0.75 * [1, -2] + 0.25 * [0.5, 0.5] = [0.875, -1.375];  v = eps - x0 = [-0.5, 2.5]
    assert torch.allclose(seen["xs"], torch.tensor([[0.875, -1.375]]))
    assert seen["t"].dtype == torch.float32 and seen["t"].tolist() == [250.0]
    assert loss.item() == pytest.approx(((0.875 + 0.5) ** 2 + (-1.375 - 2.5) ** 2) / 2)   # 8.453125
    zero = flow_matching_loss(lambda xs, t: torch.zeros_like(xs), x0, s=torch.tensor([0.25]), noise=eps)
    assert zero.item() == pytest.approx((0.5 ** 2 + 2.5 ** 2) / 2)                          # mean of v^2
    assert torch.equal(flow_interpolate(x0, 0.0, eps), x0) and torch.equal(flow_interpolate(x0, 1.0, eps), eps)


def test_loss_passes_context_and_is_reproducible():
    calls = []

    def model(xs, t, context=None, context_mask=None):
        calls.append((context, context_mask))
        return xs * 0.3

    x0, context, mask = torch.randn(4, 2), torch.randn(4, 3, 5), torch.ones(4, 3, dtype=torch.bool)
    a = flow_matching_loss(model, x0, context, mask, generator=torch.Generator().manual_seed(1),
                           timestep_sampling="logit_normal")
    b = flow_matching_loss(model, x0, context, mask, generator=torch.Generator().manual_seed(1),
                           timestep_sampling="logit_normal")
    assert torch.equal(a, b) and calls[0][0] is context and calls[0][1] is mask


def test_timestep_sampling_densities():
    g = torch.Generator().manual_seed(0)
    uniform = sample_flow_time(20000, "uniform", g)
    logit = sample_flow_time(20000, "logit_normal", g)
    assert 0 < uniform.min() and uniform.max() < 1 and uniform.mean().item() == pytest.approx(0.5, abs=0.01)
    # logit-normal: P(0.25 < s < 0.75) = P(|n| < log 3) = erf(log 3 / sqrt 2) = 0.728 (uniform: 0.5)
    middle = ((logit > 0.25) & (logit < 0.75)).float().mean().item()
    assert middle == pytest.approx(math.erf(math.log(3) / math.sqrt(2)), abs=0.015)
    assert logit.mean().item() == pytest.approx(0.5, abs=0.01)
    with pytest.raises(ValueError, match="timestep_sampling must be one of uniform, logit_normal"):
        flow_matching_loss(lambda x, t: x, torch.randn(2, 2), timestep_sampling="cosine")


def test_gaussian_velocity_is_the_regression_target():
    """The derivation, checked by data: least squares of (eps - x0) on x_s gives the closed form."""
    g = torch.Generator().manual_seed(0)
    x0 = MU + SIGMA * torch.randn(400_000, generator=g, dtype=torch.float64)
    eps = torch.randn(400_000, generator=g, dtype=torch.float64)
    for s in (0.2, 0.7):
        xs, target = (1 - s) * x0 + s * eps, eps - x0
        slope = ((xs - xs.mean()) * (target - target.mean())).mean() / xs.var()      # fitted at xs.mean()
        at = torch.tensor([(1 - s) * MU, (1 - s) * MU + 1], dtype=torch.float64)   # E[x_s] and one further
        exact = gaussian_velocity(at, torch.tensor([s, s], dtype=torch.float64))
        assert target.mean().item() == pytest.approx(exact[0].item(), abs=0.01)      # both -mu
        assert slope.item() == pytest.approx((exact[1] - exact[0]).item(), abs=0.02)


def test_euler_and_heun_land_on_the_data_distribution():
    z = torch.randn(4096, 1, generator=torch.Generator().manual_seed(0))
    exact = MU + SIGMA * z                                                     # where the exact flow takes z

    def endpoint(sampler):
        return sample(exact_v_fn, sampler, z.clone(), progress=False)

    many = endpoint(FlowEulerSampler(500))                                     # Euler's error ~ 3 / N here
    assert (many - exact).abs().max() < 0.01
    assert many.mean().item() == pytest.approx(MU, abs=0.03) and many.std().item() == pytest.approx(SIGMA, abs=0.01)
    # Heun, 8 steps = 16 network calls: closer than Euler with 100 calls; Euler with 16 is far off
    heun = endpoint(FlowHeunSampler(8))
    assert (heun - exact).abs().max() < 0.015 < 0.025 < (endpoint(FlowEulerSampler(100)) - exact).abs().max()
    assert (endpoint(FlowEulerSampler(16)) - exact).abs().max() > 0.1
    assert heun.mean().item() == pytest.approx(MU, abs=0.03) and heun.std().item() == pytest.approx(SIGMA, abs=0.01)


def test_euler_step_by_hand_and_equals_ddim_in_flow_coordinates():
    sampler = FlowEulerSampler(4)
    assert sampler.timesteps.dtype == torch.float32 and sampler.timesteps.tolist() == [1000.0, 750.0, 500.0, 250.0]
    x, v = torch.randn(3, 2), torch.randn(3, 2)
    x_next, x0_pred = sampler.step(v, 750.0, x)
    assert torch.allclose(x_next, x - 0.25 * v) and torch.allclose(x0_pred, x - 0.75 * v)
    # DDIM(eta = 0) with alpha = 1 - s, sigma = s: x_next = alpha' x0_pred + sigma' eps_pred
    eps_pred = x + (1 - 0.75) * v
    assert torch.allclose(x_next, (1 - 0.5) * x0_pred + 0.5 * eps_pred, atol=1e-6)
    heun = FlowHeunSampler(2)
    assert heun.timesteps.tolist() == [1000.0, 500.0, 500.0, 0.0]


def test_guidance_combines_velocities():
    torch.manual_seed(0)
    model = DiT(DiTConfig(width=32, depth=1, num_heads=2, context_dim=8, attention="joint")).eval()
    for p in model.parameters():                                    # a fresh DiT predicts 0: wake it up
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([300.0, 300.0])
    context, uncond = torch.randn(2, 5, 8), torch.randn(1, 5, 8)
    v_c, v_u = model(x, t, context), model(x, t, uncond.expand(2, -1, -1))
    with torch.no_grad():
        assert torch.allclose(classifier_free_guidance(model, context, uncond, 1.0)(x, t), v_c, atol=1e-5)
        assert torch.allclose(classifier_free_guidance(model, context, uncond, 3.0)(x, t),
                              v_u + 3.0 * (v_c - v_u), atol=1e-5)
    out = sample(classifier_free_guidance(model, context, uncond, 2.0), FlowHeunSampler(2), x, progress=False)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("sampler_class", [FlowEulerSampler, FlowHeunSampler])
def test_flow_img2img_start(sampler_class):
    sampler = sampler_class(50)
    x0, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    xs, start = img2img_start(sampler, x0, 0.6, noise=noise)
    assert torch.allclose(xs, 0.4 * x0 + 0.6 * noise, atol=1e-6)       # s = strength on the straight line
    assert sampler.timesteps[start].item() == pytest.approx(600.0)      # the first step starts at s = 0.6
    assert start == (20 if sampler_class is FlowEulerSampler else 40)   # Heun: two entries per step
    xs, start = img2img_start(sampler, x0, 1.0, noise=noise)
    assert start == 0 and torch.equal(xs, noise)
    xs, start = img2img_start(sampler, x0, 0.0, noise=noise)
    assert torch.equal(xs, x0) and torch.equal(sample(exact_v_fn, sampler, xs, start_index=start,
                                                      progress=False), x0)


@pytest.mark.parametrize("sampler_class", [FlowEulerSampler, FlowHeunSampler])
@pytest.mark.parametrize("bad", [0, -3, 2.5, True, 1001, "8"])
def test_bad_step_counts_give_one_line_errors(sampler_class, bad):
    with pytest.raises(ValueError, match=r"num_steps must be an int in 1\.\.1000") as err:
        sampler_class(bad)
    assert "\n" not in str(err.value) and repr(bad) in str(err.value)


@pytest.mark.parametrize("make", [
    lambda: UNet(UNetConfig(in_channels=4, out_channels=4, base_channels=16, channel_mults=(1, 2),
                            attention_levels=(False, True), num_heads=2, context_dim=8)),
    lambda: DiT(DiTConfig(width=32, depth=1, num_heads=2, context_dim=8)),
], ids=["unet", "dit"])
def test_denoisers_take_float_t_and_train_on_the_flow_loss(make):
    torch.manual_seed(0)
    model = make()
    for p in model.parameters():
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(2, 4, 8, 8)
    context = torch.randn(2, 5, 8)
    assert torch.allclose(model(x, torch.tensor([7, 7]), context), model(x, torch.tensor([7.0, 7.0]), context))
    assert not torch.allclose(model(x, torch.tensor([7.0, 7.0]), context), model(x, torch.tensor([7.5, 7.5]), context))
    loss = flow_matching_loss(model, x, context, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
