"""Write notebooks/01_forward_diffusion.ipynb, 02_ddpm.ipynb and 03_ddim.ipynb.

    python tools/make_notebooks_01_03.py
    MINILDM_FAST=0 jupyter nbconvert --to notebook --execute --inplace notebooks/0[123]_*.ipynb
"""
import sys

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook


class Notebook:
    def __init__(self):
        self.cells = []

    def md(self, text):
        self.cells.append(new_markdown_cell(text.strip()))

    def code(self, text):
        self.cells.append(new_code_cell(text.strip()))

    def write(self, path):
        nb = new_notebook(cells=self.cells)
        nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
        nb.metadata["language_info"] = {"name": "python"}
        nbformat.write(nb, path)
        print("wrote", path)


SETUP = """
from minildm.course import setup
FAST, device = setup(seed=0)
"""

# =============================================================================
# 01 forward diffusion
nb = Notebook()
nb.md("""
# 01 · Forward diffusion: how data turns into noise

Put a drop of ink in a glass of still water. At first it is a small, sharp shape. A few seconds
later it has frayed at the edges; a minute later it is a cloud; in the end the whole glass is evenly
tinted and nothing tells you what shape the drop had. That spreading is **diffusion**, and it only
goes one way on its own.

A diffusion model copies the glass of water. The **forward process** spreads data out with a little
Gaussian noise at each of T = 1000 steps until it is pure noise. The model then learns to run the
film **backwards** (notebooks 02 and 03): from noise to a drop, from noise to an image.

In this lesson you will

* watch a 2-D *ink drop* of points spread step by step, and a Shapes image dissolve;
* move a slider over the timestep t;
* compare the **linear** and **cosine** noise schedules through alpha_bar and the signal-to-noise ratio;
* see why you can jump from x0 to any x_t in **one** step (the closed form), and write it yourself.

Prerequisites: notebook 00. Minutes on a laptop CPU: about 1.
""")
nb.code(SETUP)
nb.code("""
import inspect

import matplotlib.pyplot as plt
import torch

from minildm import checks, viz
from minildm.data import shapes, toy2d
from minildm.schedule import NoiseSchedule, extract
""")
nb.md("""
## One step of noise

One forward step keeps a little less of the signal and adds a little noise:

$$x_t = \\sqrt{1-\\beta_t}\\,x_{t-1} + \\sqrt{\\beta_t}\\,\\epsilon, \\qquad \\epsilon \\sim \\mathcal N(0, I).$$

The numbers $\\beta_0, \\dots, \\beta_{T-1}$ are the **noise schedule** (t is 0-based in the code). The
square roots make the variance behave: if $x_{t-1}$ has variance 1, so does $x_t$, because
$(1-\\beta_t) + \\beta_t = 1$. Data shrinks towards 0 while noise grows, and after enough steps only
$\\mathcal N(0, I)$ is left.

`NoiseSchedule` holds the schedule; `q_step` is the step above.
""")
nb.code("""
schedule = NoiseSchedule("linear", num_timesteps=1000)
print(schedule)
print("beta goes from", schedule.beta[0].item(), "to", schedule.beta[-1].item())
print(inspect.getsource(NoiseSchedule.q_step))
""")
nb.md("""
## The ink drop spreads

2000 points in the shape of an ink drop, noised **one step at a time** with `q_step`. We take
pictures at a few timesteps along the way.
""")
nb.code("""
x = toy2d.ink_drop(2000, seed=0)          # (2000, 2)
snapshots, labels = [x], ["t = 0 (the drop)"]
keep = [10, 50, 150, 300, 999]
torch.manual_seed(0)
for t in range(1000):
    x = schedule.q_step(x, torch.full((len(x),), t))
    if t in keep:
        snapshots.append(x)
        labels.append(f"after t = {t}")
fig = viz.scatter_strip(snapshots[:3], labels[:3], lim=1.0, title="Close up: the drop frays")
plt.show()
fig = viz.scatter_strip(snapshots[2:], labels[2:], lim=3.0, title="Zoomed out: it spreads into a Gaussian")
plt.show()
""")
nb.md("""
The drop frays, blurs into a cloud, and ends as the round standard Gaussian. Exactly like ink,
nothing of the drop's shape is left at the end: the process **forgets** where it started.

## A Shapes image dissolves

The same happens to an image. Images live in [-1, 1] inside the models (pixels in [0, 1] are mapped
with `2 x - 1`), and every pixel gets its own noise.
""")
nb.code("""
images, captions, _ = shapes.sample_batch(1, "train", 32, seed=3)
x0 = images * 2 - 1                                     # (1, 3, 32, 32) in [-1, 1]
ts = [0, 25, 50, 100, 200, 300, 500, 999]
noise = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
strip = torch.cat([schedule.q_sample(x0, torch.tensor([t]), noise) for t in ts])
fig = viz.strip(((strip + 1) / 2).clamp(0, 1), [f"t = {t}" for t in ts], title=captions[0])
plt.show()
""")
nb.md("""
By t = 300 the shape is hard to see; by t = 999 it is gone. Notice we did not loop over steps here:
`q_sample` jumps straight to step t. Why that is allowed is the next section, but first, a slider.

## Slide over t

Drag the slider (in JupyterLab) to noise the image and the ink drop together. On a web page or in
fast mode you see three fixed values instead.
""")
nb.code("""
drop = toy2d.ink_drop(2000, seed=0)
drop_noise = torch.randn(drop.shape, generator=torch.Generator().manual_seed(1))


def draw(t):
    t_batch = torch.tensor([t])
    image = schedule.q_sample(x0, t_batch, noise)[0]
    points = schedule.q_sample(drop, t_batch.expand(len(drop)), drop_noise)
    ab = schedule.alpha_bar[t].item()
    fig, (a, b) = plt.subplots(1, 2, figsize=(6, 3))
    a.imshow(viz.to_numpy_image((image + 1) / 2), interpolation="nearest")
    a.set_title(f"t = {t}, alpha_bar = {ab:.3f}", fontsize=9)
    a.axis("off")
    b.scatter(points[:, 0], points[:, 1], s=1, alpha=0.5)
    b.set_xlim(-3, 3), b.set_ylim(-3, 3), b.set_aspect("equal")
    b.set_title("the ink drop at the same t", fontsize=9)
    return fig


viz.slider(draw, "t", list(range(0, 1000, 10)) + [999], static_values=[0, 150, 600])
""")
nb.md("""
## Why a closed form? Noise adds up

Two Gaussian noises in a row are one Gaussian noise: their variances add. Unroll two steps:

$$x_t = \\sqrt{\\alpha_t}\\big(\\sqrt{\\alpha_{t-1}}\\,x_{t-2} + \\sqrt{1-\\alpha_{t-1}}\\,\\epsilon_1\\big)
        + \\sqrt{1-\\alpha_t}\\,\\epsilon_2, \\qquad \\alpha_t = 1 - \\beta_t.$$

The two noise terms are independent with variances $\\alpha_t(1-\\alpha_{t-1})$ and $1-\\alpha_t$; their
sum has variance $1 - \\alpha_t\\alpha_{t-1}$. By induction, with $\\bar\\alpha_t = \\alpha_0\\alpha_1\\cdots\\alpha_t$:

$$q(x_t \\mid x_0) = \\mathcal N\\big(\\sqrt{\\bar\\alpha_t}\\,x_0,\\ (1-\\bar\\alpha_t) I\\big)
\\quad\\Longleftrightarrow\\quad x_t = \\sqrt{\\bar\\alpha_t}\\,x_0 + \\sqrt{1-\\bar\\alpha_t}\\,\\epsilon.$$

This is what makes training cheap: to teach the network about step 700 we do not simulate 700 steps,
we sample x_700 directly. Let us check it on the ink drop: 300 single steps vs one jump.
""")
nb.code("""
t = 299
stepwise = toy2d.ink_drop(20000, seed=5)
x0_points = stepwise.clone()
for s in range(t + 1):
    stepwise = schedule.q_step(stepwise, torch.full((len(stepwise),), s))
jump = schedule.q_sample(x0_points, torch.full((len(x0_points),), t))
print(f"300 single steps: mean {stepwise.mean(0).numpy().round(3)}, std {stepwise.std(0).numpy().round(3)}")
print(f"one closed-form jump: mean {jump.mean(0).numpy().round(3)}, std {jump.std(0).numpy().round(3)}")
fig = viz.scatter_strip([stepwise[:3000], jump[:3000]], ["300 single steps", "one jump to t = 299"])
plt.show()
print(inspect.getsource(NoiseSchedule.q_sample))
""")
nb.md("""
Same cloud, same statistics (up to sampling noise). `q_sample` uses `extract`, which picks
alpha_bar[t] for **each example** and reshapes it to (B, 1, 1, 1) so it broadcasts over the channels
and pixels: every image in a batch can be at a different t.

### Exercise 1 · write `q_sample`

Fill in `my_q_sample(schedule, x0, t, noise)` -> x_t for x0 of any shape (points (B, 2) or images
(B, C, H, W)) and t a LongTensor (B,) with one timestep per example. Use `schedule.alpha_bar`.
""")
nb.code("""
def my_q_sample(schedule, x0, t, noise):
    ### BEGIN SOLUTION
    alpha_bar = schedule.alpha_bar[t].view(-1, *[1] * (x0.ndim - 1))   # (B, 1, ..., 1)
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise
    ### END SOLUTION
""")
nb.code("""
# NBVAL_CHECK_OUTPUT
checks.q_sample(my_q_sample)
""")
nb.md("""
## Schedules: linear vs cosine

The **linear** schedule of the DDPM paper raises beta from 1e-4 to 0.02. The **cosine** schedule
(Nichol & Dhariwal, 2021) instead chooses alpha_bar directly as a squared cosine, so information is
destroyed more evenly. Two ways to look at a schedule:

* **alpha_bar_t**, the fraction of the signal's variance still there at t;
* the **signal-to-noise ratio** SNR(t) = alpha_bar_t / (1 - alpha_bar_t), best on a log scale.
""")
nb.code("""
linear, cosine = NoiseSchedule("linear"), NoiseSchedule("cosine")
fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
for s in (linear, cosine):
    a.plot(s.alpha_bar, label=s.kind)
    b.plot(s.snr(), label=s.kind)
a.set_title("alpha_bar_t: signal left"), a.set_xlabel("t"), a.legend()
b.set_yscale("log"), b.set_title("SNR(t) = alpha_bar / (1 - alpha_bar)"), b.set_xlabel("t"), b.legend()
plt.show()
for t in (100, 500, 900):
    print(f"t = {t}: alpha_bar linear {linear.alpha_bar[t]:.3f}, cosine {cosine.alpha_bar[t]:.3f}")
""")
nb.code("""
ts = [0, 100, 200, 300, 400, 500, 600, 800]
rows = torch.cat([torch.cat([s.q_sample(x0, torch.tensor([t]), noise) for t in ts]) for s in (linear, cosine)])
fig = viz.image_grid(((rows + 1) / 2).clamp(0, 1), [f"{s.kind} t={t}" for s in (linear, cosine) for t in ts],
                     ncols=len(ts), title="top: linear, bottom: cosine")
plt.show()
""")
nb.md("""
With the linear schedule the image is practically gone after t = 500: the last half of the steps
is spent on almost pure noise. The cosine schedule keeps a recognisable image for longer and
spends more steps in the interesting middle range. The course's pixel UNet (lessons 02-03) uses
the cosine schedule for exactly that reason: trained for the same 6000 steps, it makes 98% clean
Shapes images with 50 DDIM steps, against 92% with the linear schedule (docs/results_ddpm.md).
Both are one argument away: `NoiseSchedule("linear" or "cosine", 1000)`.

### Exercise 2 · alpha_bar from the betas

Write `my_alpha_bar(beta)` -> alpha_bar for a (T,) tensor of betas. Remember t is 0-based:
alpha_bar[0] = 1 - beta[0].
""")
nb.code("""
def my_alpha_bar(beta):
    ### BEGIN SOLUTION
    return torch.cumprod(1 - beta, dim=0)
    ### END SOLUTION
""")
nb.code("""
# NBVAL_CHECK_OUTPUT
checks.alpha_bar_from_betas(my_alpha_bar)
""")
nb.md("""
## Lesson checks

* the end of the forward process is the standard Gaussian, whatever the data;
* the closed form and the step-by-step process agree;
* alpha_bar only ever goes down, and the cosine schedule keeps more signal in the middle.
""")
nb.code("""
# NBVAL_CHECK_OUTPUT
end = schedule.q_sample(toy2d.two_moons(20000, seed=1), torch.full((20000,), 999))
assert end.mean(0).abs().max() < 0.05 and (end.std(0) - 1).abs().max() < 0.05
assert (stepwise.std(0) - jump.std(0)).abs().max() < 0.05
assert (linear.alpha_bar[1:] < linear.alpha_bar[:-1]).all()
assert cosine.alpha_bar[500] > linear.alpha_bar[500]
print("Lesson 01 checks passed.")
""")
nb.write("notebooks/01_forward_diffusion.ipynb")

# =============================================================================
# 02 DDPM
nb = Notebook()
nb.md("""
# 02 · DDPM: learning to run the film backwards

Notebook 01 noised data until nothing was left. Undoing one small step of noise is a much easier
problem than making an image from scratch: if we knew the noise $\\epsilon$ inside $x_t$, we could
subtract a bit of it. So we train a network $\\epsilon_\\theta(x_t, t)$ to **predict the noise**, and
then walk from pure noise back to data, one small step at a time. This is DDPM (Ho et al., 2020).

In this lesson you will

* write the **training loss** (DDPM Algorithm 1) and train a small MLP denoiser on 2-D points in seconds;
* watch the **reverse process** gather a Gaussian cloud back into an ink drop and into two moons;
* write **one sampling step** (DDPM Algorithm 2);
* meet the **UNet**, the image denoiser, and sample Shapes images with it, looking at the whole trajectory.

Prerequisites: notebook 01. Minutes on a laptop CPU: about 4 (the pixel UNet's weights are shipped;
training it yourself takes about 10 minutes with one command, shown below).
""")
nb.code(SETUP)
nb.code("""
import inspect
import time

import matplotlib.pyplot as plt
import torch

from minildm import checks, ddpm, viz
from minildm.data import toy2d
from minildm.samplers import DDIMSampler, DDPMSampler, sample
from minildm.schedule import NoiseSchedule
from minildm.unet import UNet

schedule = NoiseSchedule("linear", 1000)
""")
nb.md("""
## The training objective

Pick a clean example $x_0$, a random timestep $t$ and fresh noise $\\epsilon$; noise $x_0$ in one
jump with `q_sample`; ask the network which noise it was:

$$\\mathcal L = \\mathbb E_{x_0, t, \\epsilon}\\ \\big\\| \\epsilon - \\epsilon_\\theta\\big(\\sqrt{\\bar\\alpha_t}\\,x_0 +
\\sqrt{1-\\bar\\alpha_t}\\,\\epsilon,\\ t\\big) \\big\\|^2 .$$

That is the whole of DDPM training. The library's version, used for every diffusion model in the
course (points, pixels, latents):
""")
nb.code("""
print(inspect.getsource(ddpm.diffusion_loss))
""")
nb.md("""
### Exercise 1 · the training loss

Write `my_loss(model, schedule, x0, t, noise)`: noise x0 to x_t, predict the noise with
`model(xt, t)`, and return the mean squared error as a single number.
""")
nb.code("""
def my_loss(model, schedule, x0, t, noise):
    ### BEGIN SOLUTION
    xt = schedule.q_sample(x0, t, noise)
    eps_pred = model(xt, t)
    return ((eps_pred - noise) ** 2).mean()
    ### END SOLUTION
""")
nb.code("""
# NBVAL_CHECK_OUTPUT
checks.training_loss(my_loss)
""")
nb.md("""
## A denoiser for 2-D points, trained in seconds

`MLPDenoiser` is a few linear layers that see the point and a sinusoidal embedding of t.
`ddpm.fit_points` trains it with the loss above through the course's one training loop
(`minildm/train.py`), on fresh ink-drop points at every step.
""")
nb.code("""
point_steps = 150 if FAST else 1500
t0 = time.perf_counter()
ink = ddpm.fit_points("ink_drop", steps=point_steps, batch_size=256, progress=not FAST)
print(f"trained the ink-drop denoiser: {point_steps} steps in {time.perf_counter() - t0:.0f} s, "
      f"final loss {ink.history[-1]['loss']:.3f}")
plt.figure(figsize=(5, 2.5))
plt.plot([h["step"] for h in ink.history], [h["loss"] for h in ink.history])
plt.xlabel("step"), plt.ylabel("loss"), plt.title("MLP denoiser, ink drop")
plt.show()
""")
nb.md("""
## The reverse process

Start from 1000 points of pure noise and apply the sampler's step for t = 999, 998, ..., 0.
`sample(eps_fn, sampler, xT)` is the loop; `return_trajectory=True` keeps every x_t so we can watch
the film run backwards: the Gaussian cloud gathers into the drop.
""")
nb.code("""
n_points = 500 if FAST else 1000
xT = torch.randn(n_points, 2, generator=torch.Generator().manual_seed(0))
points, trajectory = sample(lambda x, t: ink.model(x, t), DDPMSampler(schedule, clip_x0=False), xT,
                            return_trajectory=True, progress=False)
frames = [0, 500, 800, 900, 950, 980, 1000]   # index i = after i reverse steps
fig = viz.scatter_strip([trajectory[i] for i in frames] + [toy2d.ink_drop(n_points, seed=1)],
                        [f"t = {1000 - i}" for i in frames] + ["real ink drop"], lim=1.5,
                        title="DDPM reverse process: noise -> ink drop")
plt.show()
""")
nb.md("""
Most of the gathering happens in the last few hundred steps, where the noise level is low enough
for the shape to matter. The same model class, trained on two moons:
""")
nb.code("""
moons = ddpm.fit_points("two_moons", steps=point_steps, batch_size=256, progress=False)
moon_points, moon_traj = sample(lambda x, t: moons.model(x, t), DDPMSampler(schedule, clip_x0=False), xT,
                                return_trajectory=True, progress=False)
fig = viz.scatter_strip([moon_traj[i] for i in frames] + [toy2d.two_moons(n_points, seed=1)],
                        [f"t = {1000 - i}" for i in frames] + ["real two moons"], lim=2,
                        title="DDPM reverse process: noise -> two moons")
plt.show()
""")
nb.md("""
## One step back: DDPM Algorithm 2

Given $x_t$ and the predicted noise, one reverse step is

$$x_{t-1} = \\frac{1}{\\sqrt{\\alpha_t}}\\Big(x_t - \\frac{\\beta_t}{\\sqrt{1-\\bar\\alpha_t}}\\,\\epsilon_\\theta(x_t, t)\\Big)
+ \\sigma_t z, \\qquad z \\sim \\mathcal N(0, I),$$

with no noise at the last step (t = 0). The first part is the mean of the Gaussian posterior
$q(x_{t-1} \\mid x_t, x_0)$ with $x_0$ replaced by the network's guess; $\\sigma_t^2$ is its variance
$\\tilde\\beta_t = \\frac{1-\\bar\\alpha_{t-1}}{1-\\bar\\alpha_t}\\beta_t$ (`schedule.posterior_variance`).
`DDPMSampler` writes it in that posterior form, which also lets it clip the guess of $x_0$ to [-1, 1]
for images:
""")
nb.code("""
print(inspect.getsource(DDPMSampler.step))
""")
nb.md("""
### Exercise 2 · one DDPM step

Write `my_ddpm_step(schedule, xt, t, eps_pred, z)` -> $x_{t-1}$ with the formula above, t a Python
int, $\\sigma_t^2$ = `schedule.posterior_variance[t]`, and no noise when t = 0.
""")
nb.code("""
def my_ddpm_step(schedule, xt, t, eps_pred, z):
    ### BEGIN SOLUTION
    beta, alpha, alpha_bar = schedule.beta[t], schedule.alpha[t], schedule.alpha_bar[t]
    mean = (xt - beta / (1 - alpha_bar).sqrt() * eps_pred) / alpha.sqrt()
    if t == 0:
        return mean
    return mean + schedule.posterior_variance[t].sqrt() * z
    ### END SOLUTION
""")
nb.code("""
# NBVAL_CHECK_OUTPUT
checks.ddpm_step(my_ddpm_step)
""")
nb.md("""
## From points to pictures: the UNet

For images the denoiser is a **UNet** (`minildm/unet.py`): convolutions see neighbourhoods, the
down path shrinks the image so deeper layers see the whole of it, the up path grows it back, and
**skip connections** carry fine detail across. Each residual block also receives the timestep
embedding, so the same network knows whether it is cleaning a faint speckle (t small) or inventing
a layout from a blur (t large). At the lowest resolution, self-attention lets every pixel see every
other one. The same class, with `context_dim` set, will later cross-attend to text.
""")
nb.code("""
print(inspect.getsource(UNet.forward))
""")
nb.md("""
The shipped pixel UNet was trained with the `cpu` preset on 32 x 32 Shapes images:

    python -m minildm train pixel_unet --preset cpu --out minildm/weights

(see docs/results_ddpm.md for the measured time). Here we first train a *very* short run ourselves
to see what an undertrained denoiser makes, then load the shipped weights.
""")
nb.code("""
preset = "tiny" if FAST else "cpu"
short_steps = 4 if FAST else 60
short = ddpm.fit(preset, out_dir=None, run_dir=None, steps=short_steps, progress=False)
early = ddpm.generate(short, short.schedule, 8, sampler="ddim", num_steps=50, progress=False)   # its own schedule
fig = viz.image_grid(early, ncols=8, title=f"after {short_steps} training steps")
plt.show()
""")
nb.md("""
### Two changes for images: the cosine schedule, and predict v

The shipped UNet uses the **cosine** schedule of lesson 01 (`short.schedule` above; the 2-D
denoisers kept the linear one): on 32x32 images the linear schedule has erased the image by
t = 500, the cosine one spreads the steps over the noise levels where colour and shape are decided.
It was trained with the loss above and one more change: its target is not the noise
but $v = \\sqrt{\\bar\\alpha_t}\\,\\epsilon - \\sqrt{1-\\bar\\alpha_t}\\,x_0$ (Salimans & Ho, 2022;
`prediction="v"` in the preset). At small t, v is the noise; at large t it is minus the image.
Why bother? Near t = T almost nothing of the image is left in $x_t$, and recovering it from a noise
prediction, $\\hat x_0 = (x_t - \\sqrt{1-\\bar\\alpha_t}\\,\\epsilon_\\theta)/\\sqrt{\\bar\\alpha_t}$, divides a small
error by $\\sqrt{\\bar\\alpha_{999}}$ (0.006 for the linear schedule, 0.00005 for the cosine one): a briefly trained eps-network leaves speckle all over
the image. A v-network names the image directly. Since v, eps and $x_0$ determine each other given
$x_t$, `load_pixel_unet` wraps the network (`EpsFromV`) so that it still *returns eps*, and every
sampler in the course works unchanged.
""")
nb.code("""
model, pixel_schedule = ddpm.load_pixel_unet(device=device)
print(type(model).__name__, "around a", type(getattr(model, "model", model)).__name__)
print(model.config)
print(f"{sum(p.numel() for p in model.parameters()):,} parameters, schedule {pixel_schedule}")
print(inspect.getsource(ddpm.EpsFromV.forward))
""")
nb.md("""
## Sampling Shapes with DDPM

1000 reverse steps, each a full UNet forward pass over the batch. (In fast mode we sample fewer
images with fewer steps; notebook 03 explains why that still works.)
""")
nb.code("""
n_images = 4 if FAST else 16
t0 = time.perf_counter()
if FAST:
    images = ddpm.generate(model, pixel_schedule, n_images, sampler="ddim", num_steps=20, eta=1.0, seed=0,
                           progress=False)
else:
    images = ddpm.generate(model, pixel_schedule, n_images, sampler="ddpm", seed=0)
seconds = time.perf_counter() - t0
print(f"{n_images} images in {seconds:.1f} s")
fig = viz.image_grid(images, ncols=8, title="DDPM samples from the pixel UNet")
plt.show()
""")
nb.md("""
How good are they? The course's **judge** (`minildm/data/judge.py`) reads shape, color, size and
position off an image with simple pixel rules and calls an image *clean* when it looks like the
data: one object, a palette color, nothing stray on the black background.
""")
nb.code("""
verdict = ddpm.grade(images)
print(f"clean: {verdict['clean_rate']:.0%} of {verdict['n']} images")
print("shapes among clean images:", verdict["shape_counts"])
print("colors among clean images:", verdict["color_counts"])
""")
nb.md("""
## The denoising trajectory

Along the way the sampler also makes a guess of the final image at every step,
$\\hat x_0 = (x_t - \\sqrt{1-\\bar\\alpha_t}\\,\\epsilon_\\theta)/\\sqrt{\\bar\\alpha_t}$. Top row: $x_t$;
bottom row: that guess. The layout (where, what color) is decided early, the crisp edges late.
""")
nb.code("""
traj_sampler = DDIMSampler(pixel_schedule, 50, eta=1.0) if FAST else DDPMSampler(pixel_schedule)
xT = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(7))
generator = torch.Generator().manual_seed(7)
xt, rows_x, rows_x0, ts = xT.to(device), [], [], []
show = set(traj_sampler.timesteps.tolist()[:: len(traj_sampler.timesteps) // 8]) | {0, int(traj_sampler.timesteps[-1])}
with torch.no_grad():
    for t in traj_sampler.timesteps.tolist():
        eps_pred = model(xt, torch.full((1,), t, device=device))
        xt, x0_pred = traj_sampler.step(eps_pred, t, xt, generator=generator)
        if t in show:
            rows_x.append(xt.cpu()), rows_x0.append(x0_pred.cpu()), ts.append(t)
grid = torch.cat(rows_x + rows_x0)
fig = viz.image_grid(((grid + 1) / 2).clamp(0, 1), [f"x_t, t={t}" for t in ts] + [f"x0 guess, t={t}" for t in ts],
                     ncols=len(ts), title="trajectory: x_t (top) and the predicted x0 (bottom)")
plt.show()
""")
nb.md("""
## Lesson checks

* your loss matches the library's and the 2-D denoiser learned something (the sampled cloud has the
  data's spread, not the noise's);
* the shipped UNet makes mostly clean Shapes images.
""")
nb.code("""
# NBVAL_CHECK_OUTPUT
real = toy2d.ink_drop(5000, seed=2)
assert (points.std(0) - real.std(0)).abs().max() < 0.25, "the sampled ink drop should be about as wide as the real one"
assert points.std(0).max() < 0.6, "the samples should no longer be unit Gaussian noise"
assert verdict["clean_rate"] >= 0.5, "the shipped pixel UNet should make mostly clean images"
print("Lesson 02 checks passed.")
""")
nb.write("notebooks/02_ddpm.ipynb")

# =============================================================================
# 03 DDIM
nb = Notebook()
nb.md("""
# 03 · DDIM: the same model, 20 times faster

DDPM needs all 1000 steps because every step adds fresh noise and only undoes a little. DDIM
(Song, Meng & Ermon, 2021) noticed that the *training* only ever used $q(x_t \\mid x_0)$, never the
individual steps. So we may pick a different reverse process with the same marginals: one that
**jumps** between a few timesteps and, with $\\eta = 0$, adds **no** noise at all. Same trained
network, no retraining, 50 steps instead of 1000.

In this lesson you will

* write the two formulas of a DDIM step: the **x0 prediction** and the **update**;
* sample the same UNet with 10, 25, 50, 250 and 1000 steps and compare **quality** and **wall time**;
* compare **eta = 0** (deterministic) with **eta = 1** (DDPM-like noise);
* check that, with eta = 0, the same seed always gives the same image.

Prerequisites: notebooks 01 and 02. Minutes on a laptop CPU: about 6 (1000-step sampling is the slow part).
""")
nb.code(SETUP)
nb.code("""
import inspect
import time

import matplotlib.pyplot as plt
import torch

from minildm import checks, ddpm, viz
from minildm.samplers import DDIMSampler, DDPMSampler, sample

model, schedule = ddpm.load_pixel_unet(device=device)
print(f"pixel UNet: {sum(p.numel() for p in model.parameters()):,} parameters, {schedule}")
""")
nb.md("""
## Step 1: guess x0

Solve the forward formula $x_t = \\sqrt{\\bar\\alpha_t}\\,x_0 + \\sqrt{1-\\bar\\alpha_t}\\,\\epsilon$ for $x_0$,
with the network's $\\epsilon_\\theta$ in place of the true noise:

$$\\hat x_0 = \\frac{x_t - \\sqrt{1-\\bar\\alpha_t}\\,\\epsilon_\\theta(x_t, t)}{\\sqrt{\\bar\\alpha_t}}.$$

### Exercise 1 · predict x0

Write `my_predict_x0(schedule, xt, t, eps_pred)` for images (B, C, H, W) and t a LongTensor (B,).
""")
nb.code("""
def my_predict_x0(schedule, xt, t, eps_pred):
    ### BEGIN SOLUTION
    alpha_bar = schedule.alpha_bar[t].view(-1, 1, 1, 1)
    return (xt - (1 - alpha_bar).sqrt() * eps_pred) / alpha_bar.sqrt()
    ### END SOLUTION
""")
nb.code("""
# NBVAL_CHECK_OUTPUT
checks.predict_x0(my_predict_x0)
""")
nb.md("""
## Step 2: jump to the previous timestep

DDIM re-noises the guess to the *previous* timestep it visits, $t' < t$, reusing the predicted noise as
the direction back to $x_t$, plus optional fresh noise:

$$x_{t'} = \\sqrt{\\bar\\alpha_{t'}}\\,\\hat x_0 + \\sqrt{1-\\bar\\alpha_{t'}-\\sigma^2}\\,\\epsilon_\\theta + \\sigma z,
\\qquad \\sigma = \\eta\\sqrt{\\frac{1-\\bar\\alpha_{t'}}{1-\\bar\\alpha_t}}\\sqrt{1-\\frac{\\bar\\alpha_t}{\\bar\\alpha_{t'}}}.$$

With $\\eta = 0$ there is no $z$: the whole path from $x_T$ to the image is fixed. With $\\eta = 1$ and
all 1000 steps, $\\sigma^2$ is exactly DDPM's posterior variance and DDIM **is** DDPM
(tests/test_samplers.py checks this step by step). After the last visited timestep, $t' = -1$ stands
for "clean", with $\\bar\\alpha_{-1} = 1$. The sampler's timesteps for 10 steps:
""")
nb.code("""
# NBVAL_CHECK_OUTPUT
print(DDIMSampler(schedule, num_steps=10).timesteps.tolist())
""")
nb.code("""
print(inspect.getsource(DDIMSampler.step))
""")
nb.md("""
### Exercise 2 · one DDIM update

Write `my_ddim_step(schedule, xt, eps_pred, t, prev_t, eta, z)` -> $x_{t'}$ with t and prev_t Python
ints (prev_t = -1 on the last step) and z the fresh noise to use when eta > 0. No clipping.
""")
nb.code("""
def my_ddim_step(schedule, xt, eps_pred, t, prev_t, eta, z):
    ### BEGIN SOLUTION
    alpha_bar = schedule.alpha_bar[t]
    alpha_bar_prev = schedule.alpha_bar[prev_t] if prev_t >= 0 else torch.tensor(1.0)
    x0_pred = (xt - (1 - alpha_bar).sqrt() * eps_pred) / alpha_bar.sqrt()
    sigma = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)).sqrt()
    direction = (1 - alpha_bar_prev - sigma ** 2).sqrt() * eps_pred
    return alpha_bar_prev.sqrt() * x0_pred + direction + sigma * z
    ### END SOLUTION
""")
nb.code("""
# NBVAL_CHECK_OUTPUT
checks.ddim_step(my_ddim_step)
""")
nb.md("""
## Steps vs quality vs time

The same UNet and the same starting noise, sampled with 10, 25, 50, 250 and 1000 DDIM steps
(eta = 0). Each grid row is one setting; the judge grades all images of the setting. (Fast mode
uses fewer images and settings. DDPM's 1000 steps cost the same per step as DDIM-1000; the
measured DDPM-1000 vs DDIM-50 comparison on more images is `python -m minildm evaluate pixel_unet`,
see docs/results_ddpm.md.)
""")
nb.code("""
settings = [("ddim", 5), ("ddim", 10), ("ddim", 25)] if FAST else \\
    [("ddim", 10), ("ddim", 25), ("ddim", 50), ("ddim", 250), ("ddim", 1000)]
n_images = 4 if FAST else 16
results, rows = [], []
for kind, steps in settings:
    t0 = time.perf_counter()
    images = ddpm.generate(model, schedule, n_images, sampler=kind, num_steps=steps, seed=0, progress=False)
    seconds = time.perf_counter() - t0
    verdict = ddpm.grade(images)
    results.append({"sampler": f"{kind.upper()}-{steps}", "clean": verdict["clean_rate"],
                    "s_per_image": seconds / n_images})
    rows.append(images[:8])
    print(f"{kind.upper():4s} {steps:5d} steps: clean {verdict['clean_rate']:6.1%}   "
          f"{seconds / n_images * 1000:8.1f} ms per image")
labels = [r["sampler"] if i == 0 else "" for r in results for i in range(len(rows[0]))]
fig = viz.image_grid(torch.cat(rows), labels, ncols=len(rows[0]), title="same noise, more steps (top to bottom)")
plt.show()
""")
nb.code("""
fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.2))
names = [r["sampler"] for r in results]
a.bar(names, [r["clean"] for r in results]), a.set_ylim(0, 1), a.set_title("judge: clean images")
b.bar(names, [r["s_per_image"] for r in results]), b.set_yscale("log"), b.set_title("seconds per image (log)")
for ax in (a, b):
    ax.tick_params(axis="x", rotation=45)
plt.tight_layout()
plt.show()
""")
nb.md("""
Time grows linearly with the number of steps (one UNet pass each), while DDIM's quality saturates
early: the rows for 50, 250 and 1000 steps are practically the same images, and 50 steps cost 1/20
of 1000. That is why every practical diffusion system, Stable Diffusion included, samples with
DDIM-like solvers.

An honest caveat, measured in docs/results_ddpm.md on 600 images: for *this* small CPU-trained
UNet, DDPM's 1000 noisy steps still make a few more clean images (99.0%) than deterministic DDIM-50
(95.8%). The fresh noise of every DDPM step lets the sampler wash out the network's rare mistakes
(here: a blob that is half one colour, half another), while a deterministic path keeps them.
DDIM-50 with eta = 1 sits in between (97.5%); better-trained models close the gap.

## eta: 0 (deterministic) vs 1 (fresh noise)

Same $x_T$, 50 steps. With eta = 0 the result depends only on $x_T$; with eta = 1 it also depends on
the noise drawn along the way, so two runs with different noise seeds differ.
""")
nb.code("""
xT = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(11)).to(device)
eps_fn = lambda x, t: model(x, t)
runs = {}
for eta in (0.0, 1.0):
    for noise_seed in (1, 2):
        x0 = sample(eps_fn, DDIMSampler(schedule, 50, eta=eta), xT,
                    generator=torch.Generator().manual_seed(noise_seed), progress=False)
        runs[(eta, noise_seed)] = ((x0.cpu() + 1) / 2).clamp(0, 1)
grid = torch.cat([runs[k] for k in runs])
labels = [f"eta={eta:g}, noise {seed}" if i == 0 else "" for (eta, seed) in runs for i in range(6)]
fig = viz.image_grid(grid, labels, ncols=6, title="rows: eta 0 (two noise seeds), eta 1 (two noise seeds)")
plt.show()
print("eta 0, different noise seeds, identical images:", torch.equal(runs[(0.0, 1)], runs[(0.0, 2)]))
print("eta 1, different noise seeds, identical images:", torch.equal(runs[(1.0, 1)], runs[(1.0, 2)]))
""")
nb.md("""
## Same seed, same image

`ddpm.generate(..., seed=s)` draws $x_T$ from seed s; with eta = 0 nothing else is random, so a seed
*names* an image. Slide over the number of steps to see that image sharpen (a live slider in
JupyterLab; three fixed values on a web page).
""")
nb.code("""
a = ddpm.generate(model, schedule, 4, num_steps=25, seed=123, progress=False)
b = ddpm.generate(model, schedule, 4, num_steps=25, seed=123, progress=False)
print("same seed, same images:", torch.equal(a, b))


def draw(num_steps):
    images = ddpm.generate(model, schedule, 4, num_steps=num_steps, seed=123, progress=False)
    return viz.image_grid(images, ncols=4, title=f"seed 123, DDIM {num_steps} steps", scale=1.2)


viz.slider(draw, "num_steps", [1, 2, 3, 5, 10, 25, 50, 100], static_values=[2, 5, 25])
""")
nb.md("""
## Lesson checks

* DDIM with eta = 0 is deterministic: same seed, same images;
* eta = 1 adds noise: different noise, different images;
* 50 DDIM steps are much faster than 1000 steps (full mode) and the images are mostly clean.
""")
nb.code("""
# NBVAL_CHECK_OUTPUT
assert torch.equal(a, b)
assert torch.equal(runs[(0.0, 1)], runs[(0.0, 2)]) and not torch.equal(runs[(1.0, 1)], runs[(1.0, 2)])
by_name = {r["sampler"]: r for r in results}
if not FAST:
    assert by_name["DDIM-50"]["s_per_image"] * 5 < by_name["DDIM-1000"]["s_per_image"]
    assert by_name["DDIM-50"]["clean"] >= 0.5
print("Lesson 03 checks passed.")
""")
nb.write("notebooks/03_ddim.ipynb")
