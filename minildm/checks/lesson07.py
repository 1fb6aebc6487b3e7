"""Lesson 07 - scaling up (notebooks/07_scaling_up.ipynb): the lesson's exercise checks."""
from __future__ import annotations

import torch

from ._core import CheckFailed, expect, expect_close, expect_tensor, passed, run_student_function


def lr_schedule(student_lr) -> None:
    """Exercise: student_lr(step, steps, warmup_steps, lr, min_lr_ratio) -> float, the
    learning rate of train.lr_at (linear warm-up, then cosine decay to lr * min_lr_ratio)."""
    from ..train import TrainConfig, lr_at
    for steps, warmup, lr, ratio in ((100, 10, 1.0, 0.1), (1000, 50, 3e-4, 0.0), (40, 0, 2e-3, 0.5)):
        cfg = TrainConfig(steps=steps, warmup_steps=warmup, lr=lr, min_lr_ratio=ratio)
        for step in sorted({0, 1, max(warmup - 1, 0), warmup, (warmup + steps) // 2, steps - 1, steps}):
            got = run_student_function(student_lr, step, steps, warmup, lr, ratio, name="your lr function")
            expect(isinstance(got, (int, float)) or (isinstance(got, torch.Tensor) and got.numel() == 1),
                   f"return a number, got {type(got).__name__}.")
            want = lr_at(step, cfg)
            if abs(float(got) - want) <= 1e-9 + 1e-6 * abs(want):
                continue
            where = ("during warm-up: step s should give lr * (s + 1) / warmup_steps, so the first "
                     "step is not 0 and the last warm-up step reaches the peak lr"
                     if step < warmup else
                     "after warm-up: progress p = (step - warmup) / (steps - warmup) goes 0 -> 1 and "
                     "lr = lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + cos(pi * p)))")
            expect(False, f"at step {step} of {steps} (warm-up {warmup}, lr {lr}, min_lr_ratio {ratio}) "
                          f"the learning rate should be {want:.6g}, got {float(got):.6g}. Hint: {where}.")
    passed("warm-up then cosine decay, exactly like train.lr_at.")


def ema_update(student_ema) -> None:
    """Exercise: student_ema(ema, weights, decay) -> the new EMA tensor d * ema + (1 - d) * weights."""
    gen = torch.Generator().manual_seed(7)
    for decay in (0.9, 0.999, 0.5):
        ema, weights = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
        ema_before, weights_before = ema.clone(), weights.clone()
        got = run_student_function(student_ema, ema.clone(), weights, decay, name="your EMA update")
        got = expect_tensor(got, ema.shape, "the new EMA")
        expect(torch.equal(weights, weights_before), "do not change the model's weights, only the average.")
        want = decay * ema_before + (1 - decay) * weights_before
        swapped = (1 - decay) * ema_before + decay * weights_before
        expect(not torch.allclose(got, swapped, atol=1e-6) or decay == 0.5,
               "decay and 1 - decay are swapped: the OLD average keeps the large share (decay), "
               "the new weights get the small share (1 - decay).")
        expect_close(got, want, f"with decay {decay} the new EMA is decay * ema + (1 - decay) * weights")
    passed("the EMA moves a small step (1 - decay) towards the current weights.")


def shard_batch(student_shard) -> None:
    """Exercise: student_shard(global_batch, world_size, rank) -> the indices (a range or list
    of ints) of the samples of a global batch that rank `rank` processes."""
    for n, world in ((8, 2), (12, 4), (6, 1), (30, 3)):
        parts = []
        for rank in range(world):
            got = run_student_function(student_shard, n, world, rank, name="your shard function")
            try:
                got = [int(i) for i in got]
            except TypeError:
                expect(False, f"return a range or a list of indices, got {type(got).__name__}.")
            expect(len(got) == n // world,
                   f"with a global batch of {n} on {world} ranks each rank gets {n // world} samples; "
                   f"rank {rank} got {len(got)}.")
            expect(all(0 <= i < n for i in got), f"indices must lie in 0..{n - 1}; rank {rank} got {got}.")
            parts.append(got)
        flat = [i for part in parts for i in part]
        expect(len(set(flat)) == len(flat),
               f"two ranks process the same sample (global batch {n}, {world} ranks): use the rank "
               f"to pick a different slice, e.g. range(rank * per_rank, (rank + 1) * per_rank).")
        expect(sorted(flat) == list(range(n)), f"together the ranks must cover all {n} samples.")
    # a batch that does not split evenly must be refused
    try:
        student_shard(10, 4, 0)
    except ValueError:
        pass
    except NotImplementedError:
        raise CheckFailed("Not yet: your shard function still raises NotImplementedError.")
    else:
        expect(False, "a global batch of 10 on 4 ranks cannot be split evenly: raise a ValueError "
                      "that says so (otherwise ranks do unequal work and DDP's average is biased).")
    passed("every sample goes to exactly one rank, and every rank gets the same amount of work.")
