"""The Scenes contract (../shared/DESIGN.md) and the scenes judge that lesson 10's evaluation uses."""
from collections import Counter

import numpy as np
import pytest
import torch
from scipy import ndimage

from minildm import text
from minildm.data import scenes, shapes
from minildm.data.judge import UNREAD, grade_scenes, judge_scenes, scene_accuracy

PALETTE = torch.tensor(list(shapes.COLORS.values()))


@pytest.fixture(scope="module", params=[32, 64])
def batch(request):
    n = 300 if request.param == 32 else 60
    images, captions, labels = scenes.sample_batch(n, "all", request.param, seed=11)
    return request.param, images, captions, labels


def test_vocabulary_and_caption_count():
    assert scenes.RELATIONS == ("to the left of", "to the right of", "above", "below")
    captions = scenes.all_captions()
    assert len(captions) == len(set(captions)) == scenes.NUM_CAPTIONS == 1080
    assert captions[0] == "a red circle to the left of a green circle"
    assert "a red circle to the left of a blue square" in captions
    labels = scenes.all_labels()
    assert torch.equal(scenes.caption_index(labels), torch.arange(1080))
    assert (labels[:, 1] != labels[:, 4]).all()
    assert scenes.caption(scenes.labels_of("circle", "red", "above", "square", "blue")) == \
        "a red circle above a blue square"


def test_every_caption_and_paraphrase_tokenizes():
    rng = np.random.default_rng(0)
    wordings = {scenes.paraphrase(l, rng) for l in scenes.all_labels() for _ in range(3)}
    tokens = text.tokenize(scenes.all_captions() + sorted(wordings))
    assert tokens.shape == (1080 + len(wordings), text.CONTEXT_LENGTH)
    for phrases in scenes.RELATION_WORDS:
        for phrase in phrases:
            assert set(phrase.split()) <= set(text.WORDS), phrase


def test_images_are_rgb_in_range_with_black_background(batch):
    res, images, _, labels = batch
    assert images.shape == (len(labels), 3, res, res) and images.dtype == torch.float32
    assert images.min() >= 0 and images.max() <= 1
    border = torch.cat([images[:, :, 0], images[:, :, -1], images[:, :, :, 0], images[:, :, :, -1]], -1)
    assert border.amax() < 0.5, "both objects stay inside the image"
    lit = images.amax(1) > 0                                              # (N, H, W)
    assert lit.float().mean() < 0.25 and (~lit).any(dim=(1, 2)).all()


def test_two_objects_of_the_two_captioned_colours(batch):
    _, images, _, labels = batch
    lit = images.amax(1) > 0                                              # (N, H, W)
    which = lit.nonzero()[:, 0]                                           # (P,) image of each lit pixel
    pixels = images.permute(0, 2, 3, 1)[lit]                              # (P, 3)
    distance = torch.cdist(pixels / pixels.amax(1, keepdim=True), PALETTE)  # coverage divided out
    assert distance.min(1).values.max() < 1e-5, "pure palette colours only"
    color = distance.argmin(1)                                            # (P,)
    is_a, is_b = color == labels[which, 1], color == labels[which, 4]
    assert (is_a | is_b).all()
    n = len(images)
    assert (torch.bincount(which[is_a], minlength=n) > 0).all() and (torch.bincount(which[is_b], minlength=n) > 0).all()
    pieces = [ndimage.label(m, np.ones((3, 3)))[1] for m in (images.amax(1) > 0.5).numpy()]
    assert set(pieces) == {2}


def test_layout_geometry_follows_the_relation():
    labels = scenes.sample_labels(3000, "all", seed=2)
    geometry = scenes.sample_geometry(labels, np.random.default_rng(2))  # (N, 2, 3): a, b
    delta = geometry[:, 1, :2] - geometry[:, 0, :2]                      # b - a
    width = geometry[:, :, 2]
    assert width.min() >= shapes.SIZE_RANGES["small"][0] and width.max() <= shapes.SIZE_RANGES["small"][1]
    half = width[..., None] / 2
    assert (geometry[:, :, :2] - half >= shapes.BORDER_MARGIN - 1e-9).all()
    assert (geometry[:, :, :2] + half <= 1 - shapes.BORDER_MARGIN + 1e-9).all()
    for r, name in enumerate(scenes.RELATIONS):
        d = delta[labels[:, 2].numpy() == r]
        along, across = (d[:, 0], d[:, 1]) if r < 2 else (d[:, 1], d[:, 0])
        sign = 1 if name in ("to the left of", "above") else -1   # left: b is to the right; above: b lower
        assert (sign * along >= 1 / 3).all(), name
        assert (np.abs(along) > np.abs(across)).all(), name
    assert torch.equal(scenes.relation_of(delta[:, 0], delta[:, 1]), labels[:, 2])


def test_objects_never_overlap():
    labels = scenes.sample_labels(500, "all", seed=3)
    geometry = scenes.sample_geometry(labels, np.random.default_rng(3))
    for res in (32, 64):
        a = shapes.shape_coverage(labels[:, 0].numpy(), geometry[:, 0], res)
        b = shapes.shape_coverage(labels[:, 3].numpy(), geometry[:, 1], res)
        assert (a * b == 0).all(), "no pixel is touched by both objects"
        gap = np.abs(geometry[:, 1, :2] - geometry[:, 0, :2]).max(1) - geometry[:, :, 2].sum(1) / 2
        assert gap.min() >= scenes.MIN_GAP - 1e-9


def test_held_out_scenes_never_in_training():
    assert not scenes.is_held_out(scenes.sample_labels(5000, "train", seed=7)).any()
    assert len(scenes.split_labels("train")) == 744 and len(scenes.split_labels("heldout")) == 336
    assert scenes.is_held_out(scenes.sample_labels(300, "heldout", seed=7)).all()
    ds = scenes.ScenesDataset("train", length=100, seed=3)
    assert not scenes.is_held_out(torch.stack([ds[i][2] for i in range(len(ds))])).any()
    # Either object alone makes a scene held out, whichever role it plays.
    pair = scenes.labels_of("triangle", "blue", "above", "circle", "red")
    assert scenes.is_held_out(pair) and scenes.is_held_out(scenes.converse(pair))
    train = {tuple(l) for l in scenes.split_labels("train").tolist()}
    for shape, color in shapes.HELD_OUT_PAIRS:
        s, c = shapes.SHAPES.index(shape), shapes.COLOR_NAMES.index(color)
        assert not any((l[0], l[1]) == (s, c) or (l[3], l[4]) == (s, c) for l in train)


def test_deterministic_from_seed_and_dataset_items():
    a = scenes.sample_batch(32, seed=5, paraphrases=True)
    b = scenes.sample_batch(32, seed=5, paraphrases=True)
    assert torch.equal(a[0], b[0]) and a[1] == b[1] and torch.equal(a[2], b[2])
    assert not torch.equal(a[0], scenes.sample_batch(32, seed=6)[0])
    ds = scenes.ScenesDataset("test", length=5, resolution=64, seed=0)
    image, caption, labels = ds[0]
    assert image.shape == (3, 64, 64) and labels.shape == (5,) and caption == scenes.caption(labels)
    assert torch.equal(ds[-1][0], ds[4][0])
    with pytest.raises(IndexError):
        ds[5]
    images, captions, stacked = ds.tensors()
    assert images.shape == (5, 3, 64, 64) and len(captions) == 5 and stacked.shape == (5, 5)


def test_paraphrases_describe_the_same_layout():
    rng = np.random.default_rng(0)
    lab = scenes.labels_of("square", "green", "to the left of", "circle", "red")
    seen = {scenes.paraphrase(lab, rng) for _ in range(100)}
    assert "a red circle to the right of a green square" in seen and "a green square left of a red circle" in seen
    for wording in seen:
        assert wording.startswith(("a green square", "a red circle"))
        assert ("left" in wording) == wording.startswith("a green square")
    assert torch.equal(scenes.converse(scenes.converse(scenes.all_labels())), scenes.all_labels())


@pytest.mark.parametrize("call, message", [
    (lambda: scenes.render(torch.tensor([0, 0, 0, 1, 1]), resolution=48), "resolution"),
    (lambda: scenes.render(torch.tensor([0, 2, 0, 1, 2])), "different colours"),
    (lambda: scenes.render(torch.tensor([0, 2, 4, 1, 1])), "relation"),
    (lambda: scenes.labels_of("circle", "red", "beside", "square", "blue"), "allowed"),
    (lambda: scenes.sample_labels(-1), "non-negative"),
    (lambda: scenes.ScenesDataset(split="validation"), "train"),
])
def test_bad_input_is_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_the_judge_refuses_labels_of_the_wrong_shape():
    with pytest.raises(ValueError, match="scene labels must be"):
        judge_scenes(torch.zeros(2, 3, 32, 32), torch.zeros(2, 4, dtype=torch.long))


# ----------------------------------------------------------------------------
# The scenes judge

def test_judge_reads_every_field_of_its_own_renders(batch):
    _, images, _, labels = batch
    verdict = judge_scenes(images, labels)
    accuracy = scene_accuracy(verdict["labels"], labels)
    assert min(accuracy.values()) >= 0.99, accuracy       # 1,200 renders: 100% (docs/judge.md)
    assert verdict["clean"].float().mean() >= 0.99 and (verdict["count"] == 2).all()
    # Without a target the judge tells the scene its own way round: "A left of B" or "B right of A".
    images, labels = images[:100], labels[:100]
    plain = judge_scenes(images)["labels"]
    assert ((plain == labels).all(1) | (plain == scenes.converse(labels)).all(1)).all()
    assert scene_accuracy(judge_scenes(images, scenes.converse(labels))["labels"], scenes.converse(labels))["binding"] >= 0.99


def test_judge_says_when_the_colours_are_swapped():
    labels = scenes.sample_labels(200, "all", seed=4)
    labels = labels[labels[:, 0] != labels[:, 3]]       # two shapes: a swap is not just a mirror image
    swapped = scenes.render(scenes.swap_colors(labels), seed=5)
    verdict = judge_scenes(swapped, labels)
    assert Counter(verdict["error"])["colours swapped"] == len(labels)
    assert (verdict["labels"][:, [0, 2, 3]] == labels[:, [0, 2, 3]]).all(), "shapes and relation still right"
    # With two circles, swapping the colours is the same picture as flipping the relation.
    same = scenes.labels_of("circle", "red", "to the left of", "circle", "blue")[None]
    mirrored = judge_scenes(scenes.render(scenes.swap_colors(same)), same)
    assert mirrored["error"] == ["wrong relation"]


def test_judge_says_when_an_object_is_missing_or_extra():
    labels = scenes.sample_labels(60, "all", seed=6)
    geometry = scenes.sample_geometry(labels, np.random.default_rng(6))
    one = torch.from_numpy(shapes.shape_coverage(labels[:, 0].numpy(), geometry[:, 0], 32))[:, None] \
        * PALETTE[labels[:, 1]][:, :, None, None]                      # object a alone
    verdict = judge_scenes(one, labels)
    assert set(verdict["error"]) == {"missing object"} and (verdict["count"] == 1).all()
    assert (verdict["labels"][:, 0] == labels[:, 0]).all() and (verdict["labels"][:, 2] == UNREAD).all()
    assert not verdict["clean"].any()
    blank = judge_scenes(torch.zeros(2, 3, 32, 32), labels[:2])
    assert blank["error"] == ["missing object"] * 2 and (blank["labels"] == UNREAD).all()
    images = scenes.render(labels, seed=6)
    free = images[:, :, 12:20, 12:20].amax(dim=(1, 2, 3)) == 0           # the middle is dark
    third = images[free].clone()
    third[:, :, 14:18, 14:18] = 1.0                                      # a white square there
    verdict = judge_scenes(third, labels[free])
    assert len(third) >= 10 and set(verdict["error"]) == {"extra object"} and (verdict["count"] == 3).all()


def test_judge_says_when_the_relation_is_wrong_or_a_colour_is_mixed():
    labels = scenes.sample_labels(100, "all", seed=8)
    flipped = labels.clone()
    flipped[:, 2] = torch.tensor(scenes.CONVERSE)[labels[:, 2]]          # same objects, other side
    assert set(judge_scenes(scenes.render(flipped, seed=8), labels)["error"]) == {"wrong relation"}
    images = scenes.render(labels, seed=9)
    half = images.clone()
    half[:, :, :, :16] = images[:, [1, 2, 0], :, :16]                    # recolour the left half: R->G->B
    graded = grade_scenes(half, labels)
    assert graded["binding"] < 0.2 and graded["errors"]["correct"] < 0.2
    assert sum(graded["errors"].values()) == pytest.approx(1.0)
    assert graded["errors"]["colour mixed"] + graded["errors"]["wrong colour"] + graded["errors"]["colour leaked"] > 0.7
