"""`obliviate minicanvas check`: the figures of the model card, measured, rerunnable.

It lives in evaluate/, not in minicanvas/: it measures the bundled model with the evaluation
sampler and the protocol's catalog, so it sits above both, while minicanvas/ (world, model,
classifiers) stays a leaf that protocols/ and evaluate/ import from."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from ..delta import atomic_write_json
from ..minicanvas import world
from ..minicanvas.classifiers import MiniCanvasJudge
from ..model import concept_token_embedding, load_pipeline
from ..protocols import minicanvas_catalog
from .sampler import SamplerConfig, generate

HELD_OUT_SEED = 200_000  # renders never seen by any training stage
EVAL_SEEDS = (188, 288, 588, 688, 888)  # UnlearnCanvas's seeds


def similarity(vectors: torch.Tensor) -> np.ndarray:
    v = torch.nn.functional.normalize(vectors.double(), dim=-1)
    return (v @ v.T).numpy()


def neighbour_agreement(names: list[str], sim: np.ndarray, neighbours: dict[str, list[str]]) -> tuple[float, dict]:
    hits, nearest = 0, {}
    for i, name in enumerate(names):
        row = sim[i].copy()
        row[i] = -np.inf
        other = names[int(row.argmax())]
        nearest[name] = other
        hits += other in neighbours[name]
    return hits / len(names), nearest


def text_state_stability(pipe, catalog) -> dict:
    """How much a concept token's state is the word's own: the cosine between its state after the
    neutral prefix ("an image in the style of X" / "an image of a X", the vector the projection
    regularizer uses) and its state inside the prompt template with every partner of the other
    domain, averaged over partners, then over concepts."""
    per: dict[str, float] = {}
    for domain, names, partners in (("style", catalog.styles, catalog.objects), ("object", catalog.objects, catalog.styles)):
        for name in names:
            neutral = concept_token_embedding(pipe, catalog.single(name, domain), name)
            inside = torch.stack([
                concept_token_embedding(pipe, catalog.prompt(name, p) if domain == "style" else catalog.prompt(p, name), name)
                for p in partners
            ])
            per[name] = float(torch.nn.functional.cosine_similarity(inside.double(), neutral.double()[None]).mean())
    styles = float(np.mean([per[n] for n in catalog.styles]))
    objects = float(np.mean([per[n] for n in catalog.objects]))
    return {"mean": float(np.mean(list(per.values()))), "styles": styles, "objects": objects, "per_concept": per}


def heatmap(path: Path, matrices: dict[str, tuple[list[str], np.ndarray]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(matrices), figsize=(7 * len(matrices), 6))
    for ax, (title, (names, m)) in zip(np.atleast_1d(axes), matrices.items()):
        im = ax.imshow(m, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(len(names)), names, rotation=90)
        ax.set_yticks(range(len(names)), names)
        ax.set_title(title)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def image_grid(images: list[list[np.ndarray]], scale: int = 2, pad: int = 2) -> np.ndarray:
    rows, cols = len(images), len(images[0])
    h, w = images[0][0].shape[:2]
    grid = np.full((rows * (h * scale + pad) + pad, cols * (w * scale + pad) + pad, 3), 255, np.uint8)
    for r, row in enumerate(images):
        for c, img in enumerate(row):
            big = img.repeat(scale, 0).repeat(scale, 1)
            y, x = pad + r * (h * scale + pad), pad + c * (w * scale + pad)
            grid[y : y + h * scale, x : x + w * scale] = big
    return grid


def check(model_dir, out, *, seeds: int = 3, sampler: SamplerConfig | None = None, quiet: bool = False) -> dict:
    from PIL import Image
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    sampler = sampler or SamplerConfig()
    if not 1 <= seeds <= len(EVAL_SEEDS):
        raise ValueError(f"--seeds must be between 1 and {len(EVAL_SEEDS)}, got {seeds}")
    pipe = load_pipeline(model_dir, device="cpu")
    judge = MiniCanvasJudge(model_dir)
    catalog = minicanvas_catalog()
    styles, objects = catalog.styles, catalog.objects

    # 1. classifiers on held-out renders
    triples = [(s, o, HELD_OUT_SEED + k) for s in styles for o in objects for k in range(4)]
    renders = world.render_array(triples)
    pred = judge.predict(renders)
    render_style = 100 * np.mean([p == t[0] for p, t in zip(pred["style"], triples)])
    render_object = 100 * np.mean([p == t[1] for p, t in zip(pred["object"], triples)])

    # 1b. the same renders through the VAE and back: what the latent space can carry at all
    # (separates a VAE that loses thin parts from a UNet that does not learn them)
    with torch.no_grad():
        x = torch.from_numpy(renders).permute(0, 3, 1, 2).float() / 127.5 - 1
        vae = pipe.vae
        recon = torch.cat([vae.decode(vae.encode(x[i : i + 256]).latent_dist.mean).sample for i in range(0, len(x), 256)])
    recon = ((recon.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    recon_ok = np.array([p == t[1] for p, t in zip(judge.predict(recon)["object"], triples)])
    recon_per_object = {o: 100 * float(recon_ok[[t[1] == o for t in triples]].mean()) for o in objects}

    # 2. classifiers on generated images, every pair x seeds, default sampler
    pairs = [(s, o, EVAL_SEEDS[k]) for s in styles for o in objects for k in range(seeds)]
    bar = tqdm(total=len(pairs), desc="generating", disable=quiet)
    t0 = time.time()
    images = generate(pipe, [catalog.prompt(s, o) for s, o, _ in pairs], [k for _, _, k in pairs], sampler, progress=bar.update)
    sample_seconds = time.time() - t0
    bar.close()
    pred = judge.predict(np.stack(images))
    style_ok = np.array([p == t[0] for p, t in zip(pred["style"], pairs)])
    object_ok = np.array([p == t[1] for p, t in zip(pred["object"], pairs)])
    per_style = {s: 100 * float(style_ok[[t[0] == s for t in pairs]].mean()) for s in styles}
    per_object = {o: 100 * float(object_ok[[t[1] == o for t in pairs]].mean()) for o in objects}

    # 3. text-embedding similarity of the concepts and the designed neighbourhoods
    style_vecs = torch.stack([concept_token_embedding(pipe, catalog.single(s, "style"), s) for s in styles])
    object_vecs = torch.stack([concept_token_embedding(pipe, catalog.single(o, "object"), o) for o in objects])
    style_sim, object_sim = similarity(style_vecs), similarity(object_vecs)
    agree_s, nearest_s = neighbour_agreement(styles, style_sim, catalog.neighbours)
    agree_o, nearest_o = neighbour_agreement(objects, object_sim, catalog.neighbours)
    stability = text_state_stability(pipe, catalog)
    heatmap(out / "similarity.png", {"style-style cosine": (styles, style_sim), "object-object cosine": (objects, object_sim)})

    # 4. a grid: styles (rows) x objects (columns), first seed
    first = {(s, o): img for (s, o, k), img in zip(pairs, images) if k == EVAL_SEEDS[0]}
    Image.fromarray(image_grid([[first[(s, o)] for o in objects] for s in styles])).save(out / "generated_grid.png")
    held = {(s, o): img for (s, o, k), img in zip(triples, renders) if k == HELD_OUT_SEED}
    Image.fromarray(image_grid([[held[(s, o)] for o in objects] for s in styles], scale=3)).save(out / "renders.png")

    info_path = Path(model_dir) / "minicanvas.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    result = {
        "style_accuracy": float(style_ok.mean() * 100), "object_accuracy": float(object_ok.mean() * 100),
        "render_style_accuracy": float(render_style), "render_object_accuracy": float(render_object),
        "neighbour_agreement": (agree_s * len(styles) + agree_o * len(objects)) / (len(styles) + len(objects)),
        "neighbour_agreement_styles": agree_s, "neighbour_agreement_objects": agree_o,
        "nearest_concept": {**nearest_s, **nearest_o},
        "text_state_stability": stability["mean"], "text_state_stability_styles": stability["styles"],
        "text_state_stability_objects": stability["objects"], "text_state_stability_per_concept": stability["per_concept"],
        "per_style_accuracy": per_style, "per_object_accuracy": per_object,
        "vae_object_accuracy": float(recon_ok.mean() * 100), "vae_per_object_accuracy": recon_per_object,
        "style_similarity": {"names": styles, "matrix": np.round(style_sim, 4).tolist()},
        "object_similarity": {"names": objects, "matrix": np.round(object_sim, 4).tolist()},
        "generated_images": len(pairs), "seeds": list(EVAL_SEEDS[:seeds]), "sampler": sampler.__dict__,
        "sampling_images_per_second": len(pairs) / sample_seconds, "torch_threads": torch.get_num_threads(),
        "held_out_renders": len(triples), "version": info.get("version", "1.0"), "image_size": info.get("image_size"), "latent_size": info.get("latent_size"),
        "parameters": info.get("parameters"), "build_seconds": info.get("build_seconds"),
        "build_timings_seconds": info.get("timings_seconds"),
    }
    atomic_write_json(out / "check.json", result)
    return result
