"""Lesson checks: does the student's function do what the library's does?

Each exercise in a notebook is followed by a cell such as

    checks.q_sample(my_q_sample)

A check calls the student's function on random inputs and edge cases, compares
with the reference in the library, and either prints one success line or raises
an AssertionError (CheckFailed) whose message is a *hint* (wrong shape? forgot a
square root? broadcasting over t?). tests/test_checks*.py feed every check
deliberately wrong implementations to prove that it catches them.

One module per lesson (lesson00.py ... lesson07.py); _core.py holds expect,
passed and the one matcher of typical mistakes they share. Every check is also
importable from here, which is how the notebooks call them.
"""
from ._core import CheckFailed, expect, passed  # noqa: F401
from .lesson00 import caption_of, tokenize  # noqa: F401
from .lesson01 import q_sample, alpha_bar_from_betas  # noqa: F401
from .lesson02 import training_loss, ddpm_step, res_block  # noqa: F401
from .lesson03 import predict_x0, ddim_step  # noqa: F401
from .lesson04 import clip_logits, clip_loss, crop_keeps_caption, zero_shot_predict  # noqa: F401
from .lesson05 import reparameterize, kl_divergence, vae_loss  # noqa: F401
from .lesson06 import guided_eps, sdedit_start, cross_attention  # noqa: F401
from .lesson07 import lr_schedule, ema_update, shard_batch  # noqa: F401
from .lesson08 import flow_loss, euler_step, patchify, modulate  # noqa: F401
from .lesson09 import inpaint_blend, ddim_inversion_step  # noqa: F401
from .lesson10 import relation_of, swap_test_wins  # noqa: F401
