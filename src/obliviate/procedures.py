"""How a request changes its trained tensors, chosen once from its method:

    Solve  a closed-form method (uce, speed, ...): one solve replaces the tensors
    Train  the training loop (trainer.train); with early stopping, snapshots for `choose` to pick from

Both return the same record: {"interrupted", "losses", "train_seconds"} (and "early" when a
snapshot was chosen).
"""
from __future__ import annotations

import time

import torch

from .trainer import Hook, train


class Solve:
    def run(self, job, ctx, *, stop_after, checkpoint_every, choose, snapshots) -> dict:
        t0 = time.time()
        solved = job.method.solve(ctx)
        with torch.no_grad():
            for n, p in ctx.params.items():
                p.copy_(solved[n])
        # tests: stop_after during the solve = a kill, which leaves no step behind
        return {"interrupted": stop_after is not None, "losses": [], "train_seconds": time.time() - t0}


class Train:
    def run(self, job, ctx, *, stop_after, checkpoint_every, choose, snapshots) -> dict:
        hooks, keeper = list(job.regs), None
        if choose is not None:  # early stopping: keep snapshots, let `choose` pick one
            total = job.method.settings.steps
            keeper = SnapshotKeeper(sorted({max(1, round(total * (i + 1) / snapshots)) for i in range(snapshots)}))
            hooks.append(keeper)
        result = train(ctx, job.method, hooks, checkpoint_path=job.partial / "checkpoint.pt", stop_after=stop_after,
                       checkpoint_every=checkpoint_every)
        if keeper is not None and not result["interrupted"] and job.procs.is_main:
            chosen, info = choose(ctx, keeper.snapshots)
            with torch.no_grad():
                for n, p in ctx.params.items():
                    p.copy_(keeper.snapshots[chosen][n])
            result["early"] = {"chosen_step": chosen, "candidates": sorted(keeper.snapshots), **info}
        return result


def for_method(method) -> Solve | Train:
    return Solve() if method.closed_form else Train()


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
