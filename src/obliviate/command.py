"""An `obliviate` command as the work of one chain (experiment/executor.py): scripts/study.py runs
each unit as one `obliviate run`. It sits above the command line it calls, so the executor
below never imports the command line."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Command:
    """An `obliviate` command as a chain's work (scripts/study.py: one unit = one `obliviate run`),
    run in the worker's own process; a non-zero exit is an error."""

    argv: list[str]

    def __call__(self) -> None:
        from .cli import main

        code = main(list(self.argv))
        if code == 130:  # main turned Ctrl-C into its exit status: stop here too, not only this command
            raise KeyboardInterrupt
        if code:
            raise RuntimeError(f"obliviate {' '.join(self.argv)} exited with status {code}")
