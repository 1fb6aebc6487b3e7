"""The rule-based judge grades reconstructions and generated images: it must be right on data,
accept slightly soft images, and call nothing clean that does not look like the data
(the adversarial kinds of minildm/data/judge_cases.py; docs/judge.md has the full table)."""
import pytest
import torch

from minildm.data import judge_cases, shapes
from minildm.data.judge import attribute_accuracy, judge


def test_agrees_with_labels_on_every_caption_at_both_resolutions():
    labels = shapes.all_labels()
    for res, seeds in ((32, (0, 1)), (64, (0,))):
        for seed in seeds:
            result = judge(shapes.render(labels, res, seed=seed))
            acc = attribute_accuracy(result["labels"], labels)
            assert acc["all_four"] == 1.0, acc
            assert result["clean"].all()


def test_garbage_is_not_clean():
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(8, 3, 32, 32, generator=g)
    assert not judge(noise)["clean"].any()
    blank = torch.zeros(2, 3, 32, 32)
    assert not judge(blank)["clean"].any()
    two = shapes.render(torch.tensor([[0, 0, 0, 0], [1, 2, 0, 8]]), 32).sum(0, keepdim=True)
    assert not judge(two.clamp(0, 1))["clean"].any(), "two objects are not a Shapes image"
    grey = shapes.render(torch.tensor([[1, 0, 1, 4]]), 32) * torch.tensor([0.6, 0.6, 0.6]).view(1, 3, 1, 1) + 0.0
    grey[:, 1:] = grey[:, :1]
    assert not judge(grey)["clean"].any(), "grey is not a palette color"


def test_slightly_blurry_images_are_still_read_correctly():
    labels = shapes.sample_labels(200, "all", seed=1)
    images = shapes.render(labels, 32, seed=1)
    blurred = torch.nn.functional.avg_pool2d(images, 3, stride=1, padding=1)
    acc = attribute_accuracy(judge(blurred)["labels"], labels)
    assert acc["color"] == 1.0 and acc["position"] > 0.97 and acc["shape"] > 0.9, acc


def test_bad_shape():
    with pytest.raises(ValueError, match="N, 3, H, W"):
        judge(torch.zeros(3, 32, 32))


@pytest.mark.parametrize("resolution", [32, 64])
@pytest.mark.parametrize("kind", judge_cases.GOOD_KINDS)
def test_clean_and_slightly_soft_renders_are_accepted(kind, resolution):
    images, labels = judge_cases.make_case(kind, 150, resolution, seed=1)
    verdict = judge(images)
    assert verdict["clean"].float().mean() >= 0.99, verdict["why"]      # measured: 100%
    assert attribute_accuracy(verdict["labels"], labels)["all_four"] >= 0.995


# The share of each bad kind the judge must reject (measured on 500 per kind and resolution in
# docs/judge.md: 100%, except hollow at 32x32, 99.8%) and the reason it must give for it.
REJECTED = {
    "two_colour": (0.98, "colour"), "fragments": (0.98, "several pieces"),
    "two_objects": (0.98, "several pieces"), "hollow": (0.97, "holes"),
    "stray_pixels": (0.98, "several pieces"), "blur": (0.98, "blurred"), "noise": (0.98, "stray light"),
    "half_cut": (0.98, "cut by the border"), "seventh_colour": (0.98, "colour"),
}


@pytest.mark.parametrize("kind", judge_cases.BAD_KINDS)
def test_each_bad_kind_is_rejected_for_its_reason(kind):
    rate, reason = REJECTED[kind]
    for resolution, n in ((32, 80), (64, 30)):
        images, _ = judge_cases.make_case(kind, n, resolution, seed=2)
        verdict = judge(images)
        assert 1 - verdict["clean"].float().mean() >= rate, (kind, resolution)
        named = sum(reason in why or why == ["no object"] for why in verdict["why"])
        assert named >= rate * n, (kind, resolution, verdict["why"])


def test_the_shipped_vae_reconstructions_are_clean():
    """Decoded images are slightly soft: a judge that rejects them is wrong the other way."""
    recon, labels = judge_cases.vae_reconstructions(200, seed=3)
    verdict = judge(recon)
    assert verdict["clean"].float().mean() >= 0.98                     # measured: 99.9% of 2,000
    assert attribute_accuracy(verdict["labels"], labels)["all_four"] >= 0.98


def test_a_faint_haze_changes_neither_the_reading_nor_the_verdict():
    """The pixel UNet leaves a background of ~0.01-0.02: it must not decide the shape (the judge
    of fa9aa1c read the whole image's light and called many such triangles circles)."""
    labels = shapes.sample_labels(100, "all", seed=4)
    images = shapes.render(labels, 32, seed=4)
    g = torch.Generator().manual_seed(4)
    hazy = (images + 0.02 * torch.rand(images.shape, generator=g)).clamp(0, 1)
    verdict = judge(hazy)
    assert torch.equal(verdict["labels"], labels) and verdict["clean"].all()
    glowing = (images + 0.06).clamp(0, 1)                                 # a grey background is not black
    assert not judge(glowing)["clean"].any()


def test_why_is_empty_exactly_for_clean_images():
    images = torch.cat([judge_cases.make_case(kind, 10, 32, seed=5)[0] for kind in judge_cases.KINDS])
    verdict = judge(images)
    assert [not why for why in verdict["why"]] == verdict["clean"].tolist()
