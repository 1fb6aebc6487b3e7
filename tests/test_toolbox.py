"""Tests for the Stable Diffusion toolbox of lesson 09: inpainting, attention maps, DDIM
inversion and prompt-to-prompt editing, and diffusers' samplers behind our pipeline.

Most tests use a pipeline of tiny random parts (seconds); the last few load the shipped
weights (a few seconds each).
"""
import math

import numpy as np
import pytest
import torch

from minildm import __main__ as cli
from minildm import attention_maps, ecosystem, editing
from minildm.clip import MiniCLIP
from minildm.data import shapes
from minildm.data.judge import judge
from minildm.inputs import check_masks, load_image, save_images
from minildm.objectives import DiffusionConfig
from minildm.pipeline import LatentDiffusionPipeline, PipelineConfig
from minildm.recipes import ldm
from minildm.recipes import sampler_eval, toolbox
from minildm.recipes.clip import PRESETS as CLIP_PRESETS
from minildm.recipes.vae import PRESETS as VAE_PRESETS
from minildm.samplers import DDIMInversion, DDIMSampler, sample
from minildm.text import PromptError
from minildm.unet import UNet
from minildm.vae import TinyVAE
from minildm.weights_io import PACKAGE_WEIGHTS

torch.set_num_threads(1)
PROMPTS = ["a large red circle in the top left", "a small blue square at the bottom"]
SHIPPED = (PACKAGE_WEIGHTS / "ldm" / "pipeline.json").exists()
shipped_only = pytest.mark.skipif(not SHIPPED, reason="shipped LDM weights not trained yet")
try:
    import diffusers  # noqa: F401  (the dev extra installs it)
    HAVE_DIFFUSERS = True
except ImportError:
    HAVE_DIFFUSERS = False
needs_diffusers = pytest.mark.skipif(not HAVE_DIFFUSERS, reason="pip install minildm[diffusers]")


def tiny_pipeline(seed: int = 0) -> LatentDiffusionPipeline:
    """Random tiny parts, with the zero-initialised output layers randomised so the text matters."""
    torch.manual_seed(seed)
    vae, clip = TinyVAE(VAE_PRESETS["tiny"].model), MiniCLIP(CLIP_PRESETS["tiny"].model)
    config = ldm.PRESETS["tiny"].model
    unet = UNet(type(config)(**{**config.__dict__, "context_dim": clip.config.text_width}))
    torch.nn.init.normal_(unet.conv_out.weight, std=0.05)
    for block in unet.modules():
        if hasattr(block, "to_out"):
            torch.nn.init.normal_(block.to_out.weight, std=0.05)
    return LatentDiffusionPipeline(vae, clip, unet, PipelineConfig(), diffusion=DiffusionConfig(clip_x0=8.0))


@pytest.fixture(scope="module")
def pipe():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def shipped():
    return LatentDiffusionPipeline.from_pretrained()


def rendered(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = shapes.sample_labels(n, "train", rng)
    return shapes.render(labels, 32, rng), labels


def psnr(a, b) -> float:
    return 10 * math.log10(1 / float(((a - b) ** 2).mean()))


# ----------------------------------------------------------------------------
# Inpainting

def test_inpaint_keeps_unmasked_pixels_exactly(pipe):
    images, _ = rendered(2)
    masks = toolbox.box_masks(images)                                       # (2, 1, 32, 32) bool
    out = pipe.inpaint(images, masks, PROMPTS, num_steps=3)
    assert out.shape == (2, 3, 32, 32) and out.dtype == torch.float32 and 0 <= out.min() <= out.max() <= 1
    keep = ~masks.expand_as(images)
    assert torch.equal(out[keep], images[keep])                             # pasted back
    assert (out[~keep] - images[~keep]).abs().max() > 0                     # and the box was repainted


def test_inpaint_zero_mask_returns_the_input(pipe):
    images, _ = rendered(2)
    zeros = torch.zeros(2, 32, 32)
    assert torch.equal(pipe.inpaint(images, zeros, PROMPTS, num_steps=3), images)
    # without the paste the blend alone gives the VAE round trip: the last step restores z0 itself
    blend = pipe.inpaint(images, zeros, PROMPTS, num_steps=3, paste_back=False)
    assert torch.allclose(blend, pipe.decode_latents(pipe.encode_images(images)), atol=1e-6)


def test_inpaint_full_mask_is_text2img(pipe):
    """Mask 1 everywhere: nothing is known, so inpainting is text to image from the same noise."""
    images, _ = rendered(2)
    out = pipe.inpaint(images, torch.ones(2, 1, 32, 32, dtype=torch.bool), PROMPTS, num_steps=4, seed=3)
    assert torch.allclose(out, pipe(PROMPTS, num_steps=4, seed=3), atol=1e-6)


def test_known_region_blend_of_one_step(pipe):
    """After the step to prev_t the known region is q_sample(z0, prev_t, noise); inside the mask xt stays."""
    sampler = pipe.make_sampler("ddim", 10)
    z0, noise, xt = torch.randn(3, 1, 4, 8, 8).unbind(0)
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., :4] = 1
    first = int(sampler.timesteps[0])
    blended = editing.KnownRegion(sampler, z0, mask, noise)(0, first, xt, None)
    t = sampler.prev_timestep(first)
    alpha_bar = float(pipe.schedule.alpha_bar[t])
    expected_known = alpha_bar ** 0.5 * z0 + (1 - alpha_bar) ** 0.5 * noise
    assert torch.allclose(blended[..., :4], xt[..., :4])
    assert torch.allclose(blended[..., 4:], expected_known[..., 4:], atol=1e-6)
    last = editing.KnownRegion(sampler, z0, mask, noise)(9, int(sampler.timesteps[-1]), xt, None)
    assert torch.equal(last[..., 4:], z0[..., 4:])                          # t = -1: z0 itself


def test_latent_mask_marks_any_repainted_pixel():
    masks = torch.zeros(1, 1, 32, 32)
    masks[0, 0, 5, 9] = 1                                                   # one pixel in latent cell (1, 2)
    latent = editing.latent_mask(masks, 8)
    assert latent.shape == (1, 1, 8, 8) and latent.sum() == 1 and latent[0, 0, 1, 2] == 1


@pytest.mark.parametrize("masks, message", [
    ([[0, 1]], "tensor"),
    (torch.zeros(2, 1, 32, 32, dtype=torch.long), "dtype"),
    (torch.zeros(2, 3, 32, 32), "shape"),
    (torch.zeros(2, 1, 16, 16), "shape"),
    (torch.full((2, 1, 32, 32), 0.5), "only 0 .keep. and 1 .repaint."),
    (torch.full((2, 1, 32, 32), float("nan")), "only 0 .keep. and 1 .repaint."),
    (torch.zeros(3, 1, 32, 32), "3 masks for 2 images"),
])
def test_bad_masks_give_clear_errors(pipe, masks, message):
    images, _ = rendered(2)
    with pytest.raises(ValueError, match=message):
        pipe.inpaint(images, masks, PROMPTS, num_steps=2)


def test_masks_accepted_forms():
    one = torch.zeros(32, 32, dtype=torch.bool)
    assert check_masks(one, 3).shape == (3, 1, 32, 32)                      # one mask for all
    assert check_masks(torch.ones(2, 32, 32), 2).dtype == torch.float32


def test_inpaint_bad_prompts_and_images(pipe):
    images, _ = rendered(2)
    masks = toolbox.box_masks(images)
    with pytest.raises(PromptError, match="unknown word 'purple'"):
        pipe.inpaint(images, masks, "a large purple circle in the top left", num_steps=2)
    with pytest.raises(ValueError, match="got 2 images and 3 prompts"):
        pipe.inpaint(images, masks, PROMPTS + PROMPTS[:1], num_steps=2)
    with pytest.raises(ValueError, match="values in \\[0, 1\\]"):
        pipe.inpaint(images * 2 - 1, masks, PROMPTS, num_steps=2)


def test_cli_inpaint(pipe, tmp_path):
    folder = pipe.save_pretrained(tmp_path / "pipe")
    images, _ = rendered(1)
    save_images(images, tmp_path / "in.png")
    save_images(toolbox.box_masks(images).float().expand(-1, 3, -1, -1), tmp_path / "mask.png")
    code = cli.main(["inpaint", str(tmp_path / "in.png"), str(tmp_path / "mask.png"), PROMPTS[1],
                     "--steps", "2", "--weights", str(folder), "--out", str(tmp_path / "out.png")])
    assert code == 0
    out, original = load_image(tmp_path / "out.png"), load_image(tmp_path / "in.png")
    keep = ~toolbox.box_masks(images).expand_as(images)
    assert torch.equal(out[keep], original[keep])
    assert cli.main(["inpaint", str(tmp_path / "in.png"), str(tmp_path / "nothere.png"), PROMPTS[1],
                     "--weights", str(folder)]) == 2


# ----------------------------------------------------------------------------
# Attention maps

def test_attention_maps_shape_and_sum(pipe):
    images, maps = pipe(PROMPTS, num_steps=3, return_attention=True)
    assert images.shape == (2, 3, 32, 32) and maps.shape == (2, 16, 8, 8)
    real = torch.tensor([[w != "<pad>" for w in attention_maps.token_words(p)] for p in PROMPTS])  # (2, 16)
    sums = maps.sum(dim=(2, 3))
    assert torch.allclose(sums[real], torch.ones(int(real.sum())), atol=1e-5)
    assert torch.equal(sums[~real], torch.zeros(int((~real).sum())))        # padding: no attention
    assert (maps >= 0).all()


def test_attention_capture_changes_nothing_and_is_removed(pipe):
    plain = pipe(PROMPTS, num_steps=3, seed=1)
    with_maps, _ = pipe(PROMPTS, num_steps=3, seed=1, return_attention=True)
    assert torch.allclose(plain, with_maps, atol=1e-3)     # explicit softmax vs the fused kernel: rounding
    assert all(m.store is None for m in pipe.unet.modules() if hasattr(m, "store"))
    images, frames, maps = pipe(PROMPTS, num_steps=2, return_trajectory=True, return_attention=True)
    assert frames.shape[:2] == (3, 2) and maps.shape == (2, 16, 8, 8)


def test_store_averages_layers_and_steps():
    """A 4x4 layer is upsampled (nearest) to 8x8; the maps average the layers' mean over calls."""
    store = attention_maps.AttentionStore(num_prompts=1, latent_size=8)
    coarse = torch.zeros(2, 1, 16, 3)                                       # (B, nh, 4x4 pixels, L)
    coarse[..., 1] = 1                                                      # every pixel looks at token 1
    fine = torch.zeros(2, 1, 64, 3)
    fine[:, :, 0, 2] = 1                                                    # pixel (0, 0) looks at token 2
    fine[:, :, 1:, 1] = 1
    for _ in range(2):                                                      # two steps
        assert store("coarse", coarse) is coarse and store("fine", fine) is fine
    maps = store.maps(layers="all")
    assert maps.shape == (1, 3, 8, 8) and store.resolutions() == [4, 8]
    assert maps[0, 2, 0, 0] == 1 and maps[0, 2].sum() == 1                  # token 2: all of it at (0, 0)
    assert torch.allclose(maps[0, 1].sum(), torch.tensor(1.0))
    assert torch.allclose(store.maps(layers=[0])[0, 1], torch.full((8, 8), 1 / 64))


def test_store_default_averages_the_layers_at_the_latents_resolution():
    """Of an 8x8 latent's 8x8, 4x4 and 2x2 layers the maps average the 8x8 ones by default;
    "half" adds the 4x4 ones, "all" every layer."""
    store = attention_maps.AttentionStore(num_prompts=1, latent_size=8)
    for side, token in ((8, 1), (4, 3), (2, 2), (2, 2), (4, 3), (8, 1)):     # down, middle, up
        weights = torch.zeros(1, 1, side * side, 4)
        weights[..., token] = 1
        store(f"layer {len(store.totals)}", weights)
    assert store.resolutions() == [8, 4, 2, 2, 4, 8]
    assert store.default_layers() == store.finest_layers() == [0, 5] and store.half_layers() == [0, 1, 4, 5]
    default = store.maps()
    assert torch.allclose(default[0, 1].sum(), torch.tensor(1.0))                 # the 8x8 layers' token
    assert default[0, 2].sum() == 0 and default[0, 3].sum() == 0                  # not the 4x4 or 2x2 ones
    assert torch.equal(store.maps(layers="finest"), default) and torch.equal(store.maps(layers=[0, 5]), default)
    half = store.maps(layers="half")
    assert torch.allclose(half[0, 3].sum(), torch.tensor(1.0)) and half[0, 2].sum() == 0
    assert torch.equal(half, store.maps(layers=[0, 1, 4, 5]))
    assert torch.allclose(store.maps(layers="all")[0, 2].sum(), torch.tensor(1.0))    # every layer: token 2 too
    for bad in ("coarse", "8x8", [], [6], [0.5]):
        with pytest.raises(ValueError, match="layers must be None, 'finest', 'half', 'all'"):
            store.maps(layers=bad)


def test_word_index_and_errors(pipe):
    assert attention_maps.word_index(PROMPTS[0], "red") == 3                # <bos> a large red
    with pytest.raises(ValueError, match="not a word of the prompt"):
        attention_maps.word_index(PROMPTS[0], "blue")


def test_injector_copies_the_source_rows_for_the_first_steps():
    injector = attention_maps.AttentionInjector(num_pairs=1, inject_steps=1)
    weights = torch.rand(4, 2, 16, 5)                                       # [uncond x2; source; target]
    injected = injector("layer", weights)
    assert torch.equal(injected[3], weights[2]) and torch.equal(injected[:3], weights[:3])
    injector.step_done(0, 999, None, None)
    assert injector("layer", weights) is weights                            # after inject_steps: untouched


# ----------------------------------------------------------------------------
# DDIM inversion and editing

def test_ddim_inversion_is_the_inverse_of_ddim():
    """With an eps that depends on t only, inversion and sampling use the same eps: exact round trip."""
    schedule = DiffusionConfig().make_schedule()
    eps_fn = lambda x, t: torch.sin(t.float() / 50)[:, None, None, None] * torch.ones_like(x)
    x0 = torch.randn(2, 4, 8, 8)
    for strength in (1.0, 0.6):
        inversion = DDIMInversion(schedule, 20, strength, clip_x0=None)
        assert inversion.timesteps.tolist() == DDIMSampler(schedule, 20).timesteps.flip(0).tolist()[:len(inversion)]
        xt = sample(eps_fn, inversion, x0, progress=False)
        back = sample(eps_fn, DDIMSampler(schedule, 20, clip_x0=None), xt, progress=False,
                      start_index=20 - len(inversion))
        assert torch.allclose(back, x0, atol=1e-3), strength
    with pytest.raises(ValueError, match="strength"):
        DDIMInversion(schedule, 20, 1.5)


def test_edit_with_the_same_prompt_and_injection_changes_nothing(pipe):
    """Prompt-to-prompt with source = target: the target rows take weights equal to their own."""
    images, labels = rendered(2)
    captions = [shapes.caption(l) for l in labels]
    plain = editing.edit(pipe, images, captions, captions, num_steps=4)
    injected = editing.edit(pipe, images, captions, captions, num_steps=4, inject_fraction=0.5)
    assert torch.allclose(plain, injected, atol=1e-5)
    assert all(m.store is None for m in pipe.unet.modules() if hasattr(m, "store"))


def test_edit_bad_inputs(pipe):
    images, labels = rendered(2)
    with pytest.raises(ValueError, match="inject_fraction"):
        editing.edit(pipe, images, PROMPTS, PROMPTS, inject_fraction=2.0)
    with pytest.raises(ValueError, match="2 images and 3 prompts"):
        editing.edit(pipe, images, PROMPTS, PROMPTS + PROMPTS[:1], num_steps=2)
    with pytest.raises(ValueError, match="strength"):
        editing.invert(pipe, images, PROMPTS, strength=-0.1)


# ----------------------------------------------------------------------------
# Diffusers' samplers

@needs_diffusers
def test_adapter_matches_our_ddim(pipe):
    """diffusers' DDIMScheduler (trailing timesteps, eta 0) on our betas = our DDIMSampler.

    Tolerance: diffusers keeps alphas_cumprod in float32, we keep alpha_bar in float64, so
    the latents agree to ~1e-4 of their size, not bit for bit.
    """
    context, mask = pipe.encode_prompts(PROMPTS)
    eps_fn = lambda x, t: pipe.unet(x, t, context, mask)
    zT = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for num_steps in (5, 20):
        ours = DDIMSampler(pipe.schedule, num_steps, clip_x0=8.0)
        theirs = ecosystem.DiffusersSampler("ddim-diffusers", pipe.diffusion, num_steps, clip_x0=8.0,
                                            lambda_min=None)                # start at 999, as our DDIM
        assert theirs.timesteps.tolist() == ours.timesteps.tolist()
        a, b = sample(eps_fn, ours, zT, progress=False), sample(eps_fn, theirs, zT, progress=False)
        assert torch.allclose(a, b, atol=1e-4 * float(a.abs().max())), num_steps
        # Euler on x0 + sigma eps with an eps model is DDIM (eta 0) in other coordinates
        euler = sample(eps_fn, ecosystem.DiffusersSampler("euler-discrete", pipe.diffusion, num_steps,
                                                          clip_x0=8.0, lambda_min=None), zT, progress=False)
        assert torch.allclose(a, euler, atol=1e-3 * float(a.abs().max())), num_steps


@needs_diffusers
def test_scheduler_is_configured_from_our_diffusion_config():
    diffusion = DiffusionConfig(schedule="linear", num_timesteps=1000, prediction="v")
    scheduler = ecosystem.make_scheduler("dpm++2m", diffusion, 10, lambda_min=None)
    assert torch.equal(scheduler.betas, diffusion.make_schedule().beta)     # our betas, exactly
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.timesteps.tolist() == DDIMSampler(diffusion.make_schedule(), 10).timesteps.tolist()
    with pytest.raises(ValueError, match="unknown diffusers sampler"):
        ecosystem.make_scheduler("plms", diffusion, 10)


def test_trailing_timesteps_are_our_ddims_from_999():
    schedule = DiffusionConfig().make_schedule()
    for num_steps in (5, 10, 20, 50, 1000):
        assert ecosystem.trailing_timesteps(999, num_steps).tolist() == DDIMSampler(schedule, num_steps).timesteps.tolist()
    assert ecosystem.trailing_timesteps(995, 10).tolist() == [995, 895, 796, 696, 597, 497, 397, 298, 198, 99]


def test_solvers_start_where_lambda_reaches_lambda_min():
    """Cosine: lambda_999 = -9.9, so the solvers start at 979, the last t with lambda >= -3.5
    (995 at the solvers' authors' -5.1); the linear schedule (lambda_999 = -5.06) keeps 999 at
    -5.1 and is cut at 830 by -3.5; lambda_min=None always gives T - 1."""
    cosine = DiffusionConfig(schedule="cosine").make_schedule()
    linear = DiffusionConfig(schedule="linear").make_schedule()
    alpha_bar = cosine.alpha_bar_f64
    lam = 0.5 * torch.log(alpha_bar / (1 - alpha_bar))
    t_max = ecosystem.start_timestep(cosine)
    assert t_max == 979 and lam[t_max] >= ecosystem.LAMBDA_MIN > lam[t_max + 1]
    assert ecosystem.start_timestep(cosine, lambda_min=-5.1) == 995
    assert ecosystem.start_timestep(linear, lambda_min=-5.1) == 999 and ecosystem.start_timestep(linear) == 830
    assert ecosystem.start_timestep(cosine, lambda_min=None) == ecosystem.start_timestep(linear, lambda_min=None) == 999


@needs_diffusers
@pytest.mark.parametrize("name", ecosystem.SAMPLERS)
def test_each_scheduler_starts_at_t_max_with_our_alpha_bars(name):
    diffusion = DiffusionConfig(schedule="cosine")
    for num_steps in (5, 10, 20, 50):
        sampler = ecosystem.DiffusersSampler(name, diffusion, num_steps)
        assert sampler.timesteps.tolist() == ecosystem.trailing_timesteps(979, num_steps).tolist()
    scheduler = ecosystem.make_scheduler(name, diffusion, 10)
    assert torch.allclose(scheduler.alphas_cumprod.double(), diffusion.make_schedule().alpha_bar_f64[:980], rtol=1e-4)
    assert ecosystem.make_scheduler(name, diffusion, 10, lambda_min=None).timesteps[0] == 999


def test_solver_start_is_chosen_on_captions_the_table_does_not_use():
    table = {tuple(l) for l in sampler_eval.table_labels().tolist()}
    validation = {tuple(l) for l in sampler_eval.validation_labels().tolist()}
    assert len(table) == len(validation) == 90 and table.isdisjoint(validation)


@needs_diffusers
def test_solver_start_test_cuts_the_process_where_asked(pipe):
    start = ecosystem.start_timestep(pipe.schedule)
    with sampler_eval._StartAt(pipe, None):                                   # the solvers and DDIM from 999 ...
        assert int(pipe.make_sampler("unipc", 10).timesteps[0]) == 999
        assert int(pipe.make_sampler("ddim", 10).timesteps[0]) == 999
    assert pipe.lambda_min == ecosystem.LAMBDA_MIN                          # ... and the pipeline restored
    assert int(pipe.make_sampler("unipc", 10).timesteps[0]) == start == 979
    assert int(pipe.make_sampler("ddim", 10).timesteps[0]) == start
    result = toolbox.solver_start_test(pipe, lambdas=(None, ecosystem.LAMBDA_MIN), samplers=("unipc",),
                                       n=2, seeds=(0, 5), num_steps=3)
    rows = result["rows"]
    assert rows["None/unipc"]["t_max"] == 999 and rows[f"{ecosystem.LAMBDA_MIN}/unipc"]["t_max"] == start
    for row in rows.values():
        assert len(row["per_seed"]) == 2 and 0 <= row["all_four"] <= 1
        assert row["all_four"] == round(sum(row["per_seed"]) / 2, 4)


@needs_diffusers
@pytest.mark.parametrize("name", ecosystem.SAMPLERS)
def test_pipeline_runs_each_diffusers_sampler(pipe, name):
    images = pipe(PROMPTS, num_steps=4, sampler=name)
    assert images.shape == (2, 3, 32, 32) and torch.isfinite(images).all()
    images, _ = rendered(2)
    out = pipe.inpaint(images, toolbox.box_masks(images), PROMPTS, num_steps=4, sampler=name)
    assert torch.equal(out[~toolbox.box_masks(images).expand_as(images)],
                       images[~toolbox.box_masks(images).expand_as(images)])


def test_unknown_sampler_and_missing_diffusers(pipe, monkeypatch):
    with pytest.raises(ValueError, match="sampler must be one of ddim, ddpm, dpm\\+\\+2m"):
        pipe(PROMPTS, num_steps=2, sampler="plms")
    monkeypatch.setitem(__import__("sys").modules, "diffusers", None)      # as if not installed
    with pytest.raises(ValueError, match=r"pip install minildm\[diffusers\]"):
        pipe(PROMPTS, num_steps=2, sampler="dpm++2m")


# ----------------------------------------------------------------------------
# The shipped weights (a few seconds each)

@shipped_only
def test_shipped_inversion_reconstructs_the_image(shipped):
    """Invert rendered images with their captions, regenerate with the same captions and guidance 1.

    Measured on 4 images (rendered(4, seed=1)): 36.3 dB at 20 steps inverted 90% of the way
    (strength 0.9), 33.6 dB at 50 steps all the way to t = 999; the VAE round trip alone
    gives 38.3 dB. The last step to t = 999 costs the most: alpha_bar_999 ~ 2e-9.
    """
    images, labels = rendered(4, seed=1)
    captions = [shapes.caption(l) for l in labels]
    back = editing.edit(shipped, images[:2], captions[:2], captions[:2], guidance_scale=1.0, num_steps=20,
                        strength=0.9)
    assert psnr(back, images[:2]) >= 33


@shipped_only
def test_shipped_inpainting_replaces_the_object(shipped):
    images, labels = rendered(4, seed=2)
    target = toolbox.change_attributes(labels, "both", np.random.default_rng(0))
    masks = toolbox.box_masks(images)
    out = shipped.inpaint(images, masks, [shapes.caption(t) for t in target], num_steps=20, paste_back=False)
    assert (judge(out)["labels"] == target).all(dim=1).float().mean() >= 0.75
    assert toolbox.psnr_outside(out, images, masks)["pooled_db"] >= 30     # the blend alone keeps the rest


@shipped_only
def test_shipped_attention_finds_the_object(shipped):
    """The colour word's map, averaged over all layers, leans to the object's quarter; the
    up-path 8x8 layer alone puts most of it there (docs/results_toolbox.md has the figures)."""
    prompt = "a small green square in the top left"
    store = attention_maps.AttentionStore(1, 8)
    with attention_maps.attention_hook(shipped.unet, store):
        shipped(prompt, num_steps=20)
    green = attention_maps.word_index(prompt, "green")
    quarter = [float(store.maps(layers=[i])[0, green, :4, :4].sum()) for i in range(len(store.resolutions()))]
    assert float(store.maps()[0, green, :4, :4].sum()) > 16 / 64            # more than its share (1/4)
    assert max(quarter) > 2 * 16 / 64                                       # the best layer: > 2x its share


def test_partial_prompts_by_guidance_runs_the_partial_test_at_each_guidance_on_the_partial_model(monkeypatch):
    calls = []

    def fake_test(pipe, n=100, guidance_scale=3.0, **kw):
        calls.append((pipe.sources["ldm"].parent.name, n, guidance_scale))
        return {"named_right": guidance_scale / 4}
    monkeypatch.setattr(toolbox, "partial_prompt_test", fake_test)
    result = toolbox.evaluate(parts=["partial_prompts_by_guidance"], quick=True, device="cpu")
    assert calls == [("partial", 12, w) for w in toolbox.PARTIAL_GUIDANCES]
    by_w = result["partial_prompts_by_guidance"]
    assert {w: r["named_right"] for w, r in by_w.items() if isinstance(r, dict)} == {"1.0": 0.25, "2.0": 0.5, "3.0": 0.75}
    assert by_w["2.0"]["guidance_scale"] == 2.0 and by_w["weights"].endswith("partial/ldm")
    calls.clear()                                                   # both partial parts: guidance 3 runs once
    both = toolbox.evaluate(parts=["partial_prompts", "partial_prompts_by_guidance"], quick=True, device="cpu")
    assert calls == [("partial", 12, w) for w in (3.0, 1.0, 2.0)]
    assert both["partial_prompts"]["named_right"] == both["partial_prompts_by_guidance"]["3.0"]["named_right"] == 0.75
    assert "weights" not in both["partial_prompts_by_guidance"]["3.0"]           # the parts do not share one dict


def test_cli_evaluate_toolbox_dispatches(tmp_path, capsys):
    assert cli.main(["evaluate", "toolbox", "--weights", str(tmp_path / "none")]) == 2
    assert "pipeline folder not found" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown toolbox parts"):
        toolbox.evaluate(parts=["fast"])


# ----------------------------------------------------------------------------
# Partial prompts (issue 19 item 2)

def test_normalised_entropy_is_one_for_uniform_and_zero_for_constant():
    assert toolbox.normalised_entropy(torch.arange(6).repeat(5), 6) == 1.0
    assert toolbox.normalised_entropy(torch.full((30,), 2), 6) == 0.0
    half = toolbox.normalised_entropy(torch.tensor([0, 1] * 10), 4)   # two of four values: log 2 / log 4
    assert abs(half - 0.5) < 1e-4


def test_entropy_over_the_trained_values_leaves_out_the_held_out_pairs():
    """No blue triangle and no magenta square is ever trained on (the held-out pairs), so a model
    that learned its data answers "a blue shape" with circles and squares only: log 2 / log 3 over
    all three shapes, 1 over the two it was trained to draw."""
    blue, magenta = torch.tensor((0, 2, 0, 5)), torch.tensor((0, 4, 0, 0))
    assert shapes.trained_values(blue, {"color", "position"}, "shape") == [0, 1]           # circle, square
    assert shapes.trained_values(magenta, {"color"}, "shape") == [0, 2]                    # circle, triangle
    assert shapes.trained_values(torch.tensor((1, 0, 1, 3)), {"size", "shape", "position"}, "color") == [0, 1, 2, 3, 5]
    assert shapes.trained_values(torch.tensor((0, 0, 0, 0)), {"shape", "color"}, "position") == list(range(9))
    assert shapes.trained_values(torch.tensor((1, 0, 0, 0)), {"shape"}, "size") == [0, 1]
    even = torch.tensor([0, 1] * 50)                                                        # circles and squares
    assert abs(toolbox.normalised_entropy(even, 3) - math.log(2) / math.log(3)) < 1e-4
    assert toolbox.normalised_entropy(even, 0, [0, 1]) == 1.0
    with_triangles = torch.cat([even, torch.full((10,), 2)])                                # untrained values left out
    assert toolbox.normalised_entropy(with_triangles, 0, [0, 1]) == 1.0
    assert toolbox.normalised_entropy(torch.zeros(20, dtype=torch.long), 0, [0, 1]) == 0.0


def test_partial_cases_name_what_they_keep_and_are_known_words():
    prompts = [shapes.partial_caption(torch.tensor(values), keep) for keep, values in toolbox.PARTIAL_CASES]
    assert prompts[0] == "a red circle" and prompts[1] == "a large square on the left"
    assert len(set(prompts)) == len(prompts)
    for (keep, values), prompt in zip(toolbox.PARTIAL_CASES, prompts):
        named = dict(zip(shapes.ATTRIBUTES, values))
        assert (shapes.SHAPES[named["shape"]] in prompt.split()) == ("shape" in keep)
        assert (shapes.COLOR_NAMES[named["color"]] in prompt.split()) == ("color" in keep)


def test_partial_prompt_test_reports_named_and_unnamed(pipe):
    result = toolbox.partial_prompt_test(pipe, cases=toolbox.PARTIAL_CASES[:2], n=4, num_steps=2, batch_size=4)
    assert set(result["prompts"]) == {"a red circle", "a large square on the left"}
    row = result["prompts"]["a red circle"]
    assert set(row["unnamed_entropy"]) == {"size", "position"} and 0 <= row["named_right"] <= 1
    assert 0 <= result["min_unnamed_entropy"] <= result["mean_unnamed_entropy"] <= 1
    assert 0 <= result["min_unnamed_entropy_trained"] <= result["mean_unnamed_entropy_trained"] <= 1
    square = result["prompts"]["a large square on the left"]                       # no magenta square in training
    assert square["trained_values"] == {"color": ["red", "green", "blue", "yellow", "cyan"]}
    assert set(square["unnamed_entropy_trained"]) == set(square["untrained_share"]) == {"color"}


def test_negative_prompt_test_reports_the_most_frequent_colour_and_each_negative(pipe):
    result = toolbox.negative_prompt_test(pipe, n=4, num_steps=2, batch_size=4, negatives=("red", None))
    most = result["most_frequent_color"]
    assert sum(result["without"]["color_counts"].values()) == 4
    assert result["without"]["color_counts"][most] == max(result["without"]["color_counts"].values())
    assert set(result["with"]) == {"red", most}
    for negative, row in result["with"].items():
        assert row["rate_before"] == result["without"]["color_counts"][negative] / 4
        assert row["rate_after"] == row["color_counts"][negative] / 4
    assert set(result["with_negative_scale"][str(toolbox.NEGATIVE_SCALE)]) == {"red", most}   # Perp-Neg rows


def test_negative_scale_is_perp_neg_and_checked(pipe):
    """negative_scale switches the pipeline to Perp-Neg; with an empty negative prompt it is plain guidance."""
    plain = pipe(PROMPTS, num_steps=2, seed=3)
    empty = pipe(PROMPTS, num_steps=2, seed=3, negative_prompt="", negative_scale=5.0)
    torch.testing.assert_close(empty, plain, atol=1e-4, rtol=0)
    pushed = pipe(PROMPTS, num_steps=2, seed=3, negative_prompt="red", negative_scale=5.0)
    assert (pushed - plain).abs().max() > 1e-3
    with pytest.raises(ValueError, match="negative_scale weighs a negative_prompt"):
        pipe(PROMPTS, num_steps=2, negative_scale=5.0)
    with pytest.raises(ValueError, match="negative_scale"):
        pipe(PROMPTS, num_steps=2, negative_prompt="red", negative_scale=-1.0)
