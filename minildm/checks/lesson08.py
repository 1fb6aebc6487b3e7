"""Lesson 08 - from SD1 to SD3 (notebooks/08_sd3.ipynb): the lesson's exercise checks."""
from __future__ import annotations

import torch

from ..dit import modulate as reference_modulate
from ..dit import patchify as reference_patchify
from ..dit import unpatchify as reference_unpatchify
from ..objectives import FLOW_TIMESTEPS, flow_matching_loss
from ._core import (CheckFailed, diagnose, expect, expect_close, expect_tensor, match_mistake, passed,
                    run_student_function)


class _RecordingModel(torch.nn.Module):
    """A fixed, non-trivial "network" v(x, t) that remembers the t it was called with."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, xs, t):
        self.calls.append(t.detach().clone() if isinstance(t, torch.Tensor) else torch.as_tensor(t))
        t = torch.as_tensor(t, dtype=xs.dtype).reshape(-1, *[1] * (xs.ndim - 1))
        return 0.5 * xs.flip(-1) - 0.3 * torch.tanh(xs) + t / FLOW_TIMESTEPS


def flow_loss(student_loss) -> None:
    """Exercise: the rectified-flow loss for given s and noise.

    student_loss(model, x0 (B, ...), s (B,), noise) -> scalar: x_s = (1 - s) x0 + s noise,
    target v = noise - x0, loss = mean((model(x_s, 1000 s) - v)^2).
    """
    g = torch.Generator().manual_seed(8)
    for shape in ((6, 2), (4, 4, 8, 8)):
        x0, noise = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        s = torch.rand(shape[0], generator=g) * 0.9 + 0.05
        model = _RecordingModel()
        got = run_student_function(student_loss, model, x0.clone(), s.clone(), noise.clone(), name="flow_loss")
        expect_tensor(got, None, "the loss")
        expect(got.numel() == 1, f"the loss should be one number (a mean), got shape {tuple(got.shape)}.")
        got = got.reshape(())
        expect(len(model.calls) >= 1, "call the model on x_s: model(x_s, t).")
        t = model.calls[-1].float().reshape(-1)
        expect(not torch.allclose(t, s.float()),
               f"the network takes t = {FLOW_TIMESTEPS} s (the same scale as DDPM's timesteps), not s itself.")
        expect(t.shape == s.shape and torch.allclose(t, FLOW_TIMESTEPS * s, atol=1e-3),
               f"call the model with t = {FLOW_TIMESTEPS} * s, one value per example (shape (B,)).")
        want = flow_matching_loss(_RecordingModel(), x0, s=s, noise=noise)
        if torch.allclose(got, want, rtol=1e-4, atol=1e-5):
            continue
        b = s.reshape(-1, *[1] * (x0.ndim - 1))

        def loss_of(xs, target, t=FLOW_TIMESTEPS * s):
            return ((_RecordingModel()(xs, t) - target) ** 2).mean()

        xs = (1 - b) * x0 + b * noise
        diagnose(got, {
            "the target has the wrong sign: the velocity along x_s = (1 - s) x0 + s noise is "
            "d x_s / d s = noise - x0.": loss_of(xs, x0 - noise),
            "the target is the velocity noise - x0, not the noise itself (that is the DDPM loss).":
                loss_of(xs, noise),
            "the target is the velocity noise - x0, not the clean data.": loss_of(xs, x0),
            "x_s is swapped: s = 0 must be the data and s = 1 pure noise, x_s = (1 - s) x0 + s noise.":
                loss_of(b * x0 + (1 - b) * noise, noise - x0),
            "take the mean of the squared error (F.mse_loss), not the sum.":
                ((_RecordingModel()(xs, FLOW_TIMESTEPS * s) - (noise - x0)) ** 2).sum(),
            "square the error: the loss is a mean SQUARED error.":
                (_RecordingModel()(xs, FLOW_TIMESTEPS * s) - (noise - x0)).abs().mean(),
        }, f"your loss {got.item():.4f} differs from the reference {want.item():.4f}: "
           f"x_s = (1 - s) x0 + s noise (s reshaped to (B, 1, ...)), target noise - x0, mean squared error.",
            atol=1e-5)
    passed("x_s on the straight line, the velocity noise - x0 as the target, t = 1000 s for the network.")


def euler_step(student_step) -> None:
    """Exercise: one Euler step of dx/ds = v from s to s_next < s.

    student_step(v, x, s, s_next) -> x + (s_next - s) v
    """
    g = torch.Generator().manual_seed(9)
    for s, s_next in ((1.0, 0.75), (0.5, 0.25), (0.25, 0.0), (1.0, 0.0), (0.6, 0.5)):
        x, v = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
        got = run_student_function(student_step, v.clone(), x.clone(), s, s_next, name="euler_step")
        expect_tensor(got, x.shape, f"euler_step(v, x, s={s}, s_next={s_next})")
        want = x + (s_next - s) * v
        match_mistake(got, atol=1e-5, mistakes={
            "you stepped towards the noise: s decreases from 1 (noise) to 0 (data), so the step is "
            "(s_next - s) * v, a negative multiple of v.": x + (s - s_next) * v,
            "that is the prediction of x0 (x - s v), a jump all the way to s = 0: step only to s_next.":
                x - s * v if s_next != 0 else None,
            "the step size is s_next - s, not s_next.": x + s_next * v,
            "the step is (s_next - s) * v: a step of s * v goes the wrong way, and too far.": x + s * v,
            "you returned the velocity times the step; add it to x.": (s_next - s) * v,
        })
        expect_close(got, want, f"from s = {s} to s_next = {s_next} the Euler step is x + (s_next - s) * v.",
                     atol=1e-5)
    passed("x_next = x + (s_next - s) v: follow the velocity backwards from noise to data.")


def patchify(student_patchify, student_unpatchify) -> None:
    """Exercise: cut a latent into patch tokens, row by row, and put them back.

    student_patchify(x (B, C, H, W), p) -> (B, (H/p)(W/p), p*p*C), each token (p, p, C) flattened;
    student_unpatchify(tokens, p, H, W) -> x (B, C, H, W).
    """
    g = torch.Generator().manual_seed(10)
    for B, C, H, p in ((2, 4, 8, 2), (1, 3, 8, 4), (2, 4, 16, 2)):
        x = torch.randn(B, C, H, H, generator=g)
        got = run_student_function(student_patchify, x.clone(), p, name="patchify")
        N, D = (H // p) ** 2, p * p * C
        expect_tensor(got, (B, N, D), f"patchify(x of shape {tuple(x.shape)}, p={p})")
        want = reference_patchify(x, p)
        if not torch.allclose(got, want):
            h = H // p
            blocks = x.reshape(B, C, h, p, h, p)
            diagnose(got, {
                "each token lists its values channel first (C, p, p); the DiT expects them pixel by pixel "
                "with the C channels of each pixel together: permute to (B, h, w, p, p, C).":
                    blocks.permute(0, 2, 4, 1, 3, 5).reshape(B, N, D),
                "the patches go column by column; number them row by row (the patch to the right of "
                "token 0 is token 1): permute to (B, h, w, p, p, C), rows before columns.":
                    blocks.permute(0, 4, 2, 3, 5, 1).reshape(B, N, D),
                "a reshape alone does not cut patches: split H and W into (h, p) and (w, p), then permute "
                "so the two patch indices come first.": x.reshape(B, N, D),
                "inside a patch, go along the row first (p rows of p pixels): permute to (B, h, w, p, p, C), "
                "not (B, h, w, p_col, p_row, C).": blocks.permute(0, 2, 4, 5, 3, 1).reshape(B, N, D),
            }, "your tokens differ from dit.patchify: split (B, C, h, p, w, p), permute to (B, h, w, p, p, C), "
               "reshape to (B, h*w, p*p*C).")
        back = run_student_function(student_unpatchify, want.clone(), p, H, H, name="unpatchify")
        expect_tensor(back, x.shape, f"unpatchify(tokens, p={p}, H={H}, W={H})")
        if not torch.allclose(back, x):
            wrong_order = want.reshape(B, H // p, H // p, p, p, C).permute(0, 5, 1, 4, 2, 3).reshape(B, C, H, H)
            diagnose(back, {
                "unpatchify must undo patchify exactly: after reshaping to (B, h, w, p, p, C) permute to "
                "(B, C, h, p, w, p) - each patch row index next to its patch's row.":
                    wrong_order,
                "a reshape alone does not put the patches back: reshape to (B, h, w, p, p, C), permute "
                "to (B, C, h, p, w, p), then reshape to (B, C, H, W).": want.reshape(B, C, H, H),
            }, "unpatchify(patchify(x)) should give x back exactly.")
        expect(torch.equal(reference_unpatchify(got, p, H, H), x), "patchify must lose nothing.")
    passed("tokens in the DiT's order, and unpatchify(patchify(x)) == x.")


def modulate(student_modulate) -> None:
    """Exercise: adaLN modulation, x * (1 + scale) + shift with one (shift, scale) per example.

    student_modulate(x (B, N, D), shift (B, D), scale (B, D)) -> (B, N, D)
    """
    g = torch.Generator().manual_seed(11)
    for B, N, D in ((4, 4, 8), (2, 16, 32), (3, 1, 5)):     # B == N: wrong broadcasting gives a shape that fits
        x, shift, scale = (torch.randn(B, N, D, generator=g), torch.randn(B, D, generator=g),
                           torch.randn(B, D, generator=g))
        try:
            got = run_student_function(student_modulate, x.clone(), shift.clone(), scale.clone(), name="modulate")
        except RuntimeError as err:
            raise CheckFailed(f"Not yet: modulate crashed ({err}). shift and scale are (B, D), x is (B, N, D): "
                              f"give them a token axis, shift[:, None, :], so every token gets its example's "
                              f"values.") from err
        expect_tensor(got, x.shape, f"modulate(x {tuple(x.shape)}, shift {tuple(shift.shape)}, scale)")
        want = reference_modulate(x, shift, scale)
        if torch.allclose(got, want, atol=1e-5):
            continue
        sh, sc = shift[:, None, :], scale[:, None, :]
        diagnose(got, {
            "scale multiplies (1 + scale), not scale alone: a zero modulation (adaLN-Zero's start) must "
            "leave x unchanged.": x * sc + sh,
            "shift and scale are swapped: x * (1 + scale) + shift.": x * (1 + sh) + sc,
            "shift first, then scale, is another map: x * (1 + scale) + shift.": (x + sh) * (1 + sc),
            "wrong broadcasting: shift and scale are per EXAMPLE (B, D); add a token axis "
            "(shift[:, None, :]) instead of letting them line up with the tokens.":
                x * (1 + scale) + shift if B == N else None,
            "you forgot the shift: x * (1 + scale) + shift.": x * (1 + sc),
        }, "your result differs from x * (1 + scale[:, None]) + shift[:, None].", atol=1e-5)
    passed("x * (1 + scale) + shift, one (shift, scale) per example for all its tokens: a zero "
           "modulation is the identity.")
