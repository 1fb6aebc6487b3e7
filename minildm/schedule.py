"""Forward noising: how data turns into noise, one small step at a time.

Like a drop of ink in water, the forward process spreads data out until nothing
of it is left but a standard Gaussian. Each step mixes in a little noise:

    q(x_t | x_{t-1}) = N( sqrt(1 - beta_t) * x_{t-1},  beta_t * I )        (DDPM eq. 2)

Symbols (DDPM paper notation, t is 0-based here: t = 0 .. T-1):

    beta[t]       noise added at step t (the "schedule")
    alpha[t]      1 - beta[t], the signal kept at step t
    alpha_bar[t]  alpha[0] * alpha[1] * ... * alpha[t], the signal kept after t+1 steps

Because a sum of independent Gaussians is Gaussian, t+1 steps collapse into one:

    q(x_t | x0) = N( sqrt(alpha_bar_t) * x0,  (1 - alpha_bar_t) * I )        (DDPM eq. 4)
    x_t = sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * eps,   eps ~ N(0, I)

which is `q_sample`: a training step can jump straight to any t. Going back,
Bayes' rule gives the posterior of one step when x0 is known:

    q(x_{t-1} | x_t, x0) = N( mean_t, beta_tilde_t * I )                      (DDPM eq. 6-7)
    mean_t       = sqrt(alpha_bar_{t-1}) beta_t / (1 - alpha_bar_t) * x0
                 + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * x_t
    beta_tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * beta_t

with alpha_bar_{-1} = 1 (at t = 0 the posterior is x0 itself).

Where sampling starts (`start_timestep`). The log signal-to-noise ratio
lambda_t = log(sqrt(alpha_bar_t / (1 - alpha_bar_t))) falls to -9.9 at t = 999 of the
cosine schedule (alpha_bar ~2e-9): there an eps model's guess of x0 divides its error by
5e-5 and is noise. The latent pipeline's samplers (its DDIM and the diffusers solvers of
ecosystem.py) therefore start at the last t with lambda_t >= LAMBDA_MIN = -3.5 (t = 979 for the
cosine schedule, alpha_bar 1e-3; Stable Diffusion's own schedule ends at lambda -2.7), with their
steps spread evenly over 0..t_max (`trailing_timesteps`, DDIMSampler(first_timestep=...)). How -3.5
was chosen: minildm/ecosystem.py and docs/results_toolbox.md.

Taught in notebooks/01_forward_diffusion.ipynb.
"""
from __future__ import annotations

import copy
import math

import torch

SCHEDULE_KINDS = ("linear", "cosine")
LINEAR_BETA_START = 1e-4   # DDPM's beta_1 for T = 1000
LINEAR_BETA_END = 0.02     # DDPM's beta_T for T = 1000
COSINE_OFFSET = 0.008      # s in Nichol & Dhariwal (2021), keeps beta_0 from being tiny
MAX_BETA = 0.999           # betas are clipped here so alpha never reaches 0
LAMBDA_MIN = -3.5          # few-step samplers of a pipeline start at the last t with lambda_t >= this


def linear_betas(num_timesteps: int) -> torch.Tensor:
    """DDPM's linear schedule, from 1e-4 to 0.02 for T = 1000 (rescaled for other T) -> (T,)."""
    scale = 1000 / num_timesteps  # keeps alpha_bar_T about the same for any T
    betas = torch.linspace(scale * LINEAR_BETA_START, scale * LINEAR_BETA_END, num_timesteps,
                           dtype=torch.float64)
    return betas.clamp(max=MAX_BETA)  # very short schedules (T < 21) would otherwise reach beta >= 1


def cosine_betas(num_timesteps: int) -> torch.Tensor:
    """Improved-DDPM cosine schedule: alpha_bar(t) = cos^2(pi/2 * (t/T + s) / (1 + s)) -> (T,).

    The betas follow from beta_t = 1 - alpha_bar_t / alpha_bar_{t-1}. Compared with
    the linear schedule it destroys information more evenly over t, so fewer
    steps are wasted on pure noise at the end.
    """
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    f = torch.cos((steps + COSINE_OFFSET) / (1 + COSINE_OFFSET) * math.pi / 2) ** 2  # (T+1,)
    alpha_bar = f / f[0]
    betas = 1 - alpha_bar[1:] / alpha_bar[:-1]
    return betas.clamp(max=MAX_BETA)


def extract(a: torch.Tensor, t: torch.Tensor, shape) -> torch.Tensor:
    """a[t] reshaped to (B, 1, 1, ...) so it broadcasts against a tensor of `shape`.

    a: (T,) schedule tensor; t: (B,) long timesteps; shape: the shape of x, (B, ...).
    Returns (B, 1, ..., 1) with len(shape) dimensions, on t's device.
    """
    t = torch.as_tensor(t, device=a.device).long().reshape(-1)
    out = a.gather(0, t)                                   # (B,)
    return out.reshape(len(t), *([1] * (len(shape) - 1)))  # (B, 1, 1, ...)


class NoiseSchedule:
    """The beta schedule and everything derived from it, as (T,) float32 tensors.

    Usage:
        schedule = NoiseSchedule("linear", 1000)
        xt = schedule.q_sample(x0, t, noise)        # any shape (B, ...), t (B,) long

    Attributes: num_timesteps, kind, beta, alpha, alpha_bar, alpha_bar_prev
    (alpha_bar shifted by one, alpha_bar_prev[0] = 1) and posterior_variance.

    Taught in notebooks/01_forward_diffusion.ipynb.
    """

    def __init__(self, kind: str = "linear", num_timesteps: int = 1000):
        if kind not in SCHEDULE_KINDS:
            raise ValueError(f"unknown schedule kind {kind!r}; allowed: {', '.join(SCHEDULE_KINDS)}")
        if not isinstance(num_timesteps, int) or num_timesteps < 2:
            raise ValueError(f"num_timesteps must be an int >= 2, got {num_timesteps!r}")
        self.kind, self.num_timesteps = kind, num_timesteps
        beta = linear_betas(num_timesteps) if kind == "linear" else cosine_betas(num_timesteps)
        # Computed in float64, stored in float32 (the products over 1000 steps need the precision).
        alpha = 1 - beta
        alpha_bar = torch.cumprod(alpha, dim=0)
        alpha_bar_prev = torch.cat([torch.ones(1, dtype=torch.float64), alpha_bar[:-1]])
        self.beta = beta.float()                                  # (T,)
        self.alpha = alpha.float()                                # (T,)
        self.alpha_bar = alpha_bar.float()                        # (T,)
        self.alpha_bar_prev = alpha_bar_prev.float()              # (T,)
        self.posterior_variance = (beta * (1 - alpha_bar_prev) / (1 - alpha_bar)).float()  # (T,)
        # float64 copy on the CPU for samplers' scalar arithmetic: 1 - alpha_bar_t near t = 0
        # is ~1e-4, which float32 holds only to ~3 digits.
        self.alpha_bar_f64 = alpha_bar
        self._posterior_coef_x0 = (beta * alpha_bar_prev.sqrt() / (1 - alpha_bar)).float()
        self._posterior_coef_xt = ((1 - alpha_bar_prev) * alpha.sqrt() / (1 - alpha_bar)).float()

    def __repr__(self) -> str:
        return f"NoiseSchedule(kind={self.kind!r}, num_timesteps={self.num_timesteps})"

    def to(self, device) -> "NoiseSchedule":
        """A copy whose tensors live on `device`."""
        other = copy.copy(self)
        for name, value in vars(self).items():
            if isinstance(value, torch.Tensor) and value.dtype == torch.float32:
                setattr(other, name, value.to(device))
        return other

    @property
    def device(self) -> torch.device:
        return self.beta.device

    def _check_t(self, t) -> torch.Tensor:
        t = torch.as_tensor(t, device=self.device)
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise ValueError(f"timesteps t must be integers (a LongTensor), got dtype {t.dtype}")
        if t.numel() and (t.min() < 0 or t.max() >= self.num_timesteps):
            raise ValueError(f"timesteps must be in 0..{self.num_timesteps - 1}, got values in "
                             f"{int(t.min())}..{int(t.max())}")
        return t.long().reshape(-1)

    def _batch_t(self, t, like: torch.Tensor) -> torch.Tensor:
        """Checked timesteps (B,) on like's device, for a batch `like` (B, ...); one t serves all B."""
        t = self._check_t(t)
        if t.numel() == 1:
            t = t.expand(like.shape[0])
        return t.to(like.device)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Jump straight to step t:  x_t = sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * eps.

        x0: (B, ...) clean data; t: (B,) long (or one int for the whole batch);
        noise: eps, same shape as x0 (drawn with torch.randn_like when None).
        Returns xt with x0's shape.
        """
        t = self._batch_t(t, x0)
        if t.shape[0] != x0.shape[0]:
            raise ValueError(f"t has {t.shape[0]} timesteps for a batch of {x0.shape[0]}")
        noise = torch.randn_like(x0) if noise is None else noise
        if noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} must equal x0 shape {tuple(x0.shape)}")
        alpha_bar = extract(self.alpha_bar.to(x0.device), t, x0.shape)   # (B, 1, ...)
        return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise

    def q_step(self, x_prev: torch.Tensor, t: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        """One forward step:  x_t = sqrt(1 - beta_t) * x_{t-1} + sqrt(beta_t) * eps  (DDPM eq. 2).

        Iterating this from x0 (t = 0, 1, ..., k) gives the same distribution as q_sample(x0, k).
        """
        t = self._batch_t(t, x_prev)
        noise = torch.randn_like(x_prev) if noise is None else noise
        beta = extract(self.beta.to(x_prev.device), t, x_prev.shape)
        return (1 - beta).sqrt() * x_prev + beta.sqrt() * noise

    def posterior_mean_variance(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor):
        """q(x_{t-1} | x_t, x0) = N(mean, variance * I)  (DDPM eq. 7).

        x0, xt: (B, ...); t: (B,) long. Returns (mean (B, ...), variance (B, 1, ...)).
        """
        t = self._batch_t(t, xt)
        coef_x0 = extract(self._posterior_coef_x0.to(xt.device), t, xt.shape)
        coef_xt = extract(self._posterior_coef_xt.to(xt.device), t, xt.shape)
        mean = coef_x0 * x0 + coef_xt * xt
        variance = extract(self.posterior_variance.to(xt.device), t, xt.shape)
        return mean, variance

    def snr(self, t: torch.Tensor | None = None) -> torch.Tensor:
        """Signal-to-noise ratio alpha_bar_t / (1 - alpha_bar_t); all T values when t is None."""
        snr = self.alpha_bar / (1 - self.alpha_bar)
        return snr if t is None else snr[self._check_t(t)]


# ----------------------------------------------------------------------------
# Where sampling starts

def start_timestep(schedule: NoiseSchedule, lambda_min: float | None = LAMBDA_MIN) -> int:
    """t_max: the last timestep with lambda_t = log(sqrt(alpha_bar_t / (1 - alpha_bar_t))) >= lambda_min
    (T - 1 when lambda_min is None)."""
    T = schedule.num_timesteps
    if lambda_min is None:
        return T - 1
    alpha_bar = schedule.alpha_bar_f64
    lam = 0.5 * torch.log(alpha_bar / (1 - alpha_bar))                  # (T,) decreasing in t
    above = (lam >= lambda_min).nonzero()
    return int(above.max()) if len(above) else 0


def trailing_timesteps(t_max: int, num_steps: int) -> torch.Tensor:
    """num_steps timesteps (long, descending) spread evenly over 0..t_max and ending-aligned, as
    diffusers' timestep_spacing="trailing" makes them for a process of t_max + 1 timesteps:
    t_max = 999, 10 steps -> 999, 899, ..., 99 (the textbook DDIM's); t_max = 979 -> 979, 881, 783, ..., 97."""
    steps = torch.arange(num_steps, dtype=torch.float64)
    return (torch.round((t_max + 1) - steps * (t_max + 1) / num_steps) - 1).long()
