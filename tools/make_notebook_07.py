"""Write notebooks/07_scaling_up.ipynb (run from the repository root, then execute the notebook).

    python tools/make_notebook_07.py
    MINILDM_FAST=0 jupyter nbconvert --to notebook --execute --inplace notebooks/07_scaling_up.ipynb
"""
import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = []


def md(text):
    cells.append(new_markdown_cell(text.strip()))


def code(text):
    cells.append(new_code_cell(text.strip()))


md("""
# 07 · Scaling up: one training loop for a CPU, a GPU and many GPUs

Every model in this course — the 2-D denoiser, the VAE, CLIP, the pixel UNet and the latent UNet —
trained through **one** function, `minildm.train.train`. This lesson opens it up:

* what the loop does each step: **warm-up + cosine learning rate**, **EMA** of the weights (you write both);
* what changes on a **GPU** and why: bigger batches, **mixed precision** (bf16/fp16), `torch.compile`,
  the `channels_last` memory layout;
* how to train on **several GPUs** with `torchrun` and PyTorch's **DistributedDataParallel** (DDP),
  and how a global batch is split across GPUs (you write it);
* how a run survives a crash: **atomic checkpoints** and an exact **resume**;
* the **measured** figures of `python -m minildm bench` on the machine that built the course;
* a short real training run (the `tiny` preset on a CPU; a short `gpu`-preset run when a GPU is present).

Prerequisites: notebooks 02 (DDPM training) and 05 (the VAE). Minutes on a laptop CPU: about 3.
""")

code("""
from minildm.course import setup
FAST, device = setup(seed=0)
""")

code("""
import dataclasses
import inspect
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from minildm import bench, checks, distributed, train, viz
from minildm.course import REPO_ROOT
from minildm.data import toy2d
from minildm.ddpm import diffusion_loss
from minildm.schedule import NoiseSchedule
from minildm.unet import MLPDenoiser, UNet, UNetConfig

WORK = Path(tempfile.mkdtemp(prefix="minildm07_"))   # runs and weights of this notebook go here
""")

md("""
## 1 · The loop in one picture

A model plugs into the loop with two small functions, and the loop never needs to know which model
it trains (minGPT's `Trainer` is the model for this design):

    sample_batch(batch_size, generator, device) -> batch        fresh training data
    loss_fn(model, batch) -> loss   (or (loss, {"metric": value}))

Here is the module's own description of one step:
""")

code("""
print(train.__doc__)
""")

md("""
Everything that says *how* to train (not *what*) lives in one dataclass. Each model's presets
(`tiny`, `cpu`, `gpu`) are instances of it, and the command line overrides any field
(`--steps`, `--batch-size`, `--lr`, `--precision`, `--compile`, `--resume`, ...):
""")

code("""
print(inspect.getsource(train.TrainConfig))
""")

md("""
## 2 · The learning rate: warm-up, then cosine decay

At step 0 the weights are random and AdamW's running estimates of the gradient's size are still
empty, so a full-size step can throw the model somewhere it never recovers from. **Warm-up** grows
the learning rate linearly from almost 0 to its peak over the first `warmup_steps` steps. After that,
a **cosine** curve brings it smoothly down to `lr * min_lr_ratio`: big steps early to make progress,
small steps at the end to settle into a minimum.

$$
\\text{lr}(s) = \\begin{cases} \\text{lr}\\,\\dfrac{s+1}{W} & s < W \\\\[4pt]
\\text{lr}\\left(r + (1-r)\\,\\tfrac12\\big(1+\\cos(\\pi p)\\big)\\right),\\quad p = \\dfrac{s-W}{S-W} & s \\ge W \\end{cases}
$$

with $W$ = `warmup_steps`, $S$ = `steps`, $r$ = `min_lr_ratio` ($p$ stops at 1).

**Exercise 1.** Write the learning rate at step `step` (0-based).
""")

code("""
def my_lr_at(step, steps, warmup_steps, lr, min_lr_ratio):
    \"\"\"Learning rate at `step`: linear warm-up, then cosine decay to lr * min_lr_ratio.\"\"\"
    ### BEGIN SOLUTION
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min((step - warmup_steps) / max(1, steps - warmup_steps), 1.0)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
    ### END SOLUTION
""")

code("""
# NBVAL_CHECK_OUTPUT
checks.lr_schedule(my_lr_at)
""")

code("""
cfg = train.TrainConfig(steps=3000, warmup_steps=200, lr=1e-3, min_lr_ratio=0.1)  # the latent UNet's cpu preset
steps = range(0, cfg.steps + 1, 10)
fig, ax = plt.subplots(figsize=(6, 2.8))
ax.plot(steps, [train.lr_at(s, cfg) for s in steps], label="train.lr_at")
ax.axvline(cfg.warmup_steps, color="gray", ls=":", label="end of warm-up")
ax.set_xlabel("step"); ax.set_ylabel("learning rate"); ax.legend(); ax.grid(alpha=0.3)
ax.set_title("warm-up, then cosine decay to lr x min_lr_ratio")
plt.show()
""")

md("""
## 3 · EMA: average the weights you sample with

The weights after the last optimizer step wobble: each step follows one noisy mini-batch. An
**exponential moving average** (EMA) of the weights over the last few hundred steps smooths the
wobble out, and diffusion models sample visibly cleaner images from it. After each step:

$$ \\theta_\\text{EMA} \\leftarrow d\\,\\theta_\\text{EMA} + (1-d)\\,\\theta, \\qquad d \\approx 0.999 $$

so the average remembers about $1/(1-d)$ steps. `train.EMA` keeps such a copy of the whole model
(its first steps use a smaller $d$ so the random initial weights are forgotten quickly), and that copy
is what `fit()` saves for sampling.

**Exercise 2.** One EMA update of a tensor of weights: return the new average.
""")

code("""
def my_ema_update(ema, weights, decay):
    \"\"\"ema, weights: tensors of the same shape; decay in [0, 1). Returns the new EMA.\"\"\"
    ### BEGIN SOLUTION
    return decay * ema + (1 - decay) * weights
    ### END SOLUTION
""")

code("""
# NBVAL_CHECK_OUTPUT
checks.ema_update(my_ema_update)
""")

code("""
# A weight that drifts slowly while each step adds noise, and its EMA.
gen = torch.Generator().manual_seed(0)
target = torch.linspace(0, 1, 600)
raw = target + 0.15 * torch.randn(600, generator=gen)
fig, ax = plt.subplots(figsize=(7, 2.8))
ax.plot(raw, lw=0.6, alpha=0.5, label="weight after each step")
for decay in (0.9, 0.99):
    ema, trace = raw[:1].clone(), []
    for w in raw:
        ema = my_ema_update(ema, w.reshape(1), decay)
        trace.append(ema.item())
    ax.plot(trace, lw=2, label=f"EMA, decay {decay}")
ax.set_xlabel("step"); ax.legend(fontsize=8); ax.grid(alpha=0.3)
ax.set_title("the EMA follows the trend and ignores the step-to-step noise")
plt.show()
""")

md("""
## 4 · What changes on a GPU, and why

The loop is the same on every device; `train.pick_device("auto")` picks CUDA, then Apple's MPS, then
the CPU. What changes are the settings of the `gpu` presets, and each has a reason.

### 4.1 Bigger batches

A GPU has thousands of arithmetic units. One 32 × 32 image gives a small UNet far too little work to
keep them busy, so a GPU's throughput (images per second) keeps rising with the batch size until the
device is full — then memory is the limit. A CPU has a few cores and fills up at small batches.
Let us measure the pixel UNet's training step (forward + backward) on this device:
""")

code("""
unet = UNet(UNetConfig(base_channels=16, channel_mults=(1, 2, 2), attention_levels=(False, False, True))).to(device)
throughput = {}
batches = [1, 4, 16] if FAST else [1, 4, 16, 64] + ([256, 1024] if device.type == "cuda" else [])
for batch in batches:
    x = torch.randn(batch, 3, 32, 32, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    unet(x, t).square().mean().backward()                      # warm-up
    reps = 2 if FAST else 5
    t0 = time.perf_counter()
    for _ in range(reps):
        unet(x, t).square().mean().backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    throughput[batch] = batch * reps / (time.perf_counter() - t0)
    print(f"batch {batch:4d}: {throughput[batch]:8.1f} images/s")
""")

md("""
Under `torchrun` the `batch_size` of a preset is **per GPU**: 4 GPUs with `batch_size=256` train on
1024 images per step. A bigger batch gives a less noisy gradient, so the learning rate can usually
grow with it (a common rule of thumb: scale it with the square root of the batch growth, and keep the
warm-up).

### 4.2 Mixed precision: bf16 and fp16

A float32 number takes 4 bytes. Its 16-bit cousins take 2, so twice as many fit through the memory
bus and the GPU's tensor cores multiply them many times faster. They differ in where they spend
their 16 bits:
""")

code("""
for dtype in (torch.float32, torch.bfloat16, torch.float16):
    info = torch.finfo(dtype)
    print(f"{str(dtype):15s} {info.bits} bits   largest {info.max:10.3g}   "
          f"smallest step near 1: {info.eps:.3g}")
""")

md("""
**bf16** keeps float32's exponent (the same range, coarser steps), so gradients do not underflow and
no extra care is needed: the `gpu` presets use it (`precision="bf16"`). **fp16** has finer steps but
overflows above 65504 and flushes tiny gradients to zero; training in fp16 needs a **GradScaler**
that multiplies the loss by a large factor before `backward()` and divides the gradients again
before the optimizer step (skipping steps whose gradients overflowed). The loop does all of this;
the weights themselves stay float32 (that is why it is *mixed* precision).

`torch.autocast` picks the precision per operation: matmuls and convolutions in 16 bits, sums,
softmax and norms in float32. It also works on a CPU (slowly), which is how the tests exercise it:
""")

code("""
print(inspect.getsource(train.autocast_context))
layer = torch.nn.Linear(8, 8)
with train.autocast_context(torch.device("cpu"), "bf16"):
    out = layer(torch.randn(2, 8))
print("inside bf16 autocast a Linear returns", out.dtype, "- its weights are still", layer.weight.dtype)
""")

md("""
### 4.3 `torch.compile` and `channels_last`

`torch.compile(model)` traces the model's Python code once and generates fused GPU kernels (for
example one kernel for GroupNorm + SiLU instead of several, each reading and writing all of memory).
The first steps are slow (compiling takes seconds to minutes); after that a step is usually faster on
a GPU (`python -m minildm bench` on a GPU measures each model with compile off and on). On a CPU it
rarely pays off, so it is an option: `--compile`.

**channels_last** changes only how an image tensor is laid out in memory: NCHW stores each channel
as a whole plane, NHWC (channels last) stores all channels of one pixel next to each other, which is
what the GPU's tensor-core convolutions read fastest. The shape does not change, only the strides:
""")

code("""
x = torch.zeros(1, 3, 4, 4)
print("NCHW         strides", x.stride())
print("channels_last strides", x.contiguous(memory_format=torch.channels_last).stride())
print("the loop uses channels_last on CUDA:", train.use_channels_last(train.TrainConfig(), torch.device("cuda")),
      "| on this CPU:", train.use_channels_last(train.TrainConfig(), torch.device("cpu")))
""")

md("""
## 5 · Several GPUs: `torchrun` and DistributedDataParallel

`torchrun` starts one copy of the program per GPU and tells each copy its **rank**. Every copy holds
the whole model, draws its **own** batch and computes its own gradients; then an **all-reduce**
averages the gradients across all copies, so every copy takes exactly the same optimizer step and
the weights stay identical. Rank 0 alone shows the progress bar, writes the metrics and the checkpoints.
""")

code("""
fig = viz.ddp_diagram(world_size=3)
plt.show()
""")

md("""
Command lines (the same `train` command as always, started by `torchrun`):

```bash
# one machine, 4 GPUs
torchrun --standalone --nproc_per_node=4 -m minildm train ldm --preset gpu

# the same, compiled, resuming after a crash
torchrun --standalone --nproc_per_node=4 -m minildm train ldm --preset gpu --compile --resume

# two machines with 8 GPUs each: run this on both, with machine 0's address
torchrun --nnodes=2 --nproc_per_node=8 --rdzv_backend=c10d --rdzv_endpoint=HOST0:29500 \\
    -m minildm train ldm --preset gpu

# no GPU: two CPU processes talking over gloo (slow, but the same code path)
torchrun --standalone --nproc_per_node=2 -m minildm train vae --preset tiny --device cpu
```

Inside `train()`, DDP is three small steps (see `minildm/distributed.py`): join the process group
(NCCL on GPUs, gloo on CPUs), wrap the model, and give each rank its own data stream. Our data are
generated on the fly, so instead of a `DistributedSampler` each rank seeds its data generator with
`seed + rank`. The wrapper:
""")

code("""
print(inspect.getsource(distributed.wrap))
""")

md("""
With a *fixed* dataset, the ranks split each global batch instead: rank $r$ of $N$ takes its own
share of the samples. **Exercise 3.** Return the indices of the samples of a global batch that rank
`rank` processes (a `range` or a list). Every sample must go to exactly one rank, every rank must get
the same number of samples, and a batch that does not split evenly must raise a `ValueError`.
""")

code("""
def my_shard(global_batch, world_size, rank):
    \"\"\"Indices (0 .. global_batch-1) of the samples that rank `rank` of `world_size` processes.\"\"\"
    ### BEGIN SOLUTION
    if global_batch % world_size:
        raise ValueError(f"a global batch of {global_batch} does not split evenly over {world_size} ranks")
    per_rank = global_batch // world_size
    return range(rank * per_rank, (rank + 1) * per_rank)
    ### END SOLUTION
""")

code("""
# NBVAL_CHECK_OUTPUT
checks.shard_batch(my_shard)
""")

md("""
Does it really work? The full edition of this notebook launches two CPU processes with `torchrun`
(tests/test_ddp.py checks the same thing in CI: both ranks end with identical weights, and two ranks
with batch B follow exactly the trajectory of one process with batch 2B). On a machine with GPUs,
change `--device cpu` to `--device cuda` and `2` to the number of GPUs.
""")

code("""
if FAST:
    print("fast mode: skipping the 2-process torchrun run (about a minute on 2 CPU cores)")
else:
    script = REPO_ROOT / "tests" / "_ddp_worker.py"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script), str(WORK / "ddp")]
    print("$ torchrun", " ".join(cmd[3:]))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    print("exit code", proc.returncode)
    ranks = [torch.load(WORK / "ddp" / f"rank{r}.pt", weights_only=True) for r in range(2)]
    same = all(torch.equal(v, ranks[1]["raw"][k]) for k, v in ranks[0]["raw"].items())
    print("both ranks hold identical weights:", same)
    print("loss (averaged over the 2 ranks) every 5 steps:", [round(l, 3) for l in ranks[0]["losses"]])
""")

md("""
## 6 · Nothing lost: checkpoints and resume

Long runs crash: a laptop lid closes, a cloud GPU is pre-empted, someone presses Ctrl-C. With
`checkpoint_every=N` the loop writes every N steps, under `out_dir/checkpoint/`:

    model.safetensors     the weights (safetensors: loading it cannot run code)
    ema.safetensors       the EMA weights
    state.pt              step, optimizer, grad scaler, every random generator
                          (plain tensors and numbers: read with torch.load(weights_only=True))

The new checkpoint is first written to `checkpoint.tmp/` and then *renamed* into place; a rename is
atomic, so a kill at any moment leaves a complete checkpoint (tests/test_resume.py kills a process with
SIGKILL at random moments during writes to prove it). `resume=True` (`--resume`) restores everything
— including the random generators, so the resumed run draws exactly the batches and noise the
uninterrupted run would have.

Let us crash a run on purpose. The model is the 2-D denoiser of notebook 02 on the two-moons cloud:
""")

code("""
schedule = NoiseSchedule("linear", 1000)

def sample_points(n, generator, device):
    seed = int(torch.randint(0, 2 ** 31, (1,), generator=generator))
    return toy2d.make("two_moons", n, seed=seed).to(device)

def loss_fn(model, x0):
    return diffusion_loss(model, schedule, x0)

toy_cfg = train.TrainConfig(steps=60 if FAST else 400, batch_size=256, lr=3e-3, warmup_steps=20,
                            ema_decay=0.99, log_every=5, checkpoint_every=25, device="cpu", seed=0,
                            progress=False)
torch.manual_seed(0)
uninterrupted = train.train(MLPDenoiser(), loss_fn, sample_points,
                            dataclasses.replace(toy_cfg, out_dir=str(WORK / "toy_ref")), "toy")
print(f"uninterrupted: {uninterrupted.steps_run} steps, final loss {uninterrupted.history[-1]['loss']:.4f}")
""")

code("""
crash_at = int(toy_cfg.steps * 0.6) + 7          # between two checkpoints
batches = 0

def crashing_points(n, generator, device):      # the same data, until the "power cut"
    global batches
    batches += 1
    if batches > crash_at:
        raise KeyboardInterrupt("power cut!")
    return sample_points(n, generator, device)

run_dir = WORK / "toy_crash"
torch.manual_seed(0)
try:
    train.train(MLPDenoiser(), loss_fn, crashing_points, dataclasses.replace(toy_cfg, out_dir=str(run_dir)), "toy")
except KeyboardInterrupt as err:
    print(f"the run died during step {crash_at}: {err}")
print("left on disk:", sorted(p.name for p in (run_dir / "checkpoint").iterdir()))
state = torch.load(run_dir / "checkpoint" / "state.pt", weights_only=True)
print("last checkpoint at step", state["step"])
""")

code("""
torch.manual_seed(123)                            # a different init: the checkpoint overrides it
resumed = train.train(MLPDenoiser(), loss_fn, sample_points,
                      dataclasses.replace(toy_cfg, out_dir=str(run_dir), resume=True, progress=True), "toy")
same = all(torch.equal(a, b) for a, b in zip(resumed.model.state_dict().values(),
                                             uninterrupted.model.state_dict().values()))
print(f"resumed for {resumed.steps_run} steps; identical to the uninterrupted run: {same}")
fig = viz.loss_curve(run_dir, keys=("loss", "lr"), smooth=5,
                     title="one curve, although the run crashed and resumed")
plt.show()
""")

md("""
A NaN loss (too high a learning rate, fp16 overflow in the forward pass) would poison the
weights and every later checkpoint, so the loop stops at once with a clear message and keeps the
last good checkpoint:
""")

code("""
calls = 0

def exploding_loss(model, x0):                    # healthy for 30 steps, then NaN
    global calls
    calls += 1
    loss = loss_fn(model, x0)
    return loss * float("nan") if calls > 30 else loss

try:
    train.train(MLPDenoiser(), exploding_loss, sample_points,
                dataclasses.replace(toy_cfg, out_dir=str(WORK / "toy_nan")), "toy")
except train.NaNLossError as err:
    print("NaNLossError:", err)
state = torch.load(WORK / "toy_nan" / "checkpoint" / "state.pt", weights_only=True)
print("the checkpoint on disk is still the good one from step", state["step"])
""")

md("""
## 7 · Measured: `python -m minildm bench`

The benchmark trains each model for a few steps through this same loop (at its `cpu` preset) and
measures

* **images/s** of training;
* the **FLOPs of one training step**, counted by `torch.utils.flop_counter.FlopCounterMode`, times the
  steps per second = the FLOP/s the step achieves; divided by the FLOP/s of one big matmul measured in
  the same run, this **utilisation** says how well the model uses the hardware, in a way that means
  the same on a laptop and on an H100;
* **sampling**: DDPM's 1000 steps against DDIM's 50;
* **latent vs pixel**: the same UNet on 8 × 8 × 4 latents against 32 × 32 × 3 pixels.

The figures below were written by `python -m minildm bench --json docs/bench_cpu.json` on the machine
named in them (a GPU adds bf16 and compiled runs to the same table).
""")

code("""
bench_file = REPO_ROOT / "docs" / "bench_cpu.json"
if bench_file.exists():
    results = json.loads(bench_file.read_text())
else:                                             # e.g. an installed copy without docs/
    results = bench.run(quick=True, models=["vae"])
print("machine:", results["machine"])
print(bench.table(results))
""")

code("""
rows = {k: v for k, v in results["training"].items() if "skipped" not in v}
fig, axes = plt.subplots(1, 2, figsize=(9, 2.8))
axes[0].bar(list(rows), [r["fp32"]["images_per_s"] for r in rows.values()])
axes[0].set_ylabel("training images / s")
axes[1].bar(list(rows), [100 * r["fp32"]["utilisation"] for r in rows.values()], color="tab:orange")
axes[1].set_ylabel("% of matmul FLOP/s")
for ax in axes:
    ax.grid(alpha=0.3, axis="y")
fig.suptitle(f"training at the {next(iter(rows.values()))['preset']} preset on {results['machine']['device']}")
fig.tight_layout()
plt.show()
""")

md("""
Small convolutions, GroupNorms and attention over short sequences do much less arithmetic per byte
moved than one big matmul, so the utilisation of these small models is well below 100% — more so on
a GPU, where bigger batches, bf16 and `torch.compile` are exactly the tools that raise it. The latent
UNet step costs about **16× fewer FLOPs** than the same UNet on pixels (8 × 8 positions instead of
32 × 32): the reason Stable Diffusion works in a VAE's latent space.

## 8 · A short real run

Finally, a real model through the real recipe: the VAE's `tiny` preset on this CPU (on a GPU, a short
run of the `gpu` preset: 64 × 64 images, bf16, channels_last), with its checkpoint and metrics in a run folder.
""")

code("""
from minildm import vae as vae_module

if device.type == "cuda":
    preset, overrides = "gpu", dict(steps=300, log_every=10)
else:
    preset, overrides = "tiny", dict(steps=30 if FAST else 300, log_every=2 if FAST else 10)
t0 = time.perf_counter()
vae = vae_module.fit(preset=preset, out_dir=str(WORK / "weights"), run_dir=str(WORK / "runs"),
                     progress=not FAST, **overrides)
print(f"{preset} preset on {device}: {time.perf_counter() - t0:.0f} s in all")
fig = viz.loss_curve(WORK / "runs" / "vae", keys=("loss",), title=f"VAE, {preset} preset")
plt.show()
""")

code("""
from minildm.data import shapes
images, captions, _ = shapes.sample_batch(8, "test", vae.config.image_size, seed=0)
recon = vae_module.reconstruct(vae, images)
fig = viz.image_grid(torch.cat([images, recon]), ncols=8,
                     title="top: test images   bottom: the short run's reconstructions")
plt.show()
""")

md("""
## Lesson checks
""")

code("""
# NBVAL_CHECK_OUTPUT
metrics = train.read_metrics(WORK / "runs" / "vae")
assert metrics[-1]["loss"] < metrics[0]["loss"], "the short run should lower the VAE's loss"
assert same, "a crashed and resumed run must end with the uninterrupted run's weights"
assert train.lr_at(0, cfg) < train.lr_at(cfg.warmup_steps - 1, cfg) == cfg.lr > train.lr_at(cfg.steps, cfg)
assert results["latent_vs_pixel"]["flops_ratio"] > 10
assert all(0 < r["fp32"]["utilisation"] <= 1.5 for r in rows.values())
print("Lesson 07 checks passed.")
""")

md("""
### What to remember

* One loop trains every model; the device, precision, compile and memory format are settings, not code.
* On a GPU: big batches, bf16 autocast, `channels_last`, optionally `torch.compile`.
* Several GPUs: `torchrun --nproc_per_node=N -m minildm train ...`; DDP averages gradients so the
  copies stay identical, each rank draws its own data, rank 0 writes.
* Checkpoints are written atomically and `--resume` continues *exactly*; a NaN stops the run and keeps
  the last good checkpoint.
""")

nb = new_notebook(cells=cells, metadata={
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"}})
nbformat.write(nb, "notebooks/07_scaling_up.ipynb")
print("wrote notebooks/07_scaling_up.ipynb")
