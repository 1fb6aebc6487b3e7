"""Issue 14, training side: a run folder never loses work to an ordinary mistake.

One test per failure the issue reproduced: the run and model config sharing
config.json (1), a rerun without --resume (2), a checkpoint without state.pt and the
keep-last-K fallback (3), two writers (4), a resume with other settings (5), a full
disk and unusable devices (7), an unclear state.pt error (8). The training task is
the tiny MLP of tests/_toy.py (milliseconds per step).
"""
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
import _toy  # noqa: E402
from minildm import checkpoint, runs, train  # noqa: E402
from minildm.unet import MLPConfig, MLPDenoiser, UNet  # noqa: E402
from minildm.weights_io import WeightsError  # noqa: E402

torch.set_num_threads(1)
posix_only = pytest.mark.skipif(os.name != "posix", reason="uses fork")


def toy_config(out_dir, **kw):
    base = dict(steps=20, batch_size=32, lr=3e-3, warmup_steps=3, ema_decay=0.9, log_every=1,
                checkpoint_every=5, device="cpu", seed=3, progress=False, out_dir=str(out_dir))
    return train.TrainConfig(**{**base, **kw})


def run(out_dir, sample_batch=_toy.sample_batch, **kw):
    return train.train(_toy.make_model(), _toy.loss_fn, sample_batch, toy_config(out_dir, **kw), "toy")


def dies_at(step):
    """A data stream that raises at `step` (0-based): a run that dies before it finishes."""
    calls = [0]

    def sample_batch(n, generator, device):
        calls[0] += 1
        if calls[0] > step:
            raise RuntimeError("the machine died")
        return _toy.sample_batch(n, generator, device)
    return sample_batch


def snapshot(folder: Path) -> dict:
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# -- 1. model weights and run state never share a file name ----------------------------------

def test_a_run_in_the_weights_folder_dies_and_the_weights_still_load(tmp_path):
    folder = tmp_path / "S"                              # --out S --run-dir S
    model = MLPDenoiser(MLPConfig(hidden=16, num_layers=1))
    model.save_pretrained(folder)
    with pytest.raises(RuntimeError, match="died"):
        run(folder, dies_at(12))
    loaded = MLPDenoiser.from_pretrained(folder)         # was: WeightsError unknown fields batch_size...
    assert torch.equal(_toy.flat_weights(loaded), _toy.flat_weights(model))
    written = {p.name for p in folder.iterdir()} - {"config.json", "model.safetensors"}
    assert written == {"run.json", "metrics.jsonl", "checkpoint", "checkpoint-000005"}


# -- 2. starting over needs --resume or --overwrite ------------------------------------------

def test_rerun_without_resume_or_overwrite_touches_nothing(tmp_path):
    run(tmp_path / "r")
    before = snapshot(tmp_path / "r")
    with pytest.raises(runs.RunExistsError, match="--resume.*--overwrite") as err:
        run(tmp_path / "r", seed=4)
    assert "already holds a training run" in str(err.value) and "step 20" in str(err.value)
    assert snapshot(tmp_path / "r") == before            # metrics not truncated, checkpoints kept
    assert isinstance(err.value, ValueError)             # the CLI prints it as one line


def test_overwrite_deletes_the_run_files_only(tmp_path, capsys):
    folder = tmp_path / "r"
    MLPDenoiser(MLPConfig(hidden=8, num_layers=1)).save_pretrained(folder)   # a model living there
    run(folder)
    result = run(folder, overwrite=True, steps=10)
    assert "--overwrite: deleted the previous run" in capsys.readouterr().out
    assert [row["step"] for row in train.read_metrics(folder)] == list(range(1, 11))
    assert checkpoint.checkpoint_step(folder / "checkpoint") == 10 and result.steps_run == 10
    assert not (folder / "checkpoint-000015").exists()
    MLPDenoiser.from_pretrained(folder)                   # the model's files survived
    with pytest.raises(runs.RunError, match="choose one"):
        run(folder, overwrite=True, resume=True)


def test_resume_keeps_the_metrics_up_to_the_checkpoint_even_after_a_torn_line(tmp_path):
    with pytest.raises(RuntimeError):
        run(tmp_path / "r", dies_at(13))
    with open(tmp_path / "r" / "metrics.jsonl", "a") as f:
        f.write('{"step": 14, "lo')                       # killed while writing a line
    run(tmp_path / "r", resume=True)
    assert [row["step"] for row in train.read_metrics(tmp_path / "r")] == list(range(1, 21))


# -- 3. keep the last K checkpoints; resume from the newest valid one, saying which ----------

def test_the_last_k_checkpoints_are_kept(tmp_path):
    run(tmp_path / "r", steps=40, keep_checkpoints=3)
    names = sorted(p.name for p in (tmp_path / "r").iterdir() if p.name.startswith("checkpoint"))
    assert names == ["checkpoint", "checkpoint-000030", "checkpoint-000035"]
    assert [checkpoint.checkpoint_step(tmp_path / "r" / n) for n in names] == [40, 30, 35]


def test_resume_falls_back_to_the_newest_valid_checkpoint_and_says_which(tmp_path, capsys):
    ref = run(tmp_path / "ref")
    with pytest.raises(RuntimeError):
        run(tmp_path / "r", dies_at(17))                  # checkpoints at 5, 10, 15
    state = tmp_path / "r" / "checkpoint" / "state.pt"
    state.write_bytes(state.read_bytes()[:100])           # the newest is corrupt
    resumed = run(tmp_path / "r", resume=True)
    out = capsys.readouterr().out
    assert "1 newer checkpoint(s) could not be read" in out and "checkpoint-000010 (step 10)" in out
    assert resumed.steps_run == 10
    assert torch.equal(_toy.flat_weights(resumed.raw_model), _toy.flat_weights(ref.raw_model))


def test_a_valid_legacy_checkpoint_old_is_used_when_the_newest_is_corrupt(tmp_path, capsys):
    with pytest.raises(RuntimeError):
        run(tmp_path / "r", dies_at(12), keep_checkpoints=2)
    folder = tmp_path / "r"
    (folder / "checkpoint-000005").rename(folder / "checkpoint.old")     # an older minildm's layout
    (folder / "checkpoint" / "model.safetensors").write_bytes(b"junk")
    result = run(folder, resume=True)
    assert "resuming from the newest valid one" in capsys.readouterr().out
    assert result.steps_run == 15


def test_resume_without_state_pt_refuses_instead_of_restarting(tmp_path):
    with pytest.raises(RuntimeError):
        run(tmp_path / "r", dies_at(7), keep_checkpoints=1)
    (tmp_path / "r" / "checkpoint" / "state.pt").unlink()
    before = snapshot(tmp_path / "r")
    with pytest.raises(train.CheckpointError, match="has no state.pt") as err:
        run(tmp_path / "r", resume=True)                   # was: "no checkpoint", step 0, overwrite
    assert "Nothing was deleted" in str(err.value) and "--overwrite" in str(err.value)
    assert snapshot(tmp_path / "r") == before


def test_resume_with_no_checkpoint_at_all_starts_at_step_0(tmp_path, capsys):
    result = run(tmp_path / "fresh", resume=True)          # nothing to lose: allowed
    assert result.steps_run == 20 and "starting at step 0" in capsys.readouterr().out


# -- 4. one writer per run folder ------------------------------------------------------------

def test_a_second_writer_gets_the_pid_of_the_first(tmp_path):
    folder = tmp_path / "r"
    folder.mkdir()
    with runs.RunLock(folder).acquire():
        with pytest.raises(runs.RunLockedError, match=f"in use by process {os.getpid()} on"):
            run(folder)
    assert not (folder / "run.lock").exists()              # released and removed
    run(folder)                                            # free again


@posix_only
def test_two_concurrent_writers_ten_trials_never_corrupt_a_run(tmp_path):
    ref = run(tmp_path / "ref")
    outcomes = []
    for trial in range(10):
        folder = tmp_path / f"trial{trial}"
        gate_r, gate_w = os.pipe()
        pids = []
        for _ in range(2):
            pid = os.fork()
            if pid == 0:                                    # a writer
                code = 1
                try:
                    os.close(gate_w)
                    os.read(gate_r, 1)                      # both start together
                    first = [True]

                    def slow_start(n, g, d):                # hold the lock a while
                        if first[0]:
                            time.sleep(0.4)
                            first[0] = False
                        return _toy.sample_batch(n, g, d)
                    run(folder, slow_start)
                    code = 0
                except runs.RunLockedError as err:
                    (tmp_path / f"lost{trial}_{os.getpid()}").write_text(str(err))
                    code = 3
                except BaseException:
                    code = 4
                finally:
                    os._exit(code)
            pids.append(pid)
        os.close(gate_r)
        os.write(gate_w, b"go")
        os.close(gate_w)
        codes = {pid: os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids}
        outcomes.append(sorted(codes.values()))
        winner = next(pid for pid, code in codes.items() if code == 0)
        loser = next(pid for pid, code in codes.items() if code == 3)
        message = (tmp_path / f"lost{trial}_{loser}").read_text()
        assert f"in use by process {winner} on" in message
        model = _toy.make_model()
        state = train.load_checkpoint(train.find_checkpoint(folder / "checkpoint"), model, None)
        assert state["step"] == 20
        assert torch.equal(_toy.flat_weights(model), _toy.flat_weights(ref.raw_model))
    assert outcomes == [[0, 3]] * 10


# -- 5. a resume with other settings says so -------------------------------------------------

def test_resume_with_other_settings_says_which(tmp_path, capsys):
    with pytest.raises(RuntimeError):
        run(tmp_path / "r", dies_at(7))
    run(tmp_path / "r", resume=True, lr=1e-3, batch_size=16, seed=9)
    out = capsys.readouterr().out
    assert "other settings (batch_size 32 -> 16, lr 0.003 -> 0.001, seed 3 -> 9)" in out
    assert "no longer match an uninterrupted run" in out


def test_resume_with_the_same_settings_says_nothing_about_them(tmp_path, capsys):
    with pytest.raises(RuntimeError):
        run(tmp_path / "r", dies_at(7))
    run(tmp_path / "r", resume=True)
    assert "other settings" not in capsys.readouterr().out


# -- 7. devices, unwritable folders, a full disk ---------------------------------------------

@pytest.mark.parametrize("name", ["meta", "foo", "cuda:x"])
def test_unusable_devices_get_one_clear_error(name):
    with pytest.raises(ValueError, match="allowed: auto, cpu, cuda"):
        train.pick_device(name)
    with pytest.raises(ValueError, match="allowed: auto, cpu, cuda"):
        UNet.from_pretrained(device=name)                 # the API checks like the CLI's --device


def test_an_unwritable_run_folder_fails_before_training(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(runs.RunError, match="cannot create or lock run folder .*afile/run"):
        run(tmp_path / "afile" / "run")


DISK_FULL_SCRIPT = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, {tests!r})
    import torch, _toy
    from minildm import train
    folder = sys.argv[1]
    calls = [0]

    def fill_the_disk_after_the_first_checkpoint(n, generator, device):
        calls[0] += 1
        if calls[0] == 7:
            with open(os.path.join(folder, "ballast"), "wb", buffering=0) as f:
                try:
                    while True:
                        f.write(b"x" * 4096)
                except OSError:                   # the disk is full now
                    pass
        return _toy.sample_batch(n, generator, device)

    cfg = train.TrainConfig(steps=20, batch_size=32, lr=3e-3, warmup_steps=3, log_every=5,
                            checkpoint_every=5, device="cpu", progress=False, out_dir=folder + "/run")
    try:
        train.train(_toy.make_model(), _toy.loss_fn, fill_the_disk_after_the_first_checkpoint, cfg, "toy")
        error = None
    except ValueError as err:                         # what the CLI prints as one line
        error = str(err)
    os.remove(os.path.join(folder, "ballast"))
    model = _toy.make_model()
    found = train.find_checkpoint(folder + "/run/checkpoint")
    state = train.load_checkpoint(found, model, None)
    print(json.dumps({{"error": error, "kept": str(found), "step": state["step"],
                      "leftovers": sorted(os.listdir(folder + "/run"))}}))
""")


def _namespace_mount_prefix(mount_point: Path, size_kb: int) -> list[str] | None:
    """A command prefix that runs a program with a private size-limited tmpfs at mount_point."""
    if not shutil.which("unshare"):
        return None
    for flags in ("-rm", "-m"):                           # as any user (user namespace), or as root
        prefix = ["unshare", flags, "sh", "-c",
                  f'mount -t tmpfs -o size={size_kb}k tmpfs "$0" && exec "$@"', str(mount_point)]
        if subprocess.run(prefix + ["true"], capture_output=True).returncode == 0:
            return prefix
    return None


@pytest.mark.skipif(os.name != "posix", reason="needs a size-limited file system (Linux tmpfs)")
def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(tmp_path):
    mount_point = tmp_path / "small_disk"
    mount_point.mkdir()
    prefix = _namespace_mount_prefix(mount_point, 256)
    if prefix is None:
        pytest.skip("cannot mount a private tmpfs here (no unshare, or user/mount namespaces are "
                    "not allowed), so a full disk cannot be made safely")
    script = tmp_path / "disk_full.py"
    script.write_text(DISK_FULL_SCRIPT.format(tests=str(Path(__file__).parent)))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run(prefix + [sys.executable, str(script), str(mount_point)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    import json
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    error = result["error"]
    assert error is not None and "\n" not in error
    assert "No space left on device" in error and "checkpoint.tmp-" in error
    assert f"The previous checkpoint, {result['kept']}, is intact" in error
    assert result["step"] == 5 and result["kept"].endswith("run/checkpoint")
    assert not any(name.startswith("checkpoint.tmp") for name in result["leftovers"])


# -- 8. a hand-edited state.pt names the file -------------------------------------------------

def test_a_bad_step_in_state_pt_names_the_file(tmp_path):
    run(tmp_path / "r", steps=5, keep_checkpoints=1)
    path = tmp_path / "r" / "checkpoint" / "state.pt"
    state = torch.load(path, weights_only=True)
    state["step"] = "five"
    torch.save(state, path)
    with pytest.raises(train.CheckpointError, match=r"state.pt: step is 'five'; expected a whole number"):
        run(tmp_path / "r", resume=True, steps=10)


def test_an_optimizer_state_of_another_model_names_the_file(tmp_path):
    run(tmp_path / "r", steps=5, keep_checkpoints=1)
    path = tmp_path / "r" / "checkpoint" / "state.pt"
    state = torch.load(path, weights_only=True)
    state["optimizer"]["param_groups"] = state["optimizer"]["param_groups"][:1]
    torch.save(state, path)
    with pytest.raises(train.CheckpointError, match="state.pt: the optimizer state does not fit"):
        run(tmp_path / "r", resume=True, steps=10)


def test_checkpoint_errors_are_weights_errors():
    assert issubclass(train.CheckpointError, WeightsError) and issubclass(runs.RunError, ValueError)
