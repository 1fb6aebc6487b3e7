"""The denoiser: a UNet that looks at a noisy x_t and the timestep t and predicts
the noise eps that was added (optionally guided by a text context).

Built bottom-up, each piece small:

    timestep_embedding   t -> a vector of sines and cosines (like a Transformer's positions)
    ResBlock             GroupNorm -> SiLU -> conv, plus the time embedding, plus a skip
    Attention            multi-head attention; self-attention, or cross-attention to a context
    TransformerBlock     self-attention over pixels, cross-attention to the context, an MLP
    Downsample/Upsample  halve / double the resolution
    UNet                 down path -> middle -> up path with skip connections
    MLPDenoiser          the same job for 2-D points (a few linear layers)

The down path shrinks the image while adding channels (what is where), the up
path grows it back, and skip connections carry the fine detail across. At the
lowest resolutions, attention lets every pixel look at every other pixel, and
cross-attention (when `context_dim` is set) lets it look at the words of the
prompt: that is how text steers the image in notebooks/06_latent_diffusion.ipynb.

Taught in notebooks/02_ddpm.ipynb.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from . import weights_io

DEFAULT_WEIGHTS = "pixel_unet"  # minildm/weights/pixel_unet/: the shipped pixel-space UNet


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps: t (B,) -> (B, dim).

    Half the features are sin(t * f_k), half cos(t * f_k), with frequencies f_k
    spaced geometrically from 1 down to 1/max_period, so nearby t get similar
    vectors and the network can tell t = 10 from t = 900 at a glance.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)  # (half,)
    args = t.float()[:, None] * freqs[None, :]                                             # (B, half)
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)                             # (B, 2*half)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's weights so a residual branch starts as the identity (stable early training)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """x + conv(SiLU(GroupNorm(conv(SiLU(GroupNorm(x))) + time)))  (the DDPM residual block)."""

    def __init__(self, in_channels: int, out_channels: int, time_dim: int, dropout: float, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_proj = nn.Linear(time_dim, out_channels)
        self.norm2 = nn.GroupNorm(groups, out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, H, W), temb (B, time_dim) -> (B, C_out, H, W)."""
        h = self.conv1(F.silu(self.norm1(x)))                  # (B, C_out, H, W)
        h = h + self.time_proj(F.silu(temb))[:, :, None, None]  # add the time, same for every pixel
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class Attention(nn.Module):
    """Multi-head attention. Queries come from x; keys and values from x itself
    (self-attention) or from a context sequence (cross-attention).

    `store` (None unless UNet.set_attention_store sets one) is shown the attention
    weights softmax(q k^T / sqrt(hs)) (B, nh, N, L) and returns the weights to use:
    it may record them (attention maps) or replace them (prompt-to-prompt editing).
    Without a store the fused scaled_dot_product_attention computes the same thing.
    """

    def __init__(self, dim: int, num_heads: int, context_dim: int | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"attention width {dim} must be divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim or dim, dim, bias=False)
        self.to_out = zero_module(nn.Linear(dim, dim))
        self.store = None          # see the class docstring (minildm/attention_maps.py)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, N, dim), context (B, L, context_dim) or None, context_mask (B, L) bool -> (B, N, dim)."""
        B, N, C = x.shape
        source = x if context is None else context
        nh = self.num_heads
        q = self.to_q(x).view(B, N, nh, C // nh).transpose(1, 2)            # (B, nh, N, hs)
        k = self.to_k(source).view(B, -1, nh, C // nh).transpose(1, 2)      # (B, nh, L, hs)
        v = self.to_v(source).view(B, -1, nh, C // nh).transpose(1, 2)      # (B, nh, L, hs)
        mask = None
        if context_mask is not None:
            context_mask = context_mask.bool()
            # A row with no real token would divide by zero: let it attend to everything.
            context_mask = context_mask | ~context_mask.any(dim=1, keepdim=True)
            mask = context_mask[:, None, None, :]                          # (B, 1, 1, L)
        if self.store is None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, nh, N, hs)
        else:  # the same attention, written out so a store can see (or swap) the weights
            scores = q @ k.transpose(-2, -1) / math.sqrt(C // nh)          # (B, nh, N, L)
            if mask is not None:
                scores = scores.masked_fill(~mask, float("-inf"))
            out = self.store(self, scores.softmax(dim=-1)) @ v             # (B, nh, N, hs)
        return self.to_out(out.transpose(1, 2).reshape(B, N, C))


class TransformerBlock(nn.Module):
    """Attention over the pixels of a feature map, as a residual block:

        x = x + SelfAttention(LN(x));  x = x + CrossAttention(LN(x), context);  x = x + MLP(LN(x))

    Cross-attention exists only when context_dim is set.
    """

    def __init__(self, channels: int, num_heads: int, context_dim: int | None, groups: int):
        super().__init__()
        self.norm_in = nn.GroupNorm(groups, channels)
        self.norm1 = nn.LayerNorm(channels)
        self.self_attn = Attention(channels, num_heads)
        self.cross_attn = Attention(channels, num_heads, context_dim) if context_dim else None
        self.norm2 = nn.LayerNorm(channels) if context_dim else None
        self.norm3 = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, 4 * channels), nn.GELU(),
                                 zero_module(nn.Linear(4 * channels, channels)))

    def forward(self, x: torch.Tensor, context=None, context_mask=None) -> torch.Tensor:
        """x (B, C, H, W), context (B, L, D) -> (B, C, H, W)."""
        B, C, H, W = x.shape
        h = self.norm_in(x).flatten(2).transpose(1, 2)                     # (B, H*W, C): one token per pixel
        h = h + self.self_attn(self.norm1(h))
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("this UNet was built with context_dim: pass a context (B, L, context_dim)")
            h = h + self.cross_attn(self.norm2(h), context, context_mask)
        h = h + self.mlp(self.norm3(h))
        return x + h.transpose(1, 2).reshape(B, C, H, W)                  # back to (B, C, H, W)


class Downsample(nn.Module):
    """Halve H and W with a strided 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour upsampling, then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


@dataclass
class UNetConfig:
    """Architecture of a UNet (what the weights file's config.json holds)."""
    in_channels: int = 3                                # 3 for RGB pixels, 4 for VAE latents
    out_channels: int = 3                               # the predicted noise has the input's channels
    base_channels: int = 32                             # channels at full resolution
    channel_mults: tuple = (1, 2, 2)                    # channels per level = base * mult; one level per resolution
    num_res_blocks: int = 1                             # ResBlocks per level on the way down (+1 on the way up)
    attention_levels: tuple = (False, True, True)       # self-attention (and cross-attention) at these levels
    num_heads: int = 4                                  # attention heads
    context_dim: int | None = None                      # width of the context tokens; None = unconditional
    dropout: float = 0.0                                # dropout inside ResBlocks
    norm_groups: int = 8                                # GroupNorm groups (divides every channel count)
    time_embed_mult: int = 4                            # time-embedding width = base_channels * this

    # Allowed values (checked before a model is built from a config file; see validate.py).
    LIMITS: ClassVar[dict] = {"in_channels": (1, 64), "out_channels": (1, 64), "base_channels": (1, 1024),
                              "channel_mults": (1, 16), "num_res_blocks": (1, 8), "num_heads": (1, 64),
                              "context_dim": (1, 4096), "dropout": (0.0, 0.9), "norm_groups": (1, 256),
                              "time_embed_mult": (1, 16)}

    def __post_init__(self):
        """The fields must agree with each other (one level per channel_mults entry, and so on)."""
        if len(self.attention_levels) != len(self.channel_mults):
            raise ValueError(f"attention_levels has {len(self.attention_levels)} entries; it needs one "
                             f"per level of channel_mults ({len(self.channel_mults)})")
        widths = [self.base_channels * mult for mult in self.channel_mults]
        for width in [self.base_channels] + widths:
            if width % self.norm_groups:
                raise ValueError(f"norm_groups={self.norm_groups} must divide every channel count "
                                 f"(base_channels and base_channels * channel_mults), but not {width}")
        attended = [w for w, a in zip(widths, self.attention_levels) if a] + widths[-1:]  # + the middle
        for width in attended:
            if width % self.num_heads:
                raise ValueError(f"num_heads={self.num_heads} must divide the attention width {width}")


class UNet(nn.Module):
    """eps_pred = UNet(x_t, t, context): predict the noise in x_t.

    Data flow for the default config on 32x32 RGB (channels x resolution):

        conv_in   3x32 -> 32x32
        level 0   ResBlock 32x32                      -> Down -> 32x16
        level 1   ResBlock 64x16 + attention          -> Down -> 64x8
        level 2   ResBlock 64x8  + attention
        middle    ResBlock, attention, ResBlock at 64x8
        up        mirror of the down path; each ResBlock also takes the matching skip
        conv_out  32x32 -> 3x32  (zero-initialised: the untrained net predicts 0)

    Taught in notebooks/02_ddpm.ipynb (and with context in 06_latent_diffusion.ipynb).
    """

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        self.config = config = config or UNetConfig()
        levels = len(config.channel_mults)
        if len(config.attention_levels) != levels:
            raise ValueError(f"attention_levels has {len(config.attention_levels)} entries; it needs one "
                             f"per level of channel_mults ({levels})")
        groups, heads, ctx = config.norm_groups, config.num_heads, config.context_dim
        time_dim = config.base_channels * config.time_embed_mult
        self.time_mlp = nn.Sequential(nn.Linear(config.base_channels, time_dim), nn.SiLU(),
                                      nn.Linear(time_dim, time_dim))
        self.conv_in = nn.Conv2d(config.in_channels, config.base_channels, 3, padding=1)

        # Down path: remember the channels of every feature map kept for a skip.
        self.down = nn.ModuleList()
        ch, skip_channels = config.base_channels, [config.base_channels]
        for level, mult in enumerate(config.channel_mults):
            out = config.base_channels * mult
            for _ in range(config.num_res_blocks):
                attn = TransformerBlock(out, heads, ctx, groups) if config.attention_levels[level] else None
                self.down.append(nn.ModuleList([ResBlock(ch, out, time_dim, config.dropout, groups), attn]))
                ch = out
                skip_channels.append(ch)
            if level < levels - 1:
                self.down.append(Downsample(ch))
                skip_channels.append(ch)

        self.mid_block1 = ResBlock(ch, ch, time_dim, config.dropout, groups)
        self.mid_attn = TransformerBlock(ch, heads, ctx, groups)
        self.mid_block2 = ResBlock(ch, ch, time_dim, config.dropout, groups)

        # Up path: one more ResBlock per level than on the way down, each eating a skip.
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(config.channel_mults))):
            out = config.base_channels * mult
            for _ in range(config.num_res_blocks + 1):
                block = ResBlock(ch + skip_channels.pop(), out, time_dim, config.dropout, groups)
                attn = TransformerBlock(out, heads, ctx, groups) if config.attention_levels[level] else None
                self.up.append(nn.ModuleList([block, attn]))
                ch = out
            if level > 0:
                self.up.append(Upsample(ch))

        self.norm_out = nn.GroupNorm(groups, ch)
        self.conv_out = zero_module(nn.Conv2d(ch, config.out_channels, 3, padding=1))
        self.downsamples = 2 ** (levels - 1)  # H and W must be divisible by this

    def forward(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, C_in, H, W), t (B,) long, context (B, L, D) or None, context_mask (B, L) bool
        (True = a real token, False = padding) -> eps_pred (B, C_out, H, W)."""
        B, C, H, W = x.shape
        if C != self.config.in_channels:
            raise ValueError(f"UNet expects {self.config.in_channels} input channels, got x of shape {tuple(x.shape)}")
        if H % self.downsamples or W % self.downsamples:
            raise ValueError(f"H and W must be divisible by {self.downsamples} for "
                             f"{len(self.config.channel_mults)} levels, got {H}x{W}")
        if context is not None and self.config.context_dim is None:
            raise ValueError("this UNet is unconditional (context_dim=None): call it without context")
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(B)
        temb = self.time_mlp(timestep_embedding(t, self.config.base_channels))  # (B, time_dim)

        h = self.conv_in(x)                                                     # (B, base, H, W)
        skips = [h]
        for layer in self.down:
            if isinstance(layer, Downsample):
                h = layer(h)                                                    # (B, ch, H/2, W/2)
            else:
                block, attn = layer
                h = block(h, temb)
                if attn is not None:
                    h = attn(h, context, context_mask)
            skips.append(h)

        h = self.mid_block1(h, temb)
        h = self.mid_attn(h, context, context_mask)
        h = self.mid_block2(h, temb)

        for layer in self.up:
            if isinstance(layer, Upsample):
                h = layer(h)                                                    # (B, ch, 2H, 2W)
            else:
                block, attn = layer
                h = block(torch.cat([h, skips.pop()], dim=1), temb)             # skip joins on channels
                if attn is not None:
                    h = attn(h, context, context_mask)
        return self.conv_out(F.silu(self.norm_out(h)))                          # (B, C_out, H, W)

    def set_attention_store(self, store=None) -> None:
        """Show every cross-attention layer's weights to `store(layer, weights) -> weights`
        (minildm/attention_maps.py); None puts the plain fused attention back."""
        for block in self.modules():
            if isinstance(block, TransformerBlock) and block.cross_attn is not None:
                block.cross_attn.store = store

    @classmethod
    def from_pretrained(cls, path=None, device="cpu") -> "UNet":
        """Load a UNet saved by save_pretrained (None -> the shipped minildm/weights/pixel_unet/)."""
        return weights_io.from_pretrained(cls, UNetConfig, path, DEFAULT_WEIGHTS, device)

    def save_pretrained(self, folder):
        """Write folder/config.json and folder/model.safetensors."""
        return weights_io.save_pretrained(self, self.config, folder)


@dataclass
class MLPConfig:
    """Architecture of the 2-D point denoiser."""
    data_dim: int = 2          # points in the plane
    hidden: int = 128          # width of the hidden layers
    num_layers: int = 3        # hidden layers
    time_dim: int = 32         # sinusoidal time-embedding width

    LIMITS: ClassVar[dict] = {"data_dim": (1, 64), "hidden": (1, 4096), "num_layers": (1, 64),
                              "time_dim": (2, 4096)}


class MLPDenoiser(nn.Module):
    """eps_pred = MLP([x_t, embed(t)]) for 2-D points: the whole idea of a denoiser,
    small enough to train in seconds. Each hidden layer also receives the time.

    Taught in notebooks/02_ddpm.ipynb.
    """

    def __init__(self, config: MLPConfig | None = None):
        super().__init__()
        self.config = config = config or MLPConfig()
        self.time_mlp = nn.Sequential(nn.Linear(config.time_dim, config.hidden), nn.SiLU())
        self.inp = nn.Linear(config.data_dim, config.hidden)
        self.layers = nn.ModuleList(nn.Linear(config.hidden, config.hidden) for _ in range(config.num_layers))
        self.out = nn.Linear(config.hidden, config.data_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x (B, 2) noisy points, t (B,) long -> eps_pred (B, 2)."""
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(x.shape[0])
        temb = self.time_mlp(timestep_embedding(t, self.config.time_dim))   # (B, hidden)
        h = self.inp(x)
        for layer in self.layers:
            h = h + layer(F.silu(h + temb))                                  # residual MLP
        return self.out(F.silu(h))

    @classmethod
    def from_pretrained(cls, path, device="cpu") -> "MLPDenoiser":
        return weights_io.from_pretrained(cls, MLPConfig, path, "mlp_denoiser", device)

    def save_pretrained(self, folder):
        return weights_io.save_pretrained(self, self.config, folder)
