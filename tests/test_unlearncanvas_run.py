"""UnlearnCanvas from a user's checkpoints, end to end on tiny stand-ins of the same file formats:
a diffusers pipeline directory (no catalog file) and two ViT classifiers saved in timm naming, as
the official release is; the shipped config files drive it with a reduced sampler."""
import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from obliviate.cli import main
from obliviate.protocols.unlearncanvas import build_vit_classifier, unlearncanvas_catalog, to_timm_state_dict

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TINY = dict(image_size=32, patch_size=16, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)


def _classifier(path: Path, num_classes: int, seed: int) -> Path:
    torch.manual_seed(seed)
    model = build_vit_classifier(num_classes, **TINY)
    torch.save({"model_state_dict": to_timm_state_dict(model.state_dict())}, path)
    return path


@pytest.fixture(scope="module")
def checkpoints(random_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("uc")
    model = random_model
    sd = root / "unlearncanvas-sd15"
    shutil.copytree(model, sd, ignore=shutil.ignore_patterns("minicanvas.json", "classifiers"))  # a plain SD pipeline
    p = unlearncanvas_catalog()
    return sd, _classifier(root / "style.pth", len(p.styles), 1), _classifier(root / "object.pth", len(p.objects), 2)


@pytest.mark.parametrize("domain", ["styles", "objects"])
def test_one_command_from_checkpoints_to_the_report(checkpoints, tmp_path, domain, capsys):
    sd, style_ckpt, object_ckpt = checkpoints
    raw = yaml.safe_load((CONFIGS / f"unlearncanvas-{domain}.yaml").read_text())
    assert raw["protocol"] == "unlearncanvas" and raw["eval"]["seeds"] == [188, 288, 588, 688, 888]
    assert raw["eval"]["sampler"] == {"steps": 100, "guidance": 9.0, "scheduler": "ddim", "batch_size": 8}
    # reduced for a CPU test: two requests, two retained, two partners, one seed, 2 sampler steps, tiny judges
    raw["sequence"] = raw["sequence"][:2]
    p = unlearncanvas_catalog()
    own, other = (p.retained_styles, p.retained_objects) if domain == "styles" else (p.retained_objects, p.retained_styles)
    raw.update(retained=own[:2], partners=other[:2])
    raw["eval"] = {"seeds": [188], "probe_seeds": [1], "sampler": {"steps": 2, "guidance": 9.0, "scheduler": "ddim"}}
    raw["classifiers"]["arch"] = TINY
    keep = raw["variants"][1] if domain == "styles" else raw["variants"][2]  # projection; LoRA + projection
    keep.setdefault("method_settings", {}).update(steps=3, anchor_images=4, batch_size=2, sampler_steps=2)  # over the file's defaults:
    raw["variants"], raw["grid"] = [keep], {"variant": keep["name"], "prompts": 3}
    cfg = tmp_path / "uc.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    code = main(["--quiet", "run", str(cfg), "--out", str(out), "--model", str(sd), "--style-classifier", str(style_ckpt),
                 "--object-classifier", str(object_ckpt), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["variants"][keep["name"]]["steps"]
    assert [r["step"] for r in rows] == [0, 1, 2] and rows[2]["concept"] == raw["sequence"][1]
    for r in rows:
        for key in ("UA", "RA_I", "RA_C"):
            assert r[key] is None or 0 <= r[key] <= 100
    if domain == "styles":
        # (objects: the stand-in's MiniCanvas tokenizer maps "Bears" and "Horses" to the same unknown
        # token, so ConAbl's target and anchor prompts coincide and the change is exactly 0)
        assert rows[1]["drift_l2"] > 0
    report = (out / "report.md").read_text()
    assert "RA" in report and raw["sequence"][0] in report
    # trained with the UnlearnCanvas catalog: prompts in the benchmark's template, anchors from the benchmark
    run = json.loads((out / "variants" / keep["name"].replace("+", "-").lower() / "run" / "run.json").read_text())
    assert run["catalog"] == "unlearncanvas"
    step = json.loads(next((out / "variants").glob("*/run/steps/001-*/step.json")).read_text())
    if domain == "objects":
        assert step["anchor"] == "Horses"  # Bears -> Horses, the benchmark's own anchor
        assert step["adapter"]["rank"] == "4"


def test_missing_classifiers_are_a_clear_error(tmp_path, capsys):
    sd = tmp_path / "sd"  # the classifier files are checked first, before the model and any ViT is built
    style_ckpt = _classifier(tmp_path / "style.pth", len(unlearncanvas_catalog().styles), 1)
    code = main(["--quiet", "run", str(CONFIGS / "unlearncanvas-styles.yaml"), "--out", str(tmp_path / "o"),
                 "--model", str(sd), "--style-classifier", str(style_ckpt), "--object-classifier", str(tmp_path / "none.pth")])
    assert code == 2
    assert "none.pth" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
