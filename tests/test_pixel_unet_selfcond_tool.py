"""tools/pixel_unet_selfcond.py: the network sees its own x0 guess in training and in sampling."""
import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from minildm.recipes import pixel_unet
from minildm.unet import UNet

TOOL = Path(__file__).resolve().parents[1] / "tools" / "pixel_unet_selfcond.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("pixel_unet_selfcond", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Recorder(torch.nn.Module):
    """A 6-channel UNet that remembers the guess channels (3:6) of every input it was given."""
    def __init__(self):
        super().__init__()
        self.net = UNet(replace(pixel_unet.PRESETS["tiny"].model, in_channels=6))
        self.guesses = []

    def forward(self, x, t):
        self.guesses.append(x[:, 3:].detach().clone())
        return self.net(x, t)


def test_the_loss_feeds_a_guess_only_when_asked(tool):
    x0 = torch.rand(4, 3, 32, 32) * 2 - 1
    model = Recorder()
    loss = tool.selfcond_loss(0.0, 5.0)(model, x0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert len(model.guesses) == 1 and model.guesses[0].abs().max() == 0     # never: one pass, zeros
    model.guesses.clear()
    tool.selfcond_loss(1.0, 5.0)(model, x0)
    assert len(model.guesses) == 2                                           # always: a no-grad pass first
    assert model.guesses[1].abs().max() > 0 and model.guesses[1].abs().max() <= 1   # then its clipped x0 guess


def test_sampling_hands_each_guess_to_the_next_step(tool):
    model = Recorder().eval()
    images = tool.generate(model, 2, eta=0.0, seed=0)
    assert images.shape == (2, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    assert len(model.guesses) == 50 and model.guesses[0].abs().max() == 0    # DDIM-50; the first step has none
    assert all(g.abs().max() > 0 for g in model.guesses[1:])
    assert torch.equal(images, tool.generate(model, 2, eta=0.0, seed=0))    # same seed, same images


def test_the_defaults_are_the_fast_recipe(tool):
    args = tool.parse_args(["--out", "o"])
    assert (args.steps, args.lr, args.p_selfcond) == (3500, 6e-3, 0.5)       # the fast preset's steps and rate
