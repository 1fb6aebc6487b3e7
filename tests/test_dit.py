"""The diffusion transformer: patches, adaLN-Zero, cross vs joint attention, masks, save/load, learning."""
import pytest
import torch

from minildm.dit import DiT, DiTBlock, DiTConfig, JointBlock, patchify, pos_embed_2d, unpatchify
from minildm.weights_io import WeightsError

torch.set_num_threads(1)
TINY = dict(width=32, depth=2, num_heads=2)
MODES = ["cross", "joint"]


def randomise_zeros(model, std=0.05):
    """The zero-initialised layers hide everything at init: give them small random weights."""
    for p in model.parameters():
        if p.abs().sum() == 0:
            torch.nn.init.normal_(p, std=std)
    return model


def text(B=2, L=16, D=24, real=5):
    context = torch.randn(B, L, D)
    mask = torch.zeros(B, L, dtype=torch.bool)
    mask[:, :real] = True
    return context, mask


@pytest.mark.parametrize("p,res", [(2, 8), (4, 8), (2, 16)])
def test_patchify_round_trip_and_order(p, res):
    x = torch.randn(2, 4, res, res)
    tokens = patchify(x, p)
    assert tokens.shape == (2, (res // p) ** 2, p * p * 4)
    assert torch.equal(unpatchify(tokens, p, res, res), x)
    # token 0 is the top-left patch; token 1 the next one to its right (row by row)
    assert torch.equal(tokens[:, 0], x[:, :, :p, :p].permute(0, 2, 3, 1).reshape(2, -1))
    assert torch.equal(tokens[:, 1], x[:, :, :p, p:2 * p].permute(0, 2, 3, 1).reshape(2, -1))


def test_pos_embed_2d():
    pe = pos_embed_2d(4, 32)
    assert pe.shape == (16, 32)
    assert len(torch.unique(pe, dim=0)) == 16                          # every patch has its own code
    assert torch.equal(pe[1, :16], pe[0, :16])                         # same row: same first half
    assert torch.equal(pe[4, 16:], pe[0, 16:])                         # same column: same second half


@pytest.mark.parametrize("attention", MODES)
@pytest.mark.parametrize("with_context", ["none", "context", "context+mask"])
def test_output_shape(attention, with_context):
    ctx_dim = None if with_context == "none" else 24
    model = DiT(DiTConfig(attention=attention, context_dim=ctx_dim, **TINY))
    x = torch.randn(2, 4, 8, 8)
    context, mask = text()
    args = {"none": (None, None), "context": (context, None), "context+mask": (context, mask)}[with_context]
    out = randomise_zeros(model)(x, torch.tensor([10, 900]), *args)
    assert out.shape == x.shape and torch.isfinite(out).all()


@pytest.mark.parametrize("attention", MODES)
def test_fresh_block_is_identity_and_fresh_model_predicts_zero(attention):
    torch.manual_seed(0)
    x, c = torch.randn(2, 16, 32), torch.randn(2, 32)
    context, mask = torch.randn(2, 7, 32), torch.ones(2, 7, dtype=torch.bool)
    if attention == "cross":
        block = DiTBlock(32, 2, 4.0, cross=True)
    else:
        block = JointBlock(32, 2, 4.0, has_context=True, last=False)
    x_out, context_out = block(x, context, c, mask)
    assert torch.equal(x_out, x) and torch.equal(context_out, context)  # exactly the identity
    model = DiT(DiTConfig(attention=attention, context_dim=24, **TINY))
    out = model(torch.randn(2, 4, 8, 8), torch.tensor([3, 700]), *text())
    assert torch.equal(out, torch.zeros_like(out))


@pytest.mark.parametrize("attention", MODES)
@pytest.mark.parametrize("pooled", [False, True])
def test_masked_padding_tokens_do_not_change_the_output(attention, pooled):
    torch.manual_seed(0)
    model = randomise_zeros(DiT(DiTConfig(attention=attention, context_dim=24, pooled_context=pooled, **TINY)))
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([10, 500])
    context, mask = text()
    out = model(x, t, context, mask)
    changed_padding = context.clone()
    changed_padding[:, 5:] = torch.randn(2, 11, 24)
    assert torch.allclose(out, model(x, t, changed_padding, mask), atol=1e-6)
    changed_word = context.clone()
    changed_word[:, 2] = torch.randn(2, 24)
    assert not torch.allclose(out, model(x, t, changed_word, mask), atol=1e-4)   # real tokens do matter
    assert torch.isfinite(model(x, t, context, torch.zeros_like(mask))).all()    # all padding: no NaN


def test_time_float_or_long_and_it_matters():
    model = randomise_zeros(DiT(DiTConfig(**TINY)))
    x = torch.randn(2, 4, 8, 8)
    assert torch.allclose(model(x, torch.tensor([5, 5])), model(x, torch.tensor([5.0, 5.0])))
    assert torch.allclose(model(x, 5), model(x, torch.tensor([5, 5])))
    assert not torch.allclose(model(x, torch.tensor([1.0, 1.0])), model(x, torch.tensor([900.0, 900.0])))


@pytest.mark.parametrize("attention", MODES)
def test_save_load_round_trip(tmp_path, attention):
    model = randomise_zeros(DiT(DiTConfig(attention=attention, context_dim=24, pooled_context=True, **TINY)))
    model.save_pretrained(tmp_path / "dit")
    loaded = DiT.from_pretrained(tmp_path / "dit")
    assert loaded.config == model.config and not loaded.training
    assert "pos_embed" not in model.state_dict()                       # fixed: rebuilt, not stored
    x, (context, mask) = torch.randn(2, 4, 8, 8), text()
    assert torch.equal(model.eval()(x, torch.tensor([1, 2]), context, mask), loaded(x, torch.tensor([1, 2]), context, mask))
    with pytest.raises(WeightsError, match="weights folder not found"):
        DiT.from_pretrained(tmp_path / "missing")


@pytest.mark.parametrize("attention", MODES)
def test_a_few_gradient_steps_reduce_the_loss(attention):
    torch.manual_seed(0)
    model = DiT(DiTConfig(attention=attention, context_dim=24, **TINY))
    x, t, (context, mask) = torch.randn(4, 4, 8, 8), torch.randint(0, 1000, (4,)), text(B=4)
    target = torch.randn(4, 4, 8, 8)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = torch.nn.functional.mse_loss(model(x, t, context, mask), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def test_parameter_counts():
    w, depth = 64, 3
    counts = {a: DiT(DiTConfig(attention=a, context_dim=24, width=w, depth=depth, num_heads=2)).num_parameters()
              for a in MODES}
    for c in counts.values():
        assert c["total"] == c["embed"] + c["blocks"] + c["final"]
    # per block, ignoring biases: cross = self-attn 4w^2 + cross-attn 4w^2 + MLP 8w^2 + adaLN 6w^2 = 22 w^2;
    # joint = two streams of 18 w^2 (q, k, v, out 4w^2 + MLP 8w^2 + adaLN 6w^2), the last text stream
    # keeping only q, k, v and shift/scale (3w^2 + 2w^2).
    assert counts["cross"]["blocks"] == pytest.approx(depth * 22 * w * w, rel=0.05)
    assert counts["joint"]["blocks"] == pytest.approx(((2 * depth - 1) * 18 + 5) * w * w, rel=0.05)


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="'cross' or 'joint'"):
        DiT(DiTConfig(attention="both", **TINY))
    with pytest.raises(ValueError, match="divisible by num_heads"):
        DiT(DiTConfig(width=30, num_heads=4))
    model = DiT(DiTConfig(context_dim=24, **TINY))
    with pytest.raises(ValueError, match=r"expects x of shape \(B, 4, 8, 8\)"):
        model(torch.randn(1, 4, 16, 16), torch.tensor([1]), *text(B=1))
    with pytest.raises(ValueError, match="pass a context"):
        model(torch.randn(1, 4, 8, 8), torch.tensor([1]))
    with pytest.raises(ValueError, match="unconditional"):
        DiT(DiTConfig(**TINY))(torch.randn(1, 4, 8, 8), torch.tensor([1]), torch.randn(1, 3, 24))
