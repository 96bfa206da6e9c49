"""The UnlearnCanvas evaluation protocol as data, and its two ViT-L/16 judges.

``unlearncanvas.yaml`` (shipped next to this module) holds the official lists and settings:
label spaces of the style (51) and object (20) classifiers in class-index order, the 12+12
style order / retained styles, the 12 objects in order with their anchors and the 8 retained
objects, and the sampling setup (512 px, 100 steps, guidance 9.0, seeds 188/288/588/688/888,
template ``"A {object} image in {style} style."``).

Prompts: UnlearnCanvas writes style names with spaces in prompts (``"Van_Gogh"`` ->
``"A Dogs image in Van Gogh style."``); labels keep their underscores everywhere else
(file names, classifier classes). :func:`prompt_name` does that substitution and
the catalog's ``prompt`` applies it (``spaces_in_prompts``).

Judges: the official classifiers are timm ``vit_large_patch16_224`` models with a linear head.
They are rebuilt here with transformers' ``ViTForImageClassification`` (no download, no timm);
:func:`load_classifier` reads a user-supplied checkpoint in transformers naming (current or
pre-5.x) or in timm naming (the official release; fused ``qkv`` is split), with or without a
``model_state_dict`` / ``state_dict`` / ``model`` wrapper or a ``module.`` style prefix.
Loading is strict: the class count, every key and every shape must match.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

import torch

from .catalog import Catalog

__all__ = [
    "UnlearnCanvasJudge",
    "build_vit_classifier",
    "convert_state_dict",
    "load_classifier",
    "unlearncanvas_catalog",
    "prompt_name",
    "to_timm_state_dict",
]

PROTOCOL_FILE = Path(__file__).with_name("unlearncanvas.yaml")

# ViT-L/16 as in timm's vit_large_patch16_224 (LayerNorm eps 1e-6, exact GELU, qkv bias).
VIT_L16 = dict(image_size=224, patch_size=16, hidden_size=1024, num_hidden_layers=24,
               num_attention_heads=16, intermediate_size=4096)


def prompt_name(label: str) -> str:
    """How a label is written inside a prompt: underscores become spaces ("Van_Gogh" -> "Van Gogh")."""
    return label.replace("_", " ")


# --------------------------------------------------------------------------------------------
# protocol
# --------------------------------------------------------------------------------------------
def _judge(catalog: Catalog, model_dir, *, style_classifier=None, object_classifier=None, device="cpu", **arch):
    if not style_classifier or not object_classifier:
        raise ValueError("the unlearncanvas protocol needs --style-classifier and --object-classifier checkpoint files")
    return UnlearnCanvasJudge(style_classifier, object_classifier, device=device, catalog=catalog, **arch)


def unlearncanvas_catalog(path: str | Path | None = None) -> Catalog:
    """Read the protocol yaml (by default the one shipped next to this module) into a Catalog."""
    import yaml

    path = Path(path) if path is not None else PROTOCOL_FILE
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    sampling, clf = data["sampling"], data.get("classifier", {})
    # the official evaluation sampler; training reads its steps and guidance (ConAbl's anchor images)
    sampler = {"steps": int(sampling["steps"]), "guidance": float(sampling["guidance"]), "scheduler": "ddim", "batch_size": 8}
    return Catalog(
        name="unlearncanvas",
        styles=[str(s) for s in data["style_labels"]],
        objects=[str(s) for s in data["object_labels"]],
        template=str(sampling["template"]),
        style_only="an image in the style of {style}", object_only="an image of a {object}",
        sampler=sampler,
        anchors={str(k): str(v) for k, v in data["object_anchors"].items()},
        spaces_in_prompts=True,
        style_order=[str(s) for s in data["style_order"]],
        retained_styles=[str(s) for s in data["retained_styles"]],
        object_order=[str(s) for s in data["object_order"]],
        retained_objects=[str(s) for s in data["retained_objects"]],
        seeds=[int(s) for s in sampling["seeds"]],
        resolution=int(sampling["resolution"]),
        judge_factory=_judge, judge_inputs="checkpoints",
        judge_settings={"image_size": int(clf.get("image_size", 224)),
                        "mean": [float(x) for x in clf.get("mean", [0.5] * 3)],
                        "std": [float(x) for x in clf.get("std", [0.5] * 3)],
                        "interpolation": str(clf.get("interpolation", "bilinear"))},
    )


# --------------------------------------------------------------------------------------------
# classifier construction
# --------------------------------------------------------------------------------------------
def _vit_config(num_classes: int, image_size: int, patch_size: int, hidden_size: int, num_hidden_layers: int,
                num_attention_heads: int, intermediate_size: int, layer_norm_eps: float):
    from transformers import ViTConfig

    return ViTConfig(image_size=image_size, patch_size=patch_size, num_channels=3, hidden_size=hidden_size,
                     num_hidden_layers=num_hidden_layers, num_attention_heads=num_attention_heads,
                     intermediate_size=intermediate_size, hidden_act="gelu", layer_norm_eps=layer_norm_eps,
                     qkv_bias=True, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                     num_labels=num_classes)


def build_vit_classifier(num_classes: int, *, image_size: int = 224, patch_size: int = 16, hidden_size: int = 1024,
                         num_hidden_layers: int = 24, num_attention_heads: int = 16, intermediate_size: int = 4096,
                         layer_norm_eps: float = 1e-6, _meta: bool = False) -> torch.nn.Module:
    """A randomly initialised ViT (default ViT-L/16, 224 px) with a linear head over ``num_classes``.

    transformers' ViTForImageClassification: CLS token -> final LayerNorm -> Linear, which is
    what timm's vit_large_patch16_224 computes with global_pool="token". Nothing is downloaded.
    """
    from transformers import ViTForImageClassification

    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    config = _vit_config(num_classes, image_size, patch_size, hidden_size, num_hidden_layers,
                         num_attention_heads, intermediate_size, layer_norm_eps)
    if _meta:  # skeleton only; load_classifier fills it with assign=True (saves the random init)
        with torch.device("meta"):
            model = ViTForImageClassification(config)
    else:
        model = ViTForImageClassification(config)
    return model.eval()


# --------------------------------------------------------------------------------------------
# state-dict naming: timm <-> transformers (current "vit.layers.N..." and pre-5.x "vit.encoder.layer.N...")
# --------------------------------------------------------------------------------------------
_WRAPPER_KEYS = ("model_state_dict", "state_dict", "model", "module")
_PREFIXES = ("module.", "_orig_mod.", "model.")

# canonical (current transformers) per-layer suffix <-> pre-5.x suffix
_LEGACY_LAYER = (("attention.q_proj.", "attention.attention.query."),
                 ("attention.k_proj.", "attention.attention.key."),
                 ("attention.v_proj.", "attention.attention.value."),
                 ("attention.o_proj.", "attention.output.dense."),
                 ("mlp.fc1.", "intermediate.dense."),
                 ("mlp.fc2.", "output.dense."),
                 ("layernorm_before.", "layernorm_before."),
                 ("layernorm_after.", "layernorm_after."))
_TIMM_TOP = {"cls_token": "vit.embeddings.cls_token",
             "pos_embed": "vit.embeddings.position_embeddings",
             "patch_embed.proj.weight": "vit.embeddings.patch_embeddings.projection.weight",
             "patch_embed.proj.bias": "vit.embeddings.patch_embeddings.projection.bias",
             "norm.weight": "vit.layernorm.weight", "norm.bias": "vit.layernorm.bias",
             "head.weight": "classifier.weight", "head.bias": "classifier.bias"}
_TIMM_LAYER = (("norm1.", "layernorm_before."), ("norm2.", "layernorm_after."),
               ("attn.proj.", "attention.o_proj."), ("mlp.fc1.", "mlp.fc1."), ("mlp.fc2.", "mlp.fc2."))
_CANON_LAYER_RE = re.compile(r"^vit\.layers\.(\d+)\.(.+)$")
_LEGACY_LAYER_RE = re.compile(r"^vit\.encoder\.layer\.(\d+)\.(.+)$")
_TIMM_LAYER_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


def _is_timm(keys) -> bool:
    return any(k in ("cls_token", "pos_embed") or k.startswith(("blocks.", "patch_embed.")) for k in keys)


def _swap_suffix(rest: str, table, frm: int, to: int) -> str | None:
    for pair in table:
        if rest.startswith(pair[frm]):
            return pair[to] + rest[len(pair[frm]):]
    return None


def _from_timm(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key in _TIMM_TOP:
            out[_TIMM_TOP[key]] = value
            continue
        m = _TIMM_LAYER_RE.match(key)
        if m:
            layer, rest = m.groups()
            if rest in ("attn.qkv.weight", "attn.qkv.bias"):
                # timm reshapes qkv output as (B, N, 3, heads, head_dim): rows [q; k; v]
                if value.shape[0] % 3:
                    raise ValueError(f"{key} has {value.shape[0]} rows, not divisible by 3")
                kind = rest.rsplit(".", 1)[1]
                for name, part in zip(("q", "k", "v"), value.chunk(3, dim=0)):
                    out[f"vit.layers.{layer}.attention.{name}_proj.{kind}"] = part.clone()
                continue
            new = _swap_suffix(rest, _TIMM_LAYER, 0, 1)
            if new is not None:
                out[f"vit.layers.{layer}.{new}"] = value
                continue
        out[key] = value  # unknown: kept, reported by the strict check
    return out


def _relayer(sd: Mapping[str, torch.Tensor], pattern: re.Pattern, prefix: str, frm: int, to: int) -> dict[str, torch.Tensor]:
    """Rename per-layer keys between the current ("vit.layers.N", column 0 of _LEGACY_LAYER)
    and the pre-5.x ("vit.encoder.layer.N", column 1) transformers naming; others kept."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        m = pattern.match(key)
        new = _swap_suffix(m.group(2), _LEGACY_LAYER, frm, to) if m else None
        out[f"{prefix}.{m.group(1)}.{new}" if new is not None else key] = value
    return out


def _from_legacy(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return _relayer(sd, _LEGACY_LAYER_RE, "vit.layers", 1, 0)


def _to_legacy(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return _relayer(sd, _CANON_LAYER_RE, "vit.encoder.layer", 0, 1)


def convert_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Any accepted naming (timm, transformers current or pre-5.x) -> current transformers naming."""
    if _is_timm(state_dict):
        return _from_timm(state_dict)
    if any(_LEGACY_LAYER_RE.match(k) for k in state_dict):
        return _from_legacy(state_dict)
    return dict(state_dict)


def to_timm_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ViTForImageClassification state dict in timm vit_*_patch16 naming (q/k/v fused into qkv)."""
    sd = convert_state_dict(state_dict)
    top = {v: k for k, v in _TIMM_TOP.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key in top:
            out[top[key]] = value
            continue
        m = _CANON_LAYER_RE.match(key)
        if not m:
            raise ValueError(f"no timm name for {key}")
        layer, rest = m.groups()
        qm = re.match(r"^attention\.([qkv])_proj\.(weight|bias)$", rest)
        if qm:
            qkv.setdefault((layer, qm.group(2)), {})[qm.group(1)] = value
            continue
        new = _swap_suffix(rest, _TIMM_LAYER, 1, 0)
        if new is None:
            raise ValueError(f"no timm name for {key}")
        out[f"blocks.{layer}.{new}"] = value
    for (layer, kind), parts in qkv.items():
        out[f"blocks.{layer}.attn.qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


# --------------------------------------------------------------------------------------------
# checkpoint loading
# --------------------------------------------------------------------------------------------
def _read_checkpoint(path: Path) -> Any:
    if not path.exists():
        raise FileNotFoundError(f"classifier checkpoint {path} does not exist")
    if not path.is_file():
        raise ValueError(f"classifier checkpoint {path} is not a file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as e:  # SafetensorError, OSError, ...
            raise ValueError(f"cannot read classifier checkpoint {path} as safetensors: {e}") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # UnpicklingError, RuntimeError (bad zip), EOFError, ...
        raise ValueError(
            f"cannot read classifier checkpoint {path} with torch.load(weights_only=True): "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
            "(the file is corrupt, or it pickles objects other than tensors/containers)") from e


def _extract_state_dict(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    for _ in range(4):  # unwrap {"model_state_dict": {...}, "optimizer": ..., "epoch": ...} etc.
        if not isinstance(obj, Mapping):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        what = f"top-level keys {list(obj)[:8]}" if isinstance(obj, Mapping) else type(obj).__name__
        raise ValueError(f"classifier checkpoint {path} holds no state dict of tensors ({what})")
    sd = {str(k): v for k, v in obj.items()}
    changed = True
    while changed:  # strip a prefix shared by every key: "module." (DDP), "_orig_mod." (compile), "model."
        changed = False
        for p in _PREFIXES:
            if all(k.startswith(p) for k in sd):
                sd = {k[len(p):]: v for k, v in sd.items()}
                changed = True
    return sd


def _few(names, n: int = 5) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def load_classifier(checkpoint_path: str | Path, num_classes: int, **arch) -> torch.nn.Module:
    """Build the ViT classifier (``arch`` overrides :func:`build_vit_classifier`'s sizes) and load weights.

    Accepts ``.safetensors`` or ``torch.save`` files (``.pt``/``.pth``/``.bin``, read with
    ``weights_only=True``) holding a state dict in timm or transformers naming, possibly wrapped
    (``model_state_dict``/``state_dict``/``model``) or prefixed (``module.``). Raises
    FileNotFoundError for a missing file and ValueError for an unreadable file, a head with the
    wrong number of classes, or any missing / unexpected / mis-shaped key. Returns the model in
    eval mode, float32, on the CPU, with gradients off.
    """
    path = Path(checkpoint_path)
    sd = convert_state_dict(_extract_state_dict(_read_checkpoint(path), path))

    head = sd.get("classifier.weight")
    if head is not None and head.ndim == 2 and head.shape[0] != num_classes:
        raise ValueError(f"classifier checkpoint {path} has a head with {head.shape[0]} classes, "
                         f"expected {num_classes}")

    model = build_vit_classifier(num_classes, **arch, _meta=True)
    expected = model.state_dict()
    if any(k.startswith("vit.encoder.layer.") for k in expected):  # transformers < 5 naming
        sd = _to_legacy(sd)
    missing = set(expected) - set(sd)
    unexpected = set(sd) - set(expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing keys: {_few(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_few(unexpected)}")
        raise ValueError(f"classifier checkpoint {path} does not match the ViT classifier "
                         f"({'; '.join(parts)})")
    bad = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
           if tuple(sd[k].shape) != tuple(v.shape)]
    if bad:
        raise ValueError(f"classifier checkpoint {path} has tensors of the wrong shape for the requested "
                         f"architecture {arch or VIT_L16} (checkpoint vs model): {_few(bad, 4)}")
    sd = {k: v.detach().to(torch.float32).contiguous() for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    model.requires_grad_(False)
    return model.eval()


# --------------------------------------------------------------------------------------------
# judge
# --------------------------------------------------------------------------------------------
def _resample(name: str):
    from PIL import Image

    table = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
             "nearest": Image.Resampling.NEAREST, "lanczos": Image.Resampling.LANCZOS}
    if name not in table:
        raise ValueError(f"unknown interpolation {name!r}; choose from {sorted(table)}")
    return table[name]


class UnlearnCanvasJudge:
    """The style (51-way) and object (20-way) classifiers of UnlearnCanvas.

    ``arch`` overrides the ViT sizes (tests use tiny models); its ``image_size`` is also the size
    images are resized to. Preprocessing follows the protocol yaml: resize to image_size x
    image_size with PIL (``interpolation``, default from the yaml: bilinear as in the official
    torchvision ``Resize``), scale to [0, 1], normalise with mean 0.5 / std 0.5.
    """

    def __init__(self, style_checkpoint: str | Path, object_checkpoint: str | Path, *, device: str | torch.device = "cpu",
                 catalog: Catalog | None = None, interpolation: str | None = None,
                 batch_size: int = 32, **arch):
        self.catalog = catalog or unlearncanvas_catalog()
        pre = self.catalog.judge_settings
        self.device = torch.device(device)
        self.image_size = int(arch.get("image_size", pre["image_size"]))
        self.resample = _resample(interpolation or pre["interpolation"])
        self.batch_size = int(batch_size)
        self.mean = torch.tensor(pre["mean"], dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(pre["std"], dtype=torch.float32).view(1, 3, 1, 1)
        self.style_model = load_classifier(style_checkpoint, len(self.catalog.styles), **arch).to(self.device)
        self.object_model = load_classifier(object_checkpoint, len(self.catalog.objects), **arch).to(self.device)

    # images -> normalised (N, 3, S, S) float tensor
    def preprocess(self, images) -> torch.Tensor:
        import numpy as np
        from PIL import Image

        if isinstance(images, Image.Image):
            images = [images]
        elif isinstance(images, torch.Tensor):
            images = images.detach().cpu().numpy()
        if isinstance(images, np.ndarray):
            if images.ndim == 3:
                images = images[None]
            if images.ndim != 4 or images.shape[-1] != 3:
                raise ValueError(f"expected a uint8 array of shape (N, H, W, 3), got {images.shape}")
        batch = []
        for i, img in enumerate(images):
            if isinstance(img, torch.Tensor):
                img = img.detach().cpu().numpy()
            if isinstance(img, np.ndarray):
                if img.dtype != np.uint8:
                    raise ValueError(f"image {i}: expected uint8 pixels, got {img.dtype}")
                img = Image.fromarray(img)
            if not isinstance(img, Image.Image):
                raise TypeError(f"image {i}: expected a PIL image or a uint8 array, got {type(img).__name__}")
            img = img.convert("RGB").resize((self.image_size, self.image_size), self.resample)
            batch.append(torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()))
        if not batch:
            raise ValueError("no images given")
        x = torch.stack(batch).permute(0, 3, 1, 2).to(torch.float32) / 255.0
        return (x - self.mean) / self.std

    @torch.no_grad()
    def logits(self, images) -> dict[str, torch.Tensor]:
        x = self.preprocess(images)
        out: dict[str, list[torch.Tensor]] = {"style": [], "object": []}
        for start in range(0, x.shape[0], self.batch_size):
            xb = x[start:start + self.batch_size].to(self.device)
            out["style"].append(self.style_model(pixel_values=xb).logits.float().cpu())
            out["object"].append(self.object_model(pixel_values=xb).logits.float().cpu())
        return {k: torch.cat(v) for k, v in out.items()}

    def predict(self, images) -> dict[str, list[str]]:
        """{"style": [label per image], "object": [label per image]} (argmax of each classifier)."""
        lg = self.logits(images)
        return {"style": [self.catalog.styles[i] for i in lg["style"].argmax(-1).tolist()],
                "object": [self.catalog.objects[i] for i in lg["object"].argmax(-1).tolist()]}
