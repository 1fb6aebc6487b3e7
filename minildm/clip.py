"""A mini CLIP: learn one embedding space for Shapes images and their captions.

CLIP (Radford et al., 2021, "Learning Transferable Visual Models From Natural
Language Supervision") trains two encoders side by side:

    images (B, 3, H, W) --image encoder (ResNet or ViT)--> (B, image_width) --W_i--> (B, embed_dim)
    tokens (B, L)       --text Transformer, <eos> token--> (B, text_width)  --W_t--> (B, embed_dim)

Both embeddings are L2-normalised, so their dot product is a cosine similarity.
For a batch of B matching (image, caption) pairs the B x B matrix

    logits[i, j] = exp(t) * cos(image_i, caption_j)        (t: a learned temperature)

should be large on the diagonal and small elsewhere. The loss is cross-entropy
over each row (which caption goes with image i?) plus over each column (which
image goes with caption j?), averaged: the *symmetric* contrastive loss.

Once trained, classification needs no classifier: turn each class into a prompt
("a large red circle in the center"), embed the prompts once, and predict the
prompt with the highest cosine similarity (zero-shot prediction). A linear
probe (logistic regression on frozen image features) measures how much the
image features know, whatever the text side says.

The text encoder is reused by the latent diffusion model: `text_hidden_states`
gives the per-token states its UNet cross-attends to (the `context`).

Layout: building blocks (attention, Transformer block) -> text encoder -> the
two image encoders -> MiniCLIP -> the loss. Using a trained CLIP (zero-shot,
linear probe, retrieval) is minildm/zero_shot.py; training it, with its
caption-safe random crop, is minildm/recipes/clip.py.

Taught in notebooks/04_clip.ipynb.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from . import text

from .weights_io import from_pretrained as _from_pretrained
from .weights_io import save_pretrained as _save_pretrained

MAX_LOGIT_SCALE = 100.0                  # CLIP clips exp(t) at 100 so training stays stable
INIT_LOGIT_SCALE = math.log(1 / 0.07)    # the paper's initial temperature, t = log(1/0.07)


@dataclass
class CLIPConfig:
    """Architecture of MiniCLIP (the preset's `model`)."""
    image_encoder: str = "resnet"        # "resnet" or "vit"
    text_encoder: str = "transformer"    # "transformer", or "bag": the mean of word embeddings (no order; lesson 10)
    image_size: int = 32                 # input side in pixels (32, or 64 for the gpu preset)
    embed_dim: int = 64                  # the joint image-text embedding space
    text_width: int = 64                 # text Transformer width (= the diffusion UNet's context dim)
    text_layers: int = 3                 # text Transformer blocks
    text_heads: int = 4                  # attention heads in the text Transformer
    vocab_size: int = text.VOCAB_SIZE    # tokenizer vocabulary (word level)
    context_length: int = text.CONTEXT_LENGTH  # tokens per prompt (<bos> words <eos> <pad>...)
    resnet_widths: tuple = (16, 32, 64)  # stem channels, then one residual stage per entry (stride 2 each)
    resnet_heads: int = 4                # heads of the ResNet's attention pooling
    vit_patch_size: int = 8              # ViT patch side in pixels (32 / 8 -> a 4 x 4 grid of patches)
    vit_width: int = 64                  # ViT token width
    vit_layers: int = 4                  # ViT Transformer blocks
    vit_heads: int = 4                   # ViT attention heads
    mlp_ratio: int = 4                   # hidden size of every Transformer MLP = mlp_ratio * width

    # Allowed values (checked before a model is built from a config file; see validate.py).
    LIMITS: ClassVar[dict] = {"image_size": (8, 256), "embed_dim": (1, 2048), "text_width": (1, 2048),
                              "text_layers": (1, 24), "text_heads": (1, 64), "vocab_size": (1, 65536),
                              "context_length": (2, 512), "resnet_widths": (1, 1024), "resnet_heads": (1, 64),
                              "vit_patch_size": (1, 64), "vit_width": (1, 2048), "vit_layers": (1, 24),
                              "vit_heads": (1, 64), "mlp_ratio": (1, 16)}

    def __post_init__(self):
        if self.image_encoder not in ("resnet", "vit"):
            raise ValueError(f"image_encoder must be 'resnet' or 'vit', got {self.image_encoder!r}")
        if self.text_encoder not in ("transformer", "bag"):
            raise ValueError(f"text_encoder must be 'transformer' or 'bag', got {self.text_encoder!r}")
        if self.image_size % self.vit_patch_size or self.image_size % 2 ** (len(self.resnet_widths) - 1):
            raise ValueError(f"image_size {self.image_size} must be divisible by the patch size "
                             f"and by the ResNet's total stride")


# ----------------------------------------------------------------------------
# Building blocks shared by the text Transformer and the ViT

class Attention(nn.Module):
    """Multi-head self-attention; causal=True lets token i see only tokens <= i."""

    def __init__(self, width: int, heads: int, causal: bool):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} must be divisible by heads {heads}")
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, C) -> (B, T, C)."""
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)                           # 3 x (B, T, C)
        q, k, v = (y.view(B, T, self.heads, C // self.heads).transpose(1, 2) for y in (q, k, v))  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)  # softmax(q k^T / sqrt(hs)) v
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class Block(nn.Module):
    """Pre-LayerNorm Transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

    def __init__(self, width: int, heads: int, mlp_ratio: int, causal: bool):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.attn = Attention(width, heads, causal)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(),
                                 nn.Linear(mlp_ratio * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


# ----------------------------------------------------------------------------
# Text encoder

class TextTransformer(nn.Module):
    """Token + positional embeddings -> causal pre-LN blocks -> final LayerNorm.

    Taught in notebooks/04_clip.ipynb.
    """

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(0.01 * torch.randn(cfg.context_length, cfg.text_width))
        self.blocks = nn.ModuleList(Block(cfg.text_width, cfg.text_heads, cfg.mlp_ratio, causal=True)
                                    for _ in range(cfg.text_layers))
        self.ln_final = nn.LayerNorm(cfg.text_width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, L) long -> hidden states (B, L, text_width)."""
        x = self.token_embedding(tokens) + self.positional_embedding[: tokens.shape[1]]  # (B, L, C)
        for block in self.blocks:
            x = block(x)
        return self.ln_final(x)


class BagOfWordsText(nn.Module):
    """The order-blind baseline: a caption is the mean of its words' embeddings.

    No positions, no attention: "a red circle to the left of a blue square" and "a blue
    circle to the left of a red square" hold the same words, so they get the same
    embedding, exactly (the mean is computed from word counts). Such an encoder cannot
    bind a colour to its object. Taught in notebooks/10_composition.ipynb.
    """

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.ln_final = nn.LayerNorm(cfg.text_width)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, L) long -> per-token states (B, L, text_width): each word on its own."""
        return self.ln_final(self.token_embedding(tokens))

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, L) -> (B, text_width): the mean embedding of the non-padding tokens."""
        counts = F.one_hot(tokens, self.token_embedding.num_embeddings).sum(1).float()  # (B, V) word counts
        counts[:, text.PAD_ID] = 0
        mean = counts @ self.token_embedding.weight / counts.sum(1, keepdim=True)      # (B, C)
        return self.ln_final(mean)


# ----------------------------------------------------------------------------
# Image encoder 1: a small ResNet with attention pooling (CLIP's "modified ResNet")

class ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN plus a shortcut (1x1 conv when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class AttentionPool2d(nn.Module):
    """Pool a feature map with one attention query (the mean feature), as in CLIP.

    Global average pooling would forget *where* things are; the captions name
    positions, so the pooled token attends over the grid with positional
    embeddings added.
    """

    def __init__(self, grid: int, width: int, heads: int):
        super().__init__()
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, width) / width ** 0.5)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, h, w) -> (B, C)."""
        x = x.flatten(2).transpose(1, 2)                                  # (B, h*w, C)
        x = torch.cat([x.mean(dim=1, keepdim=True), x], dim=1)            # (B, 1 + h*w, C)
        x = x + self.positional_embedding
        out, _ = self.attn(x[:, :1], x, x, need_weights=False)            # (B, 1, C)
        return out[:, 0]


class ResNetEncoder(nn.Module):
    """stem conv -> residual stages (each halves the side) -> attention pooling.

    Taught in notebooks/04_clip.ipynb.
    """

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        widths = cfg.resnet_widths
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU())
        self.stages = nn.Sequential(*[ResidualBlock(c_in, c_out, stride=2)
                                      for c_in, c_out in zip(widths[:-1], widths[1:])])
        grid = cfg.image_size // 2 ** (len(widths) - 1)
        self.pool = AttentionPool2d(grid, widths[-1], cfg.resnet_heads)
        self.width = widths[-1]
        self.to(memory_format=torch.channels_last)  # faster convolutions on CPU

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) in [-1, 1] -> features (B, width)."""
        x = x.contiguous(memory_format=torch.channels_last)
        return self.pool(self.stages(self.stem(x)))                       # (B, C, h, w) -> (B, C)


# ----------------------------------------------------------------------------
# Image encoder 2: a small Vision Transformer

class VisionTransformer(nn.Module):
    """Patches -> tokens (+ a class token, + positions) -> pre-LN blocks -> class token.

    Taught in notebooks/04_clip.ipynb.
    """

    def __init__(self, cfg: CLIPConfig):
        super().__init__()
        p, w = cfg.vit_patch_size, cfg.vit_width
        grid = cfg.image_size // p
        self.patch_embedding = nn.Conv2d(3, w, kernel_size=p, stride=p)  # one linear map per patch
        self.class_embedding = nn.Parameter(torch.randn(w) / w ** 0.5)
        self.positional_embedding = nn.Parameter(torch.randn(grid * grid + 1, w) / w ** 0.5)
        self.ln_pre = nn.LayerNorm(w)
        self.blocks = nn.ModuleList(Block(w, cfg.vit_heads, cfg.mlp_ratio, causal=False)
                                    for _ in range(cfg.vit_layers))
        self.ln_post = nn.LayerNorm(w)
        self.width = w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, 3, H, W) in [-1, 1] -> features (B, width)."""
        x = self.patch_embedding(x)                                       # (B, C, grid, grid)
        x = x.flatten(2).transpose(1, 2)                                  # (B, grid**2, C)
        cls = self.class_embedding.expand(x.shape[0], 1, -1)              # (B, 1, C)
        x = self.ln_pre(torch.cat([cls, x], dim=1) + self.positional_embedding)  # (B, 1 + grid**2, C)
        for block in self.blocks:
            x = block(x)
        return self.ln_post(x[:, 0])                                      # the class token


# ----------------------------------------------------------------------------
# The model

class MiniCLIP(nn.Module):
    """Two encoders, two linear projections, one learned temperature.

    Taught in notebooks/04_clip.ipynb.
    """

    def __init__(self, config: CLIPConfig | None = None):
        super().__init__()
        self.config = cfg = config or CLIPConfig()
        self.text = TextTransformer(cfg) if cfg.text_encoder == "transformer" else BagOfWordsText(cfg)
        self.visual = ResNetEncoder(cfg) if cfg.image_encoder == "resnet" else VisionTransformer(cfg)
        # Linear projections into the joint space (no bias, as in CLIP).
        self.image_projection = nn.Linear(self.visual.width, cfg.embed_dim, bias=False)
        self.text_projection = nn.Linear(cfg.text_width, cfg.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(INIT_LOGIT_SCALE))  # t; the scale is exp(t)

    def _check_tokens(self, tokens: torch.Tensor) -> None:
        if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.long or tokens.ndim != 2:
            raise ValueError("tokens must be a LongTensor (B, L) from minildm.text.tokenize(prompts)")
        if tokens.shape[1] != self.config.context_length:
            raise ValueError(f"tokens must have {self.config.context_length} positions, got {tokens.shape[1]}")
        if tokens.numel() and int(tokens.max()) >= self.config.vocab_size:
            new = sorted({text.VOCAB[i] for i in tokens.flatten().tolist() if i >= self.config.vocab_size})
            raise ValueError(f"these weights know only the first {self.config.vocab_size} tokens of the vocabulary; "
                             f"{', '.join(repr(w) for w in new)} came later (retrain CLIP: "
                             f"python -m minildm train clip --preset cpu)")

    def text_hidden_states(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, L) -> per-token hidden states (B, L, text_width) after the final LayerNorm.

        This is the `context` the latent diffusion UNet cross-attends to.
        """
        self._check_tokens(tokens)
        return self.text(tokens)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens (B, L) -> (B, embed_dim), L2-normalised: the <eos> state, projected.

        The causal mask means only the <eos> token has read the whole prompt.
        """
        if self.config.text_encoder == "bag":                             # the mean of the words
            self._check_tokens(tokens)
            return F.normalize(self.text_projection(self.text.pool(tokens)), dim=-1)
        hidden = self.text_hidden_states(tokens)                          # (B, L, C)
        pooled = hidden[torch.arange(len(tokens)), text.eos_positions(tokens)]  # (B, C)
        return F.normalize(self.text_projection(pooled), dim=-1)

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> the image encoder's features (B, width), before projection."""
        s = self.config.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, s, s):
            raise ValueError(f"images must be (B, 3, {s}, {s}) in [0, 1], got {tuple(images.shape)}")
        return self.visual(images * 2 - 1)                                # the model sees [-1, 1]

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) in [0, 1] -> (B, embed_dim), L2-normalised."""
        return F.normalize(self.image_projection(self.image_features(images)), dim=-1)

    def scale(self) -> torch.Tensor:
        """exp(t), clamped at MAX_LOGIT_SCALE = 100."""
        return self.logit_scale.clamp(max=math.log(MAX_LOGIT_SCALE)).exp()

    def forward(self, images: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W), tokens (B, L) -> logits_per_image (B, B).

        logits_per_image[i, j] = scale * cos(image_i, text_j); its transpose is logits_per_text.
        """
        image_emb, text_emb = self.encode_image(images), self.encode_text(tokens)  # (B, D) each
        return self.scale() * image_emb @ text_emb.T

    @classmethod
    def from_pretrained(cls, path=None, device="cpu") -> "MiniCLIP":
        """Load a folder written by save_pretrained (None: the shipped minildm/weights/clip/)."""
        return _from_pretrained(cls, CLIPConfig, path, "clip", device)

    def save_pretrained(self, folder) -> Path:
        """Write folder/config.json and folder/model.safetensors."""
        return _save_pretrained(self, self.config, folder)


# ----------------------------------------------------------------------------
# The symmetric contrastive loss

def clip_loss(logits_per_image: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric cross-entropy over a batch's (B, B) similarity matrix.

        loss = ( CE(rows: image -> its caption) + CE(columns: caption -> its image) ) / 2

    The target of row i is column i. With `labels` (B, 4), pairs whose labels
    are equal also count as matches (two images of "a small red circle on the
    left" in one batch are not a mistake), and the target spreads evenly over them.

    Taught in notebooks/04_clip.ipynb.
    """
    B = logits_per_image.shape[0]
    if logits_per_image.ndim != 2 or logits_per_image.shape[1] != B:
        raise ValueError(f"logits_per_image must be square (B, B), got {tuple(logits_per_image.shape)}")
    if labels is None:
        target = torch.arange(B, device=logits_per_image.device)       # (B,) class indices
        return (F.cross_entropy(logits_per_image, target) + F.cross_entropy(logits_per_image.T, target)) / 2
    match = (labels[:, None, :] == labels[None, :, :]).all(-1).float()   # (B, B), symmetric
    target = match / match.sum(dim=1, keepdim=True)                       # rows sum to 1
    return (F.cross_entropy(logits_per_image, target) + F.cross_entropy(logits_per_image.T, target)) / 2
