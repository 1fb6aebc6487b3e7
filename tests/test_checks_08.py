"""The lesson 08 checks pass the reference (and equivalent rewrites) and catch typical wrong answers."""
import pytest
import torch
import torch.nn.functional as F

from minildm import checks
from minildm.checks import CheckFailed
from minildm.dit import modulate, patchify, unpatchify
from minildm.objectives import flow_matching_loss

torch.set_num_threads(1)


def not_implemented(*args):
    raise NotImplementedError


def _s(x0, s):
    return s.reshape(-1, *[1] * (x0.ndim - 1))


def written_out_loss(model, x0, s, noise):
    b = _s(x0, s)
    xs = (1 - b) * x0 + b * noise
    return F.mse_loss(model(xs, 1000 * s), noise - x0)


def test_flow_loss_passes_reference(capsys):
    checks.flow_loss(lambda model, x0, s, noise: flow_matching_loss(model, x0, s=s, noise=noise))
    checks.flow_loss(written_out_loss)
    assert capsys.readouterr().out.count("Correct!") == 2


def wrong_loss(target=lambda x0, n: n - x0, swap=False, t_scale=1000, reduce="mean", square=True):
    def loss(model, x0, s, noise):
        b = _s(x0, s)
        xs = b * x0 + (1 - b) * noise if swap else (1 - b) * x0 + b * noise
        err = model(xs, t_scale * s) - target(x0, noise)
        err = err ** 2 if square else err.abs()
        return err.sum() if reduce == "sum" else err.mean()
    return loss


@pytest.mark.parametrize("wrong, hint", [
    (wrong_loss(target=lambda x0, n: x0 - n), "wrong sign"),
    (wrong_loss(target=lambda x0, n: n), "not the noise itself"),
    (wrong_loss(target=lambda x0, n: x0), "not the clean data"),
    (wrong_loss(swap=True), "x_s is swapped"),
    (wrong_loss(reduce="sum"), "not the sum"),
    (wrong_loss(square=False), "square the error"),
    (wrong_loss(t_scale=1), "not s itself"),
    (wrong_loss(t_scale=100), "t = 1000 \\* s"),
    (lambda model, x0, s, noise: (noise - x0).pow(2).mean(), "call the model"),
    (lambda model, x0, s, noise: written_out_loss(model, x0, s, noise).reshape(1, 1).expand(2, 1), "one number"),
    (not_implemented, "NotImplementedError"),
])
def test_flow_loss_catches(wrong, hint):
    with pytest.raises(CheckFailed, match=hint):
        checks.flow_loss(wrong)


def test_euler_step_passes_reference(capsys):
    checks.euler_step(lambda v, x, s, s_next: x + (s_next - s) * v)
    checks.euler_step(lambda v, x, s, s_next: x - (s - s_next) * v)
    assert capsys.readouterr().out.count("Correct!") == 2


@pytest.mark.parametrize("wrong, hint", [
    (lambda v, x, s, s_next: x + (s - s_next) * v, "towards the noise"),
    (lambda v, x, s, s_next: x - s * v, "prediction of x0"),
    (lambda v, x, s, s_next: x + s_next * v, "not s_next"),
    (lambda v, x, s, s_next: x + s * v, "wrong way"),
    (lambda v, x, s, s_next: (s_next - s) * v, "add it to x"),
    (lambda v, x, s, s_next: x + 0.5 * (s_next - s) * v, "x \\+ \\(s_next - s\\) \\* v"),
    (lambda v, x, s, s_next: (x + (s_next - s) * v)[0], "shape"),
    (not_implemented, "NotImplementedError"),
])
def test_euler_step_catches(wrong, hint):
    with pytest.raises(CheckFailed, match=hint):
        checks.euler_step(wrong)


def written_out_patchify(x, p):
    B, C, H, W = x.shape
    return x.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 4, 5, 1).reshape(B, (H // p) * (W // p), p * p * C)


def test_patchify_passes_reference(capsys):
    checks.patchify(patchify, unpatchify)
    checks.patchify(written_out_patchify, unpatchify)
    assert capsys.readouterr().out.count("Correct!") == 2


def channel_first(x, p):
    B, C, H, W = x.shape
    return x.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 1, 3, 5).reshape(B, -1, p * p * C)


def column_major(x, p):
    B, C, H, W = x.shape
    return x.reshape(B, C, H // p, p, W // p, p).permute(0, 4, 2, 3, 5, 1).reshape(B, -1, p * p * C)


def bad_unpatchify(tokens, p, H, W):
    B, N, D = tokens.shape
    C = D // (p * p)
    return tokens.reshape(B, H // p, W // p, p, p, C).permute(0, 5, 1, 4, 2, 3).reshape(B, C, H, W)


@pytest.mark.parametrize("wrong, hint", [
    ((channel_first, unpatchify), "channel first"),
    ((column_major, unpatchify), "column by column"),
    ((lambda x, p: x.reshape(x.shape[0], (x.shape[2] // p) ** 2, -1), unpatchify), "reshape alone"),
    ((lambda x, p: patchify(x, p)[:, :-1], unpatchify), "shape"),
    ((patchify, bad_unpatchify), "undo patchify exactly"),
    ((patchify, lambda t, p, H, W: t.reshape(t.shape[0], -1, H, W)), "reshape alone does not put"),
    ((not_implemented, unpatchify), "NotImplementedError"),
    ((patchify, not_implemented), "NotImplementedError"),
])
def test_patchify_catches(wrong, hint):
    with pytest.raises(CheckFailed, match=hint):
        checks.patchify(*wrong)


def test_modulate_passes_reference(capsys):
    checks.modulate(modulate)
    checks.modulate(lambda x, shift, scale: x + x * scale.unsqueeze(1) + shift.unsqueeze(1))
    assert capsys.readouterr().out.count("Correct!") == 2


@pytest.mark.parametrize("wrong, hint", [
    (lambda x, sh, sc: x * sc[:, None] + sh[:, None], "not scale alone"),
    (lambda x, sh, sc: x * (1 + sh[:, None]) + sc[:, None], "swapped"),
    (lambda x, sh, sc: (x + sh[:, None]) * (1 + sc[:, None]), "shift first"),
    (lambda x, sh, sc: x * (1 + sc) + sh, "wrong broadcasting"),
    (lambda x, sh, sc: x * (1 + sc[:, None]), "forgot the shift"),
    (lambda x, sh, sc: (x * (1 + sc[:, None]) + sh[:, None])[:, 0], "shape"),
    (not_implemented, "NotImplementedError"),
])
def test_modulate_catches(wrong, hint):
    with pytest.raises(CheckFailed, match=hint):
        checks.modulate(wrong)
