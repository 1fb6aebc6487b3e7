"""Lesson 00 - welcome (notebooks/00_welcome.ipynb): the lesson's exercise checks."""
from __future__ import annotations

from ._core import CheckFailed, expect, passed, run_student_function


def caption_of(student_caption) -> None:
    """Exercise: build the canonical caption from a label vector."""
    from ..data import shapes
    labels = shapes.all_labels()
    for i in (0, 17, 100, 200, 323):
        got = run_student_function(student_caption, labels[i], name="caption")
        expect(isinstance(got, str), f"return a str, got {type(got).__name__}.")
        want = shapes.caption(labels[i])
        expect(got == want, f"for labels {labels[i].tolist()} the caption should be {want!r}, "
                            f"got {got!r}. Look at the template 'a {{size}} {{color}} {{shape}} {{where}}' "
                            f"and use WHERE for the position words.")
    passed("your captions match the canonical ones for every attribute.")


# Prompts the notebook never shows: a function that hard-codes one answer cannot pass.
_PROMPTS = ("a large red circle in the top left", "", "a small cyan triangle at the bottom",
            "A big Green square, in the upper right.", "a blue shape",
            "a yellow triangle to the left of a red circle")


def _ids(value, prompt):
    try:
        ids = [int(i) for i in value]
    except (TypeError, ValueError):
        raise CheckFailed(f"Not yet: for {prompt!r} return a list (or 1-D tensor) of token ids, "
                          f"got {type(value).__name__}.") from None
    return ids


def tokenize(student_tokenize) -> None:
    """Exercise: one prompt -> text.CONTEXT_LENGTH ids: <bos>, one id per word, <eos>, then <pad>.

    student_tokenize(prompt: str) -> list of ints (or a 1-D tensor); a word outside the vocabulary,
    or more words than fit, raises a ValueError.
    """
    from .. import text
    L = text.CONTEXT_LENGTH
    for prompt in _PROMPTS:
        try:
            got = run_student_function(student_tokenize, prompt, name="my_tokenize")
        except KeyError as err:
            raise CheckFailed(f"Not yet: {prompt!r} raised KeyError {err}: split the prompt with "
                              "text.split_words(prompt), which lower-cases it and drops commas and "
                              "full stops, before looking the words up.") from err
        got = _ids(got, prompt)
        want = text.encode(prompt)
        if got == want:
            continue
        words = [text.TOKEN_TO_ID[w] for w in text.split_words(prompt)]
        pad = [text.PAD_ID] * L
        mistakes = {
            "the sequence must start with <bos> (text.BOS_ID).": (words + [text.EOS_ID] + pad)[:L],
            "the words must be followed by <eos> (text.EOS_ID) before the padding.":
                ([text.BOS_ID] + words + pad)[:L],
            "<eos> comes right after the last word; the padding goes after it.":
                ([text.BOS_ID] + words + pad)[:L - 1] + [text.EOS_ID],
            f"pad with <pad> (text.PAD_ID = {text.PAD_ID}), not by repeating <eos>.":
                [text.BOS_ID] + words + [text.EOS_ID] * (L - 1 - len(words)),
            "the ids index text.VOCAB (the three special tokens come first), not text.WORDS: use "
            "text.TOKEN_TO_ID[word].": ([text.BOS_ID] + [i - 3 for i in words] + [text.EOS_ID] + pad)[:L],
        }
        for hint, wrong in mistakes.items():
            expect(got != wrong, hint)
        expect(len(got) == L, f"every prompt becomes exactly text.CONTEXT_LENGTH = {L} ids (pad the end "
                              f"with text.PAD_ID); for {prompt!r} you returned {len(got)}.")
        expect(False, f"for {prompt!r} the ids should be {want}, got {got}.")
    for bad, why in (("a large purple circle", "a word outside the vocabulary ('purple')"),
                     (" ".join(["a"] * (L - 1)), f"{L - 1} words (only {L - 2} fit between <bos> and <eos>)")):
        try:
            run_student_function(student_tokenize, bad, name="my_tokenize")
        except ValueError:
            continue
        except KeyError:
            pass
        expect(False, f"{why} must raise a ValueError that says what is wrong (a model cannot read an id "
                      f"it never learned, nor a prompt cut short without telling anyone).")
    passed(f"<bos>, one id per word, <eos>, padding to {L}; unknown words and long prompts are refused.")
