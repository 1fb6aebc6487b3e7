"""The ecosystem's samplers: diffusers' schedulers driving our model (the optional extra).

    pip install minildm[diffusers]
    x = pipe(prompts, num_steps=10, sampler="dpm++2m")

The course writes DDPM and DDIM itself (lessons 02-03); the faster solvers people
use with Stable Diffusion come from diffusers, a well-kept library, and our code
only adapts the model to them. A diffusers scheduler is configured from our own
DiffusionConfig so that it samples the process our UNet was trained on:

    ours                                    diffusers
    NoiseSchedule(kind, T).beta             trained_betas = our betas[:t_max + 1], num_train_timesteps = t_max + 1
    prediction "eps" / "v"                  prediction_type "epsilon" / "v_prediction"
    DDIM's trailing timesteps 999, ..., 19  timestep_spacing = "trailing" (spread evenly over 0..t_max)
    alpha_bar = 1 after the last step       set_alpha_to_one / final_sigmas_type = "zero"

Where sampling starts, t_max: the last timestep with lambda_t = log(sqrt(alpha_bar_t) /
sqrt(1 - alpha_bar_t)) >= LAMBDA_MIN = -3.5. The cosine schedule's alpha_bar falls to ~2e-9 at
t = 999 (lambda -9.9): an eps model's z0 there, (x_t - sqrt(1 - alpha_bar) eps) / 5e-5, is noise. The solvers'
authors stop before it (DPM-Solver's and UniPC's code end their continuous-time cosine schedule
at T = 0.9946 instead of 1, "T = 1 has numerical issues"; diffusers' DPM-Solver calls the same cut
lambda_min_clipped, -5.1 in its tests), which is t_max = 995 for our cosine schedule. For our
model that cut is not enough at 10 steps (UniPC 90.7% all four right on validation captions,
three seeds); cutting at lambda -4.0 gives 99.3%, and from -3.5 on the solvers stay on the
plateau together (recipes/sampler_eval.py, solver_start_test, on captions the sampler table
does not use; docs/results_toolbox.md, section 5). So t_max = 979 (alpha_bar 1e-3, lambda
-3.47): 10 steps are 979, 881, 783, ..., 97. LAMBDA_MIN, start_timestep and trailing_timesteps
live in schedule.py; the pipeline's DDIM starts there too (pipe.lambda_min). That is still a
noisier start than Stable Diffusion's own: its scaled-linear schedule ends at lambda -2.7,
which this cut leaves at T - 1. The linear schedule (lambda_999 = -5.06) is cut at
t_max = 830 (chosen on the cosine model, not measured on a linear one: pass lambda_min=-5.1 for
the authors' cut). lambda_min=None gives the textbook DDIM's timesteps from 999 exactly (the adapter's test uses it).

`DiffusersSampler` puts a scheduler behind our sampler interface (`timesteps`,
`step(eps_pred, t, xt)`), so samplers.sample runs it with the pipeline's guided
eps_fn, and the per-step callback (inpainting, attention maps) works unchanged.
Two translations happen in `step`:

    - the predicted z0 is clipped to the pipeline's range (diffusion.json's clip_x0) and eps
      re-derived from it, as our DDIM does: near t = T the cosine schedule's alpha_bar is
      ~1e-9 and an unclipped z0 would be huge;
    - Euler works on x = x0 + sigma eps (sigma = sqrt((1 - alpha_bar) / alpha_bar)) instead of
      our x_t = sqrt(alpha_bar) x0 + sqrt(1 - alpha_bar) eps: x = x_t * sqrt(sigma^2 + 1).

    SAMPLERS            "dpm++2m" (DPM-Solver++ 2M), "unipc" (UniPC), "euler-discrete" (Euler),
                        "ddim-diffusers" (diffusers' DDIM: the reference our DDIM is tested against)

("euler" alone is the rectified-flow Euler sampler of lesson 08.)

Taught in notebooks/09_toolbox.ipynb.
"""
from __future__ import annotations

import torch

from .objectives import DiffusionConfig, eps_from_x0, x0_from_eps
from .samplers import clip_limit
from .schedule import LAMBDA_MIN, NoiseSchedule, start_timestep, trailing_timesteps  # noqa: F401  (re-exported)

# name -> (diffusers class, its options besides the schedule)
SCHEDULERS = {
    "dpm++2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2,
                                                "final_sigmas_type": "zero"}),
    "unipc": ("UniPCMultistepScheduler", {"solver_order": 2, "final_sigmas_type": "zero"}),
    "euler-discrete": ("EulerDiscreteScheduler", {"final_sigmas_type": "zero"}),
    "ddim-diffusers": ("DDIMScheduler", {"set_alpha_to_one": True, "clip_sample": False, "steps_offset": 0}),
}
SAMPLERS = tuple(SCHEDULERS)
SIGMA_SPACE = ("euler-discrete",)           # schedulers whose sample is x0 + sigma eps
PREDICTION_TYPES = {"eps": "epsilon", "v": "v_prediction"}


class MissingExtraError(ImportError, ValueError):
    """The optional dependency is not installed (a ValueError too, so the CLI prints one line)."""


def _diffusers():
    try:
        import diffusers
    except ImportError as err:
        raise MissingExtraError(f"the diffusers samplers ({', '.join(SAMPLERS)}) need the diffusers "
                                f"library: pip install minildm[diffusers]") from err
    return diffusers


def make_scheduler(name: str, diffusion: DiffusionConfig, num_steps: int, prediction: str | None = None,
                   lambda_min: float | None = LAMBDA_MIN):
    """A diffusers scheduler for our diffusion process, its timesteps set for num_steps steps.

    prediction: what the model output given to `step` is ("eps" or "v"); default: diffusion.prediction.
    lambda_min: sampling starts at start_timestep(schedule, lambda_min); None: at T - 1, like our DDIM.
    """
    if name not in SCHEDULERS:
        raise ValueError(f"unknown diffusers sampler {name!r}; allowed: {', '.join(SAMPLERS)}")
    prediction = diffusion.prediction if prediction is None else prediction
    if prediction not in PREDICTION_TYPES:
        raise ValueError(f"diffusers' schedulers take eps or v predictions ({', '.join(PREDICTION_TYPES)}), "
                         f"got {prediction!r}")
    class_name, options = SCHEDULERS[name]
    schedule = diffusion.make_schedule()
    t_max = start_timestep(schedule, lambda_min)
    if num_steps > t_max + 1:
        raise ValueError(f"{name} starts at t = {t_max}: at most {t_max + 1} steps, got {num_steps}")
    scheduler = getattr(_diffusers(), class_name)(                     # the process as if it ended at t_max
        num_train_timesteps=t_max + 1, trained_betas=schedule.beta[:t_max + 1].tolist(),
        prediction_type=PREDICTION_TYPES[prediction], timestep_spacing="trailing", **options)
    scheduler.set_timesteps(num_steps)
    return scheduler


class DiffusersSampler:
    """A diffusers scheduler with our sampler interface: `timesteps` (descending, long) and
    `step(eps_pred, t, xt) -> (x_prev, x0_pred)` on our x_t, for samplers.sample.

    A scheduler keeps state between steps (multistep solvers remember earlier predictions),
    so make a new DiffusersSampler for every sampling run.
    """

    def __init__(self, name: str, diffusion: DiffusionConfig, num_steps: int = 20, clip_x0=None,
                 lambda_min: float | None = LAMBDA_MIN):
        T = diffusion.num_timesteps
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= T:
            raise ValueError(f"num_steps must be an int in 1..{T}, got {num_steps!r}")
        self.name, self.num_steps = name, num_steps
        self.scheduler = make_scheduler(name, diffusion, num_steps, prediction="eps",   # eps_fn gives eps
                                        lambda_min=lambda_min)
        self.schedule = NoiseSchedule(diffusion.schedule, T)
        self.clip_x0 = clip_limit(clip_x0)
        self.timesteps = self.scheduler.timesteps.round().long().cpu()                  # (S,) descending

    def __len__(self) -> int:
        return len(self.timesteps)

    def _index(self, t: int) -> int:
        matches = (self.timesteps == int(t)).nonzero()
        if len(matches) == 0:
            raise ValueError(f"timestep {t} is not one of this sampler's timesteps")
        return int(matches[0])

    def prev_timestep(self, t: int) -> int:
        """The timestep after t (-1 after the last step: the sample is then x0)."""
        index = self._index(t) + 1
        return int(self.timesteps[index]) if index < len(self.timesteps) else -1

    def step(self, eps_pred: torch.Tensor, t: int, xt: torch.Tensor, generator=None):
        """eps_pred, xt (B, ...) at timestep t -> (x at the next timestep (B, ...), x0_pred (B, ...))."""
        i = self._index(t)
        alpha_bar = float(self.schedule.alpha_bar_f64[int(t)])
        x0_pred = x0_from_eps(xt, eps_pred, alpha_bar)
        if self.clip_x0 is not None:                       # clip z0 and re-derive eps, as our DDIM does
            x0_pred = x0_pred.clamp(-self.clip_x0, self.clip_x0)
            eps_pred = eps_from_x0(xt, x0_pred, alpha_bar)
        timestep = self.scheduler.timesteps[i]             # the scheduler's own value (float for Euler)
        sample = xt
        if self.name in SIGMA_SPACE:                       # our x_t -> diffusers' x0 + sigma eps
            sample = xt * (float(self.scheduler.sigmas[i]) ** 2 + 1) ** 0.5
            self.scheduler.scale_model_input(sample, timestep)   # Euler checks this was called (it gives xt back)
        x_prev = self.scheduler.step(eps_pred, timestep, sample).prev_sample
        if self.name in SIGMA_SPACE:                       # and back
            x_prev = x_prev / (float(self.scheduler.sigmas[i + 1]) ** 2 + 1) ** 0.5
        return x_prev.to(xt.dtype), x0_pred
