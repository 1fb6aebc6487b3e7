"""MiniCLIP: shapes, the symmetric loss, the temperature, crops, zero-shot, save/load."""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from minildm import clip, text, zero_shot
from minildm.recipes import clip as clip_recipe
from minildm.data import shapes
from minildm.data.judge import judge
from minildm.weights_io import WeightsError

torch.set_num_threads(1)
TINY = clip_recipe.PRESETS["tiny"].model


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny preset trained for its 60 steps (a few seconds), saved to disk."""
    out = tmp_path_factory.mktemp("clip")
    model = clip_recipe.fit("tiny", out_dir=out, run_dir=None)
    return model, out / "clip"


@pytest.mark.parametrize("encoder", ["resnet", "vit"])
def test_shapes_and_normalisation(encoder):
    model = clip.MiniCLIP(dataclasses.replace(TINY, image_encoder=encoder)).eval()
    images, captions, _ = shapes.sample_batch(5, "train", 32, seed=0)
    tokens = text.tokenize(captions)
    assert model.text_hidden_states(tokens).shape == (5, text.CONTEXT_LENGTH, TINY.text_width)
    img, txt = model.encode_image(images), model.encode_text(tokens)
    assert img.shape == txt.shape == (5, TINY.embed_dim)
    assert torch.allclose(img.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(5), atol=1e-5)
    logits = model(images, tokens)
    assert logits.shape == (5, 5)
    # logits = scale * cosine similarity, scale initialised at 1 / 0.07 as in the paper
    assert torch.allclose(logits, (1 / 0.07) * img @ txt.T, atol=1e-4)


def test_causal_mask_and_eos_pooling():
    torch.manual_seed(0)
    model = clip.MiniCLIP(TINY).eval()
    a = text.tokenize(["a small red circle on the left"])
    b = text.tokenize(["a small red circle on the right"])
    ha, hb = model.text_hidden_states(a), model.text_hidden_states(b)
    k = 7  # tokens: <bos> a small red circle on the | left/right
    assert torch.allclose(ha[:, :k], hb[:, :k], atol=1e-6)        # the past cannot see the future
    assert not torch.allclose(ha[:, k], hb[:, k])
    # the pooled feature is the <eos> state: padding after <eos> changes nothing
    c = a.clone()
    c[0, text.eos_positions(a)[0] + 1:] = text.TOKEN_TO_ID["red"]
    assert torch.allclose(model.encode_text(a), model.encode_text(c), atol=1e-6)


def test_loss_symmetric_and_reference():
    torch.manual_seed(0)
    logits = 5 * torch.randn(8, 8)
    loss = clip.clip_loss(logits)
    target = torch.arange(8)
    rows = -torch.stack([F.log_softmax(logits[i], 0)[i] for i in range(8)]).mean()
    cols = -torch.stack([F.log_softmax(logits[:, j], 0)[j] for j in range(8)]).mean()
    assert torch.allclose(loss, (rows + cols) / 2, atol=1e-6)
    assert torch.allclose(loss, clip.clip_loss(logits.T), atol=1e-6)     # symmetric
    assert not torch.allclose(loss, F.cross_entropy(logits, target))    # not one direction only
    # labels that are all different give the plain loss
    labels = shapes.all_labels()[:8]
    assert torch.allclose(clip.clip_loss(logits, labels), loss, atol=1e-6)


def test_loss_near_zero_when_matched_and_log_n_when_random():
    n = 32
    emb = torch.eye(n, 64)                                               # perfectly matched, orthogonal
    assert clip.clip_loss(100 * emb @ emb.T).item() < 1e-6
    torch.manual_seed(0)
    a, b = F.normalize(torch.randn(n, 64), dim=-1), F.normalize(torch.randn(n, 64), dim=-1)
    assert abs(clip.clip_loss(a @ b.T).item() - math.log(n)) < 0.1      # random: about log(N)


def test_loss_counts_duplicate_captions_as_matches():
    labels = shapes.all_labels()[[0, 0, 5]]                              # two images of one caption
    logits = torch.tensor([[10.0, 10.0, -10], [10, 10, -10], [-10, -10, 10]])
    # the target of rows 0 and 1 is split over columns 0 and 1, which the logits do exactly,
    # so the loss is at its minimum: the entropy of the targets, (log 2 + log 2 + 0) / 3
    assert clip.clip_loss(logits, labels).item() == pytest.approx(2 * math.log(2) / 3, abs=1e-5)
    favour_one = torch.tensor([[10.0, 0, -10], [0, 10, -10], [-10, -10, 10]])
    assert clip.clip_loss(favour_one, labels).item() > clip.clip_loss(logits, labels).item() + 0.5


def test_logit_scale_is_clamped():
    model = clip.MiniCLIP(TINY)
    assert abs(model.logit_scale.item() - math.log(1 / 0.07)) < 1e-6
    with torch.no_grad():
        model.logit_scale.fill_(10.0)                                    # exp(10) = 22026
    assert model.scale().item() == pytest.approx(100.0)
    images, captions, _ = shapes.sample_batch(4, "train", 32, seed=0)
    assert model(images, text.tokenize(captions)).abs().max().item() <= 100.0 + 1e-4


def test_bad_inputs_give_clear_errors():
    model = clip.MiniCLIP(TINY)
    with pytest.raises(text.PromptError, match="unknown word 'purple'"):
        model.encode_text(text.tokenize(["a small purple circle on the left"]))
    with pytest.raises(ValueError, match=r"\(B, 3, 32, 32\)"):
        model.encode_image(torch.rand(2, 3, 64, 64))
    with pytest.raises(ValueError, match="LongTensor"):
        model.encode_text(torch.zeros(2, 16))
    with pytest.raises(ValueError, match="allowed: caption, shape"):
        zero_shot.zero_shot_classifier(model, "texture")
    with pytest.raises(ValueError, match="'resnet' or 'vit'"):
        clip.CLIPConfig(image_encoder="mlp")
    with pytest.raises(ValueError, match="unknown preset"):
        clip_recipe.fit("huge")
    with pytest.raises(ValueError, match="unknown overrides"):
        clip_recipe.fit("tiny", out_dir=None, run_dir=None, learning_rate=1.0)


def test_crops_keep_the_caption_true():
    images, _, labels = shapes.sample_batch(120, "train", 32, seed=1)
    g = torch.Generator().manual_seed(0)
    safe = clip_recipe.random_square_crop(images, g, min_scale=0.85)
    assert safe.shape == images.shape
    assert (safe - images).abs().flatten(1).amax(1).gt(0.1).float().mean() > 0.5   # most are cropped
    read = judge(safe)["labels"]
    assert torch.equal(read, labels)                                     # every attribute still true
    unsafe = clip_recipe.random_square_crop(images, torch.Generator().manual_seed(0), min_scale=0.5, keep_cell=False)
    assert (judge(unsafe)["labels"][:, 3] != labels[:, 3]).float().mean() > 0.1  # positions change


def test_prompts():
    caps = zero_shot.prompts_for("caption", ensemble=False)
    assert [c[0] for c in caps] == shapes.all_captions()
    color = zero_shot.prompts_for("color")
    assert len(color) == 6 and all(len(p) == 54 for p in color)
    assert all("red" in p for p in color[0])
    assert len(zero_shot.prompts_for("caption")[0]) == 9                      # 3 size words x 3 wordings


def test_trained_tiny_beats_chance(trained):
    model, _ = trained
    images, captions, labels = shapes.sample_batch(200, "test", 32, seed=7)
    acc = zero_shot.zero_shot_accuracy(model, images, labels)
    assert acc["caption"] > 20 / 324                                     # chance is 1/324
    assert acc["color"] > 0.5 and acc["size"] > 0.75                     # chance 1/6 and 1/2
    pred = zero_shot.zero_shot_predict(model, images[:10], "color")
    assert pred.shape == (10,) and pred.dtype == torch.long
    rec = zero_shot.retrieval_recall(model, images[:100], captions[:100], labels[:100])
    assert set(rec) == {"image_to_text@1", "text_to_image@1", "image_to_text@5", "text_to_image@5"}
    assert rec["image_to_text@5"] >= rec["image_to_text@1"] and rec["text_to_image@5"] > 5 / 100
    probe = zero_shot.linear_probe(model, *shapes.sample_batch(300, "train", 32, seed=8)[::2],
                              images, labels)
    assert probe["color"] > 0.9 and probe["size"] > 0.9


def test_save_load_round_trip(trained, tmp_path):
    model, folder = trained
    loaded = clip.MiniCLIP.from_pretrained(folder)
    assert loaded.config == model.config
    images, captions, _ = shapes.sample_batch(6, "test", 32, seed=3)
    tokens = text.tokenize(captions)
    assert torch.equal(loaded(images, tokens), model(images, tokens))
    assert torch.equal(loaded.text_hidden_states(tokens), model.text_hidden_states(tokens))
    assert (folder / "training.json").exists()
    # a corrupt weights file and a wrong architecture give WeightsError
    bad = tmp_path / "bad"
    model.save_pretrained(bad)
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(WeightsError):
        clip.MiniCLIP.from_pretrained(bad)
    other = tmp_path / "other"
    clip.MiniCLIP(dataclasses.replace(TINY, image_encoder="vit")).save_pretrained(other)
    (other / "config.json").write_text((folder / "config.json").read_text())
    with pytest.raises(WeightsError, match="does not fit"):
        clip.MiniCLIP.from_pretrained(other)
    with pytest.raises(WeightsError, match="not found"):
        clip.MiniCLIP.from_pretrained(tmp_path / "nowhere")


def test_evaluate_quick(trained):
    _, folder = trained
    out = clip_recipe.evaluate(folder, quick=True)
    for key in ("zero_shot_seen", "zero_shot_heldout", "linear_probe_seen", "retrieval_seen"):
        assert key in out
    assert set(out["zero_shot_seen"]) == {"caption", "shape", "color", "size", "position"}
    assert out["training"]["preset"] == "tiny"


@pytest.mark.parametrize("encoder", ["resnet", "vit"])
def test_gpu_preset_builds_for_64px(encoder):
    cfg = dataclasses.replace(clip_recipe.PRESETS["gpu"].model, image_encoder=encoder)
    model = clip.MiniCLIP(cfg).eval()
    images, captions, _ = shapes.sample_batch(2, "train", 64, seed=0)
    with torch.no_grad():
        assert model(images, text.tokenize(captions)).shape == (2, 2)
    assert model.text_hidden_states(text.tokenize(captions)).shape == (2, 16, cfg.text_width)
