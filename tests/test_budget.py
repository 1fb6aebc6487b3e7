"""`minutes`: a wall-clock budget turned into a step count after a few timed steps, so the
learning-rate schedule ends when the budget does (python -m minildm train MODEL --minutes M)."""
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
import _toy  # noqa: E402
from minildm import train  # noqa: E402


def test_steps_for_budget_arithmetic():
    cfg = train.TrainConfig(steps=10_000, warmup_steps=100, minutes=1.0)
    # 12 steps done in 6 s at 0.5 s per step: (60 - 6) / 0.5 = 108 more steps fit
    fitted = train.steps_for_budget(cfg, elapsed=6.0, steps_done=12, seconds_per_step=0.5)
    assert fitted.steps == 12 + 108
    assert fitted.warmup_steps == 12                        # the warm-up shrinks to a tenth of the run
    assert train.lr_at(fitted.steps - 1, fitted) == pytest.approx(cfg.lr * cfg.min_lr_ratio, rel=0.01)
    # never more than `steps`, and at least one more step after the probe
    assert train.steps_for_budget(cfg, 6.0, 12, 1e-6).steps == 10_000
    assert train.steps_for_budget(cfg, 600.0, 12, 0.5).steps == 13


def test_a_budget_run_stops_in_time_with_the_schedule_finished(capsys):
    slow = lambda model, x0: (time.sleep(0.02), _toy.loss_fn(model, x0))[1]   # >= 20 ms per step
    cfg = train.TrainConfig(steps=100_000, batch_size=32, lr=1e-2, warmup_steps=5, log_every=1,
                            device="cpu", minutes=1.5 / 60, progress=True)
    t0 = time.perf_counter()
    result = train.train(_toy.make_model(), slow, _toy.sample_batch, cfg, name="budget")
    seconds = time.perf_counter() - t0
    assert 1.0 < seconds < 4.0, f"a 1.5 s budget took {seconds:.1f} s"
    assert 12 < result.steps_run < 100                       # far fewer than steps=100_000
    assert result.history[-1]["step"] == result.steps_run
    assert result.history[-1]["lr"] == pytest.approx(cfg.lr * cfg.min_lr_ratio, rel=0.05)  # decayed fully
    assert "budget:" in capsys.readouterr().out                 # it says how many steps it chose
