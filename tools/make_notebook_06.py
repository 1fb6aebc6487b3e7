"""Build notebooks/06_latent_diffusion.ipynb (run from the repository root), WITHOUT outputs.

Then execute it so the committed file carries real outputs:
    MINILDM_FAST=0 jupyter nbconvert --to notebook --execute --inplace notebooks/06_latent_diffusion.ipynb
"""
import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = []
md = lambda s: cells.append(new_markdown_cell(s.strip("\n")))
code = lambda s: cells.append(new_code_cell(s.strip("\n")))

md(r"""
# 06 · A tiny Stable Diffusion: text → image, image → image, guidance

Every part of this lesson has been built already. Now we plug them together into
the model behind Stable Diffusion, and it fits on a laptop:

```
pixels ──VAE encoder──▶ latent z0 ──forward noising q(z_t|z0)──▶ z_T ~ N(0, I)
                             ▲                                      │
prompt ──CLIP text encoder──▶ context ──cross-attention──▶ UNet ε̂(z_t, t, context)
                             │                                      │
pixels ◀──VAE decoder── z0 ◀──DDPM / DDIM reverse steps (+ classifier-free guidance)
```

The **five steps**, each done by a module you met earlier:

| step | what | our part | lesson |
|---|---|---|---|
| 1 | image encoder: pixels (3×32×32) → latent (4×8×8) | `TinyVAE.encode` | 05 |
| 2 | diffusion happens in the latent space | `NoiseSchedule.q_sample`, `DDIMSampler` | 01–03 |
| 3 | the text encoder turns the prompt into conditioning | `MiniCLIP.text_hidden_states` | 04 |
| 4 | a UNet denoises, conditioned on the text: from noise (text2img) or from a noised image (img2img) | `UNet` with cross-attention, `classifier_free_guidance` | 02, 06 |
| 5 | the decoder turns the final latent back into pixels | `TinyVAE.decode` | 05 |

All of it lives in `minildm/pipeline.py` as `LatentDiffusionPipeline`. The VAE and CLIP
are **frozen**; only the UNet was trained (`python -m minildm train ldm --preset cpu`),
on VAE latents, with 10% of the captions replaced by the empty prompt `""`.
""")

code(r"""
from minildm.course import setup
FAST, device = setup()
""")

code(r"""
import inspect
import json
import time

import matplotlib.pyplot as plt
import torch

from minildm import LatentDiffusionPipeline, checks, viz
from minildm import pipeline as ldm
from minildm.data import shapes
from minildm.data.judge import attribute_accuracy, judge
from minildm.samplers import classifier_free_guidance, img2img_start, sample
from minildm.text import decode, tokenize

STEPS = 10 if FAST else 50          # DDIM steps per image (the evaluation uses 50)
pipe = LatentDiffusionPipeline.from_pretrained(device=device)   # the shipped weights
print("loaded from:", {part: "/".join(folder.parts[-2:]) for part, folder in pipe.sources.items()})
for part in ("vae", "clip", "unet"):
    model = getattr(pipe, part)
    print(f"{part:>4}: {sum(p.numel() for p in model.parameters()):>9,} parameters")


def latent_tiles(z):
    # (N, 4, 8, 8) latents -> (N * 4, 3, 8, 8) gray images, one per channel, for image grids
    z = z.detach().cpu()
    gray = (z - z.amin()) / (z.amax() - z.amin() + 1e-8)
    return gray.reshape(-1, 1, *z.shape[2:]).expand(-1, 3, -1, -1)
""")

md(r"""
## The architecture, filled with our parts

One prompt, followed through the five steps. Read the row left to right: the prompt's
token states (3) steer the UNet (4) that walks a random latent $z_T$ down to a clean
latent $z_0$ (2), which the decoder (5) turns into pixels. Step 1, the encoder, is how
training saw images and how img2img starts.

The code below is `pipe(prompt)` written out step by step. One detail is new: pixel
models clip their guess of $x_0$ to $[-1, 1]$ at every step; latents have no fixed range,
so `clip_x0` keeps the guess of $z_0$ within the largest $|z_0|$ seen in training. Without
it, the first step of the cosine schedule ($\bar\alpha_{999} \approx 10^{-9}$) turns a tiny
error in $\hat\varepsilon$ into a huge $z_0$ guess, and the image is lost.
""")

code(r"""
prompt = "a large red circle in the top left"
context, mask = pipe.encode_prompts(prompt)                 # 3. text -> (1, 16, D) token states, (1, 16) mask
uncond, uncond_mask = pipe.encode_prompts("")               #    and the empty prompt, for guidance
eps_fn = classifier_free_guidance(pipe.unet, context, uncond, 3.0, mask, uncond_mask)  # 4. the guided UNet
eps_fn = ldm.clip_x0(eps_fn, pipe.schedule, pipe.config.latent_clip)  #    keeping its z0 guesses in range (below)
sampler = pipe.make_sampler("ddim", STEPS)
zT = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).to(device)   # 2. start: pure latent noise
z0, latent_frames = sample(eps_fn, sampler, zT, progress=False, return_trajectory=True)  # 2.+4. DDIM in latent space
image = pipe.decode_latents(z0)                              # 5. latents -> pixels
assert torch.allclose(image, pipe(prompt, num_steps=STEPS, seed=0), atol=1e-5)  # exactly what pipe() does

fig, axes = plt.subplots(1, 6, figsize=(13, 2.6))
axes[0].imshow(context[0].cpu().T, aspect="auto", cmap="coolwarm")
axes[0].set_title("3. CLIP token states\n(D x 16 tokens)", fontsize=9)
axes[0].set_xlabel(" ".join(decode(tokenize(prompt)[0]).split()[:4]) + " ...", fontsize=7)
panels = [(latent_tiles(latent_frames[0])[:3].mean(0), "2. z_T: pure noise\n(latent, channel mean)"),
          (pipe.decode_latents(latent_frames[len(latent_frames) // 2])[0], "4. UNet + DDIM:\nhalfway, decoded"),
          (latent_tiles(latent_frames[-1])[:3].mean(0), "4. z_0: clean latent\n(4 x 8 x 8)"),
          (image[0], "5. VAE decoder:\n3 x 32 x 32 pixels"),
          (pipe.decode_latents(pipe.encode_images(image))[0], "1. encoder -> decoder\n(round trip)")]
for ax, (picture, title) in zip(axes[1:], panels):
    ax.imshow(viz.to_numpy_image(picture), interpolation="nearest")
    ax.set_title(title, fontsize=9)
for ax in axes[1:]:
    ax.set_xticks([]); ax.set_yticks([])
fig.suptitle(f"'{prompt}'", y=1.05)
plt.show()
""")

md(r"""
### How the UNet was trained

`fit()` in `pipeline.py` is short because every piece already exists: a pool of Shapes
images is encoded once by the frozen VAE, every batch draws latents from it, paraphrases
their captions, drops 10% of them to `""`, runs the frozen CLIP text encoder, and hands
`(z0, context, mask)` to the DDPM loss of lesson 02 through the one training loop
(`minildm.train.train`) of lesson 07. Here is its loss curve (saved next to the weights):
""")

code(r"""
print(inspect.getsource(ldm.latent_batch_fn))
training = json.loads((pipe.sources["ldm"] / "training.json").read_text())
steps = [h["step"] for h in training["history"]]
losses = [h["loss"] for h in training["history"]]
fig, ax = plt.subplots(figsize=(5, 2.8))
ax.plot(steps, losses)
ax.set_xlabel("step"); ax.set_ylabel("noise MSE"); ax.set_yscale("log")
ax.set_title(f"latent UNet, preset {training['preset']}: {training['train_seconds'] / 60:.0f} min "
             f"on {training['device']}")
plt.show()
""")

md(r"""
## Step 1 · The image encoder: pixels → latents

The VAE of lesson 05 squeezes a 3×32×32 image (3,072 numbers) into a 4×8×8 latent
(256 numbers), 12 times fewer. Its latents are *scaled* to unit variance, so the
diffusion model sees numbers of the size it expects from $\mathcal{N}(0, I)$.
Below: four images, the four channels of each latent, and what the decoder makes of them.
""")

code(r"""
labels = torch.stack([shapes.labels_of("circle", "red", "large", "top left"),
                      shapes.labels_of("square", "green", "small", "center"),
                      shapes.labels_of("triangle", "cyan", "large", "bottom"),
                      shapes.labels_of("square", "yellow", "large", "right")])
images = shapes.render(labels, 32, seed=0)                  # (4, 3, 32, 32) in [0, 1]
z0 = pipe.encode_images(images)                             # (4, 4, 8, 8)
print("images", tuple(images.shape), "-> latents", tuple(z0.shape),
      f"| latent mean {z0.mean():.2f}, std {z0.std():.2f}")
viz.image_grid(images, [shapes.caption(l) for l in labels], ncols=4, title="input images")
viz.image_grid(latent_tiles(z0), [f"ch {c}" for _ in range(4) for c in range(4)], ncols=16,
               title="their latents, channel by channel (4 x 8 x 8 each)", scale=0.8)
viz.image_grid(pipe.decode_latents(z0), ncols=4, title="decoded again")
plt.show()
""")

md(r"""
## Step 2 · Diffusion happens in the latent space

The forward process of lesson 01 is unchanged, only applied to $z_0$ instead of pixels:
$z_t = \sqrt{\bar\alpha_t}\, z_0 + \sqrt{1-\bar\alpha_t}\,\varepsilon$. Decoding the noised
latents shows what the UNet works against: the object dissolves into latent noise, which
the decoder renders as colored blotches rather than pixel static.
""")

code(r"""
ts = [0, 100, 250, 500, 750, 999]
noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0)).to(pipe.device)
t = torch.tensor(ts, device=pipe.device)
zt = pipe.schedule.q_sample(z0[:1].expand(len(ts), -1, -1, -1), t, noise.expand(len(ts), -1, -1, -1))
viz.strip(pipe.decode_latents(zt), [f"t = {s}" for s in ts], title="q(z_t | z_0), decoded")
pixel_noise = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
xt = pipe.schedule.to("cpu").q_sample(images[:1].expand(len(ts), -1, -1, -1) * 2 - 1, t.cpu(),
                                      pixel_noise.expand(len(ts), -1, -1, -1))
viz.strip((xt + 1) / 2, [f"t = {s}" for s in ts], title="the same noising in pixel space (lesson 01)")
plt.show()
""")

md(r"""
## Step 3 · The text encoder turns the prompt into conditioning

The frozen CLIP text Transformer of lesson 04 maps the 16 tokens of a prompt to 16
hidden states. CLIP itself only used the `<eos>` state; the UNet gets **all of them**
(`context`, shape (B, 16, D)) and cross-attends to them, with a mask that hides the
padding. The empty prompt `""` is just `<bos> <eos>`: that is the *unconditional* input.
""")

code(r"""
fig, axes = plt.subplots(1, 2, figsize=(11, 2.8))
for ax, text in zip(axes, [prompt, ""]):
    tokens = tokenize(text)
    ctx, m = pipe.encode_prompts(text)                         # (1, 16, D), (1, 16)
    ax.imshow(ctx[0].cpu().T, aspect="auto", cmap="coolwarm")
    words = ["<bos>"] + decode(tokens[0]).split() + ["<eos>"]
    ax.set_xticks(range(int(m.sum())))
    ax.set_xticklabels(words, rotation=60, fontsize=7)
    ax.set_title(f"context for {text!r}: {int(m.sum())} real tokens, {16 - int(m.sum())} masked", fontsize=9)
    ax.set_ylabel("feature")
plt.tight_layout()
plt.show()
""")

md(r"""
## Step 4 · The UNet denoises, conditioned on the text

The UNet of lesson 02 gains a **cross-attention** layer in each Transformer block: the
queries come from the latent pixels, the keys and values from the prompt's token
states. A latent pixel can thus ask "which words concern me?".

**Classifier-free guidance.** Because 10% of the training captions were `""`, the same
network predicts the noise both with the prompt ($\hat\varepsilon_c$) and without it
($\hat\varepsilon_u$). At sampling time we exaggerate the difference:

$$\hat\varepsilon = \hat\varepsilon_u + w\,(\hat\varepsilon_c - \hat\varepsilon_u)$$

$w = 0$ ignores the prompt, $w = 1$ is the plain conditional model, $w > 1$ pushes
harder toward what makes the image match the prompt. The library does both predictions
in one batched forward:
""")

code(r"""
print(inspect.getsource(classifier_free_guidance))
""")

md(r"""
### Exercise 1 · Combine the two predictions

Write `guided_eps(eps_uncond, eps_cond, guidance_scale)`: the guided noise estimate.
(With `guidance_scale = 1` it must give exactly `eps_cond`.)
""")

code(r"""
def guided_eps(eps_uncond, eps_cond, guidance_scale):
    ### BEGIN SOLUTION
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond)
    ### END SOLUTION
""")

code(r"""
# NBVAL_CHECK_OUTPUT
checks.guided_eps(guided_eps)
""")

md(r"""
### Text to image

A grid over two attributes at a time: every color at several positions, then every
shape at both sizes. The judge of lesson 00 reads the four attributes back off each
generated image, so we can *measure* how well the pictures follow the prompts.
""")

code(r"""
def generate_and_judge(labels, title, ncols, guidance_scale=3.0, seed=0):
    # generate one image per label vector, show them, return the judge's accuracy
    captions = [shapes.caption(l) for l in labels]
    x = pipe(captions, num_steps=STEPS, guidance_scale=guidance_scale, seed=seed)
    read = judge(x)["labels"]
    marks = ["" if bool((r == l).all()) else " (x)" for r, l in zip(read, labels)]
    viz.image_grid(x, [c.replace("a ", "", 1) + m for c, m in zip(captions, marks)], ncols=ncols,
                   title=title, fontsize=6)
    plt.show()
    return attribute_accuracy(read, labels)

positions = ["top left", "center", "bottom right"] if FAST else list(shapes.POSITIONS)
grid = torch.stack([shapes.labels_of("square", c, "large", p) for p in positions for c in shapes.COLOR_NAMES])
acc_color_position = generate_and_judge(grid, "color x position ((x) = the judge disagrees)", ncols=6)
print({k: round(v, 2) for k, v in acc_color_position.items()})

colors = ["red", "cyan"] if FAST else ["red", "green", "cyan"]
grid = torch.stack([shapes.labels_of(s, c, z, "center") for c in colors for z in shapes.SIZES for s in shapes.SHAPES])
acc_shape_size = generate_and_judge(grid, "shape x size", ncols=6)
print({k: round(v, 2) for k, v in acc_shape_size.items()})
""")

md(r"""
### Watching the denoising

The DDIM trajectory $z_T \to z_0$, decoded every few steps. The position and color
settle first; the outline of the shape sharpens last.
""")

code(r"""
prompts = ["a large blue square on the right", "a small yellow triangle in the top left"]
x, frames = pipe(prompts, num_steps=STEPS, seed=1, return_trajectory=True)   # frames (STEPS + 1, 2, 3, 32, 32)
keep = torch.linspace(0, len(frames) - 1, 8).round().long()
for i, p in enumerate(prompts):
    viz.strip(frames[keep, i], [f"step {int(k)}" for k in keep], title=p)
plt.show()
""")

md(r"""
### The guidance scale

Move the slider (in JupyterLab; a static row of values otherwise). At $w = 0$ the
prompt is ignored: the model draws *some* Shapes image. Around $w = 3$ the images
follow the prompt; very large $w$ over-saturates.
""")

code(r"""
slider_prompts = ["a large red circle in the top left", "a small green square at the bottom",
                  "a large cyan triangle in the center", "a small magenta circle on the right"]

def draw_guidance(guidance_scale):
    x = pipe(slider_prompts, num_steps=STEPS, guidance_scale=guidance_scale, seed=0)
    viz.image_grid(x, slider_prompts, ncols=4, title=f"guidance_scale = {guidance_scale}")

viz.slider(draw_guidance, "guidance_scale", [0.0, 1.0, 2.0, 3.0, 5.0, 7.5],
           static_values=[0.0, 3.0] if FAST else [0.0, 1.0, 3.0, 7.5])
""")

md(r"""
And measured: all-four accuracy and clean rate (the judge's "looks like a Shapes image")
for a sweep of guidance scales on the same captions.
""")

code(r"""
sweep_labels = shapes.split_labels("train")[torch.randperm(270, generator=torch.Generator().manual_seed(0))[:12 if FAST else 54]]
sweep_captions = [shapes.caption(l) for l in sweep_labels]
scales = [0.0, 1.0, 3.0] if FAST else [0.0, 1.0, 2.0, 3.0, 5.0, 7.5]
rows = []
for w in scales:
    graded = judge(pipe(sweep_captions, num_steps=STEPS, guidance_scale=w, seed=0))
    acc = attribute_accuracy(graded["labels"], sweep_labels)
    rows.append((w, acc["all_four"], float(graded["clean"].float().mean())))
    print(f"w = {w:>4}: all four {acc['all_four']:.2f} | color {acc['color']:.2f} | shape {acc['shape']:.2f} | "
          f"size {acc['size']:.2f} | position {acc['position']:.2f} | clean {rows[-1][2]:.2f}")
fig, ax = plt.subplots(figsize=(4.5, 2.8))
ax.plot([r[0] for r in rows], [r[1] for r in rows], "o-", label="all four correct")
ax.plot([r[0] for r in rows], [r[2] for r in rows], "s--", label="clean")
ax.set_xlabel("guidance scale w"); ax.set_ylim(0, 1.05); ax.legend()
plt.show()
""")

md(r"""
## Image to image (SDEdit)

img2img uses step 1 for real: encode a picture, noise its latent part of the way to
$z_T$, and run only the remaining denoising steps with a *new* prompt. The **strength**
$s \in [0, 1]$ is the fraction of the sampler's steps to run: $s = 0$ keeps the image,
$s = 1$ starts from (almost) pure noise and ignores it. In between, the coarse layout
survives (position, size) while the prompt repaints the rest.
""")

code(r"""
print(inspect.getsource(img2img_start))
""")

md(r"""
### Exercise 2 · Where does img2img start?

Write `sdedit_start(sampler, z0, strength, noise)` returning `(zt, start_index)`:
run the last `round(strength * len(sampler.timesteps))` of the sampler's timesteps, so
`start_index` is the number of steps skipped; noise `z0` to the timestep
`t = sampler.timesteps[start_index]` with the given `noise`. With strength 0 nothing
runs: return `z0` itself and `start_index = len(sampler.timesteps)`.
""")

code(r"""
def sdedit_start(sampler, z0, strength, noise):
    ### BEGIN SOLUTION
    num = len(sampler.timesteps)
    start_index = num - round(strength * num)
    if start_index == num:
        return z0, start_index
    t = int(sampler.timesteps[start_index])
    alpha_bar = sampler.schedule.alpha_bar[t]
    return alpha_bar.sqrt() * z0 + (1 - alpha_bar).sqrt() * noise, start_index
    ### END SOLUTION
""")

code(r"""
# NBVAL_CHECK_OUTPUT
checks.sdedit_start(sdedit_start)
""")

md(r"""
### A strength strip

A red square, re-prompted as a **blue** one. Low strength keeps the red; high strength
forgets where the square was. The judge reads color and position off each result.
""")

code(r"""
source_labels = shapes.labels_of("square", "red", "large", "left")
source = shapes.render(source_labels[None], 32, seed=3)
new_prompt = "a large blue square on the left"
strengths = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
edits = torch.cat([pipe.img2img(source, new_prompt, strength=s, num_steps=STEPS, seed=0) for s in strengths])
read = judge(edits)["labels"]
names = [f"s={s}: {shapes.COLOR_NAMES[int(r[1])]}, {shapes.POSITIONS[int(r[3])]}" for s, r in zip(strengths, read)]
viz.strip(torch.cat([source, edits]), ["input"] + names, title=f"img2img -> '{new_prompt}'")
plt.show()
edit_test = ldm.color_change_test(pipe, n=12 if FAST else 108, num_steps=STEPS)
print("color change at strength 0.6:", {k: round(v, 2) if isinstance(v, float) else v for k, v in edit_test.items()})
""")

md(r"""
## Held-out pairs: compositions never seen in training

Three (shape, color) pairs never appeared in the UNet's training captions:
""" + "blue triangle, yellow circle and magenta square." + r"""
Each word was seen many times, only never together. Can the model compose them?
""")

code(r"""
held_positions = ["top left", "center", "bottom right"] if FAST else ["top left", "top right", "center", "bottom left", "bottom right"]
held = torch.stack([shapes.labels_of(s, c, z, p) for s, c in shapes.HELD_OUT_PAIRS
                    for z in shapes.SIZES for p in held_positions])
acc_held = generate_and_judge(held, "held-out (shape, color) pairs", ncols=len(held_positions) * 2)
print({k: round(v, 2) for k, v in acc_held.items()})
""")

md(r"""
## Why latents? The cost of a UNet step

The seed's claim: diffusion in a latent space is much cheaper. The same UNet
architecture (the pixel UNet of lesson 02) on 32×32×3 pixels and on 8×8×4 latents,
one training step, FLOPs counted by PyTorch and wall time measured here
(`minildm.bench`, also part of `python -m minildm bench`):
""")

code(r"""
from minildm import bench
cost = bench.bench_latent_vs_pixel(device, quick=FAST)
print(f"{'':<16}{'GFLOP/step':>12}{'ms/step':>10}")
for key in ("pixel_32x32x3", "latent_8x8x4"):
    print(f"{key:<16}{cost[key]['gflops']:>12.3f}{cost[key]['ms']:>10.1f}")
print(f"pixels cost {cost['flops_ratio']:.1f}x the FLOPs and {cost['time_ratio']:.1f}x the time ({cost['unet']})")
""")

md(r"""
And per **sampling** step, our latent UNet (with guidance: two predictions) vs the
pixel UNet of lesson 02 (unconditional, one prediction), for a batch of 16 images:
""")

code(r"""
from torch.utils.flop_counter import FlopCounterMode
from minildm.ddpm import PRESETS as PIXEL_PRESETS
from minildm.unet import UNet

pixel_unet = UNet(PIXEL_PRESETS["cpu"].model).to(device).eval()
ctx, m = pipe.encode_prompts(["a large red circle in the top left"] * 16)
eps_latent = classifier_free_guidance(pipe.unet, ctx, pipe.encode_prompts("")[0], 3.0, m, pipe.encode_prompts("")[1])
runs = {"latent UNet + guidance": (lambda: eps_latent(torch.randn(16, 4, 8, 8, device=device),
                                                       torch.full((16,), 500, device=device))),
        "pixel UNet (lesson 02)": (lambda: pixel_unet(torch.randn(16, 3, 32, 32, device=device),
                                                      torch.full((16,), 500, device=device)))}
with torch.no_grad():
    for name, run in runs.items():
        with FlopCounterMode(display=False) as counter:
            run()
        t0, reps = time.perf_counter(), 3 if FAST else 10
        for _ in range(reps):
            run()
        print(f"{name:<24} {counter.get_total_flops() / 1e9:7.2f} GFLOP  {1000 * (time.perf_counter() - t0) / reps:7.1f} ms per step")
""")

md(r"""
Even with cross-attention and two predictions per step, the latent model costs a
fraction of the pixel model per step; the VAE's encoder runs once per training image
and its decoder once per generated image. The pixel UNet of lesson 02 learned an
*unconditional* Shapes model in its training budget; in a similar budget, the latent
model learned to follow prompts.

## Lesson checks
""")

code(r"""
x = pipe(["a large green circle in the center", "a small red square in the top left"], num_steps=STEPS, seed=0)
assert x.shape == (2, 3, 32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1
assert torch.equal(x, pipe(["a large green circle in the center", "a small red square in the top left"],
                           num_steps=STEPS, seed=0)), "same seed, same images"
assert acc_color_position["color"] >= 0.7, acc_color_position
assert acc_color_position["position"] >= 0.7, acc_color_position
assert rows[-1][1] > rows[0][1], "guidance should make the images follow the prompt better than w = 0"
keep = pipe.img2img(source, new_prompt, strength=0.0, num_steps=STEPS)
assert torch.allclose(keep, pipe.decode_latents(pipe.encode_images(source))), "strength 0 keeps the image"
print("all lesson checks passed")
""")

md(r"""
## What you built

- `LatentDiffusionPipeline(prompts)`: CLIP text states → guided DDIM in the VAE's latent
  space → VAE decoder. `pipe.img2img(images, prompts, strength)`: the same, started from
  a noised image latent.
- Classifier-free guidance costs one extra prediction per step and buys prompt fidelity.
- From the command line:

```
python -m minildm generate "a large red circle in the top left" -n 8 --out grid.png
python -m minildm img2img in.png "a small blue square at the bottom" --strength 0.6 --out out.png
python -m minildm evaluate ldm        # all 324 captions x 3 seeds, judged
```

Next, lesson 07 takes the same training loop to a GPU, mixed precision and several GPUs.
""")

nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                        "language": "python"},
                                         "language_info": {"name": "python"}})
nbformat.write(nb, "notebooks/06_latent_diffusion.ipynb")
print("wrote notebooks/06_latent_diffusion.ipynb with", len(cells), "cells")
