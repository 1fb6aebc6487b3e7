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
               scale: float = 1.4, fontsize: int = 7, gap: float = 0.08):
    """Show images (N, 3, H, W) in [0, 1] in a grid, each with an optional caption.

    gap: white space between images, as a fraction of an image's side. Without
    captions the rows would otherwise touch, and two black 32x32 images stacked
    read as one tall image with two objects.
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
    if captions is None:                    # titles make room between rows; without them, leave a gap
        fig.subplots_adjust(wspace=gap, hspace=gap)
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


# ----------------------------------------------------------------------------
# Architecture diagrams (boxes and arrows, drawn from a model's config)

_COLORS = {"data": ("#eeeeee", "#555555"), "model": ("#e8f0fe", "#3b6fd8"), "time": ("#fdf0e0", "#d9822b"),
           "text": ("#e6f4ea", "#1e8e3e"), "loss": ("#fdecea", "#c0392b")}


def _box(ax, x, y, text, kind="model", fontsize=8):
    """A rounded box centred at (x, y), coloured by kind (see _COLORS); returns its Text artist."""
    face, edge = _COLORS[kind]
    return ax.text(x, y, text, ha="center", va="center", fontsize=fontsize,
                   bbox=dict(boxstyle="round,pad=0.35", fc=face, ec=edge))


SIDES = {"left": (0, 0.5), "right": (1, 0.5), "top": (0.5, 1), "bottom": (0.5, 0)}


def _link(ax, a, b, frm="right", to="left", label=None, color="#333333", fontsize=7, **kw):
    """An arrow from a side of box a to a side of box b (sides or (x, y) fractions of the box),
    with an optional label beside its middle."""
    frm, to = SIDES.get(frm, frm), SIDES.get(to, to)
    arrow = ax.annotate("", xy=to, xycoords=b, xytext=frm, textcoords=a,
                        arrowprops=dict(arrowstyle="-|>", color=color, lw=1.2, shrinkA=2, shrinkB=2, **kw))
    if label:
        ax.annotate(label, xy=(0.5, 0.5), xycoords=arrow.arrow_patch, ha="center", va="bottom",
                    fontsize=fontsize, color=color, xytext=(0, 3), textcoords="offset points")
    return arrow


def _chain(ax, y, items, xs, fontsize=8):
    """Boxes (text, kind) at (xs[k], y), each linked to the next; returns the Text artists."""
    boxes = [_box(ax, x, y, text, kind, fontsize) for x, (text, kind) in zip(xs, items)]
    for a, b in zip(boxes, boxes[1:]):
        _link(ax, a, b)
    return boxes


def _canvas(width, height, xlim, ylim, title):
    fig, ax = plt.subplots(figsize=(width, height))
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=11)
    return fig, ax


def pipeline_diagram():
    """The latent diffusion pipeline, arrows in the direction the data flows.

    Top row: how a training image becomes the UNet's input. Middle row: how a
    prompt becomes the context the UNet cross-attends to. Bottom row: sampling,
    where the sampler calls the UNet at every step. Taught in
    notebooks/00_welcome.ipynb and 06_latent_diffusion.ipynb.
    """
    fig, ax = _canvas(13, 4.0, (-0.9, 14.2), (0.45, 3.75), "Latent diffusion: where each part sits")
    for y, name in ((3.4, "training"), (2.2, "the prompt"), (0.8, "sampling")):
        ax.text(-0.8, y, name, fontsize=9, style="italic", va="center", color="#555555")
    train_row = _chain(ax, 3.4, [("pixels x0\n3x32x32", "data"), ("VAE encoder", "model"), ("z0\n4x8x8", "data"),
                                 ("add noise\nq(z_t | z0)", "model"), ("z_t", "data")], [0.8, 2.6, 4.3, 6.1, 8.6])
    text_row = _chain(ax, 2.2, [("prompt", "data"), ("tokenizer", "text"), ("CLIP text\nencoder", "text"),
                                ("context\n(16 token states)", "data")], [0.8, 2.6, 4.3, 6.1])
    unet = _box(ax, 8.6, 2.2, "UNet\nε̂(z_t, t, context)", "model", fontsize=9)
    time = _box(ax, 11.0, 2.2, "timestep t", "time")
    _link(ax, train_row[-1], unet, "bottom", "top")
    _link(ax, text_row[-1], unet, label="cross-attention", color="#1e8e3e")
    _link(ax, time, unet, "left", "right", label="time embedding", color="#d9822b")
    noise = _box(ax, 2.6, 0.8, "z_T ~ N(0, I)", "data")
    sampler = _box(ax, 8.6, 0.8, "DDPM / DDIM steps\n(+ guidance)", "model")
    _link(ax, noise, sampler)
    _link(ax, sampler, unet, (0.25, 1), (0.25, 0), label="z_t, t  ", color="#3b6fd8")
    _link(ax, unet, sampler, (0.75, 0), (0.75, 1), label="  ε̂", color="#3b6fd8")
    out = _chain(ax, 0.8, [("z0", "data"), ("VAE decoder", "model"), ("pixels", "data")], [10.6, 12.0, 13.5])
    _link(ax, sampler, out[0])
    fig.tight_layout()
    return fig


def _badge(ax, box, text, color, corner):
    """A small coloured disc with text on a corner of a box ((0, 1) = top left, (1, 1) = top right)."""
    ax.annotate(text, xy=corner, xycoords=box, ha="center", va="center", fontsize=6.5, color="white",
                bbox=dict(boxstyle="circle,pad=0.2", fc=color, ec="none"))


def unet_diagram(config, image_size: int = 32):
    """The UNet of a UNetConfig as a U: resolution and channels per level, skip
    connections across, and the two ways information gets in: the time embedding
    (added inside every ResBlock) and, when context_dim is set, the text (read by
    cross-attention at the attention levels). Taught in notebooks/02_ddpm.ipynb
    and 06_latent_diffusion.ipynb.
    """
    n, dx, text_in = len(config.channel_mults), 2.3, bool(config.context_dim)
    fig, ax = _canvas(1.6 * (2 * n + 1), 1.05 * (n + 3), (-1.3, 2 * n * dx + 1.3), (-n - 0.6, 2.2),
                      f"UNet on {config.in_channels}x{image_size}x{image_size}: where the time and the text enter")

    def level(i, blocks, attn):
        side, ch = image_size // 2 ** i, config.base_channels * config.channel_mults[i]
        text = f"{side}x{side}, {ch} channels\nResBlock x{blocks}"
        return text + ("\n+ self-attn" + (" + cross-attn" if text_in else "") if attn else "")

    down = [_box(ax, i * dx, -i, level(i, config.num_res_blocks, config.attention_levels[i])) for i in range(n)]
    up = [_box(ax, (2 * n - i) * dx, -i, level(i, config.num_res_blocks + 1, config.attention_levels[i]))
          for i in range(n)]
    middle = _box(ax, n * dx, -n, level(n - 1, 2, True).replace("ResBlock x2", "middle: ResBlock x2"))
    for i in range(n):
        _link(ax, down[i], up[i], label="skip: concatenate", color="#888888", linestyle="--")
    for a, b in zip(down, down[1:] + [middle]):
        _link(ax, a, b, "bottom", "left")
    for a, b in zip([middle] + up[::-1][:-1], up[::-1]):
        _link(ax, a, b, "right", "bottom")
    x_in = _box(ax, 0, 1.6, f"x_t ({config.in_channels} channels)", "data")
    eps_out = _box(ax, 2 * n * dx, 1.6, f"ε̂ ({config.out_channels} channels)", "data")
    _link(ax, x_in, down[0], "bottom", "top")
    _link(ax, up[0], eps_out, "top", "bottom")
    for i, box in enumerate(down + up + [middle]):
        _badge(ax, box, "t", "#d9822b", (-0.06, 1.3))
        if text_in and (box is middle or config.attention_levels[i % n]):
            _badge(ax, box, "txt", "#1e8e3e", (1.06, 1.3))
    legend = ("down the U: stride-2 conv halves the side; up: nearest upsampling + conv\n"
              "t: timestep -> sin/cos -> MLP = temb, added per channel inside every ResBlock")
    if text_in:
        legend += f"\ntxt: cross-attention reads the prompt's 16 token states (width {config.context_dim})"
    _box(ax, n * dx, 1.6, legend, "text" if text_in else "time", fontsize=8)
    fig.tight_layout()
    return fig


def clip_encoders_diagram(config):
    """MiniCLIP's two image encoders (sizes from a CLIPConfig), each ending in the
    linear projection W_i and the L2 normalisation. Taught in notebooks/04_clip.ipynb.
    """
    s, w = config.image_size, config.resnet_widths
    fig, ax = _canvas(13, 2.8, (-0.5, 13.5), (0.1, 2.6), "CLIP's image encoders: ResNet (top) and ViT (bottom)")
    resnet, side = [(f"image\n3x{s}x{s}", "data"), (f"stem conv\n{w[0]} ch, {s}x{s}", "model")], s
    for c in w[1:]:
        side //= 2
        resnet.append((f"residual stage\n{c} ch, {side}x{side}", "model"))
    resnet.append((f"attention pool\nquery = mean\n+ {side}x{side} positions", "model"))
    grid, p = s // config.vit_patch_size, config.vit_patch_size
    vit = [(f"image\n3x{s}x{s}", "data"), (f"{grid}x{grid} patches\nof {p}x{p} pixels", "model"),
           (f"linear patch\nembedding ({config.vit_width})", "model"),
           (f"[class] + {grid * grid} tokens\n+ positions", "model"),
           (f"Transformer\nblocks x{config.vit_layers}", "model"), ("class token\n-> LayerNorm", "model")]
    tail = [(f"W_i: linear\n-> {config.embed_dim}", "loss"), ("L2-normalise:\na unit vector", "loss")]
    for y, items in ((2.1, resnet + tail), (0.6, vit + tail)):
        _chain(ax, y, items, np.linspace(0.4, 12.6, len(items)), fontsize=7.5)
    fig.tight_layout()
    return fig


def contrastive_loss_picture(logits: torch.Tensor, labels=None):
    """CLIP's symmetric cross-entropy on one batch's (B, B) logits, in three panels:
    the logits; their softmax over each row (image -> which caption?); their
    softmax over each column (caption -> which image?). The targets are the
    diagonal; each row's (column's) cross-entropy -log p(target) follows its label
    after "|". Taught in notebooks/04_clip.ipynb.
    """
    logits = logits.detach().float().cpu()
    B = logits.shape[0]
    rows, cols = logits.softmax(dim=1), logits.softmax(dim=0)
    ce_rows = -rows.diagonal().log()                              # (B,) one per image
    ce_cols = -cols.diagonal().log()                              # (B,) one per caption
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.4))
    panels = ((logits, "logits = scale x cos(image_i, caption_j)", "viridis"),
              (rows, f"softmax over each row (sums to 1)\nCE over rows = {ce_rows.mean():.3f}", "Blues"),
              (cols, f"softmax over each column (sums to 1)\nCE over columns = {ce_cols.mean():.3f}", "Oranges"))
    names = labels if labels is not None else [f"caption {j}" for j in range(B)]
    for k, (ax, (m, title, cmap)) in enumerate(zip(axes, panels)):
        im = ax.imshow(m, cmap=cmap)
        for i in range(B):                                        # the targets: the diagonal
            ax.add_patch(plt.Rectangle((i - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=1.5))
        ax.set_title(title, fontsize=9)
        xnames = [f"{c} | {ce_cols[j]:.2f}" for j, c in enumerate(names)] if k == 2 else names
        ynames = [f"image {i} | {ce_rows[i]:.2f}" if k == 1 else f"image {i}" for i in range(B)]
        ax.set_xticks(range(B), xnames, rotation=75, fontsize=6, ha="right")
        ax.set_yticks(range(B), ynames, fontsize=6)
        fig.colorbar(im, ax=ax, shrink=0.7)
    fig.suptitle(f"symmetric loss = (CE over rows + CE over columns) / 2 = "
                 f"{(ce_rows.mean() + ce_cols.mean()) / 2:.3f}   (red boxes: the right answers)", fontsize=10)
    fig.tight_layout()
    return fig
