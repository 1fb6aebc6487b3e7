"""A diffusion transformer (DiT): the denoiser of Stable Diffusion 3 and Flux, in small.

The UNet (unet.py) sees the latent as a picture and shrinks it; the DiT cuts it
into patches, treats each patch as a token, and runs a plain Transformer over
them. It is a drop-in replacement: the same call, the same output,

    model(xt (B, C, H, W), t (B,), context (B, L, D), context_mask (B, L)) -> (B, C, H, W)

Built bottom-up, each piece small:

    modulate             x * (1 + scale) + shift: how the time steers a normalised x (adaLN)
    patchify/unpatchify  (B, 4, 8, 8) <-> (B, 16 tokens, 2*2*4 values), a reshape each way
    pos_embed_2d         fixed sines and cosines of each patch's row and column
    multi_head_attention softmax(q k^T / sqrt(hs)) v over heads, with a key padding mask
    TimeEmbedding        t -> sines and cosines (the UNet's) -> MLP -> c (B, width)
    DiTBlock             adaLN-Zero self-attention + cross-attention to the text + MLP (PixArt-alpha)
    JointBlock           text and image tokens in ONE attention, each with its own weights (SD3's MMDiT)
    FinalLayer           adaLN, then a linear layer back to patch pixels
    DiT                  patchify -> embed + positions -> blocks -> FinalLayer -> unpatchify

adaLN-Zero (Peebles & Xie, 2023): every residual branch is multiplied by a gate
that an MLP computes from the time embedding, and that MLP starts at zero. So a
freshly built block is exactly the identity and a fresh DiT predicts 0, like
the UNet's zero-initialised output; training opens the gates bit by bit.

Taught in notebooks/08_sd3.ipynb.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from . import weights_io
from .unet import timestep_embedding, zero_module

DEFAULT_WEIGHTS = "flow"  # minildm/weights/flow/: the shipped rectified-flow DiT (lesson 08)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x (B, N, D) normalised, shift and scale (B, D) -> x * (1 + scale) + shift, the same for every token."""
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """x (B, C, H, W) -> tokens (B, N, p*p*C), N = (H/p)*(W/p), row by row; each token is one p x p patch."""
    B, C, H, W = x.shape
    p = patch_size
    x = x.reshape(B, C, H // p, p, W // p, p)           # (B, C, h, p, w, p): split rows and columns
    x = x.permute(0, 2, 4, 3, 5, 1)                     # (B, h, w, p, p, C): patch index first
    return x.reshape(B, (H // p) * (W // p), p * p * C)  # (B, N, p*p*C)


def unpatchify(tokens: torch.Tensor, patch_size: int, height: int, width: int) -> torch.Tensor:
    """tokens (B, N, p*p*C) -> x (B, C, H, W): exactly undoes patchify."""
    B, N, D = tokens.shape
    p = patch_size
    h, w, C = height // p, width // p, D // (p * p)
    x = tokens.reshape(B, h, w, p, p, C)                # (B, h, w, p, p, C)
    x = x.permute(0, 5, 1, 3, 2, 4)                     # (B, C, h, p, w, p)
    return x.reshape(B, C, h * p, w * p)                # (B, C, H, W)


def pos_embed_2d(grid_size: int, dim: int) -> torch.Tensor:
    """Fixed 2-D position embedding (grid_size**2, dim): half the features encode the
    patch's row, half its column, with the same sines and cosines that encode t."""
    rows, cols = torch.meshgrid(torch.arange(grid_size), torch.arange(grid_size), indexing="ij")
    emb_rows = timestep_embedding(rows.reshape(-1), dim // 2)          # (N, dim/2)
    emb_cols = timestep_embedding(cols.reshape(-1), dim - dim // 2)    # (N, dim/2)
    return torch.cat([emb_rows, emb_cols], dim=1)                      # (N, dim)


def multi_head_attention(q, k, v, num_heads: int, key_mask: torch.Tensor | None = None) -> torch.Tensor:
    """q (B, N, D), k and v (B, L, D), key_mask (B, L) bool (True = a real token) -> (B, N, D).

    Each of the num_heads heads attends on its own slice of D: softmax(q k^T / sqrt(hs)) v,
    with hs = D / num_heads and masked keys given zero weight.
    """
    B, N, D = q.shape
    L, hs = k.shape[1], D // num_heads
    q = q.reshape(B, N, num_heads, hs).transpose(1, 2)                 # (B, nh, N, hs)
    k = k.reshape(B, L, num_heads, hs).transpose(1, 2)                 # (B, nh, L, hs)
    v = v.reshape(B, L, num_heads, hs).transpose(1, 2)                 # (B, nh, L, hs)
    mask = None
    if key_mask is not None:
        key_mask = key_mask.bool()
        key_mask = key_mask | ~key_mask.any(dim=1, keepdim=True)       # no real key at all: attend to every one
        mask = key_mask[:, None, None, :]                              # (B, 1, 1, L): same for all heads, queries
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)      # (B, nh, N, hs)
    return out.transpose(1, 2).reshape(B, N, D)                        # (B, N, D): heads side by side


class Attention(nn.Module):
    """Self-attention (keys from x) or cross-attention (keys from a context), all at width D."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.to_q, self.to_k, self.to_v = (nn.Linear(dim, dim) for _ in range(3))
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x, context=None, context_mask=None) -> torch.Tensor:
        """x (B, N, D), context (B, L, D) or None, context_mask (B, L) -> (B, N, D)."""
        source = x if context is None else context
        out = multi_head_attention(self.to_q(x), self.to_k(source), self.to_v(source),
                                   self.num_heads, context_mask)
        return self.to_out(out)


def mlp(width: int, mlp_ratio: float) -> nn.Sequential:
    """The Transformer's MLP, applied to each token alone: widen, GELU, narrow back."""
    hidden = int(width * mlp_ratio)
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))


def layer_norm(width: int) -> nn.LayerNorm:
    """LayerNorm without its own scale and shift: adaLN supplies them, computed from t."""
    return nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)


class TimeEmbedding(nn.Module):
    """t (B,) long or float (t = s * 1000 for a flow) -> c (B, width): sinusoidal features, then an MLP."""

    def __init__(self, width: int):
        super().__init__()
        self.width = width
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.width))            # (B, width)


class DiTBlock(nn.Module):
    """adaLN-Zero self-attention, cross-attention to the text (PixArt-alpha), MLP:

        x = x + gate_msa * SelfAttn(modulate(LN(x), shift_msa, scale_msa))
        x = x + CrossAttn(LN(x), context)                  (only when the model has a context)
        x = x + gate_mlp * MLP(modulate(LN(x), shift_mlp, scale_mlp))

    where (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp) = Linear(SiLU(c)).
    """

    def __init__(self, width: int, num_heads: int, mlp_ratio: float, cross: bool):
        super().__init__()
        self.norm1, self.norm2 = layer_norm(width), layer_norm(width)
        self.attn = Attention(width, num_heads)
        self.mlp = mlp(width, mlp_ratio)
        self.norm_cross = nn.LayerNorm(width) if cross else None   # PixArt-alpha has none; keeps queries in scale
        self.cross_attn = Attention(width, num_heads) if cross else None
        # adaLN-Zero: the six modulation vectors start at 0, so both gates are 0 and
        # x + 0 * branch = x: the block is the identity until training opens the gates.
        self.adaLN = nn.Sequential(nn.SiLU(), zero_module(nn.Linear(width, 6 * width)))
        # The cross-attention branch has no gate: zero its output layer so it too starts silent.
        if cross:
            zero_module(self.cross_attn.to_out)

    def forward(self, x, context, c, context_mask=None):
        """x (B, N, D) image tokens, context (B, L, D) or None, c (B, D) -> (x, context unchanged)."""
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN(c).chunk(6, dim=1)  # (B, D) each
        x = x + gate_msa[:, None] * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))       # (B, N, D)
        if self.cross_attn is not None:
            x = x + self.cross_attn(self.norm_cross(x), context, context_mask)                     # (B, N, D)
        x = x + gate_mlp[:, None] * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))        # (B, N, D)
        return x, context


class Stream(nn.Module):
    """One modality's own weights inside a JointBlock: adaLN, q/k/v and output projections, MLP.
    With `last` it only supplies keys and values (its output would never be used)."""

    def __init__(self, width: int, num_heads: int, mlp_ratio: float, last: bool = False):
        super().__init__()
        self.last = last
        self.norm1 = layer_norm(width)
        self.to_q, self.to_k, self.to_v = (nn.Linear(width, width) for _ in range(3))
        # adaLN-Zero as in DiTBlock: zero modulation, zero gates, the stream starts unchanged.
        self.adaLN = nn.Sequential(nn.SiLU(), zero_module(nn.Linear(width, (2 if last else 6) * width)))
        if not last:
            self.to_out, self.norm2, self.mlp = nn.Linear(width, width), layer_norm(width), mlp(width, mlp_ratio)

    def pre_attention(self, h, c):
        """h (B, n, D), c (B, D) -> q, k, v (B, n, D) and the remaining modulation vectors."""
        mods = self.adaLN(c).chunk(2 if self.last else 6, dim=1)                   # (B, D) each
        h_mod = modulate(self.norm1(h), mods[0], mods[1])                          # (B, n, D)
        return self.to_q(h_mod), self.to_k(h_mod), self.to_v(h_mod), mods[2:]

    def post_attention(self, h, attn_out, mods):
        """h, attn_out (B, n, D) -> the updated stream (B, n, D): gated attention, then gated MLP."""
        gate_msa, shift_mlp, scale_mlp, gate_mlp = mods
        h = h + gate_msa[:, None] * self.to_out(attn_out)
        return h + gate_mlp[:, None] * self.mlp(modulate(self.norm2(h), shift_mlp, scale_mlp))


class JointBlock(nn.Module):
    """SD3's MMDiT block: text and image tokens attend in ONE attention over [text; image],
    each modality with its own projections, MLP and adaLN, so text reads the image too.

        q, k, v = cat(text_qkv(modulate(LN(y))), image_qkv(modulate(LN(x))))   over the sequence
        y', x'  = split(Attention(q, k, v))                                   back into the two streams
        y = y + gate * text_out(y') ...;  x = x + gate * image_out(x') ...     as in DiTBlock

    The last block leaves the text stream out of its output (SD3's "context_pre_only").
    """

    def __init__(self, width: int, num_heads: int, mlp_ratio: float, has_context: bool, last: bool):
        super().__init__()
        self.num_heads = num_heads
        self.image = Stream(width, num_heads, mlp_ratio)
        self.text = Stream(width, num_heads, mlp_ratio, last=last) if has_context else None

    def forward(self, x, context, c, context_mask=None):
        """x (B, N, D) image tokens, context (B, L, D) text tokens or None, c (B, D) -> (x, context)."""
        B, N, D = x.shape
        qx, kx, vx, mods_x = self.image.pre_attention(x, c)                        # (B, N, D) each
        if self.text is None:
            return self.image.post_attention(x, multi_head_attention(qx, kx, vx, self.num_heads), mods_x), None
        L = context.shape[1]
        qy, ky, vy, mods_y = self.text.pre_attention(context, c)                    # (B, L, D) each
        key_mask = None
        if context_mask is not None:                                               # image tokens are always real
            key_mask = torch.cat([context_mask.bool(), context_mask.new_ones(B, N, dtype=torch.bool)], dim=1)
        out = multi_head_attention(torch.cat([qy, qx], 1), torch.cat([ky, kx], 1), torch.cat([vy, vx], 1),
                                   self.num_heads, key_mask)                       # (B, L+N, D)
        out_y, out_x = out.split([L, N], dim=1)                                    # (B, L, D), (B, N, D)
        x = self.image.post_attention(x, out_x, mods_x)
        context = None if self.text.last else self.text.post_attention(context, out_y, mods_y)
        return x, context


class FinalLayer(nn.Module):
    """adaLN (shift, scale from c), then a linear map from width to one patch's pixels."""

    def __init__(self, width: int, patch_dim: int):
        super().__init__()
        self.norm = layer_norm(width)
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        # Zero the output layer: a fresh DiT predicts exactly 0, whatever its input.
        self.linear = zero_module(nn.Linear(width, patch_dim))

    def forward(self, x, c):
        """x (B, N, D), c (B, D) -> (B, N, p*p*C)."""
        shift, scale = self.adaLN(c).chunk(2, dim=1)                               # (B, D) each
        return self.linear(modulate(self.norm(x), shift, scale))


@dataclass
class DiTConfig:
    """Architecture of a DiT (what the weights file's config.json holds)."""
    in_channels: int = 4              # 4 for VAE latents (the output has the same channels)
    input_size: int = 8               # H = W of the latent (8x8 for 32x32 images and the VAE's 4x downsampling)
    patch_size: int = 2               # p: each token is a p x p patch, (8/2)^2 = 16 tokens
    width: int = 128                  # D: token width everywhere inside the Transformer
    depth: int = 4                    # number of blocks
    num_heads: int = 4                # attention heads (width must be divisible by it)
    mlp_ratio: float = 4.0            # MLP hidden width = mlp_ratio * width
    context_dim: int | None = None    # width of the text tokens (CLIP's text_width); None = unconditional
    attention: str = "cross"          # how the text enters: "cross" (PixArt-alpha) or "joint" (SD3's MMDiT)
    pooled_context: bool = False      # also add the mean text token to the time embedding (as SD3 does)

    # Allowed values (checked before a model is built from a config file; see validate.py).
    LIMITS: ClassVar[dict] = {"in_channels": (1, 64), "input_size": (1, 256), "patch_size": (1, 16),
                              "width": (1, 4096), "depth": (1, 64), "num_heads": (1, 64),
                              "mlp_ratio": (0.25, 16.0), "context_dim": (1, 4096)}

    def __post_init__(self):
        """The fields must agree with each other."""
        if self.attention not in ("cross", "joint"):
            raise ValueError(f"attention must be 'cross' or 'joint', got {self.attention!r}")
        if self.width % self.num_heads:
            raise ValueError(f"width {self.width} must be divisible by num_heads={self.num_heads}")
        if self.input_size % self.patch_size:
            raise ValueError(f"input_size {self.input_size} must be divisible by patch_size {self.patch_size}")
        if self.pooled_context and self.context_dim is None:
            raise ValueError("pooled_context needs a context: set context_dim")


class DiT(nn.Module):
    """v_pred (or eps_pred) = DiT(x_t, t, context): a Transformer over the latent's patches.

    Data flow for the default config on (B, 4, 8, 8) latents:

        patchify        (B, 4, 8, 8) -> (B, 16, 16): 16 patches of 2x2x4 values
        patch_embed     -> (B, 16, 128), plus the fixed 2-D position embedding
        time            t -> c (B, 128) (+ the mean text token, with pooled_context)
        text            context (B, L, context_dim) -> (B, L, 128)
        blocks          depth x DiTBlock ("cross") or JointBlock ("joint"), all conditioned on c
        final           -> (B, 16, 16) (zero-initialised: the untrained net predicts 0)
        unpatchify      -> (B, 4, 8, 8)

    pooled_context: adaLN can only scale and shift every token alike, so the
    global "what is the prompt about" signal reaches it only if it is added to
    c; SD3 adds CLIP's pooled vector for this. Here the pool is the mean of the
    real (unmasked) text tokens.

    Taught in notebooks/08_sd3.ipynb.
    """

    def __init__(self, config: DiTConfig | None = None):
        super().__init__()
        self.config = cfg = config or DiTConfig()   # DiTConfig checks that its fields agree
        patch_dim = cfg.patch_size ** 2 * cfg.in_channels
        self.patch_embed = nn.Linear(patch_dim, cfg.width)
        self.register_buffer("pos_embed", pos_embed_2d(cfg.input_size // cfg.patch_size, cfg.width),
                             persistent=False)                                     # (N, D), fixed: not saved
        self.time_embed = TimeEmbedding(cfg.width)
        has_context = cfg.context_dim is not None
        self.context_embed = nn.Linear(cfg.context_dim, cfg.width) if has_context else None
        self.pooled_embed = (nn.Sequential(nn.Linear(cfg.context_dim, cfg.width), nn.SiLU(),
                                           nn.Linear(cfg.width, cfg.width)) if cfg.pooled_context else None)
        if cfg.attention == "cross":
            blocks = [DiTBlock(cfg.width, cfg.num_heads, cfg.mlp_ratio, has_context) for _ in range(cfg.depth)]
        else:
            blocks = [JointBlock(cfg.width, cfg.num_heads, cfg.mlp_ratio, has_context, last=i == cfg.depth - 1)
                      for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(blocks)
        self.final = FinalLayer(cfg.width, patch_dim)

    def forward(self, xt: torch.Tensor, t: torch.Tensor, context: torch.Tensor | None = None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        """xt (B, C, H, W), t (B,) long or float, context (B, L, context_dim) or None, context_mask
        (B, L) bool (True = a real token, False = padding) -> prediction (B, C, H, W)."""
        B, C, H, W = xt.shape
        cfg = self.config
        if C != cfg.in_channels or H != cfg.input_size or W != cfg.input_size:
            raise ValueError(f"this DiT expects x of shape (B, {cfg.in_channels}, {cfg.input_size}, "
                             f"{cfg.input_size}), got {tuple(xt.shape)}")
        if (context is None) != (cfg.context_dim is None):
            raise ValueError("this DiT is unconditional (context_dim=None): call it without context"
                             if context is not None else
                             f"this DiT was built with context_dim={cfg.context_dim}: pass a context (B, L, D)")
        t = torch.as_tensor(t, device=xt.device).reshape(-1).expand(B)
        x = self.patch_embed(patchify(xt, cfg.patch_size)) + self.pos_embed        # (B, N, D)
        c = self.time_embed(t)                                                     # (B, D)
        if context is not None:
            if self.pooled_embed is not None:
                weights = (torch.ones(context.shape[:2], device=xt.device) if context_mask is None
                           else context_mask.float())                              # (B, L)
                pooled = (weights[..., None] * context).sum(1) / weights.sum(1, keepdim=True).clamp(min=1)
                c = c + self.pooled_embed(pooled)                                  # (B, D)
            context = self.context_embed(context)                                  # (B, L, D)
        for block in self.blocks:
            x, context = block(x, context, c, context_mask)                        # (B, N, D)
        x = self.final(x, c)                                                       # (B, N, p*p*C)
        return unpatchify(x, cfg.patch_size, H, W)                                 # (B, C, H, W)

    def num_parameters(self) -> dict:
        """Trainable parameters per part and in total (the position embedding is fixed: not counted)."""
        parts = {"embed": [self.patch_embed, self.time_embed, self.context_embed, self.pooled_embed],
                 "blocks": [self.blocks], "final": [self.final]}
        counts = {name: sum(p.numel() for m in mods if m is not None for p in m.parameters())
                  for name, mods in parts.items()}
        counts["total"] = sum(p.numel() for p in self.parameters())
        return counts

    @classmethod
    def from_pretrained(cls, path=None, device="cpu") -> "DiT":
        """Load a DiT saved by save_pretrained (None -> the shipped minildm/weights/flow/)."""
        return weights_io.from_pretrained(cls, DiTConfig, path, DEFAULT_WEIGHTS, device)

    def save_pretrained(self, folder):
        """Write folder/config.json and folder/model.safetensors."""
        return weights_io.save_pretrained(self, self.config, folder)
