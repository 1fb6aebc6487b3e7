"""Lesson checks: does the student's function do what the library's does?

Each exercise in a notebook is followed by a cell such as

    checks.q_sample(my_q_sample)

A check calls the student's function on random inputs and edge cases, compares
with the reference in the library, and either prints one success line or raises
an AssertionError whose message is a *hint* (wrong shape? forgot a square root?
broadcasting over t?). tests/test_checks*.py feed every check deliberately wrong
implementations to prove that it catches them.

Writing a check: use `expect(condition, hint)` for each property, most basic
first (type, shape) so the first failing hint is the most useful one, then
finish with `passed("what was checked")`.
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


# ----------------------------------------------------------------------------
# Lesson 00 - welcome (notebooks/00_welcome.ipynb)

def caption_of(student_caption) -> None:
    """Exercise: build the canonical caption from a label vector."""
    from .data import shapes
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
    from .data import shapes
    expect(isinstance(student_count, int), f"give a whole number, got {type(student_count).__name__}.")
    expect(student_count == shapes.NUM_CAPTIONS,
           "multiply the number of choices of each attribute: shapes x colors x sizes x positions.")
    passed(f"{shapes.NUM_CAPTIONS} = 3 shapes x 6 colors x 2 sizes x 9 positions.")


# ----------------------------------------------------------------------------
# Lesson 01 - forward diffusion (notebooks/01_forward_diffusion.ipynb)

# ----------------------------------------------------------------------------
# Lesson 02 - DDPM (notebooks/02_ddpm.ipynb)

# ----------------------------------------------------------------------------
# Lesson 03 - DDIM (notebooks/03_ddim.ipynb)

# ----------------------------------------------------------------------------
# Lesson 04 - CLIP (notebooks/04_clip.ipynb)

# ----------------------------------------------------------------------------
# Lesson 05 - VAE (notebooks/05_vae.ipynb)

# ----------------------------------------------------------------------------
# Lesson 06 - latent diffusion (notebooks/06_latent_diffusion.ipynb)

# ----------------------------------------------------------------------------
# Lesson 07 - scaling up (notebooks/07_scaling_up.ipynb)
