"""The shared machinery of the lesson checks: expect, hints, and one mistake matcher.

Each exercise in a notebook is followed by a cell such as

    checks.q_sample(my_q_sample)

A check calls the student's function on random inputs and edge cases, compares
with the reference in the library, and either prints one success line or raises
an AssertionError whose message is a *hint* (wrong shape? forgot a square root?
broadcasting over t?). tests/test_checks*.py feed every check deliberately wrong
implementations to prove that it catches them.

Writing a check: use `expect(condition, hint)` for each property, most basic
first (type, shape) so the first failing hint is the most useful one; compare the
result with typical wrong answers with `match_mistake` (or `diagnose`, which
falls back to a generic hint); finish with `passed("what was checked")`.
One module per lesson (lesson00.py ... lesson07.py) holds that lesson's checks.
"""
from __future__ import annotations

import torch


class CheckFailed(AssertionError):
    """A lesson check failed; the message is a hint for the student."""


def expect(condition, hint: str) -> None:
    """Raise CheckFailed(hint) unless condition holds."""
    if not bool(condition):
        raise CheckFailed("Not yet: " + hint)


def expect_tensor(value, shape=None, name: str = "your function's result") -> torch.Tensor:
    """Check that value is a tensor (of the given shape); return it."""
    expect(isinstance(value, torch.Tensor),
           f"{name} should be a torch.Tensor, got {type(value).__name__}.")
    if shape is not None:
        expect(tuple(value.shape) == tuple(shape),
               f"{name} should have shape {tuple(shape)}, got {tuple(value.shape)}.")
    expect(torch.isfinite(value).all(), f"{name} contains NaN or inf values.")
    return value


def expect_close(actual: torch.Tensor, expected: torch.Tensor, hint: str,
                 atol: float = 1e-4, rtol: float = 1e-4) -> None:
    """Check values against the reference, with the hint if they differ."""
    err = (actual.detach().float() - expected.detach().float()).abs().max().item()
    expect(torch.allclose(actual.detach().float(), expected.detach().float(), atol=atol, rtol=rtol),
           f"{hint} (largest difference from the reference: {err:.3g})")


def passed(what: str) -> None:
    """Print the success line of a check."""
    print(f"Correct! {what}")


def run_student_function(fn, *args, name: str = "your function", **kwargs):
    """Call the student's function; a NotImplementedError becomes a friendly hint."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError as err:
        raise CheckFailed(f"Not yet: {name} still raises NotImplementedError - "
                          f"replace the `raise NotImplementedError` line with your code.") from err



def match_mistake(got: torch.Tensor, mistakes: dict, atol: float = 1e-4, rtol: float = 1e-5) -> None:
    """If `got` equals one of the typical wrong answers ({hint: wrong tensor}), fail with its hint."""
    for hint, wrong in mistakes.items():
        if wrong is None or wrong.shape != got.shape or not torch.isfinite(wrong).all():
            continue
        if torch.allclose(got.detach().float(), wrong.float(), atol=atol, rtol=rtol):
            raise CheckFailed("Not yet: " + hint)


def diagnose(got: torch.Tensor, mistakes: dict, hint: str, atol: float = 1e-4) -> None:
    """Fail with the hint of the typical wrong answer `got` matches, else with the generic `hint`."""
    match_mistake(got, mistakes, atol=atol)
    raise CheckFailed("Not yet: " + hint)


def per_example(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) with ndim dimensions (what schedule.extract does)."""
    return values.view(-1, *[1] * (ndim - 1))


def schedule_for_checks(kind: str = "linear"):
    """The NoiseSchedule the checks compare against (T = 1000)."""
    from ..schedule import NoiseSchedule
    return NoiseSchedule(kind, 1000)
