"""Exclusive, non-blocking locks on a run or an experiment output directory.

Two processes writing one run can both create step N (the check for the next step number
and the creation of its directory are separate moments), after which the ledger is
damaged. Every request therefore holds `DIR/.lock` (an flock, released by the kernel when
the process dies, so a kill -9 never leaves a stale lock) for its whole duration; a second
process is refused at once instead of waiting.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

try:
    import fcntl
except ImportError:  # Windows: no flock; runs are then unprotected against concurrent writers
    fcntl = None


_HELD: set[str] = set()


class BusyError(RuntimeError):
    """Another process holds the lock of a run or an output directory."""


@contextlib.contextmanager
def _held(lock: Path, *, wait: bool, busy_message: str = ""):
    """Hold an flock on the file `lock` (created if missing) for the block; re-entry from this
    process holds it already. `wait=False`: a lock another process holds raises BusyError."""
    key = str(lock.resolve())
    if fcntl is None or key in _HELD:  # a second flock of this process on the file would wait for itself
        yield
        return
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BusyError(busy_message) from None
        _HELD.add(key)
        try:
            yield
        finally:
            _HELD.discard(key)
    finally:
        os.close(fd)  # closing the descriptor releases the lock


@contextlib.contextmanager
def exclusive(directory: str | Path, what: str):
    """Hold DIR/.lock for the duration of the block; `what` names the thing in the error."""
    directory = Path(directory)
    with _held(directory / ".lock", wait=False,
               busy_message=f"{what} {directory} is busy (another obliviate process holds it); wait for it to finish"):
        yield


@contextlib.contextmanager
def filling(path: str | Path):
    """Wait for, then hold, the lock of one cache file while it is read or generated.

    Several workers of one experiment (Ray tasks, SLURM jobs, `accelerate launch` processes)
    fill one shared cache: the first to need a file generates it, and the others, instead of
    generating the same file again in parallel, wait here and then read it. The file itself
    is still written to a temporary name and renamed (delta.atomic_write), so a reader that
    takes no lock never sees half of it. The lock is `.NAME.lock` next to the file (an flock:
    the kernel releases it when its holder dies, so a killed worker never blocks the rest)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with _held(path.parent / f".{path.name}.lock", wait=True):  # blocking: the holder is generating what we need
        yield
