"""The command line: the demo works before and after training, and bad input gets a clear error."""
import subprocess
import sys

import pytest

from minildm.__main__ import main


def run_cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "minildm", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_demo_writes_a_picture_and_says_how_to_open_the_course(tmp_path):
    out = tmp_path / "demo.png"
    result = run_cli("demo", "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert out.stat().st_size > 10_000 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "jupyter lab notebooks/00_welcome.ipynb" in result.stdout


def test_data_preview(tmp_path):
    out = tmp_path / "p.png"
    assert main(["data", "preview", "--out", str(out), "-n", "4", "--resolution", "64"]) == 0
    assert out.exists()


@pytest.mark.parametrize("args, message", [
    (["train", "vae", "--steps", "-5"], "positive whole number"),
    (["train", "vae", "--steps", "ten"], "positive whole number"),
    (["train", "vae", "--preset", "huge"], "invalid choice"),
    (["train", "unicorn"], "invalid choice"),
    (["train", "vae", "--lr", "nan"], "positive"),
    (["data", "preview", "--resolution", "48"], "invalid choice"),
    (["generate", "a red circle", "--seed", "-1"], "seed"),
    (["generate", "a red circle", "-n", "0"], "positive whole number"),
])
def test_bad_flags_are_rejected_with_what_is_allowed(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_help_lists_every_command():
    result = run_cli("--help")
    for command in ("demo", "train", "evaluate", "generate", "img2img", "bench", "course", "data"):
        assert command in result.stdout


def test_a_preset_only_one_model_has_gives_a_one_line_error_for_the_others(tmp_path, capsys):
    code = main(["train", "vae", "--preset", "partial", "--out", str(tmp_path), "--run-dir", str(tmp_path / "runs")])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown preset 'partial' for vae; allowed: tiny, cpu, gpu, fast" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []                                   # nothing written


@pytest.mark.parametrize("args, message", [
    (["train", "ldm", "--init", "minildm/weights/vae"], "--init is for `train vae` only"),
    (["train", "stack", "--init", "minildm/weights/vae"], "--init is for `train vae` only"),
    (["train", "vae", "--init", "no/such/folder"], "weights folder not found: no/such/folder"),
])
def test_init_is_checked_before_any_training(args, message, tmp_path, capsys):
    code = main(args + ["--out", str(tmp_path / "out"), "--run-dir", str(tmp_path / "runs")])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()                                  # nothing written


def test_train_stack_trains_the_three_parts_a_pipeline_needs_on_each_other(tmp_path):
    out = tmp_path / "w"
    assert main(["train", "stack", "--preset", "tiny", "--out", str(out), "--run-dir", str(tmp_path / "runs")]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["clip", "ldm", "vae"]
    from minildm import LatentDiffusionPipeline
    pipe = LatentDiffusionPipeline.from_pretrained(out)          # the UNet was trained on this VAE and CLIP
    assert pipe.sources["vae"] == out / "vae" and pipe.sources["clip"] == out / "clip"
    assert pipe.config.vae_fingerprint and pipe.config.clip_fingerprint


def test_a_preset_one_model_lacks_stops_train_all_before_training(tmp_path, capsys):
    code = main(["train", "all", "--preset", "fast", "--out", str(tmp_path), "--run-dir", str(tmp_path / "runs")])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown preset 'fast' for flow; allowed:" in err and list(tmp_path.iterdir()) == []
