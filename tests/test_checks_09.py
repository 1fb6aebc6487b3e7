"""The lesson 09 checks pass the reference and catch typical wrong answers."""
import pytest
import torch

from minildm import checks
from minildm.checks import CheckFailed


def reference_blend(schedule, z, z_known, mask, prev_t, noise):
    if prev_t < 0:
        known = z_known
    else:
        t = torch.full((len(z),), prev_t)
        known = schedule.q_sample(z_known, t, noise)
    return mask * z + (1 - mask) * known


def written_out_blend(schedule, z, z_known, mask, prev_t, noise):
    ab = schedule.alpha_bar[prev_t] if prev_t >= 0 else torch.tensor(1.0)
    return torch.where(mask.bool(), z, ab.sqrt() * z_known + (1 - ab).sqrt() * noise)


def not_implemented(*args):
    raise NotImplementedError


def _ab(schedule, t):
    return schedule.alpha_bar[t] if t >= 0 else torch.tensor(1.0)


def test_inpaint_blend_passes_reference(capsys):
    checks.inpaint_blend(reference_blend)
    checks.inpaint_blend(written_out_blend)
    assert capsys.readouterr().out.count("Correct!") == 2


@pytest.mark.parametrize("wrong, hint", [
    (lambda s, z, zk, m, t, n: (1 - m) * z + m * reference_blend(s, zk, zk, 0 * m, t, n), "other way round"),
    (lambda s, z, zk, m, t, n: m * z + (1 - m) * zk, "re-noise it"),
    (lambda s, z, zk, m, t, n: m * z + (1 - m) * (s.alpha_bar[t].sqrt() * zk + (1 - s.alpha_bar[t]).sqrt() * n),
     "after the last step"),
    (lambda s, z, zk, m, t, n: m * z + (1 - m) * (_ab(s, t) * zk + (1 - _ab(s, t)) * n), "square roots"),
    (lambda s, z, zk, m, t, n: z, "unchanged"),
    (lambda s, z, zk, m, t, n: m * z + (1 - m) * (_ab(s, t).sqrt() * zk + (1 - _ab(s, t)).sqrt()
                                                  * torch.randn_like(zk)), "differs from"),
    (lambda s, z, zk, m, t, n: (m * z + (1 - m) * zk)[0], "shape"),
    (not_implemented, "NotImplementedError"),
])
def test_inpaint_blend_catches(wrong, hint):
    with pytest.raises(CheckFailed, match=hint):
        checks.inpaint_blend(wrong)


def reference_inversion_step(schedule, x_prev, eps_pred, from_t, t):
    ab_from, ab_t = _ab(schedule, from_t), schedule.alpha_bar[t]
    x0_pred = (x_prev - (1 - ab_from).sqrt() * eps_pred) / ab_from.sqrt()
    return ab_t.sqrt() * x0_pred + (1 - ab_t).sqrt() * eps_pred


def test_ddim_inversion_step_passes_reference(capsys):
    checks.ddim_inversion_step(reference_inversion_step)
    assert "Correct!" in capsys.readouterr().out


def _down_step(schedule, x_prev, eps, from_t, t):       # DDIM's step t -> from_t applied to x_prev
    ab_from, ab_t = _ab(schedule, from_t), schedule.alpha_bar[t]
    return ab_from.sqrt() * (x_prev - (1 - ab_t).sqrt() * eps) / ab_t.sqrt() + (1 - ab_from).sqrt() * eps


@pytest.mark.parametrize("wrong, hint", [
    (_down_step, "step down"),
    (lambda s, x, e, f, t: s.alpha_bar[t].sqrt() * x + (1 - s.alpha_bar[t]).sqrt() * e, "as if it were clean"),
    (lambda s, x, e, f, t: s.alpha_bar[t].sqrt() * (x - (1 - s.alpha_bar[f]).sqrt() * e) / s.alpha_bar[f].sqrt()
     + (1 - s.alpha_bar[t]).sqrt() * e, "clean x0"),
    (lambda s, x, e, f, t: s.alpha_bar[t] * (x - (1 - _ab(s, f)).sqrt() * e) / _ab(s, f).sqrt()
     + (1 - s.alpha_bar[t]) * e, "square roots"),
    (lambda s, x, e, f, t: (x - (1 - _ab(s, f)).sqrt() * e) / _ab(s, f).sqrt(), "returned x0_pred"),
    (lambda s, x, e, f, t: reference_inversion_step(s, x, e, f, t).tolist(), "torch.Tensor"),
    (not_implemented, "NotImplementedError"),
])
def test_ddim_inversion_step_catches(wrong, hint):
    with pytest.raises(CheckFailed, match=hint):
        checks.ddim_inversion_step(wrong)
