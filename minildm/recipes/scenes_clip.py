"""Recipe: the mini CLIP trained on two-object scenes, and the swap test (lesson 10).

The same model code as lesson 04 (clip.MiniCLIP) and the same loss; only the data
stream changes: fresh two-object scenes (data/scenes.py) with paraphrased captions
("a red circle left of a blue square", "a blue square to the right of a red circle").

No random crop here. Lesson 04's crop is made safe for *one* object's 3x3 cell; in a
scene a crop must also keep both objects whole and their relation true (a crop that
cuts off one object, or squeezes the horizontal gap below the vertical one, changes
the caption). Checking all of that buys little on rendered data, so the scenes CLIP
sees whole images.

Two text encoders, the same recipe: the Transformer (the default) and a bag of words
(`text_encoder="bag"`: the mean of the word embeddings, no order). The swap test
(zero_shot.swap_test) shows which of them can bind a colour to its object.

    python -m minildm train scenes_clip --preset cpu --out minildm/weights   # -> minildm/weights/scenes/clip
    python -m minildm evaluate scenes_clip

Taught in notebooks/10_composition.ipynb.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from .. import text
from ..clip import CLIPConfig, MiniCLIP
from ..data import scenes
from ..train import TrainConfig, train
from ..weights_io import PACKAGE_WEIGHTS
from ..zero_shot import scenes_zero_shot, swap_test
from . import Job, get_preset, read_training_json, write_training_json
from .clip import CLIPPreset, _round
from .clip import loss_fn as clip_loss_fn

NAME = "scenes_clip"
FOLDER = Path("scenes") / "clip"          # out_dir/scenes/clip: the clip/ of the scenes pipeline
BAG_FOLDER = Path("scenes") / "clip_bag"  # the bag-of-words baseline, shipped for notebook 10

PRESETS = {
    "tiny": CLIPPreset(  # seconds: tests and nbval
        CLIPConfig(embed_dim=32, text_width=32, text_layers=1, text_heads=2, resnet_widths=(16, 16, 32),
                   resnet_heads=2, vit_width=32, vit_layers=1, vit_heads=2),
        TrainConfig(steps=40, batch_size=64, lr=2e-3, warmup_steps=10, log_every=10, progress=False),
        crop_probability=0.0),
    "cpu": CLIPPreset(  # the shipped weights: 11.1 min measured on a shared 2-core machine (1 thread, load ~7)
        CLIPConfig(),
        TrainConfig(steps=700, batch_size=128, lr=2e-3, warmup_steps=70, weight_decay=0.1,
                    log_every=25, checkpoint_every=100),
        crop_probability=0.0),
    "gpu": CLIPPreset(  # 64 x 64 scenes, a bigger model, bf16
        CLIPConfig(image_size=64, embed_dim=128, text_width=128, text_layers=4, text_heads=4,
                   resnet_widths=(32, 64, 64, 128), vit_width=128, vit_layers=6),
        TrainConfig(steps=5000, batch_size=512, lr=1e-3, warmup_steps=300, weight_decay=0.1,
                    precision="bf16", log_every=100),
        crop_probability=0.0),
}
BAG_STEPS = 300   # the bag-of-words baseline (5.7 min measured): it has no order to learn


def match_keys(labels: torch.Tensor) -> torch.Tensor:
    """Scene labels (B, 5) -> (B, 1) keys equal exactly for the same layout.

    "A left of B" and "B right of A" are one scene: both get the smaller of the two
    caption indices, so clip_loss counts such a pair in a batch as a match.
    """
    both = torch.stack([scenes.caption_index(labels), scenes.caption_index(scenes.converse(labels))])
    return both.amin(0)[:, None]


def make_sample_batch(preset: CLIPPreset):
    """The data stream: fresh scenes, paraphrased captions, whole images (no crop)."""
    size = preset.model.image_size

    def sample_batch(batch_size: int, generator: torch.Generator, device):
        seed = int(torch.randint(0, 2 ** 31, (1,), generator=generator))
        images, captions, labels = scenes.sample_batch(batch_size, "train", size, seed=seed, paraphrases=True)
        return images.to(device), text.tokenize(captions).to(device), match_keys(labels).to(device)

    return sample_batch


def job(preset="cpu", run_dir="runs", **overrides) -> Job:
    """The scenes CLIP's training run. overrides: TrainConfig fields or CLIPConfig fields
    (text_encoder="bag" for the baseline)."""
    p = get_preset(PRESETS, preset)
    model_fields = {f.name for f in dataclasses.fields(CLIPConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(overrides) - model_fields - train_fields
    if unknown:
        raise ValueError(f"unknown overrides {sorted(unknown)}; allowed: CLIPConfig fields "
                         f"{sorted(model_fields)} and TrainConfig fields {sorted(train_fields)}")
    model = dataclasses.replace(p.model, **{k: v for k, v in overrides.items() if k in model_fields})
    cfg = dataclasses.replace(p.train, **{k: v for k, v in overrides.items() if k in train_fields})
    name = NAME if model.text_encoder == "transformer" else f"{NAME}_bag"
    if run_dir is not None:
        cfg = dataclasses.replace(cfg, out_dir=str(Path(run_dir) / name))
    p = dataclasses.replace(p, model=model)
    return Job(MiniCLIP(model), clip_loss_fn, make_sample_batch(p), cfg, name)


def fit(preset: str = "cpu", out_dir="weights", run_dir="runs", **overrides) -> MiniCLIP:
    """Train a scenes CLIP; write out_dir/scenes/clip/ (out_dir/scenes/clip_bag/ for text_encoder="bag").

    Shipped weights: `python -m minildm train scenes_clip --preset cpu --out minildm/weights`
    and, for the baseline, fit("cpu", "minildm/weights", text_encoder="bag", steps=BAG_STEPS).
    """
    run = job(preset, run_dir, **overrides)
    result = train(run.model, run.loss_fn, run.sample_batch, run.cfg, name=run.name)
    model = result.model.cpu().eval()
    model.train_seconds, model.history = result.seconds, result.history
    bag = model.config.text_encoder == "bag"
    if out_dir is not None:
        folder = model.save_pretrained(Path(out_dir) / (BAG_FOLDER if bag else FOLDER))
        write_training_json(folder, preset, run.cfg, result, text_encoder=model.config.text_encoder)
        print(f"wrote {folder}/config.json and model.safetensors")
    print(f"trained {run.name} (preset {preset}) for {result.steps_run} steps in {result.seconds:.0f} s")
    return model


# ----------------------------------------------------------------------------
# Evaluation

EVAL_SEED = 2025  # fresh test scenes, never the training stream


def _folder(weights, bag: bool = False) -> Path:
    """None -> the shipped scenes CLIP (or its bag-of-words baseline); else the folder given."""
    if weights is None:
        return PACKAGE_WEIGHTS / (BAG_FOLDER if bag else FOLDER)
    weights = Path(weights)  # a pipeline folder's parent (out_dir), a scenes pipeline, or the CLIP folder
    for folder in (weights / FOLDER, weights / "clip", weights.parent / FOLDER):
        if (folder / "config.json").exists() and not (weights / "config.json").exists():
            return folder
    return weights


def evaluate(weights=None, quick: bool = False, model: MiniCLIP | None = None, bag: bool = False) -> dict:
    """Zero-shot top-1 over the 1,080 captions and the swap test, on seen and held-out scenes.

    `python -m minildm evaluate scenes_clip` (the shipped Transformer CLIP; its bag-of-words
    baseline with bag=True). Taught in notebooks/10_composition.ipynb.
    """
    folder = None if model is not None else _folder(weights, bag)
    model = model if model is not None else MiniCLIP.from_pretrained(folder)
    model.eval()
    size, n = model.config.image_size, 200 if quick else 2000
    out = {"text_encoder": model.config.text_encoder,
           "parameters": sum(p.numel() for p in model.parameters())}
    for split, seed in (("test", EVAL_SEED), ("heldout", EVAL_SEED + 1)):
        images, _, labels = scenes.sample_batch(n, split, size, seed=seed)
        key = "seen" if split == "test" else "heldout"
        out[f"zero_shot_{key}"] = scenes_zero_shot(model, images, labels)
        out[f"swap_test_{key}"] = swap_test(model, images, labels)
    if folder is not None and read_training_json(folder) is not None:
        out["training"] = read_training_json(folder)
    return _round(out)


def headline(result: dict) -> str:
    """One line of an evaluate() result."""
    return (f"{result['text_encoder']} text encoder: zero-shot top-1 over 1,080 captions "
            f"{result['zero_shot_seen']:.1%}, swap test {result['swap_test_seen']['both']:.1%} (seen scenes)")
