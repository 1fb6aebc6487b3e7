"""`minutes`: a wall-clock budget turned into a step count after a few timed steps, so the
learning-rate schedule ends when the budget does (python -m minildm train MODEL --minutes M)."""
import sys
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


class FakeClock:
    """A clock that advances 0.1 s per training batch, so the test does not depend on the machine's load."""
    def __init__(self):
        self.now = 0.0

    def perf_counter(self):
        return self.now


def test_a_budget_run_stops_in_time_with_the_schedule_finished(monkeypatch, capsys):
    clock = FakeClock()
    monkeypatch.setattr(train, "time", clock)                    # only train.py's clock is replaced

    def batches(batch_size, generator, device):
        clock.now += 0.1                                          # every step costs 0.1 s
        return _toy.sample_batch(batch_size, generator, device)

    cfg = train.TrainConfig(steps=100_000, batch_size=32, lr=1e-2, warmup_steps=5, log_every=1,
                            device="cpu", minutes=6 / 60, progress=True)
    result = train.train(_toy.make_model(), _toy.loss_fn, batches, cfg, name="budget")
    # 12 steps timed (1.2 s), then (6 - 1.2) / 0.1 = 48 more: 60 steps, 6.0 s of the fake clock
    assert result.steps_run == 60 and clock.now == pytest.approx(6.0)
    assert result.history[-1]["step"] == 60
    assert result.history[-1]["lr"] == pytest.approx(cfg.lr * cfg.min_lr_ratio, rel=0.01)  # decayed (last step: 53/54)
    assert "0.1-minute budget: 0.100 s per step -> 60 steps" in capsys.readouterr().out
