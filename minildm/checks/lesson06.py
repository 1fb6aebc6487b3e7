"""Lesson 06 - latent diffusion (notebooks/06_latent_diffusion.ipynb): the lesson's exercise checks."""
from __future__ import annotations

import torch

from ._core import CheckFailed, expect, expect_close, expect_tensor, match_mistake, passed, run_student_function


def guided_eps(student_guided_eps) -> None:
    """Exercise: classifier-free guidance, eps = eps_uncond + w * (eps_cond - eps_uncond).

    student_guided_eps(eps_uncond, eps_cond, guidance_scale) -> eps
    """
    g = torch.Generator().manual_seed(6)
    eps_u, eps_c = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    for w in (3.0, 7.5, 0.0, 1.0):
        got = run_student_function(student_guided_eps, eps_u.clone(), eps_c.clone(), w, name="guided_eps")
        expect_tensor(got, eps_u.shape, f"guided_eps(..., guidance_scale={w})")
        want = eps_u + w * (eps_c - eps_u)
        if w not in (0.0, 1.0):
            match_mistake(got, atol=1e-5, mistakes={
                "you started from eps_cond and pushed towards eps_uncond; guidance starts from the "
                "unconditional prediction and moves w times the difference towards the conditional one.":
                    eps_c + w * (eps_u - eps_c),
                "that is the 'w + 1' convention (eps_cond + w * (eps_cond - eps_uncond)). In this course "
                "guidance_scale = 1 must give exactly the conditional prediction: "
                "eps_uncond + w * (eps_cond - eps_uncond).": eps_c + w * (eps_c - eps_u),
                "only the difference is there: add it to eps_uncond.": w * (eps_c - eps_u),
                "you scaled the conditional prediction alone; guidance extrapolates from eps_uncond "
                "along (eps_cond - eps_uncond).": w * eps_c,
                "you returned the conditional prediction unchanged: guidance_scale must matter.": eps_c,
                "you averaged the two predictions; guidance extrapolates past eps_cond when w > 1.":
                    (eps_u + eps_c) / 2,
            })
        expect_close(got, want, f"with guidance_scale = {w} the result should be "
                                f"eps_uncond + {w} * (eps_cond - eps_uncond).", atol=1e-5)
    passed("eps_uncond + w * (eps_cond - eps_uncond): w = 0 is unconditional, w = 1 conditional, "
           "w > 1 follows the prompt more strongly.")


def sdedit_start(student_start) -> None:
    """Exercise: SDEdit's start for img2img from strength.

    student_start(sampler, z0, strength, noise) -> (zt, start_index) where
    start_index = len(timesteps) - round(strength * len(timesteps)), t = timesteps[start_index]
    and zt = q_sample(z0, t, noise); strength 0 returns z0 and start_index = len(timesteps).
    """
    from ..samplers import DDIMSampler, img2img_start
    from ..schedule import NoiseSchedule
    schedule = NoiseSchedule("linear", 1000)
    g = torch.Generator().manual_seed(6)
    z0, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for num_steps, strength in ((50, 0.6), (20, 0.3), (50, 1.0), (50, 0.0), (10, 0.75)):
        sampler = DDIMSampler(schedule, num_steps=num_steps)
        result = run_student_function(student_start, sampler, z0.clone(), strength, noise.clone(),
                                      name="sdedit_start")
        expect(isinstance(result, tuple) and len(result) == 2,
               "return a pair (zt, start_index).")
        zt, start_index = result
        want_zt, want_index = img2img_start(sampler, z0, strength, noise=noise)
        num = len(sampler.timesteps)
        expect(isinstance(start_index, int) or (isinstance(start_index, torch.Tensor) and start_index.numel() == 1),
               f"start_index should be a whole number, got {type(start_index).__name__}.")
        start_index = int(start_index)
        expect(start_index != round(strength * num) or start_index == want_index,
               f"for strength {strength} with {num} steps you start at index {start_index}: that is the "
               f"number of steps to RUN. Skip the others: start_index = {num} - round(strength * {num}).")
        expect(start_index == want_index,
               f"for strength {strength} with {num} steps, start_index should be {want_index} "
               f"(= {num} - round(strength * {num})), got {start_index}.")
        expect_tensor(zt, z0.shape, "zt")
        if want_index == num:
            expect_close(zt, z0, "with strength 0 nothing is denoised, so the start is z0 itself (no noise).")
            continue
        t = int(sampler.timesteps[start_index])
        ab = schedule.alpha_bar[t]
        match_mistake(zt, atol=1e-5, mistakes={
            f"you looked up alpha_bar at the index {start_index} into the sampler's list; use the "
            f"timestep t = sampler.timesteps[start_index] = {t}.":
                schedule.alpha_bar[start_index].sqrt() * z0 + (1 - schedule.alpha_bar[start_index]).sqrt() * noise,
            "the two square roots are swapped: zt = sqrt(alpha_bar_t) z0 + sqrt(1 - alpha_bar_t) noise.":
                (1 - ab).sqrt() * z0 + ab.sqrt() * noise,
            "you forgot the square roots: zt = sqrt(alpha_bar_t) z0 + sqrt(1 - alpha_bar_t) noise.":
                ab * z0 + (1 - ab) * noise,
        })
        expect_close(zt, want_zt, f"zt should be z0 noised to t = sampler.timesteps[start_index] = {t}: "
                                  f"sqrt(alpha_bar_t) z0 + sqrt(1 - alpha_bar_t) noise, with the noise given.",
                     atol=1e-4)
    passed("strength picks how many of the sampler's steps to run; img2img starts from z0 noised "
           "to the first of them.")


def _attend(attn, x, context, mask, heads=None, scale=None, softmax_dim=-1, out=True):
    """Cross-attention written out, with knobs for the typical mistakes (mask None = no masking)."""
    B, N, C = x.shape
    nh = heads or attn.num_heads
    q = attn.to_q(x).view(B, N, nh, C // nh).transpose(1, 2)                 # (B, nh, N, hs)
    k = attn.to_k(context).view(B, -1, nh, C // nh).transpose(1, 2)          # (B, nh, L, hs)
    v = attn.to_v(context).view(B, -1, nh, C // nh).transpose(1, 2)          # (B, nh, L, hs)
    scores = q @ k.transpose(-2, -1) * (scale if scale is not None else (C // nh) ** -0.5)  # (B, nh, N, L)
    if mask is not None:
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
    y = (scores.softmax(dim=softmax_dim).nan_to_num() @ v).transpose(1, 2).reshape(B, N, C)
    return attn.to_out(y) if out else y


def cross_attention(student_attention) -> None:
    """Exercise: the cross-attention through which the UNet reads the prompt.

    student_attention(attn, x (B, N, C), context (B, L, D), context_mask (B, L) bool) -> (B, N, C),
    attn a unet.Attention: queries attn.to_q(x), keys attn.to_k(context), values attn.to_v(context),
    split into attn.num_heads heads of size C / num_heads; softmax(q k^T / sqrt(head size)) over the
    tokens, padding (mask False) excluded; times the values; heads merged; then attn.to_out.
    """
    from ..unet import Attention
    with torch.random.fork_rng():  # leave the notebook's random stream alone
        torch.manual_seed(6)
        attn = Attention(16, num_heads=4, context_dim=12).eval()
        with torch.no_grad():
            for p in attn.parameters():                                    # to_out starts at zero: undo
                p.normal_(0.0, 0.5)
        x, context = torch.randn(2, 9, 16), torch.randn(2, 5, 12)
    mask = torch.tensor([[True, True, True, False, False], [True, True, True, True, False]])
    with torch.no_grad():
        try:
            got = run_student_function(student_attention, attn, x.clone(), context.clone(), mask.clone(),
                                       name="my_cross_attention")
        except RuntimeError as err:
            raise CheckFailed(f"Not yet: your attention crashed ({err}). In CROSS-attention the queries come "
                              "from x (B, N, C) but the keys and values from the context (B, L, D): "
                              "attn.to_k(context), attn.to_v(context). Split each into heads with "
                              ".view(B, -1, num_heads, C // num_heads).transpose(1, 2).") from err
        expect_tensor(got, x.shape, "the attention output (one vector per query pixel)")
        want = attn(x, context, mask)
        C, nh = x.shape[-1], attn.num_heads
        match_mistake(got, atol=1e-4, mistakes={
            "scale the scores by 1 / sqrt(head size) before the softmax, or it saturates as widths grow.":
                _attend(attn, x, context, mask, scale=1.0),
            f"scale by 1 / sqrt(head size) = 1 / sqrt({C // nh}), not by 1 / sqrt of the full width {C}.":
                _attend(attn, x, context, mask, scale=C ** -0.5),
            "the padding tokens must get no attention: set their scores to -inf (where the mask is False) "
            "before the softmax.": _attend(attn, x, context, None),
            "the mask is True for REAL tokens: mask out where it is False, not where it is True.":
                _attend(attn, x, context, ~mask),
            "the softmax goes over the tokens (the keys, the last dimension): each pixel's weights over the "
            "prompt sum to 1.": _attend(attn, x, context, mask, softmax_dim=-2),
            f"split into attn.num_heads = {nh} heads of size {C // nh}: each head attends on its own.":
                _attend(attn, x, context, mask, heads=1, scale=(C // nh) ** -0.5),
            "one head of the full width is not it: split into attn.num_heads heads.":
                _attend(attn, x, context, mask, heads=1),
            "finish with attn.to_out (merge the heads, then the output projection).":
                _attend(attn, x, context, mask, out=False),
        })
        expect_close(got, want, "your output differs from to_out(softmax(q k^T / sqrt(hs)) v) with q from x and "
                                "k, v from the context", atol=1e-4)
    passed("queries from the pixels, keys and values from the prompt, one softmax per pixel and head: "
           "this is how every word reaches the image.")
