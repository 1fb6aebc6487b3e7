"""Guidance: wrap a text-conditioned denoiser into the eps_fn(xt, t) a sampler's loop calls.

    classifier_free_guidance          eps_u + w (eps_c - eps_u)              (Ho & Salimans, 2022; lesson 06)
    perpendicular_negative_guidance   the same, pushed away from a negative prompt
                                      along the part of its direction the prompt does
                                      not share (Perp-Neg, Armandpour et al., 2023; lesson 09)

Each asks the network for all its predictions in one batched forward (the conditional
rows last, where the attention hooks of lesson 09 look for them) and combines them
linearly, so the same wrapper guides an eps-, v- or flow-velocity-predicting model.
`sample` in samplers.py runs the loop; the pipeline chooses the wrapper.
"""
from __future__ import annotations

import torch


def classifier_free_guidance(model, context, uncond_context, guidance_scale: float,
                             context_mask=None, uncond_mask=None):
    """Wrap a conditional denoiser into eps_fn(xt, t) with classifier-free guidance:

        eps = eps_u + w * (eps_c - eps_u)      eps_c = model(x, t, context), eps_u = model(x, t, uncond)

    w = 1 is the plain conditional model, w > 1 follows the prompt more closely
    (at some cost in variety). Both predictions come from one batched forward of
    [uncond; cond]. uncond_context may have batch size 1 (it is expanded).
    The combination is linear, so it guides whatever the model predicts: eps, v,
    or a flow's velocity (v = v_u + w (v_c - v_u), as SD3 does).

    context (B, L, D), uncond_context (B or 1, L, D), masks (B, L) bool (True = real token).
    Taught in notebooks/06_latent_diffusion.ipynb.
    """
    B = context.shape[0]
    uncond_context = uncond_context.expand(B, *uncond_context.shape[1:])
    if context_mask is None and uncond_mask is None:
        mask = None
    else:
        true_mask = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)
        context_mask = true_mask if context_mask is None else context_mask.bool()
        uncond_mask = true_mask if uncond_mask is None else uncond_mask.bool().expand(B, -1)
        mask = torch.cat([uncond_mask, context_mask])                      # (2B, L)
    both_context = torch.cat([uncond_context, context])                    # (2B, L, D)

    def eps_fn(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = model(torch.cat([xt, xt]), torch.cat([t, t]), context=both_context, context_mask=mask)
        eps_u, eps_c = eps.chunk(2)                                         # (B, ...) each
        return eps_u + guidance_scale * (eps_c - eps_u)

    return eps_fn


def _perpendicular(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The part of each a[i] orthogonal to b[i] (flattened per sample): a - (a.b / b.b) b."""
    a_flat, b_flat = a.flatten(1), b.flatten(1)                                   # (B, D)
    along = (a_flat * b_flat).sum(1, keepdim=True) / b_flat.pow(2).sum(1, keepdim=True).clamp_min(1e-12)
    return (a_flat - along * b_flat).view_as(a)


def perpendicular_negative_guidance(model, context, uncond_context, negative_context, guidance_scale: float,
                                    negative_scale: float, context_mask=None, uncond_mask=None,
                                    negative_mask=None):
    """Classifier-free guidance that also steers *away* from a negative prompt (Perp-Neg,
    Armandpour et al., 2023):

        eps = eps_u + w (eps_c - eps_u) - w_neg perp(eps_n - eps_u, eps_c - eps_u)

    eps_u: the empty prompt, eps_c: the prompt, eps_n: the negative prompt. Stable
    Diffusion's negative prompt instead *replaces* eps_u by eps_n, which is the same as
    w_neg = w - 1 without the projection. The projection keeps only the part of the
    negative direction that the prompt's own direction does not share, so a strong
    w_neg removes "cyan" without also pushing away from the "large circle in the
    center" that the negative prediction shares with the prompt. Three predictions
    per step, from one batched forward of [uncond; negative; cond] (cond last, as the
    attention hooks expect).

    context, negative_context (B, L, D); uncond_context (B or 1, L, D); masks (B, L) bool.
    Taught in notebooks/09_toolbox.ipynb.
    """
    B = context.shape[0]
    uncond_context = uncond_context.expand(B, *uncond_context.shape[1:])
    true_mask = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)
    masks = [true_mask if m is None else m.bool().expand(B, -1) for m in (uncond_mask, negative_mask, context_mask)]
    all_context = torch.cat([uncond_context, negative_context, context])              # (3B, L, D)
    mask = torch.cat(masks)                                                            # (3B, L)

    def eps_fn(xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = model(torch.cat([xt, xt, xt]), torch.cat([t, t, t]), context=all_context, context_mask=mask)
        eps_u, eps_n, eps_c = eps.chunk(3)                                             # (B, ...) each
        away = _perpendicular(eps_n - eps_u, eps_c - eps_u)
        return eps_u + guidance_scale * (eps_c - eps_u) - negative_scale * away

    return eps_fn
