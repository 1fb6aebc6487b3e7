"""Issue 14: SIGKILL at random moments, again and again, and nothing is lost.

For two models (the 2-D MLP of tests/_toy.py and a tiny text-free UNet on 8x8
images) a chain of forked training processes, each resuming from what the last
one left, is killed with SIGKILL at a random moment - during a step, during a
metrics write or during a checkpoint write. After every kill the newest
checkpoint must load, and its weights must equal, bit for bit, the weights an
uninterrupted run had after the same number of steps; the last resume must end
with the uninterrupted run's weights and metrics. 2 x KILLS_PER_MODEL kills.
"""
import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import _toy  # noqa: E402
from minildm import train  # noqa: E402
from minildm.unet import UNet, UNetConfig  # noqa: E402

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="uses fork and SIGKILL")
KILLS_PER_MODEL = 10


# -- the second model: a tiny UNet learning eps on random 8x8 images ------------------------

def make_unet():
    torch.manual_seed(0)
    return UNet(UNetConfig(base_channels=8, channel_mults=(1, 2), attention_levels=(False, True),
                           num_heads=2, norm_groups=4))


def unet_batch(n, generator, device):
    return torch.rand(n, 3, 8, 8, generator=generator).to(device) * 2 - 1     # data stream


def unet_loss(model, x0):
    t = torch.randint(0, 1000, (x0.shape[0],))                                # torch's RNG
    alpha_bar = torch.cos(t / 1000 * torch.pi / 2)[:, None, None, None] ** 2
    eps = torch.randn_like(x0)
    return F.mse_loss(model(alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps, t), eps)


TASKS = {
    "mlp": (_toy.make_model, _toy.loss_fn, _toy.sample_batch, dict(batch_size=32, checkpoint_every=1)),
    "unet": (make_unet, unet_loss, unet_batch, dict(batch_size=4, checkpoint_every=2)),
}


STEPS = 40


def config(out_dir, **kw):
    base = dict(steps=STEPS, lr=2e-3, warmup_steps=5, ema_decay=0.9, log_every=1, device="cpu",
                seed=7, progress=False, out_dir=str(out_dir), keep_checkpoints=2)
    return train.TrainConfig(**{**base, **kw})


def flat(model):
    return torch.cat([t.detach().flatten().float() for t in model.state_dict().values()])


def logged_steps(metrics: Path) -> int:
    return len(metrics.read_bytes().splitlines()) if metrics.exists() else 0


def kill_at_a_random_moment(pid: int, run: Path, rng: random.Random, step_seconds: float) -> None:
    """SIGKILL `pid` 0-2 logged steps after it started, plus a random time up to two steps:
    while it loads the checkpoint, computes a step, writes a metrics line or a checkpoint."""
    start = logged_steps(run / "metrics.jsonl")
    target = start + rng.randint(0, 2)
    deadline = time.time() + 30
    while logged_steps(run / "metrics.jsonl") < target:
        assert os.waitpid(pid, os.WNOHANG) == (0, 0), "the run finished before the kill"
        assert time.time() < deadline, "the run made no progress"
        time.sleep(0.001)
    time.sleep(rng.uniform(0, 2 * step_seconds))
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


@pytest.mark.parametrize("task", list(TASKS))
def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path, task):
    torch.set_num_threads(1)
    make_model, loss_fn, sample_batch, kw = TASKS[task]

    # The reference: one uninterrupted run, recording the weights at the start of every step.
    weights_at = []

    def recording_loss(model, batch):
        weights_at.append(flat(model))         # = the weights after len(weights_at) - 1 steps
        return loss_fn(model, batch)
    t0 = time.perf_counter()
    ref = train.train(make_model(), recording_loss, sample_batch, config(tmp_path / "ref", **kw), task)
    step_seconds = (time.perf_counter() - t0) / STEPS
    weights_at.append(flat(ref.raw_model))

    # The same run, killed again and again; each process resumes from what the last one left.
    run = tmp_path / "killed"
    rng = random.Random(task)
    kills = during_writes = 0
    for _ in range(KILLS_PER_MODEL):
        pid = os.fork()
        if pid == 0:
            try:
                train.train(make_model(), loss_fn, sample_batch, config(run, resume=True, **kw), task)
            finally:
                os._exit(0)
        kill_at_a_random_moment(pid, run, rng, step_seconds)
        kills += 1
        during_writes += any(run.glob("checkpoint.tmp*")) or any(run.glob("*.tmp"))
        # After every kill: the newest checkpoint loads and is the reference at its step.
        found = train.find_checkpoint(run / "checkpoint")
        if found is None:
            continue                             # killed before the first checkpoint
        model = make_model()
        state = train.load_checkpoint(found, model, None)
        assert torch.equal(flat(model), weights_at[state["step"]]), f"kill {kills}: step {state['step']}"
    assert train.find_checkpoint(run / "checkpoint") is not None, "no kill came after a checkpoint"

    final = train.train(make_model(), loss_fn, sample_batch, config(run, resume=True, **kw), task)
    assert 0 < final.steps_run < STEPS
    assert torch.equal(flat(final.raw_model), flat(ref.raw_model))
    assert torch.equal(flat(final.model), flat(ref.model))           # the EMA too
    assert [row["step"] for row in train.read_metrics(run)] == list(range(1, STEPS + 1))
    assert kills == KILLS_PER_MODEL
    print(f"{task}: {kills} SIGKILLs, {during_writes} during a write, 0 unloadable checkpoints, "
          f"every checkpoint and the final weights bit-identical to the uninterrupted run")
