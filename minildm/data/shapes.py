"""Captioned Shapes: the course's toy world of one coloured shape on black.

Every image holds exactly one object, described by four attributes:

    shape     circle | square | triangle
    color     red (1,0,0) | green (0,1,0) | blue (0,0,1) |
              yellow (1,1,0) | magenta (1,0,1) | cyan (0,1,1)
    size      small (about 1/4 of the side across) | large (about 1/2)
    position  the 3x3 cell that holds the centre of the object's bounding box

and one canonical caption, ``"a {size} {color} {shape} {where}"``, e.g.
``"a large red circle in the top left"``. 3 * 6 * 2 * 9 = 324 captions.

Images are drawn from signed distance functions, so edges are anti-aliased while
the background stays exactly black. Rendering is vectorised over a batch in
NumPy (tens of thousands of 32x32 images per second on one core), so the course
never needs data files: every split is generated on the fly from a seed.

Held-out pairs: three (shape, color) pairs never appear in the training split,
so the course can ask whether CLIP or the diffusion model generalise to a
"blue triangle" they never saw (compositional generalisation).

Taught in notebooks/00_welcome.ipynb.
"""
from __future__ import annotations

import math
import sys

import numpy as np
import torch
from torch.utils.data import Dataset

# ----------------------------------------------------------------------------
# The vocabulary of the world (order matters: the index is the label)

SHAPES = ("circle", "square", "triangle")
COLORS = {
    "red": (1.0, 0.0, 0.0),
    "green": (0.0, 1.0, 0.0),
    "blue": (0.0, 0.0, 1.0),
    "yellow": (1.0, 1.0, 0.0),
    "magenta": (1.0, 0.0, 1.0),
    "cyan": (0.0, 1.0, 1.0),
}
COLOR_NAMES = tuple(COLORS)
SIZES = ("small", "large")
# The 3x3 cells in row-major order (row 0 is the top of the image).
POSITIONS = (
    "top left", "top", "top right",
    "left", "center", "right",
    "bottom left", "bottom", "bottom right",
)
# The words a caption uses for each cell.
WHERE = (
    "in the top left", "at the top", "in the top right",
    "on the left", "in the center", "on the right",
    "in the bottom left", "at the bottom", "in the bottom right",
)
ATTRIBUTES = ("shape", "color", "size", "position")  # order of a label vector
ATTRIBUTE_VALUES = {"shape": SHAPES, "color": COLOR_NAMES, "size": SIZES, "position": POSITIONS}
NUM_CAPTIONS = len(SHAPES) * len(COLORS) * len(SIZES) * len(POSITIONS)  # 324

# Never in the "train" split; the only pairs in the "heldout" split.
HELD_OUT_PAIRS = (("triangle", "blue"), ("circle", "yellow"), ("square", "magenta"))

SPLITS = ("train", "test", "heldout", "all")
RESOLUTIONS = (32, 64)

# Geometry, as fractions of the image side.
SIZE_RANGES = {"small": (0.20, 0.30), "large": (0.44, 0.52)}  # width across
CELL_MARGIN = 0.10    # the centre stays this fraction of a cell away from the cell's borders
BORDER_MARGIN = 0.03  # and the object this fraction of the side away from the image's edge

# Paraphrases used in training (canonical wording first).
SIZE_WORDS = {"small": ("small", "tiny", "little"), "large": ("large", "big")}
WHERE_WORDS = (
    ("in the top left", "in the upper left", "at the top left"),
    ("at the top", "at the top middle", "in the upper middle"),
    ("in the top right", "in the upper right", "at the top right"),
    ("on the left", "at the left", "on the left side"),
    ("in the center", "in the middle", "in the centre"),
    ("on the right", "at the right", "on the right side"),
    ("in the bottom left", "in the lower left", "at the bottom left"),
    ("at the bottom", "at the bottom middle", "in the lower middle"),
    ("in the bottom right", "in the lower right", "at the bottom right"),
)


def _check_choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; allowed: {', '.join(map(str, allowed))}")


def _check_resolution(resolution: int) -> None:
    if resolution not in RESOLUTIONS:
        raise ValueError(f"resolution must be one of {RESOLUTIONS}, got {resolution!r}")


# ----------------------------------------------------------------------------
# Labels and captions

def labels_of(shape: str, color: str, size: str, position: str) -> torch.Tensor:
    """Attribute names -> a label vector (4,) of indices in ATTRIBUTES order."""
    for name, value in zip(ATTRIBUTES, (shape, color, size, position)):
        _check_choice(name, value, ATTRIBUTE_VALUES[name])
    return torch.tensor([SHAPES.index(shape), COLOR_NAMES.index(color),
                         SIZES.index(size), POSITIONS.index(position)])


def describe(labels) -> dict:
    """A label vector (4,) -> {"shape": "circle", "color": "red", ...}."""
    s, c, z, p = (int(v) for v in labels)
    return {"shape": SHAPES[s], "color": COLOR_NAMES[c], "size": SIZES[z], "position": POSITIONS[p]}


def caption(labels) -> str:
    """The canonical caption of a label vector: 'a large red circle in the top left'."""
    s, c, z, p = (int(v) for v in labels)
    return f"a {SIZES[z]} {COLOR_NAMES[c]} {SHAPES[s]} {WHERE[p]}"


def paraphrase(labels, rng: np.random.Generator) -> str:
    """A random wording of the same caption (big/large, upper/top, ...)."""
    s, c, z, p = (int(v) for v in labels)
    size_word = SIZE_WORDS[SIZES[z]][rng.integers(len(SIZE_WORDS[SIZES[z]]))]
    where = WHERE_WORDS[p][rng.integers(len(WHERE_WORDS[p]))]
    return f"a {size_word} {COLOR_NAMES[c]} {SHAPES[s]} {where}"


PARTIAL_WORD = "shape"  # stands in for the shape's name when a partial caption leaves it out


def partial_caption(labels, keep, rng: np.random.Generator | None = None) -> str:
    """A caption naming only the attributes in `keep` (a set of ATTRIBUTES names).

    "a red circle" (shape, color), "a large square on the left" (size, shape, position),
    "a blue shape" (color only), "a shape" (nothing). With rng, the words are paraphrased
    as in training. Taught in notebooks/09_toolbox.ipynb (partial and negative prompts).
    """
    unknown = set(keep) - set(ATTRIBUTES)
    if unknown:
        raise ValueError(f"unknown attributes {sorted(unknown)}; allowed: {', '.join(ATTRIBUTES)}")
    s, c, z, p = (int(v) for v in labels)
    pick = (lambda options: options[rng.integers(len(options))]) if rng is not None else (lambda o: o[0])
    words = ["a"]
    if "size" in keep:
        words.append(pick(SIZE_WORDS[SIZES[z]]))
    if "color" in keep:
        words.append(COLOR_NAMES[c])
    words.append(SHAPES[s] if "shape" in keep else PARTIAL_WORD)
    if "position" in keep:
        words.append(pick(WHERE_WORDS[p]))
    return " ".join(words)


def all_labels() -> torch.Tensor:
    """All 324 label vectors (324, 4), in caption-index order."""
    grid = torch.cartesian_prod(torch.arange(len(SHAPES)), torch.arange(len(COLORS)),
                                torch.arange(len(SIZES)), torch.arange(len(POSITIONS)))
    return grid  # (324, 4)


def all_captions() -> list[str]:
    """The 324 canonical captions; index i describes all_labels()[i]."""
    return [caption(l) for l in all_labels()]


def caption_index(labels: torch.Tensor) -> torch.Tensor:
    """Label vectors (..., 4) -> index into all_captions() (...)."""
    s, c, z, p = labels.unbind(-1)
    return ((s * len(COLORS) + c) * len(SIZES) + z) * len(POSITIONS) + p


def is_held_out(labels: torch.Tensor) -> torch.Tensor:
    """(..., 4) -> bool (...): is the (shape, color) pair one of HELD_OUT_PAIRS?"""
    out = torch.zeros(labels.shape[:-1], dtype=torch.bool)
    for shape, color in HELD_OUT_PAIRS:
        out |= (labels[..., 0] == SHAPES.index(shape)) & (labels[..., 1] == COLOR_NAMES.index(color))
    return out


def trained_values(labels, keep, attribute: str) -> list[int]:
    """The values of an attribute a prompt leaves open that training pairs with the named ones.

    labels (4,) hold the named values (the others are ignored), keep names them. A value counts
    when some training label (not a held-out pair) has the named values and that value: "a blue
    shape" -> circle and square only, since no blue triangle is ever trained on. A model that
    learned its data draws only these (taught in notebooks/09_toolbox.ipynb).
    """
    grid = all_labels()                                                   # (324, 4)
    match = ~is_held_out(grid)
    for name in keep:
        i = ATTRIBUTES.index(name)
        match &= grid[:, i] == int(labels[i])
    return sorted(set(grid[match, ATTRIBUTES.index(attribute)].tolist()))


def split_labels(split: str) -> torch.Tensor:
    """The label vectors a split may draw from: train/test = seen pairs, heldout, all."""
    _check_choice("split", split, SPLITS)
    labels = all_labels()
    held = is_held_out(labels)
    if split in ("train", "test"):
        return labels[~held]  # (270, 4)
    if split == "heldout":
        return labels[held]  # (54, 4)
    return labels  # (324, 4)


# ----------------------------------------------------------------------------
# Rendering

def sample_geometry(labels: torch.Tensor, rng: np.random.Generator) -> np.ndarray:
    """Jitter inside each attribute's range -> (N, 3) array of (cx, cy, width) in [0, 1] units.

    The width is uniform in SIZE_RANGES[size]. The centre is uniform inside its 3x3
    cell, at least CELL_MARGIN of a cell from the cell's borders, and far enough
    from the image border (BORDER_MARGIN) that the whole object stays inside.
    """
    labels = np.asarray(labels).reshape(-1, 4)
    n = len(labels)
    lo_hi = np.array([SIZE_RANGES[s] for s in SIZES])[labels[:, 2]]  # (N, 2)
    width = lo_hi[:, 0] + (lo_hi[:, 1] - lo_hi[:, 0]) * rng.random(n)
    half = width / 2
    row, col = labels[:, 3] // 3, labels[:, 3] % 3
    centre = []
    for cell in (col, row):  # x from the column, y from the row
        lo = np.maximum((cell + CELL_MARGIN) / 3, half + BORDER_MARGIN)
        hi = np.minimum((cell + 1 - CELL_MARGIN) / 3, 1 - half - BORDER_MARGIN)
        centre.append(lo + (hi - lo) * rng.random(n))
    return np.stack([centre[0], centre[1], width], axis=1)


def shape_coverage(shape_ids, geometry: np.ndarray, resolution: int) -> np.ndarray:
    """How much of each pixel each object covers: the drawing code every renderer shares.

    Args:
        shape_ids: (N,) indices into SHAPES.
        geometry: (N, 3) (cx, cy, width) in [0, 1] units (see sample_geometry).
        resolution: the image side in pixels.
    Returns:
        coverage: (N, resolution, resolution) float32 in [0, 1], 0 outside the object.
    """
    geometry = np.asarray(geometry).reshape(-1, 3)
    side = resolution
    cx, cy, half = (geometry[:, 0] * side)[:, None, None], (geometry[:, 1] * side)[:, None, None], \
        (geometry[:, 2] * side / 2)[:, None, None]                      # (N, 1, 1) in pixels
    coords = np.arange(side, dtype=np.float32) + 0.5                       # pixel centres
    dx = coords[None, None, :] - cx                                        # (N, 1, W)
    dy = coords[None, :, None] - cy                                        # (N, H, 1)
    shape = np.asarray(shape_ids).reshape(-1)[:, None, None]
    # Signed distance (pixels) to each shape's edge: negative inside.
    sdf_circle = np.sqrt(dx ** 2 + dy ** 2) - half                        # (N, H, W)
    sdf_square = np.maximum(np.abs(dx), np.abs(dy)) - half
    # Triangle pointing up: apex (cx, cy - half), base corners (cx +- half, cy + half).
    sdf_triangle = np.maximum(
        dy - half,                                                         # below the base
        (2 * np.abs(dx) - (dy + half)) / math.sqrt(5),                     # left and right edges
    )
    sdf = np.where(shape == 0, sdf_circle, np.where(shape == 1, sdf_square, sdf_triangle))
    return np.clip(0.5 - sdf, 0.0, 1.0).astype(np.float32)                # anti-aliased edge


def render(labels: torch.Tensor, resolution: int = 32, seed: int | np.random.Generator = 0,
           geometry: np.ndarray | None = None) -> torch.Tensor:
    """Draw one object per label vector.

    Args:
        labels: (N, 4) or (4,) attribute indices (shape, color, size, position).
        resolution: 32 or 64.
        seed: an int or a NumPy Generator for the positional and size jitter.
        geometry: optional (N, 3) (cx, cy, width) to skip the jitter.
    Returns:
        images: (N, 3, resolution, resolution) float32 in [0, 1], black background.
    """
    _check_resolution(resolution)
    labels = torch.as_tensor(labels).long().reshape(-1, 4)
    for i, name in enumerate(ATTRIBUTES):
        bad = (labels[:, i] < 0) | (labels[:, i] >= len(ATTRIBUTE_VALUES[name]))
        if bad.any():
            raise ValueError(f"{name} label out of range: allowed 0..{len(ATTRIBUTE_VALUES[name]) - 1}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if geometry is None:
        geometry = sample_geometry(labels, rng)
    coverage = shape_coverage(labels[:, 0].numpy(), geometry, resolution)  # (N, H, W)
    rgb = np.array(list(COLORS.values()), dtype=np.float32)[labels[:, 1].numpy()]  # (N, 3)
    images = coverage[:, None, :, :] * rgb[:, :, None, None]              # (N, 3, H, W)
    return torch.from_numpy(images)


def sample_labels(n: int, split: str = "train", seed: int | np.random.Generator = 0) -> torch.Tensor:
    """n label vectors drawn uniformly from the captions a split allows -> (n, 4)."""
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"the number of images must be a non-negative int, got {n!r}")
    pool = split_labels(split)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return pool[torch.from_numpy(rng.integers(len(pool), size=int(n)))]


def sample_batch(n: int, split: str = "train", resolution: int = 32,
                 seed: int | np.random.Generator = 0, paraphrases: bool = False):
    """A fresh random batch: (images (n, 3, R, R) in [0, 1], captions list[str], labels (n, 4)).

    The fast path for training loops: one vectorised render per batch.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    labels = sample_labels(n, split, rng)
    images = render(labels, resolution, rng)
    captions = [paraphrase(l, rng) if paraphrases else caption(l) for l in labels]
    return images, captions, labels


class ShapesDataset(Dataset):
    """A fixed-length, deterministic view of a split: item i is always the same image.

    Item i is rendered on the fly from NumPy's generator seeded with (seed, i), so
    two datasets with the same arguments hold the same images and no files are
    needed.

    Returns (image (3, R, R) float32 in [0, 1], caption str, labels (4,) long).
    """

    def __init__(self, split: str = "train", length: int = 10_000, resolution: int = 32,
                 seed: int = 0, paraphrases: bool = False):
        _check_choice("split", split, self.world.SPLITS)
        _check_resolution(resolution)
        if not isinstance(length, (int, np.integer)) or length < 0:
            raise ValueError(f"length must be a non-negative int, got {length!r}")
        self.split, self.length, self.resolution = split, int(length), resolution
        self.seed, self.paraphrases = seed, paraphrases
        self.pool = self.world.split_labels(split)            # (P, fields)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int):
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for a dataset of {self.length}")
        index %= self.length
        rng = np.random.default_rng([self.seed, index])
        labels = self.pool[int(rng.integers(len(self.pool)))]
        image = self.world.render(labels, self.resolution, rng)[0]
        text = self.world.paraphrase(labels, rng) if self.paraphrases else self.world.caption(labels)
        return image, text, labels

    def tensors(self, start: int = 0, stop: int | None = None):
        """Items [start, stop) stacked: (images (N, 3, R, R), captions, labels (N, fields))."""
        items = [self[i] for i in range(start, self.length if stop is None else stop)]
        if not items:
            r = self.resolution
            return torch.zeros(0, 3, r, r), [], torch.zeros(0, self.pool.shape[1], dtype=torch.long)
        images, captions, labels = zip(*items)
        return torch.stack(images), list(captions), torch.stack(labels)


# The module whose splits, labels, renderer and captions a dataset draws from (data/scenes.py's
# ScenesDataset is this class with world = the scenes module).
ShapesDataset.world = sys.modules[__name__]
