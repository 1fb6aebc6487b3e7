"""The benchmark (minildm/bench.py): each piece on small settings, and the table."""
import torch

from minildm import bench

torch.set_num_threads(1)
CPU = torch.device("cpu")


def test_capture_job_is_the_recipes_job_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    job = bench.capture_job("vae", "tiny", "cpu")
    again = bench.capture_job("vae", "tiny", "cpu")      # seeded: the same initial weights as fit's
    assert all(torch.equal(a, b) for a, b in zip(job.model.state_dict().values(),
                                                 again.model.state_dict().values()))
    assert isinstance(job.model, torch.nn.Module) and job.cfg.batch_size > 0
    batch = job.sample_batch(2, torch.Generator().manual_seed(0), CPU)
    loss = bench._loss_of(job.loss_fn(job.model, batch))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert list(tmp_path.iterdir()) == []                 # no weights or runs written
    flops = bench.step_flops(job, CPU)
    assert flops > 0
    timing = bench.time_training(job, CPU, steps=2)
    assert timing["images_per_s"] > 0 and timing["step_ms"] > 0


def test_training_bench_skips_a_missing_module_with_a_note(monkeypatch):
    monkeypatch.setitem(bench.MODELS, "nothing", "minildm.no_such_module")
    out = bench.bench_training(["nothing"], "tiny", CPU, {"fp32": 1e9}, quick=True)
    assert "ModuleNotFoundError" in out["nothing"]["skipped"]


def test_latent_step_costs_about_16x_less_than_pixel_step():
    out = bench.bench_latent_vs_pixel(CPU, quick=True)
    # 32x32 = 16 x 8x8 positions; the channel change in conv_in/conv_out barely matters
    assert 14 < out["flops_ratio"] < 18
    assert out["time_ratio"] > 1


def test_matmul_flops_is_positive_and_utilisation_is_a_ratio():
    peak = bench.matmul_flops(CPU, quick=True)
    assert 1e8 < peak < 1e14


def test_table_lists_every_model():
    results = {
        "machine": {"device": "cpu"}, "matmul_gflops": {"fp32": 30.0},
        "training": {"vae": {"batch_size": 16, "gflops_per_step": 0.7,
                             "fp32": {"images_per_s": 100.0, "step_ms": 160.0, "utilisation": 0.15}},
                     "ldm": {"skipped": "WeightsError: no weights"}},
        "sampling": {"batch": 4, "ddpm_1000": {"seconds": 20.0}, "ddim_50": {"seconds": 1.0},
                     "speedup": 20.0},
        "latent_vs_pixel": {"flops_ratio": 15.9, "time_ratio": 4.0},
    }
    results["training"]["vae"]["preset"] = "cpu"
    md = bench.markdown(results)
    assert "| vae | cpu | 16 | fp32 | 100.0 | 160 | 0.70 | 15% |" in md and "skipped" in md
    text = bench.table(results)
    assert "vae" in text and "15.0%" in text and "ldm" in text and "skipped" in text
    assert "20.0x faster" in text


def test_gpu_check_runs_its_code_path_on_the_cpu():
    """The GPU check has never met a GPU here; its code path runs on the CPU with tiny presets."""
    out = bench.gpu_check("cpu", quick=True)
    assert out["machine"]["device"] == "cpu" and out["matmul_gflops"]["bf16"] > 0
    for name in ("ldm", "pixel_unet"):
        row = out["training"][name]
        assert row["preset"] == "tiny" and row["gflops_per_step"] > 0
        assert row["bf16"]["images_per_s"] > 0 and 0 < row["bf16"]["utilisation"] < 2
        assert "GPU run only" in row["bf16+compile"]["skipped"]             # no C++ compile on a CPU
    assert out["sampling"]["images"] == 108 and 0 <= out["sampling"]["all_four"] <= 1


def test_bench_threads_outside_the_machine_is_a_clear_error():
    import argparse
    import os

    import pytest

    from minildm import bench
    for threads in (-1, (os.cpu_count() or 1) + 1):
        with pytest.raises(ValueError, match="--threads must be between 1 and"):
            bench.main(argparse.Namespace(threads=threads, quick=True))
