"""Evaluation split across the processes of `accelerate launch` (evaluate/evaluator.judged):
each process generates and judges its share of the images, the main one gathers and writes,
and the metrics are exactly one process's."""
import json
import os
import socket
import subprocess
import sys
import textwrap

# `obliviate ...` in this process, counting the images this process generated
COUNTING = textwrap.dedent("""
    import json, os, sys
    from obliviate.evaluate import evaluator
    generated = []
    own = evaluator.generate
    def counting(pipe, prompts, *args, **kwargs):
        generated.append(len(prompts))
        return own(pipe, prompts, *args, **kwargs)
    evaluator.generate = counting
    from obliviate.cli import main
    code = main(sys.argv[1:])
    with open(os.environ["COUNT_FILE"], "w") as f:
        json.dump(sum(generated), f)
    sys.exit(code)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(script, args, tmp_path, processes: int):
    """Start `processes` ranks the way `accelerate launch` / torchrun do (RANK, LOCAL_RANK,
    WORLD_SIZE and the rendezvous address in the environment; ACCELERATE_USE_CPU=1: gloo on
    CPU); returns the images each rank generated."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    if processes > 1:
        env.update({"ACCELERATE_USE_CPU": "1", "WORLD_SIZE": str(processes), "LOCAL_WORLD_SIZE": str(processes),
                    "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())})
    procs = []
    for rank in range(processes):
        extra = {"RANK": str(rank), "LOCAL_RANK": str(rank)} if processes > 1 else {}
        count = tmp_path / f"count-{processes}-{rank}.json"
        procs.append((subprocess.Popen([sys.executable, str(script), "--quiet", *args],
                                       env={**env, **extra, "COUNT_FILE": str(count)},
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), count))
    counts = []
    for p, count in procs:
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, err[-3000:]
        counts.append(json.loads(count.read_text()))
    return counts


def test_two_processes_evaluate_half_the_images_each_and_give_the_metrics_of_one(random_model, tmp_path):
    script = tmp_path / "counting.py"
    script.write_text(COUNTING)
    args = ["eval", "--model", str(random_model), "--unlearned", "fire,ice", "--seeds", "188,288",
            "--partners", "circle,star"]
    one = launch(script, [*args, "--out", str(tmp_path / "one")], tmp_path, 1)
    two = launch(script, [*args, "--out", str(tmp_path / "two")], tmp_path, 2)
    a = json.loads((tmp_path / "one" / "metrics.json").read_text())
    b = json.loads((tmp_path / "two" / "metrics.json").read_text())
    images = len(a["predictions"]["style"]) if isinstance(a.get("predictions"), dict) else None
    total = one[0]
    assert total >= 32 and two == [total // 2, total - total // 2]  # each process generated its half
    assert images in (None, total)
    a.pop("eval_seconds"), b.pop("eval_seconds")
    assert a == b  # every metric, interval and per-image prediction, exactly
    assert len(list((tmp_path / "two" / "images").rglob("*.png"))) == total  # both halves cached


def test_every_evaluation_of_run_is_split_and_the_summary_is_one_process_s(random_model, tmp_path):
    """`obliviate run` under two processes: each evaluation's images split in halves, summary
    equal to one process's (a closed-form method: the same delta in each process, so nothing
    but the evaluation is distributed)."""
    import yaml

    script = tmp_path / "counting.py"
    script.write_text(COUNTING)
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump({
        "name": "sharded", "model": str(random_model), "protocol": "minicanvas", "domain": "style",
        "sequence": ["fire", "ice"], "retained": ["lava"], "partners": ["circle", "star"],
        "eval": {"seeds": [188, 288], "probe_seeds": [5], "sampler": {"steps": 2, "guidance": 3.0}},
        "grid": {"prompts": 2}, "variants": [{"name": "u", "method": "uce"}]}))
    one = launch(script, ["run", str(exp), "--out", str(tmp_path / "one")], tmp_path, 1)
    two = launch(script, ["run", str(exp), "--out", str(tmp_path / "two")], tmp_path, 2)
    assert one == [3 * 12] and two == [3 * 6, 3 * 6]  # base model and 2 requests, 12 images each, in halves

    def without_timings(obj):
        if isinstance(obj, dict):
            return {k: without_timings(v) for k, v in obj.items() if not k.endswith("_seconds")}
        return [without_timings(v) for v in obj] if isinstance(obj, list) else obj

    a, b = (without_timings(json.loads((tmp_path / d / "summary.json").read_text())) for d in ("one", "two"))
    assert a == b
