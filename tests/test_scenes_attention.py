"""Issue 16's measurement (recipes/scenes_attention.py): DiT-cross vs DiT-joint on the scenes stream,
trained on the same data and differing only in how text enters."""
import dataclasses
import json

import pytest
import torch

from minildm.__main__ import main
from minildm.recipes import flow
from minildm.recipes import scenes_attention as sa
from minildm.weights_io import PACKAGE_WEIGHTS

torch.set_num_threads(1)
pytestmark = pytest.mark.skipif(not (PACKAGE_WEIGHTS / "scenes" / "clip" / "model.safetensors").exists(),
                                reason="no shipped scenes CLIP")
TINY = sa.AttentionConfig(steps=2, batch_size=4, warmup_steps=1, latent_pool=16, seen_captions=2, held_captions=2,
                          eval_steps=(2, 1))


def test_the_two_cells_share_the_data_and_differ_only_in_attention():
    parts = sa.data_stream(TINY)
    cross, joint = (sa.job(d, TINY, parts) for d in sa.DENOISERS)
    first = [run.sample_batch(TINY.batch_size, torch.Generator().manual_seed(TINY.seed), "cpu") for run in (cross, joint)]
    assert all(torch.equal(a, b) for a, b in zip(*first))                  # the same first batch (train's stream)
    assert cross.cfg == joint.cfg and cross.loss_fn is not joint.loss_fn
    a, b = dataclasses.asdict(cross.model.config), dataclasses.asdict(joint.model.config)
    assert {k for k in a if a[k] != b[k]} == {"attention"} and (a["attention"], b["attention"]) == ("cross", "joint")
    assert dataclasses.replace(cross.preset, denoiser="dit-joint") == joint.preset
    assert joint.preset.objective == "flow" and joint.preset.timestep_sampling == "logit_normal"
    # the scenes CLIP, not the Shapes one, sets the context width and encodes the pipeline's captions
    assert cross.clip_dir == PACKAGE_WEIGHTS / "scenes" / "clip"
    assert a["context_dim"] == parts["clip"].config.text_width
    assert flow.make_pipeline(joint, joint.model).clip is parts["clip"]
    with pytest.raises(ValueError, match="dit-cross, dit-joint"):
        sa.job("unet", TINY, parts)


def test_compare_attention_writes_every_field(tmp_path):
    out = sa.compare_attention(TINY, json_path=tmp_path / "a.json")
    assert json.loads((tmp_path / "a.json").read_text()) == out
    assert list(out["cells"]) == ["dit-cross", "dit-joint"] and out["eval_captions"] == {"seen": 2, "held_out": 2}
    for row in out["cells"].values():
        assert row["parameters"] > 0 and row["ms_per_step"] > 0 and row["images_seen"] == 8
        assert set(row["machine_before"]) >= {"load_average", "threads"}
        assert set(row["euler"]) == {"2", "1"}
        for part in ("seen", "held_out"):
            graded = row["euler"]["2"][part]
            assert graded["count"] == 2 and 0 <= graded["binding"] <= 1 and "binding_se" in graded
            assert "colours swapped" in graded["errors"]
    assert out["cells"]["dit-joint"]["parameters"] > out["cells"]["dit-cross"]["parameters"]
    table = sa.markdown_table(out)
    assert "| dit-joint | 2.24M |" in table and "seen (2), 2 st." in table


def test_cli_dispatches_compare_attention(tmp_path, monkeypatch):
    seen = {}
    monkeypatch.setattr(sa, "main", lambda args: seen.update(vars(args)))
    assert main(["compare", "attention", "--quick", "--steps", "3", "--json", str(tmp_path / "x.json")]) == 0
    assert seen["quick"] and seen["steps"] == 3 and seen["compare_command"] == "attention"
