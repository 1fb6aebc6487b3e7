"""Latent versus pixel space at equal minutes (recipes/spaces.py) and the identity "VAE" it uses."""
import dataclasses
import json

import pytest
import torch

from minildm.__main__ import main
from minildm.pixel_space import PixelSpace
from minildm.recipes import ldm, spaces


def test_pixel_space_is_the_identity_between_images_and_minus_one_one():
    space = PixelSpace()
    images = torch.rand(3, 3, 32, 32)
    z = space.encode(images)
    assert z.shape == (3, 3, 32, 32) and float(z.min()) >= -1 and float(z.max()) <= 1
    assert torch.allclose(z, images * 2 - 1) and torch.allclose(space.decode(z), images)
    assert float(space.decode(torch.full((1, 3, 32, 32), 3.0)).max()) == 1.0       # clamped like a VAE's
    assert (space.config.latent_size, space.config.latent_channels, space.config.compression) == (32, 3, 1.0)
    assert sum(p.numel() for p in space.parameters()) == 0                          # nothing to train
    with pytest.raises(ValueError, match=r"images must have shape \(N, 3, 32, 32\), got \(3, 32, 32\)"):
        space.encode(torch.rand(3, 32, 32))


def test_the_pixel_unet_is_the_latent_unet_with_two_levels_in_front():
    latent, pixel = spaces.unet_config("latent", 64), spaces.unet_config("pixel", 64)
    assert latent == dataclasses.replace(ldm.PRESETS["cpu"].model, context_dim=64)
    assert (pixel.in_channels, pixel.out_channels) == (3, 3)
    assert pixel.channel_mults[2:] == latent.channel_mults and pixel.channel_mults[:2] == (1, 1)
    assert pixel.attention_levels == (False, False) + tuple(latent.attention_levels)
    with pytest.raises(ValueError, match="unknown space 'rgb'; allowed: latent, pixel"):
        spaces.job("rgb", spaces.QUICK)


def test_minutes_become_steps_after_the_pool_is_paid_for():
    # 2 minutes, a 12-second pool, 250 ms per step: (120 - 12) / 0.25 = 432 steps, warm-up 43
    assert spaces.steps_of(2, {"pool_seconds": 12.0, "ms_per_step": 250.0}, 100) == (432, 43)
    assert spaces.steps_of(5, {"pool_seconds": 0.0, "ms_per_step": 1000.0}, 100) == (300, 30)
    assert spaces.steps_of(0.1, {"pool_seconds": 30.0, "ms_per_step": 100.0}, 100)[0] == 1   # at least one


def test_cells_run_apart_merge_into_one_file_with_their_steps(tmp_path, monkeypatch):
    cfg = dataclasses.replace(spaces.QUICK, minutes=(0.01,), batch_size=4, pool=8, captions=4, num_steps=2,
                              samples=2)
    measured = {"latent": {"pool_seconds": 0.0, "ms_per_step": 200.0, "parameters": 1},
                "pixel": {"pool_seconds": 0.0, "ms_per_step": 600.0, "parameters": 1},
                "threads": 2, "pixel_over_latent": 3.0}
    monkeypatch.setattr(spaces, "timing", lambda cfg: measured)
    path = tmp_path / "spaces.json"
    spaces.compare_spaces(cfg, ["latent"], path)            # as two processes side by side would
    out = spaces.compare_spaces(cfg, ["pixel"], path)
    stored = json.loads(path.read_text())
    latent, pixel = stored["cells"]["latent/0.01"], stored["cells"]["pixel/0.01"]
    assert (latent["steps"], pixel["steps"]) == (3, 1)       # 0.6 s at 200 and at 600 ms per step
    assert latent["images_seen"] == 12 and stored["timing"] == measured == out["timing"]
    assert latent["seen"]["count"] + (latent["held_out"] or {"count": 0})["count"] == 4
    assert stored["summary"]["latent"]["budgets"] == [0.01] and stored["summary"]["pixel"]["minutes_to_target"] is None
    from safetensors.torch import load_file
    samples = load_file(spaces.samples_path(path))
    assert set(samples) == {"latent/0.01", "pixel/0.01"} and samples["pixel/0.01"].shape == (2, 3, 32, 32)
    assert "| 0.01 | 3 |" in spaces.table(stored)


def test_summary_names_the_first_budget_that_reaches_the_target():
    row = lambda space, minutes, acc, s: {"space": space, "minutes": minutes, "seen": {"all_four": acc},
                                          "seconds_per_image": s}
    out = {"cells": {"latent/1": row("latent", 1, 0.5, 0.1), "latent/5": row("latent", 5, 0.95, 0.1),
                     "latent/2": row("latent", 2, 0.91, 0.1), "pixel/5": row("pixel", 5, 0.4, 0.5)}}
    summary = spaces.summary(out)
    assert summary["latent"]["minutes_to_target"] == 2 and summary["latent"]["budgets"] == [1, 2, 5]
    # 0.5 at 1 minute, 0.91 at 2: 90% at 2 ** (0.40 / 0.41) = 1.97 minutes on a log-minutes line
    assert summary["latent"]["minutes_to_target_interpolated"] == 2.0
    assert summary["pixel"]["minutes_to_target"] is None and summary["pixel"]["best_seen"] == 0.4


def test_cli_rejects_a_bad_space(capsys):
    with pytest.raises(SystemExit):
        main(["compare", "spaces", "--space", "rgb"])
    assert "invalid choice: 'rgb'" in capsys.readouterr().err
