"""Lesson 10 checks pass the reference and catch typical wrong answers."""
import pytest
import torch

from minildm import checks
from minildm.data import scenes

torch.set_num_threads(1)


# ---------------------------------------------------------------- the judge's relation rule

def good_relation(dx, dy):
    return torch.where(dx.abs() > dy.abs(), torch.where(dx > 0, 0, 1), torch.where(dy > 0, 2, 3))


def test_relation_of_accepts_reference(capsys):
    checks.relation_of(good_relation)
    checks.relation_of(scenes.relation_of)
    assert "Correct" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, hint", [
    (lambda dx, dy: torch.where(dx.abs() > dy.abs(), torch.where(dx > 0, 0, 1), torch.where(dy > 0, 3, 2)),
     "downwards"),                                                        # y up, as in maths
    (lambda dx, dy: torch.where(dx.abs() > dy.abs(), torch.where(dx > 0, 1, 0), torch.where(dy > 0, 2, 3)),
     "left and right are swapped"),
    (lambda dx, dy: torch.where(dx.abs() > dy.abs(), torch.where(dx > 0, 1, 0), torch.where(dy > 0, 3, 2)),
     "relative to a"),                                                    # b's relation to a
    (lambda dx, dy: torch.where(dx > dy, torch.where(dx > 0, 0, 1), torch.where(dy > 0, 2, 3)), r"\|dx\|"),
    (lambda dx, dy: torch.where(dx.abs() < dy.abs(), torch.where(dx > 0, 0, 1), torch.where(dy > 0, 2, 3)),
     "longer"),
    (lambda dx, dy: torch.zeros_like(dx).long(), "differ"),
    (lambda dx, dy: good_relation(dx, dy)[:3], "shape"),
])
def test_relation_of_catches(wrong, hint):
    with pytest.raises(checks.CheckFailed, match=hint):
        checks.relation_of(wrong)


def test_relation_of_not_implemented():
    def stub(dx, dy):
        raise NotImplementedError
    with pytest.raises(checks.CheckFailed, match="NotImplementedError"):
        checks.relation_of(stub)


# ---------------------------------------------------------------- swap-test scoring

def good_wins(sim):
    return (sim[:, 0] > sim[:, 1]) & (sim[:, 0] > sim[:, 2])


def test_swap_test_wins_accepts_reference(capsys):
    checks.swap_test_wins(good_wins)
    checks.swap_test_wins(lambda s: (s[:, :1] > s[:, 1:]).all(1).float())   # floats are fine
    assert "Correct" in capsys.readouterr().out


@pytest.mark.parametrize("wrong, hint", [
    (lambda s: s.argmax(1) == 0, "tie is not a win"),
    (lambda s: (s[:, 0] >= s[:, 1]) & (s[:, 0] >= s[:, 2]), "tie is not a win"),
    (lambda s: s[:, 0] > s[:, 1], "only the attribute-swapped"),
    (lambda s: s[:, 0] > s[:, 2], "only the relation-swapped"),
    (lambda s: (s[:, 0] > s[:, 1]) | (s[:, 0] > s[:, 2]), "any"),
    (lambda s: (s[:, :1] < s[:, 1:]).all(1), "largest"),
    (lambda s: (s[:, :1] > s[:, 1:]).all(0), "shape"),
])
def test_swap_test_wins_catches(wrong, hint):
    with pytest.raises(checks.CheckFailed, match=hint):
        checks.swap_test_wins(wrong)
