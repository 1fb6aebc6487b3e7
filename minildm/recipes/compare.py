"""The side-by-side experiment of lesson 08: which denoiser, which objective, at one budget?

    python -m minildm compare denoisers --json docs/results_flow.json   # every cell (about 30 CPU-minutes)
    python -m minildm compare denoisers --cell dit-cross/flow           # one cell alone: the same numbers
    python -m minildm compare denoisers --quick                         # a smoke test (a minute)
    python -m minildm compare denoisers --timing-only --json docs/results_flow.json   # only the step times
    python -m minildm compare denoisers --minutes 2 --json docs/results_flow_minutes.json   # equal time

Cells: {UNet, DiT-cross, DiT-joint} x {eps + DDIM (SD1), rectified flow + Euler (SD3)}, one
flow cell with uniform instead of logit-normal s, and two cells with the v target (lesson 02)
sampled with DDIM: is it the straight path that helps, or a target that contains the image? Every cell trains through recipes/flow.job
with the SAME budget: the same steps, batch size and learning-rate schedule, the same pool of
latents, the same batches in the same order (one data stream, captions and prompt dropout
included), the same seed. The architectures are those of flow.PRESETS["cpu"] (UNet as the
shipped LDM; DiT width 128, depth 4, 2x2 patches). Measured per cell:

    parameters; GFLOPs of one training step, forward + backward (torch.utils.flop_counter, via bench);
    ms per training step and images/s, with the load average and the torch threads next to them
    (the machine may be shared: wall times are upper bounds, FLOPs are exact), measured twice: over
    each cell's training run, and in turns for the three denoisers (interleaved_timing: the table's);
    the judge's all-four-correct versus sampling steps (1, 2, 4, 8, 16, 50) on a fixed subset of
    captions (one seed), and at 50 steps on all 324 canonical captions, seen and held-out apart;
    a few sample images at 2, 8 and 50 steps (stored next to the JSON for the notebook's grids).

The same budget can mean the same images seen (above: cfg.steps for every cell) or the same
minutes of training (--minutes M: the six main cells). A DiT step is cheaper than a UNet step,
so at equal minutes it sees more images. On a shared machine a wall-clock limit per cell would
not be fair: the other jobs' load changes between one cell and the next, and a cell trained
while the machine was busy would get fewer steps for that alone. So the minutes are turned into
steps through interleaved_timing, run first, whose turns expose the three denoisers to the same
load: each cell gets floor(M * 60 / its denoiser's median seconds per step) steps, and the rest
is as above (batch, warm-up, EMA, data stream, seed; the cosine schedule ends at the cell's own
last step). Each cell records its steps, images seen, the ms/step its budget used and M; its own
training time (train_seconds, ms_per_step) is recorded too, so what the cells really took can
be set against the budget. A cell re-run alone reuses the file's timing: the same steps.

Taught in notebooks/08_sd3.ipynb.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .. import bench
from ..data import shapes
from ..train import train
from ..weights_io import save_safetensors
from . import flow
from .ldm import PROMPT_DROPOUT, _frozen_part, encode_pool, latent_batch_fn

CELLS = ("unet/eps", "unet/flow", "dit-cross/eps", "dit-cross/flow", "dit-joint/eps", "dit-joint/flow",
         "dit-cross/flow-uniform", "unet/v", "dit-cross/v")
MAIN_CELLS = CELLS[:6]                 # {UNet, DiT-cross, DiT-joint} x {eps, flow}: the equal-minutes default


@dataclass
class CompareConfig:
    """The budget every cell gets, and what is measured."""
    steps: int = 500                       # training steps per cell
    batch_size: int = 64                   # images per step: steps x batch_size images seen per cell
    lr: float = 1e-3                       # AdamW peak (warm-up, then cosine to lr / 10)
    warmup_steps: int = 50
    ema_decay: float = 0.99                # the EMA weights are sampled
    latent_pool: int = 8192                # Shapes images encoded once, shared by every cell
    sweep_steps: tuple = (1, 2, 4, 8, 16, 50)
    sweep_captions: int = 108              # a fixed random subset of the 324 captions, one seed each
    full_steps: int = 50                   # also grade all 324 captions at this many steps (0 = skip)
    sample_captions: int = 8               # images kept per cell and step count, for the notebook
    sample_steps: tuple = (2, 8, 50)
    guidance_scale: float = 3.0
    threads: int = 1                       # torch threads (the times are per-thread figures)
    timing_rounds: int = 12                # interleaved_timing: one step of each denoiser, this many times
    seed: int = 0


QUICK = CompareConfig(steps=10, batch_size=16, warmup_steps=2, latent_pool=256, sweep_steps=(1, 4),
                      sweep_captions=12, full_steps=0, sample_captions=4, sample_steps=(4,), timing_rounds=4)


def parse_cell(name: str) -> tuple[str, str, str]:
    """"dit-cross/flow-uniform" -> ("dit-cross", "flow", "uniform"); flow defaults to logit_normal."""
    denoiser, _, objective = name.partition("/")
    objective, _, sampling = objective.partition("-")
    if denoiser not in flow.DENOISERS or objective not in flow.OBJECTIVES or sampling not in ("", "uniform"):
        raise ValueError(f"unknown cell {name!r}; allowed: {', '.join(CELLS)} "
                         f"(any of {', '.join(flow.DENOISERS)} / eps, v, flow or flow-uniform)")
    return denoiser, objective, sampling or "logit_normal"


def machine() -> dict:
    """Load average and threads: a shared machine makes every wall time longer."""
    return {"load_average": [round(x, 2) for x in os.getloadavg()], "threads": torch.get_num_threads(),
            "cpus": os.cpu_count(), "torch": torch.__version__}


def eval_labels(count: int, seed: int = 0) -> torch.Tensor:
    """The fixed subset of canonical captions the sweep grades: (count, 4)."""
    order = torch.randperm(324, generator=torch.Generator().manual_seed(seed))
    return shapes.all_labels()[order[:count]]


def run_cell(name: str, cfg: CompareConfig, sample_batch, clip_x0: float) -> tuple[dict, torch.Tensor]:
    """Train one cell, measure it; returns (its JSON row, sample images (S, N, 3, 32, 32) uint8)."""
    denoiser, objective, sampling = parse_cell(name)
    run = flow.job("cpu", run_dir=None, name=name, sample_batch=sample_batch, denoiser=denoiser,
                   objective=objective, timestep_sampling=sampling, steps=cfg.steps, batch_size=cfg.batch_size,
                   lr=cfg.lr, warmup_steps=cfg.warmup_steps, ema_decay=cfg.ema_decay, seed=cfg.seed,
                   log_every=max(1, cfg.steps // 20), checkpoint_every=0, progress=False, device="cpu")
    flops = bench.step_flops(run, torch.device("cpu"))
    before = machine()
    result = train(run.model, run.loss_fn, run.sample_batch, run.cfg, name=name)
    history = result.history
    timed_steps = history[-1]["step"] - history[0]["step"]   # from the first log on: no warm-up
    seconds_per_step = (history[-1]["seconds"] - history[0]["seconds"]) / max(1, timed_steps)
    row = {"denoiser": denoiser, "objective": objective, "timestep_sampling": sampling if objective == "flow" else None,
           "sampler": "euler" if objective == "flow" else "ddim",
           "parameters": sum(p.numel() for p in run.model.parameters()),
           "gflops_per_step": round(flops / 1e9, 3), "ms_per_step": round(1000 * seconds_per_step, 1),
           "images_per_second": round(cfg.batch_size / seconds_per_step, 1),
           "train_seconds": round(result.seconds, 1), "images_seen": cfg.steps * cfg.batch_size,
           "final_loss": round(sum(h["loss"] for h in history[-3:]) / len(history[-3:]), 4),
           "machine_before": before, "machine_after": machine()}
    pipe = flow.make_pipeline(run, result.model, clip_x0=clip_x0)
    labels, sweep, samples = eval_labels(cfg.sweep_captions, cfg.seed), {}, []
    for n in cfg.sweep_steps:
        graded, images = flow.generate_and_grade(pipe, labels, n, 1, cfg.guidance_scale, return_images=True)
        sweep[str(n)] = {part: graded[part]["all_four"] if graded[part] else None
                         for part in ("all", "seen", "held_out")}
        if n in cfg.sample_steps:
            samples.append((images[:cfg.sample_captions] * 255).round().to(torch.uint8))
        print(f"  {name}: {n:>2} steps, all four {sweep[str(n)]['all']:.3f}", flush=True)
    row["sweep"] = sweep
    if cfg.full_steps:
        full = flow.generate_and_grade(pipe, shapes.all_labels(), cfg.full_steps, 1, cfg.guidance_scale)
        row["full"] = {"steps": cfg.full_steps, "seen": full["seen"], "held_out": full["held_out"],
                       "seconds_per_image": full["seconds_per_image"]}
    return row, torch.stack(samples)


def interleaved_timing(cfg: CompareConfig, sample_batch) -> dict:
    """ms per training step (forward, backward, AdamW) of each denoiser at cfg.batch_size, measured in
    turns - one step of each, cfg.timing_rounds times - so that a change in the machine's load hits
    all three alike; medians of wall and CPU time, the first two rounds left out (warm-up). The
    objective does not change a step's cost (the same network, a different target)."""
    runs = {d: flow.job("cpu", run_dir=None, sample_batch=sample_batch, denoiser=d, batch_size=cfg.batch_size,
                        progress=False, device="cpu") for d in flow.DENOISERS}
    optimizers = {d: torch.optim.AdamW(run.model.parameters(), cfg.lr) for d, run in runs.items()}
    batch = sample_batch(cfg.batch_size, torch.Generator().manual_seed(0), torch.device("cpu"))
    times = {d: [] for d in runs}
    before = machine()
    for _ in range(cfg.timing_rounds):
        for d, run in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            loss = run.loss_fn(run.model, batch)
            optimizers[d].zero_grad()
            loss.backward()
            optimizers[d].step()
            times[d].append((time.perf_counter() - wall, time.process_time() - cpu))
    out = {"machine_before": before, "machine_after": machine(), "rounds": cfg.timing_rounds}
    for d, measured in times.items():
        kept = measured[2:] or measured
        wall = sorted(m[0] for m in kept)[len(kept) // 2]
        cpu = sorted(m[1] for m in kept)[len(kept) // 2]
        out[d] = {"ms_per_step": round(1000 * wall, 1), "cpu_ms_per_step": round(1000 * cpu, 1),
                  "images_per_second": round(cfg.batch_size / wall, 1)}
    return out


def samples_path(json_path) -> Path:
    """Where the sample images of a results JSON live: results.json -> results_samples.safetensors."""
    return Path(json_path).with_name(Path(json_path).stem + "_samples.safetensors")


def steps_for_minutes(minutes: float, ms_per_step: float, warmup_steps: int) -> tuple[int, int]:
    """(steps, warm-up steps) that fit `minutes` at `ms_per_step`; the warm-up as train.steps_for_budget."""
    steps = max(1, int(60_000 * minutes / ms_per_step + 1e-6))     # floor (1.2 / 0.1 is 11.999...)
    return steps, min(warmup_steps, max(1, steps // 10))


def compare_denoisers(cfg: CompareConfig = CompareConfig(), cells=CELLS, json_path=None, timing: bool = True,
                      minutes: float = 0.0) -> dict:
    """Run `cells` at cfg's budget, then (timing) interleaved_timing; with json_path, write the JSON
    (merged into an existing file's cells, so one cell can be re-run alone) and the sample images
    next to it (*_samples.safetensors). minutes > 0: equal time instead of equal images - the
    timing first, then each cell trains for steps_for_minutes(minutes, its denoiser's ms/step)."""
    cells = list(cells)
    for name in cells:
        parse_cell(name)                                      # fail before any training
    shown = eval_labels(cfg.sweep_captions, cfg.seed)[:cfg.sample_captions]           # the samples' captions
    everything = MAIN_CELLS if minutes else CELLS            # what a run without --cell trains
    config = asdict(cfg) if not minutes else {**asdict(cfg), "steps": None, "minutes": minutes}
    out = {"config": json.loads(json.dumps(config)), "cells": {},
           "sample_captions": [shapes.caption(l) for l in shown]}
    samples = {}
    if json_path and Path(json_path).exists():
        previous = json.loads(Path(json_path).read_text())
        budget = lambda config: {k: v for k, v in config.items() if k != "timing_rounds"}
        if budget(previous.get("config", {})) != budget(out["config"]) and not set(cells) >= set(everything):
            raise ValueError(f"{json_path} holds cells trained at another budget; re-run every cell "
                             f"(no --cell) or write to another --json")
        if budget(previous.get("config", {})) == budget(out["config"]):   # same budget: keep the other cells
            out["cells"], out["timing"] = previous["cells"], previous.get("timing")
            if samples_path(json_path).exists():
                from safetensors.torch import load_file
                samples = load_file(str(samples_path(json_path)))
    torch.set_num_threads(cfg.threads)
    device = torch.device("cpu")
    vae, _ = _frozen_part("vae", None, device)
    clip, _ = _frozen_part("clip", None, device)
    sample_batch = latent_batch_fn(vae, clip, PROMPT_DROPOUT, vae.config.image_size, cfg.latent_pool,
                                   pool_seed=cfg.seed + 1,
                                   partial_prompts=flow.partial_prompts(flow.PRESETS["cpu"], clip))
    sample_batch(1, torch.Generator().manual_seed(0), device)  # encode the shared pool now, outside the timing
    clip_x0 = None
    if any(parse_cell(name)[1] != "flow" for name in cells):                 # eps, v cells clip as recipes/ldm.py
        probe = encode_pool(vae, 512, seed=cfg.seed + 2, image_size=vae.config.image_size)[0]
        clip_x0 = round(float(probe.abs().max()) * flow.LATENT_CLIP_MARGIN, 2)
    reuse = out.get("timing") and cells and not set(cells) >= set(everything)   # a cell re-run alone: same steps
    if minutes and not reuse:                                 # equal time: the step times decide the steps
        print("== interleaved timing of one training step (sets each cell's steps) ==", flush=True)
        out["timing"] = interleaved_timing(cfg, sample_batch)
    for name in cells:
        t0, cell_cfg = time.perf_counter(), cfg
        if minutes:
            ms = out["timing"][parse_cell(name)[0]]["ms_per_step"]
            steps, warmup = steps_for_minutes(minutes, ms, cfg.warmup_steps)
            cell_cfg = CompareConfig(**{**asdict(cfg), "steps": steps, "warmup_steps": warmup})
        print(f"== {name} ({cell_cfg.steps} steps x {cfg.batch_size}) ==", flush=True)
        out["cells"][name], samples[name] = run_cell(name, cell_cfg, sample_batch, clip_x0)
        out["cells"][name]["cell_seconds"] = round(time.perf_counter() - t0, 1)
        if minutes:
            out["cells"][name].update(steps=steps, warmup_steps=warmup, budget_minutes=minutes,
                                      budget_ms_per_step=ms)
        if json_path:
            write(out, samples, json_path)
    if timing and not minutes:
        print("== interleaved timing of one training step ==", flush=True)
        out["timing"] = interleaved_timing(cfg, sample_batch)
        if json_path:
            write(out, samples, json_path)
    return out


def write(out: dict, samples: dict, json_path) -> None:
    """The JSON, and the sample images (uint8, one tensor per cell) next to it."""
    path = Path(json_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1) + "\n")
    save_safetensors({k: v.contiguous() for k, v in samples.items()}, samples_path(path))


def markdown_table(out: dict) -> str:
    """The comparison as a markdown table: one row per cell."""
    steps, timing = out["config"]["sweep_steps"], out.get("timing") or {}
    minutes = out["config"].get("minutes")                    # equal time: each cell's steps and images
    head = (["cell", "params", "GFLOP/step", "ms/step", "img/s"] + (["steps", "images"] if minutes else [])
            + [f"{n} st." for n in steps] + ["seen (324, 50 st.)", "held-out (50 st.)"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in out["cells"].items():
        full, speed = row.get("full"), timing.get(row["denoiser"], row)   # interleaved timing when measured
        cells = ([f"{name} ({row['sampler']})", f"{row['parameters'] / 1e6:.2f}M", f"{row['gflops_per_step']:.2f}",
                  f"{speed['ms_per_step']:.0f}", f"{speed['images_per_second']:.0f}"]
                 + ([f"{row['steps']}", f"{row['images_seen']:,}"] if minutes else [])
                 + [f"{100 * row['sweep'][str(n)]['all']:.0f}%" for n in steps]
                 + ([f"{100 * full['seen']['all_four']:.1f}%", f"{100 * full['held_out']['all_four']:.1f}%"]
                    if full else ["", ""]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(args) -> dict:
    """`python -m minildm compare denoisers [--quick] [--steps N | --minutes M] [--cell NAME ...] [--timing-only]
    [--json FILE]`."""
    cfg = QUICK if args.quick else CompareConfig()
    minutes = getattr(args, "minutes", None) or 0.0
    if args.steps and minutes:
        raise ValueError("--steps (the same images) and --minutes (the same time) set the budget two ways; "
                         "choose one")
    if args.steps:
        cfg = CompareConfig(**{**asdict(cfg), "steps": args.steps})
    cells = [] if args.timing_only else (args.cell or (MAIN_CELLS if minutes else CELLS))
    out = compare_denoisers(cfg, cells, args.json, minutes=minutes)
    print(markdown_table(out))
    return out
