"""The rule-based judge grades reconstructions and generated images: it must be right on data
and must not call garbage clean."""
import pytest
import torch

from minildm.data import shapes
from minildm.data.judge import attribute_accuracy, judge


def test_agrees_with_labels_on_every_caption_at_both_resolutions():
    labels = shapes.all_labels()
    for res in (32, 64):
        for seed in range(3):
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
