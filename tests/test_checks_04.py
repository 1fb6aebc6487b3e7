"""Lesson 04 checks pass the reference and catch typical wrong answers."""
import math

import pytest
import torch
import torch.nn.functional as F

from minildm import checks, clip, text

torch.set_num_threads(1)


# ---------------------------------------------------------------- cosine-similarity logits

def good_logits(img, txt, t):
    scale = t.exp().clamp(max=100)
    return scale * F.normalize(img, dim=-1) @ F.normalize(txt, dim=-1).T


def test_clip_logits_accepts_reference(capsys):
    checks.clip_logits(good_logits)
    assert "Correct" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, hint", [
    (lambda i, x, t: t.exp().clamp(max=100) * i @ x.T, "normalise"),                      # forgot to normalise
    (lambda i, x, t: F.normalize(i, dim=-1) @ F.normalize(x, dim=-1).T, "temperature"),   # forgot the temperature
    (lambda i, x, t: t * F.normalize(i, dim=-1) @ F.normalize(x, dim=-1).T, "not by t"),    # t instead of exp(t)
    (lambda i, x, t: t.exp() * F.normalize(i, dim=-1) @ F.normalize(x, dim=-1).T, "clamp"),  # no clamp
    (lambda i, x, t: good_logits(x, i, t), "shape"),                                       # transposed
    (lambda i, x, t: good_logits(i, x, t)[:, :1], "shape"),                                # wrong shape
    (lambda i, x, t: t.exp().clamp(max=100) * F.normalize(i, dim=0) @ F.normalize(x, dim=0).T, "differ"),
])
def test_clip_logits_catches(wrong, hint):
    with pytest.raises(checks.CheckFailed, match=hint):
        checks.clip_logits(wrong)


def test_clip_logits_not_implemented():
    def stub(i, x, t):
        raise NotImplementedError
    with pytest.raises(checks.CheckFailed, match="NotImplementedError"):
        checks.clip_logits(stub)


# ---------------------------------------------------------------- symmetric loss

def good_loss(logits):
    target = torch.arange(len(logits))
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def test_clip_loss_accepts_reference(capsys):
    checks.clip_loss(good_loss)
    checks.clip_loss(clip.clip_loss)
    assert "Correct" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, hint", [
    (lambda l: F.cross_entropy(l, torch.arange(len(l))), "only the image -> text"),        # one direction
    (lambda l: F.cross_entropy(l.T, torch.arange(len(l))), "only the text -> image"),      # other direction
    (lambda l: 2 * good_loss(l), "added the two directions"),                               # sum, not mean
    (lambda l: F.cross_entropy(l, torch.arange(len(l)), reduction="none"), "scalar"),      # not reduced
    (lambda l: (F.cross_entropy(l, torch.zeros(len(l), dtype=torch.long))
                + F.cross_entropy(l.T, torch.zeros(len(l), dtype=torch.long))) / 2, "differs"),  # wrong target
    (lambda l: -torch.diagonal(l).mean(), "differs"),                                       # no softmax
    (lambda l: 1.0, "torch.Tensor"),
])
def test_clip_loss_catches(wrong, hint):
    with pytest.raises(checks.CheckFailed, match=hint):
        checks.clip_loss(wrong)


def test_clip_loss_not_implemented():
    def stub(l):
        raise NotImplementedError
    with pytest.raises(checks.CheckFailed, match="NotImplementedError"):
        checks.clip_loss(stub)


# ---------------------------------------------------------------- zero-shot prediction

def good_predict(model, images, prompts):
    with torch.no_grad():
        sim = model.encode_image(images) @ model.encode_text(text.tokenize(prompts)).T
    return sim.argmax(dim=1)


def test_zero_shot_accepts_reference(capsys):
    checks.zero_shot_predict(good_predict)
    assert "Correct" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, hint", [
    (lambda m, x, p: torch.zeros(len(p), dtype=torch.long), "one index per image"),        # argmax over images
    (lambda m, x, p: (m.encode_image(x) @ m.encode_text(text.tokenize(p)).T).detach(), "one index per image"),
    (lambda m, x, p: (m.encode_image(x) @ m.encode_text(text.tokenize(p)).T).argmin(1), "similar prompt: use argmax"),
    (lambda m, x, p: (m.image_features(x) @ torch.randn(m.visual.width, len(p))).argmax(1), "differ"),
    (lambda m, x, p: torch.zeros(len(x), dtype=torch.long), "differ"),
])
def test_zero_shot_catches(wrong, hint):
    with pytest.raises(checks.CheckFailed, match=hint):
        checks.zero_shot_predict(wrong)


def test_zero_shot_not_implemented():
    def stub(m, x, p):
        raise NotImplementedError
    with pytest.raises(checks.CheckFailed, match="NotImplementedError"):
        checks.zero_shot_predict(stub)
