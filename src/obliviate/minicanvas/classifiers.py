"""Small CNN classifiers that judge MiniCanvas images: one for style, one for object.

They play the role of UnlearnCanvas's ViT-L/16 style and object classifiers.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import world


class ConceptClassifier(torch.nn.Module):
    """Input: images in [-1, 1], shape (N, 3, 32, 32). Output: logits (N, n_classes)."""

    def __init__(self, n_classes: int, width: int = 16):
        super().__init__()
        w = width

        def block(cin, cout):
            return torch.nn.Sequential(
                torch.nn.Conv2d(cin, cout, 3, padding=1), torch.nn.BatchNorm2d(cout), torch.nn.ReLU(),
                torch.nn.Conv2d(cout, cout, 3, padding=1), torch.nn.BatchNorm2d(cout), torch.nn.ReLU(),
            )

        self.features = torch.nn.Sequential(
            block(3, w), torch.nn.MaxPool2d(2), block(w, 2 * w), torch.nn.MaxPool2d(2), block(2 * w, 4 * w),
            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        )
        self.head = torch.nn.Linear(4 * w, n_classes)
        self.width = width

    def forward(self, x):
        return self.head(self.features(x))


def save_classifiers(models: dict[str, ConceptClassifier], directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    labels = {"style": list(world.STYLE_NAMES), "object": list(world.OBJECT_NAMES)}
    for name, model in models.items():
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(directory / f"{name}.safetensors"))
    widths = {name: model.width for name, model in models.items()}
    (directory / "config.json").write_text(json.dumps({"labels": labels, "width": widths, "input": "RGB in [-1, 1], 32x32"}, indent=2))


class MiniCanvasJudge:
    """Loads both classifiers from a pipeline directory and labels images."""

    def __init__(self, pipeline_dir: str | Path, device: str = "cpu"):
        directory = Path(pipeline_dir) / "classifiers"
        config_path = directory / "config.json"
        if not config_path.exists():
            raise FileNotFoundError(f"{directory} has no MiniCanvas classifiers (config.json missing)")
        config = json.loads(config_path.read_text())
        self.labels = config["labels"]
        self.models = {}
        for name, labels in self.labels.items():
            model = ConceptClassifier(len(labels), width=config.get("width", {}).get(name, 16))
            model.load_state_dict(load_file(str(directory / f"{name}.safetensors")))
            self.models[name] = model.eval().requires_grad_(False).to(device)
        self.device = device

    @torch.no_grad()
    def predict(self, images) -> dict[str, list[str]]:
        """images: uint8 array (N, H, W, 3), float array in [0, 1], or a list of PIL images."""
        if isinstance(images, list):
            images = np.stack([np.asarray(im.convert("RGB")) for im in images])
        x = torch.as_tensor(np.asarray(images))
        x = x.float() / 127.5 - 1 if x.dtype == torch.uint8 else x.float() * 2 - 1
        x = x.permute(0, 3, 1, 2)
        if x.shape[-1] != world.IMAGE_SIZE:
            x = torch.nn.functional.interpolate(x, size=world.IMAGE_SIZE, mode="area")
        out = {}
        for name, model in self.models.items():
            idx = torch.cat([model(x[i : i + 512].to(self.device)).argmax(-1).cpu() for i in range(0, len(x), 512)])
            out[name] = [self.labels[name][i] for i in idx.tolist()]
        return out
