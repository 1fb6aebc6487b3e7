"""Tests for minildm.pipeline: the text-conditioned latent diffusion pipeline.

Most tests use a pipeline of tiny, randomly initialised parts (seconds on one
core); the last ones load the shipped weights when they exist.
"""
import argparse
import json
import math

import pytest
import torch

from minildm import inputs, pipeline
from minildm.clip import MiniCLIP
from minildm.recipes import ldm
from minildm.recipes.clip import PRESETS as CLIP_PRESETS
from minildm.recipes.vae import PRESETS as VAE_PRESETS
from minildm.data import shapes
from minildm.data.judge import grade_conditional
from minildm.objectives import DiffusionConfig
from minildm.pipeline import LatentDiffusionPipeline, PipelineConfig
from minildm.samplers import DDIMSampler, sample
from minildm.schedule import start_timestep
from minildm.text import PromptError
from minildm.unet import UNet
from minildm.vae import TinyVAE
from minildm.weights_io import PACKAGE_WEIGHTS, WeightsError

torch.set_num_threads(1)
PROMPTS = ["a large red circle in the top left", "a small blue square at the bottom"]


def tiny_pipeline(seed: int = 0) -> LatentDiffusionPipeline:
    """Random tiny parts; the UNet's zero-initialised output layer is randomised so eps != 0."""
    torch.manual_seed(seed)
    vae = TinyVAE(VAE_PRESETS["tiny"].model)
    clip = MiniCLIP(CLIP_PRESETS["tiny"].model)
    config = ldm.PRESETS["tiny"].model
    unet = UNet(type(config)(**{**config.__dict__, "context_dim": clip.config.text_width}))
    torch.nn.init.normal_(unet.conv_out.weight, std=0.05)
    for block in unet.modules():  # let the text reach the output
        if hasattr(block, "to_out"):
            torch.nn.init.normal_(block.to_out.weight, std=0.05)
    return LatentDiffusionPipeline(vae, clip, unet, PipelineConfig())


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


def test_text2img_shape_range_and_seed(pipe):
    x = pipe(PROMPTS, num_steps=3, seed=0)
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32
    assert x.min() >= 0 and x.max() <= 1
    assert torch.equal(x, pipe(PROMPTS, num_steps=3, seed=0))        # same seed, same images
    assert not torch.allclose(x, pipe(PROMPTS, num_steps=3, seed=1))  # another seed, others


def test_prompt_changes_the_image(pipe):
    a = pipe("a large red circle in the top left", num_steps=3, seed=0, guidance_scale=5.0)
    b = pipe("a small cyan triangle at the bottom", num_steps=3, seed=0, guidance_scale=5.0)
    assert (a - b).abs().max() > 1e-4


def test_guidance_one_is_the_conditional_prediction(pipe):
    """w = 1: eps_u + 1 * (eps_c - eps_u) = eps_c, so sampling equals a plain conditional loop."""
    context, mask = pipe.encode_prompts(PROMPTS)
    zT = torch.stack([torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(7 + i))  # image i: seed + i
                      for i in range(2)])
    sampler = DDIMSampler(pipe.schedule, num_steps=4, clip_x0=False, first_timestep=start_timestep(pipe.schedule))
    z0 = sample(lambda x, t: pipe.unet(x, t, context, mask), sampler, zT, progress=False)
    expected = pipe.decode_latents(z0)
    assert torch.allclose(pipe(PROMPTS, num_steps=4, guidance_scale=1.0, seed=7), expected, atol=1e-5)
    # w = 0 is the unconditional model: the prompt no longer matters
    u1 = pipe(PROMPTS, num_steps=4, guidance_scale=0.0, seed=7)
    u2 = pipe(["a small green triangle in the center"] * 2, num_steps=4, guidance_scale=0.0, seed=7)
    assert torch.allclose(u1, u2, atol=1e-5)


def test_sampler_clips_the_implied_z0_to_the_saved_range(pipe):
    """Latents are clipped to diffusion.json's clip_x0 (not to [-1, 1]) by the sampler itself."""
    eps = 3 * torch.randn(4, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    zt = torch.randn(4, 4, 8, 8)
    loose = DDIMSampler(pipe.schedule, num_steps=10, clip_x0=None)
    tight = DDIMSampler(pipe.schedule, num_steps=10, clip_x0=5.0)
    assert loose.step(eps, 999, zt)[1].abs().max() > 1e3                  # t = 999: z0_pred explodes
    assert tight.step(eps, 999, zt)[1].abs().max() <= 5.0
    pipe.diffusion.clip_x0 = 5.0
    assert pipe.make_sampler("ddim", 10).clip_x0 == 5.0 and pipe.make_sampler("ddpm", 10).clip_x0 == 5.0
    pipe.diffusion.clip_x0 = 0.0                                          # 0 = off
    assert pipe.make_sampler("ddim", 10).clip_x0 is None


def test_negative_prompt(pipe):
    default = pipe(PROMPTS, num_steps=3, seed=0)
    assert torch.allclose(default, pipe(PROMPTS, num_steps=3, seed=0, negative_prompt=""), atol=1e-6)
    other = pipe(PROMPTS, num_steps=3, seed=0, negative_prompt="a red circle", guidance_scale=5.0)
    assert not torch.allclose(default, other)


def test_trajectory(pipe):
    x, frames = pipe(PROMPTS, num_steps=5, seed=0, return_trajectory=True)
    assert frames.shape == (6, 2, 3, 32, 32)                  # zT, then one per step
    assert torch.allclose(frames[-1], x)


def test_ddpm_sampler_runs(pipe):
    small = LatentDiffusionPipeline(pipe.vae, pipe.clip, pipe.unet, PipelineConfig(),
                                    diffusion=DiffusionConfig(num_timesteps=50))
    x = small(PROMPTS[:1], sampler="ddpm", seed=0)            # all 50 steps
    assert x.shape == (1, 3, 32, 32)


def test_img2img_strength_ends(pipe):
    images = shapes.render(shapes.all_labels()[[0, 200]], 32, seed=0)
    keep = pipe.img2img(images, PROMPTS, strength=0.0, num_steps=10, seed=0)
    assert torch.allclose(keep, pipe.decode_latents(pipe.encode_images(images)), atol=1e-6)
    # strength 1 starts from (almost) pure noise: the input hardly matters
    a = pipe.img2img(images, PROMPTS, strength=1.0, num_steps=10, seed=3)
    b = pipe.img2img(images.flip(0), PROMPTS, strength=1.0, num_steps=10, seed=3)
    assert (a - b).abs().max() < 0.1
    # in between, the image matters; one prompt is broadcast over all images
    c = pipe.img2img(images, PROMPTS[0], strength=0.5, num_steps=10, seed=3)
    d = pipe.img2img(images.flip(0), PROMPTS[0], strength=0.5, num_steps=10, seed=3)
    assert c.shape == (2, 3, 32, 32) and (c - d).abs().max() > 1e-3
    assert pipe.img2img(images[0], PROMPTS[0], strength=0.3, num_steps=4).shape == (1, 3, 32, 32)


def test_save_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "p", dtype=torch.float32)
    assert sorted(p.name for p in (tmp_path / "p").iterdir()) == ["clip", "ldm", "vae"]
    for folder in (tmp_path / "p", tmp_path / "p" / "ldm"):   # the pipeline folder or its ldm/
        loaded = LatentDiffusionPipeline.from_pretrained(folder)
        assert torch.equal(loaded(PROMPTS, num_steps=3, seed=0), pipe(PROMPTS, num_steps=3, seed=0))
    pipe.save_pretrained(tmp_path / "half")                     # the default: float16 weights, half the size
    size = lambda f: (tmp_path / f / "ldm" / "model.safetensors").stat().st_size
    assert size("half") < 0.6 * size("p")
    loaded = LatentDiffusionPipeline.from_pretrained(tmp_path / "half")
    assert next(loaded.unet.parameters()).dtype == torch.float32
    assert (loaded(PROMPTS, num_steps=3, seed=0) - pipe(PROMPTS, num_steps=3, seed=0)).abs().max() < 0.02


def test_weights_errors(pipe, tmp_path):
    with pytest.raises(WeightsError, match="not found"):
        LatentDiffusionPipeline.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(WeightsError, match="pipeline.json"):
        LatentDiffusionPipeline.from_pretrained(tmp_path / "empty")
    pipe.save_pretrained(tmp_path / "p")
    weights = tmp_path / "p" / "ldm" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])           # truncated download
    with pytest.raises(WeightsError, match="model.safetensors"):
        LatentDiffusionPipeline.from_pretrained(tmp_path / "p")


def test_fingerprint_mismatch_warns(pipe, tmp_path):
    pipe.config.vae_fingerprint = "0" * 16
    try:
        pipe.save_pretrained(tmp_path / "p")
    finally:
        pipe.config.vae_fingerprint = ""
    with pytest.warns(UserWarning, match="other VAE weights"):
        LatentDiffusionPipeline.from_pretrained(tmp_path / "p")


def test_a_decoder_tuned_vae_keeps_the_pipelines_fingerprint(tmp_path):
    """pipeline.json names the VAE's *encoder* (its latent space): the shipped pipelines load without a
    warning after the decoder was re-tuned, and an older pipeline that names the whole file still loads."""
    import warnings
    for name in (None, "flow", "partial", "scenes"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            LatentDiffusionPipeline.from_pretrained(name)
    shipped = pipeline.PACKAGE_WEIGHTS / "vae"
    folder = tmp_path / "p"
    LatentDiffusionPipeline.from_pretrained().save_pretrained(folder)
    config = json.loads((folder / "ldm" / "pipeline.json").read_text())
    assert config["vae_fingerprint"] == pipeline.latent_fingerprint(shipped) != pipeline.fingerprint(shipped)
    config["vae_fingerprint"] = pipeline.fingerprint(shipped)             # the older, whole-file form
    (folder / "ldm" / "pipeline.json").write_text(json.dumps(config))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LatentDiffusionPipeline.from_pretrained(folder)


BAD_CALLS = [
    (dict(prompts=123), PromptError, "str or a list"),
    (dict(prompts=[]), PromptError, "empty"),
    (dict(prompts=["a red circle", 5]), PromptError, "must be a str"),
    (dict(prompts="a purple circle"), PromptError, "unknown word 'purple'"),
    (dict(prompts="a " * 20), PromptError, "at most"),
    (dict(num_steps=0), ValueError, "num_steps must be in 1..1000"),
    (dict(num_steps=1001), ValueError, "num_steps must be in 1..1000"),
    (dict(num_steps=2.5), ValueError, "whole number"),
    (dict(num_steps=True), ValueError, "whole number"),
    (dict(guidance_scale=-1.0), ValueError, "guidance_scale must be a finite number in"),
    (dict(guidance_scale=math.nan), ValueError, "guidance_scale"),
    (dict(guidance_scale=math.inf), ValueError, "guidance_scale"),
    (dict(guidance_scale=51), ValueError, "guidance_scale"),
    (dict(guidance_scale="3"), ValueError, "must be a number"),
    (dict(seed=-1), ValueError, "seed must be in"),
    (dict(seed=1.5), ValueError, "seed must be a whole number"),
    (dict(sampler="euler"), ValueError, "sampler must be one of ddim, ddpm"),
    (dict(negative_prompt=["", ""], prompts=["a red circle"] * 3), ValueError, "one negative prompt"),
    (dict(negative_prompt="a purple circle"), PromptError, "purple"),
]


@pytest.mark.parametrize("kwargs, error, message", BAD_CALLS)
def test_bad_text2img_inputs(pipe, kwargs, error, message):
    kwargs = {"prompts": PROMPTS[0], "num_steps": 2, **kwargs}
    with pytest.raises(error, match=message):
        pipe(**kwargs)


GOOD = shapes.render(shapes.all_labels()[:2], 32, seed=0)
BAD_IMAGES = [
    (GOOD.numpy(), "torch.Tensor|tensor"),
    (GOOD[:, :1], "got shape"),
    (torch.rand(2, 3, 64, 64), r"\(N, 3, 32, 32\)"),
    ((GOOD * 255).to(torch.uint8), "dtype torch.uint8"),
    (GOOD * 2 - 1, r"values in \[0, 1\]"),
    (torch.full((1, 3, 32, 32), math.nan), "NaN"),
    (torch.zeros(0, 3, 32, 32), "empty"),
]


@pytest.mark.parametrize("images, message", BAD_IMAGES)
def test_bad_images(pipe, images, message):
    with pytest.raises(ValueError, match=message):
        pipe.img2img(images, PROMPTS[0], num_steps=2)


@pytest.mark.parametrize("strength", [-0.1, 1.1, math.nan, "0.5", None])
def test_bad_strength(pipe, strength):
    with pytest.raises(ValueError, match="strength"):
        pipe.img2img(GOOD, PROMPTS[0], strength=strength, num_steps=2)


def test_images_prompts_count_mismatch(pipe):
    with pytest.raises(ValueError, match="2 images and 3 prompts"):
        pipe.img2img(GOOD, [PROMPTS[0]] * 3, num_steps=2)


def test_load_image(tmp_path):
    from PIL import Image
    inputs.save_images(GOOD[:1], tmp_path / "one.png")
    image = inputs.load_image(tmp_path / "one.png")
    assert image.shape == (1, 3, 32, 32) and (image - GOOD[:1]).abs().max() <= 1 / 255 + 1e-6
    with pytest.raises(ValueError, match="not found"):
        inputs.load_image(tmp_path / "missing.png")
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ValueError, match="cannot read"):
        inputs.load_image(tmp_path / "notes.png")
    Image.new("RGB", (64, 48)).save(tmp_path / "big.png")
    with pytest.raises(ValueError, match="64x48 pixels.*32x32"):
        inputs.load_image(tmp_path / "big.png")
    Image.new("L", (32, 32), 255).save(tmp_path / "gray.png")   # grayscale is converted to RGB
    assert inputs.load_image(tmp_path / "gray.png").shape == (1, 3, 32, 32)


def test_cli_commands(pipe, tmp_path, capsys):
    from PIL import Image
    from minildm.__main__ import cmd_generate, main
    pipe.save_pretrained(tmp_path / "p")
    args = argparse.Namespace(prompt=PROMPTS[0], num_images=3, steps=2, guidance=3.0, sampler="ddim",
                              seed=5, weights=str(tmp_path / "p"), out=str(tmp_path / "grid.png"), device="auto")
    cmd_generate(args)
    assert "seed 5" in capsys.readouterr().out
    assert Image.open(tmp_path / "grid.png").size == (3 * 34 + 2, 36)   # 3 images, 2-pixel gaps
    args = argparse.Namespace(prompt=PROMPTS[0], num_images=1, steps=2, guidance=3.0, sampler="ddim",
                              seed=5, weights=str(tmp_path / "p"), out=str(tmp_path / "one.png"), device="auto")
    cmd_generate(args)
    assert Image.open(tmp_path / "one.png").size == (32, 32)            # one image: no border
    assert main(["img2img", str(tmp_path / "one.png"), PROMPTS[1], "--strength", "0.5", "--steps", "2",
                 "--weights", str(tmp_path / "p"), "--out", str(tmp_path / "edit.png")]) == 0
    assert Image.open(tmp_path / "edit.png").size == (32, 32)
    capsys.readouterr()
    # bad input: exit code 2 and one clear line, no traceback
    for argv, message in [
        (["generate", "a purple circle", "--weights", str(tmp_path / "p")], "unknown word 'purple'"),
        (["generate", PROMPTS[0], "--guidance", "nan", "--weights", str(tmp_path / "p")], "guidance"),
        (["img2img", str(tmp_path / "one.png"), PROMPTS[0], "--strength", "1.5",
          "--weights", str(tmp_path / "p")], "strength"),
        (["img2img", str(tmp_path / "grid.png"), PROMPTS[0], "--weights", str(tmp_path / "p")], "32x32"),
        (["img2img", str(tmp_path / "nope.png"), PROMPTS[0], "--weights", str(tmp_path / "p")], "not found"),
        (["generate", PROMPTS[0], "--weights", str(tmp_path / "nowhere")], "not found"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (argv, err)


def test_prompt_dropout_and_pool(pipe):
    z0, labels = ldm.encode_pool(pipe.vae, 64, seed=0)
    assert z0.shape == (64, 4, 8, 8) and labels.shape == (64, 4)
    assert torch.allclose(z0[:2], pipe.vae.encode(shapes.sample_batch(64, "train", seed=0)[0][:2]), atol=1e-5)
    empty = pipe.clip.text_hidden_states(ldm.tokenize([""]))[0]          # (L, D)
    for pool_size in (0, 64):
        batch_fn = ldm.latent_batch_fn(pipe.vae, pipe.clip, prompt_dropout=0.5, pool_size=pool_size)
        z0, context, mask = batch_fn(400, torch.Generator().manual_seed(0), "cpu")
        assert z0.shape == (400, 4, 8, 8) and context.shape[:2] == mask.shape == (400, 16)
        dropped = (context - empty).abs().amax(dim=(1, 2)) < 1e-5
        assert 0.4 < dropped.float().mean() < 0.6                             # about half are ""
        assert (mask.sum(1)[dropped] == 2).all()                               # <bos> <eos> only
        again = batch_fn(400, torch.Generator().manual_seed(0), "cpu")[0]
        assert torch.equal(z0, again)                                          # the generator decides
        if pool_size:
            assert len(torch.unique(z0, dim=0)) <= 64                          # drawn from the pool


def test_fit_tiny(tmp_path, capsys):
    torch.manual_seed(0)
    TinyVAE(VAE_PRESETS["tiny"].model).save_pretrained(tmp_path / "w" / "vae")
    MiniCLIP(CLIP_PRESETS["tiny"].model).save_pretrained(tmp_path / "w" / "clip")
    fitted = ldm.fit("tiny", out_dir=tmp_path / "w", run_dir=tmp_path / "runs", steps=4)
    assert "wrote" in capsys.readouterr().out
    loaded = LatentDiffusionPipeline.from_pretrained(tmp_path / "w")
    assert loaded.config.vae_fingerprint == pipeline.latent_fingerprint(tmp_path / "w" / "vae") != ""   # its encoder
    assert loaded.config.clip_fingerprint == pipeline.fingerprint(tmp_path / "w" / "clip") != ""
    assert (loaded(PROMPTS, num_steps=2) - fitted(PROMPTS, num_steps=2)).abs().max() < 0.02  # float16 file
    assert (tmp_path / "runs" / "ldm" / "metrics.jsonl").exists()
    with pytest.raises(ValueError, match="unknown preset"):
        ldm.fit("huge", out_dir=tmp_path / "w")


SHIPPED = (PACKAGE_WEIGHTS / "ldm" / "pipeline.json").exists()


@pytest.mark.skipif(not SHIPPED, reason="shipped LDM weights not trained yet")
def test_shipped_weights_beat_chance():
    pipe = LatentDiffusionPipeline.from_pretrained()
    assert "vae" not in [p.name for p in (PACKAGE_WEIGHTS / "ldm").iterdir()]   # nothing stored twice
    labels = shapes.split_labels("train")[torch.randperm(270, generator=torch.Generator().manual_seed(0))[:12]]
    images = pipe([shapes.caption(l) for l in labels], num_steps=20, guidance_scale=3.0, seed=0)
    result = grade_conditional(images, labels)
    # chance is 1/6 for color, 1/9 for position, 1/324 for all four
    assert result["color"] >= 0.75 and result["position"] >= 0.75 and result["all_four"] >= 0.5, result


# ----------------------------------------------------------------------------
# Random input: only valid images or a clear ValueError, never a crash inside torch

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

ANYTHING = st.one_of(st.none(), st.booleans(), st.integers(-10 ** 6, 10 ** 6),
                     st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8))
WORDS = st.sampled_from(["a", "large", "red", "circle", "in", "the", "top", "left", "purple", "",
                         "Big", "BLUE.", "square,", "at", "bottom", "ñ", "\n"])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(words=st.lists(WORDS, max_size=18), steps=ANYTHING, guidance=ANYTHING, seed=ANYTHING)
def test_random_text2img_input(pipe, words, steps, guidance, seed):
    try:
        x = pipe(" ".join(words), num_steps=steps, guidance_scale=guidance, seed=seed)
    except ValueError as err:  # PromptError is a ValueError
        assert str(err)
    else:
        assert x.shape == (1, 3, 32, 32) and torch.isfinite(x).all()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(strength=ANYTHING, shape=st.lists(st.integers(0, 40), min_size=2, max_size=5),
       scale=st.floats(-2, 300, allow_nan=False), dtype=st.sampled_from([torch.float32, torch.float64,
                                                                          torch.uint8, torch.int64]))
def test_random_img2img_input(pipe, strength, shape, scale, dtype):
    images = (torch.rand(*shape) * scale).to(dtype)
    try:
        x = pipe.img2img(images, PROMPTS[0], strength=strength, num_steps=2)
    except ValueError as err:
        assert str(err)
    else:
        assert x.shape[1:] == (3, 32, 32) and torch.isfinite(x).all()



def test_evaluate_ldm_takes_another_sampler():
    """evaluate(sampler=...) grades the same captions with another sampler and says which (quick: 36 captions)."""
    pytest.importorskip("diffusers", reason="pip install minildm[diffusers]")
    result = ldm.evaluate(quick=True, sampler="euler-discrete")
    assert result["sampler"] == "euler-discrete 20 steps" and result["images"] == 36
    assert 0.5 <= result["seen"]["all_four"] <= 1


def test_ddim_starts_where_lambda_min_says(pipe):
    """The pipeline's DDIM starts at t = 979 (log-SNR >= LAMBDA_MIN), not at 999 where alpha_bar ~ 2e-9;
    pipe.lambda_min = None gives the textbook start; a bad value or too many steps: one clear error."""
    assert pipe.lambda_min == -3.5 and float(pipe.schedule.alpha_bar[999]) < 1e-8
    assert pipe.make_sampler("ddim", 50).timesteps[:2].tolist() == [979, 959]
    assert int(pipe.make_sampler(None, 10).timesteps[-1]) == 97
    pipe.lambda_min = None
    try:
        assert pipe.make_sampler("ddim", 50).timesteps[:2].tolist() == [999, 979]
        pipe.lambda_min = "early"
        with pytest.raises(ValueError, match=r"pipe.lambda_min \(or None\) must be a number"):
            pipe.make_sampler("ddim", 50)
    finally:
        pipe.lambda_min = -3.5
    with pytest.raises(ValueError, match="num_steps must be at most 980 for DDIM"):
        pipe(PROMPTS, num_steps=1000)
    assert pipe.make_sampler("ddpm", 1000).timesteps[0] == 999                 # DDPM walks all T steps
