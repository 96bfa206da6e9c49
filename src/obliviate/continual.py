"""Applying requests to a run: assemble the run's latest model, train or solve, and hand the
step to the ledger (ledger.py: what is on disk). Settings, LoRA forms and model families are
checked by components.py before any work. What differs between requests is chosen once per
request, not branched on throughout: the trained tensors (trained.py: the group's own, or a
LoRA adapter), the procedure (procedures.py: a closed-form solve, or the training loop) and
the processes (distributed.py: this one alone, or several under `accelerate launch`).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import shutil
import time
from pathlib import Path

import torch

from . import __version__, distributed, procedures, trained
from .components import Parsed, build_hooks, check_for_model, parse, resolved_config  # noqa: F401 (build_hooks, resolved_config: re-exported)
from .delta import apply_delta, atomic_directory, drift
from .ledger import Job, Ledger, slug  # noqa: F401 (slug: re-exported)
from .locking import exclusive
from .model import TEXT_ENCODER_PREFIX, check_pipeline_dir, denoiser, edited, load_pipeline, model_hash, pick_device
from .protocols import PROTOCOLS
from .request import Request
from .trainer import Context, Method, text_encoder_key


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
        apply_delta(edited(pipe), delta)
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
    def unlearn(self, request: Request | Parsed, *, quiet: bool = False, device=None, stop_after: int | None = None,
                checkpoint_every: int = 25, choose=None, snapshots: int = 4, cache_dir: Path | None = None,
                precision: str = "auto", gradient_checkpointing: bool = False) -> dict:
        """Apply one request to the run's latest model; returns the step's metadata.

        Under `accelerate launch` the request's batch is split across the processes (see
        distributed.py); only the main process writes.

        If the same request already completed in this run, it is not redone: its step is
        returned. An unfinished request of the same configuration resumes. The run is locked
        for the whole request: a second process gets a BusyError at once.
        """
        parsed = parse(request)  # once: the hooks built here serve the whole request
        procs = distributed.processes()
        job = self._job(parsed, procs, device, precision, choose)
        model = None
        if procs.world == 1:
            # Without the lock: a finished request is returned as it is (also from a read-only run),
            # and the first request of a new run loads its model before the run is written.
            done = self.completed(job, quiet)
            if done is not None:
                return done
            if not self.created:
                model = self._assemble(job, gradient_checkpointing)
        if procs.is_main:
            self.create()
        procs.barrier()
        # several processes of one request: the main process holds the run's lock for all of them
        with exclusive(self.path, "run") if procs.is_main else contextlib.nullcontext():
            if self.steps() != job.steps:  # another process added a step meanwhile: where this request stands again
                job = self._job(parsed, procs, device, precision, choose)
                model = None
            done = self.completed(job, quiet)
            if done is not None:
                return done
            self.claim_partial(job)
            if model is None:
                model = self._assemble(job, gradient_checkpointing)
            ctx = self._context(job, model, cache_dir, quiet, precision)
            result = self._apply(job, ctx, stop_after=stop_after, checkpoint_every=checkpoint_every, choose=choose,
                                 snapshots=snapshots)
            if result["interrupted"]:
                return {"interrupted": True, "partial": str(job.partial)}
            if not procs.is_main:  # the main process writes the (identical) step
                procs.barrier()
                return {**json.loads((job.final_dir / "step.json").read_text()), "dir": str(job.final_dir)}
            return self._write_step(job, model, result)

    # ---- the steps of a request, in order
    def _job(self, parsed: Parsed, procs, device, precision, choose) -> Job:
        """Every setting, the device, the concept and what a closed-form method needs, before any work."""
        request, method, regs = parsed.request, parsed.method, parsed.regs
        check_for_model(self.base_model, method, regs, request.param_group)
        procs.check(method, regs)
        device = procs.device_for(device)
        distributed.validate_device(str(device) if device is not None else None)
        catalog = self.catalog()
        catalog.check_concepts(request.domain, request.targets)
        if self.created:
            self.check_base()
        steps = self.verify_chain()  # a damaged ledger is refused before a partial directory exists
        if method.closed_form and choose is not None:
            raise ValueError(f"method {method.name!r} is closed form: early stopping needs a training loop")
        # settings the model or the run cannot serve are refused before any work (closed forms, and
        # methods that solve before they train)
        if method.closed_form or type(method).check is not Method.check:
            method.check(_load_tokenizer(self.base_model), [m["request"] for m in steps], request.targets)
        final_dir = self.path / "steps" / f"{len(steps) + 1:03d}-{slug(request.concept)}"
        return Job(parsed=parsed, procs=procs, device=device, catalog=catalog, steps=steps, index=len(steps) + 1,
                   final_dir=final_dir, partial=self.path / "steps" / f".{final_dir.name}.partial",
                   precision=distributed.trained_in(pick_device(device), precision, method.closed_form),
                   tensors=trained.for_group(request.param_group), procedure=procedures.for_method(method))

    def _assemble(self, job: Job, gradient_checkpointing: bool) -> trained.Model:
        """The run's latest model: base pipeline + earlier deltas, the request's trained tensors selected."""
        pipe = load_pipeline(self.base_model, device=job.device)
        model = job.tensors.assemble(pipe, self.cumulative_delta(verified=job.steps), job.request.seed, job.steps)
        for hook in job.regs:
            model.add_own(hook.own_tensors(pipe))
        if gradient_checkpointing:
            distributed.enable_gradient_checkpointing(denoiser(pipe))
        return model

    def _context(self, job: Job, model: trained.Model, cache_dir, quiet, precision) -> Context:
        return Context(
            pipe=model.pipe, request=job.request, params=model.params, pretrained=model.pretrained, start=model.start,
            catalog=job.catalog, unlearned_before=[(m["request"]["concept"], m["request"]["domain"]) for m in job.steps],
            cache_dir=Path(cache_dir) if cache_dir else self.path / "cache", base_hash=self.info["base_hash"],
            restore_base=model.restore_base, quiet=quiet, earlier_requests=[m["request"] for m in job.steps],
            precision=precision, dist=job.dist,
            text_key=text_encoder_key(model.pipe) if any(n.startswith(TEXT_ENCODER_PREFIX) for n in model.previous) else "",
        )

    def _apply(self, job: Job, ctx: Context, **how) -> dict:
        """Hooks set up (the main process first: it writes the caches), then the solve or the training loop.
        A hook that trains before the method (the text-side defence) is set up and run first."""
        t0 = time.time()
        torch.manual_seed(job.request.seed)
        before = [reg for reg in job.regs if reg.trains_before_method]
        timings = {}
        with job.procs.main_first():
            if before:
                for reg in before:
                    reg.setup(ctx, job.method)
                    reg.before_method(ctx)
                ctx.text_encoder_changed()
                timings["before_method_seconds"] = time.time() - t0
            job.method.setup(ctx)
            for reg in job.regs:
                if not reg.trains_before_method:
                    reg.setup(ctx, job.method)
        timings["setup_seconds"] = time.time() - t0 - timings.get("before_method_seconds", 0.0)
        return {**job.procedure.run(job, ctx, **how), **timings}

    def _write_step(self, job: Job, model: trained.Model, result: dict) -> dict:
        """The step's record: the delta the ledger keeps (a LoRA run keeps its adapter), drift, timings."""
        stored = job.tensors.stored(model)
        cumulative = {n: v.clone() for n, v in model.previous.items()}
        for n, v in stored.delta.items():
            cumulative[n] = cumulative[n] + v if n in cumulative else v.clone()
        delta_file = self.write_delta(job, stored.tensors, {"base_hash": self.info["base_hash"], "step": str(job.index),
                                                            **stored.file_metadata})
        losses = result["losses"]
        meta = {
            "step": job.index, "request": job.request.to_dict(), "config": job.config,
            "base_hash": self.info["base_hash"], "parent_hash": "base" if not job.steps else job.steps[-1]["delta_hash"],
            "timings": {"setup_seconds": result["setup_seconds"], "train_seconds": result["train_seconds"],
                        **({"before_method_seconds": result["before_method_seconds"]} if "before_method_seconds" in result else {})},
            "processes": job.procs.world, "precision": job.precision,
            "loss_first": sum(losses[:10]) / max(1, len(losses[:10])), "loss_last": sum(losses[-10:]) / max(1, len(losses[-10:])),
            "drift": {"parent": drift(stored.delta), "pretrained": drift(cumulative)},
            "obliviate": __version__, "torch": torch.__version__,
            "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **job.tensors.report(stored, delta_file),
        }
        if result.get("early") is not None:
            meta["early_stopping"] = {k: ({str(a): b for a, b in v.items()} if isinstance(v, dict) else v)
                                      for k, v in result["early"].items()}
        if getattr(job.method, "info", None):
            meta["closed_form"] = job.method.info
        for hook in [job.method, *job.regs]:  # what each hook wants recorded (ConAbl's anchor, the projection's concepts)
            meta.update(hook.report())
        return self.commit(job, meta)


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
