"""An experiment as independent chains, for an executor (executor.py).

The chains of `obliviate run FILE --executor ray|slurm` run in two waves:

1. every swept value of every variant with a `sweep:` (the value's requests in order, each
   trained and evaluated on the probe seeds, stopping early under the UA bar), and every
   variant without one (its whole sequence, evaluated on the reported seeds, its attacks);
2. every swept variant: its strength chosen from wave 1's files, then its chosen value
   evaluated on the reported seeds (the training is wave 1's, reused; the value is trained
   further only when no value reached the bar and the chosen one stopped early).

Then this process assembles summary.json and the report exactly as a one-process run does,
from the files the chains left: every step and evaluation is read back, nothing is computed
again, so the summary is the one-process summary. Chains share the output directory (the
base model's evaluation, the anchor and image caches), where every file is written to a
temporary name and renamed, and generated under a lock (locking.filling).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..continual import slug
from .config import Experiment
from .executor import Chain, ChainsFailed, Executor
from .runner import Runner


@dataclass
class ChainWork:
    """One chain of an experiment, runnable in any process that sees the output directory."""

    exp: Experiment
    out: str
    options: dict  # Runner's device / precision / gradient_checkpointing
    variant: str
    value: float | int | None = None  # a swept value; None: the whole variant

    def __call__(self) -> None:
        from .strength import sweep_value

        runner = Runner(self.exp, self.out, quiet=False, **self.options)
        variant = next(v for v in self.exp.variants if v.name == self.variant)
        if self.value is None:
            runner.run_variant(variant)
        else:
            sweep_value(runner, variant, Path(self.out) / "variants" / slug(variant.name), self.value)


def waves(exp: Experiment, out: Path, options: dict) -> list[list[Chain]]:
    out = Path(out).resolve()  # workers elsewhere see the same path on the shared filesystem
    logs = out / "logs"
    first, second = [], []
    for v in exp.variants:
        name = slug(v.name)
        if v.sweep:
            for value in v.sweep["values"]:
                first.append(Chain(f"{v.name} {v.sweep['key']}={value}", ChainWork(exp, str(out), options, v.name, value),
                                   logs / f"{name}-{slug(str(value))}.log"))
            second.append(Chain(v.name, ChainWork(exp, str(out), options, v.name), logs / f"{name}.log"))
        else:
            first.append(Chain(v.name, ChainWork(exp, str(out), options, v.name), logs / f"{name}.log"))
    return [first, second]


def run_chains(exp: Experiment, out: Path, options: dict, executor: Executor, log=print) -> None:
    """Both waves on `executor`; a swept variant whose values failed is not started. Raises
    ChainsFailed after everything else has finished."""
    failures = []
    try:
        for i, wave in enumerate(waves(exp, out, options), start=1):
            blocked = {f.chain.work.variant for f in failures}
            todo = [c for c in wave if c.work.variant not in blocked]
            if not todo:
                continue
            log(f"[obliviate] wave {i}: {len(todo)} chain(s) on {executor.describe()}; logs in {Path(out) / 'logs'}")
            failures += executor.run(todo, log=log)
    finally:
        executor.close()
    if failures:
        raise ChainsFailed(failures)


def run_on(executor: Executor):
    """What Runner.run does first with an executor that runs chains elsewhere: `runner.run(run_on(executor))`."""
    def first(runner) -> None:
        run_chains(runner.exp, runner.out, runner.options, executor, log=runner.log)

    return first
