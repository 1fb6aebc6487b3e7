"""A tiny training task (seconds on one CPU core) shared by the training-engine tests.

A 2-layer MLP learns to predict the noise added to points of the two-moons cloud
(a miniature diffusion model). The data come from the generator the loop passes in;
the noise and the timestep come from torch's global RNG, so an exact resume needs both.
"""
import torch
from torch import nn

from minildm.data import toy2d


def make_model(seed: int = 0, batchnorm: bool = False) -> nn.Module:
    torch.manual_seed(seed)
    norm = [nn.BatchNorm1d(32)] if batchnorm else []     # buffers: running mean and variance
    return nn.Sequential(nn.Linear(3, 32), *norm, nn.SiLU(), nn.Linear(32, 2))


def sample_batch(batch_size, generator, device):
    seed = int(torch.randint(0, 2**31, (1,), generator=generator))
    return toy2d.two_moons(batch_size, seed=seed).to(device)


def loss_fn(model, x0):
    t = torch.rand(x0.shape[0], 1, device=x0.device)            # t in [0, 1)
    alpha_bar = torch.cos(t * torch.pi / 2) ** 2
    eps = torch.randn_like(x0)
    xt = alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * eps
    eps_pred = model(torch.cat([xt, t], dim=1))
    loss = ((eps_pred - eps) ** 2).mean()
    return loss, {"t_mean": t.mean().item()}


def flat_weights(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().float().flatten().cpu() for p in model.state_dict().values()])
