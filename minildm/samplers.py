"""Samplers: turn pure noise x_T into data by running the learned reverse process.

A sampler knows the schedule, not the network. Its `step(eps_pred, t, xt)`
takes the network's noise prediction at timestep t and returns x at the
previous timestep (and the current guess of x0). The loop that calls the
network lives in `sample(eps_fn, sampler, xT)`, a dozen lines.

    DDPMSampler   ancestral sampling, all T steps, fresh noise each step (DDPM Algorithm 2)
    DDIMSampler   any number of steps; eta = 0 is deterministic, eta = 1 is DDPM again
    DDIMInversion DDIM backwards: a clean x0 -> its x_t, for editing a real image (lesson 09)
    FlowEulerSampler, FlowHeunSampler   rectified flow: integrate dx/ds = v from s = 1 to 0 (lesson 08)
    classifier_free_guidance, perpendicular_negative_guidance   in guidance.py (re-exported here):
                               wrap a conditional model into the eps_fn this loop calls
    img2img_start              SDEdit: start from a noised real image instead of pure noise

Each sampler owns the clipping of its x0 prediction (`clip_x0`: a range [-c, c], or
none): pixels live in [-1, 1], latents in the range their VAE gives them. `sample`
takes a per-step `callback(i, t, xt, x0_pred)` that may return a replacement x_t:
the hook inpainting and trajectory recording use, so no one copies the loop.

Symbol map (the same for both samplers):

    xt          x_t, the current sample             eps_pred   eps_theta(x_t, t)
    x0_pred     predicted x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)
    prev_t      the next timestep in `timesteps` (t - 1 for DDPM; -1 means "x0")
    sigma       std of the fresh noise added in this step

A flow sampler's `step(v_pred, t, xt)` has the same form: the prediction is the
velocity v, t = 1000 s is a float, and the same `sample` loop, guidance wrapper and
img2img start drive it.

Taught in notebooks/02_ddpm.ipynb (DDPM), notebooks/03_ddim.ipynb (DDIM, eta, steps)
and notebooks/08_sd3.ipynb (Euler, Heun).
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .objectives import FLOW_TIMESTEPS, flow_interpolate, x0_from_eps, x0_from_velocity
from .schedule import NoiseSchedule, trailing_timesteps
from .guidance import classifier_free_guidance, perpendicular_negative_guidance  # noqa: F401  (re-exported)


def _randn_like(x: torch.Tensor, generator) -> torch.Tensor:
    """Standard normal noise shaped like x; drawn from `generator` (on its own device) when given.

    generator may also be a list with one generator per batch element: x[i]'s noise then
    comes from generator[i] alone, so an image's noise does not depend on the batch around it
    (a list of one draws exactly what that one generator would).
    """
    if generator is None:
        return torch.randn_like(x)
    if isinstance(generator, (list, tuple)):
        if len(generator) != x.shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}; give one per element")
        return torch.stack([_randn_like(x_i, g) for x_i, g in zip(x, generator)])
    noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
    return noise.to(x.device)


def clip_limit(clip_x0) -> float | None:
    """True -> 1.0 (images in [-1, 1]); False, None or 0 -> None (no clipping); c > 0 -> c."""
    if clip_x0 is True:
        return 1.0
    if clip_x0 is None or clip_x0 is False or clip_x0 == 0:
        return None
    if not isinstance(clip_x0, (int, float)) or not 0 < clip_x0 < float("inf"):
        raise ValueError(f"clip_x0 must be True (clip x0 to [-1, 1]), False/None/0 (no clipping) "
                         f"or a positive number c (clip to [-c, c]), got {clip_x0!r}")
    return float(clip_x0)


class _Sampler:
    """What DDPM and DDIM share: the schedule, x0 from eps, optional clipping to [-c, c]."""

    def __init__(self, schedule: NoiseSchedule, clip_x0: bool | float | None = True):
        if not isinstance(schedule, NoiseSchedule):
            raise ValueError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        self.schedule = schedule
        self.clip_x0 = clip_limit(clip_x0)      # None or the limit c
        self.timesteps = torch.arange(schedule.num_timesteps - 1, -1, -1)  # overridden by DDIM

    def __len__(self) -> int:
        return len(self.timesteps)

    def prev_timestep(self, t: int) -> int:
        """The timestep after t in this sampler's (descending) list, or -1 after the last one."""
        matches = (self.timesteps == t).nonzero()
        if len(matches) == 0:
            raise ValueError(f"timestep {t} is not one of this sampler's timesteps")
        index = int(matches[0])
        return int(self.timesteps[index + 1]) if index + 1 < len(self.timesteps) else -1

    def _alpha_bar(self, t: int) -> float:
        """alpha_bar_t as a Python float (float64 arithmetic); alpha_bar_{-1} = 1."""
        return float(self.schedule.alpha_bar_f64[t]) if t >= 0 else 1.0

    def _predict_x0(self, eps_pred, t: int, xt):
        """x0_pred = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t), clipped to [-c, c] when clip_x0."""
        x0_pred = x0_from_eps(xt, eps_pred, self._alpha_bar(t))
        return x0_pred if self.clip_x0 is None else x0_pred.clamp(-self.clip_x0, self.clip_x0)

    def _check_step(self, eps_pred, t, xt) -> int:
        if eps_pred.shape != xt.shape:
            raise ValueError(f"eps_pred shape {tuple(eps_pred.shape)} must equal xt shape {tuple(xt.shape)}")
        t = int(t)
        if not 0 <= t < self.schedule.num_timesteps:
            raise ValueError(f"t must be in 0..{self.schedule.num_timesteps - 1}, got {t}")
        return t


class DDPMSampler(_Sampler):
    """Ancestral sampling, DDPM Algorithm 2, over all T timesteps.

    Each step samples the posterior q(x_{t-1} | x_t, x0 = x0_pred):

        x_{t-1} = mean(x0_pred, x_t) + sqrt(beta_tilde_t) * z,   z ~ N(0, I)   (no noise at t = 0)

    Without clipping this is exactly Algorithm 2's
    x_{t-1} = (x_t - beta_t / sqrt(1 - alpha_bar_t) * eps) / sqrt(alpha_t) + sigma_t z
    with sigma_t^2 = beta_tilde_t (the posterior variance).

    Taught in notebooks/02_ddpm.ipynb.
    """

    def step(self, eps_pred: torch.Tensor, t: int, xt: torch.Tensor, generator=None):
        """eps_pred, xt (B, ...), t an int -> (x_prev (B, ...), x0_pred (B, ...))."""
        t = self._check_step(eps_pred, t, xt)
        x0_pred = self._predict_x0(eps_pred, t, xt)
        t_batch = torch.full((xt.shape[0],), t, dtype=torch.long)
        mean, variance = self.schedule.posterior_mean_variance(x0_pred, xt, t_batch)
        if t == 0:
            return mean, x0_pred                      # the last step adds no noise
        return mean + variance.sqrt() * _randn_like(xt, generator), x0_pred


class DDIMSampler(_Sampler):
    """DDIM (Song et al., 2021): jump between a subset of timesteps.

    With tau = timesteps (descending) and prev_t the next one (alpha_bar_{-1} = 1):

        1. x0_pred    = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t)          (eq. 12, "predicted x0")
        2. sigma      = eta * sqrt((1 - alpha_bar_prev) / (1 - alpha_bar_t))
                            * sqrt(1 - alpha_bar_t / alpha_bar_prev)                    (eq. 16)
        3. direction  = sqrt(1 - alpha_bar_prev - sigma^2) * eps                        ("points to x_t")
        4. x_prev     = sqrt(alpha_bar_prev) * x0_pred + direction + sigma * z

    eta = 0: no fresh noise, the same x_T always gives the same image, and few
    steps work well. eta = 1 over all T steps is DDPM's posterior step exactly.

    Timesteps are spaced evenly over 0..first_timestep and end-aligned ("trailing"): for
    50 steps of T = 1000, t = 999, 979, ..., 19. first_timestep defaults to T - 1 (pure
    noise, the textbook start, which lessons 02-03 use); starting later, at
    schedule.start_timestep (t = 979 for the cosine schedule), skips the first step, where an
    eps model's x0 guess cannot be right (docs/results_toolbox.md, section 5): the latent
    pipelines start there (LatentDiffusionPipeline.make_sampler).

    Taught in notebooks/03_ddim.ipynb.
    """

    def __init__(self, schedule: NoiseSchedule, num_steps: int = 50, eta: float = 0.0,
                 clip_x0: bool | float | None = True, first_timestep: int | None = None):
        super().__init__(schedule, clip_x0)
        T = schedule.num_timesteps
        first = T - 1 if first_timestep is None else first_timestep
        if isinstance(first, bool) or not isinstance(first, int) or not 0 <= first <= T - 1:
            raise ValueError(f"first_timestep must be an int in 0..{T - 1} or None (= {T - 1}), got {first_timestep!r}")
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= first + 1:
            raise ValueError(f"num_steps must be an int in 1..{first + 1} (the timesteps 0..{first}), got {num_steps!r}")
        if not 0.0 <= float(eta) <= 1.0:
            raise ValueError(f"eta must be in [0, 1] (0 = deterministic DDIM, 1 = DDPM-like), got {eta!r}")
        self.num_steps, self.eta = num_steps, float(eta)
        self.timesteps = trailing_timesteps(first, num_steps)        # (S,) descending, starts at first

    def step(self, eps_pred: torch.Tensor, t: int, xt: torch.Tensor, generator=None):
        """eps_pred, xt (B, ...), t an int in self.timesteps -> (x_prev (B, ...), x0_pred (B, ...))."""
        t = self._check_step(eps_pred, t, xt)
        prev_t = self.prev_timestep(t)
        alpha_bar, alpha_bar_prev = self._alpha_bar(t), self._alpha_bar(prev_t)
        x0_pred = self._predict_x0(eps_pred, t, xt)                                          # 1.
        sigma = self.eta * ((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)) ** 0.5  # 2.
        c = max(1 - alpha_bar_prev - sigma ** 2, 0.0) ** 0.5
        # 3.-4. with eps re-derived from the (clipped) x0_pred, eps = (x_t - sqrt(alpha_bar_t) x0_pred)
        # / sqrt(1 - alpha_bar_t), and the terms regrouped as a * x0_pred + b * x_t so that no small
        # numbers are divided in float32 (the same numbers as DDPM's posterior mean when eta = 1).
        b = c / (1 - alpha_bar) ** 0.5
        a = alpha_bar_prev ** 0.5 - b * alpha_bar ** 0.5
        x_prev = a * x0_pred + b * xt                 # = sqrt(alpha_bar_prev) x0_pred + c * eps
        if sigma > 0 and prev_t >= 0:
            x_prev = x_prev + sigma * _randn_like(xt, generator)
        return x_prev, x0_pred


class DDIMInversion(DDIMSampler):
    """DDIM run backwards: a clean x0 -> the x_t that DDIM (eta = 0) turns back into it.

    The eta = 0 step from t to prev_t keeps x0_pred and eps and only re-mixes them, so
    it can be walked the other way, prev_t -> t, by swapping the two alpha_bars:

        1. x0_pred = (x_prev - sqrt(1 - alpha_bar_prev) eps) / sqrt(alpha_bar_prev)
        2. x_t     = sqrt(alpha_bar_t) x0_pred + sqrt(1 - alpha_bar_t) eps

    The exact eps would be eps_theta(x_t, t), unknown before x_t is; inversion uses
    eps_theta(x_prev, t) instead (`sample` calls eps_fn at the step's target t), which
    is close when the steps are small. `timesteps` are DDIM's, ascending (19, 39, ..., 999
    for 50 steps), cut at the `strength` fraction of them, so that

        zt = sample(eps_fn, DDIMInversion(schedule, 50, strength), z0)
        z0 = sample(eps_fn, DDIMSampler(schedule, 50), zt, start_index=50 - len(inversion))

    returns (nearly) the z0 it started from: the starting point of editing by inversion.

    Taught in notebooks/09_toolbox.ipynb.
    """

    def __init__(self, schedule: NoiseSchedule, num_steps: int = 50, strength: float = 1.0,
                 clip_x0: bool | float | None = True, first_timestep: int | None = None):
        super().__init__(schedule, num_steps, eta=0.0, clip_x0=clip_x0, first_timestep=first_timestep)
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 <= strength <= 1:
            raise ValueError(f"strength must be a number in [0, 1] (the fraction of the steps inverted), "
                             f"got {strength!r}")
        steps_to_run = int(round(float(strength) * num_steps))        # as img2img_start counts them
        self.timesteps = self.timesteps.flip(0)[:steps_to_run]         # (steps_to_run,) ascending

    def step(self, eps_pred: torch.Tensor, t: int, x_prev: torch.Tensor, generator=None):
        """eps_pred, x_prev (B, ...) at the timestep before t -> (x_t (B, ...), x0_pred (B, ...))."""
        t = self._check_step(eps_pred, t, x_prev)
        index = int((self.timesteps == t).nonzero()[0])
        from_t = int(self.timesteps[index - 1]) if index > 0 else -1     # -1: x_prev is x0 itself
        alpha_bar_prev, alpha_bar = self._alpha_bar(from_t), self._alpha_bar(t)
        x0_pred = x0_from_eps(x_prev, eps_pred, alpha_bar_prev)                         # 1.
        if self.clip_x0 is not None:
            x0_pred = x0_pred.clamp(-self.clip_x0, self.clip_x0)
        return alpha_bar ** 0.5 * x0_pred + (1 - alpha_bar) ** 0.5 * eps_pred, x0_pred   # 2.


class _FlowSampler:
    """What the rectified-flow ODE samplers share: the grid of s from 1 (noise) to 0 (data).

    The network predicts the velocity v = dx/ds (objectives.flow_matching_loss);
    sampling integrates dx/ds = v(x, s) backwards over s_0 = 1 > s_1 > ... > s_N = 0,
    evenly spaced. The network sees t = 1000 s (a float tensor), so `timesteps`
    holds floats, and x0_pred = x_s - s v (objectives.x0_from_velocity).
    """

    def __init__(self, num_steps: int = 50):
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or not 1 <= num_steps <= FLOW_TIMESTEPS:
            raise ValueError(f"num_steps must be an int in 1..{FLOW_TIMESTEPS} (ODE steps from s = 1 to 0), "
                             f"got {num_steps!r}")
        self.num_steps = num_steps
        self.sigmas = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)   # (N+1,) s_0 = 1 ... s_N = 0
        self.timesteps = (self.sigmas[:-1] * FLOW_TIMESTEPS).float()                  # (N,) t = 1000 s, one per step

    def __len__(self) -> int:
        return len(self.timesteps)

    def _index(self, t: float) -> int:
        """i such that t = 1000 s_i (the grid point t sits on)."""
        matches = (self.sigmas * FLOW_TIMESTEPS - float(t)).abs() < 1e-3
        if not matches[:-1].any():
            raise ValueError(f"t={float(t)} is not one of this sampler's timesteps")
        return int(matches.nonzero()[0])

    def _check_step(self, v_pred, xt):
        if v_pred.shape != xt.shape:
            raise ValueError(f"v_pred shape {tuple(v_pred.shape)} must equal xt shape {tuple(xt.shape)}")

    def start_index(self, step: int) -> int:
        """Index in `timesteps` where step number `step` (0..N) begins (img2img skips the first ones)."""
        return step


class FlowEulerSampler(_FlowSampler):
    """Euler's method on dx/ds = v(x, s), from s = 1 to s = 0 in num_steps equal steps:

        x_{s_{i+1}} = x_{s_i} + (s_{i+1} - s_i) v(x_{s_i}, s_i)            (s_{i+1} - s_i < 0)

    If the paths of the flow were exactly straight, one step would suffice; the
    learned (averaged) paths bend a little, so a few steps are needed. Euler on
    this ODE is DDIM (eta = 0) written in the flow's own coordinates.

    Taught in notebooks/08_sd3.ipynb.
    """

    def step(self, v_pred: torch.Tensor, t: float, xt: torch.Tensor, generator=None):
        """v_pred, xt (B, ...), t in self.timesteps -> (x at the next s (B, ...), x0_pred (B, ...))."""
        self._check_step(v_pred, xt)
        i = self._index(t)
        s, s_next = float(self.sigmas[i]), float(self.sigmas[i + 1])
        return xt + (s_next - s) * v_pred, x0_from_velocity(xt, v_pred, s)


class FlowHeunSampler(_FlowSampler):
    """Heun's method (Karras et al. 2022, Algorithm 1, no churn): two slopes per step.

        1. d1     = v(x_i, s_i)                            the slope here
        2. x_e    = x_i + (s_{i+1} - s_i) d1                an Euler guess at s_{i+1}
        3. d2     = v(x_e, s_{i+1})                        the slope there
        4. x_{i+1} = x_i + (s_{i+1} - s_i) (d1 + d2) / 2    the trapezoid rule: error O(h^2), Euler's O(h)

    Twice the network calls per step, but far fewer steps for the same accuracy.
    To keep the single loop of `sample`, `timesteps` lists both evaluation times
    of each step, [t_0, t_1 | t_1, t_2 | ... | t_{N-1}, t_N] (2N entries), and
    `step` alternates: the first call of a step returns x_e and remembers (x_i, d1),
    the second returns x_{i+1} (as diffusers' HeunDiscreteScheduler does); a
    `sample` callback sees both halves.

    Taught in notebooks/08_sd3.ipynb.
    """

    def __init__(self, num_steps: int = 25):
        super().__init__(num_steps)
        t = (self.sigmas * FLOW_TIMESTEPS).float()                                     # (N+1,)
        self.timesteps = torch.stack([t[:-1], t[1:]], dim=1).reshape(-1)               # (2N,) pairs (t_i, t_{i+1})
        self._pending = None                                                           # x_i, d1, ... between the calls

    def start_index(self, step: int) -> int:
        return 2 * step

    def step(self, v_pred: torch.Tensor, t: float, xt: torch.Tensor, generator=None):
        """v_pred, xt (B, ...), t in self.timesteps -> (x_e or x_{i+1} (B, ...), x0_pred (B, ...))."""
        self._check_step(v_pred, xt)
        pending = self._pending
        if pending is not None and abs(pending["t_next"] - float(t)) < 1e-3:           # second call: 3.-4.
            self._pending = None
            h = pending["s_next"] - pending["s"]
            x_next = pending["x"] + h * (pending["d1"] + v_pred) / 2
            return x_next, x0_from_velocity(xt, v_pred, pending["s_next"])
        i = self._index(t)                                                              # first call: 1.-2.
        s, s_next = float(self.sigmas[i]), float(self.sigmas[i + 1])
        self._pending = dict(t_next=s_next * FLOW_TIMESTEPS, s=s, s_next=s_next, x=xt, d1=v_pred)
        return xt + (s_next - s) * v_pred, x0_from_velocity(xt, v_pred, s)


@torch.no_grad()
def sample(eps_fn, sampler: _Sampler, xT: torch.Tensor, generator=None, start_index: int = 0,
           progress: bool = True, return_trajectory: bool = False, callback=None):
    """Run the reverse process from xT through sampler.timesteps[start_index:].

    eps_fn(xt (B, ...), t (B,)) -> the network's prediction; usually `lambda x, t: model(x, t)`.
    t has the dtype of sampler.timesteps: long for DDPM/DDIM (eps), float for the flow
    samplers (t = 1000 s; the prediction is the velocity v).
    callback(i, t, xt, x0_pred), when given, runs after step i (t: the timestep just
    taken, xt: the new sample, x0_pred: this step's x0 guess); if it returns a tensor,
    that tensor replaces xt (inpainting pastes the known region back this way).
    Returns x0 (B, ...), or (x0, trajectory) with trajectory = [xT, ..., x0] on the CPU.
    """
    timesteps = sampler.timesteps[start_index:]
    xt, trajectory = xT, [xT.detach().cpu()]
    for i, t in enumerate(tqdm(timesteps.tolist(), desc=type(sampler).__name__, disable=not progress,
                               leave=False)):
        t_batch = torch.full((xt.shape[0],), t, dtype=timesteps.dtype, device=xt.device)
        eps_pred = eps_fn(xt, t_batch)
        xt, x0_pred = sampler.step(eps_pred, t, xt, generator=generator)
        if callback is not None:
            replaced = callback(i, t, xt, x0_pred)
            xt = xt if replaced is None else replaced
        if return_trajectory:
            trajectory.append(xt.detach().cpu())
    return (xt, trajectory) if return_trajectory else xt


def img2img_start(sampler, x0: torch.Tensor, strength: float, generator=None, noise=None):
    """SDEdit's start point: noise a real x0 part of the way and denoise from there.

    strength in [0, 1] is the fraction of the sampler's steps to run: 1 starts
    from (almost) pure noise and ignores the image, 0 returns x0 unchanged.
    For a flow sampler the start is on the straight line, x_s = (1 - s) x0 + s eps,
    at the grid point s = round(strength * N) / N (exactly strength when N * strength is whole).
    Returns (xt, start_index) for sample(..., xt, start_index=start_index).

    Taught in notebooks/06_latent_diffusion.ipynb.
    """
    if not isinstance(strength, (int, float)) or not 0.0 <= float(strength) <= 1.0:
        raise ValueError(f"strength must be a number in [0, 1] (0 = keep the image, 1 = ignore it), "
                         f"got {strength!r}")
    if isinstance(sampler, _FlowSampler):
        steps_to_run = int(round(float(strength) * sampler.num_steps))
        skipped = sampler.num_steps - steps_to_run
        if steps_to_run == 0:
            return x0, len(sampler.timesteps)
        noise = _randn_like(x0, generator) if noise is None else noise
        return flow_interpolate(x0, float(sampler.sigmas[skipped]), noise), sampler.start_index(skipped)
    num = len(sampler.timesteps)
    steps_to_run = int(round(float(strength) * num))
    start_index = num - steps_to_run
    if steps_to_run == 0:
        return x0, start_index
    t = int(sampler.timesteps[start_index])
    noise = _randn_like(x0, generator) if noise is None else noise
    t_batch = torch.full((x0.shape[0],), t, dtype=torch.long)
    return sampler.schedule.q_sample(x0, t_batch, noise), start_index
