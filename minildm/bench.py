"""Benchmarks: training speed, how much of the machine a step uses, sampling cost.

    python -m minildm bench                    # the figures in the README (minutes on a CPU)
    python -m minildm bench --quick            # a smoke version in well under a minute
    python -m minildm bench --json bench.json  # also write the JSON

What is measured (on the chosen device; a GPU adds bf16 and torch.compile runs):

1. training images/s of each model (VAE, CLIP, pixel UNet, latent UNet) at its
   `cpu` preset (`tiny` with --quick), through the real loop train.train;
2. the FLOPs of one training step (forward + backward, counted by
   torch.utils.flop_counter.FlopCounterMode) times steps/s = achieved FLOP/s,
   divided by the FLOP/s of a large matmul measured in the same run: a
   utilisation ratio that means the same thing on a laptop and on an H100;
3. sampling time: DDPM with all 1000 steps vs DDIM with 50 (pixel UNet);
4. the latent-vs-pixel cost of a UNet step: the same UNet on 8x8x4 latents
   vs 32x32x3 pixels (FLOPs and time).

Each model's training job is exactly what its `fit()` runs: bench asks the
recipe for its `job(preset)` (model, loss_fn, sample_batch, cfg) and times it
through the public loop, train.train; nothing is written.

Taught in notebooks/07_scaling_up.ipynb.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import os
import platform
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from . import train as training
from .recipes import MODELS, Job, recipe


def capture_job(name: str, preset: str, device: str) -> Job:
    """The (model, loss_fn, sample_batch, cfg) that `recipes.<name>.fit(preset)` trains."""
    return recipe(name).job(preset, run_dir=None, device=device, progress=False)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_flops(device: torch.device, dtype=torch.float32, quick: bool = False) -> float:
    """FLOP/s of a large square matmul (2 n^3 FLOPs each): what this device can do at best."""
    n = (1024 if quick else 2048) if device.type == "cpu" else 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):  # warm-up
        a @ b
    _sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < (0.5 if quick else 2.0):
        a @ b
        reps += 1
        _sync(device)  # a GPU runs asynchronously: wait for the result before reading the clock
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)


def _loss_of(out):
    return out[0] if isinstance(out, tuple) else out


def step_flops(job: Job, device: torch.device, count_batch: int = 8) -> int:
    """FLOPs of one training step of the model: loss forward + backward on one batch.

    Counted on `count_batch` samples and scaled to the preset's batch size (every
    layer here works on each sample separately, so FLOPs grow linearly with the batch).
    """
    model = copy.deepcopy(job.model).to(device).train()
    n = min(count_batch, job.cfg.batch_size)
    batch = job.sample_batch(n, torch.Generator().manual_seed(0), device)
    with FlopCounterMode(display=False) as counter:
        _loss_of(job.loss_fn(model, batch)).backward()
    return int(counter.get_total_flops() * job.cfg.batch_size / n)


def time_training(job: Job, device: torch.device, steps: int, precision="fp32", compile=False) -> dict:
    """Run the real loop for 2 warm-up + `steps` steps; images/s over the timed steps."""
    warmup = 2
    cfg = dataclasses.replace(job.cfg, steps=warmup + steps, log_every=1, out_dir=None, progress=False,
                              checkpoint_every=0, resume=False, device=str(device),
                              precision=precision, compile=compile)
    result = training.train(copy.deepcopy(job.model), job.loss_fn, job.sample_batch, cfg, "bench")
    seconds = result.history[-1]["seconds"] - result.history[warmup - 1]["seconds"]
    return {"images_per_s": cfg.batch_size * steps / seconds, "step_ms": 1000 * seconds / steps}


def bench_training(names, preset: str, device: torch.device, peak: dict, quick: bool) -> dict:
    out = {}
    steps = 3 if quick else 10
    for name in names:
        try:
            job = capture_job(name, preset, str(device))
        except Exception as err:  # a module not written yet, or missing shipped weights
            out[name] = {"skipped": f"{type(err).__name__}: {str(err)[:160]}"}
            continue
        flops = step_flops(job, device)
        row = {"preset": preset, "batch_size": job.cfg.batch_size,
               "parameters": sum(p.numel() for p in job.model.parameters()),
               "gflops_per_step": flops / 1e9}
        runs = [("fp32", False)]
        if device.type == "cuda":
            runs += [("bf16", False), ("bf16", True)]
        for precision, compiled in runs:
            key = precision + ("+compile" if compiled else "")
            try:
                timing = time_training(job, device, steps, precision, compiled)
            except Exception as err:  # e.g. torch.compile without a working compiler
                row[key] = {"error": f"{type(err).__name__}: {str(err)[:160]}"}
                continue
            achieved = flops * 1000 / timing["step_ms"]
            row[key] = {**timing, "achieved_gflops": achieved / 1e9,
                        "utilisation": achieved / peak["bf16" if precision == "bf16" else "fp32"]}
        out[name] = row
    return out


@torch.no_grad()
def bench_sampling(device: torch.device, quick: bool) -> dict:
    """DDPM over all 1000 steps vs DDIM with 50: same UNet, same batch."""
    from .recipes.pixel_unet import PRESETS
    from .samplers import DDIMSampler, DDPMSampler, sample
    from .schedule import NoiseSchedule
    from .unet import UNet
    model = UNet(PRESETS["cpu"].model).to(device).eval()
    schedule = NoiseSchedule(PRESETS["cpu"].schedule, PRESETS["cpu"].num_timesteps).to(device)
    n = 4 if quick else 8
    xT = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(0)).to(device)
    out = {"batch": n}
    for label, sampler in (("ddpm_1000", DDPMSampler(schedule)), ("ddim_50", DDIMSampler(schedule, 50, 0.0))):
        total = len(sampler.timesteps)
        start = total - 50 if quick and total > 50 else 0  # --quick: time 50 steps, scale up
        t0 = time.perf_counter()
        sample(lambda x, t: model(x, t), sampler, xT, start_index=start, progress=False)
        _sync(device)
        seconds = (time.perf_counter() - t0) * total / (total - start)
        out[label] = {"steps": total, "seconds": seconds, "extrapolated": start > 0}
    out["speedup"] = out["ddpm_1000"]["seconds"] / out["ddim_50"]["seconds"]
    return out


def bench_latent_vs_pixel(device: torch.device, quick: bool) -> dict:
    """One training step (forward + backward) of the same UNet on pixels and on latents."""
    from .recipes.pixel_unet import PRESETS
    from .unet import UNet
    base = PRESETS["cpu"].model
    batch, reps = (8, 2) if quick else (32, 5)
    out = {"unet": f"pixel_unet cpu preset, batch {batch}"}
    for label, (c, size) in {"pixel_32x32x3": (3, 32), "latent_8x8x4": (4, 8)}.items():
        model = UNet(dataclasses.replace(base, in_channels=c, out_channels=c)).to(device)
        x = torch.randn(batch, c, size, size, device=device)
        t = torch.randint(0, 1000, (batch,), device=device)
        with FlopCounterMode(display=False) as counter:
            model(x, t).square().mean().backward()
        model(x, t).square().mean().backward()  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(reps):
            model(x, t).square().mean().backward()
        _sync(device)
        out[label] = {"gflops": counter.get_total_flops() / 1e9,
                      "ms": 1000 * (time.perf_counter() - t0) / reps}
    pixel, latent = out["pixel_32x32x3"], out["latent_8x8x4"]
    out["flops_ratio"] = pixel["gflops"] / latent["gflops"]
    out["time_ratio"] = pixel["ms"] / latent["ms"]
    return out


def machine(device: torch.device) -> dict:
    info = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}
    if hasattr(os, "getloadavg"):
        info["load_average_1min"] = round(os.getloadavg()[0], 1)  # other jobs sharing the machine
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def run(quick: bool = False, device: str = "auto", models=None) -> dict:
    """All benchmarks -> a JSON-able dict (see the module docstring)."""
    dev = training.pick_device(device)
    if dev.type == "cuda":  # as train() does: fp32 matmuls on tensor cores (TF32), here too
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    t0 = time.perf_counter()
    peak = {"fp32": matmul_flops(dev, torch.float32, quick)}
    if dev.type == "cuda":
        peak["bf16"] = matmul_flops(dev, torch.bfloat16, quick)
    results = {"machine": machine(dev), "quick": quick,
               "matmul_gflops": {k: v / 1e9 for k, v in peak.items()}}
    results["training"] = bench_training(models or list(MODELS), "tiny" if quick else "cpu", dev, peak, quick)
    results["sampling"] = bench_sampling(dev, quick)
    results["latent_vs_pixel"] = bench_latent_vs_pixel(dev, quick)
    results["seconds"] = time.perf_counter() - t0
    return _rounded(results)


def gpu_check(device: str = "cuda", steps: int = 300, quick: bool = False) -> dict:
    """The prepared first run on a GPU (`python -m minildm bench --gpu-check`, <= 5 minutes):

    1. fp32 and bf16 matmul FLOP/s (what the device can do);
    2. the gpu presets of the latent UNet and the pixel UNet through the real loop for
       `steps` steps in bf16, and again with torch.compile: images/s and utilisation;
    3. the shipped pipeline sampling 108 captions with DDIM-50 on the device, judged:
       all-four-correct should match the CPU figure (README) within noise.
    quick (or a CPU device): tiny presets and few steps, to test this code path anywhere.
    """
    from .data import shapes
    from .data.judge import grade_conditional
    from .pipeline import LatentDiffusionPipeline
    dev = training.pick_device(device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    small = quick or dev.type != "cuda"
    t0 = time.perf_counter()
    peak = {"fp32": matmul_flops(dev, torch.float32, small), "bf16": matmul_flops(dev, torch.bfloat16, small)}
    out = {"machine": machine(dev), "matmul_gflops": {k: v / 1e9 for k, v in peak.items()}, "training": {}}
    preset, steps = ("tiny", 3) if small else ("gpu", steps)
    for name in ("ldm", "pixel_unet"):
        job = capture_job(name, preset, str(dev))
        flops = step_flops(job, dev)
        row = {"preset": preset, "batch_size": job.cfg.batch_size, "steps": steps, "gflops_per_step": flops / 1e9}
        runs = (("bf16", False), ("bf16+compile", True)) if not small else (("bf16", False),)
        if small:   # compiling C++ kernels on a small CPU takes minutes: the GPU run is what this checks
            row["bf16+compile"] = {"skipped": "torch.compile is timed on the GPU run only"}
        for key, compiled in runs:
            try:
                timing = time_training(job, dev, steps, "bf16", compiled)
                row[key] = {**timing, "utilisation": flops * 1000 / timing["step_ms"] / peak["bf16"]}
            except Exception as err:  # e.g. no working compiler for torch.compile
                row[key] = {"error": f"{type(err).__name__}: {str(err)[:200]}"}
        out["training"][name] = row
    pipe = LatentDiffusionPipeline.from_pretrained(device=dev)
    labels = shapes.all_labels()[::3]                                          # 108 captions
    t1 = time.perf_counter()
    images = pipe([shapes.caption(l) for l in labels], num_steps=10 if small else 50, seed=0).cpu()
    out["sampling"] = {"images": len(images), "seconds": time.perf_counter() - t1,
                       **grade_conditional(images, labels)}
    out["seconds"] = time.perf_counter() - t0
    return _rounded(out)


def _rounded(value):
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    return value


def table(results: dict) -> str:
    """A small text table of the figures that matter."""
    lines = [f"{'model':<11} {'run':<14} {'images/s':>9} {'ms/step':>8} {'GFLOP/step':>10} {'util':>6}"]
    for name, row in results["training"].items():
        if "skipped" in row:
            lines.append(f"{name:<11} skipped: {row['skipped'][:60]}")
            continue
        for key, r in row.items():
            if isinstance(r, dict) and "error" in r:
                lines.append(f"{name:<11} {key:<14} failed: {r['error'][:50]}")
            elif isinstance(r, dict):
                lines.append(f"{name:<11} {key:<14} {r['images_per_s']:>9.1f} {r['step_ms']:>8.1f} "
                             f"{row['gflops_per_step']:>10.3f} {r['utilisation']:>6.1%}")
    s, lp = results["sampling"], results["latent_vs_pixel"]
    lines.append(f"matmul: {results['matmul_gflops']} GFLOP/s on {results['machine']['device']}")
    lines.append(f"sampling {s['batch']} images: DDPM-1000 {s['ddpm_1000']['seconds']:.2f} s, "
                 f"DDIM-50 {s['ddim_50']['seconds']:.2f} s ({s['speedup']:.1f}x faster)")
    lines.append(f"UNet step, pixels 32x32x3 vs latents 8x8x4: {lp['flops_ratio']:.1f}x the FLOPs, "
                 f"{lp['time_ratio']:.1f}x the time")
    return "\n".join(lines)


def markdown(results: dict) -> str:
    """The training figures as a markdown table (for README / docs/results_bench.md)."""
    lines = ["| model | preset | batch | run | images/s | ms/step | GFLOP/step | utilisation |",
             "|---|---|---|---|---|---|---|---|"]
    for name, row in results["training"].items():
        if "skipped" in row:
            lines.append(f"| {name} | | | skipped: {row['skipped'][:60]} | | | | |")
            continue
        for key, r in row.items():
            if isinstance(r, dict) and "error" in r:
                lines.append(f"| {name} | {row['preset']} | {row['batch_size']} | {key} | failed: "
                             f"{r['error'][:60]} | | | |")
            elif isinstance(r, dict):
                lines.append(f"| {name} | {row['preset']} | {row['batch_size']} | {key} | "
                             f"{r['images_per_s']:.1f} | {r['step_ms']:.0f} | {row['gflops_per_step']:.2f} | "
                             f"{r['utilisation']:.0%} |")
    return "\n".join(lines)


def main(args) -> dict:
    """`python -m minildm bench [--quick] [--device D] [--threads N] [--json FILE] [--gpu-check]`."""
    torch.manual_seed(0)
    threads = getattr(args, "threads", 0) or 0
    if threads < 0 or threads > (os.cpu_count() or 1):
        raise ValueError(f"--threads must be between 1 and this machine's {os.cpu_count()} CPUs, got {threads}")
    if threads:
        torch.set_num_threads(threads)
    if getattr(args, "gpu_check", False):
        device = getattr(args, "device", "auto")
        results = gpu_check("cuda" if device == "auto" and torch.cuda.is_available() else
                            ("cpu" if device == "auto" else device), quick=getattr(args, "quick", False))
        print(json.dumps(results, indent=2))
    else:
        results = run(quick=getattr(args, "quick", False), device=getattr(args, "device", "auto"))
        print(json.dumps(results, indent=2))
        print(table(results))
    if getattr(args, "json", None):
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {path}")
    return results
