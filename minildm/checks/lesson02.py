"""Lesson 02 - DDPM (notebooks/02_ddpm.ipynb): the lesson's exercise checks."""
from __future__ import annotations

import torch

from ..objectives import diffusion_loss, predict_x0
from ._core import CheckFailed, diagnose, expect, expect_tensor, passed, run_student_function, schedule_for_checks


def _toy_denoiser(seed: int = 0):
    """A small, fixed, t-dependent MLP standing in for the network in lesson checks."""
    from ..unet import MLPConfig, MLPDenoiser
    with torch.random.fork_rng():  # leave the notebook's random stream alone
        torch.manual_seed(seed)
        model = MLPDenoiser(MLPConfig(hidden=32, num_layers=2)).eval()
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.3)
    return model


def training_loss(student_loss) -> None:
    """Exercise: the DDPM loss mean((eps - model(x_t, t))^2) with x_t from q_sample.

    student_loss(model, schedule, x0, t, noise) -> scalar tensor
    """
    schedule = schedule_for_checks()
    model = _toy_denoiser()
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(64, 2, generator=g) * 2 - 1
    noise = torch.randn(64, 2, generator=g)
    t = torch.randint(0, 1000, (64,), generator=g)
    with torch.no_grad():
        got = run_student_function(student_loss, model, schedule, x0, t, noise, name="the training loss")
        expect(isinstance(got, torch.Tensor), f"return a tensor, got {type(got).__name__}.")
        expect(got.ndim == 0, f"the loss should be one number (a 0-d tensor, use .mean()), got shape "
                              f"{tuple(got.shape)}.")
        want = diffusion_loss(model, schedule, x0, t=t, noise=noise)
        if torch.allclose(got, want, rtol=1e-4):
            passed(f"your loss {got.item():.4f} equals the reference: the network learns to predict the noise.")
            return
        ab = schedule.alpha_bar[t][:, None]
        xt = schedule.q_sample(x0, t, noise)
        eps_pred = model(xt, t)
        wrong = {
            "the target is the noise that was added (noise), not x0.": ((eps_pred - x0) ** 2).mean(),
            "the network should see the noised x_t, not x0: xt = schedule.q_sample(x0, t, noise).":
                ((model(x0, t) - noise) ** 2).mean(),
            "you forgot the square roots when noising: use schedule.q_sample(x0, t, noise).":
                ((model(ab * x0 + (1 - ab) * noise, t) - noise) ** 2).mean(),
            "use the mean of the squared error, not the sum.": ((eps_pred - noise) ** 2).sum(),
            "that is the absolute error; DDPM's simple loss squares the error.": (eps_pred - noise).abs().mean(),
            "the loss is the mean squared error; you took a square root (RMSE).":
                ((eps_pred - noise) ** 2).mean().sqrt(),
            "pass the timesteps t to the model: model(xt, t).":
                ((model(xt, torch.zeros_like(t)) - noise) ** 2).mean(),
        }
        diagnose(got.reshape(()), {k: v.reshape(()) for k, v in wrong.items()},
                  f"your loss is {got.item():.4f}, the reference is {want.item():.4f}. Noise x0 with "
                  "q_sample, predict the noise with model(xt, t), and take the mean squared error to noise.",
                  atol=1e-5)


def ddpm_step(student_step) -> None:
    """Exercise: one reverse step of DDPM Algorithm 2, with sigma_t^2 = posterior variance.

    student_step(schedule, xt, t: int, eps_pred, z) -> x_prev
    """
    schedule = schedule_for_checks()
    g = torch.Generator().manual_seed(3)
    for t in (999, 500, 10, 1, 0):
        xt, eps, z = (torch.randn(4, 3, 8, 8, generator=g) for _ in range(3))
        got = run_student_function(student_step, schedule, xt, t, eps, z, name="ddpm_step")
        expect_tensor(got, xt.shape, "x_prev")
        t_batch = torch.full((4,), t)
        x0_pred = predict_x0(schedule, xt, t_batch, eps)
        mean, var = schedule.posterior_mean_variance(x0_pred, xt, t_batch)
        want = mean + var.sqrt() * z
        if torch.allclose(got, want, atol=1e-4):
            continue
        b, a, ab = schedule.beta[t], schedule.alpha[t], schedule.alpha_bar[t]
        alg2_mean = (xt - b / (1 - ab).sqrt() * eps) / a.sqrt()
        wrong = {
            "at t = 0 (the last step) add no noise: x_0 is the mean itself.":
                mean + schedule.beta[t].sqrt() * z if t == 0 else None,
            "sigma_t is a standard deviation: multiply z by sqrt(posterior_variance[t]), not the variance.":
                mean + var * z,
            "the exercise asks for sigma_t^2 = schedule.posterior_variance[t] (beta tilde); "
            "sigma_t^2 = beta_t is DDPM's other valid choice, but not the one DDPMSampler uses.":
                alg2_mean + b.sqrt() * z if t > 0 else None,
            "divide by sqrt(alpha_t), not alpha_t.": (xt - b / (1 - ab).sqrt() * eps) / a + var.sqrt() * z,
            "the noise coefficient is beta_t / sqrt(1 - alpha_bar_t): you forgot the square root.":
                (xt - b / (1 - ab) * eps) / a.sqrt() + var.sqrt() * z,
            "use alpha_t (this step) in 1 / sqrt(alpha_t), not alpha_bar_t.":
                (xt - b / (1 - ab).sqrt() * eps) / ab.sqrt() + var.sqrt() * z,
            "you added no noise: x_{t-1} = mean + sigma_t * z for t > 0.": mean if t > 0 else None,
        }
        diagnose(got, wrong, f"at t = {t} your x_(t-1) differs from "
                              "(x_t - beta_t / sqrt(1 - alpha_bar_t) * eps) / sqrt(alpha_t) + sigma_t * z.")
    passed("your DDPM step matches Algorithm 2 at t = 999, 500, 10, 1 and 0.")


def _random_res_block(c_in: int, c_out: int, time_dim: int):
    """A ResBlock with every weight random (its conv2 starts at zero, which would hide mistakes)."""
    from ..unet import ResBlock
    block = ResBlock(c_in, c_out, time_dim, dropout=0.0, groups=4).eval()
    with torch.no_grad():
        for p in block.parameters():
            p.normal_(0.0, 0.3)
    return block


def res_block(student_res_block) -> None:
    """Exercise: the UNet's residual block, where the timestep enters the network.

    student_res_block(block, x (B, C_in, H, W), temb (B, time_dim)) -> (B, C_out, H, W) with
    h = conv1(SiLU(norm1(x))) + time_proj(SiLU(temb)) per channel, h = conv2(SiLU(norm2(h))),
    and the result skip(x) + h (block is a unet.ResBlock; no dropout).
    """
    import torch.nn.functional as F
    with torch.random.fork_rng():  # leave the notebook's random stream alone
        torch.manual_seed(2)
        cases = [(_random_res_block(c_in, c_out, 32), torch.randn(3, c_in, 6, 6), torch.randn(3, 32))
                 for c_in, c_out in ((16, 16), (8, 16))]
    for block, x, temb in cases:
        c_in, c_out = x.shape[1], block.conv1.out_channels
        with torch.no_grad():
            try:
                got = run_student_function(student_res_block, block, x, temb, name="my_res_block")
            except RuntimeError as err:
                hint = ("time_proj(SiLU(temb)) has shape (B, C_out): add [:, :, None, None] so it is added to "
                        "every pixel of its channel" if c_in == c_out else
                        f"here C_in = {c_in} and C_out = {c_out}: the skip path must go through block.skip(x) "
                        "(a 1x1 convolution) before it can be added to h")
                raise CheckFailed(f"Not yet: your block crashed ({err}). {hint}.") from err
            expect_tensor(got, (3, c_out, 6, 6), "the block's output")
            want = block(x, temb)
            if torch.allclose(got, want, atol=1e-4, rtol=1e-4):
                continue
            time = block.time_proj(F.silu(temb))[:, :, None, None]                     # (B, C_out, 1, 1)
            h1 = block.conv1(F.silu(block.norm1(x)))                                   # (B, C_out, H, W)

            def tail(h):
                return block.conv2(F.silu(block.norm2(h)))
            skip = block.skip(x)
            wrong = {
                "the time embedding is missing: add block.time_proj(SiLU(temb)), reshaped to (B, C_out, 1, 1), "
                "to h after conv1 - that is how the block knows the noise level.": skip + tail(h1),
                "pass the time embedding through SiLU before block.time_proj: time_proj(SiLU(temb)).":
                    skip + tail(h1 + block.time_proj(temb)[:, :, None, None]),
                "add the time after conv1, inside the block (before norm2, SiLU and conv2), not at the end.":
                    skip + tail(h1) + time,
                "the skip connection is missing: return block.skip(x) + h.": tail(h1 + time),
                "normalise first, then SiLU: conv1(SiLU(norm1(x))), and the same before conv2.":
                    skip + block.conv2(block.norm2(F.silu(h1 + time))) if c_in == c_out else None,
                "the second half is missing: after adding the time, h = conv2(SiLU(norm2(h))).":
                    skip + h1 + time,
            }
            diagnose(got, wrong, "your block differs from skip(x) + conv2(SiLU(norm2(conv1(SiLU(norm1(x))) "
                                 "+ time_proj(SiLU(temb))))).", atol=1e-4)
    passed("your ResBlock matches unet.ResBlock: the timestep reaches every pixel of every channel, "
           "and the skip carries x around the block.")
