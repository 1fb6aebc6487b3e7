"""Lesson 00 - welcome (notebooks/00_welcome.ipynb): the lesson's exercise checks."""
from __future__ import annotations

from ._core import expect, passed, run_student_function


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


def count_captions(student_count) -> None:
    """Exercise: how many canonical captions are there?"""
    from ..data import shapes
    expect(isinstance(student_count, int), f"give a whole number, got {type(student_count).__name__}.")
    expect(student_count == shapes.NUM_CAPTIONS,
           "multiply the number of choices of each attribute: shapes x colors x sizes x positions.")
    passed(f"{shapes.NUM_CAPTIONS} = 3 shapes x 6 colors x 2 sizes x 9 positions.")
