"""tools/pixel_unet_budget.py builds the UNet its arguments name (the rows of docs/results_ddpm.md's study)."""
import importlib.util
from pathlib import Path

import pytest

from minildm.recipes import pixel_unet
from minildm.unet import UNet

TOOL = Path(__file__).resolve().parents[1] / "tools" / "pixel_unet_budget.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("pixel_unet_budget", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build(tool, *argv):
    preset = tool.preset_from(tool.parse_args(["--steps", "10", "--out", "unused", *argv]))
    return preset, UNet(preset.model)


def parameters(model):
    return sum(p.numel() for p in model.parameters())


def test_defaults_are_the_cpu_preset_with_the_given_training(tool):
    preset, model = build(tool, "--lr", "6e-3", "--snr-gamma", "5", "--batch", "16")
    assert preset.model == pixel_unet.PRESETS["cpu"].model
    assert parameters(model) == 314_291                       # the shipped UNet's count (docs/results_ddpm.md)
    assert (preset.train.lr, preset.train.batch_size, preset.snr_gamma) == (6e-3, 16, 5.0)
    assert build(tool)[0].snr_gamma is None                    # 0 = the plain v loss


def test_middle_attention_only_is_the_fast_preset_unet(tool):
    preset, model = build(tool, "--middle-attention-only")
    assert preset.model == pixel_unet.PRESETS["fast"].model
    assert parameters(model) == 276_275


def test_channel_mults_and_base_give_the_study_rows(tool):
    preset, model = build(tool, "--middle-attention-only", "--base-channels", "8", "--channel-mults", "1,4,8")
    assert preset.model.channel_mults == (1, 4, 8) and preset.model.attention_levels == (False, False, False)
    assert parameters(model) == 627_899
    preset, model = build(tool, "--middle-attention-only", "--base-channels", "8", "--channel-mults", "1,4,8,8")
    assert parameters(model) == 1_020_923
    preset, _ = build(tool, "--channel-mults", "1,2,4")        # without the flag the last level attends
    assert preset.model.attention_levels == (False, False, True)


@pytest.mark.parametrize("option, bad, says", [("--channel-mults", "1,x,8", "channel mults must be"),
                                               ("--channel-mults", "0,2", "channel mults must be"),
                                               ("--channel-mults", "", "channel mults must be"),
                                               ("--noise-seeds", "0,x", "noise seeds must be"),
                                               ("--noise-seeds", "-1", "noise seeds must be at least 0")])
def test_bad_lists_are_a_one_line_usage_error(tool, option, bad, says, capsys):
    with pytest.raises(SystemExit):
        tool.parse_args(["--steps", "1", "--out", "o", option, bad])
    err = capsys.readouterr().err.strip().splitlines()
    assert says in err[-1] and "Traceback" not in "".join(err)


def test_noise_seeds_parse_to_ints(tool):
    assert tool.parse_args(["--steps", "1", "--out", "o", "--noise-seeds", "0,1"]).noise_seeds == (0, 1)


def test_optimizer_options_reach_the_training_config(tool):
    preset, _ = build(tool, "--beta2", "0.99", "--min-lr-ratio", "0")
    assert preset.train.betas == (0.9, 0.99) and preset.train.min_lr_ratio == 0.0
    preset, _ = build(tool)                                    # the defaults are the cpu preset's
    assert preset.train.betas == (0.9, 0.999) and preset.train.min_lr_ratio == 0.1
