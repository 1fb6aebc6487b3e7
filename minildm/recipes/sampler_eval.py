"""Measuring few-step sampling (lesson 09, section 5): which sampler, how many steps, and where to start.

    sampler_table        all-four accuracy vs steps for our DDIM and diffusers' solvers, on 90
                         fixed seen captions (every third of the train split), one seed each
    first_step_test      our DDIM at 10 steps from one starting noise, its timesteps spread over
                         0..first for several first timesteps: how much of a solver's gain is its start
    solver_start_test    the 10-step solvers with the process cut at several lambda_min
                         (schedule.start_timestep), on *validation* captions (the other thirds of the
                         train split) and three seeds: how schedule.LAMBDA_MIN was chosen

Why the start matters: at t = 999 the cosine schedule's alpha_bar is ~2e-9, so an eps
model's z0 = (z_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar) divides the network's error
by 5e-5; it is clipped to the latent range, and with 10 steps the next timestep keeps a good
part of that guess. Starting where lambda_t = log(sqrt(alpha_bar / (1 - alpha_bar))) is a
little higher skips the one step that cannot be right.

    python -c "from minildm.recipes import toolbox; print(toolbox.evaluate(parts=['samplers', 'solver_start']))"

Taught in notebooks/09_toolbox.ipynb; figures in docs/results_toolbox.md, section 5.
"""
from __future__ import annotations

import time

import torch

from .. import ecosystem
from ..data import shapes
from ..data.judge import grade_conditional
from ..guidance import classifier_free_guidance
from ..pipeline import LatentDiffusionPipeline
from ..samplers import DDIMSampler, sample
from ..schedule import start_timestep

SOLVERS = ecosystem.SAMPLERS[:3]                      # dpm++2m, unipc, euler-discrete
START_LAMBDAS = (None, -5.1, -4.5, -4.0, -3.5, -3.0, -2.5)   # None: t = 999; -5.1: the solvers' authors' cut


def table_labels(n: int = 90) -> torch.Tensor:
    """The sampler table's captions: every third of the train split, from the first (n, 4)."""
    return shapes.split_labels("train")[::3][:n]


def validation_labels(n: int = 90) -> torch.Tensor:
    """Captions disjoint from the table's: every third of the train split, from the second (n, 4)."""
    return shapes.split_labels("train")[1::3][:n]


def _generate(pipe, prompts, num_steps, guidance_scale, sampler, seed=0, batch_size=90) -> torch.Tensor:
    """Images of prompts, caption i with seed + i, in batches (the seed does not depend on the batch)."""
    return torch.cat([pipe(prompts[i:i + batch_size], num_steps=num_steps, guidance_scale=guidance_scale,
                           seed=seed + i, sampler=sampler).cpu() for i in range(0, len(prompts), batch_size)])


def sampler_table(pipe: LatentDiffusionPipeline, samplers=("ddim",) + SOLVERS, steps=(5, 10, 20, 50), n: int = 90,
                  guidance_scale: float = 3.0, batch_size: int = 90) -> dict:
    """All-four accuracy (grade_conditional) of n fixed seen canonical captions (table_labels)
    for each sampler and number of steps, one seed per caption."""
    labels = table_labels(n)
    prompts = [shapes.caption(l) for l in labels]
    table = {}
    for name in samplers:
        for num_steps in steps:
            t0 = time.perf_counter()
            graded = grade_conditional(_generate(pipe, prompts, num_steps, guidance_scale, name,
                                                 batch_size=batch_size), labels)
            table.setdefault(name, {})[num_steps] = {"all_four": graded["all_four"], "clean": graded["clean"],
                                                     "first_t": int(pipe.make_sampler(name, num_steps).timesteps[0]),
                                                     "seconds": round(time.perf_counter() - t0, 1)}
    return {"count": len(prompts), "guidance_scale": guidance_scale, "table": table}


def first_step_test(pipe: LatentDiffusionPipeline, firsts=(999, 995, 979), num_steps: int = 10, n: int = 90,
                    guidance_scale: float = 3.0, seed: int = 0) -> dict:
    """Why few steps fail: our DDIM over num_steps timesteps spread evenly over 0..first
    (schedule.trailing_timesteps: 995 is where the solvers' authors cut a cosine schedule, 979
    where schedule.LAMBDA_MIN starts them), for each first timestep, on the sampler table's
    captions and one starting noise -> all-four accuracy.
    """
    labels = table_labels(n)
    context, mask = pipe.encode_prompts([shapes.caption(l) for l in labels])
    uncond, uncond_mask = pipe.encode_prompts([""] * len(labels))
    eps_fn = classifier_free_guidance(pipe.denoiser, context, uncond, guidance_scale, mask, uncond_mask)
    zT = torch.randn(len(labels), pipe.config.latent_channels, pipe.config.latent_size, pipe.config.latent_size,
                     generator=torch.Generator().manual_seed(seed)).to(pipe.device)
    clip = pipe.make_sampler("ddim", num_steps).clip_x0                              # the pipeline's z0 range
    result = {"count": len(labels), "num_steps": num_steps}
    for first in firsts:
        sampler = DDIMSampler(pipe.schedule, num_steps, clip_x0=clip, first_timestep=first)  # first, ..., descending
        images = pipe.decode_latents(sample(eps_fn, sampler, zT, progress=False)).cpu()
        result[f"first_t_{first}"] = {"timesteps": sampler.timesteps.tolist(),
                                      **{k: v for k, v in grade_conditional(images, labels).items()
                                         if k in ("all_four", "clean")}}
    return result


class _StartAt:
    """pipe.lambda_min set for the length of a `with` block, and restored after it."""

    def __init__(self, pipe, lambda_min):
        self.pipe, self.lambda_min = pipe, lambda_min

    def __enter__(self):
        self.saved, self.pipe.lambda_min = self.pipe.lambda_min, self.lambda_min
        return self.pipe

    def __exit__(self, *exc):
        self.pipe.lambda_min = self.saved


def solver_start_test(pipe: LatentDiffusionPipeline, lambdas=START_LAMBDAS, samplers=SOLVERS,
                      num_steps: int = 10, n: int = 90, seeds=(0, 1000, 2000), guidance_scale: float = 3.0) -> dict:
    """Where should a few-step solver start? For each lambda_min, the solvers' all-four accuracy on
    n validation captions (validation_labels, disjoint from the table's) with each seed offset
    (caption i gets seed + i) -> {"lambda_min/sampler": {t_max, lambda_t_max, all_four, clean, per_seed}}.

    The choice of schedule.LAMBDA_MIN is made on these captions; the sampler table then
    measures it on its own captions.
    """
    labels = validation_labels(n)
    prompts = [shapes.caption(l) for l in labels]
    schedule = pipe.diffusion.make_schedule()
    alpha_bar = schedule.alpha_bar_f64
    lam = 0.5 * torch.log(alpha_bar / (1 - alpha_bar))                                    # (T,)
    result = {"count": len(prompts), "seeds": list(seeds), "num_steps": num_steps, "rows": {}}
    for lambda_min in lambdas:
        t_max = start_timestep(schedule, lambda_min)
        with _StartAt(pipe, lambda_min):
            for name in samplers:
                graded = [grade_conditional(_generate(pipe, prompts, num_steps, guidance_scale, name, seed), labels)
                          for seed in seeds]
                result["rows"][f"{lambda_min}/{name}"] = {
                    "lambda_min": lambda_min, "sampler": name, "t_max": t_max,
                    "lambda_t_max": round(float(lam[t_max]), 2),
                    "all_four": round(sum(g["all_four"] for g in graded) / len(graded), 4),
                    "clean": round(sum(g["clean"] for g in graded) / len(graded), 4),
                    "per_seed": [g["all_four"] for g in graded]}
    return result
