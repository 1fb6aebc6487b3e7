"""Pictures for the lessons: image grids, strips over time, and sliders.

Every interactive widget has a static fallback: `slider(...)` shows an
ipywidgets slider inside JupyterLab, and a row of pictures at a few slider
values when widgets are not available or MINILDM_FAST is set (CI, nbval,
a notebook rendered on a web page).
"""
from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch


def to_numpy_image(image: torch.Tensor) -> np.ndarray:
    """(3, H, W) tensor in [0, 1] -> (H, W, 3) NumPy array for imshow."""
    return image.detach().float().cpu().clamp(0, 1).permute(1, 2, 0).numpy()


def image_grid(images: torch.Tensor, captions=None, ncols: int = 8, title: str | None = None,
               scale: float = 1.4, fontsize: int = 7):
    """Show images (N, 3, H, W) in [0, 1] in a grid, each with an optional caption.

    Returns the matplotlib Figure (save it with fig.savefig(path)).
    """
    images = images.detach().cpu()
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(scale * ncols, scale * nrows + (0.3 if title else 0)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        ax = axes.flat[i]
        ax.imshow(to_numpy_image(images[i]), interpolation="nearest")
        if captions is not None:
            ax.set_title(_wrap(captions[i]), fontsize=fontsize)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _wrap(text: str, width: int = 18) -> str:
    words, lines, line = str(text).split(), [], ""
    for w in words:
        if len(line) + len(w) + 1 > width and line:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    lines.append(line)
    return "\n".join(lines)


def strip(images: torch.Tensor, labels=None, title: str | None = None, scale: float = 1.3):
    """One row of images (T, 3, H, W), e.g. x_t over increasing t, labelled below."""
    return image_grid(images, captions=labels, ncols=len(images), title=title, scale=scale)


def scatter_strip(clouds, labels=None, title: str | None = None, lim: float = 3.0, scale: float = 2.2):
    """One row of 2-D scatter plots: clouds is a list of (n, 2) tensors."""
    fig, axes = plt.subplots(1, len(clouds), figsize=(scale * len(clouds), scale + 0.3), squeeze=False)
    for i, (ax, pts) in enumerate(zip(axes[0], clouds)):
        pts = torch.as_tensor(pts).detach().cpu()
        ax.scatter(pts[:, 0], pts[:, 1], s=1.5, alpha=0.5)
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        if labels is not None:
            ax.set_title(str(labels[i]), fontsize=9)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


STATIC_ENV = "MINILDM_STATIC"  # =1 when executing notebooks to commit them: pictures, not widgets


def widgets_available() -> bool:
    """True in a live Jupyter kernel with ipywidgets, unless in fast (CI) mode or MINILDM_STATIC=1
    (set when the notebooks are re-executed for the repository, so a web page shows pictures)."""
    import os

    from .course import fast_mode
    if fast_mode() or os.environ.get(STATIC_ENV, "0") == "1":
        return False
    try:
        import ipywidgets  # noqa: F401
        from IPython import get_ipython
        shell = get_ipython()
        return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"
    except ImportError:
        return False


def slider(draw, name: str, values, static_values=None, **fixed):
    """An interactive slider over `values` calling draw(**{name: value}, **fixed).

    `draw` makes a matplotlib figure (and may return it). In JupyterLab with
    ipywidgets this is a live slider; otherwise (fast mode, headless, a web page)
    draw is called once for each of `static_values` (default: first, middle, last)
    so the lesson still shows the idea.
    """
    values = list(values)
    if widgets_available():
        import ipywidgets as widgets
        from IPython.display import display

        def on_change(**kw):
            draw(**kw, **fixed)
            plt.show()

        control = widgets.SelectionSlider(options=values, value=values[len(values) // 2],
                                          description=name, continuous_update=False)
        display(widgets.interactive(on_change, **{name: control}))
        return None
    static_values = static_values or [values[0], values[len(values) // 2], values[-1]]
    for value in static_values:
        draw(**{name: value}, **fixed)
        plt.show()
    return None


def save_figure(fig, path) -> Path:
    """Save a figure (creating the folder) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def loss_curve(metrics, keys=("loss",), title: str | None = None, smooth: int = 1, logy: bool = True):
    """Plot training curves from a run: metrics is a run folder, a metrics.jsonl file
    (written by train.train), or a list of row dicts. One panel per key, against step.

    smooth > 1 adds a running mean over that many logged points; logy puts the
    loss panels (keys containing "loss") on a log scale. Taught in
    notebooks/07_scaling_up.ipynb.
    """
    from .train import read_metrics
    rows = metrics if isinstance(metrics, list) else read_metrics(metrics)
    keys = [k for k in keys if any(k in r for r in rows)]
    if not rows or not keys:
        raise ValueError("no metric rows to plot (is the run's metrics.jsonl empty?)")
    fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        steps = [r["step"] for r in rows if key in r]
        values = [r[key] for r in rows if key in r]
        ax.plot(steps, values, lw=1, alpha=0.5 if smooth > 1 else 1.0, label=key)
        if smooth > 1 and len(values) >= smooth:
            kernel = np.ones(smooth) / smooth
            ax.plot(steps[smooth - 1:], np.convolve(values, kernel, mode="valid"), lw=2,
                    label=f"mean of {smooth}")
            ax.legend(fontsize=8)
        if logy and "loss" in key and all(v > 0 for v in values):
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def ddp_diagram(world_size: int = 3):
    """A picture of one DistributedDataParallel step on `world_size` GPUs (ranks).

    Each rank draws its own batch and computes its own gradients; an all-reduce
    averages them, so every rank takes the same optimizer step. Taught in
    notebooks/07_scaling_up.ipynb.
    """
    fig, ax = plt.subplots(figsize=(2.6 * world_size + 1, 4.6))
    ax.set_xlim(0, world_size)
    ax.set_ylim(0, 5.2)
    ax.axis("off")
    box = dict(boxstyle="round,pad=0.3", fc="#e8f0fe", ec="#3b6fd8")
    rows = [(4.7, "rank {r}: GPU {r}\nown batch (seed + {r})"), (3.7, "forward + backward\n-> gradients g_{r}"),
            (1.2, "optimizer step\nwith the same g"), (0.3, "identical weights\n(rank 0 saves them)")]
    for r in range(world_size):
        x = r + 0.5
        for y, text in rows:
            ax.text(x, y, text.format(r=r), ha="center", va="center", fontsize=9, bbox=box)
        ax.annotate("", (x, 3.95), (x, 4.42), arrowprops=dict(arrowstyle="->"))
        ax.annotate("", (x, 2.75), (x, 3.4), arrowprops=dict(arrowstyle="->", color="#c0392b"))
        ax.annotate("", (x, 1.5), (x, 2.15), arrowprops=dict(arrowstyle="->", color="#c0392b"))
        ax.annotate("", (x, 0.58), (x, 0.92), arrowprops=dict(arrowstyle="->"))
    mean = " + ".join(f"g_{r}" for r in range(world_size))
    ax.text(world_size / 2, 2.45, f"all-reduce (NCCL on GPUs, gloo on CPUs):  g = ({mean}) / {world_size}",
            ha="center", va="center", fontsize=10,
            bbox=dict(boxstyle="round,pad=0.5", fc="#fdecea", ec="#c0392b"))
    ax.set_title("One DDP training step", fontsize=11)
    fig.tight_layout()
    return fig
