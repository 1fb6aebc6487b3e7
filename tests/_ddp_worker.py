"""One rank of the DDP test (tests/test_ddp.py): trains the tiny task, then saves its
final weights and losses to OUT/rank<r>.pt so the test can compare the ranks.

    torchrun --standalone --nproc_per_node=2 tests/_ddp_worker.py OUT
"""
import os
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import _toy  # noqa: E402
from minildm import train  # noqa: E402

STEPS, BATCH, SEED = 30, 32, 11


def config(out_dir=None, batch_size=BATCH):
    return train.TrainConfig(steps=STEPS, batch_size=batch_size, lr=1e-2, warmup_steps=3,
                             ema_decay=0.9, log_every=5, device="cpu", seed=SEED, progress=False,
                             out_dir=out_dir, checkpoint_every=10)


def sample_batch(batch_size, generator, device):
    """All randomness from the generator (points, t, eps), so the run is a pure function of it."""
    x0 = _toy.sample_batch(batch_size, generator, device)
    t = torch.rand(batch_size, 1, generator=generator)
    eps = torch.randn(batch_size, 2, generator=generator)
    return x0, t, eps


def loss_fn(model, batch):
    x0, t, eps = batch
    alpha_bar = torch.cos(t * torch.pi / 2) ** 2
    xt = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    return ((model(torch.cat([xt, t], dim=1)) - eps) ** 2).mean()


def main(out: str, batchnorm: bool = False) -> None:
    torch.set_num_threads(1)
    # Different initial weights per rank on purpose: DDP must broadcast rank 0's.
    rank = int(os.environ["RANK"])
    tag = "_bn" if batchnorm else ""
    result = train.train(_toy.make_model(seed=rank, batchnorm=batchnorm), loss_fn, sample_batch,
                         config(out + "/run" + tag), "ddp")
    torch.save({"raw": result.raw_model.state_dict(), "ema": result.model.state_dict(),
                "losses": [row["loss"] for row in result.history]}, f"{out}/rank{rank}{tag}.pt")


if __name__ == "__main__":
    main(sys.argv[1])
