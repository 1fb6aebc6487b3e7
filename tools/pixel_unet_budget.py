"""One pixel-UNet training of the 5-minute study (issue 18; docs/results_ddpm.md, "The pixel UNet in 5 minutes?").

Trains the cpu preset with the named settings replaced, then samples 400 images from each of the noise
seeds 0 and 1 with DDIM-50 at eta 0 and eta 1 and grades them with the judge (stricter judge, docs/judge.md).
Prints one JSON line: the settings, training seconds, and the clean rate of each setting.

    OMP_NUM_THREADS=1 python tools/pixel_unet_budget.py --steps 3500 --batch 32 --lr 6e-3 --snr-gamma 5 \\
        --middle-attention-only --out /tmp/budget

The step count that fits a time budget: the idle 2-thread step times are in docs/results_ddpm.md.
"""
import argparse
import json
import time
from dataclasses import replace

import torch

from minildm.data.judge import grade_unconditional
from minildm.recipes import pixel_unet


def comma_ints(what: str, minimum: int):
    """An argparse type: '1,4,8' -> (1, 4, 8), each at least `minimum`; anything else is a one-line usage error."""
    def parse(text: str) -> tuple:
        try:
            values = tuple(int(v) for v in text.split(","))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be whole numbers separated by commas, got {text!r}")
        if min(values) < minimum:
            raise argparse.ArgumentTypeError(f"{what} must be at least {minimum}, got {text!r}")
        return values
    return parse


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, required=True)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--snr-gamma", type=float, default=0.0, help="min-SNR weighting (0 = plain v loss)")
    ap.add_argument("--ema", type=float, default=0.995)
    ap.add_argument("--beta2", type=float, default=0.999, help="AdamW's second-moment decay (default 0.999)")
    ap.add_argument("--min-lr-ratio", type=float, default=0.1,
                    help="the cosine decay ends at lr times this (default 0.1; 0 = decay to zero)")
    ap.add_argument("--seed", type=int, default=0, help="training seed (initial weights, data)")
    ap.add_argument("--middle-attention-only", action="store_true",
                    help="the fast preset's UNet: self-attention in the middle block only, not in the 8x8 level")
    ap.add_argument("--base-channels", type=int, help="UNet width at full resolution (default: the preset's 16)")
    ap.add_argument("--channel-mults", type=comma_ints("channel mults", 1),
                    help="channels per level as multiples of the base, e.g. 1,4,8 (attention as the preset: "
                         "in the last level unless --middle-attention-only)")
    ap.add_argument("--norm-groups", type=int, help="GroupNorm groups (default: the preset's 8)")
    ap.add_argument("--images", type=int, default=400, help="images per noise seed")
    ap.add_argument("--noise-seeds", type=comma_ints("noise seeds", 0), default=(0, 1),
                    help="noise seeds to sample from, e.g. 0 or 0,1")
    ap.add_argument("--out", required=True, help="folder for the weights and the run")
    return ap.parse_args(argv)


def preset_from(args) -> pixel_unet.PixelPreset:
    """The cpu preset with the UNet and training settings the arguments name (UNetConfig checks the shape)."""
    base = pixel_unet.PRESETS["cpu"]
    model_config = pixel_unet.PRESETS["fast"].model if args.middle_attention_only else base.model
    if args.channel_mults:  # another shape of UNet: attention where the chosen preset has it, per level
        attention = (False,) * (len(args.channel_mults) - 1) + (not args.middle_attention_only,)
        model_config = replace(model_config, channel_mults=args.channel_mults, attention_levels=attention)
    for field in ("base_channels", "norm_groups"):
        if getattr(args, field):
            model_config = replace(model_config, **{field: getattr(args, field)})
    return replace(base, model=model_config, snr_gamma=args.snr_gamma or None,
                   train=replace(base.train, steps=args.steps, batch_size=args.batch, lr=args.lr,
                                 ema_decay=args.ema, seed=args.seed,
                                 betas=(0.9, args.beta2), min_lr_ratio=args.min_lr_ratio, memory_format="channels_last",
                                 checkpoint_every=0, log_every=250))


def main(argv=None):
    args = parse_args(argv)
    preset = preset_from(args)
    t0 = time.time()
    model = pixel_unet.fit(preset, out_dir=args.out, run_dir=f"{args.out}/runs", progress=False)
    result = {**{k: v for k, v in vars(args).items() if k != "out"}, "train_seconds": round(time.time() - t0, 1),
              "threads": torch.get_num_threads(), "parameters": sum(p.numel() for p in model.parameters())}
    for eta in (0.0, 1.0):
        images = torch.cat([pixel_unet.generate(model, model.schedule, args.images, num_steps=50, eta=eta, seed=s,
                                                progress=False) for s in args.noise_seeds])
        result[f"ddim50_eta{eta:g}_clean"] = grade_unconditional(images)["clean_rate"]
    print(json.dumps(result))


if __name__ == "__main__":
    main()
