"""Write notebooks/05_vae.ipynb (run from the repository root, then execute the notebook).

    python tools/make_notebook_05.py
    MINILDM_FAST=0 jupyter nbconvert --to notebook --execute --inplace notebooks/05_vae.ipynb
"""
import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

cells = []


def md(text):
    cells.append(new_markdown_cell(text.strip()))


def code(text):
    cells.append(new_code_cell(text.strip()))


md("""
# 05 · A tiny VAE and the latent space

Stable Diffusion does not denoise pixels. It denoises **latents**: a *variational autoencoder* (VAE)
first squeezes every image into a small grid of numbers, the diffusion model does all its work in
that small space, and the VAE's decoder turns the result back into pixels at the very end.

In this lesson you will

* see what a **latent space** is, starting from an everyday analogy (an ID-card number);
* compress 32 × 32 × 3 Shapes images into **8 × 8 × 4 latents** and decode them back;
* look at the latent channels, **interpolate** in pixel space and in latent space, and draw a
  **2-D map** of the latent space in which nearby points are similar images;
* find out why the VAE alone is a poor *generator* — the reason to run diffusion in latent space;
* count how much work the latent space saves a diffusion UNet;
* write the VAE's two formulas yourself: the **reparameterisation trick** and the **KL term**.

Prerequisites: notebook 00 (the Shapes world). Minutes on a laptop CPU: about 2 (the shipped weights
are loaded; nothing long is trained here).
""")

code("""
from minildm.course import setup
FAST, device = setup(seed=0)
""")

code("""
import inspect

import matplotlib.pyplot as plt
import numpy as np
import torch

from minildm import checks, viz
from minildm.data import shapes
from minildm.data.judge import attribute_accuracy, judge
from minildm.vae import TinyVAE, VAEConfig, kl_divergence, psnr_from_mse, reparameterize
""")

md("""
## The ID-card analogy

Many countries give each citizen an ID number whose **parts mean something**. A made-up example:

    07  1985-06-12  0042
    │   │           └── which person born that day in that region
    │   └── birthday
    └── region

The number is tiny compared with the person it describes, yet it *locates* them: two people whose
numbers share the first parts come from the same region and were born on the same day. Change one
part and you get a different person who differs in exactly that way.

A Shapes image has its own "ID number": the four attributes **shape, color, size, position**, plus
a little jitter. Below, each row starts from one image and changes **one part of its ID** at a time —
each change moves the picture in one meaningful direction.
""")

code("""
base = torch.tensor([0, 0, 1, 4])                       # circle, red, large, center
rows, titles = [], []
for part, name in enumerate(shapes.ATTRIBUTES):
    values = shapes.ATTRIBUTE_VALUES[name]
    for v in range(min(len(values), 6)):
        labels = base.clone()
        labels[part] = v
        rows.append(labels)
        titles.append(f"ID {'-'.join(str(int(d)) for d in labels)}\\n{name}={values[v]}")
    for _ in range(6 - min(len(values), 6)):            # pad the size row
        rows.append(None)
        titles.append("")
geometry = np.array([[0.5, 0.5, 0.5]])                   # same centre and width: only the ID changes
images = []
for labels in rows:
    if labels is None:
        images.append(torch.zeros(3, 32, 32))
        continue
    cell = int(labels[3])
    cx, cy = (cell % 3 + 0.5) / 3, (cell // 3 + 0.5) / 3   # the centre of the position's cell
    width = 0.5 if labels[2] == 1 else 0.25
    images.append(shapes.render(labels[None], 32, geometry=np.array([[cx, cy, width]]))[0])
fig = viz.image_grid(torch.stack(images), titles, ncols=6, fontsize=6,
                     title="one image's 'ID number' = (shape, color, size, position): change one part at a time")
plt.show()
""")

md("""
The VAE learns an ID number of its own — the **latent** `z`. It is not hand-designed and not four
digits: it is a grid of **8 × 8 × 4 = 256 real numbers** per image, learned so that

1. the **encoder** can write it from the image, and the **decoder** can redraw the image from it
   (like the ID office and the photo archive), and
2. **nearby numbers mean similar images** (a *smooth* space), which is what the KL term below is for.

256 numbers instead of 3,072 pixel values: 12 × fewer, and the diffusion model of lesson 06 only
ever sees these.
""")

md("""
## The model: encoder → Gaussian → decoder

A VAE's encoder does not output one point but a small Gaussian cloud per image, `q(z|x) = N(mean, exp(logvar))`:
a mean and a log-variance for each of the 256 numbers. Training **samples** a latent from that cloud,
decodes it, and pays two costs:

* **reconstruction**: the mean squared error between the decoded image and the original
  (exactly what the PSNR below measures), and
* **KL**: how far each cloud is from the standard Gaussian `N(0, I)`, with a *small* weight.
  Without it the encoder could place images anywhere, with no smoothness between them.

The encoder shrinks 32 × 32 to 8 × 8 with two stride-2 convolutions; the decoder mirrors it with
upsampling + convolutions. The shipped weights were trained by one command
(`python -m minildm train vae --preset cpu --out minildm/weights`) in a few minutes on a CPU.
""")

code("""
vae = TinyVAE.from_pretrained(device=device)             # the shipped weights (minildm/weights/vae)
cfg = vae.config
print(f"{vae.num_parameters():,} parameters")
print(f"image {cfg.in_channels}x{cfg.image_size}x{cfg.image_size} -> latent "
      f"{cfg.latent_channels}x{cfg.latent_size}x{cfg.latent_size}: compression {cfg.compression:.0f}x")
print(f"kl_weight = {cfg.kl_weight}, scale_factor = {cfg.scale_factor:.4f}")
""")

code("""
print(inspect.getsource(TinyVAE.encode))
print(inspect.getsource(TinyVAE.decode))
""")

md("""
`scale_factor` deserves a word. The diffusion model of lesson 06 adds Gaussian noise of variance 1 to
the latents, so the latents should have variance about 1 too. After training we measure the
standard deviation of the latent means on training images and store `1 / std` in the config —
exactly what Stable Diffusion does (its famous `0.18215`). `encode` multiplies by it, `decode`
divides by it.
""")

code("""
n_test = 128 if FAST else 512
images, captions, labels = shapes.sample_batch(n_test, "test", 32, seed=11)  # fresh test images
with torch.no_grad():
    z = vae.encode(images.to(device)).cpu()                                # (N, 4, 8, 8)
    recon = vae.decode(z.to(device)).cpu()                                 # (N, 3, 32, 32)
print("latents:", tuple(z.shape), f"mean {z.mean():.3f}, std {z.std():.3f}  (scaled: about 0 and 1)")
""")

md("""
## Originals vs reconstructions

Top row: fresh test images the VAE never saw. Bottom row: decode(encode(image)). The title gives each
reconstruction's PSNR (peak signal-to-noise ratio, `10 log10(1 / MSE)`; 30 dB means the typical pixel
is off by about 3 %).
""")

code("""
n = 8
mse = (recon - images).pow(2).flatten(1).mean(1)                          # (N,)
titles = [c for c in captions[:n]] + [f"{psnr_from_mse(m):.1f} dB" for m in mse[:n].tolist()]
viz.image_grid(torch.cat([images[:n], recon[:n]]), titles, ncols=n, fontsize=6,
               title="originals (top) and reconstructions (bottom)")
plt.show()
verdict = judge(recon)
accuracy = attribute_accuracy(verdict["labels"], labels)
print(f"PSNR over {len(images)} test images: {psnr_from_mse(mse.mean().item()):.1f} dB")
print(f"the judge reads the same four attributes off {accuracy['all_four']:.1%} of the reconstructions; "
      f"{verdict['clean'].float().mean():.1%} look clean")
""")

md("""
## The 4 latent channels as images

Each latent is a tiny 8 × 8 image with 4 channels. Because the encoder is convolutional, the latent
grid is still a *map*: the object's position shows up as *where* in the 8 × 8 grid the numbers are
large, while the channels mix what the object is (colour, shape). Colour scale: blue negative, red
positive.
""")

code("""
show = [0, 1, 2, 3]
fig, axes = plt.subplots(len(show), 5, figsize=(7, 1.5 * len(show)))
for row, i in enumerate(show):
    axes[row, 0].imshow(viz.to_numpy_image(images[i]), interpolation="nearest")
    axes[row, 0].set_title(captions[i][2:], fontsize=6)
    for ch in range(4):
        axes[row, ch + 1].imshow(z[i, ch], cmap="RdBu_r", vmin=-3, vmax=3, interpolation="nearest")
        axes[row, ch + 1].set_title(f"channel {ch}", fontsize=7)
for ax in axes.flat:
    ax.axis("off")
fig.suptitle("an image and its 4 latent channels (8 x 8 each)")
fig.tight_layout()
plt.show()
""")

md("""
## Interpolation: pixel space vs latent space

Mix two images with a weight `alpha` from 0 to 1.

* **In pixel space**, `(1 - alpha) * x_a + alpha * x_b` is a cross-fade: half-way, you see two
  faded objects at once — an image that is *not* a Shapes image.
* **In latent space**, decode `(1 - alpha) * z_a + alpha * z_b`: the decoder only knows how to draw
  Shapes images, so the path goes through images that look more like the data.

Below: a small circle growing into a large one and a red square turning blue, where latent space
gives a much more convincing path. The judge's "clean" verdict counts how many frames look like data.
""")

code("""
alphas = torch.linspace(0, 1, 7)
pairs = {
    "small -> large": (torch.tensor([[0, 2, 0, 4]]), torch.tensor([[0, 2, 1, 4]])),
    "red -> blue": (torch.tensor([[1, 0, 1, 4]]), torch.tensor([[1, 2, 1, 4]])),
}
for name, (la, lb) in pairs.items():
    xa = shapes.render(la, 32, geometry=np.array([[0.5, 0.5, 0.25 if la[0, 2] == 0 else 0.5]]))
    xb = shapes.render(lb, 32, geometry=np.array([[0.5, 0.5, 0.25 if lb[0, 2] == 0 else 0.5]]))
    with torch.no_grad():
        za, zb = vae.encode(xa.to(device)), vae.encode(xb.to(device))
        latent_path = vae.decode(torch.cat([(1 - a) * za + a * zb for a in alphas])).cpu()
    pixel_path = torch.cat([(1 - a) * xa + a * xb for a in alphas])
    clean_pixel = judge(pixel_path)["clean"].sum().item()
    clean_latent = judge(latent_path)["clean"].sum().item()
    viz.image_grid(torch.cat([pixel_path, latent_path]),
                   [f"pixel a={a:.2f}" for a in alphas] + [f"latent a={a:.2f}" for a in alphas],
                   ncols=len(alphas), fontsize=6,
                   title=f"{name}: clean frames {clean_pixel}/7 in pixel space, {clean_latent}/7 in latent space")
    plt.show()
""")

md("""
Growing the circle is where latent space shines: pixel space shows a small disc inside a faint
large one (a "ring" image that never occurs in the data), latent space draws one circle of
in-between size. The colour change is subtler: the latent path runs through bright magenta —
a real palette colour — where the pixel cross-fade runs through dim purple, but its middle frames
are blotchy. A straight line between two latents is *not* guaranteed to stay on the data.
""")

md("""
Drag the slider (in JupyterLab) to mix two different test images yourself; on a web page you see
three fixed values instead.
""")

code("""
xa, xb = images[4:5], images[5:6]
with torch.no_grad():
    za, zb = vae.encode(xa.to(device)), vae.encode(xb.to(device))


def draw(alpha):
    with torch.no_grad():
        latent_mix = vae.decode((1 - alpha) * za + alpha * zb).cpu()
    pixel_mix = (1 - alpha) * xa + alpha * xb
    fig = viz.image_grid(torch.cat([xa, pixel_mix, latent_mix, xb]),
                         ["image A", f"pixel mix {alpha:.2f}", f"latent mix {alpha:.2f}", "image B"],
                         ncols=4, scale=1.8, fontsize=8)
    return fig


viz.slider(draw, "alpha", [round(a, 2) for a in np.linspace(0, 1, 11)], static_values=[0.3, 0.5, 0.7])
""")

md("""
Notice what happens when the two objects sit in **different places**: latent interpolation also
fades one out and the other in. Our latent is a spatial 8 × 8 map (like Stable Diffusion's), so
"where" is stored as "where in the grid", and moving an object is not a small step in this space.
That is fine: the diffusion model will not walk straight lines in latent space, it will learn
where the data lives.
""")

md("""
## A map of the latent space

Each latent is a point in a 256-dimensional space. To look at it, project the latents of 1,000 test
images onto their two main directions (PCA) and colour the points by each attribute in turn.
""")

code("""
n_map = 250 if FAST else 1000
map_images, _, map_labels = shapes.sample_batch(n_map, "test", 32, seed=21)
with torch.no_grad():
    map_z = torch.cat([vae.encode(map_images[i:i + 250].to(device)).cpu() for i in range(0, n_map, 250)])
flat = map_z.flatten(1)                                                   # (N, 256)
centred = flat - flat.mean(0)
_, _, v = torch.pca_lowrank(centred, q=2, center=False)                   # two main directions
xy = centred @ v                                                          # (N, 2)

fig, axes = plt.subplots(1, 4, figsize=(14, 3.6))
palette = {"color": [shapes.COLORS[c] for c in shapes.COLOR_NAMES]}
for k, (ax, name) in enumerate(zip(axes, shapes.ATTRIBUTES)):
    values = shapes.ATTRIBUTE_VALUES[name]
    for v_i, value in enumerate(values):
        sel = map_labels[:, k] == v_i
        color = palette["color"][v_i] if name == "color" else plt.cm.tab10(v_i)
        ax.scatter(xy[sel, 0], xy[sel, 1], s=6, color=color, label=value, alpha=0.7)
    ax.set_title(f"coloured by {name}")
    ax.set_xticks([]); ax.set_yticks([])
    ax.legend(fontsize=6, markerscale=2, loc="best")
fig.suptitle("PCA map of the latents of test images")
fig.tight_layout()
plt.show()
""")

md("""
Even two directions out of 256 show structure: **small** objects (few lit pixels) crowd into one
tight cluster, **large** ones spread out, sorted by **position** (objects in the same 3 × 3 cell
land near each other). Colour and shape need more than two directions. Within the 256 dimensions the other attributes separate too — the
nearest neighbours of an image in latent space are images that look alike:
""")

code("""
queries = [0, 1, 2]
rows, titles = [], []
for q in queries:
    distance = (flat - flat[q]).norm(dim=1)                               # (N,)
    nearest = distance.argsort()[:6]                                      # itself first
    rows.append(map_images[nearest])
    titles += ["query"] + [f"d={distance[j]:.1f}" for j in nearest[1:]]
viz.image_grid(torch.cat(rows), titles, ncols=6, fontsize=7,
               title="nearest neighbours in latent space (distance d between latents)")
plt.show()
""")

md("""
## Decoding random latents: why the VAE alone is a poor generator

If the latents of real images filled the whole standard Gaussian, we could generate new images by
decoding random `z ~ N(0, I)`. They do not: the KL weight is small (to keep reconstructions sharp),
so the data occupies only a thin, oddly shaped region of the 256-dimensional space. Decode random
points and most of them fall *between* the data:
""")

code("""
g = torch.Generator().manual_seed(0)
random_z = torch.randn(16, 4, 8, 8, generator=g)                          # scaled latents ~ N(0, I)
with torch.no_grad():
    random_images = vae.decode(random_z.to(device)).cpu()
clean = judge(random_images)["clean"]
viz.image_grid(random_images, [("clean" if c else "not clean") for c in clean], ncols=8, fontsize=7,
               title=f"decoded random latents: {int(clean.sum())}/16 look like Shapes images")
plt.show()
""")

md("""
Blobs, several half-objects, wrong colours. The decoder is a good *renderer* but it needs to be
given a latent that looks like an encoded image. **Finding such latents is exactly the job of the
diffusion model in lesson 06**: it starts from Gaussian noise in this 8 × 8 × 4 space and denoises
its way *into* the region where encoded images live, then the decoder draws the picture.
""")

md("""
## The compute arithmetic

Why not run diffusion on pixels? A diffusion UNet processes the *whole* input at every one of its
many denoising steps. The latent is much smaller:
""")

code("""
rows = [("this course, 32x32", 3 * 32 * 32, 4 * 8 * 8),
        ("gpu preset, 64x64", 3 * 64 * 64, 4 * 16 * 16),
        ("Stable Diffusion, 512x512", 3 * 512 * 512, 4 * 64 * 64)]
print(f"{'':28s}{'pixel numbers':>14s}{'latent numbers':>16s}{'ratio':>7s}")
for name, pixels, latents in rows:
    print(f"{name:28s}{pixels:14,d}{latents:16,d}{pixels / latents:7.0f}x")
print()
print("Self-attention compares every position with every other: cost ~ positions^2.")
print(f"32x32 pixel grid: {(32 * 32) ** 2:,} pairs;  8x8 latent grid: {(8 * 8) ** 2:,} pairs "
      f"({(32 * 32) ** 2 // (8 * 8) ** 2}x fewer)")
""")

md("""
### Exercise 1: how many numbers?

How many numbers does the UNet see at each step for one 32 × 32 Shapes image, in latent space?
Write it as a product of the latent's shape.
""")

code("""
def my_latent_numbers():
    ### BEGIN SOLUTION
    return 4 * (32 // 4) * (32 // 4)
    ### END SOLUTION
""")

code("""
# NBVAL_CHECK_OUTPUT
checks.latent_numbers(my_latent_numbers)
""")

md("""
## Exercise 2: the reparameterisation trick

Training needs a *sample* `z ~ N(mean, std²)` — but "draw a random number" has no gradient, so the
encoder could not learn from it. The trick: draw the randomness **outside** the model,
`eps ~ N(0, 1)`, and write the sample as a deterministic, differentiable function

    z = mean + std * eps,     std = exp(0.5 * logvar)

(the encoder outputs `logvar = log(std²)`, which can be any real number, rather than `std`, which
must stay positive). Gradients now flow to `mean` (dz/dmean = 1) and to `logvar`.

Write it. `mean`, `logvar` and `eps` all have shape (B, 4, 8, 8).
""")

code("""
def my_reparameterize(mean, logvar, eps):
    ### BEGIN SOLUTION
    std = torch.exp(0.5 * logvar)
    return mean + std * eps
    ### END SOLUTION
""")

code("""
# NBVAL_CHECK_OUTPUT
checks.reparameterize(my_reparameterize)
""")

md("""
The picture: one latent number with `mean = 1` and `std = 0.5`. Sampling through the trick gives
the right Gaussian, and the *same* `eps` always gives the same `z`:
""")

code("""
eps = torch.randn(20000, generator=torch.Generator().manual_seed(0))
mean, logvar = torch.tensor(1.0), torch.log(torch.tensor(0.5 ** 2))
samples = reparameterize(mean, logvar, eps)
plt.figure(figsize=(5, 2.5))
plt.hist(eps.numpy(), bins=80, density=True, alpha=0.5, label="eps ~ N(0, 1)")
plt.hist(samples.numpy(), bins=80, density=True, alpha=0.5, label="z = 1 + 0.5 * eps")
plt.legend(fontsize=8)
plt.title(f"z: mean {samples.mean():.2f}, std {samples.std():.2f}")
plt.show()
""")

md("""
## Exercise 3: the KL term

For one latent number with `q = N(mean, exp(logvar))` and the prior `p = N(0, 1)`, the KL divergence
has a closed form:

    KL(q || p) = 0.5 * (mean² + exp(logvar) - 1 - logvar)

It is never negative, and it is zero only for `mean = 0, logvar = 0` — the prior itself. The 256
numbers of a latent are independent, so their KLs **add up**. Write `my_kl(mean, logvar)` returning
**one KL per image**, shape (B,).
""")

code("""
def my_kl(mean, logvar):
    ### BEGIN SOLUTION
    per_number = 0.5 * (mean ** 2 + torch.exp(logvar) - 1 - logvar)   # (B, C, h, w)
    return per_number.flatten(1).sum(dim=1)                              # (B,)
    ### END SOLUTION
""")

code("""
# NBVAL_CHECK_OUTPUT
checks.kl_divergence(my_kl)
""")

md("""
How big is the KL of real images under the shipped VAE? The loss adds `kl_weight * KL` to the
per-pixel MSE; with `kl_weight` this small, the KL only nudges the encoder towards a tidy,
centred space while reconstruction dominates.
""")

code("""
with torch.no_grad():
    mean, logvar = vae.encode_distribution(images.to(device))
kl = kl_divergence(mean, logvar).cpu()
print(f"KL per image: median {kl.median():.0f} nats over 256 latent numbers "
      f"(weighted: {cfg.kl_weight * kl.median():.2g}, vs MSE {mse.mean():.2g})")
""")

md("""
## Watch a VAE learn (optional, small)

The shipped weights took a few minutes. Here a *tiny* VAE trains for a few hundred steps through the
course's one training loop, so you can see reconstructions sharpen as the loss falls.
""")

code("""
from minildm.vae import fit, reconstruct
import tempfile, json, pathlib

steps = 20 if FAST else 300
tmp = pathlib.Path(tempfile.mkdtemp())
small = fit("tiny", out_dir=tmp / "weights", run_dir=tmp / "runs", steps=steps, progress=not FAST)
history = [json.loads(line) for line in (tmp / "runs" / "vae" / "metrics.jsonl").read_text().splitlines()]
fig, ax = plt.subplots(1, 1, figsize=(4, 2.5))
ax.plot([h["step"] for h in history], [h["psnr"] for h in history], marker="o")
ax.set_xlabel("step"); ax.set_ylabel("training PSNR (dB)"); ax.set_title("tiny VAE")
plt.show()
viz.image_grid(torch.cat([images[:8], reconstruct(small, images[:8]), recon[:8]]), ncols=8,
               title="originals / tiny VAE after a short run / shipped VAE")
plt.show()
""")

md("""
## Lesson checks
""")

code("""
# NBVAL_CHECK_OUTPUT
assert tuple(z.shape) == (n_test, 4, 8, 8) and tuple(recon.shape) == (n_test, 3, 32, 32)
assert cfg.compression == 12
assert 0.8 < z.std().item() < 1.2, "scaled latents should have about unit variance"
assert psnr_from_mse(mse.mean().item()) > 28, "the shipped VAE should reconstruct test images well"
assert accuracy["all_four"] > 0.95, "the judge should read the same attributes off reconstructions"
print("lesson 05 checks passed: 32x32x3 -> 8x8x4 (12x smaller), unit-variance latents, sharp reconstructions")
""")

md("""
## What you learned

* A **latent space** is a compact "ID number" for images: 256 numbers instead of 3,072, written by
  the encoder and read by the decoder.
* The encoder outputs a Gaussian per image; the **reparameterisation trick** samples from it with
  gradients; the **KL term** keeps the space smooth and centred; `scale_factor` makes its variance 1.
* Nearby latents are similar images; latent interpolation stays closer to the data than pixel
  cross-fades.
* Random latents decode to junk: the VAE alone cannot generate. **Lesson 06** trains a diffusion
  model in this latent space (12 × fewer numbers per step, 256 × fewer attention pairs) to find
  latents the decoder can draw, then conditions it on text with CLIP.
""")

nb = new_notebook(cells=cells)
nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
nb.metadata["language_info"] = {"name": "python"}
nbformat.write(nb, "notebooks/05_vae.ipynb")
print("wrote notebooks/05_vae.ipynb")
