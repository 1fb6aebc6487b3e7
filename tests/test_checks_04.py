"""Lesson 04 checks pass the reference and catch typical wrong answers."""
import math
import re

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


# ----------------------------------------------------------------------------
# the caption-safe crop rule

def crop_rule(kind="ok", margin=0.1):
    def rule(box, left, top, side, size):
        x0, y0, x1, y1 = box
        whole = left <= x0 and top <= y0 and left + side >= x1 and top + side >= y1
        same = True
        for centre, offset in (((x0 + x1) / 2, left), ((y0 + y1) / 2, top)):
            before = 3 * centre / size
            after = {"ok": 3 * (centre - offset) / side, "divide by size": 3 * (centre - offset) / size,
                     "no shift": 3 * centre / side}.get(kind, 3 * (centre - offset) / side)
            frac = after % 1
            m = 0.0 if kind == "no margin" else margin
            same = same and int(after // 1) == int(before // 1) and m <= frac <= 1 - m
        if kind == "whole only":
            return whole
        if kind == "cell only":
            return same
        if kind == "always":
            return True
        return whole and same
    return rule


def test_crop_check_accepts_the_rule(capsys):
    from minildm.recipes.clip import crop_keeps_caption
    checks.crop_keeps_caption(crop_rule())
    checks.crop_keeps_caption(lambda *a: crop_keeps_caption(*a))
    assert "Correct!" in capsys.readouterr().out


@pytest.mark.parametrize("kind, hint", [
    ("whole only", "only check that the whole object"),
    ("cell only", "must also stay whole"),
    ("divide by size", "not divided by size"),
    ("no shift", "from the crop's corner"),
    ("no margin", "away from the cell's borders"),
    ("always", "the answer is False"),
])
def test_crop_check_catches(kind, hint):
    with pytest.raises(checks.CheckFailed, match=re.escape(hint)):
        checks.crop_keeps_caption(crop_rule(kind))


def test_crop_check_wants_a_bool():
    with pytest.raises(checks.CheckFailed, match="True or False"):
        checks.crop_keeps_caption(lambda *a: "yes")
