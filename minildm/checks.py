"""Lesson checks: does the student's function do what the library's does?

Each exercise in a notebook is followed by a cell such as

    checks.q_sample(my_q_sample)

A check calls the student's function on random inputs and edge cases, compares
with the reference in the library, and either prints one success line or raises
an AssertionError whose message is a *hint* (wrong shape? forgot a square root?
broadcasting over t?). tests/test_checks*.py feed every check deliberately wrong
implementations to prove that it catches them.

Writing a check: use `expect(condition, hint)` for each property, most basic
first (type, shape) so the first failing hint is the most useful one, then
finish with `passed("what was checked")`.
"""
from __future__ import annotations

import torch


class CheckFailed(AssertionError):
    """A lesson check failed; the message is a hint for the student."""


def expect(condition, hint: str) -> None:
    """Raise CheckFailed(hint) unless condition holds."""
    if not bool(condition):
        raise CheckFailed("Not yet: " + hint)


def expect_tensor(value, shape=None, name: str = "your function's result") -> torch.Tensor:
    """Check that value is a tensor (of the given shape); return it."""
    expect(isinstance(value, torch.Tensor),
           f"{name} should be a torch.Tensor, got {type(value).__name__}.")
    if shape is not None:
        expect(tuple(value.shape) == tuple(shape),
               f"{name} should have shape {tuple(shape)}, got {tuple(value.shape)}.")
    expect(torch.isfinite(value).all(), f"{name} contains NaN or inf values.")
    return value


def expect_close(actual: torch.Tensor, expected: torch.Tensor, hint: str,
                 atol: float = 1e-4, rtol: float = 1e-4) -> None:
    """Check values against the reference, with the hint if they differ."""
    err = (actual.detach().float() - expected.detach().float()).abs().max().item()
    expect(torch.allclose(actual.detach().float(), expected.detach().float(), atol=atol, rtol=rtol),
           f"{hint} (largest difference from the reference: {err:.3g})")


def passed(what: str) -> None:
    """Print the success line of a check."""
    print(f"Correct! {what}")


def run_student_function(fn, *args, name: str = "your function", **kwargs):
    """Call the student's function; a NotImplementedError becomes a friendly hint."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError as err:
        raise CheckFailed(f"Not yet: {name} still raises NotImplementedError - "
                          f"replace the `raise NotImplementedError` line with your code.") from err


# ----------------------------------------------------------------------------
# Lesson 00 - welcome (notebooks/00_welcome.ipynb)

def caption_of(student_caption) -> None:
    """Exercise: build the canonical caption from a label vector."""
    from .data import shapes
    labels = shapes.all_labels()
    for i in (0, 17, 100, 200, 323):
        got = run_student_function(student_caption, labels[i], name="caption")
        expect(isinstance(got, str), f"return a str, got {type(got).__name__}.")
        want = shapes.caption(labels[i])
        expect(got == want, f"for labels {labels[i].tolist()} the caption should be {want!r}, "
                            f"got {got!r}. Look at the template 'a {{size}} {{color}} {{shape}} {{where}}' "
                            f"and use WHERE for the position words.")
    passed("your captions match the canonical ones for every attribute.")


def count_captions(student_count) -> None:
    """Exercise: how many canonical captions are there?"""
    from .data import shapes
    expect(isinstance(student_count, int), f"give a whole number, got {type(student_count).__name__}.")
    expect(student_count == shapes.NUM_CAPTIONS,
           "multiply the number of choices of each attribute: shapes x colors x sizes x positions.")
    passed(f"{shapes.NUM_CAPTIONS} = 3 shapes x 6 colors x 2 sizes x 9 positions.")


# ----------------------------------------------------------------------------
# Lesson 01 - forward diffusion (notebooks/01_forward_diffusion.ipynb)

def _schedule_for_checks(kind: str = "linear"):
    from .schedule import NoiseSchedule
    return NoiseSchedule(kind, 1000)


def _diagnose(got: torch.Tensor, wrong_answers: dict, hint: str, atol: float = 1e-4) -> None:
    """Raise the hint of the first typical wrong answer that `got` matches, else the generic hint."""
    for wrong_hint, wrong in wrong_answers.items():
        if wrong is not None and wrong.shape == got.shape and torch.allclose(got.float(), wrong.float(), atol=atol):
            raise CheckFailed("Not yet: " + wrong_hint)
    raise CheckFailed("Not yet: " + hint)


def _per_example(values: torch.Tensor, ndim: int) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) with ndim dimensions (what extract does)."""
    return values.view(-1, *[1] * (ndim - 1))


def q_sample(student_q_sample) -> None:
    """Exercise: x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) eps, for any shape, one t per example.

    student_q_sample(schedule, x0, t, noise) -> xt
    """
    schedule = _schedule_for_checks()
    g = torch.Generator().manual_seed(1)
    # Batch of 8 images of width 8: a (B,) tensor broadcast without reshaping lines up with W, silently.
    for shape in ((8, 3, 8, 8), (5, 2)):
        x0, noise = torch.rand(shape, generator=g) * 2 - 1, torch.randn(shape, generator=g)
        t = torch.randint(0, 1000, (shape[0],), generator=g)
        t[0], t[-1] = 0, 999
        try:
            got = run_student_function(student_q_sample, schedule, x0, t, noise, name="q_sample")
        except RuntimeError as err:
            raise CheckFailed(f"Not yet: q_sample crashed on x0 of shape {shape} ({err}). Each example has "
                              "its own t: reshape alpha_bar[t] from (B,) to (B, 1, 1, 1) (or use "
                              "schedule.extract-like reshaping) so it broadcasts over the other dims.") from err
        expect_tensor(got, shape, "q_sample's result")
        want = schedule.q_sample(x0, t, noise)
        if torch.allclose(got, want, atol=1e-5):
            continue
        ab = _per_example(schedule.alpha_bar[t], len(shape))
        a = _per_example(schedule.alpha[t], len(shape))
        wrong = {
            "you forgot a square root: x_t = sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * noise "
            "(the coefficients are standard deviations, their squares add to 1).":
                ab * x0 + (1 - ab) * noise,
            "only the noise term lost its square root: it is sqrt(1 - alpha_bar_t) * noise.":
                ab.sqrt() * x0 + (1 - ab) * noise,
            "only the signal term lost its square root: it is sqrt(alpha_bar_t) * x0.":
                ab * x0 + (1 - ab).sqrt() * noise,
            "you used alpha_t (one step) instead of alpha_bar_t (the product over all steps up to t).":
                a.sqrt() * x0 + (1 - a).sqrt() * noise,
            "x0 and noise are swapped: the signal gets sqrt(alpha_bar_t), the noise sqrt(1 - alpha_bar_t).":
                (1 - ab).sqrt() * x0 + ab.sqrt() * noise,
            "t is 0-based here: use alpha_bar[t], not alpha_bar[t - 1].":
                schedule.q_sample(x0, (t - 1).clamp(min=0), noise),
        }
        if len(shape) == 4:
            flat = schedule.alpha_bar[t]                                     # (B,) broadcast over W
            wrong["wrong broadcasting over t: alpha_bar[t] has shape (B,) and lined up with the last "
                  "dimension. Reshape it to (B, 1, 1, 1) so each example gets its own t."] = \
                flat.sqrt() * x0 + (1 - flat).sqrt() * noise
        _diagnose(got, wrong, f"for x0 of shape {shape} your x_t differs from "
                              "sqrt(alpha_bar_t) * x0 + sqrt(1 - alpha_bar_t) * noise.")
    passed("q_sample matches the closed form for points and images, one t per example.")


def alpha_bar_from_betas(student_alpha_bar) -> None:
    """Exercise: alpha_bar_t = prod_{s <= t} (1 - beta_s).

    student_alpha_bar(beta (T,)) -> alpha_bar (T,)
    """
    for kind in ("linear", "cosine"):
        schedule = _schedule_for_checks(kind)
        beta = schedule.beta.clone()
        got = run_student_function(student_alpha_bar, beta, name="alpha_bar_from_betas")
        expect_tensor(got, beta.shape, "alpha_bar")
        want = schedule.alpha_bar
        if torch.allclose(got.float(), want, rtol=1e-4, atol=1e-6):
            continue
        alpha = 1 - beta
        wrong = {
            "you returned alpha = 1 - beta; alpha_bar is the running product of alpha (torch.cumprod).": alpha,
            "you multiplied the betas; alpha_bar multiplies alpha = 1 - beta.": torch.cumprod(beta, 0),
            "1 - cumprod(beta) is not it: first alpha = 1 - beta, then the running product.":
                1 - torch.cumprod(beta, 0),
            "a sum is not a product: use torch.cumprod, not cumsum.": 1 - torch.cumsum(beta, 0),
            "that is alpha_bar shifted by one step (alpha_bar_{t-1}): t is 0-based, so alpha_bar[0] = alpha[0].":
                schedule.alpha_bar_prev,
            "you took the product of ALL alphas for every t; alpha_bar_t stops at t (a running product).":
                torch.full_like(beta, float(torch.prod(alpha))),
        }
        _diagnose(got, wrong, f"for the {kind} schedule your alpha_bar differs from the running product "
                              "of (1 - beta).", atol=1e-6)
    passed("alpha_bar is the running product of (1 - beta) for the linear and cosine schedules.")


# ----------------------------------------------------------------------------
# Lesson 02 - DDPM (notebooks/02_ddpm.ipynb)

def _toy_denoiser(seed: int = 0):
    """A small, fixed, t-dependent MLP standing in for the network in lesson checks."""
    from .unet import MLPConfig, MLPDenoiser
    with torch.random.fork_rng():  # leave the notebook's random stream alone
        torch.manual_seed(seed)
        model = MLPDenoiser(MLPConfig(hidden=32, num_layers=2)).eval()
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.3)
    return model


def training_loss(student_loss) -> None:
    """Exercise: the DDPM loss mean((eps - model(x_t, t))^2) with x_t from q_sample.

    student_loss(model, schedule, x0, t, noise) -> scalar tensor
    """
    from .ddpm import diffusion_loss
    schedule = _schedule_for_checks()
    model = _toy_denoiser()
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(64, 2, generator=g) * 2 - 1
    noise = torch.randn(64, 2, generator=g)
    t = torch.randint(0, 1000, (64,), generator=g)
    with torch.no_grad():
        got = run_student_function(student_loss, model, schedule, x0, t, noise, name="the training loss")
        expect(isinstance(got, torch.Tensor), f"return a tensor, got {type(got).__name__}.")
        expect(got.ndim == 0, f"the loss should be one number (a 0-d tensor, use .mean()), got shape "
                              f"{tuple(got.shape)}.")
        want = diffusion_loss(model, schedule, x0, t=t, noise=noise)
        if torch.allclose(got, want, rtol=1e-4):
            passed(f"your loss {got.item():.4f} equals the reference: the network learns to predict the noise.")
            return
        ab = schedule.alpha_bar[t][:, None]
        xt = schedule.q_sample(x0, t, noise)
        eps_pred = model(xt, t)
        wrong = {
            "the target is the noise that was added (noise), not x0.": ((eps_pred - x0) ** 2).mean(),
            "the network should see the noised x_t, not x0: xt = schedule.q_sample(x0, t, noise).":
                ((model(x0, t) - noise) ** 2).mean(),
            "you forgot the square roots when noising: use schedule.q_sample(x0, t, noise).":
                ((model(ab * x0 + (1 - ab) * noise, t) - noise) ** 2).mean(),
            "use the mean of the squared error, not the sum.": ((eps_pred - noise) ** 2).sum(),
            "that is the absolute error; DDPM's simple loss squares the error.": (eps_pred - noise).abs().mean(),
            "the loss is the mean squared error; you took a square root (RMSE).":
                ((eps_pred - noise) ** 2).mean().sqrt(),
            "pass the timesteps t to the model: model(xt, t).":
                ((model(xt, torch.zeros_like(t)) - noise) ** 2).mean(),
        }
        _diagnose(got.reshape(()), {k: v.reshape(()) for k, v in wrong.items()},
                  f"your loss is {got.item():.4f}, the reference is {want.item():.4f}. Noise x0 with "
                  "q_sample, predict the noise with model(xt, t), and take the mean squared error to noise.",
                  atol=1e-5)


def ddpm_step(student_step) -> None:
    """Exercise: one reverse step of DDPM Algorithm 2, with sigma_t^2 = posterior variance.

    student_step(schedule, xt, t: int, eps_pred, z) -> x_prev
    """
    schedule = _schedule_for_checks()
    g = torch.Generator().manual_seed(3)
    for t in (999, 500, 10, 1, 0):
        xt, eps, z = (torch.randn(4, 3, 8, 8, generator=g) for _ in range(3))
        got = run_student_function(student_step, schedule, xt, t, eps, z, name="ddpm_step")
        expect_tensor(got, xt.shape, "x_prev")
        t_batch = torch.full((4,), t)
        x0_pred = schedule.predict_x0(xt, t_batch, eps)
        mean, var = schedule.posterior_mean_variance(x0_pred, xt, t_batch)
        want = mean + var.sqrt() * z
        if torch.allclose(got, want, atol=1e-4):
            continue
        b, a, ab = schedule.beta[t], schedule.alpha[t], schedule.alpha_bar[t]
        alg2_mean = (xt - b / (1 - ab).sqrt() * eps) / a.sqrt()
        wrong = {
            "at t = 0 (the last step) add no noise: x_0 is the mean itself.":
                mean + schedule.beta[t].sqrt() * z if t == 0 else None,
            "sigma_t is a standard deviation: multiply z by sqrt(posterior_variance[t]), not the variance.":
                mean + var * z,
            "the exercise asks for sigma_t^2 = schedule.posterior_variance[t] (beta tilde); "
            "sigma_t^2 = beta_t is DDPM's other valid choice, but not the one DDPMSampler uses.":
                alg2_mean + b.sqrt() * z if t > 0 else None,
            "divide by sqrt(alpha_t), not alpha_t.": (xt - b / (1 - ab).sqrt() * eps) / a + var.sqrt() * z,
            "the noise coefficient is beta_t / sqrt(1 - alpha_bar_t): you forgot the square root.":
                (xt - b / (1 - ab) * eps) / a.sqrt() + var.sqrt() * z,
            "use alpha_t (this step) in 1 / sqrt(alpha_t), not alpha_bar_t.":
                (xt - b / (1 - ab).sqrt() * eps) / ab.sqrt() + var.sqrt() * z,
            "you added no noise: x_{t-1} = mean + sigma_t * z for t > 0.": mean if t > 0 else None,
        }
        _diagnose(got, wrong, f"at t = {t} your x_(t-1) differs from "
                              "(x_t - beta_t / sqrt(1 - alpha_bar_t) * eps) / sqrt(alpha_t) + sigma_t * z.")
    passed("your DDPM step matches Algorithm 2 at t = 999, 500, 10, 1 and 0.")


# ----------------------------------------------------------------------------
# Lesson 03 - DDIM (notebooks/03_ddim.ipynb)

def predict_x0(student_predict_x0) -> None:
    """Exercise: invert q_sample, x0_pred = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t).

    student_predict_x0(schedule, xt, t (B,), eps_pred) -> x0_pred
    """
    schedule = _schedule_for_checks()
    g = torch.Generator().manual_seed(4)
    xt, eps = torch.randn(8, 3, 8, 8, generator=g), torch.randn(8, 3, 8, 8, generator=g)
    t = torch.tensor([0, 3, 50, 200, 400, 600, 800, 999])
    try:
        got = run_student_function(student_predict_x0, schedule, xt, t, eps, name="predict_x0")
    except RuntimeError as err:
        raise CheckFailed(f"Not yet: predict_x0 crashed ({err}). Reshape alpha_bar[t] to (B, 1, 1, 1) "
                          "so each example uses its own t.") from err
    expect_tensor(got, xt.shape, "x0_pred")
    want = schedule.predict_x0(xt, t, eps)
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
        ab = _per_example(schedule.alpha_bar[t], 4)
        a = _per_example(schedule.alpha[t], 4)
        flat = schedule.alpha_bar[t]
        _diagnose(got, {
            "you forgot a square root: x0 = (x_t - sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_bar_t).":
                (xt - (1 - ab) * eps) / ab,
            "divide by sqrt(alpha_bar_t), not alpha_bar_t.": (xt - (1 - ab).sqrt() * eps) / ab,
            "subtract the noise, do not add it: x_t = sqrt(ab) x0 + sqrt(1 - ab) eps, solved for x0.":
                (xt + (1 - ab).sqrt() * eps) / ab.sqrt(),
            "use alpha_bar_t (the whole way from x0), not alpha_t (one step).":
                (xt - (1 - a).sqrt() * eps) / a.sqrt(),
            "wrong broadcasting over t: reshape alpha_bar[t] from (B,) to (B, 1, 1, 1).":
                (xt - (1 - flat).sqrt() * eps) / flat.sqrt(),
        }, "your x0_pred differs from (x_t - sqrt(1 - alpha_bar_t) * eps) / sqrt(alpha_bar_t).", atol=1e-3)
    passed("x0_pred inverts q_sample for every t in the batch.")


def ddim_step(student_step) -> None:
    """Exercise: one DDIM update from t to prev_t (prev_t = -1 means the last step, alpha_bar = 1).

    student_step(schedule, xt, eps_pred, t: int, prev_t: int, eta: float, z) -> x_prev
    """
    from .samplers import DDIMSampler
    schedule = _schedule_for_checks()
    g = torch.Generator().manual_seed(5)
    for num_steps, eta, t in ((50, 0.0, 999), (50, 0.0, 19), (10, 0.0, 499), (10, 1.0, 599),
                              (50, 0.5, 199), (10, 1.0, 99)):
        sampler = DDIMSampler(schedule, num_steps, eta=eta, clip_x0=False)
        prev_t = sampler.prev_timestep(t)
        xt, eps = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
        noise_seed = int(torch.randint(0, 2 ** 31, (1,), generator=g))
        z = torch.randn(xt.shape, generator=torch.Generator().manual_seed(noise_seed))
        got = run_student_function(student_step, schedule, xt, eps, t, prev_t, eta, z, name="ddim_step")
        if prev_t < 0 and isinstance(got, torch.Tensor) and not torch.isfinite(got).all():
            raise CheckFailed("Not yet: the last step (prev_t = -1) gave NaN. prev_t = -1 means 'after the "
                              "last step': use alpha_bar_prev = 1 there, not alpha_bar[-1] (Python's -1 "
                              "index is the LAST timestep, pure noise).")
        expect_tensor(got, xt.shape, "x_prev")
        want, x0_pred = sampler.step(eps, t, xt, generator=torch.Generator().manual_seed(noise_seed))
        if torch.allclose(got, want, atol=1e-3, rtol=1e-3):
            continue
        ab = schedule.alpha_bar[t]
        ab_prev = schedule.alpha_bar[prev_t] if prev_t >= 0 else torch.tensor(1.0)
        sigma = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)).sqrt()
        last = schedule.alpha_bar[-1]
        noise_term = sigma * z if prev_t >= 0 else 0 * z
        wrong = {
            "prev_t = -1 means 'after the last step': use alpha_bar_prev = 1 there, not alpha_bar[-1] "
            "(Python's -1 index is the LAST timestep, pure noise).":
                last.sqrt() * x0_pred + (1 - last).sqrt() * eps if prev_t < 0 else None,
            "the x0 term needs sqrt(alpha_bar_prev), not alpha_bar_prev.":
                ab_prev * x0_pred + (1 - ab_prev - sigma ** 2).sqrt() * eps + noise_term,
            "the direction term is sqrt(1 - alpha_bar_prev - sigma^2) * eps: you forgot the square root.":
                ab_prev.sqrt() * x0_pred + (1 - ab_prev - sigma ** 2) * eps + noise_term,
            "with eta > 0 the direction shrinks: sqrt(1 - alpha_bar_prev - sigma^2), not sqrt(1 - alpha_bar_prev).":
                ab_prev.sqrt() * x0_pred + (1 - ab_prev).sqrt() * eps + noise_term if eta > 0 else None,
            "with eta > 0 add fresh noise sigma * z, sigma = eta * sqrt((1 - ab_prev) / (1 - ab)) "
            "* sqrt(1 - ab / ab_prev).":
                ab_prev.sqrt() * x0_pred + (1 - ab_prev - sigma ** 2).sqrt() * eps if eta > 0 else None,
        }
        a_t = schedule.alpha[t]
        x0_alpha = (xt - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        wrong["use alpha_bar (cumulative), not alpha: x0_pred = (x_t - sqrt(1 - alpha_bar_t) eps) / "
              "sqrt(alpha_bar_t)."] = ab_prev.sqrt() * x0_alpha + (1 - ab_prev - sigma ** 2).sqrt() * eps + noise_term
        _diagnose(got, wrong, f"for t = {t} -> prev_t = {prev_t} with eta = {eta} your x_prev differs from "
                              "sqrt(ab_prev) x0_pred + sqrt(1 - ab_prev - sigma^2) eps + sigma z.", atol=1e-3)
    passed("your DDIM step matches DDIMSampler for eta = 0, 0.5 and 1, including the last step.")


# ----------------------------------------------------------------------------
# Lesson 04 - CLIP (notebooks/04_clip.ipynb)

def clip_logits(student_logits) -> None:
    """Exercise: student_logits(image_features (N, D), text_features (M, D), t) -> (N, M)
    = min(exp(t), 100) * cos(image_i, text_j)."""
    import math
    import torch.nn.functional as F
    from .clip import MAX_LOGIT_SCALE
    g = torch.Generator().manual_seed(4)
    img, txt = 3 * torch.randn(5, 8, generator=g), 0.5 * torch.randn(7, 8, generator=g)  # not normalised
    for t in (math.log(1 / 0.07), 0.0, math.log(250.0)):
        t_param = torch.tensor(t)
        got = expect_tensor(run_student_function(student_logits, img.clone(), txt.clone(), t_param.clone(),
                                                 name="your logits function"),
                            (5, 7), "the logits (one row per image, one column per text)")
        img_n, txt_n = F.normalize(img, dim=-1), F.normalize(txt, dim=-1)
        scale = min(math.exp(t), MAX_LOGIT_SCALE)
        want = scale * img_n @ txt_n.T
        if torch.allclose(got, scale * img @ txt.T, atol=1e-3) or torch.allclose(got, img @ txt.T, atol=1e-3):
            expect(False, "forgot to L2-normalise the features: cosine similarity needs unit vectors "
                          "(F.normalize(x, dim=-1)).")
        expect(not torch.allclose(got, img_n @ txt_n.T, atol=1e-4) or abs(scale - 1) < 1e-6,
               "forgot the temperature: multiply the cosine similarities by exp(t).")
        expect(not torch.allclose(got, t * img_n @ txt_n.T, atol=1e-4) or abs(t - scale) < 1e-6,
               "t is the *log* of the scale: multiply by exp(t), not by t.")
        if t > math.log(MAX_LOGIT_SCALE):
            expect(not torch.allclose(got, math.exp(t) * img_n @ txt_n.T, atol=1e-3),
                   f"clamp the scale at {MAX_LOGIT_SCALE:g}: exp(t) = {math.exp(t):.0f} is too large.")
        expect_close(got, want, "the logits differ from scale * cos(image_i, text_j)", atol=1e-4)
    passed("scaled cosine-similarity logits, normalised, with the clamped temperature.")


def clip_loss(student_loss) -> None:
    """Exercise: student_loss(logits_per_image (B, B)) -> the symmetric cross-entropy (a scalar)."""
    import torch.nn.functional as F
    from .clip import clip_loss as reference
    g = torch.Generator().manual_seed(4)
    for b in (2, 6, 16):
        logits = 5 * torch.randn(b, b, generator=g)                       # not symmetric on purpose
        got = run_student_function(student_loss, logits.clone(), name="your loss")
        expect(isinstance(got, torch.Tensor), f"return a torch.Tensor, got {type(got).__name__}.")
        expect(got.numel() == 1, f"the loss should be one number (a scalar), got shape {tuple(got.shape)}. "
                                 "Average over the batch.")
        target = torch.arange(b)
        rows, cols = F.cross_entropy(logits, target), F.cross_entropy(logits.T, target)
        expect(not torch.isclose(got.reshape(()), rows, atol=1e-5),
               "only the image -> text direction (rows). Add the text -> image direction "
               "(cross-entropy over the columns, logits.T) and average the two.")
        expect(not torch.isclose(got.reshape(()), cols, atol=1e-5),
               "only the text -> image direction (columns). Add the image -> text direction (rows).")
        expect(not torch.isclose(got.reshape(()), rows + cols, atol=1e-5),
               "you added the two directions: average them, (rows + columns) / 2.")
        expect_close(got.reshape(()), reference(logits),
                     "the loss differs from (CE(logits, arange(B)) + CE(logits.T, arange(B))) / 2; "
                     "the target of row i is column i", atol=1e-5)
    perfect = run_student_function(student_loss, 100 * torch.eye(4), name="your loss")
    expect(float(perfect) < 1e-3, "a perfectly matched batch (large diagonal) should give a loss near 0.")
    passed("the symmetric contrastive loss matches the reference (both directions, averaged).")


def zero_shot_predict(student_predict) -> None:
    """Exercise: student_predict(model, images (N, 3, H, W), prompts list[str]) -> (N,) index of the
    best prompt for each image."""
    from .clip import PRESETS, MiniCLIP
    from .data import shapes
    from .text import tokenize
    from .weights_io import WeightsError
    try:
        model = MiniCLIP.from_pretrained()                                # the shipped weights
    except WeightsError:
        torch.manual_seed(4)
        model = MiniCLIP(PRESETS["tiny"].model).eval()                    # any model will do
    prompts = ["a small red circle on the left", "a large blue square in the center",
               "a small green triangle at the top", "a large cyan circle in the bottom right"]
    labels = torch.stack([shapes.labels_of("circle", "red", "small", "left"),
                          shapes.labels_of("square", "blue", "large", "center"),
                          shapes.labels_of("triangle", "green", "small", "top"),
                          shapes.labels_of("circle", "cyan", "large", "bottom right"),
                          shapes.labels_of("square", "blue", "large", "center"),
                          shapes.labels_of("circle", "red", "small", "left")])
    images = shapes.render(labels, model.config.image_size, seed=4)     # (6, 3, H, W)
    got = expect_tensor(run_student_function(student_predict, model, images, prompts, name="your prediction"),
                        None, "the predictions")
    expect(got.shape == (6,), f"return one index per image, shape (6,), got {tuple(got.shape)}. "
                              "Take the argmax over the prompts (dim=1), not over the images.")
    with torch.no_grad():
        sim = model.encode_image(images) @ model.encode_text(tokenize(prompts)).T  # (6, 4)
    expect(not torch.equal(got.long(), sim.argmin(1)) or torch.equal(sim.argmin(1), sim.argmax(1)),
           "you took the *least* similar prompt: use argmax.")
    expect(torch.equal(got.long(), sim.argmax(1)),
           "predictions differ from argmax over prompts of cos(image, prompt). Embed the images with "
           "model.encode_image, the prompts with model.encode_text(tokenize(prompts)), and compare.")
    passed("zero-shot prediction: embed the prompts once, pick the most similar for each image.")


# ----------------------------------------------------------------------------
# Lesson 05 - VAE (notebooks/05_vae.ipynb)

def _match_mistake(got: torch.Tensor, mistakes: dict) -> None:
    """If `got` equals a known wrong answer, fail with that mistake's hint."""
    for hint, wrong in mistakes.items():
        if wrong.shape == got.shape and torch.isfinite(wrong).all() and \
                torch.allclose(got.detach().float(), wrong.float(), atol=1e-4, rtol=1e-4):
            raise CheckFailed("Not yet: " + hint)


def reparameterize(student_reparameterize) -> None:
    """Exercise: z = mean + exp(0.5 * logvar) * eps, with gradients flowing to mean and logvar."""
    from .vae import reparameterize as reference
    g = torch.Generator().manual_seed(5)
    mean = torch.randn(3, 4, 8, 8, generator=g)
    logvar = torch.randn(3, 4, 8, 8, generator=g) - 0.5
    eps = torch.randn(3, 4, 8, 8, generator=g)
    m, lv = mean.clone().requires_grad_(True), logvar.clone().requires_grad_(True)
    got = run_student_function(student_reparameterize, m, lv, eps, name="reparameterize")
    expect_tensor(got, mean.shape, "z")
    want = reference(mean, logvar, eps)
    std = torch.exp(0.5 * logvar)
    _match_mistake(got, {
        "you used logvar itself as the standard deviation. logvar is log(std^2): "
        "std = exp(0.5 * logvar).": mean + logvar * eps,
        "you used exp(logvar) as the standard deviation, but exp(logvar) is the variance std^2; "
        "std = exp(0.5 * logvar).": mean + torch.exp(logvar) * eps,
        "you multiplied eps by 0.5 * logvar; the standard deviation is exp(0.5 * logvar).":
            mean + 0.5 * logvar * eps,
        "eps is missing: z = mean + std * eps, where eps is the given N(0, 1) noise.": mean + std,
        "the mean is missing: z = mean + std * eps.": std * eps,
        "you returned the mean: a sample also needs the noise term std * eps.": mean,
    })
    expect_close(got, want, "z should be mean + exp(0.5 * logvar) * eps, using the eps you are given "
                            "(do not draw new noise inside the function).")
    expect(got.requires_grad, "z has no gradient: build it from mean and logvar with torch operations "
                              "(no .detach(), no torch.normal) - letting gradients through is the trick's point.")
    got.sum().backward()
    expect(m.grad is not None and lv.grad is not None,
           "gradients do not reach both mean and logvar; build z from both.")
    expect_close(m.grad, torch.ones_like(mean), "dz/dmean should be 1 everywhere.")
    expect_close(lv.grad, 0.5 * std * eps, "dz/dlogvar should be 0.5 * std * eps.")
    passed("z = mean + exp(0.5 * logvar) * eps, and gradients flow to the encoder's mean and logvar.")


def kl_divergence(student_kl) -> None:
    """Exercise: per-image KL(N(mean, exp(logvar)) || N(0, I)), summed over latent numbers -> (B,)."""
    from .vae import kl_divergence as reference
    g = torch.Generator().manual_seed(5)
    mean = torch.randn(3, 4, 8, 8, generator=g)
    logvar = torch.randn(3, 4, 8, 8, generator=g) * 0.5 - 0.3
    got = run_student_function(student_kl, mean, logvar, name="kl_divergence")
    expect(isinstance(got, torch.Tensor), f"return a torch.Tensor, got {type(got).__name__}.")
    expect(got.numel() != 1, "you returned one number for the whole batch: return one KL per image, "
                             "shape (B,) - sum over dims 1, 2, 3, not over the batch.")
    expect(got.ndim == 1, f"return one KL per image, shape (B,) = (3,), got {tuple(got.shape)}: "
                          f"sum over the latent numbers (channels, height, width).")
    expect_tensor(got, (3,), "the KL")
    want = reference(mean, logvar)
    per_number = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar)             # (B, C, h, w)
    _match_mistake(got, {
        "the sign is flipped: a KL divergence is never negative. "
        "Use 0.5 * (mean^2 + exp(logvar) - 1 - logvar).": -want,
        "you averaged over the latent numbers; the KL of independent numbers adds up: "
        "sum over dims 1, 2, 3.": per_number.flatten(1).mean(1),
        "you used logvar as the standard deviation: the variance is exp(logvar), not logvar^2.":
            (0.5 * (mean ** 2 + logvar ** 2 - 1 - torch.log(logvar ** 2))).flatten(1).sum(1),
        "the factor 0.5 is missing.": 2 * want,
        "the -1 is missing (without it the prior N(0, 1) would not have KL 0).":
            want + 0.5 * mean[0].numel(),
        "mean^2 is missing: moving the mean away from 0 must cost something.":
            want - 0.5 * (mean ** 2).flatten(1).sum(1),
    })
    expect_close(got, want, "the KL per image should be sum of 0.5 * (mean^2 + exp(logvar) - 1 - logvar) "
                            "over the latent numbers.", atol=1e-3)
    prior = run_student_function(student_kl, torch.zeros(2, 4, 8, 8), torch.zeros(2, 4, 8, 8),
                                 name="kl_divergence")
    expect_close(prior, torch.zeros(2), "the KL of the prior itself (mean 0, logvar 0) should be 0.")
    passed("KL(q(z|x) || N(0, I)) per image matches the reference, and is 0 for the prior.")


def latent_numbers(student_numbers) -> None:
    """Exercise: how many numbers does the UNet see per step for one 32x32 image, in latent space?

    student_numbers: the student's function (called with no arguments) or its answer."""
    if callable(student_numbers):
        student_numbers = run_student_function(student_numbers, name="my_latent_numbers")
    expect(isinstance(student_numbers, int), f"give a whole number, got {type(student_numbers).__name__}.")
    expect(student_numbers != 3 * 32 * 32, "that is the pixel count (3 x 32 x 32); the UNet works on latents.")
    expect(student_numbers == 4 * 8 * 8, "multiply latent channels x latent height x latent width "
                                         "(32 / 4 = 8 on each side).")
    passed(f"{4 * 8 * 8} numbers per latent, {3 * 32 * 32 // (4 * 8 * 8)}x fewer than 3 x 32 x 32 pixels.")

# ----------------------------------------------------------------------------
# Lesson 06 - latent diffusion (notebooks/06_latent_diffusion.ipynb)

def _known_mistake_06(got: torch.Tensor, mistakes: dict) -> None:
    """Fail with the hint of the first typical wrong answer that `got` equals."""
    for hint, wrong in mistakes.items():
        if wrong.shape == got.shape and torch.allclose(got.detach().float(), wrong.float(), atol=1e-5):
            raise CheckFailed("Not yet: " + hint)


def guided_eps(student_guided_eps) -> None:
    """Exercise: classifier-free guidance, eps = eps_uncond + w * (eps_cond - eps_uncond).

    student_guided_eps(eps_uncond, eps_cond, guidance_scale) -> eps
    """
    g = torch.Generator().manual_seed(6)
    eps_u, eps_c = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    for w in (3.0, 7.5, 0.0, 1.0):
        got = run_student_function(student_guided_eps, eps_u.clone(), eps_c.clone(), w, name="guided_eps")
        expect_tensor(got, eps_u.shape, f"guided_eps(..., guidance_scale={w})")
        want = eps_u + w * (eps_c - eps_u)
        if w not in (0.0, 1.0):
            _known_mistake_06(got, {
                "you started from eps_cond and pushed towards eps_uncond; guidance starts from the "
                "unconditional prediction and moves w times the difference towards the conditional one.":
                    eps_c + w * (eps_u - eps_c),
                "that is the 'w + 1' convention (eps_cond + w * (eps_cond - eps_uncond)). In this course "
                "guidance_scale = 1 must give exactly the conditional prediction: "
                "eps_uncond + w * (eps_cond - eps_uncond).": eps_c + w * (eps_c - eps_u),
                "only the difference is there: add it to eps_uncond.": w * (eps_c - eps_u),
                "you scaled the conditional prediction alone; guidance extrapolates from eps_uncond "
                "along (eps_cond - eps_uncond).": w * eps_c,
                "you returned the conditional prediction unchanged: guidance_scale must matter.": eps_c,
                "you averaged the two predictions; guidance extrapolates past eps_cond when w > 1.":
                    (eps_u + eps_c) / 2,
            })
        expect_close(got, want, f"with guidance_scale = {w} the result should be "
                                f"eps_uncond + {w} * (eps_cond - eps_uncond).", atol=1e-5)
    passed("eps_uncond + w * (eps_cond - eps_uncond): w = 0 is unconditional, w = 1 conditional, "
           "w > 1 follows the prompt more strongly.")


def sdedit_start(student_start) -> None:
    """Exercise: SDEdit's start for img2img from strength.

    student_start(sampler, z0, strength, noise) -> (zt, start_index) where
    start_index = len(timesteps) - round(strength * len(timesteps)), t = timesteps[start_index]
    and zt = q_sample(z0, t, noise); strength 0 returns z0 and start_index = len(timesteps).
    """
    from .samplers import DDIMSampler, img2img_start
    from .schedule import NoiseSchedule
    schedule = NoiseSchedule("linear", 1000)
    g = torch.Generator().manual_seed(6)
    z0, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    for num_steps, strength in ((50, 0.6), (20, 0.3), (50, 1.0), (50, 0.0), (10, 0.75)):
        sampler = DDIMSampler(schedule, num_steps=num_steps)
        result = run_student_function(student_start, sampler, z0.clone(), strength, noise.clone(),
                                      name="sdedit_start")
        expect(isinstance(result, tuple) and len(result) == 2,
               "return a pair (zt, start_index).")
        zt, start_index = result
        want_zt, want_index = img2img_start(sampler, z0, strength, noise=noise)
        num = len(sampler.timesteps)
        expect(isinstance(start_index, int) or (isinstance(start_index, torch.Tensor) and start_index.numel() == 1),
               f"start_index should be a whole number, got {type(start_index).__name__}.")
        start_index = int(start_index)
        expect(start_index != round(strength * num) or start_index == want_index,
               f"for strength {strength} with {num} steps you start at index {start_index}: that is the "
               f"number of steps to RUN. Skip the others: start_index = {num} - round(strength * {num}).")
        expect(start_index == want_index,
               f"for strength {strength} with {num} steps, start_index should be {want_index} "
               f"(= {num} - round(strength * {num})), got {start_index}.")
        expect_tensor(zt, z0.shape, "zt")
        if want_index == num:
            expect_close(zt, z0, "with strength 0 nothing is denoised, so the start is z0 itself (no noise).")
            continue
        t = int(sampler.timesteps[start_index])
        ab = schedule.alpha_bar[t]
        _known_mistake_06(zt, {
            f"you looked up alpha_bar at the index {start_index} into the sampler's list; use the "
            f"timestep t = sampler.timesteps[start_index] = {t}.":
                schedule.alpha_bar[start_index].sqrt() * z0 + (1 - schedule.alpha_bar[start_index]).sqrt() * noise,
            "the two square roots are swapped: zt = sqrt(alpha_bar_t) z0 + sqrt(1 - alpha_bar_t) noise.":
                (1 - ab).sqrt() * z0 + ab.sqrt() * noise,
            "you forgot the square roots: zt = sqrt(alpha_bar_t) z0 + sqrt(1 - alpha_bar_t) noise.":
                ab * z0 + (1 - ab) * noise,
        })
        expect_close(zt, want_zt, f"zt should be z0 noised to t = sampler.timesteps[start_index] = {t}: "
                                  f"sqrt(alpha_bar_t) z0 + sqrt(1 - alpha_bar_t) noise, with the noise given.",
                     atol=1e-4)
    passed("strength picks how many of the sampler's steps to run; img2img starts from z0 noised "
           "to the first of them.")

# ----------------------------------------------------------------------------
# Lesson 07 - scaling up (notebooks/07_scaling_up.ipynb)

def lr_schedule(student_lr) -> None:
    """Exercise: student_lr(step, steps, warmup_steps, lr, min_lr_ratio) -> float, the
    learning rate of train.lr_at (linear warm-up, then cosine decay to lr * min_lr_ratio)."""
    from .train import TrainConfig, lr_at
    for steps, warmup, lr, ratio in ((100, 10, 1.0, 0.1), (1000, 50, 3e-4, 0.0), (40, 0, 2e-3, 0.5)):
        cfg = TrainConfig(steps=steps, warmup_steps=warmup, lr=lr, min_lr_ratio=ratio)
        for step in sorted({0, 1, max(warmup - 1, 0), warmup, (warmup + steps) // 2, steps - 1, steps}):
            got = run_student_function(student_lr, step, steps, warmup, lr, ratio, name="your lr function")
            expect(isinstance(got, (int, float)) or (isinstance(got, torch.Tensor) and got.numel() == 1),
                   f"return a number, got {type(got).__name__}.")
            want = lr_at(step, cfg)
            if abs(float(got) - want) <= 1e-9 + 1e-6 * abs(want):
                continue
            where = ("during warm-up: step s should give lr * (s + 1) / warmup_steps, so the first "
                     "step is not 0 and the last warm-up step reaches the peak lr"
                     if step < warmup else
                     "after warm-up: progress p = (step - warmup) / (steps - warmup) goes 0 -> 1 and "
                     "lr = lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + cos(pi * p)))")
            expect(False, f"at step {step} of {steps} (warm-up {warmup}, lr {lr}, min_lr_ratio {ratio}) "
                          f"the learning rate should be {want:.6g}, got {float(got):.6g}. Hint: {where}.")
    passed("warm-up then cosine decay, exactly like train.lr_at.")


def ema_update(student_ema) -> None:
    """Exercise: student_ema(ema, weights, decay) -> the new EMA tensor d * ema + (1 - d) * weights."""
    gen = torch.Generator().manual_seed(7)
    for decay in (0.9, 0.999, 0.5):
        ema, weights = torch.randn(5, 3, generator=gen), torch.randn(5, 3, generator=gen)
        ema_before, weights_before = ema.clone(), weights.clone()
        got = run_student_function(student_ema, ema.clone(), weights, decay, name="your EMA update")
        got = expect_tensor(got, ema.shape, "the new EMA")
        expect(torch.equal(weights, weights_before), "do not change the model's weights, only the average.")
        want = decay * ema_before + (1 - decay) * weights_before
        swapped = (1 - decay) * ema_before + decay * weights_before
        expect(not torch.allclose(got, swapped, atol=1e-6) or decay == 0.5,
               "decay and 1 - decay are swapped: the OLD average keeps the large share (decay), "
               "the new weights get the small share (1 - decay).")
        expect_close(got, want, f"with decay {decay} the new EMA is decay * ema + (1 - decay) * weights")
    passed("the EMA moves a small step (1 - decay) towards the current weights.")


def shard_batch(student_shard) -> None:
    """Exercise: student_shard(global_batch, world_size, rank) -> the indices (a range or list
    of ints) of the samples of a global batch that rank `rank` processes."""
    for n, world in ((8, 2), (12, 4), (6, 1), (30, 3)):
        parts = []
        for rank in range(world):
            got = run_student_function(student_shard, n, world, rank, name="your shard function")
            try:
                got = [int(i) for i in got]
            except TypeError:
                expect(False, f"return a range or a list of indices, got {type(got).__name__}.")
            expect(len(got) == n // world,
                   f"with a global batch of {n} on {world} ranks each rank gets {n // world} samples; "
                   f"rank {rank} got {len(got)}.")
            expect(all(0 <= i < n for i in got), f"indices must lie in 0..{n - 1}; rank {rank} got {got}.")
            parts.append(got)
        flat = [i for part in parts for i in part]
        expect(len(set(flat)) == len(flat),
               f"two ranks process the same sample (global batch {n}, {world} ranks): use the rank "
               f"to pick a different slice, e.g. range(rank * per_rank, (rank + 1) * per_rank).")
        expect(sorted(flat) == list(range(n)), f"together the ranks must cover all {n} samples.")
    # a batch that does not split evenly must be refused
    try:
        student_shard(10, 4, 0)
    except ValueError:
        pass
    except NotImplementedError:
        raise CheckFailed("Not yet: your shard function still raises NotImplementedError.")
    else:
        expect(False, "a global batch of 10 on 4 ranks cannot be split evenly: raise a ValueError "
                      "that says so (otherwise ranks do unequal work and DDP's average is biased).")
    passed("every sample goes to exactly one rank, and every rank gets the same amount of work.")
