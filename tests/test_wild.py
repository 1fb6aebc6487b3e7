"""data/wild.py: Shapes drawn by an independent renderer (PIL), beyond the training ranges;
and the VAE recipe's wild training images."""
import numpy as np
import pytest
import torch

from minildm.data import shapes, wild
from minildm.data.judge import judge
from minildm.recipes import vae as vae_recipe


@pytest.mark.parametrize("kind", wild.KINDS)
def test_wild_batches(kind):
    images, labels = wild.wild_batch(40, kind, 32, seed=3)
    assert images.shape == (40, 3, 32, 32) and labels.shape == (40, 4)
    assert images.min() >= 0 and images.max() <= 1 and (images.amax(dim=(1, 2, 3)) > 0.5).all()
    lit = images.amax(dim=1) > 0.1                                           # (N, H, W)
    touches = lit[:, 0].any(1) | lit[:, -1].any(1) | lit[:, :, 0].any(1) | lit[:, :, -1].any(1)
    if kind in ("border", "corner"):
        assert touches.float().mean() > (0.3 if kind == "border" else 0.95)  # objects reach the edge
    if kind == "corner":
        assert (labels[:, 0] == shapes.SHAPES.index("square")).all() and (labels[:, 3] % 2 == 0).all()
    if kind in ("hard", "supersampled"):
        assert not touches.any()                                             # whole objects inside
        read = judge(images)["labels"]
        assert (read[:, 1] == labels[:, 1]).float().mean() > 0.95           # same colours as labelled
        values = images[images > 0].unique()
        if kind == "hard":                                                   # aliased: only 0 and 1
            assert set(values.tolist()) <= {1.0}


def test_wild_is_deterministic_and_checks_its_kind():
    a, _ = wild.wild_batch(5, "border", 32, seed=1)
    b, _ = wild.wild_batch(5, "border", 32, seed=1)
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="hard, supersampled, border, corner"):
        wild.wild_batch(5, "blurry")


def test_vae_training_images_include_wild_ones():
    batch = vae_recipe._data_fn(32, "train", wild_fraction=1.0)(64, torch.Generator().manual_seed(0), "cpu")
    lit = batch.amax(dim=1) > 0.1
    touches = lit[:, 0].any(1) | lit[:, -1].any(1) | lit[:, :, 0].any(1) | lit[:, :, -1].any(1)
    assert touches.float().mean() > 0.3                                      # beyond the training margin
    hard = ((batch == 0) | (batch == 1)).flatten(1).all(1)
    assert 0.3 < hard.float().mean() < 0.7                                   # about half hard-edged
    plain = vae_recipe._data_fn(32, "train")(64, torch.Generator().manual_seed(0), "cpu")
    assert torch.equal(plain, shapes.sample_batch(64, "train", 32,
                                                  seed=int(torch.randint(0, 2 ** 31, (1,), generator=torch.Generator().manual_seed(0))))[0])
