"""Lesson 08 in the pipeline: flow models load by name, pick their own sampler, refuse the
other family's samplers, train through recipes/flow.py, and the comparison's cells run."""
import pytest
import torch

from minildm import pipeline
from minildm.__main__ import main
from minildm.clip import MiniCLIP
from minildm.data import shapes
from minildm.data.judge import grade_conditional
from minildm.dit import DiT, DiTConfig
from minildm.objectives import DiffusionConfig
from minildm.pipeline import LatentDiffusionPipeline, PipelineConfig
from minildm.recipes import compare, flow
from minildm.recipes.clip import PRESETS as CLIP_PRESETS
from minildm.recipes.vae import PRESETS as VAE_PRESETS
from minildm.samplers import FlowEulerSampler, FlowHeunSampler
from minildm.vae import TinyVAE
from minildm.weights_io import PACKAGE_WEIGHTS, WeightsError

torch.set_num_threads(1)
PROMPTS = ["a large red circle in the top left", "a small blue square at the bottom"]


def tiny_flow_pipeline(seed: int = 0) -> LatentDiffusionPipeline:
    """Random tiny VAE, CLIP and DiT (its zero-initialised layers woken up), prediction "flow"."""
    torch.manual_seed(seed)
    vae = TinyVAE(VAE_PRESETS["tiny"].model)
    clip = MiniCLIP(CLIP_PRESETS["tiny"].model)
    dit = DiT(DiTConfig(width=32, depth=1, num_heads=2, context_dim=clip.config.text_width, attention="joint"))
    for p in dit.parameters():
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=0.05)
    return LatentDiffusionPipeline(vae, clip, dit, PipelineConfig(denoiser="dit"),
                                   diffusion=DiffusionConfig(prediction="flow"))


@pytest.fixture(scope="module")
def pipe():
    return tiny_flow_pipeline()


def test_default_sampler_is_euler_and_heun_runs(pipe):
    assert pipe.is_flow and pipe.samplers == ("euler", "heun")
    assert isinstance(pipe.make_sampler(None, 4), FlowEulerSampler)
    assert isinstance(pipe.make_sampler("heun", 4), FlowHeunSampler)
    x = pipe(PROMPTS, num_steps=4, seed=0)
    assert x.shape == (2, 3, 32, 32) and 0 <= x.min() and x.max() <= 1
    assert torch.equal(x, pipe(PROMPTS, num_steps=4, seed=0, sampler="euler"))
    assert not torch.equal(x, pipe(PROMPTS, num_steps=4, seed=0, sampler="heun"))


@pytest.mark.parametrize("sampler", ["ddim", "ddpm", "Euler", "dpm"])
def test_flow_model_refuses_other_samplers(pipe, sampler):
    with pytest.raises(ValueError, match=r"sampler must be one of euler, heun for this rectified-flow model") as err:
        pipe(PROMPTS, num_steps=2, sampler=sampler)
    assert "\n" not in str(err.value) and repr(sampler) in str(err.value)
    with pytest.raises(ValueError, match="euler, heun"):
        pipe.img2img(torch.zeros(1, 3, 32, 32), PROMPTS[0], num_steps=2, sampler=sampler)


@pytest.mark.parametrize("sampler", ["euler", "heun"])
def test_eps_model_refuses_flow_samplers(sampler):
    flow_pipe = tiny_flow_pipeline()
    eps_pipe = LatentDiffusionPipeline(flow_pipe.vae, flow_pipe.clip, flow_pipe.unet, PipelineConfig(denoiser="dit"),
                                       diffusion=DiffusionConfig(prediction="eps", clip_x0=5.0))
    assert eps_pipe.samplers[0] == "ddim" and isinstance(eps_pipe.make_sampler(None, 3), pipeline.DDIMSampler)
    with pytest.raises(ValueError, match=r"sampler must be one of ddim, ddpm.* for this eps-prediction model "
                                         r"\(or None for ddim\), got '" + sampler):
        eps_pipe(PROMPTS, num_steps=2, sampler=sampler)


def test_flow_img2img_strength_ends(pipe):
    images = shapes.render(torch.stack([shapes.labels_of("circle", "red", "large", "left"),
                                        shapes.labels_of("square", "green", "small", "center")]), 32, seed=0)
    kept = pipe.img2img(images, PROMPTS, strength=0.0, num_steps=5, seed=0)
    assert torch.allclose(kept, pipe.decode_latents(pipe.encode_images(images)), atol=1e-6)
    # strength 1 starts at s = 1: pure noise, so the input image no longer matters
    a = pipe.img2img(images, PROMPTS, strength=1.0, num_steps=5, seed=0)
    b = pipe.img2img(images.flip(0), PROMPTS, strength=1.0, num_steps=5, seed=0)
    assert torch.allclose(a, b, atol=1e-6)


def test_save_load_by_folder_and_by_name(pipe, tmp_path, monkeypatch):
    pipe.save_pretrained(tmp_path, name="flow")
    assert {p.name for p in (tmp_path / "flow").iterdir()} >= {"config.json", "model.safetensors",
                                                                "diffusion.json", "pipeline.json"}
    loaded = LatentDiffusionPipeline.from_pretrained(tmp_path / "flow")
    assert isinstance(loaded.unet, DiT) and loaded.is_flow and loaded.config.denoiser == "dit"
    x = pipe(PROMPTS, num_steps=3, seed=1)
    assert torch.allclose(loaded(PROMPTS, num_steps=3, seed=1), x, atol=2e-2)   # float16 weights
    monkeypatch.setattr(pipeline, "PACKAGE_WEIGHTS", tmp_path)                 # a bare name -> weights/<name>/
    monkeypatch.chdir(tmp_path.parent)
    by_name = LatentDiffusionPipeline.from_pretrained("flow")
    assert by_name.sources["ldm"] == tmp_path / "flow" and torch.equal(by_name(PROMPTS, num_steps=3, seed=1),
                                                                        loaded(PROMPTS, num_steps=3, seed=1))
    with pytest.raises(WeightsError, match="no shipped model 'scenes'.*train scenes"):
        LatentDiffusionPipeline.from_pretrained("scenes")


def test_pipeline_config_names_the_denoiser():
    assert PipelineConfig().denoiser == "unet"                    # old pipeline.json files: the UNet
    with pytest.raises(ValueError, match="denoiser must be one of unet, dit, got 'vit'"):
        PipelineConfig(denoiser="vit")


def test_fit_tiny_writes_a_loadable_flow_folder(tmp_path, capsys):
    pipe = flow.fit("tiny", out_dir=tmp_path / "w", run_dir=tmp_path / "runs", steps=3)
    folder = tmp_path / "w" / "flow"
    assert (folder / "training.json").exists() and (tmp_path / "runs" / "flow" / "metrics.jsonl").exists()
    loaded = LatentDiffusionPipeline.from_pretrained(folder)
    assert loaded.is_flow and isinstance(loaded.unet, DiT) and loaded.unet.config.attention == "cross"
    assert pipe(PROMPTS, num_steps=2).shape == (2, 3, 32, 32)
    unet_eps = flow.job("tiny", run_dir=None, denoiser="unet", objective="eps")
    assert type(unet_eps.model).__name__ == "UNet" and flow.make_pipeline(unet_eps, unet_eps.model,
                                                                          clip_x0=5.0).samplers[0] == "ddim"
    dit_v = flow.job("tiny", run_dir=None, denoiser="dit-joint", objective="v")
    v_pipe = flow.make_pipeline(dit_v, dit_v.model, clip_x0=5.0)
    assert v_pipe.diffusion.prediction == "v" and v_pipe.samplers[0] == "ddim"
    assert torch.isfinite(dit_v.loss_fn(dit_v.model, dit_v.sample_batch(2, torch.Generator().manual_seed(0), "cpu")))
    with pytest.raises(ValueError, match="denoiser must be one of unet, dit-cross, dit-joint"):
        flow.job("tiny", run_dir=None, denoiser="transformer")
    with pytest.raises(ValueError, match="timestep_sampling must be one of uniform, logit_normal"):
        flow.job("tiny", run_dir=None, timestep_sampling="cosine")


def test_compare_one_cell_and_table(tmp_path):
    cfg = compare.CompareConfig(steps=2, batch_size=4, warmup_steps=1, latent_pool=8, sweep_steps=(1, 2),
                                sweep_captions=4, full_steps=0, sample_captions=2, sample_steps=(2,), timing_rounds=3)
    out = compare.compare_denoisers(cfg, ["dit-cross/flow-uniform"], json_path=tmp_path / "c.json")
    row = out["cells"]["dit-cross/flow-uniform"]
    assert row["timestep_sampling"] == "uniform" and row["sampler"] == "euler" and row["images_seen"] == 8
    assert row["gflops_per_step"] > 0 and set(row["sweep"]) == {"1", "2"}
    assert (tmp_path / "c_samples.safetensors").exists()
    assert set(out["timing"]) >= {"unet", "dit-cross", "dit-joint"} and out["timing"]["unet"]["ms_per_step"] > 0
    assert "dit-cross/flow-uniform (euler)" in compare.markdown_table(out)
    with pytest.raises(ValueError, match="unknown cell 'dit/flow'"):
        compare.parse_cell("dit/flow")


def test_compare_equal_minutes_gives_the_faster_denoiser_more_steps(tmp_path, monkeypatch):
    cfg = compare.CompareConfig(batch_size=4, warmup_steps=5, latent_pool=8, sweep_steps=(1,), sweep_captions=2,
                                full_steps=0, sample_captions=1, sample_steps=(1,))
    measured = {"unet": {"ms_per_step": 1000.0, "images_per_second": 4.0},   # as if measured in turns
                "dit-cross": {"ms_per_step": 500.0, "images_per_second": 8.0}}
    monkeypatch.setattr(compare, "interleaved_timing", lambda cfg, sample_batch: measured)
    out = compare.compare_denoisers(cfg, ["unet/flow", "dit-cross/eps"], json_path=tmp_path / "m.json",
                                    minutes=0.05)                 # 3 s: 3 UNet steps, 6 DiT steps
    unet, dit = out["cells"]["unet/flow"], out["cells"]["dit-cross/eps"]
    assert (unet["steps"], dit["steps"]) == (3, 6) and (unet["images_seen"], dit["images_seen"]) == (12, 24)
    assert unet["budget_ms_per_step"] == 1000.0 and dit["budget_minutes"] == 0.05 and dit["warmup_steps"] == 1
    assert out["config"]["minutes"] == 0.05 and out["config"]["steps"] is None and out["timing"] == measured
    assert "| 6 | 24 |" in compare.markdown_table(out)
    assert compare.steps_for_minutes(2, 124.1, 50) == (966, 50)     # floor(120 s / 0.1241 s), warm-up kept
    assert compare.steps_for_minutes(0.02, 60.0, 50) == (20, 2)


def test_cli_generate_with_the_wrong_sampler(pipe, tmp_path, capsys):
    pipe.save_pretrained(tmp_path, name="flow")
    code = main(["generate", "a red circle", "-n", "1", "--steps", "2", "--weights", str(tmp_path / "flow"),
                 "--sampler", "ddim", "--out", str(tmp_path / "x.png")])
    assert code == 2 and "sampler must be one of euler, heun" in capsys.readouterr().err


SHIPPED = (PACKAGE_WEIGHTS / "flow" / "pipeline.json").exists()


@pytest.mark.skipif(not SHIPPED, reason="shipped flow weights not trained yet")
def test_shipped_flow_weights_beat_chance():
    pipe = LatentDiffusionPipeline.from_pretrained("flow")
    assert pipe.is_flow and pipe.samplers[0] == "euler"
    labels = shapes.split_labels("train")[torch.randperm(270, generator=torch.Generator().manual_seed(0))[:12]]
    images = pipe([shapes.caption(l) for l in labels], num_steps=8, guidance_scale=3.0, seed=0)
    result = grade_conditional(images, labels)
    # chance is 1/6 for color, 1/9 for position, 1/324 for all four
    assert result["color"] >= 0.75 and result["position"] >= 0.75 and result["all_four"] >= 0.5, result


def test_compare_keeps_other_cells_and_refuses_a_mixed_budget(tmp_path, monkeypatch):
    path = tmp_path / "c.json"
    path.write_text('{"config": {"steps": 1}, "cells": {"unet/eps": {}}}')
    with pytest.raises(ValueError, match="another budget"):
        compare.compare_denoisers(compare.QUICK, [], json_path=path)
    assert "unet/eps" in path.read_text()                          # nothing was overwritten
