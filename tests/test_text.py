"""Tokenizer: round trips, the unconditional sequence, and clear errors for anything else."""
import pytest
import torch
from hypothesis import given, settings, strategies as st

from minildm import text
from minildm.data import shapes


def test_every_canonical_caption_round_trips():
    tokens = text.tokenize(shapes.all_captions())
    assert tokens.shape == (324, text.CONTEXT_LENGTH) and tokens.dtype == torch.long
    assert (tokens[:, 0] == text.BOS_ID).all()
    for caption, row in zip(shapes.all_captions(), tokens):
        assert text.decode(row) == caption


def test_paraphrases_are_in_the_vocabulary():
    import numpy as np
    rng = np.random.default_rng(0)
    for labels in shapes.all_labels()[::7]:
        text.tokenize(shapes.paraphrase(labels, rng))


def test_empty_prompt_is_the_unconditional_sequence():
    ids = text.tokenize("")[0]
    assert ids[:2].tolist() == [text.BOS_ID, text.EOS_ID] and (ids[2:] == text.PAD_ID).all()
    assert text.eos_positions(text.tokenize(["", "a red circle"])).tolist() == [1, 4]


def test_case_and_punctuation_are_ignored():
    assert torch.equal(text.tokenize("A Large RED circle, in the center."),
                       text.tokenize("a large red circle in the center"))


def test_unknown_word_names_it_and_suggests_near_words():
    with pytest.raises(ValueError, match="'circel'.*'circle'"):
        text.tokenize("a large red circel")


def test_too_long_prompt():
    with pytest.raises(ValueError, match="at most 14"):
        text.tokenize(" ".join(["red"] * 15))


@pytest.mark.parametrize("bad", [None, 3, ["a red circle", 5], [], b"red"])
def test_non_string_prompts(bad):
    with pytest.raises(ValueError):
        text.tokenize(bad)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_arbitrary_strings_encode_or_raise_a_clear_error(prompt):
    try:
        tokens = text.tokenize(prompt)
    except text.PromptError as err:
        assert str(err)
    else:
        assert tokens.shape == (1, text.CONTEXT_LENGTH)
        assert tokens.min() >= 0 and tokens.max() < text.VOCAB_SIZE
        assert text.decode(tokens[0]) == " ".join(text.split_words(prompt))


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(text.WORDS), max_size=14))
def test_any_known_words_round_trip(words):
    prompt = " ".join(words)
    assert text.decode(text.tokenize(prompt)[0]) == prompt
