"""Lesson 04 - CLIP (notebooks/04_clip.ipynb): the lesson's exercise checks."""
from __future__ import annotations

import torch

from ._core import expect, expect_close, expect_tensor, passed, run_student_function


def clip_logits(student_logits) -> None:
    """Exercise: student_logits(image_features (N, D), text_features (M, D), t) -> (N, M)
    = min(exp(t), 100) * cos(image_i, text_j)."""
    import math
    import torch.nn.functional as F
    from ..clip import MAX_LOGIT_SCALE
    g = torch.Generator().manual_seed(4)
    img, txt = 3 * torch.randn(5, 8, generator=g), 0.5 * torch.randn(7, 8, generator=g)  # not normalised
    for t in (math.log(1 / 0.07), 0.0, math.log(250.0)):
        t_param = torch.tensor(t)
        got = expect_tensor(run_student_function(student_logits, img.clone(), txt.clone(), t_param.clone(),
                                                 name="your logits function"),
                            (5, 7), "the logits (one row per image, one column per text)")
        img_n, txt_n = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
        scale = min(math.exp(t), MAX_LOGIT_SCALE)
        want = scale * img_n @ txt_n.T
        if torch.allclose(got, scale * img @ txt.T, atol=1e-3) or torch.allclose(got, img @ txt.T, atol=1e-3):
            expect(False, "forgot to L2-normalise the features: cosine similarity needs unit vectors "
                          "(F.normalize(x, dim=-1)).")
        expect(not torch.allclose(got, img_n @ txt_n.T, atol=1e-4) or abs(scale - 1) < 1e-6,
               "forgot the temperature: multiply the cosine similarities by exp(t).")
        expect(not torch.allclose(got, t * img_n @ txt_n.T, atol=1e-4) or abs(t - scale) < 1e-6,
               "t is the *log* of the scale: multiply by exp(t), not by t.")
        if t > math.log(MAX_LOGIT_SCALE):
            expect(not torch.allclose(got, math.exp(t) * img_n @ txt_n.T, atol=1e-3),
                   f"clamp the scale at {MAX_LOGIT_SCALE:g}: exp(t) = {math.exp(t):.0f} is too large.")
        expect_close(got, want, "the logits differ from scale * cos(image_i, text_j)", atol=1e-4)
    passed("scaled cosine-similarity logits, normalised, with the clamped temperature.")


def clip_loss(student_loss) -> None:
    """Exercise: student_loss(logits_per_image (B, B)) -> the symmetric cross-entropy (a scalar)."""
    import torch.nn.functional as F
    from ..clip import clip_loss as reference
    g = torch.Generator().manual_seed(4)
    for b in (2, 6, 16):
        logits = 5 * torch.randn(b, b, generator=g)                       # not symmetric on purpose
        got = run_student_function(student_loss, logits.clone(), name="your loss")
        expect(isinstance(got, torch.Tensor), f"return a torch.Tensor, got {type(got).__name__}.")
        expect(got.numel() == 1, f"the loss should be one number (a scalar), got shape {tuple(got.shape)}. "
                                 "Average over the batch.")
        target = torch.arange(b)
        rows, cols = F.cross_entropy(logits, target), F.cross_entropy(logits.T, target)
        expect(not torch.isclose(got.reshape(()), rows, atol=1e-5),
               "only the image -> text direction (rows). Add the text -> image direction "
               "(cross-entropy over the columns, logits.T) and average the two.")
        expect(not torch.isclose(got.reshape(()), cols, atol=1e-5),
               "only the text -> image direction (columns). Add the image -> text direction (rows).")
        expect(not torch.isclose(got.reshape(()), rows + cols, atol=1e-5),
               "you added the two directions: average them, (rows + columns) / 2.")
        expect_close(got.reshape(()), reference(logits),
                     "the loss differs from (CE(logits, arange(B)) + CE(logits.T, arange(B))) / 2; "
                     "the target of row i is column i", atol=1e-5)
    perfect = run_student_function(student_loss, 100 * torch.eye(4), name="your loss")
    expect(float(perfect) < 1e-3, "a perfectly matched batch (large diagonal) should give a loss near 0.")
    passed("the symmetric contrastive loss matches the reference (both directions, averaged).")


def zero_shot_predict(student_predict) -> None:
    """Exercise: student_predict(model, images (N, 3, H, W), prompts list[str]) -> (N,) index of the
    best prompt for each image."""
    from ..clip import MiniCLIP
    from ..recipes.clip import PRESETS
    from ..data import shapes
    from ..text import tokenize
    from ..weights_io import WeightsError
    try:
        model = MiniCLIP.from_pretrained()                                # the shipped weights
    except WeightsError:
        torch.manual_seed(4)
        model = MiniCLIP(PRESETS["tiny"].model).eval()                    # any model will do
    prompts = ["a small red circle on the left", "a large blue square in the center",
               "a small green triangle at the top", "a large cyan circle in the bottom right"]
    labels = torch.stack([shapes.labels_of("circle", "red", "small", "left"),
                          shapes.labels_of("square", "blue", "large", "center"),
                          shapes.labels_of("triangle", "green", "small", "top"),
                          shapes.labels_of("circle", "cyan", "large", "bottom right"),
                          shapes.labels_of("square", "blue", "large", "center"),
                          shapes.labels_of("circle", "red", "small", "left")])
    images = shapes.render(labels, model.config.image_size, seed=4)     # (6, 3, H, W)
    got = expect_tensor(run_student_function(student_predict, model, images, prompts, name="your prediction"),
                        None, "the predictions")
    expect(got.shape == (6,), f"return one index per image, shape (6,), got {tuple(got.shape)}. "
                              "Take the argmax over the prompts (dim=1), not over the images.")
    with torch.no_grad():
        sim = model.encode_image(images) @ model.encode_text(tokenize(prompts)).T  # (6, 4)
    expect(not torch.equal(got.long(), sim.argmin(1)) or torch.equal(sim.argmin(1), sim.argmax(1)),
           "you took the *least* similar prompt: use argmax.")
    expect(torch.equal(got.long(), sim.argmax(1)),
           "predictions differ from argmax over prompts of cos(image, prompt). Embed the images with "
           "model.encode_image, the prompts with model.encode_text(tokenize(prompts)), and compare.")
    passed("zero-shot prediction: embed the prompts once, pick the most similar for each image.")


def _crop_cases(n: int = 600, size: int = 32, seed: int = 4):
    """Random (box, left, top, side) cases like random_square_crop's: objects of about a quarter
    or a half of the side, crops of side >= 85% of the image."""
    g = torch.Generator().manual_seed(seed)
    cases = []
    for _ in range(n):
        w = float([8, 16][int(torch.randint(0, 2, (1,), generator=g))])
        cx, cy = (w / 2 + torch.rand(2, generator=g) * (size - w)).round().tolist()
        box = (cx - w / 2, cy - w / 2, cx + w / 2, cy + w / 2)
        side = int(torch.randint(28, size + 1, (1,), generator=g))
        left, top = (int(v) for v in torch.randint(0, size - side + 1, (2,), generator=g))
        cases.append((box, left, top, side))
    return cases


def crop_keeps_caption(student_rule) -> None:
    """Exercise: student_rule(box (x0, y0, x1, y1), left, top, side, size) -> True when cutting the
    square (left, top, side) out of a size x size image and resizing it back keeps the caption true:
    the whole object stays in, and its centre stays in the same 3x3 cell, at least 10% of a cell
    away from the cell's borders (recipes.clip.crop_keeps_caption)."""
    from ..recipes.clip import CROP_CELL_MARGIN
    from ..recipes.clip import crop_keeps_caption as reference
    size, cases = 32, _crop_cases()
    got = []
    for box, left, top, side in cases:
        answer = run_student_function(student_rule, box, left, top, side, size, name="your crop rule")
        expect(isinstance(answer, bool) or (isinstance(answer, torch.Tensor) and answer.numel() == 1),
               f"return True or False, got {type(answer).__name__}.")
        got.append(bool(answer))
    want = [bool(reference(*case, size)) for case in cases]
    if got == want:
        passed(f"your rule agrees with the library's on {len(cases)} random crops: whole object, same cell.")
        return

    def rule(case, whole=True, cell=True, margin=CROP_CELL_MARGIN, divide_by="side", shift=True):
        (x0, y0, x1, y1), left, top, side = case
        ok = not whole or (left <= x0 and top <= y0 and left + side >= x1 and top + side >= y1)
        for centre, offset in (((x0 + x1) / 2, left), ((y0 + y1) / 2, top)):
            after = 3 * (centre - (offset if shift else 0)) / (side if divide_by == "side" else size)
            frac = after % 1
            if cell:
                ok = ok and after // 1 == 3 * centre / size // 1 and margin <= frac <= 1 - margin
        return ok
    mistakes = {
        "you only check that the whole object stays in the crop. The crop is stretched back to the "
        "full size, so the object's centre moves: check that it stays in the same 3x3 cell.":
            dict(cell=False),
        "the object must also stay whole: a crop that cuts part of it off changes the picture.": dict(whole=False),
        "the crop of side `side` is resized to `size` pixels: after the crop the centre in cell units is "
        "3 * (centre - left) / side, not divided by size.": dict(divide_by="size"),
        "measure the centre from the crop's corner: 3 * (centre - left) / side.": dict(shift=False),
        f"keep the centre at least {CROP_CELL_MARGIN:g} of a cell away from the cell's borders (on the "
        "border, a one-pixel change would move it to the next cell).": dict(margin=0.0),
    }
    for hint, kw in mistakes.items():
        expect(got != [rule(case, **kw) for case in cases], hint)
    k = next(i for i, (a, b) in enumerate(zip(got, want)) if a != b)
    box, left, top, side = cases[k]
    expect(False, f"for the object box {box} and the crop left={left}, top={top}, side={side} the answer "
                  f"is {want[k]}, you said {got[k]}.")
