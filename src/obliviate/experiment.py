"""Experiment files: a model, a protocol, a concept sequence and variants, run end to end.

`obliviate run FILE --out DIR` runs every variant, evaluates every step, resumes where it
stopped (completed steps and evaluations are files; they are reused, never redone), and
writes DIR/summary.json and DIR/report.{md,html}.

Settings (SPEC 1): a setting is only a policy for which model a request starts from.
- sequential: request t starts from the model after request t-1 (one run ledger);
- simultaneous: request t retrains from the base model on concepts 1..t together, with
  optional early stopping chosen on *probe* seeds, disjoint from the reported seeds;
- independent+merge: each concept is unlearned alone from the base model; the model after t
  requests merges task vectors 1..t (uniform / task_arithmetic / ties); lambda and top-k
  are chosen on the probe seeds only.
"""
from __future__ import annotations

import copy
import itertools
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from .continual import Run, build_hooks, slug
from .delta import apply_delta, atomic_write_json, drift, load_delta
from .locking import exclusive
from .evaluate.evaluator import EvalPlan, evaluate, load_protocol, make_plan, model_key
from .evaluate.sampler import SamplerConfig
from .merge import MERGE_METHODS, merge_task_vectors
from .model import load_pipeline, model_hash
from .trainer import Request

SETTINGS = ("sequential", "simultaneous", "independent+merge")


# ---------------------------------------------------------------- configuration
@dataclass
class Variant:
    name: str
    setting: str = "sequential"
    method: str = "conabl"
    method_settings: dict[str, Any] = field(default_factory=dict)
    regularizers: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    early_stopping: bool = False  # simultaneous only
    merge: dict[str, Any] = field(default_factory=dict)  # independent+merge only
    param_group: str = "kv-xattn"


@dataclass
class Experiment:
    name: str
    model: str
    protocol: str
    domain: str
    sequence: list[str]
    retained: list[str] | None
    partners: list[str] | None
    seeds: list[int]
    probe_seeds: list[int]
    sampler: SamplerConfig
    variants: list[Variant]
    seed: int = 0
    grid_variant: str | None = None
    grid_prompts: int = 6
    style_classifier: str | None = None
    object_classifier: str | None = None
    raw: dict = field(default_factory=dict)
    attacks: list[dict] = field(default_factory=list)  # see attacks/runner.py


EXPERIMENT_KEYS = {"name", "model", "protocol", "domain", "sequence", "retained", "partners", "eval", "variants", "seed",
                   "grid", "classifiers", "attacks"}
VARIANT_KEYS = {"name", "setting", "method", "method_settings", "regularizers", "early_stopping", "merge", "param_group"}


def _regs(items, where: str) -> list[tuple[str, dict]]:
    out = []
    for item in items or []:
        if isinstance(item, str):
            out.append((item, {}))
        elif isinstance(item, dict) and "name" in item:
            settings = {k: v for k, v in item.items() if k != "name"}
            out.append((item["name"], settings))
        else:
            raise ValueError(f"{where}: a regularizer is a name or a mapping with 'name', got {item!r}")
    return out


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


# The type of every field of an experiment file: YAML turns `seeds: "188"` into a string
# that iterates as ['1', '8', '8'] and slips past later checks, so types are checked first.
_TYPES = {
    "str": (lambda x: isinstance(x, str), "a string"),
    "int": (_is_int, "an integer"),
    "bool": (lambda x: isinstance(x, bool), "true or false"),
    "mapping": (lambda x: isinstance(x, dict), "a mapping"),
    "list[str]": (lambda x: isinstance(x, list) and all(isinstance(i, str) for i in x), "a list of names"),
    "list[int]": (lambda x: isinstance(x, list) and bool(x) and all(_is_int(i) for i in x), "a non-empty list of integers"),
    "list": (lambda x: isinstance(x, list), "a list"),
    "number|list[number]": (lambda x: _is_number(x) or (isinstance(x, list) and bool(x) and all(_is_number(i) for i in x)),
                            "a number or a non-empty list of numbers"),
}
_EXPERIMENT_TYPES = {"name": "str", "model": "str", "protocol": "str", "domain": "str", "sequence": "list[str]",
                     "retained": "list[str]", "partners": "list[str]", "eval": "mapping", "variants": "list", "seed": "int",
                     "grid": "mapping", "classifiers": "mapping", "attacks": "list"}
_EVAL_TYPES = {"seeds": "list[int]", "probe_seeds": "list[int]", "sampler": "mapping"}
_GRID_TYPES = {"variant": "str", "prompts": "int"}
_CLASSIFIER_TYPES = {"style": "str", "object": "str", "arch": "mapping"}  # arch: ViT shape overrides (tests: tiny judges)
_VARIANT_TYPES = {"name": "str", "setting": "str", "method": "str", "method_settings": "mapping", "regularizers": "list",
                  "early_stopping": "bool", "merge": "mapping", "param_group": "str"}
_MERGE_TYPES = {"method": "str", "lam": "number|list[number]", "top_k": "number|list[number]"}


def _check_types(mapping: dict, types: dict, where: str) -> None:
    """Unknown keys and wrong types, each error naming the field, its value and what is valid."""
    unknown = set(mapping) - set(types)
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; valid keys: {', '.join(sorted(types))}")
    for key, value in mapping.items():
        if value is None:  # YAML `key:` with nothing = the default
            continue
        test, what = _TYPES[types[key]]
        if not test(value):
            raise ValueError(f"{where}: {key} must be {what}, got {value!r}")


def resolve_model(model: str | None) -> str:
    if model in (None, "minicanvas", "bundled"):
        from .minicanvas import bundled_path

        return str(bundled_path())
    return str(model)


def load_experiment(path_or_dict) -> Experiment:
    """Parse and validate an experiment file before any work starts."""
    if isinstance(path_or_dict, dict):
        raw, where = copy.deepcopy(path_or_dict), "experiment"
    else:
        path = Path(path_or_dict)
        if not path.exists():
            raise FileNotFoundError(f"experiment file {path} does not exist")
        try:
            raw = yaml.safe_load(path.read_text())
        except yaml.YAMLError as err:
            raise ValueError(f"{path} is not valid YAML: {err}") from None
        where = str(path)
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: an experiment file is a mapping")
    unknown = set(raw) - EXPERIMENT_KEYS
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; valid keys: {', '.join(sorted(EXPERIMENT_KEYS))}")
    for key in ("domain", "sequence", "variants"):
        if key not in raw:
            raise ValueError(f"{where}: missing required key {key!r}")
    _check_types(raw, _EXPERIMENT_TYPES, where)
    if raw["domain"] not in ("style", "object"):
        raise ValueError(f"{where}: domain {raw['domain']!r} is not valid; valid: style, object")
    if not raw["sequence"]:
        raise ValueError(f"{where}: sequence is empty; list the concepts to unlearn in order")
    ev = raw.get("eval", {}) or {}
    _check_types(ev, _EVAL_TYPES, f"{where}: eval")
    _check_types(raw.get("grid") or {}, _GRID_TYPES, f"{where}: grid")
    _check_types(raw.get("classifiers") or {}, _CLASSIFIER_TYPES, f"{where}: classifiers")
    from .trainer import parse_settings

    sampler = parse_settings(SamplerConfig, ev["sampler"], f"{where}: eval.sampler") if ev.get("sampler") else None
    variants = []
    for i, v in enumerate(raw["variants"]):
        vw = f"{where}: variants[{i}]"
        if not isinstance(v, dict) or "name" not in v:
            raise ValueError(f"{vw}: each variant is a mapping with a 'name'")
        _check_types(v, _VARIANT_TYPES, f"{vw} ({v['name']})")
        merge = v.get("merge") or {}
        _check_types(merge, _MERGE_TYPES, f"{vw} ({v['name']}): merge")
        tops = 1.0 if merge.get("top_k") is None else merge["top_k"]
        for k in tops if isinstance(tops, list) else [tops]:
            if not 0 < k <= 1:
                raise ValueError(f"{vw} ({v['name']}): merge top_k {k!r} is out of range; valid: (0, 1]")
        variant = Variant(name=str(v["name"]), setting=v.get("setting", "sequential"), method=v.get("method", "conabl"),
                          method_settings=dict(v.get("method_settings", {}) or {}), regularizers=_regs(v.get("regularizers"), vw),
                          early_stopping=bool(v.get("early_stopping", False)), merge=dict(v.get("merge", {}) or {}),
                          param_group=v.get("param_group", "kv-xattn"))
        if variant.setting not in SETTINGS:
            raise ValueError(f"{vw} ({variant.name}): setting {variant.setting!r} is not valid; valid: {', '.join(SETTINGS)}")
        from .model import check_param_group

        try:
            check_param_group(variant.param_group)  # kv-xattn, xattn, full or lora:...
        except ValueError as err:
            raise ValueError(f"{vw} ({variant.name}): param_group {variant.param_group!r} is not valid: {err}") from None
        # every method / regularizer name and setting is checked now, not after an hour of work
        build_hooks(Request("x", raw["domain"] if raw["domain"] in ("style", "object") else "other", variant.method,
                            variant.method_settings, variant.regularizers, param_group=variant.param_group))
        if variant.setting == "independent+merge":
            m = variant.merge.get("method", "ties")
            if m not in MERGE_METHODS:
                raise ValueError(f"{vw}: merge method {m!r} is not valid; valid: {', '.join(MERGE_METHODS)}")
        variants.append(variant)
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ValueError(f"{where}: variant names must be unique, got {names}")
    grid = raw.get("grid", {}) or {}
    classifiers = raw.get("classifiers", {}) or {}
    exp = Experiment(
        name=str(raw.get("name", "experiment")), model=resolve_model(raw.get("model")), protocol=raw.get("protocol", "minicanvas"),
        domain=raw["domain"], sequence=list(raw["sequence"]), retained=raw.get("retained"), partners=raw.get("partners"),
        seeds=list(ev.get("seeds", [188, 288])), probe_seeds=list(ev.get("probe_seeds", [1, 2])), sampler=sampler,
        variants=variants, seed=int(raw.get("seed", 0)), grid_variant=grid.get("variant"), grid_prompts=int(grid.get("prompts", 6)),
        style_classifier=classifiers.get("style"), object_classifier=classifiers.get("object"), raw=raw,
    )
    if set(exp.seeds) & set(exp.probe_seeds):
        raise ValueError(f"{where}: probe_seeds {exp.probe_seeds} must be disjoint from the reported seeds {exp.seeds}")
    if exp.grid_prompts < 1:
        raise ValueError(f"{where}: grid.prompts must be >= 1, got {exp.grid_prompts}")
    if exp.grid_variant and exp.grid_variant not in names:
        raise ValueError(f"{where}: grid.variant {exp.grid_variant!r} is not a variant; variants: {', '.join(names)}")
    if len(set(exp.sequence)) != len(exp.sequence):
        raise ValueError(f"{where}: the sequence repeats a concept")
    # attacks on erased concepts (attacks/runner.py): checked now, run after each variant
    from .attacks.runner import parse_attacks_section

    exp.attacks = parse_attacks_section(raw.get("attacks"), where)
    return exp


# ---------------------------------------------------------------- the runner
class Runner:
    def __init__(self, exp: Experiment, out: str | Path, *, quiet: bool = False, device: str | None = None,
                 precision: str = "auto", gradient_checkpointing: bool = False):
        self.exp, self.out, self.quiet = exp, Path(out), quiet
        self.catalog = {"catalog": "unlearncanvas"} if exp.protocol == "unlearncanvas" else {}
        self.device, self.train_options = device, {"device": device, "precision": precision,
                                                   "gradient_checkpointing": gradient_checkpointing}
        self.protocol = load_protocol(exp.protocol, exp.model, style_classifier=exp.style_classifier,
                                      object_classifier=exp.object_classifier, **judge_options(exp, device))
        self.plan = make_plan(self.protocol, exp.domain, exp.sequence, exp.retained, exp.partners, exp.seeds, exp.sampler)
        self.probe = EvalPlan(self.plan.domain, self.plan.sequence, self.plan.retained, self.plan.partners,
                              exp.probe_seeds, self.plan.sampler)
        self.base_hash = model_hash(exp.model)
        self.judge_id = judge_identity(exp)
        self.cache = self.out / "cache" / "images"
        self.anchors = self.out / "cache" / "base-model"  # anchor / forget / remain images, shared by variants
        self._base_pipe = None

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(f"[obliviate] {msg}", flush=True)

    # ------------------------------------------------------------ models
    def pipe_with(self, delta: dict[str, torch.Tensor] | None):
        """The base pipeline with `delta` applied (a fresh copy of the trained tensors each time)."""
        if self._base_pipe is None:
            self._base_pipe = load_pipeline(self.exp.model, device=self.device)
            self._base_state = {n: p.detach().clone() for n, p in self._base_pipe.unet.named_parameters()}
            self._touched: set[str] = set()
        pipe = self._base_pipe
        with torch.no_grad():
            params = dict(pipe.unet.named_parameters())
            for n in self._touched:
                params[n].copy_(self._base_state[n])
        self._touched = set(delta or {})
        if delta:
            apply_delta(pipe.unet, delta)
        return pipe

    def evaluation_key(self, key: str, unlearned, plan: EvalPlan) -> str:
        """Everything an evaluation's numbers depend on: the model (`key`: base and delta
        hashes), the protocol and its judge, the grid (concepts, partners, seeds), the
        sampler, the concepts counted as unlearned, and the code version."""
        from . import __version__

        return model_key(key, self.exp.protocol, self.judge_id, plan.domain, json.dumps(
            [plan.sequence, plan.retained, plan.partners, plan.seeds, plan.sampler.__dict__, list(unlearned)], sort_keys=True),
            __version__)

    def evaluate(self, delta, unlearned, key, path: Path, plan: EvalPlan | None = None) -> dict:
        """Cached per file and key: a finished evaluation is read back when everything it
        depends on is unchanged (see `evaluation_key`), and recomputed otherwise."""
        plan = plan or self.plan
        cache_key = self.evaluation_key(key, unlearned, plan)
        if path.exists():
            try:
                cached = json.loads(path.read_text())
            except ValueError:
                cached = {}
            if cached.get("cache_key") == cache_key:
                return cached
        pipe = self.pipe_with(delta)
        bar = tqdm(total=len(plan.grid()), desc=f"eval {path.parent.name}/{path.stem}", disable=self.quiet, leave=False)
        result = evaluate(pipe, self.protocol, plan, unlearned, key=key, cache_dir=self.cache, progress=bar.update)
        bar.close()
        result.update(model_key=key, cache_key=cache_key, seeds=list(plan.seeds), partners=list(plan.partners))
        atomic_write_json(path, result)
        return result

    def request(self, variant: Variant, concept: str, also: list[str] | None = None, steps_scale: int = 1) -> Request:
        settings = dict(variant.method_settings)
        if steps_scale > 1:
            method_cls = build_hooks(Request(concept, self.exp.domain, variant.method, settings))[0]
            settings["steps"] = int(method_cls.settings.steps) * steps_scale
        req = Request(concept, self.exp.domain, variant.method, settings, variant.regularizers, seed=self.exp.seed,
                      param_group=variant.param_group)
        req.also = list(also or [])
        return req

    # ------------------------------------------------------------ settings
    def step0(self) -> dict:
        res = self.evaluate(None, [], model_key(self.base_hash), self.out / "eval" / "base.json")
        return {"step": 0, "concept": None, "UA": res["UA"], "RA_I": res["RA_I"], "RA_C": res["RA_C"], "drift_l2": 0.0,
                "train_seconds": 0.0, "eval_seconds": res["eval_seconds"], "per_concept_accuracy": res["per_concept_accuracy"]}

    def row(self, t, concept, res, drift_l2, train_seconds, **extra) -> dict:
        return {"step": t, "concept": concept, "UA": res["UA"], "RA_I": res["RA_I"], "RA_C": res["RA_C"], "drift_l2": drift_l2,
                "train_seconds": train_seconds, "eval_seconds": res["eval_seconds"],
                "per_concept_accuracy": res["per_concept_accuracy"], **extra}

    def run_sequential(self, variant: Variant, vdir: Path) -> list[dict]:
        run = Run.open_or_create(vdir / "run", self.exp.model, **self.catalog)
        rows = [self.step0()]
        for t, concept in enumerate(self.exp.sequence, start=1):
            meta = run.unlearn(self.request(variant, concept), quiet=self.quiet, cache_dir=self.anchors, **self.train_options)
            hashes = [m["delta_hash"] for m in run.steps()[:t]]
            res = self.evaluate(run.cumulative_delta(t), self.exp.sequence[:t], model_key(self.base_hash, *hashes),
                                vdir / "eval" / f"step{t:03d}.json")
            rows.append(self.row(t, concept, res, meta["drift"]["pretrained"]["l2"], meta["timings"]["train_seconds"]))
            self.log(f"{variant.name} step {t} -{concept}: UA {res['UA']:.1f} RA-I {res['RA_I']:.1f} RA-C {res['RA_C']:.1f}")
        return rows

    def run_simultaneous(self, variant: Variant, vdir: Path) -> list[dict]:
        rows = [self.step0()]
        for t, concept in enumerate(self.exp.sequence, start=1):
            run = Run.open_or_create(vdir / f"retrain{t:03d}", self.exp.model, **self.catalog)
            req = self.request(variant, concept, also=self.exp.sequence[: t - 1], steps_scale=t)
            chooser = self.early_stop_chooser(variant, vdir, t) if variant.early_stopping else None
            meta = run.unlearn(req, quiet=self.quiet, choose=chooser, cache_dir=self.anchors, **self.train_options)
            delta = run.cumulative_delta(1)
            res = self.evaluate(delta, self.exp.sequence[:t], model_key(self.base_hash, meta["delta_hash"]),
                                vdir / "eval" / f"step{t:03d}.json")
            rows.append(self.row(t, concept, res, drift(delta)["l2"], meta["timings"]["train_seconds"],
                                 chosen_step=meta.get("early_stopping", {}).get("chosen_step")))
            self.log(f"{variant.name} step {t} (retrain on {t}): UA {res['UA']:.1f} RA-I {res['RA_I']:.1f} RA-C {res['RA_C']:.1f}")
        return rows

    def early_stop_chooser(self, variant, vdir: Path, t: int):
        """Pick the training length with the best probe score: mean of UA, RA-I and RA-C on
        the probe seeds (never the reported seeds)."""
        def choose(ctx, snapshots: dict[int, dict[str, torch.Tensor]]) -> tuple[int, dict]:
            scores = {}
            for step, values in sorted(snapshots.items()):
                delta = {n: values[n] - ctx.pretrained[n] for n in values}
                key = model_key(self.base_hash, "snapshot", tensors_hash(delta))  # the snapshot's content, not its name
                res = self.evaluate(delta, self.exp.sequence[:t], key, vdir / "probe" / f"step{t:03d}-at{step}.json", self.probe)
                scores[step] = (res["UA"] + res["RA_I"] + res["RA_C"]) / 3
            best = max(scores, key=lambda s: (scores[s], s))
            return best, {"probe_scores": scores}
        return choose

    def run_merge(self, variant: Variant, vdir: Path) -> list[dict]:
        rows = [self.step0()]
        taus, hashes, train_seconds = [], [], []
        merge = variant.merge
        method = merge.get("method", "ties")
        lams = merge.get("lam", [1.0])
        tops = merge.get("top_k", [1.0])
        lams = lams if isinstance(lams, list) else [lams]
        tops = tops if isinstance(tops, list) else [tops]
        for t, concept in enumerate(self.exp.sequence, start=1):
            run = Run.open_or_create(vdir / "independent" / slug(concept), self.exp.model, **self.catalog)
            meta = run.unlearn(self.request(variant, concept), quiet=self.quiet, cache_dir=self.anchors, **self.train_options)
            taus.append(run.cumulative_delta(1))
            hashes.append(meta["delta_hash"])
            train_seconds.append(meta["timings"]["train_seconds"])
            candidates = list(itertools.product(lams, tops)) if method != "uniform" else [(1.0, 1.0)]
            if len(candidates) > 1:  # hyperparameters chosen on probe seeds only
                scores = {}
                for lam, top in candidates:
                    merged = merge_task_vectors(taus, method, lam=lam, top_k=top)
                    key = model_key(self.base_hash, method, lam, top, *hashes)
                    res = self.evaluate(merged, self.exp.sequence[:t], key, vdir / "probe" / f"step{t:03d}-l{lam}-k{top}.json", self.probe)
                    scores[(lam, top)] = (res["UA"] + res["RA_I"] + res["RA_C"]) / 3
                lam, top = max(scores, key=lambda c: scores[c])
            else:
                lam, top = candidates[0]
            merged = merge_task_vectors(taus, method, lam=lam, top_k=top)
            res = self.evaluate(merged, self.exp.sequence[:t], model_key(self.base_hash, method, lam, top, *hashes),
                                vdir / "eval" / f"step{t:03d}.json")
            rows.append(self.row(t, concept, res, drift(merged)["l2"], train_seconds[-1], merge={"method": method, "lam": lam, "top_k": top}))
            self.log(f"{variant.name} step {t} (merge {method} lam={lam} top_k={top}): UA {res['UA']:.1f} RA-I {res['RA_I']:.1f} RA-C {res['RA_C']:.1f}")
        return rows

    # ------------------------------------------------------------ the whole experiment
    def run(self) -> dict:
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"--out {self.out} is a file, not a directory")
        self.out.mkdir(parents=True, exist_ok=True)
        with exclusive(self.out, "experiment output directory"):  # one `obliviate run` per output directory
            return self._run()

    def _run(self) -> dict:
        atomic_write_json(self.out / "experiment.json", {**self.exp.raw, "seed": self.exp.seed})
        summary = {"name": self.exp.name, "protocol": self.exp.protocol, "domain": self.exp.domain,
                   "sequence": self.exp.sequence, "retained": self.plan.retained, "partners": self.plan.partners,
                   "seeds": self.exp.seeds, "probe_seeds": self.exp.probe_seeds, "sampler": self.plan.sampler.__dict__,
                   "base_model": {"path": str(self.exp.model), "hash": self.base_hash},
                   "images_per_evaluation": len(self.plan.grid()), "images_per_probe": len(self.probe.grid()),
                   "variants": {}}
        t0 = time.time()
        for i, variant in enumerate(self.exp.variants, start=1):
            self.log(f"variant {i}/{len(self.exp.variants)}: {variant.name} ({variant.setting})")
            vdir = self.out / "variants" / slug(variant.name)
            runner = {"sequential": self.run_sequential, "simultaneous": self.run_simultaneous,
                      "independent+merge": self.run_merge}[variant.setting]
            rows = runner(variant, vdir)
            from .continual import resolved_config

            summary["variants"][variant.name] = {
                "setting": variant.setting, "method": variant.method, "regularizers": [n for n, _ in variant.regularizers],
                # every setting as run, defaults included, for the report
                "config": resolved_config(*build_hooks(self.request(variant, self.exp.sequence[0]))),
                "param_group": variant.param_group, "early_stopping": variant.early_stopping,
                **({"merge": variant.merge} if variant.setting == "independent+merge" else {}), "steps": rows}
            if self.exp.attacks:  # attacks on the erased concepts (attacks/runner.py)
                from .attacks.runner import attack_variant

                summary["variants"][variant.name]["attacks"] = attack_variant(self, variant, vdir, rows)
            atomic_write_json(self.out / "summary.json", summary)  # partial summaries are useful too
        summary["wall_seconds"] = time.time() - t0
        atomic_write_json(self.out / "summary.json", summary)
        self.write_report(summary)
        return summary

    def image_grid(self) -> dict | None:
        """Fixed prompts (rows) across steps (columns) for one variant, from the eval cache."""
        name = self.exp.grid_variant or self.exp.variants[-1].name
        variant = next(v for v in self.exp.variants if v.name == name)
        if variant.setting != "sequential":
            return None
        from .evaluate.sampler import generate

        run = Run(self.out / "variants" / slug(name) / "run")
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
            imgs = generate(self.pipe_with(run.cumulative_delta(k) if k else None), prompts, [seed] * len(prompts),
                            self.plan.sampler, cache_dir=self.cache, model_key=key)
            for r, img in enumerate(imgs):
                images[r].append(img)
            columns.append("step 0" if k == 0 else f"step {k} (-{steps[k - 1]['request']['concept']})")
        marked = [[k > 0 and c in self.exp.sequence[:k] for k in range(len(steps) + 1)] for c in concepts]
        return {"variant": name, "rows": prompts, "columns": columns, "images": images, "marked": marked}

    def write_report(self, summary: dict) -> dict:
        from .report import write_report

        return write_report(self.out, summary, image_grid=self.image_grid(), title=f"obliviate: {self.exp.name}")


def judge_identity(exp: Experiment) -> str:
    """What identifies the judge: its protocol and its weight files (content hash for the
    small MiniCanvas classifiers, path/size/mtime for large user checkpoints)."""
    from .delta import file_hash

    files = sorted((Path(exp.model) / "classifiers").glob("*")) if exp.protocol == "minicanvas" else \
        [Path(p) for p in (exp.style_classifier, exp.object_classifier) if p]
    parts = [exp.protocol]
    for f in files:
        if f.is_file():
            st = f.stat()
            parts.append(file_hash(f) if st.st_size < (64 << 20) else f"{f.resolve()}:{st.st_size}:{st.st_mtime_ns}")
    return model_key(*parts)


def tensors_hash(tensors: dict[str, torch.Tensor]) -> str:
    import hashlib

    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().float().cpu().contiguous()
        h.update(f"{name}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def short_table(summary: dict) -> str:
    lines = [f"{'variant':28s} {'step':>4s} {'UA':>6s} {'RA-I':>6s} {'RA-C':>6s} {'drift':>7s}"]
    for name, v in summary["variants"].items():
        last = v["steps"][-1]
        fmt = lambda x: f"{x:6.1f}" if x is not None else "     -"
        lines.append(f"{name:28s} {last['step']:4d} {fmt(last['UA'])} {fmt(last['RA_I'])} {fmt(last['RA_C'])} {last['drift_l2']:7.3f}")
    return "\n".join(lines)


# ---------------------------------------------------------------- commands
def judge_options(exp: Experiment, device: str | None) -> dict:
    """UnlearnCanvas judges: on the run's device, with the architecture the file names (tests: tiny ViTs)."""
    if exp.protocol != "unlearncanvas":
        return {}
    from .model import pick_device

    return {"device": str(pick_device(device)), **(exp.raw.get("classifiers", {}) or {}).get("arch", {})}


def apply_overrides(exp: Experiment, args) -> Experiment:
    """Command-line paths win over the file's (UnlearnCanvas: the user's checkpoint locations)."""
    if getattr(args, "model", None):
        exp.model = resolve_model(args.model)
    if getattr(args, "style_classifier", None):
        exp.style_classifier = args.style_classifier
    if getattr(args, "object_classifier", None):
        exp.object_classifier = args.object_classifier
    if exp.protocol == "unlearncanvas" and not (exp.style_classifier and exp.object_classifier):
        raise ValueError("the unlearncanvas protocol needs both classifier checkpoints: pass --style-classifier FILE "
                         "and --object-classifier FILE (or set classifiers.style / classifiers.object in the file)")
    for flag, path in (("--style-classifier", exp.style_classifier), ("--object-classifier", exp.object_classifier)):
        if path and not Path(path).is_file():  # before building two ViT-L judges
            raise FileNotFoundError(f"{flag} {path} does not exist")
    from .model import check_pipeline_dir

    check_pipeline_dir(exp.model)
    return exp


def cmd_run(args) -> int:
    from .distributed import validate_device

    validate_device(args.device)
    exp = apply_overrides(load_experiment(args.file), args)
    if args.seed is not None:
        exp.seed = args.seed
    summary = Runner(exp, args.out, quiet=args.quiet, device=args.device, precision=args.precision,
                     gradient_checkpointing=args.gradient_checkpointing).run()
    print(short_table(summary))
    print(f"report: {Path(args.out) / 'report.html'}")
    return 0


def cmd_eval(args) -> int:
    from .distributed import validate_device

    validate_device(args.device)
    unlearned = [c for c in (args.unlearned or "").split(",") if c]
    domain = args.domain
    if args.run:
        run = Run(args.run)
        run.check_base()  # deltas are only applied to the base model they were made on
        steps = run.verify_chain(args.step)
        unlearned = [m["request"]["concept"] for m in steps] + [a for m in steps for a in m["request"].get("also", [])]
        domain = domain or (steps[0]["request"]["domain"] if steps else None)
        model_dir = run.base_model
        delta = run.cumulative_delta(args.step)
        key = model_key(run.info["base_hash"], *[m["delta_hash"] for m in steps])
    else:
        model_dir, delta, key = args.model, None, None
    if not model_dir:
        raise ValueError("obliviate eval needs --model DIR or --run RUN")
    protocol = load_protocol(args.protocol, model_dir, style_classifier=args.style_classifier,
                             object_classifier=args.object_classifier,
                             **({"device": args.device or "cpu"} if args.protocol == "unlearncanvas" else {}))
    domain = domain or "style"
    sequence = list(dict.fromkeys(unlearned)) if args.run or unlearned else None
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()] if args.seeds else None
    except ValueError:
        raise ValueError(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 188,288") from None
    partners = [p.strip() for p in args.partners.split(",") if p.strip()] if args.partners else None
    plan = make_plan(protocol, domain, sequence=sequence, partners=partners, seeds=seeds)
    key = key or model_key(model_hash(model_dir))
    pipe = load_pipeline(model_dir, device=args.device)
    if delta:
        apply_delta(pipe.unet, delta)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file, not a directory")
    out.mkdir(parents=True, exist_ok=True)
    result = evaluate(pipe, protocol, plan, unlearned, key=key, cache_dir=out / "images")
    result.update({"domain": domain, "unlearned": unlearned, "seeds": plan.seeds, "partners": plan.partners})
    atomic_write_json(out / "metrics.json", result)
    fmt = lambda x: "-" if x is None else f"{x:.1f}"
    print(f"UA {fmt(result['UA'])}  RA-I {fmt(result['RA_I'])}  RA-C {fmt(result['RA_C'])}  -> {out / 'metrics.json'}")
    return 0


def cmd_demo(args) -> int:
    from importlib import resources

    from .distributed import validate_device

    validate_device(args.device)

    text = resources.files("obliviate").joinpath("configs/demo.yaml").read_text()
    exp = load_experiment(yaml.safe_load(text))
    t0 = time.time()
    summary = Runner(exp, args.out, quiet=args.quiet, device=args.device).run()
    print()
    print(short_table(summary))
    print(f"\ndemo finished in {time.time() - t0:.0f} s")
    print(f"report: {(Path(args.out) / 'report.html').resolve()}")
    return 0


def add_commands(sub) -> None:
    ev = sub.add_parser("eval", help="evaluate a model (or a run's step) with a protocol")
    ev.add_argument("--model", help="pipeline directory")
    ev.add_argument("--run", help="a run directory: evaluate its model after --step requests")
    ev.add_argument("--step", type=int, help="with --run: after this many requests (default: all)")
    ev.add_argument("--protocol", default="minicanvas", help="minicanvas (default) or unlearncanvas")
    ev.add_argument("--domain", choices=["style", "object"],
                    help="the domain whose concepts are scored (default: the run's, else style)")
    ev.add_argument("--unlearned", help="comma-separated concepts counted in UA (with --model)")
    ev.add_argument("--seeds", help="comma-separated evaluation seeds (default: the protocol's first two: "
                                    "188,288 for both minicanvas and unlearncanvas)")
    ev.add_argument("--partners", help="comma-separated concepts of the other domain each concept is drawn with "
                                       "(default: minicanvas: every concept of the other domain; unlearncanvas: "
                                       "the protocol's retained concepts of the other domain)")
    ev.add_argument("--style-classifier", help="unlearncanvas: style classifier checkpoint")
    ev.add_argument("--object-classifier", help="unlearncanvas: object classifier checkpoint")
    ev.add_argument("--out", required=True, help="output directory: metrics.json and the generated images")
    ev.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    ev.set_defaults(func=cmd_eval)

    rn = sub.add_parser("run", help="run an experiment file (every variant, every step, evaluated, with a report)")
    rn.add_argument("file", help="experiment YAML file (see configs/)")
    rn.add_argument("--out", required=True, help="output directory; rerun the same command to resume")
    rn.add_argument("--seed", type=int, help="training seed (overrides the file's `seed`)")
    rn.add_argument("--model", help="base pipeline directory (overrides the file's `model`)")
    rn.add_argument("--style-classifier", help="unlearncanvas: style classifier checkpoint (overrides the file)")
    rn.add_argument("--object-classifier", help="unlearncanvas: object classifier checkpoint (overrides the file)")
    rn.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    rn.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"], help="training autocast dtype")
    rn.add_argument("--gradient-checkpointing", action="store_true", help="recompute UNet activations in backward")
    rn.set_defaults(func=cmd_run)

    dm = sub.add_parser("demo", help="the main job on MiniCanvas: 6 styles, ConAbl with and without projection")
    dm.add_argument("--out", default="runs/demo", help="output directory (default: runs/demo)")
    dm.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    dm.set_defaults(func=cmd_demo)
