"""Adversarial cases for the Shapes judge: what "clean" must accept and what it must reject.

A judge is only as trustworthy as the worst image it calls clean. This module makes
images of known kinds, each from a seed, so the judge's verdicts can be measured:

    must be accepted (clean)
      clean           plain Shapes renders (32x32 or 64x64)
      soft            the same, slightly blurred (Gaussian, sigma 0.3-0.6 px at 32x32),
                      about as soft as decoded or generated images
    must be rejected (not clean)
      two_colour      one object, a straight cut through it, 25-50% of it in a second palette colour
      fragments       one object cut by one or two black bands (2-3 px at 32x32) into pieces
      two_objects     two Shapes objects in one image
      hollow          an outline: the object minus a copy 40-60% as wide (same centre)
      stray_pixels    a clean render plus 1-4 lone pixels of a palette colour away from the object
      blur            heavily blurred (Gaussian, sigma 1.25-2 px at 32x32)
      noise           additive Gaussian noise, std 0.08-0.2 per channel, clipped to [0, 1]
      half_cut        the object 25-50% outside the image, cut by the border
      seventh_colour  one clean object in a colour that is not in the palette (OTHER_COLORS)

Lengths in pixels scale with the resolution (given at 32x32). The command prints the
table of docs/judge.md:

    python -m minildm.data.judge_cases --n 500 --vae --compare-with fa9aa1c --picture docs/judge_cases.png

Taught in notebooks/06_latent_diffusion.ipynb (the judge).
"""
from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from . import scenes, shapes

GOOD_KINDS = ("clean", "soft")
BAD_KINDS = ("two_colour", "fragments", "two_objects", "hollow", "stray_pixels", "blur", "noise",
             "half_cut", "seventh_colour")
KINDS = GOOD_KINDS + BAD_KINDS
# Colours at least 0.5 away from every palette colour (RGB distance).
OTHER_COLORS = {
    "orange": (1.0, 0.5, 0.0), "white": (1.0, 1.0, 1.0), "grey": (0.5, 0.5, 0.5),
    "purple": (0.5, 0.0, 1.0), "lime": (0.5, 1.0, 0.0), "pink": (1.0, 0.5, 0.75),
}
PALETTE = np.array(list(shapes.COLORS.values()), dtype=np.float32)     # (6, 3)


def gaussian_blur(images: torch.Tensor, sigma: np.ndarray) -> torch.Tensor:
    """Blur each image (N, 3, H, W) with its own Gaussian of std sigma[i] pixels (zero padding)."""
    n, c, h, w = images.shape
    sigma = torch.as_tensor(np.asarray(sigma), dtype=torch.float32).view(n, 1)
    radius = int(np.ceil(3 * float(sigma.max())))
    x = torch.arange(-radius, radius + 1, dtype=torch.float32)           # (K,)
    kernel = torch.exp(-x ** 2 / (2 * sigma ** 2))                        # (N, K)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (N*3, K), one per channel
    x = images.reshape(1, n * c, h, w)                                   # every channel its own group
    x = F.conv2d(x, kernel.view(n * c, 1, 1, -1), padding=(0, radius), groups=n * c)  # along x
    x = F.conv2d(x, kernel.view(n * c, 1, -1, 1), padding=(radius, 0), groups=n * c)  # along y
    return x.view(n, c, h, w).clamp(0, 1)


def _coverage(labels: torch.Tensor, geometry: np.ndarray, resolution: int) -> np.ndarray:
    return shapes.shape_coverage(labels[:, 0].numpy(), geometry, resolution)  # (N, H, W)


def _paint(coverage: np.ndarray, rgb: np.ndarray) -> torch.Tensor:
    """coverage (N, H, W) x colours (N, 3) or per pixel (N, H, W, 3) -> images (N, 3, H, W)."""
    if rgb.ndim == 2:
        rgb = rgb[:, None, None, :]
    return torch.from_numpy((coverage[..., None] * rgb).transpose(0, 3, 1, 2).astype(np.float32).copy())


def _pixel_grid(resolution: int):
    coords = (np.arange(resolution) + 0.5) / resolution
    return np.meshgrid(coords, coords)                                 # xs, ys (H, W) in [0, 1]


def _two_colour(labels, geometry, res, rng):
    cover = _coverage(labels, geometry, res)
    xs, ys = _pixel_grid(res)
    rgb = np.repeat(PALETTE[labels[:, 1].numpy()][:, None, None, :], res, 1).repeat(res, 2)
    for i in range(len(labels)):
        angle = rng.uniform(0, 2 * np.pi)
        along = (xs - geometry[i, 0]) * np.cos(angle) + (ys - geometry[i, 1]) * np.sin(angle)
        inside = cover[i] > 0
        # Cut so that a fraction f of the object's ink takes the second colour.
        order = np.argsort(along[inside])
        cumulative = np.cumsum(cover[i][inside][order]) / cover[i][inside].sum()
        cut = along[inside][order][np.searchsorted(cumulative, rng.uniform(0.25, 0.5))]
        other = rng.choice([c for c in range(len(PALETTE)) if c != int(labels[i, 1])])
        rgb[i][along < cut] = PALETTE[other]
    return _paint(cover, rgb)


def _fragments(labels, geometry, res, rng):
    cover = _coverage(labels, geometry, res)
    xs, ys = _pixel_grid(res)
    for i in range(len(labels)):
        while True:                                                     # until it is really in pieces
            piece = cover[i].copy()
            for _ in range(rng.integers(1, 3)):
                angle = rng.uniform(0, np.pi)
                px, py = geometry[i, :2] + rng.uniform(-0.15, 0.15, 2) * geometry[i, 2]
                across = (xs - px) * -np.sin(angle) + (ys - py) * np.cos(angle)
                piece[np.abs(across) * res < rng.uniform(1.0, 1.5) * res / 32] = 0
            parts, count = ndimage.label(piece > 0.5, structure=np.ones((3, 3)))
            if count >= 2 and np.bincount(parts.ravel())[1:].min() >= 2:
                cover[i] = piece
                break
    return _paint(cover, PALETTE[labels[:, 1].numpy()])


def _two_objects(labels, geometry, res, rng):
    # Both small, so that they always fit side by side (labels is changed in place to say so).
    labels[:, 2] = shapes.SIZES.index("small")
    geometry[:] = shapes.sample_geometry(labels, rng)
    other = shapes.sample_labels(len(labels), "all", rng)
    other[:, 2] = shapes.SIZES.index("small")
    other_geometry = shapes.sample_geometry(other, rng)
    gap = 1.5 / 32                                                      # boxes at least 1.5 px apart
    while True:
        apart = np.abs(geometry[:, :2] - other_geometry[:, :2]) - (geometry[:, 2:] + other_geometry[:, 2:]) / 2
        overlap = apart.max(axis=1) < gap                               # (N,)
        if not overlap.any():
            break
        other[overlap, 3] = torch.from_numpy(rng.integers(0, 9, int(overlap.sum())))  # another cell
        other_geometry[overlap] = shapes.sample_geometry(other[overlap], rng)
    return torch.maximum(shapes.render(labels, res, geometry=geometry),
                         shapes.render(other, res, geometry=other_geometry))


def _hollow(labels, geometry, res, rng):
    inner_geometry = geometry.copy()
    inner_geometry[:, 2] *= rng.uniform(0.4, 0.6, len(labels))          # the hole: same centre, 40-60% as wide
    cover = _coverage(labels, geometry, res) - _coverage(labels, inner_geometry, res)
    return _paint(np.clip(cover, 0, 1), PALETTE[labels[:, 1].numpy()])


def _stray_pixels(labels, geometry, res, rng):
    images = shapes.render(labels, res, geometry=geometry)
    speck = max(1, res // 32)                                           # 1 px at 32, 2 px at 64
    far = ~ndimage.binary_dilation(images.amax(1).numpy() > 0, np.ones((1, 7, 7)))  # >= 3 px away
    for i in range(len(labels)):
        for _ in range(rng.integers(1, 5)):
            while True:
                y, x = rng.integers(0, res - speck + 1, 2)
                if far[i, y:y + speck, x:x + speck].all():
                    break
            images[i, :, y:y + speck, x:x + speck] = torch.from_numpy(PALETTE[rng.integers(6)])[:, None, None]
    return images


def _half_cut(labels, geometry, res, rng):
    geometry = geometry.copy()
    for i in range(len(labels)):
        width = geometry[i, 2]
        outside = rng.uniform(0.25, 0.5)                                # fraction of the width cut off
        axis, far_side = rng.integers(2), rng.integers(2)
        centre = width * (0.5 - outside)                                # distance of the centre from the edge
        geometry[i, axis] = 1 - centre if far_side else centre
    return shapes.render(labels, res, geometry=geometry)


def make_case(kind: str, n: int, resolution: int = 32, seed: int = 0):
    """n images of one kind -> (images (n, 3, R, R) in [0, 1], labels (n, 4) of the object drawn).

    For two_objects the labels are those of the first object; for seventh_colour the color
    label is meaningless (the object has none of the six).
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; allowed: {', '.join(KINDS)}")
    rng = np.random.default_rng([seed, KINDS.index(kind), resolution])
    labels = shapes.sample_labels(n, "all", rng)
    geometry = shapes.sample_geometry(labels, rng)
    scale = resolution / 32
    if kind == "clean":
        images = shapes.render(labels, resolution, geometry=geometry)
    elif kind == "soft":
        images = gaussian_blur(shapes.render(labels, resolution, geometry=geometry),
                               rng.uniform(0.3, 0.6, n) * scale)
    elif kind == "blur":
        images = gaussian_blur(shapes.render(labels, resolution, geometry=geometry),
                               rng.uniform(1.25, 2.0, n) * scale)
    elif kind == "noise":
        images = shapes.render(labels, resolution, geometry=geometry)
        std = torch.from_numpy(rng.uniform(0.08, 0.2, n).astype(np.float32)).view(n, 1, 1, 1)
        noise = torch.from_numpy(rng.standard_normal(images.shape).astype(np.float32))
        images = (images + std * noise).clamp(0, 1)
    elif kind == "seventh_colour":
        rgb = np.array(list(OTHER_COLORS.values()), dtype=np.float32)[rng.integers(len(OTHER_COLORS), size=n)]
        images = _paint(_coverage(labels, geometry, resolution), rgb)
    else:
        make = {"two_colour": _two_colour, "fragments": _fragments, "two_objects": _two_objects,
                "hollow": _hollow, "stray_pixels": _stray_pixels, "half_cut": _half_cut}[kind]
        images = make(labels, geometry, resolution, rng)
    return images, labels


# ----------------------------------------------------------------------------
# Measuring a judge on the cases (the table of docs/judge.md)

def measure(judge_fn, n: int = 500, resolutions=(32, 64), seed: int = 0) -> dict:
    """{(kind, resolution): {"clean": fraction judged clean, "all_four": attribute accuracy,
    "why": Counter of the reasons given for not clean (judges that give them)}}."""
    from .judge import attribute_accuracy
    table = {}
    for resolution in resolutions:
        for kind in KINDS:
            images, labels = make_case(kind, n, resolution, seed)
            verdict = judge_fn(images)
            table[kind, resolution] = {
                "clean": float(verdict["clean"].float().mean()),
                "all_four": attribute_accuracy(verdict["labels"], labels)["all_four"],
                "why": Counter(w for faults in verdict.get("why", []) for w in faults),
            }
    return table


def vae_reconstructions(n: int = 2000, seed: int = 0):
    """Clean renders through the shipped VAE, vae.decode(vae.encode(images)) -> (recon, labels)."""
    from ..vae import TinyVAE
    vae = TinyVAE.from_pretrained().eval()
    images, _, labels = shapes.sample_batch(n, "all", vae.config.image_size, seed=seed)
    with torch.no_grad():
        recon = torch.cat([vae.decode(vae.encode(images[i:i + 256])) for i in range(0, n, 256)])
    return recon.clamp(0, 1), labels


def picture(path, judge_fn, per_kind: int = 10, resolution: int = 32, seed: int = 0, zoom: int = 3) -> None:
    """Save a grid: one row per kind, a green (clean) or red (rejected) bar under each image."""
    from PIL import Image, ImageDraw
    side, bar, label_w = resolution * zoom, 4, 120
    canvas = Image.new("RGB", (label_w + per_kind * (side + 4), len(KINDS) * (side + bar + 6)), (40, 40, 40))
    draw = ImageDraw.Draw(canvas)
    for row, kind in enumerate(KINDS):
        images, _ = make_case(kind, per_kind, resolution, seed)
        clean = judge_fn(images)["clean"]
        y = row * (side + bar + 6) + 2
        draw.text((4, y + side // 2 - 6), kind, fill=(230, 230, 230))
        for i, image in enumerate(images):
            x = label_w + i * (side + 4)
            tile = Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
            canvas.paste(tile.resize((side, side), Image.NEAREST), (x, y))
            draw.rectangle([x, y + side + 1, x + side - 1, y + side + bar], fill=(60, 200, 60) if clean[i] else (220, 50, 50))
    canvas.save(path)


def measure_scenes(n: int = 1200, resolution: int = 32, seed: int = 0) -> dict:
    """The scenes judge on n renders, and what it says of swapped, one-object and flipped ones."""
    from .judge import judge_scenes, scene_accuracy
    images, _, labels = scenes.sample_batch(n, "all", resolution, seed)
    result = {"renders": scene_accuracy(judge_scenes(images, labels)["labels"], labels)}
    result["renders"]["clean"] = float(judge_scenes(images)["clean"].float().mean())
    two_shapes = labels[labels[:, 0] != labels[:, 3]]          # with one shape a swap is a mirror image
    swapped = judge_scenes(scenes.render(scenes.swap_colors(two_shapes), resolution, seed), two_shapes)
    geometry = scenes.sample_geometry(labels, np.random.default_rng(seed))
    alone = _paint(_coverage(labels, geometry[:, 0], resolution), PALETTE[labels[:, 1].numpy()])
    flipped = labels.clone()
    flipped[:, 2] = torch.tensor(scenes.CONVERSE)[labels[:, 2]]
    result["swapped colours"] = Counter(swapped["error"])
    result["one object"] = Counter(judge_scenes(alone, labels)["error"])
    result["flipped relation"] = Counter(judge_scenes(scenes.render(flipped, resolution, seed), labels)["error"])
    return result


def judge_at_commit(commit: str):
    """The judge() of minildm/data/judge.py as it was at a git commit (for before/after tables)."""
    root = Path(__file__).resolve().parents[2]
    source = subprocess.run(["git", "show", f"{commit}:minildm/data/judge.py"], cwd=root,
                            capture_output=True, text=True, check=True).stdout
    spec = importlib.util.spec_from_loader(f"minildm.data._judge_{commit}", loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "minildm.data"                                # for `from .shapes import ...`
    exec(compile(source, f"judge.py@{commit}", "exec"), module.__dict__)
    return module.judge


def _percent(x: float) -> str:
    return f"{100 * x:.1f}%"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minildm.data.judge_cases", description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=500, help="images per kind and resolution")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vae", action="store_true", help="also judge the shipped VAE's reconstructions (4n)")
    parser.add_argument("--compare-with", metavar="COMMIT", help="also measure the judge of this git commit")
    parser.add_argument("--picture", metavar="PNG", help="save a grid of each kind with the judge's verdicts")
    parser.add_argument("--scenes", type=int, metavar="N", help="only measure the scenes judge on N renders per resolution")
    args = parser.parse_args(argv)
    from .judge import attribute_accuracy, judge
    if args.scenes:
        for resolution in (32, 64):
            result = measure_scenes(args.scenes, resolution, args.seed)
            fields = ", ".join(f"{k} {_percent(v)}" for k, v in result.pop("renders").items())
            print(f"{resolution}x{resolution}, {args.scenes} renders: {fields}")
            for case, errors in result.items():
                print(f"  {case} ({sum(errors.values())}): " + ", ".join(f"{k} {v}" for k, v in errors.most_common()))
        return 0
    judges = {"now": judge}
    if args.compare_with:
        judges = {f"at {args.compare_with}": judge_at_commit(args.compare_with), **judges}
    tables = {name: measure(fn, args.n, seed=args.seed) for name, fn in judges.items()}
    names = list(judges)
    print(f"{args.n} images per kind and resolution, seed {args.seed}\n")
    print("| kind | res | wanted | " + " | ".join(f"judged clean ({name})" for name in names) + " | reasons (now) |")
    print("|---|---|---|" + "---|" * len(names) + "---|")
    for (kind, res) in tables[names[0]]:
        wanted = "clean" if kind in GOOD_KINDS else "rejected"
        cells = []
        for name in names:
            row = tables[name][kind, res]
            cells.append(_percent(row["clean"]) + (f" (all four {_percent(row['all_four'])})" if kind in GOOD_KINDS else ""))
        why = ", ".join(f"{reason} {count}" for reason, count in tables["now"][kind, res]["why"].most_common())
        print(f"| {kind} | {res} | {wanted} | " + " | ".join(cells) + f" | {why} |")
    if args.vae:
        recon, labels = vae_reconstructions(4 * args.n, args.seed)
        cells, why = [], ""
        for name in names:
            verdict = judges[name](recon)
            accuracy = attribute_accuracy(verdict["labels"], labels)["all_four"]
            cells.append(f"{_percent(float(verdict['clean'].float().mean()))} (all four {_percent(accuracy)})")
            why = ", ".join(f"{r} {c}" for r, c in Counter(w for f in verdict.get("why", []) for w in f).most_common())
        print(f"| VAE reconstructions ({len(recon)}) | {recon.shape[-1]} | clean | " + " | ".join(cells) + f" | {why} |")
    if args.picture:
        picture(args.picture, judge)
        print(f"\nsaved {args.picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
