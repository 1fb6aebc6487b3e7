"""Several processes with DistributedDataParallel: 2 CPU processes talking over gloo.

The two processes get exactly the environment torchrun gives (WORLD_SIZE, RANK,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT) so train() takes its torchrun path; they are
forked from the test process to skip two slow `import torch`. (The same worker runs
under the real launcher with
`torchrun --standalone --nproc_per_node=2 tests/_ddp_worker.py OUT`.)

DDP averages the gradients of the ranks, so 2 ranks with batch B must follow the
same trajectory as one process with batch 2B made of both ranks' data (rank r's
data stream is seeded with seed + r), and both ranks must end with identical weights.
"""
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, str(Path(__file__).parent))
import _ddp_worker as worker  # noqa: E402
import _toy  # noqa: E402
from minildm import distributed, train  # noqa: E402

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available() and hasattr(os, "fork")),
    reason="needs torch.distributed with gloo, and fork")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank, out, port, batchnorm=False):
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    worker.main(str(out), batchnorm)


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    torch.set_num_threads(1)
    torch.optim.AdamW([torch.zeros(1, requires_grad=True)])  # its first use imports torch._dynamo
    out = tmp_path_factory.mktemp("ddp")                        # (seconds): once, before the fork
    mp.start_processes(_rank_main, args=(out, _free_port()), nprocs=2, start_method="fork")
    return out, [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


def test_both_ranks_end_with_identical_weights(ddp_run):
    _, ranks = ddp_run
    for key in ("raw", "ema"):
        for name, value in ranks[0][key].items():
            assert torch.equal(value, ranks[1][key][name]), f"{key} {name} differs between ranks"


def test_ddp_equals_one_process_with_the_global_batch(ddp_run):
    _, ranks = ddp_run
    streams = [torch.Generator().manual_seed(worker.SEED + r) for r in range(2)]  # seed + rank

    def both_ranks_batch(batch_size, generator, device):
        parts = [worker.sample_batch(batch_size // 2, g, device) for g in streams]
        return tuple(torch.cat(p) for p in zip(*parts))

    ref = train.train(_toy.make_model(seed=0), worker.loss_fn, both_ranks_batch,
                      worker.config(batch_size=2 * worker.BATCH), "ref")
    for name, value in ref.raw_model.state_dict().items():
        assert torch.allclose(value, ranks[0]["raw"][name], atol=1e-5), name
    for name, value in ref.model.state_dict().items():
        assert torch.allclose(value, ranks[0]["ema"][name], atol=1e-5), name
    # ... and it learned something: the logged loss (averaged over ranks) went down
    losses = ranks[0]["losses"]
    assert losses[-1] < losses[0]
    assert losses == pytest.approx([row["loss"] for row in ref.history], abs=1e-4)


def test_only_rank_0_writes_logs_and_checkpoints(ddp_run):
    out, _ = ddp_run
    rows = train.read_metrics(out / "run")
    assert [r["step"] for r in rows] == [5, 10, 15, 20, 25, 30]       # once, not twice
    assert all(r["world_size"] == 2 and r["batch_size"] == worker.BATCH for r in rows)
    state = torch.load(out / "run" / "checkpoint" / "state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng"]) == 2         # every rank's RNG saved
    assert not torch.equal(state["rng"][0]["data"], state["rng"][1]["data"])


def test_batchnorm_statistics_agree_across_ranks(ddp_run):
    out, _ = ddp_run
    mp.start_processes(_rank_main, args=(out, _free_port(), True), nprocs=2, start_method="fork")
    ranks = [torch.load(out / f"rank{r}_bn.pt", weights_only=True) for r in range(2)]
    assert "1.running_mean" in ranks[0]["raw"]
    for key in ("raw", "ema"):   # each rank updates BatchNorm buffers with its own batch; the
        for name, value in ranks[0][key].items():           # loop ends with rank 0's everywhere
            assert torch.equal(value, ranks[1][key][name]), f"{key} {name} differs between ranks"


def test_without_torchrun_nothing_changes(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    info, device = distributed.init_distributed("auto")
    assert (info.world_size, info.rank, device) == (1, 0, None)
    assert distributed.gather("x", info) == ["x"] and distributed.is_main_process()
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="under torchrun"):
        distributed.init_distributed("mps")
