"""The UNet and the 2-D MLP denoiser: shapes, conditioning, errors, save/load."""
import pytest
import torch

from minildm.unet import MLPConfig, MLPDenoiser, UNet, UNetConfig, timestep_embedding
from minildm.weights_io import WeightsError

torch.set_num_threads(1)
SMALL = dict(base_channels=16, num_heads=2)


def test_timestep_embedding():
    emb = timestep_embedding(torch.tensor([0, 1, 999]), 32)
    assert emb.shape == (3, 32)
    assert torch.allclose(emb[0, :16], torch.zeros(16)) and torch.allclose(emb[0, 16:], torch.ones(16))
    assert not torch.allclose(emb[1], emb[2])
    assert timestep_embedding(torch.tensor([5]), 7).shape == (1, 7)


@pytest.mark.parametrize("in_ch,res", [(3, 32), (3, 64), (4, 8), (4, 16), (4, 32)])
def test_unconditional_output_shape_equals_input(in_ch, res):
    model = UNet(UNetConfig(in_channels=in_ch, out_channels=in_ch, **SMALL))
    x = torch.randn(2, in_ch, res, res)
    out = model(x, torch.tensor([0, 999]))
    assert out.shape == x.shape


@pytest.mark.parametrize("res", [8, 32])
def test_cross_attention_output_shape_and_effect(res):
    torch.manual_seed(0)
    model = UNet(UNetConfig(in_channels=4, out_channels=4, context_dim=24, **SMALL))
    # zero-initialised output layers would hide the context's effect: randomise them
    for p in model.parameters():
        if p.abs().sum() == 0 and p.ndim > 1:
            torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(2, 4, res, res), torch.tensor([10, 500])
    context = torch.randn(2, 16, 24)
    mask = torch.ones(2, 16, dtype=torch.bool)
    mask[:, 5:] = False
    out = model(x, t, context, mask)
    assert out.shape == x.shape
    # the context changes the output; masked (padding) tokens do not
    assert not torch.allclose(out, model(x, t, torch.randn(2, 16, 24), mask), atol=1e-5)
    changed_padding = context.clone()
    changed_padding[:, 5:] = torch.randn(2, 11, 24)
    assert torch.allclose(out, model(x, t, changed_padding, mask), atol=1e-5)
    # an all-padding row does not produce NaN
    assert torch.isfinite(model(x, t, context, torch.zeros(2, 16, dtype=torch.bool))).all()


def test_default_config_params_and_time_dependence():
    model = UNet()
    assert model.config == UNetConfig()
    for p in model.parameters():  # the zero-initialised layers hide t at init: randomise them
        if p.abs().sum() == 0 and p.ndim > 1:
            torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(1, 3, 32, 32)
    assert not torch.allclose(model(x, torch.tensor([1])), model(x, torch.tensor([900])))


def test_errors_say_what_is_allowed():
    model = UNet(UNetConfig(**SMALL))
    with pytest.raises(ValueError, match="3 input channels"):
        model(torch.randn(1, 4, 32, 32), torch.tensor([0]))
    with pytest.raises(ValueError, match="divisible by 4"):
        model(torch.randn(1, 3, 30, 30), torch.tensor([0]))
    with pytest.raises(ValueError, match="unconditional"):
        model(torch.randn(1, 3, 32, 32), torch.tensor([0]), torch.randn(1, 4, 8))
    cond = UNet(UNetConfig(context_dim=8, **SMALL))
    with pytest.raises(ValueError, match="pass a context"):
        cond(torch.randn(1, 3, 32, 32), torch.tensor([0]))
    with pytest.raises(ValueError, match="one per level"):
        UNet(UNetConfig(attention_levels=(True,)))


def test_save_load_round_trip_and_corrupt_file(tmp_path):
    model = UNet(UNetConfig(context_dim=8, channel_mults=(1, 2), attention_levels=(False, True), **SMALL))
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    model.save_pretrained(tmp_path / "u")
    loaded = UNet.from_pretrained(tmp_path / "u")
    assert loaded.config == model.config
    x, t, c = torch.randn(2, 3, 16, 16), torch.tensor([3, 4]), torch.randn(2, 5, 8)
    assert torch.equal(model.eval()(x, t, c), loaded(x, t, c))
    (tmp_path / "u" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError, match="truncated or not a"):
        UNet.from_pretrained(tmp_path / "u")
    with pytest.raises(WeightsError, match="not found"):
        UNet.from_pretrained(tmp_path / "missing")


def test_mlp_denoiser():
    model = MLPDenoiser()
    x = torch.randn(7, 2)
    out = model(x, torch.randint(0, 1000, (7,)))
    assert out.shape == (7, 2)
    assert model(x, torch.tensor(3)).shape == (7, 2)  # one t for the batch


def test_mlp_save_load(tmp_path):
    model = MLPDenoiser(MLPConfig(hidden=32))
    model.save_pretrained(tmp_path)
    loaded = MLPDenoiser.from_pretrained(tmp_path)
    x, t = torch.randn(3, 2), torch.tensor([1, 2, 3])
    assert torch.equal(model(x, t), loaded(x, t))
