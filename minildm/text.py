"""A word-level tokenizer over the Shapes vocabulary.

Real CLIP uses byte-pair encoding over 49k tokens. Our world has about forty
words, so one token per word is enough and much easier to read:

    "a large red circle in the top left"
    -> [<bos>, a, large, red, circle, in, the, top, left, <eos>, <pad>, ..., <pad>]

Every prompt becomes CONTEXT_LENGTH ids. The empty prompt "" becomes
[<bos>, <eos>, <pad>, ...]: the *unconditional* sequence that classifier-free
guidance needs. A word outside the vocabulary raises a ValueError that names the
word and the closest words the model knows.

Taught in notebooks/04_clip.ipynb.
"""
from __future__ import annotations

import difflib
import re

import torch

from .data.shapes import COLOR_NAMES, SHAPES, SIZE_WORDS, WHERE_WORDS

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
SPECIAL_TOKENS = (PAD, BOS, EOS)
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
CONTEXT_LENGTH = 16  # <bos> + up to 14 words + <eos>
MAX_WORDS = CONTEXT_LENGTH - 2


def _caption_words() -> list[str]:
    words = {"a", "an", "the"} | set(COLOR_NAMES) | set(SHAPES)
    for options in SIZE_WORDS.values():
        words |= set(options)
    for options in WHERE_WORDS:
        for phrase in options:
            words |= set(phrase.split())
    return sorted(words)


# Words added after the first vocabulary, appended so that every older word keeps its id:
# "shape" for partial prompts ("a blue shape", lesson 09), the relations of two-object
# scenes ("a red circle to the left of a blue square", "above", "below", lesson 10).
EXTRA_WORDS = ("shape", "to", "of", "above", "below")
WORDS = tuple(_caption_words()) + EXTRA_WORDS
VOCAB = SPECIAL_TOKENS + WORDS
TOKEN_TO_ID = {token: i for i, token in enumerate(VOCAB)}
VOCAB_SIZE = len(VOCAB)


class PromptError(ValueError):
    """A prompt the tokenizer cannot encode; the message says what is allowed."""


def split_words(prompt: str) -> list[str]:
    """Lower-case a prompt and split it into words (commas and full stops ignored)."""
    if not isinstance(prompt, str):
        raise PromptError(f"a prompt must be a str, got {type(prompt).__name__}")
    return re.sub(r"[,.;:!?]", " ", prompt.lower()).split()


def encode(prompt: str) -> list[int]:
    """One prompt -> CONTEXT_LENGTH token ids (bos, words, eos, padding)."""
    words = split_words(prompt)
    if len(words) > MAX_WORDS:
        raise PromptError(f"prompt has {len(words)} words; at most {MAX_WORDS} are allowed: {prompt!r}")
    ids = [BOS_ID]
    for word in words:
        if word not in TOKEN_TO_ID or word in SPECIAL_TOKENS:
            near = difflib.get_close_matches(word, WORDS, n=3)
            hint = f"did you mean {' or '.join(repr(w) for w in near)}? " if near else ""
            raise PromptError(f"unknown word {word!r} in prompt {prompt!r}; {hint}"
                              f"known words: {', '.join(WORDS)}")
        ids.append(TOKEN_TO_ID[word])
    ids.append(EOS_ID)
    return ids + [PAD_ID] * (CONTEXT_LENGTH - len(ids))


def tokenize(prompts) -> torch.Tensor:
    """A prompt or a list of prompts -> LongTensor (B, CONTEXT_LENGTH)."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)):
        raise PromptError(f"prompts must be a str or a list of str, got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise PromptError("prompts is an empty list; give at least one prompt")
    return torch.tensor([encode(p) for p in prompts], dtype=torch.long)


def decode(ids) -> str:
    """Token ids -> the words between <bos> and <eos>."""
    words = []
    for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids):
        if i == EOS_ID:
            break
        if i not in (BOS_ID, PAD_ID):
            words.append(VOCAB[i])
    return " ".join(words)


def eos_positions(tokens: torch.Tensor) -> torch.Tensor:
    """(B, L) ids -> (B,) index of the <eos> token (CLIP pools the text there)."""
    return (tokens == EOS_ID).int().argmax(dim=-1)
