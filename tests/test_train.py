"""The training loop (minildm/train.py): schedule, EMA, precision, memory format, metrics.

Kill/resume and corrupt checkpoints are in test_resume.py, several processes in test_ddp.py.
"""
import math
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import _toy  # noqa: E402
from minildm import train  # noqa: E402

torch.set_num_threads(1)


def cfg(**kw):
    base = dict(steps=30, batch_size=64, lr=3e-3, warmup_steps=5, log_every=5, device="cpu",
                seed=0, progress=False)
    return train.TrainConfig(**{**base, **kw})


def run(**kw):
    return train.train(_toy.make_model(), _toy.loss_fn, _toy.sample_batch, cfg(**kw), "toy")


def test_lr_warmup_then_cosine():
    c = train.TrainConfig(steps=110, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert train.lr_at(0, c) == pytest.approx(0.1)          # (0 + 1) / 10
    assert train.lr_at(9, c) == pytest.approx(1.0)          # end of warm-up: the peak
    assert train.lr_at(60, c) == pytest.approx(0.55)        # half-way down the cosine
    assert train.lr_at(110, c) == pytest.approx(0.1)        # floor lr * min_lr_ratio
    lrs = [train.lr_at(s, c) for s in range(10, 110)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))        # decays monotonically
    assert train.lr_at(35, c) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))


def test_ema_update_matches_the_formula():
    model = nn.Linear(2, 2)
    ema = train.EMA(model, decay=0.9)
    start = ema.model.weight.clone()
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)                       # first update: d = min(0.9, 2/11)
    d = 2 / 11
    assert torch.allclose(ema.model.weight, d * start + (1 - d) * model.weight)
    for _ in range(100):
        ema.update(model)
    assert torch.allclose(ema.model.weight, model.weight, atol=1e-4)  # converges to the weights
    assert not ema.model.weight.requires_grad


def test_training_lowers_the_loss_and_returns_the_ema_model():
    result = run(steps=60, ema_decay=0.9)
    losses = [row["loss"] for row in result.history]
    assert len(losses) == 12 and losses[-1] < 0.8 * losses[0]
    assert result.model is not result.raw_model and not result.model.training
    assert result.steps_run == 60 and result.images_per_second > 0
    assert {"step", "loss", "lr", "grad_norm", "t_mean", "seconds"} <= set(result.history[0])


def test_same_seed_same_weights_other_seed_other_weights():
    a, b, c = run(seed=5), run(seed=5), run(seed=6)
    assert torch.equal(_toy.flat_weights(a.model), _toy.flat_weights(b.model))
    assert not torch.equal(_toy.flat_weights(a.model), _toy.flat_weights(c.model))


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_mixed_precision_runs_on_cpu(precision, dtype):
    seen = []

    def loss_fn(model, batch):
        loss, extra = _toy.loss_fn(model, batch)
        seen.append(model[0](torch.zeros(1, 3)).dtype)    # a Linear inside autocast
        return loss, extra

    result = train.train(_toy.make_model(), loss_fn, _toy.sample_batch, cfg(precision=precision), "toy")
    assert seen and all(d == dtype for d in seen)            # autocast really was on
    assert all(p.dtype == torch.float32 for p in result.model.parameters())  # weights stay fp32
    ref = run()
    assert result.history[-1]["loss"] == pytest.approx(ref.history[-1]["loss"], rel=0.05)


class TinyConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 3, 3, padding=1)

    def forward(self, x):
        return self.conv2(torch.relu(self.conv1(x)))


def test_channels_last_memory_format():
    seen = []

    def sample(n, g, device):
        return torch.rand(n, 3, 8, 8, generator=g).to(device)

    def loss_fn(model, x):
        seen.append(x.is_contiguous(memory_format=torch.channels_last))
        return ((model(x) - x) ** 2).mean()

    result = train.train(TinyConv(), loss_fn, sample, cfg(steps=5, memory_format="channels_last"))
    assert all(seen)
    assert result.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    seen.clear()
    train.train(TinyConv(), loss_fn, sample, cfg(steps=3))   # auto: channels_last on CUDA only
    assert not any(seen)
    nested = train.to_channels_last({"x": torch.zeros(2, 3, 4, 4), "tokens": torch.zeros(2, 16).long()})
    assert nested["x"].is_contiguous(memory_format=torch.channels_last)


def test_bad_settings_give_clear_errors():
    with pytest.raises(ValueError, match="precision must be fp32, bf16 or fp16"):
        run(precision="fp8")
    with pytest.raises(ValueError, match="memory_format must be"):
        run(memory_format="nhwc")
    with pytest.raises(ValueError, match="unknown device"):
        train.pick_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            train.pick_device("cuda")


def test_metrics_file_and_loss_curve(tmp_path):
    from minildm import viz
    result = run(out_dir=str(tmp_path / "run"), ema_decay=0.9)
    rows = train.read_metrics(tmp_path / "run")
    assert rows == result.history
    fig = viz.loss_curve(tmp_path / "run")
    assert fig.axes and fig.axes[0].get_ylabel() == "loss"
    assert len(fig.axes[0].lines[0].get_xdata()) == len(rows)
    with pytest.raises(ValueError, match="metrics file not found"):
        train.read_metrics(tmp_path / "nowhere")


def test_resume_of_a_finished_run_does_nothing(tmp_path, capsys):
    first = run(out_dir=str(tmp_path / "run"))
    again = run(out_dir=str(tmp_path / "run"), resume=True, progress=True)
    assert again.steps_run == 0
    assert torch.equal(_toy.flat_weights(first.model), _toy.flat_weights(again.model))
    assert "resumed" in capsys.readouterr().out


def test_a_start_line_names_device_and_seed(capsys):
    run(steps=2, seed=42, progress=True)
    out = capsys.readouterr().out
    assert "training on cpu" in out and "seed 42" in out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("compile", [False, True])
def test_cuda_path_bf16_channels_last(compile, tmp_path):
    seen = []

    def sample(n, g, device):
        return torch.rand(n, 3, 8, 8, generator=g).to(device)

    def loss_fn(model, x):
        seen.append((x.device.type, x.is_contiguous(memory_format=torch.channels_last)))
        return ((model(x).float() - x) ** 2).mean()

    result = train.train(TinyConv(), loss_fn, sample, cfg(steps=6, device="cuda", precision="bf16",
                         compile=compile, ema_decay=0.9, checkpoint_every=3, out_dir=str(tmp_path)))
    assert all(s == ("cuda", True) for s in seen)             # auto -> channels_last on CUDA
    assert result.model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    again = train.train(TinyConv(), loss_fn, sample, cfg(steps=9, device="cuda", precision="bf16",
                        compile=compile, ema_decay=0.9, out_dir=str(tmp_path), resume=True))
    assert again.steps_run == 3 and torch.isfinite(again.history[-1]["loss"] * torch.ones(1)).all()
