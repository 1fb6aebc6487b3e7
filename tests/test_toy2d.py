import pytest
import torch

from minildm.data import toy2d


@pytest.mark.parametrize("name", list(toy2d.DATASETS))
def test_point_clouds_are_deterministic_and_scaled(name):
    a, b = toy2d.make(name, 500, seed=1), toy2d.make(name, 500, seed=1)
    assert a.shape == (500, 2) and a.dtype == torch.float32 and torch.equal(a, b)
    assert a.abs().max() < 2.0  # roughly [-1, 1], like the images


def test_ink_drop_is_a_tight_blob_that_is_not_gaussian():
    pts = toy2d.ink_drop(4000)
    assert pts.std(0).max() < 0.3  # much tighter than N(0, I)


def test_bad_input():
    with pytest.raises(ValueError, match="allowed"):
        toy2d.make("spiral")
    with pytest.raises(ValueError, match="positive"):
        toy2d.ink_drop(-3)
