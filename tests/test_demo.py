"""`obliviate demo`: its progress lines, its table (DIR/demo.json), the README's copy of that table,
and the report's first screen."""
import json
import re
from pathlib import Path

from obliviate import demo
from obliviate.experiment import load_experiment

ROOT = Path(__file__).resolve().parents[1]


def tiny_demo(model):
    fast = {"steps": 3, "anchor_images": 2, "sampler_steps": 2, "batch_size": 2}
    return {
        "name": "tiny-demo", "model": str(model), "protocol": "minicanvas", "domain": "style",
        "sequence": ["fire", "ice"], "retained": ["lava"], "partners": ["circle", "star"],
        "eval": {"seeds": [188], "probe_seeds": [5], "sampler": {"steps": 2, "guidance": 3.0}},
        "grid": {"variant": "conabl", "prompts": 3},
        "variants": [{"name": "conabl", "method_settings": fast},
                     {"name": "uce", "method": "uce"}],
    }


def test_one_progress_line_per_request_and_evaluation(random_model, tmp_path):
    exp = load_experiment(tiny_demo(random_model))
    lines = []
    runner = demo.DemoRunner(exp, tmp_path / "d", say=lambda text, **_: lines.append(text))
    summary = runner.run()
    requests = [ln for ln in lines if "] request " in ln]
    evaluations = [ln for ln in lines if "] evaluation " in ln]
    assert len(requests) == 4 and len(evaluations) == 5  # 2 variants x 2 requests; the base model once
    assert requests[-1].split("] ")[1].startswith("request 4/4: uce -ice in ")
    assert "evaluation 1/5: the base model" in evaluations[0]
    assert "evaluation 5/5: uce after 2 requests" in evaluations[-1] and "(6 images," in evaluations[-1]
    for line in requests + evaluations:
        assert re.match(r"\[ *(\d+m\d\ds|\d+s)\] ", line) and re.search(r"\| about (\d+m\d\ds|\d+s) left$", line), line
    assert lines[-1].endswith("about 0s left")

    table = demo.demo_table(summary)
    text = json.dumps(table)
    assert str(tmp_path) not in text and "seconds" not in text  # no machine paths, no timings
    assert table["images"] == {"per_evaluation": 6, "per_concept": 2, "RA_I": 2, "RA_C": 6}
    last = summary["variants"]["uce"]["steps"][-1]
    assert table["variants"]["uce"]["steps"][-1]["UA"] == last["UA"]

    # a rerun reuses every evaluation: the base model is announced once, the others as reused
    lines.clear()
    demo.DemoRunner(exp, tmp_path / "d", say=lambda text, **_: lines.append(text)).run()
    assert sum("] evaluation " in ln for ln in lines) == 5 and sum("reused" in ln for ln in lines) == 5

    # the report opens on the answer and the image grid, before the protocol and settings
    md = (tmp_path / "d" / "report.md").read_text()
    assert md.index("forgot") < md.index("plots/grid.png") < md.index("## Protocol and settings")
    assert "stands on" in md and str(tmp_path) not in md


def test_demo_file_keeps_the_main_job_on_a_small_grid():
    exp = demo.demo_experiment()
    assert [v.name for v in exp.variants] == ["conabl", "conabl+projection", "uce"]
    assert len(exp.sequence) == 6 and exp.domain == "style"
    assert all(not v.method_settings for v in exp.variants)  # the methods' own training, unchanged
    n_styles = len(exp.sequence) + len(exp.retained)
    assert n_styles * len(exp.partners) * len(exp.seeds) == 36


def test_readme_table_is_the_committed_demo_table():
    committed = json.loads((ROOT / "docs" / "results" / "demo.json").read_text())
    readme = (ROOT / "README.md").read_text()
    table = demo.markdown_table(committed)
    assert table in readme, "README's demo table differs from docs/results/demo.json"
    assert demo.images_sentence(committed) in readme
    # the committed table is the demo's: the same variants and sequence as configs/demo.yaml
    exp = demo.demo_experiment()
    assert list(committed["variants"]) == [v.name for v in exp.variants] and committed["sequence"] == exp.sequence
