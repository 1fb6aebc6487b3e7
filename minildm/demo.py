"""`python -m minildm demo`: one picture of what the course builds.

Rows, top to bottom (each appears once its weights exist):

    1. the Shapes data with captions                        (always)
    2. forward noising of one image, x_t over t             (always)
    3. VAE: originals vs reconstructions through 8x8x4      (minildm/weights/vae)
    4. text-to-image samples of the latent diffusion model  (minildm/weights/ldm)

Generated files go where the caller says (the current folder by default),
never into the installed package.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .data import shapes  # noqa: E402
from .viz import save_figure, to_numpy_image  # noqa: E402
from .weights_io import WeightsError  # noqa: E402

DEMO_PROMPTS = (
    "a large red circle in the top left",
    "a small green square in the center",
    "a large yellow triangle at the bottom",
    "a small cyan circle on the right",
    "a large magenta triangle in the bottom right",
    "a small blue square at the top",
    "a large blue triangle in the center",   # a held-out pair: never seen in training
    "a small yellow circle on the left",     # a held-out pair
)


def dataset_preview(out, n: int = 24, seed: int = 0, resolution: int = 32) -> Path:
    """A grid of Shapes images with their captions (the dataset card's picture)."""
    from .viz import image_grid
    images, captions, _ = shapes.sample_batch(n, "all", resolution, seed=seed)
    return save_figure(image_grid(images, captions, ncols=8, scale=1.5), out)


def _noising_row():
    """x0 and x_t at a few t under the linear schedule, by the closed form q_sample."""
    from .schedule import NoiseSchedule
    images, _, _ = shapes.sample_batch(1, "train", 32, seed=3)
    x0 = images * 2 - 1
    t_values = [0, 50, 100, 200, 400, 600, 999]
    sched = NoiseSchedule("linear", 1000)
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(0))
    row = [sched.q_sample(x0, torch.tensor([t]), noise) for t in t_values]
    return [((x + 1) / 2).clamp(0, 1)[0] for x in row], [f"t = {t}" for t in t_values]


def _vae_row():
    from .vae import TinyVAE
    vae = TinyVAE.from_pretrained()
    images, _, _ = shapes.sample_batch(4, "test", 32, seed=11)
    with torch.no_grad():
        recon = vae.decode(vae.encode(images))
    pics = [img for pair in zip(images, recon) for img in pair]
    titles = [t for _ in range(4) for t in ("original", "VAE recon.")]
    return pics, titles


def _ldm_row():
    from .pipeline import LatentDiffusionPipeline
    pipe = LatentDiffusionPipeline.from_pretrained()
    images = pipe(list(DEMO_PROMPTS), num_steps=50, seed=0)
    return list(images), list(DEMO_PROMPTS)


def make_demo(out="minildm_demo.png") -> Path:
    """Draw the course's results (whatever is trained so far) into one PNG."""
    data, captions, _ = shapes.sample_batch(8, "all", 32, seed=0)
    rows = [("The data: captioned Shapes", list(data), captions), ("Forward noising q(x_t | x_0)", *_noising_row())]
    for title, make in (("A tiny VAE: 32x32x3 -> 8x8x4 -> 32x32x3", _vae_row),
                        ("Text to image with our latent diffusion model", _ldm_row)):
        try:
            rows.append((title, *make()))
        except (ImportError, WeightsError, FileNotFoundError) as err:
            print(f"(skipping '{title}': {err})")
    ncols = max(len(r[1]) for r in rows)
    fig = plt.figure(figsize=(1.5 * ncols, 2.2 * len(rows)), layout="constrained")
    for subfig, (title, pics, labels) in zip(fig.subfigures(len(rows), 1), rows):
        subfig.suptitle(title, fontsize=11, weight="bold", x=0.01, ha="left")
        axes = subfig.subplots(1, ncols)
        for c, ax in enumerate(axes):
            ax.axis("off")
            if c < len(pics):
                ax.imshow(to_numpy_image(pics[c]), interpolation="nearest")
                ax.set_title(_short(labels[c]), fontsize=7)
    return save_figure(fig, out)


def _short(text: str, width: int = 20) -> str:
    from .viz import _wrap
    return _wrap(text, width)
