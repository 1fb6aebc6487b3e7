"""Command line: python -m minildm {demo,train,evaluate,generate,img2img,inpaint,bench,course,data}.

    python -m minildm demo                          a picture of the course's results
    python -m minildm train stack --preset fast     VAE, CLIP, latent UNet from scratch in minutes
    python -m minildm train all --preset cpu        every model of the course (README: the shipped weights' commands)
    python -m minildm train vae --preset tiny --steps 20
    python -m minildm evaluate [ldm|clip|vae|pixel_unet]
    python -m minildm generate "a large red circle in the top left" -n 8 --out grid.png
    python -m minildm img2img in.png "a small blue square at the bottom" --strength 0.6 --out out.png
    python -m minildm inpaint in.png mask.png "a small red circle at the bottom" --out out.png
    python -m minildm evaluate toolbox              inpainting, attention, editing, samplers (lesson 09)
    python -m minildm bench
    python -m minildm compare denoisers [--quick]   UNet vs DiT x eps vs rectified flow (lesson 08)
    python -m minildm compare attention [--quick]   DiT cross vs joint attention: binding (lesson 10)
    python -m minildm compare spaces [--quick]      latent vs pixel at equal training minutes (lesson 06)
    python -m minildm course student-edition OUT_DIR
    python -m minildm data preview --out shapes.png

Every error is one line ("error: ...") naming the file or value and what is allowed;
--debug (anywhere on the line) shows the full traceback instead. Outputs are checked
before the work starts, so an unwritable --out fails in a second, not after training.

Every trained model's recipe lives in minildm/recipes/ (`job`, `fit`, `evaluate`);
this file parses arguments, checks them, and dispatches.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .recipes import MODELS

PRESETS = ("tiny", "fast", "cpu", "partial", "gpu")   # "fast": vae, clip, ldm, pixel_unet; "partial": ldm only (lesson 09)
STACK = ("vae", "clip", "ldm")   # `train stack`: what a LatentDiffusionPipeline needs, in training order
STEPS_HELP = "sampling steps (default 50; the ddpm sampler always runs all of the model's T steps)"


class UsageError(ValueError):
    """Bad command-line input; printed without a traceback."""


def _module(name: str):
    from .recipes import recipe
    if name not in MODELS:
        raise UsageError(f"unknown model {name!r}; allowed: {', '.join(MODELS)} (or 'all' for train)")
    return recipe(name)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {value}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a seed is a whole number in [0, 2**63), got {text!r}")
    if not 0 <= value < 2 ** 63:
        raise argparse.ArgumentTypeError(f"a seed is a whole number in [0, 2**63), got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


# ----------------------------------------------------------------------------
# Commands

def cmd_demo(args) -> None:
    from .demo import make_demo
    from .inputs import check_output_file
    path = make_demo(check_output_file(args.out))
    print(f"wrote {path}")
    print("Open the course:  jupyter lab notebooks/00_welcome.ipynb")


def cmd_train(args) -> None:
    from .devices import pick_device
    from .weights_io import check_writable_folder
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the run in --run-dir and --overwrite deletes it; choose one")
    if args.device:
        pick_device(args.device)                       # a device this machine lacks: an error now
    names = {"all": list(MODELS), "stack": list(STACK)}.get(args.model, [args.model])   # in training order
    for name in names:                                 # every model knows the preset: checked first
        presets = getattr(_module(name), "PRESETS", None)
        if presets is not None and args.preset not in presets:
            raise UsageError(f"unknown preset {args.preset!r} for {name}; allowed: {', '.join(presets)}")
    if args.init is not None:
        if names != ["vae"]:
            raise UsageError("--init is for `train vae` only: it fine-tunes a trained VAE's decoder (stage 2), "
                             "keeping its encoder and latents")
        from .weights_io import resolve_folder
        if not (resolve_folder(args.init, "vae") / "model.safetensors").is_file():
            raise UsageError(f"--init {args.init}: no model.safetensors there; give a trained VAE's folder")
    check_writable_folder(args.out)                    # outputs checked before the training, not after
    check_writable_folder(args.run_dir)
    overrides = {k: v for k, v in {
        "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "device": args.device,
        "precision": args.precision, "compile": args.compile or None, "seed": args.seed,
        "resume": args.resume or None, "overwrite": args.overwrite or None,
        "checkpoint_every": args.checkpoint_every, "minutes": args.minutes,
    }.items() if v is not None}
    for name in names:
        module = _module(name)
        print(f"== training {name} (preset {args.preset}) ==", flush=True)
        init = {"init": args.init} if args.init is not None else {}
        module.fit(preset=args.preset, out_dir=args.out, run_dir=args.run_dir, **init, **overrides)
        if args.minutes:   # a budget run ends with a measured line, so a class knows what it got
            result = module.evaluate(weights=str(Path(args.out) / name), quick=True)
            print(f"[{name}] after {args.minutes:g} minutes: {module.headline(result)} (quick evaluation)")


def cmd_evaluate(args) -> None:
    _check_json_out(args)                              # before the evaluation, not after
    if args.model == "toolbox":                      # lesson 09's tools, measured on a trained pipeline
        from .recipes import toolbox as module
    else:
        module = _module(args.model)
    kwargs = {"weights": args.weights} if args.weights else {}
    if args.quick:
        kwargs["quick"] = True
    result = module.evaluate(**kwargs)
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


def cmd_generate(args) -> Path:
    """`python -m minildm generate PROMPT -n 8 --out grid.png`."""
    from .inputs import check_int, check_output_file, save_images
    from .pipeline import LatentDiffusionPipeline
    check_output_file(args.out)
    n = check_int(args.num_images, "--num-images", 1, 1024)
    pipe = LatentDiffusionPipeline.from_pretrained(args.weights, device=args.device)
    images = pipe([args.prompt] * n, num_steps=args.steps, guidance_scale=args.guidance,
                  seed=args.seed, sampler=args.sampler, progress=True)
    path = save_images(images, args.out)
    print(f"seed {args.seed}: wrote {n} image(s) for {args.prompt!r} to {path}")
    return path


def cmd_img2img(args) -> Path:
    """`python -m minildm img2img in.png PROMPT --strength 0.6 --out out.png`."""
    from .inputs import check_float, check_output_file, check_prompts, load_image, save_images
    from .pipeline import LatentDiffusionPipeline
    check_float(args.strength, "--strength", 0.0, 1.0)
    check_prompts(args.prompt)
    check_output_file(args.out)
    pipe = LatentDiffusionPipeline.from_pretrained(args.weights, device=args.device)
    image = load_image(args.image, pipe.config.image_size)
    edited = pipe.img2img(image, args.prompt, strength=args.strength, num_steps=args.steps,
                          guidance_scale=args.guidance, seed=args.seed, progress=True)
    path = save_images(edited, args.out)
    print(f"seed {args.seed}: wrote {path} ({args.image} -> {args.prompt!r}, strength {args.strength})")
    return path


def cmd_inpaint(args) -> Path:
    """`python -m minildm inpaint in.png mask.png PROMPT --out out.png` (white in the mask = repaint)."""
    from .inputs import check_output_file, check_prompts, load_image, load_mask, save_images
    from .pipeline import LatentDiffusionPipeline
    check_prompts(args.prompt)
    check_output_file(args.out)
    pipe = LatentDiffusionPipeline.from_pretrained(args.weights, device=args.device)
    image, mask = load_image(args.image, pipe.config.image_size), load_mask(args.mask, pipe.config.image_size)
    painted = pipe.inpaint(image, mask, args.prompt, num_steps=args.steps, guidance_scale=args.guidance,
                           seed=args.seed, sampler=args.sampler, progress=True)
    path = save_images(painted, args.out)
    print(f"seed {args.seed}: wrote {path} ({args.image}, repainted where {args.mask} is white -> {args.prompt!r})")
    return path


def _check_json_out(args) -> None:
    """--json checked before the measurements, not after them."""
    if getattr(args, "json", None):
        from .inputs import check_output_file
        check_output_file(args.json, (".json",))


def cmd_bench(args) -> None:
    from .bench import main as bench_main
    _check_json_out(args)
    bench_main(args)


def cmd_compare(args) -> None:
    if args.compare_command == "attention":
        from .recipes.scenes_attention import main as compare_main
    elif args.compare_command == "spaces":
        from .recipes.spaces import main as compare_main
    else:
        from .recipes.compare import main as compare_main
    _check_json_out(args)
    compare_main(args)


def cmd_course(args) -> None:
    from .course import write_student_edition
    from .weights_io import check_writable_folder
    check_writable_folder(args.out_dir)
    written = write_student_edition(args.out_dir, args.notebooks)
    print(f"wrote the student edition of {len(written)} notebooks to {args.out_dir}")


def cmd_data(args) -> None:
    from .demo import dataset_preview
    from .inputs import check_output_file
    path = dataset_preview(check_output_file(args.out), n=args.n, seed=args.seed, resolution=args.resolution)
    print(f"wrote {path}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m minildm", description=__doc__.split("\n")[0])
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="write a picture of the course's results")
    p.add_argument("--out", default="minildm_demo.png", help="image file to write")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("train", help="train a model (or all) and write its weights")
    p.add_argument("model", choices=list(MODELS) + ["stack", "all"],
                   help="one model; stack = vae, clip, ldm (a whole tiny Stable Diffusion); all = every model")
    p.add_argument("--preset", choices=PRESETS, default="cpu",
                   help="tiny (seconds), fast (the stack in minutes: vae, clip, ldm; also pixel_unet), "
                        "cpu (the shipped weights), gpu; partial: ldm only (lesson 09's model)")
    p.add_argument("--out", default="weights", help="folder for the trained weights (one subfolder per model)")
    p.add_argument("--run-dir", default="runs", help="folder for checkpoints and metrics")
    p.add_argument("--steps", type=_positive_int)
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--lr", type=_positive_float)
    p.add_argument("--device", help="auto, cpu, cuda, mps")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"))
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--seed", type=_seed)
    p.add_argument("--checkpoint-every", type=_positive_int)
    p.add_argument("--minutes", type=_positive_float,
                   help="train as well as possible within this wall-clock budget (the schedule fits it)")
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument("--init", help="vae only: a trained VAE's folder; run stage 2 (decoder fine-tuning) on it, "
                                  "keeping its encoder, so every diffusion model's latents stay valid")
    p.add_argument("--overwrite", action="store_true",
                   help="--run-dir holds a run: delete its checkpoints and metrics and start over")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="measure a trained model; prints JSON")
    p.add_argument("model", nargs="?", default="ldm", choices=list(MODELS) + ["toolbox"])
    p.add_argument("--weights", help="weights folder (default: the shipped weights)")
    p.add_argument("--quick", action="store_true", help="fewer images (a smoke test)")
    p.add_argument("--json", help="also write the JSON to this file")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("generate", help="text to image with the latent diffusion pipeline")
    p.add_argument("prompt")
    p.add_argument("-n", "--num-images", type=_positive_int, default=8)
    p.add_argument("--steps", type=_positive_int, help=STEPS_HELP)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--sampler", help="the model's sampler (default: its own, ddim; euler for a flow model); "
                                     "a wrong name is an error that lists the allowed ones")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--weights", help="pipeline folder (default: the shipped weights)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--out", default="generated.png")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("img2img", help="edit an image towards a prompt (SDEdit)")
    p.add_argument("image")
    p.add_argument("prompt")
    p.add_argument("--strength", type=float, default=0.6)
    p.add_argument("--steps", type=_positive_int, help=STEPS_HELP)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--weights", help="pipeline folder (default: the shipped weights)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--out", default="img2img.png")
    p.set_defaults(func=cmd_img2img)

    p = sub.add_parser("inpaint", help="repaint the white part of a mask to match a prompt")
    p.add_argument("image")
    p.add_argument("mask", help="an image of the same size: white = repaint, black = keep")
    p.add_argument("prompt")
    p.add_argument("--steps", type=_positive_int, help=STEPS_HELP)
    p.add_argument("--guidance", type=float, default=3.0)
    p.add_argument("--sampler", help="ddim (default), ddpm, or a diffusers sampler (dpm++2m, unipc, ...)")
    p.add_argument("--seed", type=_seed, default=0)
    p.add_argument("--weights", help="pipeline folder (default: the shipped weights)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    p.add_argument("--out", default="inpainted.png")
    p.set_defaults(func=cmd_inpaint)

    p = sub.add_parser("bench", help="training and sampling speed; prints JSON")
    p.add_argument("--quick", action="store_true", help="a few steps only (a smoke test)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", help="also write the JSON to this file")
    p.add_argument("--gpu-check", action="store_true",
                   help="the prepared first run on a GPU: gpu presets in bf16 and compiled, judged sampling")
    p.add_argument("--threads", type=int, default=0,
                   help="torch CPU threads (default: torch's choice); run once with 1 and once with 2 to compare")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("compare", help="side-by-side experiments; prints a table, writes JSON")
    compare_sub = p.add_subparsers(dest="compare_command", required=True)
    q = compare_sub.add_parser("denoisers", help="{UNet, DiT-cross, DiT-joint} x {eps + DDIM, flow + Euler} "
                                                 "at one training budget (lesson 08)")
    q.add_argument("--quick", action="store_true", help="a few steps and captions (a smoke test)")
    q.add_argument("--steps", type=_positive_int, help="training steps per cell (default 500)")
    q.add_argument("--cell", action="append", help="run only this cell, e.g. dit-cross/flow (repeatable)")
    q.add_argument("--timing-only", action="store_true", help="only re-measure the step times (interleaved)")
    q.add_argument("--minutes", type=_positive_float,
                   help="equal time instead of equal images: each cell gets the steps its denoiser's "
                        "interleaved step time fits into this many minutes (default cells: the six main ones)")
    q.add_argument("--json", help="write the JSON here (a re-run cell is merged into it)")
    q.set_defaults(func=cmd_compare)
    q = compare_sub.add_parser("attention", help="DiT-cross vs DiT-joint on two-object scenes: binding accuracy "
                                                 "at one training budget (lesson 10, issue 16)")
    q.add_argument("--quick", action="store_true", help="a few steps and captions (a smoke test)")
    q.add_argument("--steps", type=_positive_int, help="training steps per denoiser (default 1000)")
    q.add_argument("--json", help="write the JSON here")
    q.set_defaults(func=cmd_compare)
    q = compare_sub.add_parser("spaces", help="latent vs pixel diffusion at equal training minutes "
                                              "(1, 2, 5, 10, 20): accuracy and sampling cost (lesson 06)")
    q.add_argument("--quick", action="store_true", help="a few seconds per cell (a smoke test)")
    q.add_argument("--space", action="append", choices=("latent", "pixel"), help="only this space (repeatable)")
    q.add_argument("--minutes", type=_positive_float, nargs="+", help="budgets in minutes (default 1 2 5 10 20)")
    q.add_argument("--timing-threads", type=_positive_int,
                   help="torch threads for the step timing that turns minutes into steps (default 2)")
    q.add_argument("--timing-only", action="store_true", help="only time the two UNets (written to --json)")
    q.add_argument("--json", help="write the JSON here (cells run side by side merge into it; "
                                  "a file that holds a timing keeps it, so its cells get the same steps)")
    q.set_defaults(func=cmd_compare)

    p = sub.add_parser("course", help="course tools for instructors")
    course_sub = p.add_subparsers(dest="course_command", required=True)
    q = course_sub.add_parser("student-edition", help="notebooks with solutions stripped")
    q.add_argument("out_dir")
    q.add_argument("--notebooks", help="instructor notebooks folder (default: the repository's)")
    q.set_defaults(func=cmd_course)

    p = sub.add_parser("data", help="the Shapes dataset")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    q = data_sub.add_parser("preview", help="a grid of Shapes images with captions")
    q.add_argument("--out", default="shapes_preview.png")
    q.add_argument("-n", type=_positive_int, default=24)
    q.add_argument("--seed", type=_seed, default=0)
    q.add_argument("--resolution", type=int, choices=(32, 64), default=32)
    q.set_defaults(func=cmd_data)
    _add_debug(parser)
    return parser


def _add_debug(parser: argparse.ArgumentParser) -> None:
    """Accept --debug after the command too (`generate ... --debug`), in every subcommand."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                child.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                                   help="show the full traceback of an error")
                _add_debug(child)


def one_line(err: BaseException) -> str:
    """An exception as one line: what went wrong and where, without a traceback."""
    if isinstance(err, OSError) and err.strerror:
        where = f": {err.filename}" if err.filename else ""
        text = f"{err.strerror}{where}"
    elif isinstance(err, (ValueError, OSError)):
        text = str(err)
    else:                                           # a bug, not bad input: say how to see more
        text = f"{type(err).__name__}: {err} (unexpected; rerun with --debug for the traceback)"
    return " ".join(text.split())


def main(argv=None) -> int:
    """Run one command. Exit status: 0 done, 2 an error (one line on stderr), 130 Ctrl-C;
    with --debug an error shows its full traceback instead."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = getattr(args, "debug", False)
    try:
        args.func(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - every error reaches the user as one line
        if debug:
            raise
        print(f"error: {one_line(err)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
