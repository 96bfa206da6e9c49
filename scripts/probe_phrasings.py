"""How a model renders the style phrasings ConAbl can train on: the reference's two
("In X Style, an image of a <object>" / "an image of a <object>, in X Style.") and the
catalog's template ("A <object> image in X style"), judged by the MiniCanvas style classifier.

A fine-tuning request erases what its training prompts evoke on the model. If a phrasing
does not evoke the style on the base model, a request trained on it pushes whatever that
prompt draws instead (another style) towards the anchor. This prints, per phrasing, the share
of base-model images judged as the named style, and which styles the misses are judged as.

    OMP_NUM_THREADS=1 python scripts/probe_phrasings.py [--model DIR] [--seeds 0] [--json FILE]
"""
from __future__ import annotations

import argparse
import collections
import json

import numpy as np
import torch
from diffusers import StableDiffusionPipeline

from obliviate.methods.conabl import style_phrasings
from obliviate.minicanvas import bundled_path, world
from obliviate.minicanvas.classifiers import MiniCanvasJudge


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None, help="a MiniCanvas pipeline directory (default: the bundled model)")
    ap.add_argument("--seeds", default="0", help="comma-separated sampling seeds (one image per style x object x seed)")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()
    model = args.model or str(bundled_path())
    seeds = [int(s) for s in args.seeds.split(",")]
    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    judge = MiniCanvasJudge(model)
    styles, objects = list(world.STYLE_NAMES), list(world.OBJECT_NAMES)
    # exactly the prompts ConAbl's reference recipe trains a MiniCanvas style request on
    phrasings = {
        "reference: In X Style, <caption>": lambda s, o: style_phrasings(s, world.OBJECT_ONLY_TEMPLATE.format(object=o))[0],
        "reference: <caption>, in X Style.": lambda s, o: style_phrasings(s, world.OBJECT_ONLY_TEMPLATE.format(object=o))[1],
        "catalog template": lambda s, o: world.prompt(s, o),
    }
    out = {"model": "bundled" if args.model is None else args.model, "seeds": seeds, "sampler": world.SAMPLER, "phrasings": {}}
    for name, make in phrasings.items():
        prompts, labels = [], []
        for s in styles:
            for o in objects:
                prompts.append(make(s, o))
                labels.append(s)
        judged = []
        for seed in seeds:
            for i in range(0, len(prompts), 64):
                g = torch.Generator().manual_seed(seed * 1000 + i)
                ims = pipe(prompts[i : i + 64], num_inference_steps=world.SAMPLER["steps"],
                           guidance_scale=world.SAMPLER["guidance"], generator=g, output_type="np").images
                judged += judge.predict((ims * 255).round().astype(np.uint8))["style"]
        truth = labels * len(seeds)
        per_style = {s: float(np.mean([j == s for j, t in zip(judged, truth) if t == s]) * 100) for s in styles}
        misses = collections.Counter(j for j, t in zip(judged, truth) if j != t)
        out["phrasings"][name] = {"example": make("fire", "circle"), "style_accuracy": float(np.mean([j == t for j, t in zip(judged, truth)]) * 100),
                                  "per_style": per_style, "misses_judged_as": dict(misses.most_common())}
        print(f"{name:38s} e.g. {make('fire', 'circle')!r:42s} style accuracy {out['phrasings'][name]['style_accuracy']:5.1f}%  "
              f"misses judged as {dict(misses.most_common(4))}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
