"""Lesson 00 checks pass the reference and catch typical wrong answers."""
import re

import pytest

from minildm import checks, text
from minildm.checks import CheckFailed
from minildm.data import shapes


def test_caption_check():
    checks.caption_of(shapes.caption)
    with pytest.raises(CheckFailed, match="caption should be"):
        checks.caption_of(lambda l: shapes.caption(l).replace("in the ", "at the "))
    with pytest.raises(CheckFailed, match="str"):
        checks.caption_of(lambda l: l.tolist())


def tokenize_variant(kind):
    L = text.CONTEXT_LENGTH

    def fn(prompt):
        words = text.split_words(prompt)
        if len(words) > L - 2 and kind != "no length check":
            raise ValueError("too long")
        if kind == "no length check" and any(w not in text.TOKEN_TO_ID for w in words):
            raise ValueError("unknown word")
        ids = [text.TOKEN_TO_ID[w] for w in words]           # KeyError = no ValueError for unknown words
        pad = [text.PAD_ID] * L
        if kind == "no bos":
            return (ids + [text.EOS_ID] + pad)[:L]
        if kind == "no eos":
            return ([text.BOS_ID] + ids + pad)[:L]
        if kind == "eos at the end":
            return ([text.BOS_ID] + ids + pad)[:L - 1] + [text.EOS_ID]
        if kind == "pad with eos":
            return [text.BOS_ID] + ids + [text.EOS_ID] * (L - 1 - len(ids))
        if kind == "WORDS index":
            return ([text.BOS_ID] + [text.WORDS.index(w) for w in words] + [text.EOS_ID] + pad)[:L]
        if kind == "no padding":
            return [text.BOS_ID] + ids + [text.EOS_ID]
        if kind in ("unknown word as KeyError", "no length check"):
            return ([text.BOS_ID] + ids + [text.EOS_ID] + pad)[:L]
        raise AssertionError(kind)
    return fn


def test_tokenize_check_accepts_the_library(capsys):
    checks.tokenize(text.encode)
    checks.tokenize(lambda p: text.tokenize(p)[0])                # a tensor is fine too
    assert "Correct!" in capsys.readouterr().out


@pytest.mark.parametrize("kind, hint", [
    ("no bos", "start with <bos>"),
    ("no eos", "followed by <eos>"),
    ("eos at the end", "<eos> comes right after the last word"),
    ("pad with eos", "not by repeating <eos>"),
    ("WORDS index", "not text.WORDS"),
    ("no padding", "exactly text.CONTEXT_LENGTH"),
    ("unknown word as KeyError", "'purple'"),
    ("no length check", "15 words"),
])
def test_tokenize_check_catches(kind, hint):
    with pytest.raises(CheckFailed, match=re.escape(hint)):
        checks.tokenize(tokenize_variant(kind))


def test_tokenize_check_sees_a_hard_coded_answer():
    """Typing the one answer the notebook shows does not pass: the check asks for other prompts."""
    shown = text.encode("a large red circle in the top left")
    with pytest.raises(CheckFailed, match="the ids should be"):
        checks.tokenize(lambda prompt: shown)


def test_tokenize_check_hints_at_split_words():
    with pytest.raises(CheckFailed, match="split_words"):
        checks.tokenize(lambda p: ([text.BOS_ID] + [text.TOKEN_TO_ID[w] for w in p.split()] + [text.EOS_ID]
                                   + [text.PAD_ID] * 16)[:16])


def test_tokenize_stub_gives_hint():
    with pytest.raises(CheckFailed, match="NotImplementedError"):
        checks.tokenize(lambda p: (_ for _ in ()).throw(NotImplementedError()))
