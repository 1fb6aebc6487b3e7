"""Self-conditioning on the fast pixel recipe, one training (issue 18; docs/results_ddpm.md, "Two more levers").

Self-conditioning (Chen, Zhang & Hinton 2022, "Analog Bits", section 3.2): the UNet sees [x_t, x0_prev]
(6 channels), x0_prev being its own earlier guess of the clean image. In training, half the batches get
zeros and the other half a no-grad guess from the same x_t; in sampling, each DDIM step hands its x0 guess
to the next (zeros at the first step). The hope: a network that sees the colour it chose a step ago keeps
one colour across the object, where deterministic DDIM draws two (the fast recipe's main failure).
Prints one JSON line: the settings, training seconds, DDIM-50 clean rates at eta 0 and eta 1.

    OMP_NUM_THREADS=1 python tools/pixel_unet_selfcond.py --steps 3500 --images 300 --out DIR
"""
import argparse
import json
import time
from dataclasses import replace

import torch

from minildm import train as training
from minildm.data.judge import grade_unconditional
from minildm.objectives import diffusion_loss, eps_from_v
from minildm.recipes import pixel_unet
from minildm.samplers import DDIMSampler, sample
from minildm.schedule import NoiseSchedule, extract
from minildm.unet import UNet

SCHEDULE = NoiseSchedule(pixel_unet.PRESETS["fast"].schedule, pixel_unet.PRESETS["fast"].num_timesteps)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3500)
    ap.add_argument("--lr", type=float, default=6e-3)
    ap.add_argument("--seed", type=int, default=0, help="training seed (initial weights, data)")
    ap.add_argument("--p-selfcond", type=float, default=0.5, help="share of training batches that see a guess")
    ap.add_argument("--images", type=int, default=300, help="images sampled from noise seed 0 per eta")
    ap.add_argument("--out", required=True, help="folder for the weights and the run")
    return ap.parse_args(argv)


def x0_from_v(xt, t, v):
    """The clean image a v prediction implies: x0 = sqrt(ab) x_t - sqrt(1 - ab) v, clipped to [-1, 1]."""
    ab = extract(SCHEDULE.alpha_bar, t, xt.shape)                              # (B, 1, 1, 1)
    return (ab.sqrt() * xt - (1 - ab).sqrt() * v).clamp(-1, 1)


def selfcond_loss(p_selfcond: float, snr_gamma: float):
    """loss_fn(model, x0) for train.train: the fast preset's v loss, the model fed [x_t, x0_prev] (B, 6, H, W)."""
    def loss_fn(model, x0):                                                    # x0 (B, 3, H, W) in [-1, 1]
        t = torch.randint(0, SCHEDULE.num_timesteps, (x0.shape[0],))
        noise = torch.randn_like(x0)
        xt = SCHEDULE.q_sample(x0, t, noise)
        guess = torch.zeros_like(x0)
        if torch.rand(()) < p_selfcond:                                        # the network's own guess, no grad
            with torch.no_grad():
                guess = x0_from_v(xt, t, model(torch.cat([xt, guess], 1), t))
        return diffusion_loss(lambda x, tt: model(torch.cat([x, guess], 1), tt), SCHEDULE, x0, t=t, noise=noise,
                              snr_gamma=snr_gamma, prediction="v")
    return loss_fn


@torch.no_grad()
def generate(net, n: int, eta: float, seed: int):
    """n images (n, 3, 32, 32) in [0, 1] by DDIM-50, each step handing its x0 guess to the next."""
    generator = torch.Generator().manual_seed(seed)
    xT = torch.randn(n, 3, 32, 32, generator=generator)
    state = {"guess": torch.zeros_like(xT)}

    def eps_fn(xt, t):
        v = net(torch.cat([xt, state["guess"]], 1), t)
        state["guess"] = x0_from_v(xt, t, v)
        return eps_from_v(SCHEDULE, xt, t, v)
    out = sample(eps_fn, DDIMSampler(SCHEDULE, 50, eta), xT, generator=generator, progress=False)
    return ((out + 1) / 2).clamp(0, 1)


def main(argv=None):
    args = parse_args(argv)
    p = pixel_unet.PRESETS["fast"]
    cfg = replace(p.train, steps=args.steps, lr=args.lr, seed=args.seed, out_dir=f"{args.out}/run", overwrite=True,
                  progress=False, checkpoint_every=0, log_every=250)
    torch.manual_seed(cfg.seed)
    model = UNet(replace(p.model, in_channels=6))                              # [x_t, x0 guess] in, v out
    t0 = time.time()
    result = training.train(model, selfcond_loss(args.p_selfcond, p.snr_gamma), pixel_unet.shapes_batch_fn(32), cfg,
                            name="selfcond")
    net = result.model.cpu().eval()
    net.save_pretrained(f"{args.out}/weights")
    res = {**{k: v for k, v in vars(args).items() if k != "out"}, "train_seconds": round(time.time() - t0, 1),
           "threads": torch.get_num_threads()}
    for eta in (0.0, 1.0):
        res[f"ddim50_eta{eta:g}_clean"] = grade_unconditional(generate(net, args.images, eta, 0))["clean_rate"]
    print(json.dumps(res))


if __name__ == "__main__":
    main()
