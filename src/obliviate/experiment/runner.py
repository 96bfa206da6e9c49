"""The experiment runner: every variant, every step, evaluated, resumable, with a report.

`obliviate run FILE --out DIR` runs every variant, evaluates every step, resumes where it
stopped (completed steps and evaluations are files; an evaluation is reused only while
everything it depends on is unchanged), and writes DIR/summary.json and DIR/report.{md,html}.
Which model each request starts from is the variant's setting (settings.py).
"""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..continual import Run, parse, slug
from ..delta import atomic_write_json, with_delta
from ..distributed import current as current_processes
from ..evaluate.evaluator import EvalPlan, evaluate, load_protocol, make_plan, model_key
from ..evaluate.power import protocol_neighbours
from ..locking import exclusive, filling
from ..model import edited, load_pipeline, model_hash
from ..protocols import catalog_for_model
from ..request import Request
from .config import Experiment, Variant
from .settings import SETTINGS


class Runner:
    def __init__(self, exp: Experiment, out: str | Path, *, quiet: bool = False, device: str | None = None,
                 precision: str = "auto", gradient_checkpointing: bool = False):
        self.exp, self.out, self.quiet = exp, Path(out), quiet
        # a model that carries no catalog of its own (a Stable Diffusion model) takes the protocol's
        self.catalog = {} if catalog_for_model(exp.model) is not None else {"catalog": exp.protocol}
        self.device, self.train_options = device, {"device": device, "precision": precision,
                                                   "gradient_checkpointing": gradient_checkpointing}
        self.options = dict(self.train_options)  # what a chain's Runner in another process is built with
        self.protocol = load_protocol(exp.protocol, exp.model, style_classifier=exp.style_classifier,
                                      object_classifier=exp.object_classifier, **judge_options(exp, device))
        self.plan = make_plan(self.protocol, exp.domain, exp.sequence, exp.retained,
                              resolve_partners(self.protocol, exp.domain, exp.partners), exp.seeds, exp.sampler)
        self.probe = EvalPlan(self.plan.domain, self.plan.sequence, self.plan.retained, self.plan.partners,
                              exp.probe_seeds, self.plan.sampler)
        self.base_hash = model_hash(exp.model)
        self.judge_id = judge_identity(exp)
        self.cache = self.out / "cache" / "images"
        self.anchors = self.out / "cache" / "base-model"  # anchor / forget / remain images, shared by variants
        self._base_pipe = None
        self._probing = False
        self._stop_below: float | None = None
        self._vdirs: dict[str, Path] = {}  # variant name -> its directory (a swept variant: the chosen value's)

    @contextlib.contextmanager
    def probing(self, stop_below: float | None = None):
        """Inside: settings evaluate on the probe plan, into `probe-eval/` instead of `eval/`
        (a strength sweep, strength.py; the reported evaluation of the chosen value reuses
        the sweep's training and writes `eval/`). With `stop_below`, a setting ends its
        sequence after the first request whose probe UA is under it (`stops_sweep`)."""
        plan, self.plan, self._probing, self._stop_below = self.plan, self.probe, True, stop_below
        try:
            yield
        finally:
            self.plan, self._probing, self._stop_below = plan, False, None

    def stops_sweep(self, res: dict, variant: str, request: int) -> bool:
        """True (and logged) when a swept value fell under the equal-forgetting bar: it can no
        longer be chosen, so its later requests and their probe evaluations would be wasted."""
        if self._stop_below is None or res["UA"] >= self._stop_below:
            return False
        self.log(f"{variant}: probe UA {res['UA']:.1f} is under the bar after request {request}; this value stops here")
        return True

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(f"[obliviate] {msg}", flush=True)

    # ------------------------------------------------------------ models
    @contextlib.contextmanager
    def pipe_with(self, delta: dict[str, torch.Tensor] | None):
        """The base pipeline with `delta` applied inside the block; base weights after."""
        if self._base_pipe is None:
            dist = current_processes()  # accelerate launch: each process on its own device
            self._base_pipe = load_pipeline(self.exp.model, device=dist.device if dist is not None else self.device)
        with with_delta(edited(self._base_pipe), delta):
            yield self._base_pipe

    def open_run(self, path: Path) -> Run:
        """The run ledger at `path`, created on first use (under accelerate launch by the main
        process first: another arriving mid-creation would find a directory without run.json)."""
        dist = current_processes()
        with dist.main_first() if dist is not None else contextlib.nullcontext():
            return Run.open_or_create(path, self.exp.model, **self.catalog)

    def evaluation_key(self, key: str, unlearned, plan: EvalPlan) -> str:
        """Everything an evaluation's numbers depend on: the model (`key`: base and delta
        hashes), the protocol and its judge, the grid (concepts, partners, seeds), the
        sampler, the concepts counted as unlearned, and the code version."""
        from .. import __version__

        return model_key(key, self.exp.protocol, self.judge_id, plan.domain, json.dumps(
            [plan.sequence, plan.retained, plan.partners, plan.seeds, plan.sampler.__dict__, list(unlearned)], sort_keys=True),
            __version__)

    def evaluate(self, delta, unlearned, key, path: Path, plan: EvalPlan | None = None) -> dict:
        """Cached per file and key: a finished evaluation is read back when everything it
        depends on is unchanged (see `evaluation_key`), and recomputed otherwise."""
        plan = plan or self.plan
        if self._probing and path.parent.name == "eval":
            path = path.parent.with_name("probe-eval") / path.name
        cache_key = self.evaluation_key(key, unlearned, plan)
        cached = read_cached(path, cache_key)
        if cached is not None:
            return cached
        dist = current_processes()
        # chains running at once share evaluations (the base model's): one computes, the others wait and read it.
        # The processes of one `accelerate launch` compute each evaluation together instead (evaluator.judged)
        with filling(path) if dist is None else contextlib.nullcontext():
            cached = read_cached(path, cache_key)
            if cached is not None:
                return cached
            bar = tqdm(total=len(plan.grid()), desc=f"eval {path.parent.name}/{path.stem}", disable=self.quiet, leave=False)
            with self.pipe_with(delta) as pipe:
                result = evaluate(pipe, self.protocol, plan, unlearned, key=key, cache_dir=self.cache, progress=bar.update)
            bar.close()
            result.update(model_key=key, cache_key=cache_key, seeds=list(plan.seeds), partners=list(plan.partners))
            if dist is None or dist.is_main:
                atomic_write_json(path, result)
            if dist is not None:  # written before anyone looks again: every process then finds it cached alike
                dist.barrier()
        return result

    def request(self, variant: Variant, concept: str, also: list[str] | None = None, steps_scale: int = 1) -> Request:
        settings = dict(variant.method_settings)
        if steps_scale > 1:
            method = parse(Request(concept, self.exp.domain, variant.method, settings)).method
            settings["steps"] = int(method.settings.steps) * steps_scale
        req = Request(concept, self.exp.domain, variant.method, settings, variant.regularizers, seed=self.exp.seed,
                      param_group=variant.param_group)
        req.also = list(also or [])
        return req

    # ------------------------------------------------------------ table rows
    def step0(self) -> dict:
        res = self.evaluate(None, [], model_key(self.base_hash), self.out / "eval" / "base.json")
        return {"step": 0, "concept": None, "UA": res["UA"], "RA_I": res["RA_I"], "RA_C": res["RA_C"], "drift_l2": 0.0,
                "train_seconds": 0.0, "eval_seconds": res["eval_seconds"], "per_concept_accuracy": res["per_concept_accuracy"],
                **power_fields(res)}

    def row(self, t, concept, res, drift_l2, train_seconds, **extra) -> dict:
        return {"step": t, "concept": concept, "UA": res["UA"], "RA_I": res["RA_I"], "RA_C": res["RA_C"], "drift_l2": drift_l2,
                "train_seconds": train_seconds, "eval_seconds": res["eval_seconds"],
                "per_concept_accuracy": res["per_concept_accuracy"], **power_fields(res), **extra}

    # ------------------------------------------------------------ the whole experiment
    def run(self, first=None) -> dict:
        """Every variant, then summary.json and the report. `first(runner)`, when given, runs
        under the output directory's lock before that: with an executor other than local, the
        experiment's chains run there (chains.run_on), and this process then only reads their
        files back."""
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"--out {self.out} is a file, not a directory")
        self.out.mkdir(parents=True, exist_ok=True)
        dist = current_processes()  # accelerate launch: the main process holds the directory for all of them
        with exclusive(self.out, "experiment output directory") if dist is None or dist.is_main else contextlib.nullcontext():
            if first is not None:
                atomic_write_json(self.out / "experiment.json", {**self.exp.raw, "seed": self.exp.seed})
                first(self)
            return self._run()

    def _run(self) -> dict:
        atomic_write_json(self.out / "experiment.json", {**self.exp.raw, "seed": self.exp.seed})
        summary = {"name": self.exp.name, "protocol": self.exp.protocol, "domain": self.exp.domain,
                   "sequence": self.exp.sequence, "requests": len(self.exp.requested),  # the grid keeps the whole sequence
                   "retained": self.plan.retained, "partners": self.plan.partners,
                   "seeds": self.exp.seeds, "probe_seeds": self.exp.probe_seeds, "sampler": self.plan.sampler.__dict__,
                   "base_model": {"path": str(self.exp.model), "hash": self.base_hash},
                   "images_per_evaluation": len(self.plan.grid()), "images_per_probe": len(self.probe.grid()),
                   # what paired comparisons of the rows' predictions need (evaluate/power.compare_variants)
                   "labels": {"style": list(self.protocol.styles), "object": list(self.protocol.objects)},
                   "neighbours": protocol_neighbours(self.protocol),
                   "variants": {}}
        t0 = time.time()
        for i, variant in enumerate(self.exp.variants, start=1):
            self.log(f"variant {i}/{len(self.exp.variants)}: {variant.name} ({variant.setting})")
            summary["variants"][variant.name] = self.run_variant(variant)
            atomic_write_json(self.out / "summary.json", summary)  # partial summaries are useful too
        summary["wall_seconds"] = time.time() - t0
        atomic_write_json(self.out / "summary.json", summary)
        dist = current_processes()
        if dist is None or dist.is_main:
            self.write_report(summary)
        return summary

    def run_variant(self, variant: Variant) -> dict:
        """One variant end to end (its sweep, its steps, its attacks): its entry of summary.json.
        Everything it computes is kept in files, so a second call only reads them back."""
        vdir = self.out / "variants" / slug(variant.name)
        choice = None
        if variant.sweep:  # strength chosen on the probe seeds (strength.py); the sweep's training is reused
            from .strength import choose_strength

            variant, vdir, choice = choose_strength(self, variant, vdir)
        self._vdirs[variant.name] = vdir
        rows = SETTINGS[variant.setting](self, variant, vdir)
        entry = {
            "setting": variant.setting, "method": variant.method, "regularizers": [n for n, _ in variant.regularizers],
            # every setting as run, defaults included, for the report
            "config": parse(self.request(variant, self.exp.sequence[0])).config,
            "param_group": variant.param_group, "early_stopping": variant.early_stopping,
            **({"merge": variant.merge} if variant.setting == "independent+merge" else {}),
            **({"strength": choice} if choice else {}), "steps": rows}
        if self.exp.attacks:  # attacks on the erased concepts (attacks/runner.py)
            from ..attacks.runner import attack_variant

            entry["attacks"] = attack_variant(self, variant, vdir, rows)
        return entry

    def image_grid(self) -> dict | None:
        """Fixed prompts (rows) across steps (columns) for one variant, from the eval cache."""
        name = self.exp.grid_variant or self.exp.variants[-1].name
        variant = next(v for v in self.exp.variants if v.name == name)
        if variant.setting != "sequential":
            return None
        from ..evaluate.sampler import generate

        run = Run(self._vdirs.get(name, self.out / "variants" / slug(name)) / "run")
        steps = run.steps()
        concepts = self.exp.sequence[: max(1, self.exp.grid_prompts - 2)] + self.plan.retained[:2]
        partner = self.plan.partners[0]
        cells = [(c, partner) if self.exp.domain == "style" else (partner, c) for c in concepts]
        prompts = [self.protocol.prompt(s, o) for s, o in cells]
        seed = self.exp.seeds[0]
        columns, images = [], [[] for _ in prompts]
        for k in range(len(steps) + 1):
            hashes = [m["delta_hash"] for m in steps[:k]]
            key = model_key(self.base_hash, *hashes)
            with self.pipe_with(run.cumulative_delta(k) if k else None) as pipe:
                imgs = generate(pipe, prompts, [seed] * len(prompts), self.plan.sampler, cache_dir=self.cache, model_key=key)
            for r, img in enumerate(imgs):
                images[r].append(img)
            columns.append("step 0" if k == 0 else f"step {k} (-{steps[k - 1]['request']['concept']})")
        marked = [[k > 0 and c in self.exp.sequence[:k] for k in range(len(steps) + 1)] for c in concepts]
        return {"variant": name, "rows": prompts, "columns": columns, "images": images, "marked": marked}

    def write_report(self, summary: dict) -> dict:
        from ..report import write_report

        return write_report(self.out, summary, image_grid=self.image_grid(), title=f"obliviate: {self.exp.name}")


def read_cached(path: Path, cache_key: str) -> dict | None:
    """A finished evaluation whose key matches, or None (missing, unreadable or stale)."""
    if not path.exists():
        return None
    try:
        cached = json.loads(path.read_text())
    except ValueError:
        return None
    return cached if isinstance(cached, dict) and cached.get("cache_key") == cache_key else None


def resolve_partners(protocol, domain: str, partners):
    """`partners: all` = every concept of the other domain, whatever the protocol's default."""
    if partners == "all":
        return list(protocol.concepts("object" if domain == "style" else "style"))
    return partners


def power_fields(res: dict) -> dict:
    """RA-I two ways, the intervals and the per-image predictions (evaluate/power.py), for a row."""
    return {k: res[k] for k in ("RA_I_all", "RA_I_neighbours", "intervals", "predictions") if k in res}


def judge_identity(exp: Experiment) -> str:
    """What identifies the judge: its protocol and its weight files (content hash for the
    small MiniCanvas classifiers, path/size/mtime for large user checkpoints)."""
    from ..delta import file_hash

    from ..protocols import get_protocol

    files = get_protocol(exp.protocol).judge_files(exp.model, exp.style_classifier, exp.object_classifier)
    parts = [exp.protocol]
    for f in files:
        if f.is_file():
            st = f.stat()
            parts.append(file_hash(f) if st.st_size < (64 << 20) else f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}")
    return model_key(*parts)


def short_table(summary: dict) -> str:
    lines = [f"{'variant':28s} {'step':>4s} {'UA':>6s} {'RA-I':>6s} {'RA-C':>6s} {'drift':>7s}"]
    for name, v in summary["variants"].items():
        last = v["steps"][-1]
        fmt = lambda x: f"{x:6.1f}" if x is not None else "     -"
        lines.append(f"{name:28s} {last['step']:4d} {fmt(last['UA'])} {fmt(last['RA_I'])} {fmt(last['RA_C'])} {last['drift_l2']:7.3f}")
    return "\n".join(lines)



def judge_options(exp: Experiment, device: str | None) -> dict:
    """Judges built from checkpoints: on the run's device, with the architecture the file names (tests: tiny ViTs)."""
    from ..model import pick_device
    from ..protocols import get_protocol

    if get_protocol(exp.protocol).judge_inputs != "checkpoints":
        return {}

    return {"device": str(pick_device(device)), **(exp.raw.get("classifiers", {}) or {}).get("arch", {})}


