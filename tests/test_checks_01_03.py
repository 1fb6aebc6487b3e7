"""Lesson checks 01-03 pass the reference solutions and catch typical wrong answers with a useful hint."""
import re

import pytest
import torch

from minildm import checks
from minildm.checks import CheckFailed

torch.set_num_threads(1)


def col(values, x):
    """(B,) -> (B, 1, ..., 1) like x."""
    return values.view(-1, *[1] * (x.ndim - 1))


# ---------------------------------------------------------------- lesson 01: q_sample
def q_ok(s, x0, t, noise):
    ab = col(s.alpha_bar[t], x0)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * noise


Q_WRONG = {
    "square root": lambda s, x0, t, n: col(s.alpha_bar[t], x0) * x0 + (1 - col(s.alpha_bar[t], x0)) * n,
    "alpha_t (one step)": lambda s, x0, t, n: col(s.alpha[t], x0).sqrt() * x0 + (1 - col(s.alpha[t], x0)).sqrt() * n,
    "broadcasting": lambda s, x0, t, n: s.alpha_bar[t].sqrt() * x0 + (1 - s.alpha_bar[t]).sqrt() * n,
    "swapped": lambda s, x0, t, n: (1 - col(s.alpha_bar[t], x0)).sqrt() * x0 + col(s.alpha_bar[t], x0).sqrt() * n,
    "0-based": lambda s, x0, t, n: q_ok(s, x0, (t - 1).clamp(min=0), n),
    "differs": lambda s, x0, t, n: q_ok(s, x0, t, n) + 0.1,
    "NotImplementedError": lambda s, x0, t, n: (_ for _ in ()).throw(NotImplementedError()),
    "shape": lambda s, x0, t, n: q_ok(s, x0, t, n)[0],
    "torch.Tensor": lambda s, x0, t, n: q_ok(s, x0, t, n).tolist(),
}


def test_q_sample_check_passes_reference(capsys):
    checks.q_sample(q_ok)
    assert "Correct!" in capsys.readouterr().out


@pytest.mark.parametrize("hint", list(Q_WRONG))
def test_q_sample_check_catches(hint):
    with pytest.raises(CheckFailed, match=re.escape(hint)):
        checks.q_sample(Q_WRONG[hint])


def test_q_sample_crash_becomes_broadcasting_hint():
    def crashes(s, x0, t, noise):  # (B,) against (B, 2) with B = 5 raises a RuntimeError
        return s.alpha_bar[t].sqrt() * x0[:, :, None, None].squeeze(-1) + noise
    with pytest.raises(CheckFailed):
        checks.q_sample(crashes)


# ---------------------------------------------------------------- lesson 01: alpha_bar
AB_WRONG = {
    "running product of alpha": lambda b: 1 - b,
    "multiplied the betas": lambda b: torch.cumprod(b, 0),
    "1 - cumprod": lambda b: 1 - torch.cumprod(b, 0),
    "cumsum": lambda b: 1 - torch.cumsum(b, 0),
    "shifted by one": lambda b: torch.cat([torch.ones(1), torch.cumprod(1 - b, 0)[:-1]]),
    "ALL alphas": lambda b: torch.full_like(b, float(torch.prod(1 - b))),
    "NotImplementedError": lambda b: (_ for _ in ()).throw(NotImplementedError()),
}


def test_alpha_bar_check(capsys):
    checks.alpha_bar_from_betas(lambda b: torch.cumprod(1 - b, 0))
    assert "Correct!" in capsys.readouterr().out


@pytest.mark.parametrize("hint", list(AB_WRONG))
def test_alpha_bar_check_catches(hint):
    with pytest.raises(CheckFailed, match=re.escape(hint)):
        checks.alpha_bar_from_betas(AB_WRONG[hint])


# ---------------------------------------------------------------- lesson 02: training loss
def loss_ok(model, s, x0, t, noise):
    xt = s.q_sample(x0, t, noise)
    return ((model(xt, t) - noise) ** 2).mean()


def _xt(s, x0, t, n):
    return s.q_sample(x0, t, n)


LOSS_WRONG = {
    "not x0": lambda m, s, x0, t, n: ((m(_xt(s, x0, t, n), t) - x0) ** 2).mean(),
    "should see the noised": lambda m, s, x0, t, n: ((m(x0, t) - n) ** 2).mean(),
    "square roots": lambda m, s, x0, t, n: ((m(s.alpha_bar[t][:, None] * x0 + (1 - s.alpha_bar[t][:, None]) * n, t)
                                             - n) ** 2).mean(),
    "not the sum": lambda m, s, x0, t, n: ((m(_xt(s, x0, t, n), t) - n) ** 2).sum(),
    "absolute error": lambda m, s, x0, t, n: (m(_xt(s, x0, t, n), t) - n).abs().mean(),
    "RMSE": lambda m, s, x0, t, n: ((m(_xt(s, x0, t, n), t) - n) ** 2).mean().sqrt(),
    "pass the timesteps": lambda m, s, x0, t, n: ((m(_xt(s, x0, t, n), torch.zeros_like(t)) - n) ** 2).mean(),
    "one number": lambda m, s, x0, t, n: ((m(_xt(s, x0, t, n), t) - n) ** 2).mean(1),
    "reference is": lambda m, s, x0, t, n: loss_ok(m, s, x0, t, n) * 1.1,
    "NotImplementedError": lambda m, s, x0, t, n: (_ for _ in ()).throw(NotImplementedError()),
}


def test_training_loss_check(capsys):
    checks.training_loss(loss_ok)
    assert "Correct!" in capsys.readouterr().out


@pytest.mark.parametrize("hint", list(LOSS_WRONG))
def test_training_loss_check_catches(hint):
    with pytest.raises(CheckFailed, match=re.escape(hint)):
        checks.training_loss(LOSS_WRONG[hint])


# ---------------------------------------------------------------- lesson 02: DDPM step
def ddpm_parts(s, xt, t, eps):
    b, a, ab = s.beta[t], s.alpha[t], s.alpha_bar[t]
    return b, a, ab, s.posterior_variance[t]


def ddpm_ok(s, xt, t, eps, z):
    b, a, ab, var = ddpm_parts(s, xt, t, eps)
    mean = (xt - b / (1 - ab).sqrt() * eps) / a.sqrt()
    return mean + (var.sqrt() * z if t > 0 else 0)


DDPM_WRONG = {
    "add no noise": lambda s, xt, t, eps, z: ddpm_ok(s, xt, t, eps, z) + (s.beta[t].sqrt() * z if t == 0 else 0),
    "standard deviation": lambda s, xt, t, eps, z: ddpm_ok(s, xt, t, eps, 0 * z) + s.posterior_variance[t] * z,
    "other valid choice": lambda s, xt, t, eps, z: ddpm_ok(s, xt, t, eps, 0 * z) + (s.beta[t].sqrt() * z if t else 0),
    "not alpha_t": lambda s, xt, t, eps, z: (xt - s.beta[t] / (1 - s.alpha_bar[t]).sqrt() * eps) / s.alpha[t]
                                            + (s.posterior_variance[t].sqrt() * z if t else 0),
    "forgot the square root": lambda s, xt, t, eps, z: (xt - s.beta[t] / (1 - s.alpha_bar[t]) * eps)
                                                       / s.alpha[t].sqrt() + (s.posterior_variance[t].sqrt() * z if t else 0),
    "not alpha_bar_t": lambda s, xt, t, eps, z: (xt - s.beta[t] / (1 - s.alpha_bar[t]).sqrt() * eps)
                                                / s.alpha_bar[t].sqrt() + (s.posterior_variance[t].sqrt() * z if t else 0),
    "added no noise": lambda s, xt, t, eps, z: ddpm_ok(s, xt, t, eps, 0 * z),
    "NotImplementedError": lambda *a: (_ for _ in ()).throw(NotImplementedError()),
}


def test_ddpm_step_check(capsys):
    checks.ddpm_step(ddpm_ok)
    assert "Correct!" in capsys.readouterr().out


@pytest.mark.parametrize("hint", list(DDPM_WRONG))
def test_ddpm_step_check_catches(hint):
    with pytest.raises(CheckFailed, match=re.escape(hint)):
        checks.ddpm_step(DDPM_WRONG[hint])


# ---------------------------------------------------------------- lesson 03: predict x0
def x0_ok(s, xt, t, eps):
    ab = col(s.alpha_bar[t], xt)
    return (xt - (1 - ab).sqrt() * eps) / ab.sqrt()


X0_WRONG = {
    "forgot a square root": lambda s, xt, t, e: (xt - (1 - col(s.alpha_bar[t], xt)) * e) / col(s.alpha_bar[t], xt),
    "divide by sqrt": lambda s, xt, t, e: (xt - (1 - col(s.alpha_bar[t], xt)).sqrt() * e) / col(s.alpha_bar[t], xt),
    "subtract the noise": lambda s, xt, t, e: (xt + (1 - col(s.alpha_bar[t], xt)).sqrt() * e) / col(s.alpha_bar[t], xt).sqrt(),
    "not alpha_t": lambda s, xt, t, e: (xt - (1 - col(s.alpha[t], xt)).sqrt() * e) / col(s.alpha[t], xt).sqrt(),
    "broadcasting": lambda s, xt, t, e: (xt - (1 - s.alpha_bar[t]).sqrt() * e) / s.alpha_bar[t].sqrt(),
    "NotImplementedError": lambda *a: (_ for _ in ()).throw(NotImplementedError()),
}


def test_predict_x0_check(capsys):
    checks.predict_x0(x0_ok)
    assert "Correct!" in capsys.readouterr().out


@pytest.mark.parametrize("hint", list(X0_WRONG))
def test_predict_x0_check_catches(hint):
    with pytest.raises(CheckFailed, match=re.escape(hint)):
        checks.predict_x0(X0_WRONG[hint])


# ---------------------------------------------------------------- lesson 03: DDIM step
def ddim_parts(s, xt, eps, t, prev_t, eta, alpha_for_x0=False, last_index_bug=False):
    ab = s.alpha_bar[t]
    ab_prev = s.alpha_bar[prev_t] if (prev_t >= 0 or last_index_bug) else torch.tensor(1.0)
    a = s.alpha[t] if alpha_for_x0 else ab
    x0 = (xt - (1 - a).sqrt() * eps) / a.sqrt()
    sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()
    return x0, ab_prev, sigma


def ddim_ok(s, xt, eps, t, prev_t, eta, z, **kw):
    x0, ab_prev, sigma = ddim_parts(s, xt, eps, t, prev_t, eta, **kw)
    return ab_prev.sqrt() * x0 + (1 - ab_prev - sigma ** 2).sqrt() * eps + sigma * z


def _ddim_variant(kind):
    def fn(s, xt, eps, t, prev_t, eta, z):
        x0, ab_prev, sigma = ddim_parts(s, xt, eps, t, prev_t, eta)
        if kind == "x0 coefficient":
            return ab_prev * x0 + (1 - ab_prev - sigma ** 2).sqrt() * eps + sigma * z
        if kind == "direction sqrt":
            return ab_prev.sqrt() * x0 + (1 - ab_prev - sigma ** 2) * eps + sigma * z
        if kind == "no sigma in direction":
            return ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps + sigma * z
        if kind == "no fresh noise":
            return ab_prev.sqrt() * x0 + (1 - ab_prev - sigma ** 2).sqrt() * eps
        if kind == "eta ignored":                      # the eta = 0 update whatever eta is
            return ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
        raise AssertionError(kind)
    return fn


DDIM_WRONG = {
    "Python's -1 index": lambda s, xt, eps, t, p, eta, z: ddim_ok(s, xt, eps, t, p, eta, z, last_index_bug=True),
    "needs sqrt(alpha_bar_prev)": _ddim_variant("x0 coefficient"),
    "you forgot the square root": _ddim_variant("direction sqrt"),
    "direction shrinks": _ddim_variant("no sigma in direction"),
    "add fresh noise": _ddim_variant("no fresh noise"),
    "your step ignores eta: with eta = 1": _ddim_variant("eta ignored"),
    "not alpha:": lambda s, xt, eps, t, p, eta, z: ddim_ok(s, xt, eps, t, p, eta, z, alpha_for_x0=True),
    "NotImplementedError": lambda *a: (_ for _ in ()).throw(NotImplementedError()),
}


def test_ddim_step_check(capsys):
    checks.ddim_step(ddim_ok)
    assert "Correct!" in capsys.readouterr().out


@pytest.mark.parametrize("hint", list(DDIM_WRONG))
def test_ddim_step_check_catches(hint):
    with pytest.raises(CheckFailed, match=re.escape(hint)):
        checks.ddim_step(DDIM_WRONG[hint])


def test_student_edition_stub_fails_with_hint():
    """The student edition's stub (raise NotImplementedError) fails every check with the friendly hint."""
    from minildm.course import strip_solutions
    source = ("def my_q_sample(schedule, x0, t, noise):\n    ### BEGIN SOLUTION\n"
              "    return x0\n    ### END SOLUTION\n")
    namespace = {}
    exec(strip_solutions(source), namespace)
    with pytest.raises(CheckFailed, match="still raises NotImplementedError"):
        checks.q_sample(namespace["my_q_sample"])


# ---------------------------------------------------------------- lesson 02: the ResBlock
def res_ok(block, x, temb):
    import torch.nn.functional as F
    h = block.conv1(F.silu(block.norm1(x))) + block.time_proj(F.silu(temb))[:, :, None, None]
    return block.skip(x) + block.conv2(F.silu(block.norm2(h)))


def _res_variant(kind):
    import torch.nn.functional as F

    def fn(b, x, temb):
        time = b.time_proj(F.silu(temb))[:, :, None, None]
        h1 = b.conv1(F.silu(b.norm1(x)))
        tail = lambda h: b.conv2(F.silu(b.norm2(h)))  # noqa: E731
        if kind == "no time":
            return b.skip(x) + tail(h1)
        if kind == "no silu on time":
            return b.skip(x) + tail(h1 + b.time_proj(temb)[:, :, None, None])
        if kind == "time at the end":
            return b.skip(x) + tail(h1) + time
        if kind == "no skip":
            return tail(h1 + time)
        if kind == "silu before norm":
            return b.skip(x) + b.conv2(b.norm2(F.silu(h1 + time)))
        if kind == "first half only":
            return b.skip(x) + h1 + time
        if kind == "time not broadcast":
            return b.skip(x) + tail(h1 + b.time_proj(F.silu(temb))[:, None, None, :])
        if kind == "x as skip":
            return x + tail(h1 + time)
        raise AssertionError(kind)
    return fn


RES_WRONG = {
    "the time embedding is missing": "no time",
    "pass the time embedding through SiLU": "no silu on time",
    "add the time after conv1, inside the block": "time at the end",
    "the skip connection is missing": "no skip",
    "normalise first, then SiLU": "silu before norm",
    "the second half is missing": "first half only",
    "add [:, :, None, None]": "time not broadcast",
    "must go through block.skip(x)": "x as skip",
}


def test_res_block_check(capsys):
    checks.res_block(res_ok)
    assert "Correct!" in capsys.readouterr().out
    checks.res_block(lambda b, x, temb: b(x, temb))


@pytest.mark.parametrize("hint", list(RES_WRONG))
def test_res_block_check_catches(hint):
    with pytest.raises(CheckFailed, match=re.escape(hint)):
        checks.res_block(_res_variant(RES_WRONG[hint]))


def test_res_block_stub_gives_hint():
    with pytest.raises(CheckFailed, match="NotImplementedError"):
        checks.res_block(lambda *a: (_ for _ in ()).throw(NotImplementedError()))
