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
two image encoders -> MiniCLIP -> loss -> augmentation -> evaluation
(zero-shot, linear probe, retrieval) -> presets, fit, evaluate.

Taught in notebooks/04_clip.ipynb.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import text
from .data import shapes
from .train import TrainConfig, pick_device, train
from .weights_io import from_pretrained as _from_pretrained
from .weights_io import resolve_folder
from .weights_io import save_pretrained as _save_pretrained

MAX_LOGIT_SCALE = 100.0                  # CLIP clips exp(t) at 100 so training stays stable
INIT_LOGIT_SCALE = math.log(1 / 0.07)    # the paper's initial temperature, t = log(1/0.07)


@dataclass
class CLIPConfig:
    """Architecture of MiniCLIP (the preset's `model`)."""
    image_encoder: str = "resnet"        # "resnet" or "vit"
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

    def __post_init__(self):
        if self.image_encoder not in ("resnet", "vit"):
            raise ValueError(f"image_encoder must be 'resnet' or 'vit', got {self.image_encoder!r}")
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
        self.text = TextTransformer(cfg)
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


# ----------------------------------------------------------------------------
# Augmentation: random square crops that keep the caption true

CROP_CELL_MARGIN = 0.1  # the object's centre stays this fraction of a cell inside its 3x3 cell


def object_boxes(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 4) bounding boxes (x0, y0, x1, y1) in pixels of the lit pixels."""
    mask = images.amax(dim=1) > 0.05                                      # (N, H, W)
    n, h, w = mask.shape
    cols, rows = mask.any(dim=1), mask.any(dim=2)                         # (N, W), (N, H)
    ar_w, ar_h = torch.arange(w), torch.arange(h)
    x0 = torch.where(cols, ar_w, w).amin(1)
    x1 = torch.where(cols, ar_w + 1, 0).amax(1)
    y0 = torch.where(rows, ar_h, h).amin(1)
    y1 = torch.where(rows, ar_h + 1, 0).amax(1)
    return torch.stack([x0, y0, x1, y1], dim=1).float()


def random_square_crop(images: torch.Tensor, generator: torch.Generator | None = None,
                       min_scale: float = 0.85, keep_cell: bool = True, tries: int = 16) -> torch.Tensor:
    """Crop a random square of side in [min_scale, 1] x the image and resize it back.

    CLIP's only augmentation. The catch: our captions name *positions*, so a crop
    may not move the object into another 3x3 cell (nor cut it off). With
    keep_cell=True each image gets the first of `tries` random crops that keeps
    the object whole and its centre inside the same cell (else no crop). A
    horizontal flip would turn "on the left" into "on the right": never flip.
    keep_cell=False shows what goes wrong.

    Taught in notebooks/04_clip.ipynb.
    """
    from torchvision.transforms.v2 import functional as TF
    n, _, size, _ = images.shape
    lo = max(1, int(math.ceil(min_scale * size)))
    side = torch.randint(lo, size + 1, (n, tries), generator=generator).float()   # (N, K)
    ox = (torch.rand(n, tries, generator=generator) * (size - side + 1)).floor()   # left edges
    oy = (torch.rand(n, tries, generator=generator) * (size - side + 1)).floor()   # top edges
    if keep_cell:
        box = object_boxes(images)[:, None, :]                            # (N, 1, 4)
        cx, cy = (box[..., 0] + box[..., 2]) / 2, (box[..., 1] + box[..., 3]) / 2  # (N, 1)
        inside = (ox <= box[..., 0]) & (oy <= box[..., 1]) & (ox + side >= box[..., 2]) & (oy + side >= box[..., 3])
        ok = inside.clone()
        for c, o in ((cx, ox), (cy, oy)):
            before = 3 * c / size                                         # cell coordinate before the crop
            after = 3 * (c - o) / side                                    # ... and after
            frac = after - after.floor()
            ok &= (after.floor() == before.floor()) & (frac >= CROP_CELL_MARGIN) & (frac <= 1 - CROP_CELL_MARGIN)
        choice = torch.where(ok.any(1), ok.float().argmax(1), -1)        # (N,) first good try or -1
    else:
        choice = torch.zeros(n, dtype=torch.long)
    out = images.clone()
    for i in range(n):
        k = int(choice[i])
        if k >= 0:
            s, top, left = int(side[i, k]), int(oy[i, k]), int(ox[i, k])
            out[i] = TF.resized_crop(images[i], top, left, s, s, [size, size], antialias=True).clamp(0, 1)
    return out


# ----------------------------------------------------------------------------
# Zero-shot prediction: labels -> prompts -> text embeddings -> nearest prompt

ZERO_SHOT_TASKS = ("caption",) + shapes.ATTRIBUTES  # caption = all 324 canonical captions


def prompts_for(task: str, ensemble: bool = True) -> list[list[str]]:
    """The prompts of each class of a task: a list (num_classes) of lists of prompts.

    "caption": class i is all_captions()[i]; with ensemble=True also its
    paraphrases (big/large, upper left/top left, ...). An attribute ("color"...):
    class v gets every canonical caption with that value, the other attributes
    filling the template "a {size} {color} {shape} {where}" (prompt ensembling).
    """
    if task not in ZERO_SHOT_TASKS:
        raise ValueError(f"unknown zero-shot task {task!r}; allowed: {', '.join(ZERO_SHOT_TASKS)}")
    labels = shapes.all_labels()                                          # (324, 4)
    if task == "caption":
        if not ensemble:
            return [[shapes.caption(l)] for l in labels]
        out = []
        for l in labels:
            s, c, z, p = (int(v) for v in l)
            out.append([f"a {sw} {shapes.COLOR_NAMES[c]} {shapes.SHAPES[s]} {ww}"
                        for sw in shapes.SIZE_WORDS[shapes.SIZES[z]] for ww in shapes.WHERE_WORDS[p]])
        return out
    a = shapes.ATTRIBUTES.index(task)
    return [[shapes.caption(l) for l in labels[labels[:, a] == v]]
            for v in range(len(shapes.ATTRIBUTE_VALUES[task]))]


@dataclass
class ZeroShotClassifier:
    """A task's prompts, embedded once: the "weights" of a classifier nobody trained."""
    task: str                            # "caption" or an attribute
    prompt_embeddings: torch.Tensor      # (P, D) unit vectors, every prompt of every class
    prompt_class: torch.Tensor           # (P,) long, the class each prompt belongs to
    num_classes: int                     # K
    scale: float                         # the model's temperature exp(t)

    def scores(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        """(N, D) unit image embeddings -> (N, K) class scores.

        Prompt ensembling in probability space: the score of a class is the
        log-mean-exp over its prompts of scale * cos(image, prompt), i.e. the log
        of its prompts' average softmax weight. (Averaging 108 "circle" captions'
        *embeddings* instead would blur the word "circle" under everything else
        those captions say.)
        """
        logits = self.scale * image_embeddings @ self.prompt_embeddings.T            # (N, P)
        top = logits.amax(dim=1, keepdim=True)                                        # for stability
        one_hot = F.one_hot(self.prompt_class, self.num_classes).float()              # (P, K)
        mean_exp = (logits - top).exp() @ one_hot / one_hot.sum(0)                    # (N, K)
        return mean_exp.log() + top


@torch.no_grad()
def zero_shot_classifier(model: MiniCLIP, task: str = "caption", ensemble: bool = True) -> ZeroShotClassifier:
    """Embed every prompt of every class of `task` once (see prompts_for)."""
    device = next(model.parameters()).device
    groups = prompts_for(task, ensemble)
    prompts = [p for group in groups for p in group]
    emb = torch.cat([model.encode_text(text.tokenize(prompts[i:i + 1024]).to(device)).cpu()
                     for i in range(0, len(prompts), 1024)])                          # (P, D)
    prompt_class = torch.cat([torch.full((len(g),), k) for k, g in enumerate(groups)])
    return ZeroShotClassifier(task, emb, prompt_class, len(groups), model.scale().item())


@torch.no_grad()
def embed_images(model: MiniCLIP, images: torch.Tensor, batch_size: int = 512,
                 features: bool = False) -> torch.Tensor:
    """Images (N, 3, H, W) -> normalised embeddings (N, D) (or raw features), in batches."""
    model.eval()
    device = next(model.parameters()).device
    fn = model.image_features if features else model.encode_image
    return torch.cat([fn(images[i:i + batch_size].to(device)).cpu()
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def zero_shot_predict(model: MiniCLIP, images: torch.Tensor, task: str = "caption",
                      classifier: ZeroShotClassifier | None = None) -> torch.Tensor:
    """Predict a class per image (N,): the class whose prompts are most similar to the image.

    task "caption" -> index into shapes.all_captions(); an attribute -> its value index
    (e.g. into shapes.COLOR_NAMES). Taught in notebooks/04_clip.ipynb.
    """
    classifier = classifier or zero_shot_classifier(model, task)
    return classifier.scores(embed_images(model, images)).argmax(dim=1)


@torch.no_grad()
def zero_shot_accuracy(model: MiniCLIP, images: torch.Tensor, labels: torch.Tensor,
                       classifiers: dict | None = None) -> dict:
    """Top-1 accuracy over the 324 captions ("caption") and per attribute.

    classifiers: optional {task: ZeroShotClassifier} computed once, to reuse.
    """
    emb = embed_images(model, images)                                     # (N, D)
    classifiers = classifiers or {}
    out = {}
    for task in ZERO_SHOT_TASKS:
        classifier = classifiers.get(task) or zero_shot_classifier(model, task)
        pred = classifier.scores(emb).argmax(1)
        target = shapes.caption_index(labels) if task == "caption" else labels[:, shapes.ATTRIBUTES.index(task)]
        out[task] = (pred == target).float().mean().item()
    return out


# ----------------------------------------------------------------------------
# Linear probe and retrieval

def linear_probe(model: MiniCLIP, train_images: torch.Tensor, train_labels: torch.Tensor,
                 test_images: torch.Tensor, test_labels: torch.Tensor, C: float = 1.0) -> dict:
    """Logistic regression on frozen image features, one per attribute -> test accuracy.

    The probe asks what the image encoder *knows*, independently of the text side.
    Taught in notebooks/04_clip.ipynb.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler
    x_train = embed_images(model, train_images, features=True).numpy()      # (N, width), frozen
    x_test = embed_images(model, test_images, features=True).numpy()
    scaler = StandardScaler().fit(x_train)                                   # zero mean, unit variance
    x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)
    out = {}
    for a, name in enumerate(shapes.ATTRIBUTES):
        clf = LogisticRegression(C=C, max_iter=2000).fit(x_train, train_labels[:, a].numpy())
        out[name] = float((clf.predict(x_test) == test_labels[:, a].numpy()).mean())
    return out


@torch.no_grad()
def retrieval_recall(model: MiniCLIP, images: torch.Tensor, captions: list[str], labels: torch.Tensor,
                     ks=(1, 5)) -> dict:
    """Image->text and text->image recall@k over N pairs.

    A hit is a retrieved item with the same labels as the query's partner (the
    same caption may be paired with several images). Taught in notebooks/04_clip.ipynb.
    """
    device = next(model.parameters()).device
    sim = embed_images(model, images) @ model.encode_text(text.tokenize(captions).to(device)).cpu().T  # (N, N)
    same = (labels[:, None, :] == labels[None, :, :]).all(-1)             # (N, N)
    out = {}
    for k in ks:
        k_eff = min(k, len(images))
        top_i2t = sim.topk(k_eff, dim=1).indices                          # (N, k) captions per image
        top_t2i = sim.T.topk(k_eff, dim=1).indices                        # (N, k) images per caption
        out[f"image_to_text@{k}"] = same.gather(1, top_i2t).any(1).float().mean().item()
        out[f"text_to_image@{k}"] = same.gather(1, top_t2i).any(1).float().mean().item()
    return out


# ----------------------------------------------------------------------------
# Presets and training

@dataclass
class CLIPPreset:
    model: CLIPConfig
    train: TrainConfig
    min_crop_scale: float = 0.85         # random square crop side in [min_crop_scale, 1] x image
    crop_probability: float = 0.5        # fraction of a batch that gets cropped
    crop_keep_cell: bool = True          # only crops that keep the caption true (False: see what breaks)


PRESETS = {
    "tiny": CLIPPreset(  # seconds: tests and nbval
        CLIPConfig(embed_dim=32, text_width=32, text_layers=1, text_heads=2, resnet_widths=(16, 16, 32),
                   resnet_heads=2, vit_width=32, vit_layers=1, vit_heads=2),
        TrainConfig(steps=60, batch_size=64, lr=2e-3, warmup_steps=10, log_every=10, progress=False)),
    "cpu": CLIPPreset(  # minutes on 2 CPU cores: the shipped weights
        CLIPConfig(),
        TrainConfig(steps=1000, batch_size=128, lr=2e-3, warmup_steps=100, weight_decay=0.1,
                    log_every=50)),
    "gpu": CLIPPreset(  # a bigger model on 64 x 64 images, bf16
        CLIPConfig(image_size=64, embed_dim=128, text_width=128, text_layers=4, text_heads=4,
                   resnet_widths=(32, 64, 64, 128), vit_width=128, vit_layers=6),
        TrainConfig(steps=5000, batch_size=512, lr=1e-3, warmup_steps=300, weight_decay=0.1,
                    precision="bf16", log_every=100)),
}

MODEL_OVERRIDES = tuple(f.name for f in dataclasses.fields(CLIPConfig))  # fit() accepts these too
CROP_OVERRIDES = ("min_crop_scale", "crop_probability", "crop_keep_cell")  # ... and these


def make_sample_batch(preset: CLIPPreset):
    """The data stream: fresh captioned images (paraphrased captions) + safe random crops."""
    size = preset.model.image_size

    def sample_batch(batch_size: int, generator: torch.Generator, device):
        seed = int(torch.randint(0, 2 ** 31, (1,), generator=generator))
        images, captions, labels = shapes.sample_batch(batch_size, "train", size, seed=seed, paraphrases=True)
        crop = torch.rand(batch_size, generator=generator) < preset.crop_probability
        if crop.any():
            images[crop] = random_square_crop(images[crop], generator, preset.min_crop_scale,
                                              keep_cell=preset.crop_keep_cell)
        return images.to(device), text.tokenize(captions).to(device), labels.to(device)

    return sample_batch


def loss_fn(model: MiniCLIP, batch):
    """The training loss: symmetric contrastive loss, same-caption pairs counted as matches."""
    images, tokens, labels = batch
    logits = model(images, tokens)                                        # (B, B)
    loss = clip_loss(logits, labels)
    same = (labels[:, None, :] == labels[None, :, :]).all(-1)             # (B, B) equal captions
    acc = same[torch.arange(len(logits)), logits.argmax(1)].float().mean()  # image -> a right caption
    return loss, {"batch_acc": acc.item(), "logit_scale": model.scale().item()}


def fit(preset: str = "cpu", out_dir="weights", run_dir="runs", **overrides) -> MiniCLIP:
    """Train MiniCLIP with a preset and write out_dir/clip/{config.json, model.safetensors}.

    overrides: TrainConfig fields (steps, lr, ...), CLIPConfig fields (image_encoder="vit", ...)
    or the crop settings (crop_keep_cell=False, ...).
    Shipped weights: `python -m minildm train clip --preset cpu --out minildm/weights`.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")
    p = PRESETS[preset]
    model_over = {k: overrides.pop(k) for k in MODEL_OVERRIDES if k in overrides}
    crop_over = {k: overrides.pop(k) for k in CROP_OVERRIDES if k in overrides}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if set(overrides) - train_fields:
        raise ValueError(f"unknown overrides {sorted(set(overrides) - train_fields)}; allowed: TrainConfig "
                         f"fields {sorted(train_fields)}, CLIPConfig fields and {list(CROP_OVERRIDES)}")
    p = dataclasses.replace(p, model=dataclasses.replace(p.model, **model_over), **crop_over)
    train_cfg = dataclasses.replace(p.train, **overrides)
    if run_dir is not None:
        train_cfg = dataclasses.replace(train_cfg, out_dir=str(Path(run_dir) / "clip"))
    model = MiniCLIP(p.model)
    result = train(model, loss_fn, make_sample_batch(p), train_cfg, name=f"clip-{p.model.image_encoder}")
    model = result.model.cpu().eval()
    model.train_seconds = result.seconds
    model.history = result.history
    if out_dir is not None:
        folder = model.save_pretrained(Path(out_dir) / "clip")
        info = {"preset": preset, "image_encoder": p.model.image_encoder, "steps": train_cfg.steps,
                "batch_size": train_cfg.batch_size, "train_seconds": round(result.seconds, 1),
                "torch_threads": torch.get_num_threads(), "device": str(pick_device(train_cfg.device)),
                "history": [{k: round(row[k], 4) for k in ("step", "loss", "batch_acc", "logit_scale", "seconds")}
                            for row in result.history]}
        (folder / "training.json").write_text(json.dumps(info, indent=2) + "\n")
        print(f"wrote {folder}/config.json and model.safetensors")
    print(f"trained clip ({p.model.image_encoder}, preset {preset}) for {result.steps_run} steps "
          f"in {result.seconds:.0f} s")
    return model


# ----------------------------------------------------------------------------
# Evaluation

EVAL_SEED = 2024  # fresh test images, never the training stream


def evaluate(weights=None, quick: bool = False, model: MiniCLIP | None = None) -> dict:
    """Zero-shot (324 captions and per attribute), linear probe, retrieval; seen and held-out pairs.

    `python -m minildm evaluate clip` (the shipped weights) or `--weights DIR`.
    Results: docs/results_clip.md. Taught in notebooks/04_clip.ipynb.
    """
    torch.manual_seed(0)
    model_given = model
    model = model if model is not None else MiniCLIP.from_pretrained(weights)
    model.eval()
    size = model.config.image_size
    n_test, n_probe = (200, 300) if quick else (2000, 3000)
    test_x, _, test_y = shapes.sample_batch(n_test, "test", size, seed=EVAL_SEED)
    held_x, _, held_y = shapes.sample_batch(n_test // 2, "heldout", size, seed=EVAL_SEED + 1)
    train_x, _, train_y = shapes.sample_batch(n_probe, "train", size, seed=EVAL_SEED + 2)
    probe_held = linear_probe(model, train_x, train_y, held_x, held_y)
    out = {
        "image_encoder": model.config.image_encoder,
        "parameters": sum(p.numel() for p in model.parameters()),
        "image_encoder_parameters": sum(p.numel() for p in model.visual.parameters()),
        "logit_scale": round(model.scale().item(), 2),
        "zero_shot_seen": zero_shot_accuracy(model, test_x, test_y),
        "zero_shot_heldout": zero_shot_accuracy(model, held_x, held_y),
        "linear_probe_seen": linear_probe(model, train_x, train_y, test_x, test_y),
        "linear_probe_heldout": probe_held,
    }
    # Retrieval over one image per seen caption (270 distinct pairs).
    seen = shapes.split_labels("test")
    ret_x = shapes.render(seen, size, seed=EVAL_SEED + 3)
    out["retrieval_seen"] = retrieval_recall(model, ret_x, [shapes.caption(l) for l in seen], seen)
    if model_given is None:  # what the weights' training.json says (steps, seconds, loss curve)
        info = resolve_folder(weights, "clip") / "training.json"
        if info.exists():
            out["training"] = {k: v for k, v in json.loads(info.read_text()).items() if k != "history"}
    return _round(out)


def compare_encoders(preset: str = "cpu", out_dir="runs/clip_compare", quick: bool = False,
                     **overrides) -> dict:
    """Train the same preset with the ResNet and with the ViT image encoder; evaluate both.

    Returns {"resnet": {...}, "vit": {...}} with train_seconds, parameters and the
    headline accuracies, and writes it to out_dir/comparison.json.
    """
    table = {}
    for encoder in ("resnet", "vit"):
        model = fit(preset, out_dir=Path(out_dir) / encoder, run_dir=Path(out_dir) / encoder / "run",
                    image_encoder=encoder, **overrides)
        res = evaluate(Path(out_dir) / encoder / "clip", quick=quick)
        table[encoder] = summarize(res)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    (Path(out_dir) / "comparison.json").write_text(json.dumps(table, indent=2) + "\n")
    return table


def summarize(res: dict) -> dict:
    """The headline numbers of an evaluate() result, flat (for tables)."""
    out = {"parameters": res["parameters"],
           "image_encoder_parameters": res.get("image_encoder_parameters"),
           "train_seconds": res.get("training", {}).get("train_seconds"),
           "steps": res.get("training", {}).get("steps")}
    for split in ("seen", "heldout"):
        for task, acc in res[f"zero_shot_{split}"].items():
            out[f"zero_shot_{split}_{task}"] = acc
        out[f"linear_probe_{split}_min"] = min(res[f"linear_probe_{split}"].values())
    out.update(res["retrieval_seen"])
    return out


def _round(d):
    if isinstance(d, dict):
        return {k: _round(v) for k, v in d.items()}
    return round(d, 4) if isinstance(d, float) else d
