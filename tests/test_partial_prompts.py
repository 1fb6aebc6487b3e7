"""Partial prompts: captions that leave attributes out, and how training makes them."""
import json

import numpy as np
import pytest
import torch

from minildm.data import shapes
from minildm.recipes.ldm import captions_for_training
from minildm.text import VOCAB_SIZE, tokenize
from minildm.weights_io import PACKAGE_WEIGHTS


def test_partial_caption_names_only_what_it_keeps():
    labels = shapes.labels_of("circle", "red", "large", "top left")
    assert shapes.partial_caption(labels, {"color", "shape"}) == "a red circle"
    assert shapes.partial_caption(labels, {"size", "shape", "position"}) == "a large circle in the top left"
    assert shapes.partial_caption(labels, {"color"}) == "a red shape"
    assert shapes.partial_caption(labels, set()) == "a shape"
    with pytest.raises(ValueError, match="shape, color, size, position"):
        shapes.partial_caption(labels, {"texture"})


def test_training_captions_mix_full_partial_and_empty_in_the_stated_shares():
    labels = shapes.sample_labels(4000, "train", seed=0)
    captions = captions_for_training(labels, np.random.default_rng(0), prompt_dropout=0.1, partial_prompts=0.3)
    tokenize(captions)                                                    # every one is a valid prompt
    empty = np.mean([c == "" for c in captions])
    sizes = {w for words in shapes.SIZE_WORDS.values() for w in words}
    wheres = [w for options in shapes.WHERE_WORDS for w in options]

    def names_all_four(c):
        words = c.split()
        return (len(words) > 2 and words[1] in sizes and words[2] in shapes.COLOR_NAMES
                and words[3] in shapes.SHAPES and any(c.endswith(w) for w in wheres))

    full = np.mean([names_all_four(c) for c in captions])
    assert abs(empty - 0.10) < 0.02
    assert abs(full - (0.63 + 0.27 / 16)) < 0.03   # 63% full, plus the partial ones that kept all four


def test_without_partial_prompts_the_data_stream_is_the_old_one():
    labels = shapes.sample_labels(64, "train", seed=1)
    rng_new, rng_old = np.random.default_rng(3), np.random.default_rng(3)
    old = [shapes.paraphrase(l, rng_old) for l in labels]                # the recipe before partial prompts
    drop = rng_old.random(64) < 0.1
    old = ["" if d else c for d, c in zip(drop, old)]
    assert captions_for_training(labels, rng_new, 0.1, 0.0) == old


PARTIAL_SHIPPED = (PACKAGE_WEIGHTS / "partial" / "ldm" / "pipeline.json").exists()


@pytest.mark.skipif(not PARTIAL_SHIPPED, reason="the shipped partial-prompt model is not trained yet")
def test_shipped_partial_model_loads_with_its_own_clip_and_follows_named_attributes():
    from minildm.data.judge import judge
    from minildm.pipeline import LatentDiffusionPipeline
    from minildm.recipes import ldm
    torch.set_num_threads(1)
    pipe = LatentDiffusionPipeline.from_pretrained("partial")
    assert pipe.sources["clip"] == PACKAGE_WEIGHTS / "partial" / "clip"      # knows "shape"; lesson 06's does not
    assert pipe.clip.config.vocab_size == VOCAB_SIZE
    training = json.loads((PACKAGE_WEIGHTS / "partial" / "ldm" / "training.json").read_text())
    preset = ldm.PRESETS["partial"]
    assert training["preset"] == "partial" and training["steps"] == preset.train.steps
    assert preset.partial_prompts > 0 and preset.snr_gamma
    images = pipe(["a red shape"] * 12, num_steps=20, seed=0)                    # colour named, shape not
    read = judge(images)["labels"]
    assert (read[:, 1] == shapes.COLOR_NAMES.index("red")).float().mean() >= 0.75   # chance: 1/6
