"""Two-object scenes: the world where a caption's words must be *bound* to the right object.

With one object per image a caption is a four-field class label. Here every image holds
two small objects, and the caption says which is which and where they stand:

    "a red circle to the left of a blue square"

    shape_a, color_a    the first object named: a Shapes shape and colour
    relation            to the left of | to the right of | above | below
    shape_b, color_b    the second object; its colour differs from the first's

3 * 6 * 4 * 3 * 5 = 1,080 captions. A model that only pools the words ("red", "blue",
"circle", "square", "left") cannot tell this scene from "a blue circle to the left of a
red square": attribute binding is the lesson (notebooks/10_composition.ipynb).

Layout, as fractions of the image side (the contract in ../shared/DESIGN.md):

    both objects small (width 0.20-0.30 across, as Shapes' small), inside the image
    for left/right: the horizontal distance between the centres is >= 1/3 and larger than
    the vertical one; for above/below the reverse. This renderer keeps a margin on top
    (AXIS_MARGIN) so that no scene is a near-diagonal a viewer could read either way,
    and the objects' boxes at least MIN_GAP apart, so they never touch.

"A left of B" and "B right of A" describe the same layout (`converse`); both are right,
and training may use either wording (`paraphrase`). The drawing code is Shapes' own
(`shapes.shape_coverage`), so an object looks exactly as it does in Shapes.

Labels: a LongTensor (N, 5) = (shape_a, color_a, relation, shape_b, color_b), indices into
SHAPES, COLOR_NAMES, RELATIONS, SHAPES, COLOR_NAMES (FIELDS order).

Held out: every scene with either object in shapes.HELD_OUT_PAIRS (a blue triangle, a
yellow circle, a magenta square) is never in the "train" split.

Taught in notebooks/10_composition.ipynb.
"""
from __future__ import annotations

import sys

import numpy as np
import torch

from . import shapes
from .shapes import BORDER_MARGIN, COLOR_NAMES, COLORS, HELD_OUT_PAIRS, SHAPES, SIZE_RANGES

RELATIONS = ("to the left of", "to the right of", "above", "below")
FIELDS = ("shape_a", "color_a", "relation", "shape_b", "color_b")   # order of a label vector
FIELD_VALUES = {"shape_a": SHAPES, "color_a": COLOR_NAMES, "relation": RELATIONS,
                "shape_b": SHAPES, "color_b": COLOR_NAMES}
NUM_CAPTIONS = len(SHAPES) * len(COLORS) * len(RELATIONS) * len(SHAPES) * (len(COLORS) - 1)  # 1080
SPLITS = shapes.SPLITS
# For each relation: the axis it is measured on (0 = x, 1 = y) and the sign of b - a along it.
RELATION_AXIS = {0: (0, +1), 1: (0, -1), 2: (1, +1), 3: (1, -1)}   # left: x_b > x_a; above: y_b > y_a
CONVERSE = (1, 0, 3, 2)               # "A left of B" is "B right of A"

# Geometry, as fractions of the image side.
WIDTH_RANGE = SIZE_RANGES["small"]    # both objects are Shapes' small size
MIN_DISTANCE = 1 / 3                  # between the centres, along the relation's axis
AXIS_MARGIN = 0.10                    # the distance across the axis is at most the one along it minus this
MIN_GAP = 0.0625                      # between the two objects' bounding boxes (2 px at 32x32)

# Paraphrases used in training (canonical wording first); no word outside text.VOCAB.
RELATION_WORDS = (
    ("to the left of", "left of", "on the left of"),
    ("to the right of", "right of", "on the right of"),
    ("above", "on top of"),
    ("below",),
)


def _check_labels(labels) -> torch.Tensor:
    labels = torch.as_tensor(labels).long().reshape(-1, len(FIELDS))
    for i, name in enumerate(FIELDS):
        bad = (labels[:, i] < 0) | (labels[:, i] >= len(FIELD_VALUES[name]))
        if bad.any():
            raise ValueError(f"{name} label out of range: allowed 0..{len(FIELD_VALUES[name]) - 1}")
    if (labels[:, 1] == labels[:, 4]).any():
        raise ValueError("the two objects of a scene must have different colours")
    return labels


# ----------------------------------------------------------------------------
# Labels and captions

def labels_of(shape_a: str, color_a: str, relation: str, shape_b: str, color_b: str) -> torch.Tensor:
    """Names -> a label vector (5,) in FIELDS order."""
    values = (shape_a, color_a, relation, shape_b, color_b)
    for name, value in zip(FIELDS, values):
        shapes._check_choice(name, value, FIELD_VALUES[name])
    return _check_labels([FIELD_VALUES[name].index(v) for name, v in zip(FIELDS, values)])[0]


def describe(labels) -> dict:
    """A label vector (5,) -> {"shape_a": "circle", "color_a": "red", "relation": ..., ...}."""
    return {name: FIELD_VALUES[name][int(v)] for name, v in zip(FIELDS, labels)}


def caption(labels) -> str:
    """The canonical caption: 'a red circle to the left of a blue square'."""
    sa, ca, r, sb, cb = (int(v) for v in labels)
    return f"a {COLOR_NAMES[ca]} {SHAPES[sa]} {RELATIONS[r]} a {COLOR_NAMES[cb]} {SHAPES[sb]}"


def converse(labels: torch.Tensor) -> torch.Tensor:
    """The same layout told from the other object: 'A left of B' -> 'B right of A'. (..., 5)."""
    sa, ca, r, sb, cb = labels.unbind(-1)
    return torch.stack([sb, cb, torch.tensor(CONVERSE)[r], sa, ca], dim=-1)


def swap_colors(labels: torch.Tensor) -> torch.Tensor:
    """The attribute-swapped scene: 'a red circle ... a blue square' -> 'a blue circle ... a red square'."""
    return labels[..., [0, 4, 2, 3, 1]]


def paraphrase(labels, rng: np.random.Generator) -> str:
    """A random wording of the same scene: either object first, and a relation phrase."""
    labels = torch.as_tensor(labels)
    if rng.random() < 0.5:
        labels = converse(labels)
    sa, ca, r, sb, cb = (int(v) for v in labels)
    words = RELATION_WORDS[r][rng.integers(len(RELATION_WORDS[r]))]
    return f"a {COLOR_NAMES[ca]} {SHAPES[sa]} {words} a {COLOR_NAMES[cb]} {SHAPES[sb]}"


def all_labels() -> torch.Tensor:
    """All 1,080 label vectors (1080, 5), in caption-index order (color_b skips color_a)."""
    grid = torch.cartesian_prod(torch.arange(len(SHAPES)), torch.arange(len(COLORS)),
                                torch.arange(len(RELATIONS)), torch.arange(len(SHAPES)),
                                torch.arange(len(COLORS)))
    return grid[grid[:, 1] != grid[:, 4]]  # (1080, 5)


def all_captions() -> list[str]:
    """The 1,080 canonical captions; index i describes all_labels()[i]."""
    return [caption(l) for l in all_labels()]


def caption_index(labels: torch.Tensor) -> torch.Tensor:
    """Label vectors (..., 5) -> index into all_captions() (...)."""
    sa, ca, r, sb, cb = labels.unbind(-1)
    cb = cb - (cb > ca).long()                     # color_b never equals color_a: 5 choices
    return (((sa * len(COLORS) + ca) * len(RELATIONS) + r) * len(SHAPES) + sb) * (len(COLORS) - 1) + cb


def is_held_out(labels: torch.Tensor) -> torch.Tensor:
    """(..., 5) -> bool (...): is either object one of Shapes' held-out (shape, color) pairs?"""
    out = torch.zeros(labels.shape[:-1], dtype=torch.bool)
    for shape, color in HELD_OUT_PAIRS:
        s, c = SHAPES.index(shape), COLOR_NAMES.index(color)
        out |= ((labels[..., 0] == s) & (labels[..., 1] == c)) | ((labels[..., 3] == s) & (labels[..., 4] == c))
    return out


def split_labels(split: str) -> torch.Tensor:
    """The label vectors a split may draw from: train/test = seen objects only, heldout, all."""
    shapes._check_choice("split", split, SPLITS)
    labels = all_labels()
    held = is_held_out(labels)
    if split in ("train", "test"):
        return labels[~held]  # (744, 5)
    if split == "heldout":
        return labels[held]   # (336, 5)
    return labels             # (1080, 5)


# ----------------------------------------------------------------------------
# Geometry and rendering

def relation_of(dx, dy):
    """The relation of object a to object b from b's centre minus a's (dx right, dy down) -> index.

    The longer of the two distances decides the axis; its sign decides the side. Works on
    floats or on tensors/arrays of them (the judge reads relations with it).
    """
    dx, dy = torch.as_tensor(dx, dtype=torch.float32), torch.as_tensor(dy, dtype=torch.float32)
    horizontal = torch.where(dx > 0, 0, 1)        # b to the right: a is to the left of b
    vertical = torch.where(dy > 0, 2, 3)          # b lower down: a is above b
    return torch.where(dx.abs() > dy.abs(), horizontal, vertical)


def sample_geometry(labels: torch.Tensor, rng: np.random.Generator) -> np.ndarray:
    """Jittered layouts -> (N, 2, 3) array of (cx, cy, width) for objects a and b, [0, 1] units.

    Widths are uniform in WIDTH_RANGE; both centres are uniform inside the image, redrawn
    (rejection sampling) until the relation holds: along its axis b - a has the relation's
    sign and is >= MIN_DISTANCE, across it the distance is <= along - AXIS_MARGIN, and the
    boxes are >= MIN_GAP apart.
    """
    labels = np.asarray(labels).reshape(-1, len(FIELDS))
    n = len(labels)
    axis = np.array([RELATION_AXIS[r][0] for r in range(len(RELATIONS))])[labels[:, 2]]    # (N,)
    sign = np.array([RELATION_AXIS[r][1] for r in range(len(RELATIONS))])[labels[:, 2]]    # (N,)
    geometry = np.zeros((n, 2, 3))
    todo = np.arange(n)
    while len(todo):
        m = len(todo)
        width = WIDTH_RANGE[0] + (WIDTH_RANGE[1] - WIDTH_RANGE[0]) * rng.random((m, 2))     # (m, 2)
        lo = width / 2 + BORDER_MARGIN
        centre = lo[..., None] + (1 - 2 * lo[..., None]) * rng.random((m, 2, 2))          # (m, obj, xy)
        delta = centre[:, 1] - centre[:, 0]                                               # b - a, (m, 2)
        along = delta[np.arange(m), axis[todo]] * sign[todo]
        across = np.abs(delta[np.arange(m), 1 - axis[todo]])
        gap = np.abs(delta).max(axis=1) - width.sum(axis=1) / 2     # boxes apart on the farther axis
        ok = (along >= MIN_DISTANCE) & (across <= along - AXIS_MARGIN) & (gap >= MIN_GAP)
        geometry[todo[ok], :, :2] = centre[ok]
        geometry[todo[ok], :, 2] = width[ok]
        todo = todo[~ok]
    return geometry


def render(labels: torch.Tensor, resolution: int = 32, seed: int | np.random.Generator = 0,
           geometry: np.ndarray | None = None) -> torch.Tensor:
    """Draw two objects per label vector.

    Args:
        labels: (N, 5) or (5,) (shape_a, color_a, relation, shape_b, color_b).
        resolution: 32 or 64.
        seed: an int or a NumPy Generator for the layout jitter.
        geometry: optional (N, 2, 3) (cx, cy, width) of a and b, to skip the jitter.
    Returns:
        images: (N, 3, resolution, resolution) float32 in [0, 1], black background.
    """
    shapes._check_resolution(resolution)
    labels = _check_labels(labels)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if geometry is None:
        geometry = sample_geometry(labels, rng)
    n = len(labels)
    shape_ids = labels[:, [0, 3]].reshape(-1).numpy()                              # (2N,) a, b, a, b...
    coverage = shapes.shape_coverage(shape_ids, np.asarray(geometry).reshape(-1, 3), resolution)
    coverage = coverage.reshape(n, 2, resolution, resolution)                     # (N, 2, H, W)
    rgb = np.array(list(COLORS.values()), dtype=np.float32)[labels[:, [1, 4]].numpy()]  # (N, 2, 3)
    # The objects never overlap (MIN_GAP), so painting one over the other is a sum.
    images = coverage[:, 0, None] * rgb[:, 0, :, None, None] + coverage[:, 1, None] * rgb[:, 1, :, None, None]
    return torch.from_numpy(images)                                               # (N, 3, H, W)


def sample_labels(n: int, split: str = "train", seed: int | np.random.Generator = 0) -> torch.Tensor:
    """n label vectors drawn uniformly from the scenes a split allows -> (n, 5)."""
    if not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"the number of images must be a non-negative int, got {n!r}")
    pool = split_labels(split)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return pool[torch.from_numpy(rng.integers(len(pool), size=int(n)))]


def sample_batch(n: int, split: str = "train", resolution: int = 32,
                 seed: int | np.random.Generator = 0, paraphrases: bool = False):
    """A fresh random batch: (images (n, 3, R, R) in [0, 1], captions list[str], labels (n, 5))."""
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    labels = sample_labels(n, split, rng)
    images = render(labels, resolution, rng)
    captions = [paraphrase(l, rng) if paraphrases else caption(l) for l in labels]
    return images, captions, labels


class ScenesDataset(shapes.ShapesDataset):
    """A fixed-length, deterministic view of a split: item i is always the same scene.

    Returns (image (3, R, R) float32 in [0, 1], caption str, labels (5,) long).
    """

    world = sys.modules[__name__]   # scenes' splits, labels, renderer and captions; the rest is ShapesDataset's
