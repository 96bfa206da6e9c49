"""The MiniCanvas protocol: the bundled miniature model's styles and objects, judged by the
small classifiers every MiniCanvas pipeline carries.

The world's plain data (minicanvas.world) as a Catalog."""
from __future__ import annotations

from .catalog import Catalog


def _judge(catalog: Catalog, model_dir, **options):
    from ..minicanvas.classifiers import MiniCanvasJudge

    # the classifiers travel inside the pipeline directory; checkpoint options are UnlearnCanvas's
    if model_dir is None:
        raise ValueError("the minicanvas protocol judges with the classifiers inside the model directory: give --model")
    return MiniCanvasJudge(model_dir)


def minicanvas_catalog() -> Catalog:
    from ..minicanvas import world

    data = world.catalog()
    return Catalog(name="minicanvas", styles=data["styles"], objects=data["objects"], neighbours=data["neighbours"],
                   template=data["template"], style_only=data["style_only"], object_only=data["object_only"],
                   sampler=data["sampler"], style_order=data["style_order"], object_order=data["object_order"],
                   seeds=data["seeds"], judge_factory=_judge)
