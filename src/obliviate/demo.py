"""`obliviate demo` (`make demo`): the main job on the bundled MiniCanvas model in about three
minutes on two CPU cores. Six styles are removed one after another with base ConAbl, ConAbl +
gradient projection and the closed-form UCE; every model is evaluated after every request.

What makes it fast is the evaluation, for the demo only (configs/demo.yaml): one seed, three
partner objects and six retained look-alike styles instead of the protocol's two seeds, eight
partners and all ten retained styles, so each evaluation samples 36 images instead of 256, in
10 sampler steps instead of 20. The training is the methods' own, unchanged. The demo
prints one line per request and per evaluation with the elapsed time and an estimate of what
is left, then the table and the report's path; it writes DIR/demo.json (the table, with how
many images stand behind each number; a committed copy is docs/results/demo.json) besides
the experiment's usual summary.json and report.
"""
from __future__ import annotations

import os
import time
from importlib import resources
from pathlib import Path

import yaml

from .delta import atomic_write_json
from .experiment import Runner, load_experiment
from .report import images_behind

METRICS = (("UA", "UA"), ("RA_I", "RA-I"), ("RA_C", "RA-C"))


def demo_experiment():
    text = resources.files("obliviate").joinpath("configs/demo.yaml").read_text()
    return load_experiment(yaml.safe_load(text))


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class DemoRunner(Runner):
    """The experiment runner, quiet, with one progress line per request and per evaluation.

    The sequential setting trains a request and then evaluates its model, so the time between
    the end of one evaluation and the start of the next is that request's (anchor images and
    model loading included, the first time)."""

    def __init__(self, exp, out, *, device=None, say=print, t0: float | None = None):
        super().__init__(exp, out, quiet=True, device=device)
        self.say = say
        self.t0 = t0 or time.time()  # the command's start: loading the model and judge counts too
        self.mark = time.time()
        self.total_requests = len(exp.variants) * len(exp.requested)
        self.total_evaluations = 1 + self.total_requests  # the base model's is shared by every variant
        self.requests_done, self.evaluations_done = 0, 0
        self.request_seconds: dict[str, list[float]] = {}  # by variant
        self.eval_seconds: list[float] = []
        self.closed_form = {v.name: _closed_form(v.method) for v in exp.variants}

    def left(self) -> float:
        """Seconds still to go: each variant's remaining requests at its own mean so far (a
        variant not started yet: the mean of the trained variants, or 1 s for a closed-form
        method), and the remaining evaluations at their mean so far."""
        trained = [s for name, times in self.request_seconds.items() if not self.closed_form[name] for s in times]
        fallback = sum(trained) / len(trained) if trained else 10.0
        total = 0.0
        for v in self.exp.variants:
            times = self.request_seconds.get(v.name, [])
            mean = sum(times) / len(times) if times else (1.0 if self.closed_form[v.name] else fallback)
            total += mean * (len(self.exp.requested) - len(times))
        mean_eval = sum(self.eval_seconds) / len(self.eval_seconds) if self.eval_seconds else 5.0
        return total + mean_eval * (self.total_evaluations - self.evaluations_done)

    def line(self, text: str) -> None:
        now = time.time() - self.t0
        self.say(f"[{_clock(now):>6s}] {text}  | about {_clock(self.left())} left", flush=True)

    def evaluate(self, delta, unlearned, key, path: Path, plan=None) -> dict:
        name = next((n for n, vdir in self._vdirs.items() if path.parent.parent == vdir), None)  # None: the base model
        if path.stem.startswith("step") and name is not None:  # a request just finished training
            seconds = time.time() - self.mark
            self.request_seconds.setdefault(name, []).append(seconds)
            self.requests_done += 1
            self.line(f"request {self.requests_done}/{self.total_requests}: {name} -{unlearned[-1]} in {seconds:.1f} s")
        before = path.stat().st_mtime_ns if path.exists() else None
        start = time.time()
        res = super().evaluate(delta, unlearned, key, path, plan)
        reused = before is not None and path.stat().st_mtime_ns == before
        if not (reused and path.stem == "base" and self.evaluations_done):  # the shared base model: announced once
            self.evaluations_done += 1
            self.eval_seconds.append(time.time() - start)
            what = f"{name} after {len(unlearned)} request{'s' * (len(unlearned) != 1)}" if name else "the base model"
            scores = "  ".join(f"{label} {'-' if res[k] is None else f'{res[k]:.1f}'}" for k, label in METRICS)
            self.line(f"evaluation {self.evaluations_done}/{self.total_evaluations}: {what}: {scores} "
                      f"({len(self.plan.grid())} images, {'reused' if reused else f'{time.time() - start:.1f} s'})")
        self.mark = time.time()
        return res

    def run(self) -> dict:
        self.line(f"{len(self.exp.variants)} variants x {len(self.exp.requested)} requests, "
                  f"{len(self.plan.grid())} images per evaluation")
        return super().run()


def _closed_form(method: str) -> bool:
    from .methods import get_method

    return bool(getattr(get_method(method), "closed_form", False))


# ---------------------------------------------------------------- the table (DIR/demo.json)
def demo_table(summary: dict) -> dict:
    """The demo's results without machine-specific fields (no paths, no timings)."""
    variants = {}
    for name, v in summary["variants"].items():
        regs = [r["name"] for r in (v.get("config") or {}).get("regularizers", [])]
        variants[name] = {"method": v["method"], "add-ons": regs,
                          "steps": [{"step": s["step"], "concept": s["concept"], **{k: s[k] for k, _ in METRICS},
                                     "drift_l2": s["drift_l2"]} for s in v["steps"]]}
    return {"name": summary["name"], "protocol": summary["protocol"], "domain": summary["domain"],
            "sequence": summary["sequence"], "retained": summary["retained"], "partners": summary["partners"],
            "seeds": summary["seeds"], "sampler": summary["sampler"], "images": images_behind(summary),
            "variants": variants}


def markdown_table(table: dict) -> str:
    """The last step of each variant: the table README shows (a test checks it equals docs/results/demo.json)."""
    n = len(table["sequence"])
    lines = [f"| variant | UA after {n} requests | RA-I | RA-C |", "|---|---|---|---|"]
    for name, v in table["variants"].items():
        last = v["steps"][-1]
        lines.append(f"| {name} | " + " | ".join("-" if last[k] is None else f"{last[k]:.1f}" for k, _ in METRICS) + " |")
    return "\n".join(lines)


def images_sentence(table: dict) -> str:
    img, n = table["images"], len(table["sequence"])
    return (f"Each evaluation judges {img['per_evaluation']} images ({img['per_concept']} per style: "
            f"{len(table['partners'])} objects x {len(table['seeds'])} seed; {table['sampler']['steps']} sampler steps); "
            f"UA after {n} requests stands on {img['per_concept'] * n} images, RA-I on {img['RA_I']}, RA-C on {img['RA_C']}.")


def main(out: str | Path, *, device: str | None = None, quiet: bool = False) -> int:
    t0 = time.time()
    exp = demo_experiment()
    runner = DemoRunner(exp, out, device=device, say=(lambda *a, **k: None) if quiet else print, t0=t0)
    summary = runner.run()
    table = demo_table(summary)
    atomic_write_json(Path(out) / "demo.json", table)
    print()
    print(markdown_table(table))
    print()
    print(images_sentence(table))
    print(f"demo finished in {_clock(time.time() - t0)}")
    print(f"report: {os.path.relpath(Path(out) / 'report.html')}")
    return 0
