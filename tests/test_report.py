"""Tests for obliviate.report: files, content, self-containment of the HTML, and (if available) a real browser render."""
from __future__ import annotations

import base64
import io
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from obliviate.report import write_report

CONCEPTS = [None, "fire", "ukiyoe", "sketch"]
VARIANTS = ["conabl", "conabl+projection"]
CHROMIUM = Path("/usr/bin/chromium")


def _summary() -> dict:
    rng = np.random.default_rng(0)
    variants = {}
    for name in VARIANTS:
        steps = [
            {"step": i, "concept": c, "UA": float(rng.uniform(0, 100)), "RA_I": float(rng.uniform(80, 99)),
             "RA_C": float(rng.uniform(80, 99)), "drift_l2": 0.1 * i, "train_seconds": 20.0 * (i > 0),
             "eval_seconds": 11.5}
            for i, c in enumerate(CONCEPTS)
        ]
        variants[name] = {"setting": "sequential", "steps": steps}
    variants["conabl"]["steps"][2]["RA_C"] = None  # a missing metric must render as a dash
    return {"variants": variants, "protocol": "minicanvas", "domain": "style"}


def _grid() -> dict:
    rng = np.random.default_rng(1)
    rows = [f"A circle image in {c} style" for c in CONCEPTS[1:]]
    images = [[rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in CONCEPTS] for _ in rows]
    images[0][0] = Image.fromarray(images[0][0])  # PIL images are accepted as well as arrays
    marked = [[step > r for step in range(len(CONCEPTS))] for r in range(len(rows))]
    return {"variant": "conabl", "rows": rows, "columns": [f"step {i}" for i in range(len(CONCEPTS))],
            "images": images, "marked": marked}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    return write_report(tmp_path_factory.mktemp("report"), _summary(), image_grid=_grid(), title="test <report>")


def test_files_exist(report):
    assert report["markdown"].is_file() and report["html"].is_file()
    assert {p.name for p in report["plots"]} == {"metrics.png", "drift.png", "grid.png"}
    for p in report["plots"]:
        Image.open(p).verify()
    # no leftover temp files from the atomic writes
    assert not list(report["html"].parent.rglob("*.tmp"))


def test_content(report):
    md, page = report["markdown"].read_text("utf-8"), report["html"].read_text("utf-8")
    for text in (md, page):
        for name in VARIANTS:
            assert name in text
        for c in CONCEPTS[1:]:
            assert c in text
        assert "\u2013" in text  # null RA_C
        assert "Last step" in text
    assert "test &lt;report&gt;" in page and "<report>" not in page
    for name in ("metrics", "drift", "grid"):
        assert f"plots/{name}.png" in md


def test_null_renders_as_dash(report):
    md = report["markdown"].read_text("utf-8")
    row = next(line for line in md.splitlines() if line.startswith("| 2 | ukiyoe"))
    assert row.split("|")[5].strip() == "\u2013"


def test_html_self_contained(report):
    page = report["html"].read_text("utf-8")
    assert 'src="http' not in page
    assert not re.search(r"<(link|script)\b", page)
    assert not re.search(r"(href|url\()\s*=?\s*[\"']?(https?:|//)", page)
    srcs = re.findall(r'<img[^>]*\ssrc="([^"]*)"', page)
    assert len(srcs) == 3
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        img.load()
        assert img.format == "PNG" and img.width > 100


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    if not CHROMIUM.exists():
        pytest.skip("chromium not installed")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}"]
    return subprocess.run([str(CHROMIUM), *flags, *args], capture_output=True, text=True, timeout=60)


def test_chromium_screenshot(report, tmp_path):
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,2000", report["html"].as_uri())
    assert shot.is_file()
    lo, hi = Image.open(shot).convert("L").getextrema()
    assert lo != hi  # a blank page would be uniform


def test_chromium_dom(report, tmp_path):
    dom = _chromium(tmp_path, "--dump-dom", report["html"].as_uri()).stdout
    assert "<table>" in dom and "Last step" in dom
    for name in VARIANTS:
        assert name in dom
    assert "ukiyoe" in dom


def test_report_says_what_the_numbers_and_variants_are(tmp_path):
    summary = _summary()
    summary.update(seeds=[188, 288], probe_seeds=[1], images_per_evaluation=96, images_per_probe=48,
                   base_model={"path": "models/minicanvas", "hash": "ab" * 32})
    summary["variants"]["conabl+projection"]["config"] = {
        "method": {"name": "conabl", "steps": 60, "lr": 0.0005},
        "regularizers": [{"name": "projection", "mode": "update", "dedup": 0.95}]}
    out = write_report(tmp_path, summary)
    for text in (out["markdown"].read_text("utf-8"), out["html"].read_text("utf-8")):
        for needle in ("unlearning accuracy", "in-domain retained", "cross-domain retained", "188, 288",
                       "96 per evaluation", "models/minicanvas", "conabl (steps=60, lr=0.0005)",
                       "projection (mode=update, dedup=0.95)"):
            assert needle in text, needle


def test_many_variants_stay_distinguishable():
    from obliviate.report.plots import metrics_png, variant_styles

    names = [f"variant-{i}" for i in range(17)]
    styles = variant_styles(names)
    assert len({st["color"] for st in styles.values()}) == 17
    assert len({st["marker"] for st in styles.values()}) >= 15
    assert len({st["offset"] for st in styles.values()}) == 17  # identical curves do not cover one another
    variants = {n: {"steps": [{"step": i, "UA": 50.0, "RA_I": 90.0, "RA_C": 90.0} for i in range(3)]} for n in names}
    img = Image.open(io.BytesIO(metrics_png(variants)))
    assert img.width > 1400  # the legend sits beside the three panels (13 in wide at 100 dpi), not on them
