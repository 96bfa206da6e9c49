"""obliviate: continual concept unlearning for text-to-image diffusion models.

    from obliviate import Request, Run
    run = Run.open_or_create("runs/mine")            # on the bundled MiniCanvas model
    run.unlearn(Request("fire", "style", "conabl", regularizers=[("projection", {"mode": "update"})]))
    pipe = run.load()                                 # a diffusers StableDiffusionPipeline
"""
__version__ = "0.1.0"

from .continual import Run, unlearn_sequence  # noqa: E402
from .request import Request  # noqa: E402

__all__ = ["Request", "Run", "unlearn_sequence", "__version__"]
