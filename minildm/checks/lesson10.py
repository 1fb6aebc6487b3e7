"""Lesson 10 - composition (notebooks/10_composition.ipynb): the lesson's exercise checks."""
from __future__ import annotations

import torch

from ._core import expect, expect_tensor, match_mistake, passed, run_student_function


def _relation_cases():
    """Centre offsets (dx, dy) of object b minus object a on a grid, the ties (|dx| = |dy|) left out."""
    steps = torch.linspace(-0.8, 0.8, 17)
    dx, dy = torch.meshgrid(steps, steps, indexing="xy")
    keep = dx.abs() != dy.abs()
    return dx[keep], dy[keep]                                              # (N,), (N,)


def relation_of(student_relation) -> None:
    """Exercise: student_relation(dx, dy) -> the relation index of object a to object b, where
    (dx, dy) = b's centre minus a's (x to the right, y *downwards*, as in an image) and the
    index is into scenes.RELATIONS: 0 to the left of, 1 to the right of, 2 above, 3 below."""
    from ..data import scenes
    dx, dy = _relation_cases()
    got = run_student_function(student_relation, dx.clone(), dy.clone(), name="your relation rule")
    got = expect_tensor(torch.as_tensor(got), dx.shape, "the relations (one index per offset)").long()
    want = scenes.relation_of(dx, dy)
    horizontal, vertical = torch.where(dx > 0, 0, 1), torch.where(dy > 0, 2, 3)
    match_mistake(got, {
        "above and below are swapped. In an image y grows *downwards*: dy > 0 means b is lower, "
        "so a is above b (2).": torch.where(dx.abs() > dy.abs(), horizontal, 5 - vertical),
        "left and right are swapped. dx > 0 means b is further right, so a is to the *left* of b (0).":
            torch.where(dx.abs() > dy.abs(), 1 - horizontal, vertical),
        "you described b relative to a. The caption says where a is: 'a red circle (a) to the left "
        "of a blue square (b)'.": torch.tensor(scenes.CONVERSE)[want],
        "compare the distances |dx| > |dy|, not the signed offsets: the longer distance decides "
        "the axis.": torch.where(dx > dy, horizontal, vertical),
        "the axes are mixed up: the *longer* distance decides (|dx| > |dy| -> left/right).":
            torch.where(dx.abs() < dy.abs(), horizontal, vertical),
    })
    expect(torch.equal(got, want), "some relations differ from the rule: the longer of |dx|, |dy| decides "
                                   "the axis; its sign decides the side (0 left, 1 right, 2 above, 3 below).")
    passed("the judge's relation rule: the longer distance picks the axis, its sign the side.")


def swap_test_wins(student_wins) -> None:
    """Exercise: student_wins(similarity (N, 3)) -> (N,) bool: does column 0 (the true caption)
    *strictly* beat both column 1 (attribute-swapped) and column 2 (relation-swapped)?"""
    from ..zero_shot import swap_test_score
    g = torch.Generator().manual_seed(10)
    sim = torch.randn(60, 3, generator=g).round(decimals=1)               # rounding makes ties
    sim[:6] = sim[:6, :1]                                                 # a bag of words: all three equal
    got = run_student_function(student_wins, sim.clone(), name="your swap-test scoring")
    got = torch.as_tensor(got)
    expect(got.shape == (60,), f"return one answer per image, shape (60,), got {tuple(got.shape)}. "
                               "Compare within each row (dim=1).")
    got = got.bool().long()
    want = (sim[:, :1] > sim[:, 1:]).all(1)
    match_mistake(got, {
        "a tie is not a win. An encoder that cannot tell the captions apart gives them exactly the "
        "same score; it must fail the test (use >, not >=; argmax picks the first of equal scores).":
            (sim[:, :1] >= sim[:, 1:]).all(1).long(),
        "the true caption must beat *both* swaps, not only the attribute-swapped one (column 1).":
            (sim[:, 0] > sim[:, 1]).long(),
        "the true caption must beat *both* swaps, not only the relation-swapped one (column 2).":
            (sim[:, 0] > sim[:, 2]).long(),
        "beating one of the swaps is not enough: use .all(), not .any().": (sim[:, :1] > sim[:, 1:]).any(1).long(),
        "higher similarity is better: the true caption should have the *largest* score.":
            (sim[:, :1] < sim[:, 1:]).all(1).long(),
    }, atol=0)
    expect(torch.equal(got, want.long()), "some answers differ: image i passes when sim[i, 0] > sim[i, 1] "
                                          "and sim[i, 0] > sim[i, 2].")
    expect(abs(got.float().mean().item() - swap_test_score(sim)["both"]) < 1e-6,
           "the mean of your answers should be the swap-test accuracy.")
    passed("the swap test: the true caption must strictly beat both swapped captions.")
