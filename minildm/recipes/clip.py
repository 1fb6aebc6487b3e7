"""Recipe: train and measure the mini CLIP (lesson 04).

The data stream is fresh captioned Shapes images with paraphrased captions and
CLIP's one augmentation, a random square crop, made caption-safe: our captions name
positions, so a crop may not move the object into another 3x3 cell.

    python -m minildm train clip --preset fast --out minildm/weights   # the shipped CLIP (cpu: the longer recipe)
    python -m minildm evaluate clip

Taught in notebooks/04_clip.ipynb.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import text
from ..clip import CLIPConfig, MiniCLIP, clip_loss
from ..data import shapes
from ..train import TrainConfig, train
from ..weights_io import resolve_folder
from ..zero_shot import linear_probe, retrieval_recall, zero_shot_accuracy
from . import Job, get_preset, read_training_json, write_training_json

NAME = "clip"


# ----------------------------------------------------------------------------
# Augmentation: random square crops that keep the caption true

CROP_CELL_MARGIN = 0.1  # the object's centre stays this fraction of a cell inside its 3x3 cell


def object_boxes(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 4) bounding boxes (x0, y0, x1, y1) in pixels of the lit pixels."""
    mask = images.amax(dim=1) > 0.05                                      # (N, H, W)
    n, h, w = mask.shape
    cols, rows = mask.any(dim=1), mask.any(dim=2)                         # (N, W), (N, H)
    ar_w, ar_h = torch.arange(w), torch.arange(h)
    x0 = torch.where(cols, ar_w, w).amin(1)
    x1 = torch.where(cols, ar_w + 1, 0).amax(1)
    y0 = torch.where(rows, ar_h, h).amin(1)
    y1 = torch.where(rows, ar_h + 1, 0).amax(1)
    return torch.stack([x0, y0, x1, y1], dim=1).float()


def crop_keeps_caption(box, left, top, side, size: int, margin: float = CROP_CELL_MARGIN):
    """Does the caption stay true after cutting the square (left, top, side) out of a
    size x size image and resizing it back to size x size?

    box = (x0, y0, x1, y1), the object's bounding box in pixels. True when the crop
    keeps the whole object and the object's centre stays in the same 3x3 cell,
    at least `margin` of a cell away from the cell's borders (so a one-pixel
    shift cannot change the cell). Numbers or broadcastable tensors (then an
    elementwise answer). Taught in notebooks/04_clip.ipynb (an exercise).
    """
    x0, y0, x1, y1 = box
    ok = (left <= x0) & (top <= y0) & (left + side >= x1) & (top + side >= y1)   # nothing cut off
    for centre, offset in (((x0 + x1) / 2, left), ((y0 + y1) / 2, top)):
        before = 3 * centre / size                  # the centre in cell units (0..3) before the crop
        after = 3 * (centre - offset) / side        # ... and after: the crop is stretched to the full size
        frac = after - after // 1                   # where inside its cell
        ok = ok & (after // 1 == before // 1) & (frac >= margin) & (frac <= 1 - margin)
    return ok


def random_square_crop(images: torch.Tensor, generator: torch.Generator | None = None,
                       min_scale: float = 0.85, keep_cell: bool = True, tries: int = 16) -> torch.Tensor:
    """Crop a random square of side in [min_scale, 1] x the image and resize it back.

    CLIP's only augmentation. The catch: our captions name *positions*, so a crop
    may not move the object into another 3x3 cell (nor cut it off). With
    keep_cell=True each image gets the first of `tries` random crops that keeps
    the object whole and its centre inside the same cell (else no crop). A
    horizontal flip would turn "on the left" into "on the right": never flip.
    keep_cell=False shows what goes wrong.

    Taught in notebooks/04_clip.ipynb.
    """
    from torchvision.transforms.v2 import functional as TF
    n, _, size, _ = images.shape
    lo = max(1, int(math.ceil(min_scale * size)))
    side = torch.randint(lo, size + 1, (n, tries), generator=generator).float()   # (N, K)
    ox = (torch.rand(n, tries, generator=generator) * (size - side + 1)).floor()   # left edges
    oy = (torch.rand(n, tries, generator=generator) * (size - side + 1)).floor()   # top edges
    if keep_cell:
        box = object_boxes(images)[:, None, :]                            # (N, 1, 4)
        ok = crop_keeps_caption(box.unbind(-1), ox, oy, side, size)       # (N, K)
        choice = torch.where(ok.any(1), ok.float().argmax(1), -1)        # (N,) first good try or -1
    else:
        choice = torch.zeros(n, dtype=torch.long)
    out = images.clone()
    for i in range(n):
        k = int(choice[i])
        if k >= 0:
            s, top, left = int(side[i, k]), int(oy[i, k]), int(ox[i, k])
            out[i] = TF.resized_crop(images[i], top, left, s, s, [size, size], antialias=True).clamp(0, 1)
    return out


# ----------------------------------------------------------------------------
# Presets and training

@dataclass
class CLIPPreset:
    model: CLIPConfig
    train: TrainConfig
    min_crop_scale: float = 0.85         # random square crop side in [min_crop_scale, 1] x image
    crop_probability: float = 0.5        # fraction of a batch that gets cropped
    crop_keep_cell: bool = True          # only crops that keep the caption true (False: see what breaks)


PRESETS = {
    "tiny": CLIPPreset(  # seconds: tests and nbval
        CLIPConfig(embed_dim=32, text_width=32, text_layers=1, text_heads=2, resnet_widths=(16, 16, 32),
                   resnet_heads=2, vit_width=32, vit_layers=1, vit_heads=2),
        TrainConfig(steps=60, batch_size=64, lr=2e-3, warmup_steps=10, log_every=10, progress=False)),
    "cpu": CLIPPreset(  # minutes on 2 CPU cores: the shipped weights until 2026-12-01 (now "fast", below)
        CLIPConfig(),
        TrainConfig(steps=1000, batch_size=128, lr=2e-3, warmup_steps=100, weight_decay=0.1,
                    log_every=50)),
    "gpu": CLIPPreset(  # a bigger model on 64 x 64 images, bf16
        CLIPConfig(image_size=64, embed_dim=128, text_width=128, text_layers=4, text_heads=4,
                   resnet_widths=(32, 64, 64, 128), vit_width=128, vit_layers=6),
        TrainConfig(steps=5000, batch_size=512, lr=1e-3, warmup_steps=300, weight_decay=0.1,
                    precision="bf16", log_every=100)),
}
# `train stack --preset fast` and the shipped CLIP since 2026-12-01: 350 steps at a higher peak rate also
# reach 100% zero-shot (docs/results_bench.md, "The fast stack").
PRESETS["fast"] = dataclasses.replace(PRESETS["cpu"], train=dataclasses.replace(
    PRESETS["cpu"].train, steps=350, lr=4e-3, warmup_steps=35))

MODEL_OVERRIDES = tuple(f.name for f in dataclasses.fields(CLIPConfig))  # fit() accepts these too
CROP_OVERRIDES = ("min_crop_scale", "crop_probability", "crop_keep_cell")  # ... and these


def make_sample_batch(preset: CLIPPreset):
    """The data stream: fresh captioned images (paraphrased captions) + safe random crops."""
    size = preset.model.image_size

    def sample_batch(batch_size: int, generator: torch.Generator, device):
        seed = int(torch.randint(0, 2 ** 31, (1,), generator=generator))
        images, captions, labels = shapes.sample_batch(batch_size, "train", size, seed=seed, paraphrases=True)
        crop = torch.rand(batch_size, generator=generator) < preset.crop_probability
        if crop.any():
            images[crop] = random_square_crop(images[crop], generator, preset.min_crop_scale,
                                              keep_cell=preset.crop_keep_cell)
        return images.to(device), text.tokenize(captions).to(device), labels.to(device)

    return sample_batch


def loss_fn(model: MiniCLIP, batch):
    """The training loss: symmetric contrastive loss, same-caption pairs counted as matches."""
    images, tokens, labels = batch
    logits = model(images, tokens)                                        # (B, B)
    loss = clip_loss(logits, labels)
    same = (labels[:, None, :] == labels[None, :, :]).all(-1)             # (B, B) equal captions
    acc = same[torch.arange(len(logits)), logits.argmax(1)].float().mean()  # image -> a right caption
    return loss, {"batch_acc": acc.item(), "logit_scale": model.scale().item()}


def job(preset="cpu", run_dir="runs", **overrides) -> Job:
    """CLIP's training run. overrides: TrainConfig fields (steps, lr, ...), CLIPConfig fields
    (image_encoder="vit", ...) or the crop settings (crop_keep_cell=False, ...)."""
    p = get_preset(PRESETS, preset)
    model_over = {k: overrides.pop(k) for k in MODEL_OVERRIDES if k in overrides}
    crop_over = {k: overrides.pop(k) for k in CROP_OVERRIDES if k in overrides}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if set(overrides) - train_fields:
        raise ValueError(f"unknown overrides {sorted(set(overrides) - train_fields)}; allowed: TrainConfig "
                         f"fields {sorted(train_fields)}, CLIPConfig fields and {list(CROP_OVERRIDES)}")
    p = dataclasses.replace(p, model=dataclasses.replace(p.model, **model_over), **crop_over)
    cfg = dataclasses.replace(p.train, **overrides)
    if run_dir is not None:
        cfg = dataclasses.replace(cfg, out_dir=str(Path(run_dir) / NAME))
    return Job(MiniCLIP(p.model), loss_fn, make_sample_batch(p), cfg, f"clip-{p.model.image_encoder}")


def fit(preset: str = "cpu", out_dir="weights", run_dir="runs", **overrides) -> MiniCLIP:
    """Train MiniCLIP with a preset and write out_dir/clip/{config.json, model.safetensors, training.json}.

    overrides: as for job().
    Shipped weights: `python -m minildm train clip --preset fast --out minildm/weights`.
    """
    run = job(preset, run_dir, **overrides)
    result = train(run.model, run.loss_fn, run.sample_batch, run.cfg, name=run.name)
    model = result.model.cpu().eval()
    model.train_seconds = result.seconds
    model.history = result.history
    encoder = model.config.image_encoder
    if out_dir is not None:
        folder = model.save_pretrained(Path(out_dir) / NAME)
        write_training_json(folder, preset, run.cfg, result, image_encoder=encoder)
        print(f"wrote {folder}/config.json and model.safetensors")
    print(f"trained clip ({encoder}, preset {preset}) for {result.steps_run} steps in {result.seconds:.0f} s")
    return model


# ----------------------------------------------------------------------------
# Evaluation

EVAL_SEED = 2024  # fresh test images, never the training stream


def evaluate(weights=None, quick: bool = False, model: MiniCLIP | None = None) -> dict:
    """Zero-shot (324 captions and per attribute), linear probe, retrieval; seen and held-out pairs.

    `python -m minildm evaluate clip` (the shipped weights) or `--weights DIR`.
    Results: docs/results_clip.md. Taught in notebooks/04_clip.ipynb.
    """
    torch.manual_seed(0)
    model_given = model
    model = model if model is not None else MiniCLIP.from_pretrained(weights)
    model.eval()
    size = model.config.image_size
    n_test, n_probe = (200, 300) if quick else (2000, 3000)
    test_x, _, test_y = shapes.sample_batch(n_test, "test", size, seed=EVAL_SEED)
    held_x, _, held_y = shapes.sample_batch(n_test // 2, "heldout", size, seed=EVAL_SEED + 1)
    train_x, _, train_y = shapes.sample_batch(n_probe, "train", size, seed=EVAL_SEED + 2)
    probe_held = linear_probe(model, train_x, train_y, held_x, held_y)
    out = {
        "image_encoder": model.config.image_encoder,
        "parameters": sum(p.numel() for p in model.parameters()),
        "image_encoder_parameters": sum(p.numel() for p in model.visual.parameters()),
        "logit_scale": round(model.scale().item(), 2),
        "zero_shot_seen": zero_shot_accuracy(model, test_x, test_y),
        "zero_shot_heldout": zero_shot_accuracy(model, held_x, held_y),
        "linear_probe_seen": linear_probe(model, train_x, train_y, test_x, test_y),
        "linear_probe_heldout": probe_held,
    }
    # Retrieval over one image per seen caption (270 distinct pairs).
    seen = shapes.split_labels("test")
    ret_x = shapes.render(seen, size, seed=EVAL_SEED + 3)
    out["retrieval_seen"] = retrieval_recall(model, ret_x, [shapes.caption(l) for l in seen], seen)
    if model_given is None:  # what the weights' training.json says (steps, seconds)
        info = read_training_json(resolve_folder(weights, NAME))
        if info is not None:
            out["training"] = info
    return _round(out)


def compare_encoders(preset: str = "cpu", out_dir="runs/clip_compare", quick: bool = False,
                     **overrides) -> dict:
    """Train the same preset with the ResNet and with the ViT image encoder; evaluate both.

    Returns {"resnet": {...}, "vit": {...}} with train_seconds, parameters and the
    headline accuracies, and writes it to out_dir/comparison.json.
    """
    table = {}
    for encoder in ("resnet", "vit"):
        model = fit(preset, out_dir=Path(out_dir) / encoder, run_dir=Path(out_dir) / encoder / "run",
                    image_encoder=encoder, **overrides)
        res = evaluate(Path(out_dir) / encoder / "clip", quick=quick)
        table[encoder] = summarize(res)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "comparison.json").write_text(json.dumps(table, indent=2) + "\n")
    return table


def summarize(res: dict) -> dict:
    """The headline numbers of an evaluate() result, flat (for tables)."""
    out = {"parameters": res["parameters"],
           "image_encoder_parameters": res.get("image_encoder_parameters"),
           "train_seconds": res.get("training", {}).get("train_seconds"),
           "steps": res.get("training", {}).get("steps")}
    for split in ("seen", "heldout"):
        for task, acc in res[f"zero_shot_{split}"].items():
            out[f"zero_shot_{split}_{task}"] = acc
        out[f"linear_probe_{split}_min"] = min(res[f"linear_probe_{split}"].values())
    out.update(res["retrieval_seen"])
    return out


def _round(d):
    if isinstance(d, dict):
        return {k: _round(v) for k, v in d.items()}
    return round(d, 4) if isinstance(d, float) else d


def headline(result: dict) -> str:
    """One line of an evaluate() result: what a student wants to know first."""
    return f"zero-shot top-1 over the 324 captions: {result['zero_shot_seen']['caption']:.1%}"
