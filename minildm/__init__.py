"""minildm: a from-scratch course in latent diffusion.

Start with notebooks/00_welcome.ipynb. Each module holds one idea:

    data/shapes.py  the captioned Shapes world        text.py      the tokenizer
    data/toy2d.py   2-D point clouds                  schedule.py  forward noising
    unet.py         the denoiser                      samplers.py  DDPM and DDIM
    clip.py         a mini CLIP                       vae.py       a tiny VAE
    pipeline.py     text-to-image latent diffusion    train.py     the one training loop
"""
__version__ = "0.1.0"


def __getattr__(name):
    # Lazy so `import minildm` stays fast and works before every lesson exists.
    if name == "LatentDiffusionPipeline":
        from .pipeline import LatentDiffusionPipeline
        return LatentDiffusionPipeline
    raise AttributeError(f"module 'minildm' has no attribute {name!r}")
