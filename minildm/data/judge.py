"""The judges: read a Shapes image's four attributes, or a scene's two objects, back off pixels.

A trained classifier would share the blind spots of the models it grades, so the
course's judges are a handful of transparent measurements instead. One function,
`read_object`, measures one object, and both judges call it:

    mask      the object's pixels: brightest channel above 0.5
    ink       the brightness b of the pixels within NEAR (2 px at 32x32) of the mask
    color     the palette colour nearest to the mean RGB over the mask
    position  the 3x3 cell of the centre of the mask's bounding box
    size      the bounding box's longer side: small if under 3/8 of the image
    shape     an ideal circle, square and triangle with the ink's area and centre of
              mass are drawn; the one closest to the ink wins
    purity    the share of the mask whose own hue (RGB / brightest channel) is the colour's
    holes     dark pixels enclosed by the mask
    edge      the width of the object's edge in pixels (at 32x32): sum 4 b (1 - b) over the
              ink, divided by the outline's length, sum |grad b|; a render's edge is about
              0.7 px wide, a Gaussian blur of 1 px makes it 2.4

An object is *clean* when it has one colour class (mean within COLOR_TOLERANCE of a palette
colour, >= MIN_PURITY of its pixels of that colour), a solid fill (no holes), a sharp edge
(<= MAX_EDGE_WIDTH) and lies inside the image (no mask pixel on the border). An image is
clean when, on top, the mask is the expected number of connected pieces (one; two for a
scene) and the background is black (nothing above STRAY_LEVEL farther than NEAR from the
objects, mean below BACKGROUND_MAX_MEAN). docs/judge.md measures both sides of that rule:
clean and slightly soft renders accepted, nine kinds of bad image rejected (made by
data/judge_cases.py), and the VAE's reconstructions accepted.

This is the one place that grades images:

    judge(images)                      Shapes: labels (N, 4), clean (N,), why not clean
    grade_unconditional(images)        clean rate + how often each attribute value appears
    grade_conditional(images, labels)  per-attribute and all-four accuracy, clean rate
    judge_scenes(images, labels)       scenes: labels (N, 5), object count, clean, error kind
    grade_scenes(images, labels)       per-field and binding accuracy, the error breakdown

Taught in notebooks/06_latent_diffusion.ipynb (one object) and 10_composition.ipynb (scenes).
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from scipy import ndimage   # connected pieces, holes, distances (scipy comes with scikit-learn)

from . import scenes
from .shapes import ATTRIBUTE_VALUES, ATTRIBUTES, COLORS, shape_coverage

MASK_LEVEL = 0.5              # a pixel is part of an object when its brightest channel is above this
SIZE_THRESHOLD = 0.375        # between small (<= 0.30) and large (>= 0.44) widths
COLOR_TOLERANCE = 0.35        # max RGB distance of a colour (the mean, or one pixel's hue) from the palette's
MIN_PURITY = 0.9              # share of an object's pixels whose hue is its colour (two-coloured: <= 0.75)
MAX_EDGE_WIDTH = 2.25         # px at 32x32: a render's edge ~0.7, Gaussian blur sigma 0.6 px <= 1.75, 1.25 px >= 2.8
NEAR = 2                      # px at 32x32: how far an object's soft edge may reach beyond its mask
STRAY_LEVEL = 0.25            # a background pixel brighter than this is stray light
BACKGROUND_MAX_MEAN = 0.03    # mean brightness of the background (noise or a glow is not black)
MIN_OBJECT_AREA = 0.005       # of the image: smaller lit pieces are specks, not objects (scenes)
PALETTE = np.array(list(COLORS.values()), dtype=np.float32)  # (6, 3)
EIGHT = np.ones((3, 3), dtype=bool)             # 8-connectivity: touching corners join pieces


# ----------------------------------------------------------------------------
# One object: the measurements both judges share

def _shape_of(ink: np.ndarray) -> int:
    """Draw the three ideal shapes, white, with the ink's area and centre of mass; keep the closest.

    ink: (H, W) soft coverage of one object (zero elsewhere) -> index into SHAPES.
    """
    h, w = ink.shape
    area = float(ink.sum()) / (h * w)                                  # fraction of the image
    xs, ys = (np.arange(w) + 0.5) / w, (np.arange(h) + 0.5) / h
    mx = float((ink.sum(0) * xs).sum() / ink.sum())                    # centre of mass
    my = float((ink.sum(1) * ys).sum() / ink.sum())
    side_circle, side_square, side_triangle = 2 * np.sqrt(area / np.pi), np.sqrt(area), np.sqrt(2 * area)
    geometry = np.array([[mx, my, side_circle], [mx, my, side_square],
                         # a triangle's centre of mass sits 1/6 of its height below its box centre
                         [mx, my - side_triangle / 6, side_triangle]])
    templates = shape_coverage(np.arange(3), geometry, h)             # (3, H, W)
    return int(np.abs(templates - ink).sum(axis=(1, 2)).argmin())


def read_object(image: np.ndarray, mask: np.ndarray, region: np.ndarray) -> dict:
    """Measure one object.

    Args:
        image: (3, H, W) float32 NumPy array in [0, 1].
        mask: (H, W) bool, the object's pixels (brightest channel above MASK_LEVEL); not empty.
        region: (H, W) bool, the object's surroundings, whose light counts as its ink: the
            pixels within NEAR of the mask (and, in a scene, nearer to it than to the other).
    Returns a dict: shape, color, size, position (indices as in shapes.ATTRIBUTES), cx, cy and
    width (bounding box, fractions of the side), fill (mask area / box area), color_distance,
    purity, holes (pixels), edge (px at 32x32), border (touches the image's edge), clean.
    """
    _, h, w = image.shape
    brightness = image.max(axis=0)                                     # (H, W)
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    box_h, box_w = float(bottom - top), float(right - left)
    cy, cx = (top + bottom) / 2 / h, (left + right) / 2 / w
    width = max(box_h, box_w) / max(h, w)
    pixels = image[:, mask]                                            # (3, P)
    color_dist = np.linalg.norm(PALETTE - pixels.mean(axis=1), axis=1)  # (6,)
    color = int(color_dist.argmin())
    hue = pixels / pixels.max(axis=0, keepdims=True)                   # (3, P): undo the edge's coverage
    purity = float((np.linalg.norm(hue - PALETTE[color][:, None], axis=0) < COLOR_TOLERANCE).mean())
    dark, _ = ndimage.label(~mask)                                     # dark pieces (4-connected)
    outside = np.unique(np.concatenate([dark[0], dark[-1], dark[:, 0], dark[:, -1]]))
    holes = int(((dark > 0) & ~np.isin(dark, outside)).sum())         # dark pieces the mask encloses
    ink = brightness * region                                          # (H, W)
    # Edge width: 4 b (1 - b) integrates to the width of a soft edge; |grad b| to its length.
    gx = np.diff(brightness, axis=1, append=brightness[:, -1:])        # (H, W) forward differences
    gy = np.diff(brightness, axis=0, append=brightness[-1:, :])
    length = float((np.sqrt(gx ** 2 + gy ** 2) * region).sum())
    edge = float((4 * ink * (1 - ink)).sum()) / max(length, 1e-6) / (w / 32)
    border = bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any())
    result = {
        "shape": _shape_of(ink), "color": color, "size": int(width >= SIZE_THRESHOLD),
        "position": min(int(cy * 3), 2) * 3 + min(int(cx * 3), 2),
        "cx": float(cx), "cy": float(cy), "width": width, "fill": float(mask.sum() / (box_h * box_w)),
        "color_distance": float(color_dist[color]), "purity": purity, "holes": holes,
        "edge": edge, "border": border,
    }
    result["why"] = _object_faults(result)
    result["clean"] = not result["why"]
    return result


def _object_faults(m: dict) -> list[str]:
    """What keeps a measured object from looking like the data (empty when it is clean)."""
    faults = []
    if m["color_distance"] >= COLOR_TOLERANCE or m["purity"] < MIN_PURITY:
        faults.append("colour")                                        # off-palette or mixed
    if m["holes"]:
        faults.append("holes")
    if m["edge"] > MAX_EDGE_WIDTH:
        faults.append("blurred")
    if m["border"]:
        faults.append("cut by the border")
    return faults


def _near(mask: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels within NEAR (scaled from 32x32) of the mask."""
    near = max(1, round(NEAR * mask.shape[-1] / 32))
    return ndimage.distance_transform_edt(~mask) <= near


def _background_faults(brightness: np.ndarray, near: np.ndarray) -> list[str]:
    """Is everything farther than NEAR from the objects black? brightness, near (H, W) from _near."""
    far = ~near                                                        # (H, W)
    if not far.any():
        return []
    background = brightness[far]
    if background.max() > STRAY_LEVEL or background.mean() > BACKGROUND_MAX_MEAN:
        return ["stray light"]
    return []


def _check_images(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) tensor -> float32 NumPy array clipped to [0, 1] (small images: NumPy is faster)."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"the judge expects images (N, 3, H, W), got shape {tuple(images.shape)}")
    return images.detach().float().cpu().clamp(0, 1).numpy()


# ----------------------------------------------------------------------------
# The Shapes judge: one object per image

@torch.no_grad()
def judge(images: torch.Tensor) -> dict:
    """Grade Shapes images (N, 3, H, W) in [0, 1].

    Returns a dict:
        labels: (N, 4) long, the attributes read off each image (ATTRIBUTES order)
        clean:  (N,) bool, the image looks like a Shapes image
        why:    list of N lists of str, what is wrong with each image that is not clean
        fill:   (N,) float, mask area / bounding-box area
        width:  (N,) float, bounding-box side / image side
    """
    images = _check_images(images)
    n = len(images)
    labels = np.zeros((n, len(ATTRIBUTES)), dtype=np.int64)
    clean = torch.zeros(n, dtype=torch.bool)
    fill, width, why = torch.zeros(n), torch.zeros(n), []
    for i, image in enumerate(images):
        brightness = image.max(axis=0)                                 # (H, W)
        mask = brightness > MASK_LEVEL
        if not mask.any():
            why.append(["no object"])
            continue
        # All lit pixels are read as the object (a clean image has one piece), with the light
        # around them: a faint background far away is the background rule's business.
        near = _near(mask)
        m = read_object(image, mask, near)
        labels[i] = m["shape"], m["color"], m["size"], m["position"]
        fill[i], width[i] = m["fill"], m["width"]
        pieces = ndimage.label(mask, EIGHT)[1]
        faults = (["several pieces"] if pieces > 1 else []) + m["why"] + _background_faults(brightness, near)
        why.append(faults)
        clean[i] = not faults
    return {"labels": torch.from_numpy(labels), "clean": clean, "why": why, "fill": fill, "width": width}


def attribute_accuracy(predicted: torch.Tensor, target: torch.Tensor) -> dict:
    """Per-attribute and all-four accuracy of (N, 4) predicted vs target labels."""
    correct = predicted == target                                     # (N, 4)
    result = {name: float(correct[:, i].float().mean()) for i, name in enumerate(ATTRIBUTES)}
    result["all_four"] = float(correct.all(dim=1).float().mean())
    return result


def grade_unconditional(images: torch.Tensor) -> dict:
    """Judge generated Shapes images (N, 3, H, W) in [0, 1]: clean rate and, among the clean
    ones, how often each attribute value appears (a healthy model covers them all)."""
    verdict = judge(images)
    labels, clean = verdict["labels"], verdict["clean"]
    result = {"n": len(images), "clean_rate": float(clean.float().mean())}
    for i, attribute in enumerate(ATTRIBUTES):
        values = ATTRIBUTE_VALUES[attribute]
        counts = torch.bincount(labels[clean, i], minlength=len(values)).tolist()
        result[f"{attribute}_counts"] = dict(zip(values, counts))
    return result


def grade_conditional(images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Judge images generated for prompts with label vectors (N, 4): per-attribute and
    all-four accuracy, the clean rate, and the count."""
    graded = judge(images)
    result = {k: round(v, 4) for k, v in attribute_accuracy(graded["labels"], labels).items()}
    result["clean"] = round(float(graded["clean"].float().mean()), 4)
    result["count"] = len(labels)
    return result


# ----------------------------------------------------------------------------
# The scenes judge: two objects and the relation between them

UNREAD = -1                   # a field the judge cannot read (missing object, colour not one class)
SCENE_ERRORS = ("correct", "missing object", "extra object", "colour mixed", "colours swapped",
                "colour leaked", "wrong colour", "shapes swapped", "wrong shape", "wrong relation")


def _scene_objects(image: np.ndarray) -> tuple[list[dict], bool]:
    """Find and measure the objects of one scene (3, H, W) -> (objects, largest first; clean)."""
    brightness = image.max(axis=0)                                     # (H, W)
    mask = brightness > MASK_LEVEL
    pieces, count = ndimage.label(mask, EIGHT)                         # (H, W) piece ids 1..count
    if count == 0:
        return [], False
    # Each pixel belongs to the nearest piece, if that is within NEAR.
    nearest = ndimage.distance_transform_edt(pieces == 0, return_indices=True)[1]
    near = _near(mask)
    owner = pieces[nearest[0], nearest[1]] * near                      # (H, W), 0 = background
    areas = np.bincount(pieces.ravel())[1:]                            # (count,)
    big = [k + 1 for k in np.argsort(-areas, kind="stable") if areas[k] >= MIN_OBJECT_AREA * mask.size]
    objects = [read_object(image, pieces == k, owner == k) for k in big]
    for m in objects:                                                  # mixed or off-palette: unread
        m["color_read"] = UNREAD if "colour" in m["why"] else m["color"]
    clean = count == len(objects) == 2 and all(m["clean"] for m in objects) \
        and not _background_faults(brightness, near)
    return objects, clean


def _assign(objects: list[dict], target) -> tuple:
    """Which found object plays a, which b: the most shapes and colours right; on a tie, a on the
    side the target's relation puts it. Without a target: a is the left or upper object."""
    target = None if target is None else [int(v) for v in target]
    if len(objects) < 2:
        a = objects[0] if objects else None
        if a is not None and target is not None and \
                (a["shape"] == target[3]) + (a["color_read"] == target[4]) > (a["shape"] == target[0]) + (a["color_read"] == target[1]):
            return None, a
        return a, None
    o1, o2 = objects[:2]
    if target is None:
        return (o1, o2) if int(scenes.relation_of(o2["cx"] - o1["cx"], o2["cy"] - o1["cy"])) in (0, 2) else (o2, o1)

    def score(a, b):
        hits = (a["shape"] == target[0]) + (a["color_read"] == target[1]) + \
               (b["shape"] == target[3]) + (b["color_read"] == target[4])
        axis, sign = scenes.RELATION_AXIS[int(target[2])]
        delta = (b["cx"] - a["cx"], b["cy"] - a["cy"])[axis] * sign
        return hits, delta > 0
    return max([(o1, o2), (o2, o1)], key=lambda pair: score(*pair))


def _scene_error(read: torch.Tensor, target: torch.Tensor, count: int) -> str:
    """The first thing that is wrong with a scene read as `read` (5,) for `target` (5,)."""
    sa, ca, r, sb, cb = read.tolist()
    ta, tca, tr, tb, tcb = target.tolist()
    if count != 2:
        return "missing object" if count < 2 else "extra object"
    if UNREAD in (ca, cb):
        return "colour mixed"
    if (ca, cb) != (tca, tcb):
        if (ca, cb) == (tcb, tca):
            return "colours swapped"
        return "colour leaked" if ca == cb else "wrong colour"
    if (sa, sb) != (ta, tb):
        return "shapes swapped" if (sa, sb) == (tb, ta) else "wrong shape"
    return "wrong relation" if r != tr else "correct"


@torch.no_grad()
def judge_scenes(images: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
    """Read two-object scenes (N, 3, H, W) in [0, 1], optionally against target labels (N, 5).

    Objects are the lit pieces (8-connected) of at least MIN_OBJECT_AREA, each measured by
    read_object over the pixels nearer to it than to any other piece; the relation comes from
    the two largest objects' box centres (scenes.relation_of). With targets, the objects take
    the roles a and b that fit the target best (_assign): "A left of B" drawn as "B right of A"
    is right.
    Returns a dict:
        labels: (N, 5) long, the scene read off (scenes.FIELDS); UNREAD (-1) for a missing
                object's fields and for the colour of an object that is not one colour class
        count:  (N,) long, objects found
        clean:  (N,) bool, two clean objects, nothing else lit
        error:  list of N str from SCENE_ERRORS (only with labels)
    """
    images = _check_images(images)
    n = len(images)
    if labels is not None:
        labels = torch.as_tensor(labels).long()
        if labels.shape != (n, len(scenes.FIELDS)):
            raise ValueError(f"scene labels must be ({n}, {len(scenes.FIELDS)}) for {n} images "
                             f"({', '.join(scenes.FIELDS)}), got shape {tuple(labels.shape)}")
    read = torch.full((n, len(scenes.FIELDS)), UNREAD, dtype=torch.long)
    count, clean, errors = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.bool), []
    for i, image in enumerate(images):
        objects, clean[i] = _scene_objects(image)
        count[i] = len(objects)
        a, b = _assign(objects, None if labels is None else labels[i])
        if a is not None:
            read[i, 0], read[i, 1] = a["shape"], a["color_read"]
        if b is not None:
            read[i, 3], read[i, 4] = b["shape"], b["color_read"]
        if a is not None and b is not None:
            read[i, 2] = scenes.relation_of(b["cx"] - a["cx"], b["cy"] - a["cy"])
        if labels is not None:
            errors.append(_scene_error(read[i], labels[i], len(objects)))
    result = {"labels": read, "count": count, "clean": clean}
    if labels is not None:
        result["error"] = errors
    return result


def scene_accuracy(predicted: torch.Tensor, target: torch.Tensor) -> dict:
    """Per-field accuracy of (N, 5) predicted vs target scene labels, and binding accuracy:
    both objects' shape and colour and the relation right."""
    correct = predicted == target                                     # (N, 5)
    result = {name: float(correct[:, i].float().mean()) for i, name in enumerate(scenes.FIELDS)}
    result["binding"] = float(correct.all(dim=1).float().mean())
    return result


def grade_scenes(images: torch.Tensor, labels: torch.Tensor) -> dict:
    """Judge scenes generated for prompts with label vectors (N, 5): per-field and binding
    accuracy, the clean rate, and the share of each error kind (SCENE_ERRORS)."""
    verdict = judge_scenes(images, labels)
    result = {k: round(v, 4) for k, v in scene_accuracy(verdict["labels"], labels).items()}
    result["clean"] = round(float(verdict["clean"].float().mean()), 4)
    tally = Counter(verdict["error"])
    result["errors"] = {kind: round(tally[kind] / len(labels), 4) for kind in SCENE_ERRORS}
    result["count"] = len(labels)
    return result
