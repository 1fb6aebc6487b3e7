"""The DDPM recipe: the loss, the 2-D MLP, the pixel UNet's fit / generate / evaluate."""
import json

import pytest
import torch

from minildm import objectives
from minildm.data.judge import grade_unconditional
from minildm.objectives import DiffusionConfig
from minildm.recipes import pixel_unet, points
from minildm.weights_io import resolve_folder
from minildm.schedule import NoiseSchedule
from minildm.unet import MLPDenoiser, UNet
from minildm.weights_io import WeightsError

torch.set_num_threads(1)


def test_loss_is_mse_to_the_added_noise():
    schedule = NoiseSchedule()
    model = MLPDenoiser()
    x0, noise, t = torch.randn(16, 2), torch.randn(16, 2), torch.randint(0, 1000, (16,))
    loss = objectives.diffusion_loss(model, schedule, x0, t=t, noise=noise)
    xt = schedule.alpha_bar[t].sqrt()[:, None] * x0 + (1 - schedule.alpha_bar[t]).sqrt()[:, None] * noise
    assert loss.ndim == 0
    assert loss.item() == pytest.approx(((model(xt, t) - noise) ** 2).mean().item(), rel=1e-5)
    # the zero-initialised UNet predicts 0, so its loss is the noise's mean square
    unet = UNet(pixel_unet.PRESETS["tiny"].model)
    images = torch.rand(4, 3, 16, 16) * 2 - 1
    noise = torch.randn_like(images)
    assert objectives.diffusion_loss(unet, schedule, images, noise=noise).item() == pytest.approx(
        noise.pow(2).mean().item(), rel=1e-5)


def test_loss_is_seeded_and_min_snr_weighting():
    schedule = NoiseSchedule()
    model = MLPDenoiser()
    x0 = torch.randn(32, 2)
    a = objectives.diffusion_loss(model, schedule, x0, generator=torch.Generator().manual_seed(0))
    b = objectives.diffusion_loss(model, schedule, x0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(a, b)
    t, noise = torch.tensor([0, 10, 500, 999]), torch.randn(4, 2)
    x0 = x0[:4]
    plain = objectives.diffusion_loss(model, schedule, x0, t=t, noise=noise)
    weighted = objectives.diffusion_loss(model, schedule, x0, t=t, noise=noise, snr_gamma=5.0)
    xt = schedule.q_sample(x0, t, noise)
    per = ((model(xt, t) - noise) ** 2).mean(1)
    snr = schedule.snr(t)
    assert weighted.item() == pytest.approx((per * snr.clamp(max=5) / snr).mean().item(), rel=1e-5)
    assert weighted < plain          # low-noise examples (high SNR) are down-weighted
    high_noise = torch.tensor([999, 999, 999, 999])  # SNR < 5: weight 1, same as the plain loss
    assert objectives.diffusion_loss(model, schedule, x0, t=high_noise, noise=noise, snr_gamma=5.0).item() == \
        pytest.approx(objectives.diffusion_loss(model, schedule, x0, t=high_noise, noise=noise).item(), rel=1e-6)


def test_v_prediction_loss_and_eps_wrapper():
    schedule = NoiseSchedule()
    model = MLPDenoiser()
    x0, noise, t = torch.randn(8, 2), torch.randn(8, 2), torch.randint(0, 1000, (8,))
    xt = schedule.q_sample(x0, t, noise)
    v = objectives.velocity(schedule, x0, t, noise)
    loss = objectives.diffusion_loss(model, schedule, x0, t=t, noise=noise, prediction="v")
    assert loss.item() == pytest.approx(((model(xt, t) - v) ** 2).mean().item(), rel=1e-5)
    # a perfect v-network, wrapped, gives back exactly the noise
    class PerfectV(torch.nn.Module):
        def forward(self, x, tt):
            return objectives.velocity(schedule, x0, tt, noise)

    assert torch.allclose(objectives.EpsFromV(PerfectV(), schedule)(xt, t), noise, atol=1e-4)
    assert objectives.as_eps_model(model, schedule, "eps") is model
    with pytest.raises(ValueError, match="eps, v"):
        objectives.diffusion_loss(model, schedule, x0, prediction="x0")


def test_fit_points_learns_the_spread():
    result = points.fit_points("two_moons", steps=30, batch_size=64, progress=False)
    assert isinstance(result.model, MLPDenoiser)
    losses = [h["loss"] for h in result.history]
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="ink_drop"):
        points.fit_points("spiral")


def test_fit_tiny_writes_weights_and_schedule(tmp_path, capsys):
    model = pixel_unet.fit("tiny", out_dir=tmp_path / "w", run_dir=tmp_path / "r", progress=False)
    out = capsys.readouterr().out
    assert "wrote" in out and "trained 4 steps" in out
    folder = tmp_path / "w" / "pixel_unet"
    assert {p.name for p in folder.iterdir()} == {"config.json", "model.safetensors", "diffusion.json",
                                                 "training.json"}
    assert (tmp_path / "r" / "pixel_unet" / "metrics.jsonl").exists()
    loaded, schedule = pixel_unet.load_pixel_unet(folder)
    assert schedule.kind == pixel_unet.PRESETS["tiny"].schedule and schedule.num_timesteps == 1000
    assert model.schedule.kind == schedule.kind       # fit's model carries the schedule to sample with
    assert json.loads((folder / "diffusion.json").read_text())["prediction"] == pixel_unet.PRESETS["tiny"].prediction
    assert isinstance(loaded.model if isinstance(loaded, objectives.EpsFromV) else loaded, UNet)
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([1, 2])
    assert torch.equal(model.eval()(x, t), loaded(x, t))
    # overrides are TrainConfig fields
    pixel_unet.fit("tiny", out_dir=None, run_dir=None, steps=2, progress=False)
    assert "trained 2 steps" in capsys.readouterr().out


def test_bad_schedule_file_and_preset(tmp_path):
    model = UNet(pixel_unet.PRESETS["tiny"].model)
    model.save_pretrained(tmp_path)
    (tmp_path / "schedule.json").write_text("{not json")              # the file before diffusion.json
    with pytest.raises(WeightsError, match="schedule.json"):
        pixel_unet.load_pixel_unet(tmp_path)
    (tmp_path / "schedule.json").write_text('{"kind": "linear", "num_timesteps": 1000, "prediction": "x0"}')
    with pytest.raises(WeightsError, match="prediction"):
        pixel_unet.load_pixel_unet(tmp_path)
    (tmp_path / "schedule.json").write_text('{"kind": "linear", "num_timesteps": 20, "prediction": "v"}')
    legacy = DiffusionConfig.load(tmp_path)                               # old keys still read
    assert (legacy.schedule, legacy.num_timesteps, legacy.prediction, legacy.clip_x0) == ("linear", 20, "v", 1.0)
    (tmp_path / "diffusion.json").write_text("{not json")               # the new file wins, and is checked
    with pytest.raises(WeightsError, match="diffusion.json"):
        pixel_unet.load_pixel_unet(tmp_path)
    (tmp_path / "diffusion.json").unlink()
    (tmp_path / "schedule.json").unlink()  # absent: the DDPM defaults
    model, schedule = pixel_unet.load_pixel_unet(tmp_path)
    assert isinstance(model, UNet) and schedule.num_timesteps == 1000
    with pytest.raises(ValueError, match="tiny, cpu, fast, gpu"):
        pixel_unet.fit("huge")


def test_generate_is_seeded_and_in_range():
    model = UNet(pixel_unet.PRESETS["tiny"].model).eval()
    schedule = NoiseSchedule("linear", 100)
    a = pixel_unet.generate(model, schedule, 3, num_steps=5, seed=1, progress=False)
    b = pixel_unet.generate(model, schedule, 3, num_steps=5, seed=1, progress=False)
    assert a.shape == (3, 3, 32, 32) and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1
    c, traj = pixel_unet.generate(model, schedule, 2, num_steps=4, seed=2, progress=False, return_trajectory=True)
    assert len(traj) == 5
    with pytest.raises(ValueError, match="'ddim' or 'ddpm'"):
        pixel_unet.generate(model, schedule, 1, sampler="euler")


def test_grade_real_images_are_clean():
    from minildm.data import shapes
    images, _, labels = shapes.sample_batch(12, "train", 32, seed=0)
    verdict = grade_unconditional(images)
    assert verdict["clean_rate"] == 1.0 and verdict["n"] == 12
    assert sum(verdict["shape_counts"].values()) == 12
    assert verdict["color_counts"]["red"] == int((labels[:, 1] == 0).sum())
    assert grade_unconditional(torch.zeros(2, 3, 32, 32))["clean_rate"] == 0.0


def test_evaluate_returns_json_figures(tmp_path):
    """evaluate on a tiny model with a short schedule (T = 10, so 'DDPM' is 10 steps here)."""
    model = UNet(pixel_unet.PRESETS["tiny"].model)
    model.save_pretrained(tmp_path)
    DiffusionConfig("linear", 10, "eps", clip_x0=1.0).save(tmp_path)
    result = pixel_unet.evaluate(tmp_path, quick=True, progress=False)
    json.dumps(result)
    assert result["ddim50"]["n"] == result["ddim50_eta1"]["n"] == 16 and result["ddpm1000"]["n"] == 4
    assert (result["ddim50"]["eta"], result["ddim50_eta1"]["eta"]) == (0.0, 1.0)
    assert 0 <= result["ddim50"]["clean_rate"] <= 1 and result["ddim50"]["seconds_per_image"] > 0
    for label in ("ddim50", "ddim50_eta1"):
        assert result[f"{label}_vs_ddpm1000_clean_gap"] == pytest.approx(
            result[label]["clean_rate"] - result["ddpm1000"]["clean_rate"])
    assert result["ddim50_speedup"] == pytest.approx(
        result["ddpm1000"]["seconds_per_image"] / result["ddim50"]["seconds_per_image"])


def test_presets_are_consistent():
    assert set(pixel_unet.PRESETS) == {"tiny", "fast", "cpu", "gpu"}
    # the 5-minute preset: attention only in the middle block (the cheaper step), min-SNR weighting
    assert not any(pixel_unet.PRESETS["fast"].model.attention_levels) and pixel_unet.PRESETS["fast"].snr_gamma == 5.0
    assert pixel_unet.PRESETS["gpu"].resolution == 64 and pixel_unet.PRESETS["gpu"].train.precision == "bf16"
    assert pixel_unet.PRESETS["cpu"].train.ema_decay > 0
    for p in pixel_unet.PRESETS.values():
        UNet(p.model)  # builds


def test_shipped_weights_load():
    model, schedule = pixel_unet.load_pixel_unet()
    assert model.config.in_channels == 3
    assert model(torch.zeros(1, 3, 32, 32), torch.tensor([500])).shape == (1, 3, 32, 32)
    assert schedule.num_timesteps == 1000
    size = sum((resolve_folder(None, "pixel_unet") / f).stat().st_size
               for f in ("config.json", "model.safetensors"))
    assert size < 3_000_000
