"""Nothing lost: atomic checkpoints, SIGKILL during a write, kill then resume, corrupt files.

The kill tests fork a child process that runs the real code (minildm.train on the
tiny MLP task of tests/_toy.py), kill it with SIGKILL at a random moment - the way
a crash or `kill -9` would - and check what is left on disk.
"""
import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import _toy  # noqa: E402
from minildm import train  # noqa: E402

pytestmark = pytest.mark.skipif(os.name != "posix", reason="uses SIGKILL")


def toy_config(out_dir, **kw):
    base = dict(steps=40, batch_size=64, lr=3e-3, warmup_steps=5, ema_decay=0.9, log_every=1,
                checkpoint_every=5, device="cpu", seed=3, progress=False, out_dir=str(out_dir))
    return train.TrainConfig(**{**base, **kw})


def slow_batch(n, generator, device):
    time.sleep(0.03)                        # slow enough to be killed mid-run
    return _toy.sample_batch(n, generator, device)


def wait_for_step(metrics: Path, step: int, pid: int, timeout=60.0):
    end = time.time() + timeout
    while time.time() < end:
        assert os.waitpid(pid, os.WNOHANG) == (0, 0), "the training process ended before the kill"
        if metrics.exists():
            lines = metrics.read_text().splitlines()
            if len(lines) >= step:
                return
        time.sleep(0.01)
    raise TimeoutError(f"no step {step} in {metrics}")


def test_sigkill_mid_run_then_resume_gives_the_same_weights(tmp_path):
    torch.set_num_threads(1)
    # The reference: one uninterrupted run.
    ref = train.train(_toy.make_model(), _toy.loss_fn, _toy.sample_batch,
                      toy_config(tmp_path / "ref"), "toy")
    # The same run, killed at a random step between checkpoints, then resumed.
    run = tmp_path / "killed"
    pid = os.fork()                           # the child trains; the parent kills it
    if pid == 0:
        try:
            train.train(_toy.make_model(), _toy.loss_fn, slow_batch, toy_config(run), "toy")
        finally:
            os._exit(0)
    kill_at = random.Random(0).randint(12, 28)
    wait_for_step(run / "metrics.jsonl", kill_at, pid)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    state = torch.load(train.find_checkpoint(run / "checkpoint") / "state.pt", weights_only=True)
    assert 10 <= state["step"] < 40 and state["step"] % 5 == 0
    resumed = train.train(_toy.make_model(), _toy.loss_fn, _toy.sample_batch,
                          toy_config(run, resume=True), "toy")
    assert resumed.steps_run == 40 - state["step"]
    # Data stream, torch RNG, optimizer, EMA and lr schedule all resumed: same weights.
    assert torch.allclose(_toy.flat_weights(resumed.raw_model), _toy.flat_weights(ref.raw_model),
                          atol=1e-6, rtol=0)
    assert torch.allclose(_toy.flat_weights(resumed.model), _toy.flat_weights(ref.model),
                          atol=1e-6, rtol=0)
    # The metrics log has each step once (the steps redone after the kill replace theirs).
    steps = [row["step"] for row in train.read_metrics(run)]
    assert steps == list(range(1, 41))


def write_checkpoints_forever(folder):
    """The child: overwrite one checkpoint again and again, each time with weights = step."""
    model = torch.nn.Linear(1000, 1000)            # 4 MB per weights file: a write takes a while
    ema = train.EMA(model, 0.9)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 1000)).sum().backward()
    opt.step()
    step = 0
    while True:
        step += 1
        with torch.no_grad():
            model.weight.fill_(step)
            ema.model.weight.fill_(step)
        train.save_checkpoint(folder, model, ema, {"step": step, "optimizer": opt.state_dict(),
                              "scaler": {}, "ema_updates": step, "rng": [], "world_size": 1})


def test_sigkill_during_checkpoint_writes_leaves_a_complete_checkpoint(tmp_path):
    torch.set_num_threads(1)
    folder = tmp_path / "checkpoint"
    rng = random.Random(1)
    killed_mid_write = 0
    for trial in range(8):
        pid = os.fork()                               # a child process that only writes checkpoints
        if pid == 0:
            try:
                write_checkpoints_forever(folder)
            finally:
                os._exit(1)
        time.sleep(rng.uniform(0.05, 0.6))           # kill it at a random moment
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        killed_mid_write += any(folder.parent.glob("checkpoint.tmp*"))   # checkpoint.tmp-<pid>
        found = train.find_checkpoint(folder)
        if found is None:                             # killed during the very first write
            assert trial == 0 or not folder.exists()
            continue
        model = torch.nn.Linear(1000, 1000)
        ema = train.EMA(model, 0.9)
        state = train.load_checkpoint(found, model, ema)
        step = state["step"]
        # weights, EMA and state all come from the same, complete write
        assert torch.all(model.weight == step) and torch.all(ema.model.weight == step)
        assert ema.updates == step
    assert killed_mid_write >= 1, "no kill landed during a write: the test proved nothing"


def test_truncated_state_gives_a_clear_error_and_deletes_nothing(tmp_path):
    run = tmp_path / "run"          # one checkpoint kept: nothing to fall back to (see test_reliability_runs)
    train.train(_toy.make_model(), _toy.loss_fn, _toy.sample_batch,
                toy_config(run, steps=10, keep_checkpoints=1), "toy")
    state_file = run / "checkpoint" / "state.pt"
    data = state_file.read_bytes()
    state_file.write_bytes(data[: len(data) // 2])
    before = {p: p.read_bytes() for p in (run / "checkpoint").iterdir()}
    with pytest.raises(train.CheckpointError, match="state.pt") as err:
        train.train(_toy.make_model(), _toy.loss_fn, _toy.sample_batch,
                    toy_config(run, steps=20, resume=True), "toy")
    assert "corrupt or truncated" in str(err.value) and "Nothing was deleted" in str(err.value)
    assert {p: p.read_bytes() for p in (run / "checkpoint").iterdir()} == before
    assert isinstance(err.value, ValueError)  # the CLI prints it without a traceback


def test_corrupt_weights_in_checkpoint_give_a_clear_error(tmp_path):
    run = tmp_path / "run"
    train.train(_toy.make_model(), _toy.loss_fn, _toy.sample_batch,
                toy_config(run, steps=10, keep_checkpoints=1), "toy")
    weights = run / "checkpoint" / "model.safetensors"
    weights.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(train.CheckpointError, match="model.safetensors"):
        train.train(_toy.make_model(), _toy.loss_fn, _toy.sample_batch,
                    toy_config(run, steps=20, resume=True), "toy")
    assert weights.exists()


def test_state_loads_with_weights_only(tmp_path):
    run = tmp_path / "run"
    train.train(_toy.make_model(), _toy.loss_fn, _toy.sample_batch,
                toy_config(run, steps=10, precision="fp16"), "toy")
    state = torch.load(run / "checkpoint" / "state.pt", weights_only=True)  # no pickled objects
    assert state["step"] == 10 and state["world_size"] == 1
    assert state["scaler"]["scale"] > 0                       # fp16 GradScaler state saved
    assert set(state["rng"][0]) == {"torch", "cuda", "data"}


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"

    def nan_after_7(model, batch, calls=[0]):
        calls[0] += 1
        loss, extra = _toy.loss_fn(model, batch)
        return (loss * float("nan") if calls[0] == 8 else loss), extra

    with pytest.raises(train.NaNLossError, match="at step 7") as err:
        train.train(_toy.make_model(), nan_after_7, _toy.sample_batch, toy_config(run), "toy")
    assert "last good checkpoint" in str(err.value) and str(run / "checkpoint") in str(err.value)
    model = _toy.make_model()
    state = train.load_checkpoint(train.find_checkpoint(run / "checkpoint"), model, None)
    assert state["step"] == 5
    assert torch.isfinite(_toy.flat_weights(model)).all()


def test_nan_loss_before_any_checkpoint_says_so():
    with pytest.raises(train.NaNLossError, match="No checkpoint was written"):
        train.train(_toy.make_model(), lambda m, b: _toy.loss_fn(m, b)[0] * float("nan"),
                    _toy.sample_batch, train.TrainConfig(steps=3, device="cpu", progress=False), "toy")


def test_a_loss_that_blows_up_stops_the_run_and_keeps_the_checkpoints(tmp_path):
    """No NaN, just a loss fifty times higher from step 21 on: the run stops two logs later."""
    run = tmp_path / "run"

    def blows_up_at_21(model, batch, calls=[0]):
        calls[0] += 1
        loss, extra = _toy.loss_fn(model, batch)
        return (loss * 50 if calls[0] > 20 else loss), extra

    with pytest.raises(train.DivergedError, match="diverged at step 22") as err:
        train.train(_toy.make_model(), blows_up_at_21, _toy.sample_batch, toy_config(run), "toy")
    assert "lower learning rate (--lr; this run's peak: 0.003)" in str(err.value)
    assert str(run / "checkpoint") in str(err.value)
    state = train.load_checkpoint(train.find_checkpoint(run / "checkpoint"), _toy.make_model(), None)
    assert state["step"] == 20                         # the last checkpoint before the blow-up, kept


def test_divergence_watch_trips_on_the_measured_blow_up_and_not_on_noise():
    # The pixel UNet's 10,500-step fast recipe, seed 1 (docs/results_ddpm.md): its logged losses.
    measured = [(250, 0.0612), (500, 0.0677), (750, 0.0428), (1000, 0.0330), (1250, 0.0255),
                (1500, 0.0407), (1750, 0.0429), (2000, 0.0235), (2250, 0.0302), (2500, 0.374),
                (2750, 0.4065), (3000, 0.3382)]
    watch = train.DivergenceWatch()
    tripped = [step for step, loss in measured if watch.diverged(step, loss)]
    assert tripped[0] == 2750 and watch.best_step == 2250   # two bad logs of three, then it stops

    spike = train.DivergenceWatch()                          # one noisy batch, 12x the others
    assert not any(spike.diverged(s, l) for s, l in enumerate([0.05, 0.04, 0.03, 0.03, 0.36, 0.03, 0.03]))

    tiny = train.DivergenceWatch()                           # fell from 1 to 1e-6, wobbles up to 5e-6
    losses = [1.0, 0.5, 0.1, 1e-6, 1e-6, 1e-6, 5e-6, 5e-6, 5e-6]
    assert not any(tiny.diverged(s, l) for s, l in enumerate(losses))


def test_a_blow_up_before_any_checkpoint_says_so():
    def blows_up_at_21(model, batch, calls=[0]):
        calls[0] += 1
        loss, extra = _toy.loss_fn(model, batch)
        return (loss * 50 if calls[0] > 20 else loss), extra

    with pytest.raises(train.DivergedError, match="No checkpoint was written before it"):
        train.train(_toy.make_model(), blows_up_at_21, _toy.sample_batch,
                    train.TrainConfig(steps=40, lr=3e-3, warmup_steps=5, log_every=1, device="cpu",
                                      seed=3, progress=False), "toy")
