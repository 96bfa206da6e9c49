"""Applying requests to a run: assemble the run's latest model, train or solve, and hand the
step to the ledger (ledger.py: what is on disk). Settings, LoRA forms and model families are
checked by components.py before any work.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import shutil
import time
from pathlib import Path

import torch

from . import __version__, distributed, lora
from .components import build_hooks, check_for_model, resolved_config  # noqa: F401 (build_hooks: re-exported)
from .delta import apply_delta, atomic_directory, drift, swapped
from .ledger import Job, Ledger, slug  # noqa: F401 (slug: re-exported)
from .locking import exclusive
from .model import check_pipeline_dir, denoiser, load_pipeline, model_hash, pick_device, select_parameters
from .protocols import PROTOCOLS, Catalog
from .trainer import Context, Hook, Method, Request, train


class Run(Ledger):
    """A run: its ledger, plus applying requests and building its models."""

    # ------------------------------------------------------------ creation and listing
    @classmethod
    def open_or_create(cls, path: str | Path, model_dir: str | Path | None = None, catalog: str | None = None, *,
                       write_now: bool = True) -> "Run":
        """`catalog` names the concept catalog of a model that carries none (e.g. "unlearncanvas").
        `write_now=False` (the command line): a new run is written by its first request, once
        the request is valid and its model loads, so a refused request or a damaged model leaves
        no run behind."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ValueError(f"run directory {path} is a file, not a directory")
        if (path / "run.json").exists():
            run = cls(path)
            if model_dir is not None and Path(model_dir).resolve() != Path(run.info["base_model"]).resolve():
                if model_hash(model_dir) != run.info["base_hash"]:
                    raise ValueError(
                        f"run {path} was created on {run.info['base_model']}; --model {model_dir} is a different model"
                    )
            return run
        if model_dir is None:
            from .minicanvas import bundled_path

            model_dir = bundled_path()
        model_dir = check_pipeline_dir(model_dir)
        if path.exists() and any(path.iterdir()):
            raise FileExistsError(f"{path} exists, is not empty and is not an obliviate run")
        if catalog is not None and catalog not in PROTOCOLS:
            raise ValueError(f"unknown catalog {catalog!r}; valid catalogs: {', '.join(PROTOCOLS)}")
        run = cls(path, {
            "base_model": str(Path(model_dir).resolve()), "base_hash": model_hash(model_dir),
            **({"catalog": catalog} if catalog else {}),
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "obliviate": __version__,
        })
        if write_now:
            run.create()
        return run

    def load(self, step: int | None = None, device=None):
        """The pipeline after `step` requests (default: all); checks the base hash first."""
        self.check_base()
        delta = self.cumulative_delta(step)
        pipe = load_pipeline(self.base_model, device=device)
        apply_delta(denoiser(pipe), delta)
        return pipe

    def export(self, out: str | Path, step: int | None = None, device=None) -> Path:
        """A full pipeline directory that plain diffusers loads."""
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file, not a directory")
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(f"--out {out} exists and is not empty; choose a new directory")
        with atomic_directory(out) as tmp:  # created now: an unwritable destination fails before loading the model
            pipe = self.load(step, device=device or "cpu")
            pipe.to("cpu")
            pipe.save_pretrained(tmp, safe_serialization=True)
            for extra in ("classifiers", "minicanvas.json"):  # keep MiniCanvas models evaluable
                src = self.base_model / extra
                if src.is_dir():
                    shutil.copytree(src, tmp / extra)
                elif src.exists():
                    shutil.copy2(src, tmp / extra)
            _portable_tokenizer(tmp)
        return out

    # ------------------------------------------------------------ applying a request
    def unlearn(self, request: Request, *, quiet: bool = False, device=None, stop_after: int | None = None,
                checkpoint_every: int = 25, choose=None, snapshots: int = 4, cache_dir: Path | None = None,
                precision: str = "auto", gradient_checkpointing: bool = False) -> dict:
        """Apply one request to the run's latest model; returns the step's metadata.

        Under `accelerate launch` the request's batch is split across the processes (see
        distributed.py); only the main process writes.

        If the same request already completed in this run, it is not redone: its step is
        returned. An unfinished request of the same configuration resumes. The run is locked
        for the whole request: a second process gets a BusyError at once.
        """
        dist = distributed.current()
        model = None
        if dist is None:
            # Without the lock: a finished request is returned as it is (also from a read-only run),
            # and the first request of a new run loads its model before the run is written.
            job = self._validate(request, device, precision, choose)
            done = self.completed(job, quiet)
            if done is not None:
                return done
            if not self.created:
                model = self._assemble(job, gradient_checkpointing)
        if not dist or dist.is_main:
            self.create()
        if dist is not None:
            dist.barrier()
        # several processes of one request: the main process holds the run's lock for all of them
        with exclusive(self.path, "run") if dist is None or dist.is_main else contextlib.nullcontext():
            return self._unlearn(request, quiet=quiet, device=device, stop_after=stop_after,
                                 checkpoint_every=checkpoint_every, choose=choose, snapshots=snapshots, cache_dir=cache_dir,
                                 precision=precision, gradient_checkpointing=gradient_checkpointing, model=model)

    def _unlearn(self, request: Request, *, quiet, device, stop_after, checkpoint_every, choose, snapshots, cache_dir,
                 precision="auto", gradient_checkpointing=False, model=None) -> dict:
        job = self._validate(request, device, precision, choose)
        done = self.completed(job, quiet)
        if done is not None:
            return done
        self.claim_partial(job)
        if model is None or job.steps:  # a model assembled before the lock serves only a run still empty
            model = self._assemble(job, gradient_checkpointing)
        ctx = Context(
            pipe=model.pipe, request=request, params=model.params, pretrained=model.pretrained, start=model.start,
            catalog=job.catalog, unlearned_before=[(m["request"]["concept"], m["request"]["domain"]) for m in job.steps],
            cache_dir=Path(cache_dir) if cache_dir else self.path / "cache", base_hash=self.info["base_hash"],
            restore_base=model.restore_base, quiet=quiet, earlier_requests=[m["request"] for m in job.steps],
            precision=precision, dist=job.dist,
        )
        result = self._train_or_solve(job, ctx, stop_after=stop_after, checkpoint_every=checkpoint_every, choose=choose,
                                      snapshots=snapshots)
        if result["interrupted"]:
            return {"interrupted": True, "partial": str(job.partial)}
        if job.dist is not None and not job.dist.is_main:  # the main process writes the (identical) step
            job.dist.barrier()
            return {**json.loads((job.final_dir / "step.json").read_text()), "dir": str(job.final_dir)}
        return self._write_step(job, model, result)

    # ---- the steps of a request, in order
    def _validate(self, request: Request, device, precision, choose) -> Job:
        """Every setting, the device, the concept and what a closed-form method needs, before any work."""
        method, regs = build_hooks(request)
        check_for_model(self.base_model, method, regs, request.param_group)
        dist = distributed.current()
        if dist is not None:
            dist.check(method, regs)
            if device is not None and torch.device(device) != dist.device:
                raise ValueError(f"--device {device} conflicts with accelerate launch, which gives process {dist.rank} "
                                 f"{dist.device}; leave --device out")
            device = dist.device
        distributed.validate_device(str(device) if device is not None else None)
        # the dtype the matmuls will run in: part of the work, recorded and compared like a setting
        dtype = distributed.autocast_dtype(pick_device(device), precision)
        trained_in = None if method.closed_form else {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
        catalog = self.catalog()
        self._check_concept(request, catalog)
        if self.created:
            self.check_base()
        steps = self.verify_chain()  # a damaged ledger is refused before a partial directory exists
        if method.closed_form and choose is not None:
            raise ValueError(f"method {method.name!r} is closed form: early stopping needs a training loop")
        # settings the model or the run cannot serve are refused before any work (closed forms, and
        # methods that solve before they train)
        if method.closed_form or type(method).check is not Method.check:
            method.check(_load_tokenizer(self.base_model), [m["request"] for m in steps], request.targets)
        index = len(steps) + 1
        final_dir = self.path / "steps" / f"{index:03d}-{slug(request.concept)}"
        return Job(request=request, method=method, regs=regs, config=resolved_config(method, regs), dist=dist, device=device,
                    catalog=catalog, steps=steps, index=index, final_dir=final_dir, precision=trained_in,
                    partial=self.path / "steps" / f".{final_dir.name}.partial")

    def _assemble(self, job: Job, gradient_checkpointing: bool) -> "_Model":
        """The run's latest model: base pipeline + earlier deltas, the request's trained tensors selected."""
        request, steps = job.request, job.steps
        previous = self.cumulative_delta(verified=steps)
        pipe = load_pipeline(self.base_model, device=job.device)
        started_from = None
        if lora.is_lora(request.param_group):
            # the earlier changes go into the weights first, while they still have their own names
            # (the adapter renames them `base_layer`); the trained tensors are the adapter's
            apply_delta(denoiser(pipe), previous)
            base_params = {n: p for n, p in denoiser(pipe).named_parameters() if n in previous}
            params = lora.inject(denoiser(pipe), request.param_group, request.seed)
            started_from = lora.continue_adapter(denoiser(pipe), params, request.param_group, steps)
            pretrained = {n: p.detach().clone() for n, p in params.items()}
        else:
            params = select_parameters(denoiser(pipe), request.param_group)
            # the base values exactly (not start - previous, which float rounding perturbs)
            pretrained = {n: p.detach().clone() for n, p in params.items()}
            apply_delta(denoiser(pipe), previous)
            base_params = {n: p for n, p in denoiser(pipe).named_parameters() if n in previous}
        for p in params.values():
            p.requires_grad_(True)
        if gradient_checkpointing:
            distributed.enable_gradient_checkpointing(denoiser(pipe))
        start = {n: p.detach().clone() for n, p in params.items()}

        def restore_base():  # the base model's weights for the block (e.g. anchor images), evaluated on entry
            return swapped(base_params, {n: p.detach() - previous[n].to(p.device) for n, p in base_params.items()})

        return _Model(pipe=pipe, params=params, pretrained=pretrained, start=start, previous=previous,
                      started_from=started_from, restore_base=restore_base)

    def _train_or_solve(self, job: Job, ctx: Context, *, stop_after, checkpoint_every, choose, snapshots) -> dict:
        """Hooks set up, then the training loop (or a closed-form solve); early stopping picks a snapshot."""
        method, regs, dist, params = job.method, job.regs, job.dist, ctx.params
        t0 = time.time()
        torch.manual_seed(job.request.seed)
        with dist.main_first() if dist is not None else contextlib.nullcontext():  # the main process writes caches
            method.setup(ctx)
            for reg in regs:
                reg.setup(ctx, method)
        setup_seconds = time.time() - t0
        hooks = list(regs)
        if method.closed_form:  # ---- closed form (UCE): one solve instead of the training loop
            t1 = time.time()
            solved = method.solve(ctx)
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(solved[n])
            # tests: stop_after during the solve = a kill, which leaves no step behind
            result = {"interrupted": stop_after is not None, "losses": [], "train_seconds": time.time() - t1}
        else:
            if choose is not None:  # early stopping: keep snapshots, let `choose` pick one
                total = method.settings.steps
                keeper = SnapshotKeeper(sorted({max(1, round(total * (i + 1) / snapshots)) for i in range(snapshots)}))
                hooks.append(keeper)
            result = train(ctx, method, hooks, checkpoint_path=job.partial / "checkpoint.pt", stop_after=stop_after,
                           checkpoint_every=checkpoint_every)
        result["setup_seconds"] = setup_seconds
        if result["interrupted"] or (dist is not None and not dist.is_main):
            return result
        if choose is not None:
            chosen, info = choose(ctx, keeper.snapshots)
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(keeper.snapshots[chosen][n])
            result["early"] = {"chosen_step": chosen, "candidates": sorted(keeper.snapshots), **info}
        return result

    def _write_step(self, job: Job, model: "_Model", result: dict) -> dict:
        """The step's record: the delta the ledger keeps (a LoRA run keeps its adapter), drift, timings."""
        request, method, dist = job.request, job.method, job.dist
        params = model.params
        file_meta = {"base_hash": self.info["base_hash"], "step": str(job.index)}
        if lora.is_lora(request.param_group):  # the ledger keeps the adapter; drift is of its weight change
            stored = lora.adapter_tensors(params)
            stored.update({lora.PREVIOUS + n: v for n, v in (model.started_from or {}).items()})
            file_meta.update(lora.metadata(request.param_group))
            delta = lora.densify(stored, lora.parse_group(request.param_group).scale)
        else:
            stored = delta = {n: (p.detach() - model.start[n]).cpu() for n, p in params.items()}
        cumulative = {n: v.clone() for n, v in model.previous.items()}
        for n, v in delta.items():
            cumulative[n] = cumulative[n] + v if n in cumulative else v.clone()
        delta_file = self.write_delta(job, stored, file_meta)
        losses = result["losses"]
        meta = {
            "step": job.index, "request": request.to_dict(), "config": job.config,
            "base_hash": self.info["base_hash"], "parent_hash": "base" if not job.steps else job.steps[-1]["delta_hash"],
            "timings": {"setup_seconds": result["setup_seconds"], "train_seconds": result["train_seconds"]},
            "processes": dist.world if dist is not None else 1, "precision": job.precision,
            "loss_first": sum(losses[:10]) / max(1, len(losses[:10])), "loss_last": sum(losses[-10:]) / max(1, len(losses[-10:])),
            "drift": {"parent": drift(delta), "pretrained": drift(cumulative)},
            "obliviate": __version__, "torch": torch.__version__,
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        if lora.is_lora(request.param_group):
            meta["adapter"] = {**lora.metadata(request.param_group), **lora.size_report(stored, delta, delta_file)}
        if result.get("early") is not None:
            meta["early_stopping"] = {k: ({str(a): b for a, b in v.items()} if isinstance(v, dict) else v)
                                      for k, v in result["early"].items()}
        if getattr(method, "info", None):
            meta["closed_form"] = method.info
        for hook in [method, *job.regs]:  # what each hook wants recorded (ConAbl's anchor, the projection's concepts)
            meta.update(hook.report())
        return self.commit(job, meta)

    @staticmethod
    def _check_concept(request: Request, catalog: Catalog) -> None:
        if catalog.name == "generic" or request.domain == "other":
            return
        known = catalog.concepts(request.domain)
        for concept in request.targets:
            Run._check_one(concept, request.domain, catalog, known)

    @staticmethod
    def _check_one(concept, domain, catalog, known) -> None:
        if concept not in known:
            where = catalog.domain_of(concept)
            hint = f" (it is a {where})" if where else ""
            raise ValueError(
                f"unknown {domain} {concept!r} for the {catalog.name} model{hint}; valid {domain}s: {', '.join(known)}"
            )


@dataclasses.dataclass
class _Model:
    """The model a request trains: the pipeline, its trained tensors and their starting points."""

    pipe: object
    params: dict
    pretrained: dict
    start: dict
    previous: dict
    started_from: dict | None
    restore_base: object


class SnapshotKeeper(Hook):
    """Copies of the trained tensors at chosen steps (for early stopping)."""

    name = "snapshots"
    order = 100

    def __init__(self, at_steps: list[int]):
        self.at_steps, self.snapshots = set(at_steps), {}

    def after_step(self, ctx, step, total_steps) -> None:
        if step + 1 in self.at_steps:
            self.snapshots[step + 1] = {n: p.detach().clone() for n, p in ctx.params.items()}

    def state_dict(self) -> dict:
        return {"snapshots": self.snapshots}

    def load_state_dict(self, state: dict) -> None:
        self.snapshots = state.get("snapshots", {})


def _load_tokenizer(model_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(model_dir) / "tokenizer", local_files_only=True)


def _portable_tokenizer(directory: Path) -> None:
    from .minicanvas.tokenizer import make_portable

    index = json.loads((directory / "model_index.json").read_text())
    if index.get("tokenizer", [None, None])[1] in ("TokenizersBackend",):
        make_portable(directory)


def unlearn_sequence(run_dir: str | Path, requests: list[Request], *, model_dir=None, quiet: bool = False) -> list[dict]:
    """Python API: apply requests one after another to a run (created on first use)."""
    run = Run.open_or_create(run_dir, model_dir)
    return [run.unlearn(r, quiet=quiet) for r in requests]
