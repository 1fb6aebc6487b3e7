"""Cross-attention maps: which word of the prompt shaped which part of the image.

Every cross-attention layer of the UNet computes, for each pixel of its feature map
(a query) and each token of the prompt (a key), a weight: how much of that token's
value the pixel takes in,

    weights = softmax(q k^T / sqrt(hs))        (B, heads, N pixels, L tokens), each row sums to 1

Read along a column (one token) the weights form a heat map over the image. Two
small objects use them; the UNet shows them the weights when one is set with
`UNet.set_attention_store(store)` (inside `with attention_hook(unet, store):`):

    AttentionStore     records them and averages over heads, layers and sampling steps ->
                       maps (N, L, 8, 8), each token's map normalised to sum 1 over the grid
    AttentionInjector  prompt-to-prompt (Hertz et al. 2022): sampling a source and a target
                       prompt side by side, the target rows take the source rows' weights for
                       the first steps, so the target keeps the source's layout

The injector's `step_done` is the `callback` of samplers.sample: it counts the steps.
Only the prompt rows are kept: with classifier-free guidance the batch is
[unconditional; prompts], so the prompts are its last rows (the conditional branch, as
prompt-to-prompt and DAAM read it).

Which layers: the UNet has cross-attention at three resolutions of the 8x8 latent (8x8, 4x4,
2x2). By default the maps average the layers at the latent's own resolution (the 8x8 ones, down and
up path): a map over the latent grid, one cell per latent pixel, with nothing upsampled. This follows
prompt-to-prompt (Hertz et al. 2022), whose figures of Stable Diffusion average the layers of one
resolution (its 16x16 ones, down and up path; DAAM averages all). Which resolution was chosen by
measuring: of three averages, this one puts the most attention of colour and shape words on the
object, on two trainings of lesson 06's model (docs/results_toolbox.md, the box at the top): the coarser
layers' cells cover several latent pixels, so upsampled they spread a word over the object's
neighbours, and a 2x2 cell (a quarter of the image) is larger than most Shapes objects.
`maps(layers="half")` averages the layers at least half the latent's side (8x8 and 4x4, the default
until 2026-12-02), `maps(layers="all")` every layer, `maps(layers=[i])` one.
The coarse maps are upsampled to the latent grid by nearest neighbour (each cell's weight
spread over the pixels it covers); all steps count equally.

Taught in notebooks/09_toolbox.ipynb.
"""
from __future__ import annotations

import math
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from .text import PAD_ID, VOCAB, tokenize


class AttentionStore:
    """Sum, layer by layer, the cross-attention weights of the last `num_prompts` rows of every call;
    `maps()` averages them (by default over `default_layers()`).

    num_prompts: the number of prompts (rows kept); latent_size: the side of the grid the
    maps are given on (the lower-resolution layers are upsampled to it, nearest neighbour).
    """

    def __init__(self, num_prompts: int, latent_size: int):
        self.num_prompts, self.latent_size = num_prompts, latent_size
        self.totals = {}           # layer -> (n, L, S, S) sum of its maps over its calls, in call order
        self.calls = {}            # layer -> how often it was called (once per sampling step)
        self.sides = {}            # layer -> the side of its feature map (8, 4, 2)

    def __call__(self, layer, weights: torch.Tensor) -> torch.Tensor:
        """weights (B, nh, N, L) of one layer -> the same weights (recorded, not changed)."""
        n, side = self.num_prompts, math.isqrt(weights.shape[2])
        per_pixel = weights[-n:].float().mean(dim=1)                          # (n, N, L): heads averaged
        grid = per_pixel.transpose(1, 2).reshape(n, -1, side, side)           # (n, L, side, side)
        grid = F.interpolate(grid, size=self.latent_size, mode="nearest")     # (n, L, S, S)
        self.totals[layer] = grid + self.totals.get(layer, 0)
        self.calls[layer] = self.calls.get(layer, 0) + 1
        self.sides[layer] = side
        return weights

    def resolutions(self) -> list[int]:
        """The side of each recorded layer's feature map, in the UNet's order (down, middle, up)."""
        return list(self.sides.values())

    def default_layers(self) -> list[int]:
        """Indices into resolutions() of the layers maps() averages by default: finest_layers()."""
        return self.finest_layers()

    def finest_layers(self) -> list[int]:
        """Indices into resolutions() of the layers at the latent's own resolution (8x8 for an 8x8 latent)."""
        return [i for i, side in enumerate(self.resolutions()) if side == self.latent_size]

    def half_layers(self) -> list[int]:
        """Indices into resolutions() of the layers at least half the latent's side (8x8 and 4x4 for an
        8x8 latent): the default until 2026-12-02."""
        return [i for i, side in enumerate(self.resolutions()) if 2 * side >= self.latent_size]

    def maps(self, layers=None) -> torch.Tensor:
        """(n, L, S, S) on the CPU: each token's map averaged over the steps and the layers
        (None or "finest": the layers at the latent's resolution; "half": half_layers(); "all": every
        layer; or a list of indices into resolutions()), normalised to sum to 1 over the grid.

        Padding tokens get no attention (they are masked out), so their maps are all zeros.
        """
        if not self.totals:
            raise ValueError("no attention was recorded: sample with the store set on the UNet")
        per_layer = [self.totals[layer] / self.calls[layer] for layer in self.totals]  # each (n, L, S, S)
        named = {None: self.default_layers, "finest": self.finest_layers, "half": self.half_layers}
        if layers is None or (isinstance(layers, str) and layers in named):
            layers = named[layers]()
        elif layers != "all" and not (isinstance(layers, (list, tuple)) and layers
                                      and all(isinstance(i, int) and 0 <= i < len(per_layer) for i in layers)):
            raise ValueError(f"layers must be None, 'finest', 'half', 'all' or a non-empty list of indices in "
                             f"0..{len(per_layer) - 1}, got {layers!r}")
        chosen = per_layer if layers == "all" else [per_layer[i] for i in layers]
        mean = (sum(chosen) / len(chosen)).cpu()                              # (n, L, S, S)
        mass = mean.sum(dim=(2, 3), keepdim=True)                             # (n, L, 1, 1)
        return torch.where(mass > 0, mean / mass.clamp_min(1e-12), torch.zeros_like(mean))


class AttentionInjector:
    """Prompt-to-prompt: rows [-n:] (targets) take the weights of rows [-2n:-n] (sources)
    for the first `inject_steps` sampling steps, at every cross-attention layer."""

    def __init__(self, num_pairs: int, inject_steps: int):
        self.num_pairs, self.inject_steps = num_pairs, inject_steps
        self.step = 0

    def __call__(self, layer, weights: torch.Tensor) -> torch.Tensor:
        """weights (B, nh, N, L) with B >= 2n: the prompt rows are [sources; targets] at the end."""
        if self.step >= self.inject_steps:
            return weights
        n = self.num_pairs
        weights = weights.clone()
        weights[-n:] = weights[-2 * n:-n]                                     # the target draws like the source
        return weights

    def step_done(self, i, t, xt, x0_pred):
        self.step += 1


@contextmanager
def attention_hook(unet, store):
    """Set `store` on the UNet's cross-attention layers for the `with` block, and remove it after.

    store None does nothing (so callers need no second code path).
    """
    if store is None:
        yield None
        return
    if not hasattr(unet, "set_attention_store"):
        raise ValueError(f"attention maps and prompt-to-prompt need a UNet with cross-attention; "
                         f"this pipeline's denoiser is a {type(unet).__name__}")
    unet.set_attention_store(store)
    try:
        yield store
    finally:
        unet.set_attention_store(None)


def token_words(prompt: str) -> list[str]:
    """The token behind each row of a prompt's maps: ['<bos>', 'a', 'large', ..., '<eos>', '<pad>', ...]."""
    return [VOCAB[i] for i in tokenize(prompt)[0].tolist()]


def word_index(prompt: str, word: str) -> int:
    """Position of `word` in the prompt's tokens (the row of its attention map)."""
    words = token_words(prompt)
    if word.lower() not in words:
        raise ValueError(f"{word!r} is not a word of the prompt {prompt!r} (its tokens: "
                         f"{', '.join(w for w in words if w != VOCAB[PAD_ID])})")
    return words.index(word.lower())
