"""Pictures of the lessons: grids leave a gap between rows, diagrams follow the configs they draw."""
import dataclasses

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

from minildm import viz  # noqa: E402
from minildm.clip import CLIPConfig  # noqa: E402
from minildm.unet import UNetConfig  # noqa: E402


def texts(fig) -> str:
    return "\n".join(t.get_text() for ax in fig.axes for t in ax.texts + [ax.title])


def test_uncaptioned_grid_leaves_a_gap_between_rows():
    images = torch.rand(16, 3, 8, 8)
    fig = viz.image_grid(images, ncols=8)
    rows = sorted({round(ax.get_position().y0, 4) for ax in fig.axes})
    top_of_lower = max(ax.get_position().y1 for ax in fig.axes if round(ax.get_position().y0, 4) == rows[0])
    assert rows[1] - top_of_lower > 0.01, "the two rows touch"
    viz.plt.close(fig)


@pytest.mark.parametrize("context_dim", [None, 64])
def test_unet_diagram_shows_where_time_and_text_enter(context_dim):
    config = UNetConfig(base_channels=16, channel_mults=(1, 2, 2), attention_levels=(False, False, True),
                        context_dim=context_dim)
    text = texts(viz.unet_diagram(config, image_size=32))
    assert "32x32, 16 channels" in text and "8x8, 32 channels" in text and "skip: concatenate" in text
    assert "temb" in text
    assert ("cross-attn" in text and "txt" in text) == (context_dim is not None)
    viz.plt.close("all")


def test_clip_encoder_and_pipeline_diagrams():
    cfg = CLIPConfig()
    text = texts(viz.clip_encoders_diagram(cfg))
    assert f"{cfg.image_size // cfg.vit_patch_size}x{cfg.image_size // cfg.vit_patch_size} patches" in text
    assert f"-> {cfg.embed_dim}" in text and "L2-normalise" in text and "attention pool" in text
    text = texts(viz.pipeline_diagram())
    for part in ("VAE encoder", "CLIP text\nencoder", "cross-attention", "VAE decoder", "timestep t"):
        assert part in text
    viz.plt.close("all")


def test_contrastive_loss_picture_names_the_loss():
    logits = 5 * torch.eye(4) + torch.randn(4, 4, generator=torch.Generator().manual_seed(0))
    fig = viz.contrastive_loss_picture(logits)
    rows = torch.nn.functional.cross_entropy(logits, torch.arange(4))
    cols = torch.nn.functional.cross_entropy(logits.T, torch.arange(4))
    assert f"{(rows + cols).item() / 2:.3f}" in fig._suptitle.get_text()
    viz.plt.close(fig)
