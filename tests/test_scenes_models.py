"""Lesson 10's models: the swap test, the bag-of-words text encoder, the scenes recipes and the
shipped scenes weights (minildm/weights/scenes)."""
import dataclasses

import pytest
import torch

from minildm import LatentDiffusionPipeline, clip, text, zero_shot
from minildm.data import scenes
from minildm.data.judge import grade_scenes
from minildm.recipes import scenes as scenes_recipe
from minildm.recipes import scenes_clip
from minildm.weights_io import PACKAGE_WEIGHTS

torch.set_num_threads(1)
TINY = scenes_clip.PRESETS["tiny"].model
SHIPPED = PACKAGE_WEIGHTS / "scenes"


# ---------------------------------------------------------------- the swap test

def test_swap_test_scoring_on_a_hand_made_case():
    sim = torch.tensor([[0.9, 0.1, 0.2],     # beats both
                        [0.5, 0.5, 0.1],     # ties the attribute swap: a failure
                        [0.2, 0.3, 0.1],     # loses to the attribute swap
                        [0.7, 0.1, 0.7]])    # ties the relation swap
    score = zero_shot.swap_test_score(sim)
    assert score == {"attribute": 0.5, "relation": 0.75, "both": 0.25}


def test_swap_captions_hold_the_same_words():
    labels = scenes.labels_of("circle", "red", "to the left of", "square", "blue")[None]
    true, attribute, relation = zero_shot.swap_captions(labels)[0]
    assert true == "a red circle to the left of a blue square"
    assert attribute == "a blue circle to the left of a red square"
    assert relation == "a blue square to the left of a red circle"
    assert sorted(true.split()) == sorted(attribute.split()) == sorted(relation.split())


def test_bag_of_words_ignores_word_order_exactly():
    torch.manual_seed(0)
    bag = clip.MiniCLIP(dataclasses.replace(TINY, text_encoder="bag")).eval()
    transformer = clip.MiniCLIP(TINY).eval()
    labels = scenes.sample_labels(50, "all", seed=1)
    captions = [c for triple in zero_shot.swap_captions(labels) for c in triple]
    tokens = text.tokenize(captions)
    with torch.no_grad():
        e_bag = bag.encode_text(tokens).view(50, 3, -1)
        e_tr = transformer.encode_text(tokens).view(50, 3, -1)
    assert torch.equal(e_bag[:, 0], e_bag[:, 1]) and torch.equal(e_bag[:, 0], e_bag[:, 2])
    assert not torch.allclose(e_tr[:, 0], e_tr[:, 1])
    images = scenes.render(labels, TINY.image_size, seed=1)
    assert zero_shot.swap_test(bag, images, labels) == {"attribute": 0.0, "relation": 0.0, "both": 0.0}


def test_bad_text_encoder_is_a_clear_error():
    with pytest.raises(ValueError, match="'transformer' or 'bag'"):
        clip.CLIPConfig(text_encoder="lstm")


# ---------------------------------------------------------------- the recipes (tiny presets)

def test_recipes_train_and_save_a_loadable_scenes_pipeline(tmp_path):
    scenes_clip.fit("tiny", out_dir=tmp_path, run_dir=None)
    assert (tmp_path / "scenes" / "clip" / "model.safetensors").exists()
    preset = dataclasses.replace(scenes_recipe.PRESETS["tiny"], latent_pool=64)
    scenes_recipe.fit(preset, out_dir=tmp_path, run_dir=None, steps=3)
    pipe = LatentDiffusionPipeline.from_pretrained(tmp_path / "scenes")
    assert pipe.sources["clip"] == tmp_path / "scenes" / "clip"
    x = pipe(["a red circle to the left of a blue square"], num_steps=2, seed=0)
    assert x.shape == (1, 3, 32, 32)


def test_match_keys_treat_a_converse_caption_as_the_same_scene():
    labels = scenes.sample_labels(20, "all", seed=2)
    assert torch.equal(scenes_clip.match_keys(labels), scenes_clip.match_keys(scenes.converse(labels)))


# ---------------------------------------------------------------- the shipped weights

needs_weights = pytest.mark.skipif(not (SHIPPED / "ldm" / "model.safetensors").exists(),
                                   reason="no shipped scenes weights")


@needs_weights
def test_shipped_scenes_clip_passes_the_swap_test_and_the_bag_cannot():
    images, _, labels = scenes.sample_batch(100, "test", 32, seed=5)
    model = clip.MiniCLIP.from_pretrained(SHIPPED / "clip")
    bag = clip.MiniCLIP.from_pretrained(SHIPPED / "clip_bag")
    assert zero_shot.swap_test(model, images, labels)["both"] >= 0.8
    assert zero_shot.swap_test(bag, images, labels)["both"] == 0.0


@needs_weights
def test_shipped_scenes_pipeline_binds_far_above_chance():
    pipe = LatentDiffusionPipeline.from_pretrained("scenes")
    labels = scenes.sample_labels(12, "test", seed=3)
    images = scenes_recipe.generate(pipe, labels, num_steps=20, seed=0)
    # chance: 1 in 1,080 captions (about 1 in 540 layouts); the shipped model is far above it
    assert grade_scenes(images, labels)["binding"] >= 0.2
