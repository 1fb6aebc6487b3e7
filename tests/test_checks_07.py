"""Lesson 07 checks pass the reference solutions and catch typical wrong answers."""
import math

import pytest
import torch

from minildm import checks
from minildm.checks import CheckFailed


def good_lr(step, steps, warmup_steps, lr, min_lr_ratio):
    if step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    progress = min((step - warmup_steps) / max(1, steps - warmup_steps), 1.0)
    return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def test_lr_schedule_accepts_the_reference(capsys):
    checks.lr_schedule(good_lr)
    assert "Correct!" in capsys.readouterr().out


@pytest.mark.parametrize("wrong,hint", [
    (lambda s, n, w, lr, r: lr * s / w if s < w else good_lr(s, n, w, lr, r), "warm-up"),     # starts at 0
    (lambda s, n, w, lr, r: lr if s < w else good_lr(s, n, w, lr, r), "warm-up"),             # no warm-up
    (lambda s, n, w, lr, r: good_lr(s, n, w, lr, 0.0), "after warm-up"),                     # ignores floor
    (lambda s, n, w, lr, r: good_lr(s, n, 0, lr, r) if s >= w else good_lr(s, n, w, lr, r),
     "after warm-up"),                                                                       # cosine from 0
    (lambda s, n, w, lr, r: lr * 0.5 * (1 + math.cos(math.pi * s / n)), "step"),             # plain cosine
    (lambda s, n, w, lr, r: "0.1", "number"),
])
def test_lr_schedule_catches_wrong_answers(wrong, hint):
    with pytest.raises(CheckFailed, match=hint):
        checks.lr_schedule(wrong)


def test_lr_schedule_not_implemented():
    def stub(*args):
        raise NotImplementedError
    with pytest.raises(CheckFailed, match="NotImplementedError"):
        checks.lr_schedule(stub)


def test_ema_update(capsys):
    checks.ema_update(lambda ema, w, d: d * ema + (1 - d) * w)
    checks.ema_update(lambda ema, w, d: ema.mul_(d).add_(w, alpha=1 - d))   # in place is fine
    checks.ema_update(lambda ema, w, d: torch.lerp(ema, w, 1 - d))
    assert capsys.readouterr().out.count("Correct!") == 3


@pytest.mark.parametrize("wrong,hint", [
    (lambda ema, w, d: (1 - d) * ema + d * w, "swapped"),
    (lambda ema, w, d: d * ema + w, "decay \\* ema"),
    (lambda ema, w, d: w.clone(), "decay \\* ema"),
    (lambda ema, w, d: w.mul_(1 - d).add_(d * ema), "do not change"),
    (lambda ema, w, d: (d * ema + (1 - d) * w).sum(), "shape"),
    (lambda ema, w, d: [1.0], "torch.Tensor"),
])
def test_ema_update_catches_wrong_answers(wrong, hint):
    with pytest.raises(CheckFailed, match=hint):
        checks.ema_update(wrong)


def test_ema_update_not_implemented():
    def stub(*args):
        raise NotImplementedError
    with pytest.raises(CheckFailed, match="NotImplementedError"):
        checks.ema_update(stub)


def contiguous(n, world, rank):
    if n % world:
        raise ValueError(f"{n} samples do not split evenly over {world} ranks")
    per_rank = n // world
    return range(rank * per_rank, (rank + 1) * per_rank)


def strided(n, world, rank):            # what torch's DistributedSampler does
    if n % world:
        raise ValueError("uneven")
    return list(range(n))[rank::world]


def test_shard_batch_accepts_both_ways_of_splitting(capsys):
    checks.shard_batch(contiguous)
    checks.shard_batch(strided)
    assert capsys.readouterr().out.count("Correct!") == 2


@pytest.mark.parametrize("wrong,hint", [
    (lambda n, w, r: range(n // w), "same sample"),                       # every rank the first slice
    (lambda n, w, r: range(n), "each rank gets"),                          # every rank everything
    (lambda n, w, r: range(r * (n // w) + 1, (r + 1) * (n // w) + 1), "indices must lie"),
    (lambda n, w, r: range(r * (n // w), (r + 1) * (n // w)), "ValueError"),  # no uneven check
    (lambda n, w, r: n // w, "range or a list"),
])
def test_shard_batch_catches_wrong_answers(wrong, hint):
    with pytest.raises(CheckFailed, match=hint):
        checks.shard_batch(wrong)


def test_shard_batch_not_implemented():
    def stub(*args):
        raise NotImplementedError
    with pytest.raises(CheckFailed, match="NotImplementedError"):
        checks.shard_batch(stub)
