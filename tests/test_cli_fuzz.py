"""Random command lines for `generate` and `img2img`: only a clear error (exit code 2, one line
on stderr) or a written image - never a traceback from deep inside torch."""
import string

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

from minildm.__main__ import main
from minildm.text import WORDS

from test_pipeline import tiny_pipeline  # tests/ is on sys.path (pytest rootdir-less import)

WORD = st.one_of(st.sampled_from(WORDS), st.text(string.ascii_letters + "., !", min_size=1, max_size=8))
PROMPT = st.lists(WORD, max_size=16).map(" ".join)
NUMBER = st.one_of(st.integers(-5, 6).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
                   st.sampled_from(["", "abc", "1e309", "-0", "0.6", "3"]))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_fuzz")
    tiny_pipeline().save_pretrained(root / "pipe")
    from PIL import Image
    Image.new("RGB", (32, 32), (255, 0, 0)).save(root / "red.png")
    Image.new("RGB", (17, 32)).save(root / "odd.png")
    (root / "text.png").write_text("not a png")
    return root


def run(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exit_info:       # argparse: bad flag value, with its usage line
        code = exit_info.code
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    return code, captured.err


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(prompt=PROMPT, steps=NUMBER, guidance=NUMBER, n=NUMBER, seed=NUMBER)
def test_generate_random_argv(folders, capsys, prompt, steps, guidance, n, seed):
    torch.set_num_threads(1)
    out = folders / "g.png"
    out.unlink(missing_ok=True)
    code, err = run(["generate", prompt, "--steps", steps, "--guidance", guidance, "-n", n, "--seed", seed,
                     "--weights", str(folders / "pipe"), "--out", str(out)], capsys)
    assert code in (0, 2)
    if code == 0:
        assert out.exists()
    else:
        assert err.strip(), "an error must say what is wrong"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(image=st.sampled_from(["red.png", "odd.png", "text.png", "missing.png"]), prompt=PROMPT,
       strength=NUMBER, steps=NUMBER)
def test_img2img_random_argv(folders, capsys, image, prompt, strength, steps):
    torch.set_num_threads(1)
    out = folders / "e.png"
    out.unlink(missing_ok=True)
    code, err = run(["img2img", str(folders / image), prompt, "--strength", strength, "--steps", steps,
                     "--weights", str(folders / "pipe"), "--out", str(out)], capsys)
    assert code in (0, 2)
    if code == 0:
        assert image == "red.png" and out.exists()
    else:
        assert err.strip()
