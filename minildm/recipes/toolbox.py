"""Measuring the Stable Diffusion toolbox of lesson 09 on the shipped latent diffusion model.

Each test renders Shapes images or generates from canonical captions, applies one
tool, and lets the judge (data/judge.py) read the result:

    inpainting_test        replace the object inside its box (grown by 2 px): prompted attributes
                           read back, PSNR outside the mask
    partial_prompt_test    prompts naming some attributes: named ones right, unnamed ones varied
                           (part "partial_prompts" at guidance 3, "partial_prompts_by_guidance" at 1, 2, 3)
    negative_prompt_test   "a large circle in the center" without a negative prompt, and with "red" and
                           with its most frequent colour (the partial model: it leaves the colour open),
                           Stable Diffusion's way and with Perp-Neg (negative_scale)
    attention_test         attention mass of colour / shape / size / position words inside the
                           generated object, relative to the object's share of the image
    editing_test           change only the colour, or only the shape, of rendered images: plain
                           img2img (a strength sweep), DDIM inversion, prompt-to-prompt
    sampler_table, first_step_test, solver_start_test
                           few-step sampling: in sampler_eval.py (re-exported here)

    python -m minildm evaluate toolbox [--quick] [--json docs/toolbox.json]
    python -c "from minildm.recipes import toolbox; print(toolbox.evaluate(parts=['inpainting']))"

Taught in notebooks/09_toolbox.ipynb.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from .. import editing
from ..attention_maps import AttentionStore, attention_hook, word_index
from ..data import shapes
from ..data.judge import judge
from ..pipeline import LatentDiffusionPipeline
from ..schedule import LAMBDA_MIN
from ..train import pick_device
from .sampler_eval import START_LAMBDAS, first_step_test, sampler_table, solver_start_test  # noqa: F401

NEGATIVE_SCALE = 8.0      # the Perp-Neg weight the lesson shows: of 4, 6, 8 the one that takes the partial model's
                          # most frequent colour (cyan) to <= 2% (docs/results_toolbox.md)
NEGATIVE_SCALES = (4.0, 6.0, 8.0)   # the Perp-Neg weights the negative-prompt test measures (besides SD's way)
PARTS = ("inpainting", "partial_prompts", "partial_prompts_by_guidance", "negative_prompt", "attention", "editing",
         "samplers", "first_step", "solver_start")
PARTIAL_GUIDANCES = (1.0, 2.0, 3.0)   # the guidance scales partial_prompts_by_guidance measures (partial_prompts: 3)
LIT = 0.5                    # a pixel belongs to the object when its brightest channel is above this
                             # (the judge's own rule for its mask)


def _rate(ok: torch.Tensor) -> float:
    return round(float(ok.float().mean()), 4)


def _batched(fn, n: int, batch_size: int):
    """torch.cat of fn(i, j) over the batches [i, j) of range(n)."""
    return torch.cat([fn(i, min(i + batch_size, n)).cpu() for i in range(0, n, batch_size)])


def _new_value(labels: torch.Tensor, attribute: int, rng: np.random.Generator) -> int:
    """Another value of one attribute (0 shape, 1 colour) such that the (shape, colour) pair stays seen."""
    options = []
    for value in range(len(shapes.ATTRIBUTE_VALUES[shapes.ATTRIBUTES[attribute]])):
        changed = labels.clone()
        changed[attribute] = value
        if value != int(labels[attribute]) and not shapes.is_held_out(changed[None]).any():
            options.append(value)
    return int(rng.choice(options))


def change_attributes(labels: torch.Tensor, which: str, rng: np.random.Generator) -> torch.Tensor:
    """(n, 4) labels -> the same with a new colour ("color"), shape ("shape") or both ("both"); seen pairs."""
    target = labels.clone()
    for i in range(len(labels)):
        for attribute in {"shape": (0,), "color": (1,), "both": (0, 1)}[which]:
            target[i, attribute] = _new_value(target[i], attribute, rng)
    return target


def box_masks(images: torch.Tensor, grow: int = 2) -> torch.Tensor:
    """Rendered images (N, 3, H, W) -> (N, 1, H, W) bool: the object's bounding box grown by `grow` pixels."""
    lit = images.amax(dim=1) > 0                                          # (N, H, W): any coverage
    masks = torch.zeros(len(images), 1, *images.shape[2:], dtype=torch.bool)
    for i, obj in enumerate(lit):
        rows, cols = obj.any(dim=1).nonzero().flatten(), obj.any(dim=0).nonzero().flatten()
        masks[i, 0, max(int(rows[0]) - grow, 0):int(rows[-1]) + 1 + grow,
              max(int(cols[0]) - grow, 0):int(cols[-1]) + 1 + grow] = True
    return masks


def psnr_outside(outputs: torch.Tensor, images: torch.Tensor, masks: torch.Tensor) -> dict:
    """PSNR (dB) of outputs vs images over the pixels outside the masks: pooled, and per image."""
    keep = ~masks.expand_as(images)                                       # (N, 3, H, W)
    err = ((outputs - images) ** 2) * keep
    mse = err.sum(dim=(1, 2, 3)) / keep.sum(dim=(1, 2, 3)).clamp_min(1)   # (N,)
    to_db = lambda m: float("inf") if m == 0 else round(10 * math.log10(1 / m), 2)
    return {"pooled_db": to_db(float(err.sum() / keep.sum())), "min_db": to_db(float(mse.max())),
            "at_least_30db": _rate(mse <= 1e-3)}


def object_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N,) intersection over union of the objects' pixels (above LIT) in images a and b: how
    exactly an edit kept the object's place and extent (1 = the same pixels)."""
    lit_a, lit_b = a.amax(dim=1) > LIT, b.amax(dim=1) > LIT               # (N, H, W)
    return (lit_a & lit_b).sum(dim=(1, 2)) / (lit_a | lit_b).sum(dim=(1, 2)).clamp_min(1)


# ----------------------------------------------------------------------------
# The five measurements

def inpainting_test(pipe: LatentDiffusionPipeline, n: int = 108, num_steps: int = 50,
                    guidance_scale: float = 3.0, seed: int = 0, batch_size: int = 54) -> dict:
    """Replace the object of n rendered seen images inside its box grown by 2 px.

    A third of the prompts change the colour, a third the shape, a third both (same size and
    place, seen pairs only). Success = the judge reads all four prompted attributes. PSNR outside
    the mask is given for the pipeline's output (kept pixels pasted back) and for the latent
    blend alone (paste_back=False).
    """
    rng = np.random.default_rng(seed)
    labels = shapes.sample_labels(n, "train", rng)                         # (n, 4)
    images = shapes.render(labels, pipe.config.image_size, rng)
    kinds = [("color", "shape", "both")[i % 3] for i in range(n)]
    target = torch.cat([change_attributes(labels[i:i + 1], kind, rng) for i, kind in enumerate(kinds)])
    prompts, masks = [shapes.caption(t) for t in target], box_masks(images)
    result = {"count": n, "sampler": f"ddim {num_steps} steps", "guidance_scale": guidance_scale}
    for paste_back in (True, False):
        out = _batched(lambda i, j: pipe.inpaint(images[i:j], masks[i:j], prompts[i:j], num_steps=num_steps,
                                                 guidance_scale=guidance_scale, seed=seed + i,
                                                 paste_back=paste_back), n, batch_size)
        key = "pasted" if paste_back else "blend_only"
        read = judge(out)["labels"]
        ok = (read == target).all(dim=1)
        result[key] = {"prompted_attributes": _rate(ok),
                       **{f"prompted_{kind}": _rate(ok[[k == kind for k in kinds]]) for kind in ("color", "shape", "both")},
                       "psnr_outside": psnr_outside(out, images, masks)}
    return result


def named_right(read: torch.Tensor, named: dict) -> torch.Tensor:
    """(n,) True where the judge's labels read (n, 4) match every named attribute (name -> value index)."""
    right = torch.ones(len(read), dtype=torch.bool)
    for attribute, value in named.items():
        right &= read[:, shapes.ATTRIBUTES.index(attribute)] == value
    return right


def negative_prompt_test(pipe: LatentDiffusionPipeline, prompt: str = "a large circle in the center",
                         named: dict | None = None, negatives=("red", None), n: int = 100,
                         num_steps: int = 50, guidance_scale: float = 3.0, batch_size: int = 100,
                         negative_scales=NEGATIVE_SCALES) -> dict:
    """n seeds of a prompt that leaves the colour open, without and with each negative prompt:
    how often the judge reads the negative colour, and how often the named attributes are right.

    negatives: colour words; None stands for the colour the prompt gets most often without a
    negative prompt (the one a user would want to be rid of: guidance makes an open attribute
    collapse towards one value). named: the attributes the prompt names (default: those of
    "a large circle in the center"). "with": Stable Diffusion's negative prompt (it replaces the
    empty prompt in guidance); "with_negative_scale": Perp-Neg at each of negative_scales
    (pipe(..., negative_scale=)). Meaningful on a model trained on partial prompts (the shipped
    "partial" one, evaluate()'s default).
    """
    named = named or {"shape": "circle", "size": "large", "position": "center"}

    def run(negative, scale=None):
        extra = {} if scale is None else {"negative_scale": scale}
        images = _batched(lambda i, j: pipe([prompt] * (j - i), num_steps=num_steps, guidance_scale=guidance_scale,
                                            seed=i, negative_prompt=negative, **extra), n, batch_size)
        read = judge(images)["labels"]                                            # (n, 4)
        right = named_right(read, {a: shapes.ATTRIBUTE_VALUES[a].index(v) for a, v in named.items()})
        counts = torch.bincount(read[:, 1], minlength=len(shapes.COLOR_NAMES))
        return {"named_attributes_right": _rate(right), "color_counts": dict(zip(shapes.COLOR_NAMES, counts.tolist()))}

    without = run(None)
    most = max(without["color_counts"], key=without["color_counts"].get)
    result = {"prompt": prompt, "count": n, "most_frequent_color": most, "without": without, "with": {},
              "with_negative_scale": {}}
    for negative in negatives:
        negative = negative or most
        for scale in (None, *negative_scales):
            row = run(negative, scale)
            row["rate_before"] = round(without["color_counts"][negative] / n, 4)
            row["rate_after"] = round(row["color_counts"][negative] / n, 4)
            if scale is None:
                result["with"][negative] = row
            else:
                result["with_negative_scale"].setdefault(str(scale), {})[negative] = row
    return result


# Partial prompts: (attributes named, the label whose values are named), one prompt each.
PARTIAL_CASES = (
    ({"shape", "color"}, (0, 0, 0, 0)),                 # "a red circle"
    ({"size", "shape", "position"}, (1, 0, 1, 3)),      # "a large square on the left"
    ({"color"}, (0, 4, 0, 0)),                          # "a magenta shape"
    ({"size", "shape"}, (2, 0, 0, 0)),                  # "a small triangle"
    ({"color", "position"}, (0, 2, 0, 5)),              # "a blue shape on the right"
    ({"shape"}, (1, 0, 0, 0)),                          # "a square"
)


def normalised_entropy(values: torch.Tensor, k: int, support=None) -> float:
    """Entropy of the empirical distribution of `values` (ints in [0, k)) divided by log k:
    1 = every value equally often, 0 = always the same value. With `support` (a list of the
    values allowed), only the values in it count and the entropy is divided by log len(support)."""
    if support is not None:
        values, k = values[torch.isin(values, torch.tensor(support))], len(support)
        if k < 2 or len(values) == 0:
            return 1.0 if k < 2 else 0.0
    p = torch.bincount(values, minlength=k).float() / len(values)
    p = p[p > 0]
    return round(float(-(p * p.log()).sum() / math.log(k)), 4)


def partial_prompt_test(pipe: LatentDiffusionPipeline, cases=PARTIAL_CASES, n: int = 100, num_steps: int = 50,
                        guidance_scale: float = 3.0, batch_size: int = 100) -> dict:
    """Each partial prompt with n seeds: are the named attributes right (judge), and does every
    unnamed attribute vary (its normalised entropy over the n images; 1 = uniform)?

    Also over the values training pairs with the named ones (shapes.trained_values: "a blue shape"
    is never a triangle in training, so a uniform answer over {circle, square} has entropy
    log 2 / log 3 = 0.63 over all three shapes, 1 over the trained two): `unnamed_entropy_trained`,
    and `untrained_share`, the images that drew a value training never pairs with the named ones.
    Issue 19's targets: named attributes right in >= 95% of images, unnamed entropy >= 0.8.
    """
    result, rights, entropies, trained = {"count_per_prompt": n, "prompts": {}}, [], [], []
    for keep, values in cases:
        labels = torch.tensor(values)
        prompt = shapes.partial_caption(labels, keep)
        images = _batched(lambda i, j: pipe([prompt] * (j - i), num_steps=num_steps,
                                            guidance_scale=guidance_scale, seed=i), n, batch_size)
        graded = judge(images)
        read = graded["labels"]                                                  # (n, 4)
        right = named_right(read, {a: int(labels[shapes.ATTRIBUTES.index(a)]) for a in keep})
        open_ = {a: (i, shapes.trained_values(labels, keep, a)) for i, a in enumerate(shapes.ATTRIBUTES) if a not in keep}
        unnamed = {a: normalised_entropy(read[:, i], len(shapes.ATTRIBUTE_VALUES[a])) for a, (i, _) in open_.items()}
        on_trained = {a: normalised_entropy(read[:, i], 0, support) for a, (i, support) in open_.items()}
        result["prompts"][prompt] = {
            "named_right": _rate(right), "clean": _rate(graded["clean"]), "unnamed_entropy": unnamed,
            "unnamed_entropy_trained": on_trained,
            "untrained_share": {a: _rate(~torch.isin(read[:, i], torch.tensor(s))) for a, (i, s) in open_.items()},
            "trained_values": {a: [shapes.ATTRIBUTE_VALUES[a][v] for v in s] for a, (_, s) in open_.items()}}
        rights.append(float(right.float().mean()))
        entropies.extend(unnamed.values())
        trained.extend(on_trained.values())
    result["named_right"] = round(sum(rights) / len(rights), 4)
    result["min_unnamed_entropy"] = min(entropies)
    result["mean_unnamed_entropy"] = round(sum(entropies) / len(entropies), 4)
    result["min_unnamed_entropy_trained"] = min(trained)
    result["mean_unnamed_entropy_trained"] = round(sum(trained) / len(trained), 4)
    return result


def attention_test(pipe: LatentDiffusionPipeline, n: int = 108, num_steps: int = 50,
                   guidance_scale: float = 3.0, seed: int = 0, batch_size: int = 54) -> dict:
    """Generate n seen canonical captions and compare, per word kind, the attention mass inside
    the generated object with the object's share of the image:

        ratio = sum(map * region) / mean(region)     region: the fraction of each latent cell
                                                      the object covers (pixels above LIT)

    A map spread evenly gives 1; a map inside the object gives 1 / share. Only the images
    the judge reads right (all four attributes) are used, so the region is the prompt's object.
    The maps are those of pipe(..., return_attention=True) (AttentionStore.maps(): the default
    layers, at the latent's own resolution, listed under "layers"); the same ratios averaged
    over the layers at least half the latent's side (the default until 2026-12-02) are under
    "half_layers", over every layer under "all_layers", and for each layer alone under
    "per_layer" (resolution, color, shape).
    """
    rng = np.random.default_rng(seed)
    labels = shapes.sample_labels(n, "train", rng)
    prompts = [shapes.caption(l) for l in labels]
    images, stores = [], []
    for i in range(0, n, batch_size):
        store = AttentionStore(len(prompts[i:i + batch_size]), pipe.config.latent_size)
        with attention_hook(pipe.unet, store):                         # the store pipe(return_attention=True) uses
            images.append(pipe(prompts[i:i + batch_size], num_steps=num_steps, guidance_scale=guidance_scale,
                               seed=seed + i).cpu())
        stores.append(store)
    images = torch.cat(images)                                            # (n, 3, H, W)
    right = (judge(images)["labels"] == labels).all(dim=1)
    factor = pipe.config.image_size // pipe.config.latent_size
    region = F.avg_pool2d((images.amax(dim=1, keepdim=True) > LIT).float(), factor)[:, 0]  # (n, S, S)
    share = region.mean(dim=(1, 2))                                       # (n,)
    words = {"color": lambda l: shapes.COLOR_NAMES[int(l[1])], "shape": lambda l: shapes.SHAPES[int(l[0])],
             "size": lambda l: shapes.SIZES[int(l[2])], "position": lambda l: shapes.POSITIONS[int(l[3])].split()[-1],
             "<bos>": lambda l: "<bos>", "a": lambda l: "a"}

    def ratios(maps, kind):                                               # maps (n, L, S, S)
        word_of = words[kind]
        return torch.tensor([float((maps[i, word_index(prompts[i], word_of(labels[i]))] * region[i]).sum()
                                   / share[i]) for i in range(n) if right[i]])

    maps = torch.cat([store.maps() for store in stores])
    half = torch.cat([store.maps(layers="half") for store in stores])
    all_layers = torch.cat([store.maps(layers="all") for store in stores])
    result = {"count": n, "judged_right": int(right.sum()), "mean_object_share": round(float(share[right].mean()), 4),
              "layers": [stores[0].resolutions()[i] for i in stores[0].default_layers()],
              "half_layers": {}, "all_layers": {}}
    def summary(r):                                                       # r: one word kind's ratios
        return {"mean_ratio": round(float(r.mean()), 3), "median_ratio": round(float(r.median()), 3),
                "at_least_2x": _rate(r >= 2)}

    for kind in words:
        result[kind] = summary(ratios(maps, kind))
        r = ratios(all_layers, kind)
        result["all_layers"][kind] = {"mean_ratio": round(float(r.mean()), 3), "at_least_2x": _rate(r >= 2)}
        result["half_layers"][kind] = summary(ratios(half, kind))
    result["per_layer"] = []
    for index, side in enumerate(stores[0].resolutions()):
        layer_maps = torch.cat([store.maps(layers=[index]) for store in stores])
        result["per_layer"].append([side] + [round(float(ratios(layer_maps, kind).mean()), 2)
                                             for kind in ("color", "shape")])
    return result


def editing_test(pipe: LatentDiffusionPipeline, n: int = 108, strengths=(0.5, 0.6, 0.7, 0.8),
                 inversion_strengths=(0.8, 1.0), inject_fractions=(0.2, 0.4), num_steps: int = 50,
                 guidance_scale: float = 3.0, seed: int = 0, batch_size: int = 54) -> dict:
    """Change only the colour, or only the shape, of n rendered seen objects; success = the judge
    reads the new attribute and the three others unchanged; object_iou says how exactly the
    object kept its pixels (a shape change cannot keep them all). Methods: img2img at each strength,
    DDIM inversion at each inversion strength, prompt-to-prompt (inversion to t = T-1) at each
    fraction of steps with the source's cross-attention.
    """
    rng = np.random.default_rng(seed)
    labels = shapes.sample_labels(n, "train", rng)
    images = shapes.render(labels, pipe.config.image_size, rng)
    sources = [shapes.caption(l) for l in labels]
    methods = {f"img2img strength {s}": dict(kind="img2img", strength=s) for s in strengths}
    methods.update({f"inversion strength {s}": dict(kind="edit", strength=s) for s in inversion_strengths})
    methods.update({f"prompt-to-prompt {f}": dict(kind="edit", strength=1.0, inject_fraction=f)
                    for f in inject_fractions})
    result = {"count": n, "sampler": f"ddim {num_steps} steps", "guidance_scale": guidance_scale}
    for task in ("color", "shape"):
        target = change_attributes(labels, task, rng)
        prompts = [shapes.caption(t) for t in target]
        rows = {}
        for name, method in methods.items():
            def run(i, j, method=method):
                if method["kind"] == "img2img":
                    return pipe.img2img(images[i:j], prompts[i:j], strength=method["strength"], num_steps=num_steps,
                                        guidance_scale=guidance_scale, seed=seed + i)
                return editing.edit(pipe, images[i:j], sources[i:j], prompts[i:j], strength=method["strength"],
                                    inject_fraction=method.get("inject_fraction", 0.0), num_steps=num_steps,
                                    guidance_scale=guidance_scale)
            edited = _batched(run, n, batch_size)
            read, changed = judge(edited)["labels"], 0 if task == "shape" else 1
            rows[name] = {"success": _rate((read == target).all(dim=1)),
                          f"new_{task}": _rate(read[:, changed] == target[:, changed]),
                          "object_iou": round(float(object_iou(edited, images).mean()), 3)}
        result[task] = rows
    return result


PARTIAL_WEIGHTS = "partial"  # the shipped model trained with partial prompts (minildm/weights/partial/)
NEEDS_PARTIAL = ("partial_prompts", "partial_prompts_by_guidance", "negative_prompt")   # measured on that model


def evaluate(weights=None, quick: bool = False, parts=PARTS, device="auto",
             partial_weights=PARTIAL_WEIGHTS) -> dict:
    """Run the toolbox measurements (all PARTS, or the ones named) on a pipeline folder
    (None = the shipped weights); quick: a dozen images each (a smoke test, not a figure).

    The parts in NEEDS_PARTIAL run on `partial_weights` (default: the shipped "partial" model,
    trained with partial prompts; lesson 06's model never saw a caption that leaves anything
    out); pass partial_weights=None to run them on `weights` too.
    """
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown toolbox parts {unknown}; allowed: {', '.join(PARTS)}")
    device = pick_device(device)
    pipe = LatentDiffusionPipeline.from_pretrained(weights, device=device)
    partial_pipe = pipe
    if partial_weights is not None and set(parts) & set(NEEDS_PARTIAL):
        partial_pipe = LatentDiffusionPipeline.from_pretrained(partial_weights, device=device)
    n = 12 if quick else 108
    partial_runs = {}       # guidance -> partial_prompt_test: the w = 3 run serves both partial parts

    def partial_at(w: float) -> dict:
        if w not in partial_runs:
            partial_runs[w] = partial_prompt_test(partial_pipe, n=12 if quick else 100, guidance_scale=w)
        return dict(partial_runs[w])                                     # a copy: evaluate adds its own keys
    tests = {
        "inpainting": lambda: inpainting_test(pipe, n=n),
        "partial_prompts": lambda: partial_at(3.0),
        "partial_prompts_by_guidance": lambda: {str(w): dict(partial_at(w), guidance_scale=w) for w in PARTIAL_GUIDANCES},
        "negative_prompt": lambda: negative_prompt_test(partial_pipe, n=12 if quick else 100),
        "attention": lambda: attention_test(pipe, n=n),
        "editing": lambda: editing_test(pipe, n=n),
        "samplers": lambda: sampler_table(pipe, n=12 if quick else 90, steps=(5, 10) if quick else (5, 10, 20, 50)),
        "first_step": lambda: first_step_test(pipe, n=12 if quick else 90),
        "solver_start": lambda: solver_start_test(pipe, n=12 if quick else 90, seeds=(0,) if quick else (0, 1000, 2000),
                                                  lambdas=(-5.1, LAMBDA_MIN) if quick else START_LAMBDAS),
    }
    result = {"weights": str(pipe.sources["ldm"]), "partial_weights": str(partial_pipe.sources["ldm"])}
    for part in parts:
        t0 = time.perf_counter()
        result[part] = tests[part]()
        result[part]["weights"] = str((partial_pipe if part in NEEDS_PARTIAL else pipe).sources["ldm"])
        result[part]["seconds"] = round(time.perf_counter() - t0, 1)
    return result
