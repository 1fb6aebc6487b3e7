"""The forward process: closed form vs iterated steps, posterior vs Bayes' rule, schedules."""
import math

import pytest
import torch

from minildm.schedule import NoiseSchedule, cosine_betas, extract, linear_betas

torch.set_num_threads(1)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_alpha_bar_is_cumulative_product(kind):
    s = NoiseSchedule(kind, 1000)
    assert s.beta.shape == s.alpha.shape == s.alpha_bar.shape == (1000,)
    assert s.beta.dtype == torch.float32
    assert torch.allclose(s.alpha, 1 - s.beta)
    assert torch.allclose(s.alpha_bar, torch.cumprod(s.alpha.double(), 0).float(), rtol=1e-5)
    assert (s.alpha_bar[1:] < s.alpha_bar[:-1]).all()      # information only ever goes away
    assert s.alpha_bar[0] > 0.99 and s.alpha_bar[-1] < 1e-4  # starts clean, ends as noise


def test_golden_values():
    lin = NoiseSchedule("linear")
    assert lin.beta[0].item() == pytest.approx(1e-4) and lin.beta[-1].item() == pytest.approx(0.02)
    assert lin.alpha_bar[-1].item() == pytest.approx(4.036e-5, rel=1e-2)
    cos = NoiseSchedule("cosine")
    # alpha_bar(t) = f(t+1)/f(0), f = cos^2(pi/2 (t/T + s)/(1 + s)) at the middle step
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    assert cos.alpha_bar[499].item() == pytest.approx(f(0.5) / f(0), rel=1e-4)
    assert linear_betas(500)[-1].item() == pytest.approx(0.04)  # rescaled for T = 500
    assert cosine_betas(1000).max().item() <= 0.999


def test_snr_is_alpha_bar_over_one_minus_alpha_bar():
    s = NoiseSchedule()
    t = torch.tensor([0, 10, 500, 999])
    assert torch.allclose(s.snr(t), s.alpha_bar[t] / (1 - s.alpha_bar[t]))
    assert s.snr().shape == (1000,)
    assert (s.snr()[1:] < s.snr()[:-1]).all()


def test_extract_broadcasts_per_example():
    a = torch.arange(10.0)
    out = extract(a, torch.tensor([3, 7]), (2, 3, 4, 4))
    assert out.shape == (2, 1, 1, 1)
    assert out.flatten().tolist() == [3.0, 7.0]
    assert extract(a, torch.tensor([1]), (1, 2)).shape == (1, 1)


@pytest.mark.parametrize("shape", [(4, 2), (4, 3, 8, 8), (4, 4, 8, 8)])
def test_q_sample_closed_form(shape):
    s = NoiseSchedule()
    x0, noise = torch.randn(shape), torch.randn(shape)
    t = torch.tensor([0, 5, 500, 999])
    xt = s.q_sample(x0, t, noise)
    assert xt.shape == x0.shape
    ab = s.alpha_bar[t].view(-1, *[1] * (len(shape) - 1))
    assert torch.allclose(xt, ab.sqrt() * x0 + (1 - ab).sqrt() * noise)
    # each example uses its own t: example 0 is nearly clean, example 3 nearly noise
    assert (xt[0] - x0[0]).abs().max() < 0.05
    assert (xt[3] - noise[3]).abs().max() < 0.05


def test_q_sample_equals_iterated_single_steps_statistically():
    """Closed form q(x_t | x0) vs t+1 single noising steps, on many samples (DDPM eq. 2 -> eq. 4)."""
    s = NoiseSchedule("linear", 100)
    torch.manual_seed(0)
    n, k = 20000, 60
    x0 = torch.full((n, 2), 0.8)
    x0[:, 1] = -0.5
    x = x0.clone()
    for t in range(k + 1):
        x = s.q_step(x, torch.full((n,), t))
    ab = s.alpha_bar[k]
    mean, std = ab.sqrt() * x0[0], (1 - ab).sqrt()
    assert torch.allclose(x.mean(0), mean, atol=0.02)
    assert torch.allclose(x.std(0), torch.stack([std, std]), atol=0.02)
    closed = s.q_sample(x0, torch.full((n,), k))
    assert torch.allclose(closed.mean(0), x.mean(0), atol=0.03)
    assert torch.allclose(closed.std(0), x.std(0), atol=0.03)


def test_q_sample_equals_iterated_steps_exactly_in_variance():
    """The per-step recursion of the variance: v_t = alpha_t v_{t-1} + beta_t gives 1 - alpha_bar_t."""
    s = NoiseSchedule("cosine", 1000)
    v, m = torch.tensor(0.0, dtype=torch.float64), torch.tensor(1.0, dtype=torch.float64)
    for t in range(1000):
        beta = s.beta[t].double()
        m, v = (1 - beta).sqrt() * m, (1 - beta) * v + beta
        if t in (0, 10, 500, 999):
            assert v.item() == pytest.approx(1 - s.alpha_bar[t].item(), abs=1e-5)
            assert m.item() == pytest.approx(s.alpha_bar[t].sqrt().item(), abs=1e-5)


def test_posterior_matches_bayes_rule_numerically():
    """q(x_{t-1}|x_t, x0) ∝ q(x_t|x_{t-1}) q(x_{t-1}|x0): compare with a grid over x_{t-1} (1-D)."""
    s = NoiseSchedule("linear", 1000)
    x0, xt = torch.tensor([[0.7]]), torch.tensor([[0.2]])
    for t in (1, 50, 400, 999):
        grid = torch.linspace(-4, 4, 200001, dtype=torch.float64)
        beta, ab_prev = s.beta[t].double(), s.alpha_bar[t - 1].double()
        log_lik = -(xt.double() - (1 - beta).sqrt() * grid) ** 2 / (2 * beta)
        log_prior = -(grid - ab_prev.sqrt() * x0.double()) ** 2 / (2 * (1 - ab_prev))
        w = torch.softmax((log_lik + log_prior).flatten(), 0)
        mean_num = (w * grid).sum()
        var_num = (w * (grid - mean_num) ** 2).sum()
        mean, var = s.posterior_mean_variance(x0, xt, torch.tensor([t]))
        assert mean.item() == pytest.approx(mean_num.item(), abs=1e-4)
        assert var.item() == pytest.approx(var_num.item(), rel=1e-3)


def test_posterior_formulas_and_t0():
    s = NoiseSchedule()
    x0, xt = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    t = torch.tensor([0, 1, 999])
    mean, var = s.posterior_mean_variance(x0, xt, t)
    assert mean.shape == x0.shape and var.shape == (3, 1, 1, 1)
    assert torch.allclose(mean[0], x0[0], atol=1e-6)       # at t = 0 the posterior is x0
    assert var[0].item() == 0.0
    ab, ab_prev, b = s.alpha_bar[999], s.alpha_bar[998], s.beta[999]
    expect = ab_prev.sqrt() * b / (1 - ab) * x0[2] + (1 - b).sqrt() * (1 - ab_prev) / (1 - ab) * xt[2]
    assert torch.allclose(mean[2], expect, atol=1e-6)
    assert var[2].item() == pytest.approx((b * (1 - ab_prev) / (1 - ab)).item(), rel=1e-5)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="linear, cosine"):
        NoiseSchedule("quadratic")
    with pytest.raises(ValueError, match="num_timesteps"):
        NoiseSchedule("linear", 1)
    s = NoiseSchedule("linear", 100)
    with pytest.raises(ValueError, match="0..99"):
        s.q_sample(torch.zeros(2, 2), torch.tensor([0, 100]))
    with pytest.raises(ValueError, match="integers"):
        s.q_sample(torch.zeros(2, 2), torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="noise shape"):
        s.q_sample(torch.zeros(2, 2), torch.tensor([0, 1]), torch.zeros(2, 3))


def test_to_returns_a_copy():
    s = NoiseSchedule()
    s2 = s.to("cpu")
    assert s2 is not s and s2.alpha_bar.device.type == "cpu" and s2.num_timesteps == 1000
    assert torch.equal(s2.beta, s.beta)
