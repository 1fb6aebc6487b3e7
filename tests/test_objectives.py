"""objectives.py: the prediction conversions agree with each other and with q_sample,
and DiffusionConfig is validated and read from old weight folders."""
import json

import pytest
import torch

from minildm import objectives
from minildm.objectives import DiffusionConfig
from minildm.schedule import NoiseSchedule
from minildm.weights_io import WeightsError

T = torch.tensor([0, 3, 100, 600, 900])


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(5, 3, 8, 8, generator=g) * 2 - 1, torch.randn(5, 3, 8, 8, generator=g)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_predict_x0_inverts_q_sample(kind):
    s = NoiseSchedule(kind)
    x0, eps = _data()
    xt = s.q_sample(x0, T, eps)
    assert torch.allclose(objectives.predict_x0(s, xt, T, eps), x0, atol=1e-3)
    alpha_bar = s.alpha_bar[T].view(-1, 1, 1, 1)
    assert torch.allclose(objectives.x0_from_eps(xt, eps, alpha_bar), x0, atol=1e-3)
    assert torch.allclose(objectives.eps_from_x0(xt, x0, alpha_bar), eps, atol=1e-3)
    # a Python float alpha_bar (what the samplers pass) gives the same numbers
    t, ab = 600, float(s.alpha_bar_f64[600])
    assert torch.allclose(objectives.x0_from_eps(xt[3], eps[3], ab), x0[3], atol=1e-4)


def test_v_by_hand_and_back_to_eps():
    s = NoiseSchedule("cosine")
    x0, eps = _data()
    ab = s.alpha_bar[T].view(-1, 1, 1, 1)
    v = objectives.velocity(s, x0, T, eps)
    assert torch.allclose(v, ab.sqrt() * eps - (1 - ab).sqrt() * x0)               # the definition
    xt = s.q_sample(x0, T, eps)
    assert torch.allclose(objectives.eps_from_v(s, xt, T, v), eps, atol=1e-5)       # the conversion


def test_diffusion_config_round_trip_and_validation(tmp_path):
    cfg = DiffusionConfig("linear", 50, "v", clip_x0=2.5)
    cfg.save(tmp_path)
    assert DiffusionConfig.load(tmp_path) == cfg
    assert cfg.make_schedule().num_timesteps == 50
    for bad, allowed in ((dict(schedule="sigmoid"), "linear, cosine"), (dict(prediction="x0"), "eps, v, flow"),
                         (dict(num_timesteps=1), "2..10000"), (dict(num_timesteps=10.5), "2..10000"),
                         (dict(clip_x0=-1.0), ">= 0"), (dict(clip_x0=float("nan")), ">= 0")):
        with pytest.raises(ValueError, match=allowed):
            DiffusionConfig(**bad)
    with pytest.raises(WeightsError, match="no diffusion.json"):
        DiffusionConfig.load(tmp_path / "empty")


def test_flow_diffusion_config(tmp_path):
    """A rectified-flow model saves prediction "flow"; its schedule fields are unused defaults."""
    cfg = DiffusionConfig(prediction="flow")
    cfg.save(tmp_path)
    assert DiffusionConfig.load(tmp_path) == cfg and cfg.clip_x0 == 0.0
    with pytest.raises(ValueError, match="prediction must be one of eps, v, flow, got 'velocity'"):
        DiffusionConfig(prediction="velocity")


def test_old_latent_pipeline_json_still_reads(tmp_path):
    """A latent UNet folder written before diffusion.json kept its diffusion keys in pipeline.json."""
    (tmp_path / "pipeline.json").write_text(json.dumps(
        {"schedule": "cosine", "num_timesteps": 1000, "latent_size": 8, "latent_clip": 4.4}))
    assert DiffusionConfig.load(tmp_path) == DiffusionConfig("cosine", 1000, "eps", clip_x0=4.4)
