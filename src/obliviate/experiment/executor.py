"""Where independent chains run: in this process, on a Ray cluster, or as SLURM jobs.

A *chain* is work that shares nothing with other chains but files on a shared filesystem:
one variant of an experiment file, or one swept value of a variant's strength sweep (its
requests in order, each trained and evaluated; chains.py), or one unit of the study
(scripts/study.py). An executor runs a list of chains and returns when every one has
finished; a chain that fails is reported with the path of its log while the others go on,
and a rerun resumes it (the run directory is the only state: finished steps and evaluations
are files, an interrupted request resumes from its checkpoint).

    local            in this process, one chain after the other (no extra dependency)
    ray              each chain a Ray task with declared resources (`cpus`, `gpus`), retried
                     `retries` times when its worker dies; an embedded Ray on this machine
                     (`workers` tasks at a time), or `ray:ADDRESS` / RAY_ADDRESS for a cluster
    slurm            each chain a SLURM job through submitit (`partition`, `time` in minutes,
                     `gpus`, `cpus`, `mem_gb`), requeued on preemption or timeout, resubmitted
                     `retries` times when it dies; `slurm:local` runs the jobs as processes of
                     this machine (submitit's local executor: a rehearsal without SLURM)

Options come from the command line or from an `executor:` block of the experiment file, one
mapping per executor name (the command line wins):

    executor:
      ray: {cpus: 4, gpus: 1}
      slurm: {partition: gpu, time: 240, gpus: 1, cpus: 8}

Why tasks and not Ray Tune: the sweep of a strength is a fixed grid whose choice (equal
forgetting) needs every value's whole sequence, and its early stop (a value under the UA bar
after a request) is decided inside the chain from the chain's own probe scores; Tune's
trial schedulers stop trials by comparing them with each other, which is not this rule, and
its trial directories, checkpoints and resume would duplicate the run ledger that already
makes every step resumable. Plain tasks keep the run directory the only state, so a study
started on Ray resumes under SLURM or in one process.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

EXECUTORS = ("local", "ray", "slurm")

# option -> (the executors that take it, (a test of its value, what a valid value is))
_INT = (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "an integer >= 0")
_POS = (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "an integer >= 1")
_NUM = (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0, "a number >= 0")
_STR = (lambda v: isinstance(v, str) and bool(v), "a name")
OPTIONS: dict[str, tuple[tuple[str, ...], tuple]] = {
    "cpus": (("ray", "slurm"), _POS),        # CPUs each chain holds (torch runs one thread per CPU)
    "gpus": (("ray", "slurm"), _NUM),        # GPUs each chain holds (Ray takes fractions)
    "retries": (("ray", "slurm"), _INT),     # how often a chain whose worker died is started again
    "workers": (("ray", "slurm"), _POS),     # chains at a time: an embedded Ray's size; SLURM jobs queued at once
    "partition": (("slurm",), _STR),
    "time": (("slurm",), _POS),              # minutes of wall time per job
    "mem_gb": (("slurm",), _NUM),
}
DEFAULTS = {"cpus": 1, "gpus": 0, "retries": 2}


class ChainsFailed(RuntimeError):
    """Some chains failed for good (after their retries); the others finished."""

    def __init__(self, failures: list["Failure"]):
        self.failures = failures
        lines = [f"{f.chain.name}: {f.error}; log: {f.chain.log}" for f in failures]
        super().__init__(f"{len(failures)} chain(s) failed (the others finished; rerun the same command to resume "
                         "them):\n  " + "\n  ".join(lines))


@dataclass
class Chain:
    """One chain: `work()` does it (a picklable callable: it may run in another process or on
    another machine), `log` is where its output goes."""

    name: str
    work: Callable[[], Any]
    log: Path


@dataclass
class Failure:
    chain: Chain
    error: str


@dataclass
class ChainJob:
    """What a worker runs: the chain's work with its output in its log and `threads` torch
    threads (one per CPU the chain holds: torch's default of one per core of the machine
    oversubscribes the cores that other chains hold)."""

    work: Callable[[], Any]
    log: str
    threads: int = 1

    def __call__(self):
        import torch

        torch.set_num_threads(self.threads)
        os.environ["TQDM_DISABLE"] = "1"  # progress bars would fill the log
        Path(self.log).parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a", buffering=1) as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
            print(f"[obliviate] {time.strftime('%Y-%m-%d %H:%M:%S')} start on {socket.gethostname()} pid {os.getpid()}, "
                  f"{self.threads} torch thread(s)", flush=True)
            try:
                result = self.work()
            except BaseException:
                traceback.print_exc()
                raise
            print(f"[obliviate] {time.strftime('%Y-%m-%d %H:%M:%S')} finished", flush=True)
            return result

    def checkpoint(self, *args, **kwargs):
        """submitit calls this on preemption or timeout: the job is requeued as it is, and
        resumes from the run directory's files."""
        import submitit

        return submitit.helpers.DelayedSubmission(self)


class Executor:
    """Runs chains; `run` returns the failures (empty when every chain finished)."""

    name = "executor"
    in_process = False

    def __init__(self, **options):
        self.options = {**DEFAULTS, **options}

    def describe(self) -> str:
        return self.name

    def job(self, chain: Chain) -> ChainJob:
        return ChainJob(chain.work, str(chain.log), threads=int(self.options["cpus"]))

    def run(self, chains: list[Chain], log: Callable[[str], None] = print) -> list[Failure]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class LocalExecutor(Executor):
    """One chain after the other in this process; its output goes to the terminal as always."""

    name = "local"
    in_process = True

    def run(self, chains, log=print):
        failures = []
        for chain in chains:
            try:
                chain.work()
            except Exception as err:  # noqa: BLE001 - reported with the others'; KeyboardInterrupt still stops
                failures.append(Failure(chain, f"{type(err).__name__}: {err}"))
                log(f"[obliviate] chain {chain.name} failed: {err}")
        return failures


def missing_extra(what: str, extra: str) -> ValueError:
    return ValueError(f"the {what} executor needs the {extra} extra: pip install \"obliviate[{extra}]\"")


def _host_port(address: str) -> tuple[str, int] | None:
    """host and port of a Ray address (`HOST:PORT`, `ray://HOST:PORT`; 6379, Ray's GCS port,
    when none is given); None for `auto` (the cluster `ray start` left on this machine)."""
    if address == "auto":
        return None
    bare = address.split("://", 1)[-1].rstrip("/")
    host, _, port = bare.rpartition(":")
    if not host:
        host, port = bare, ("10001" if address.startswith("ray://") else "6379")
    try:
        return host.strip("[]"), int(port)
    except ValueError:
        raise ValueError(f"Ray address {address!r} is not valid; valid: HOST:PORT, ray://HOST:PORT or auto") from None


class RayExecutor(Executor):
    """Each chain a Ray task holding `cpus` CPUs and `gpus` GPUs, retried `retries` times when its
    worker process dies (a killed worker, a lost node); exceptions the chain raises are not
    retried (a bug fails the same way twice). Without an address: an embedded Ray on this
    machine with room for `workers` chains at a time (default: as many as its CPUs allow)."""

    name = "ray"

    def __init__(self, address: str | None = None, **options):
        super().__init__(**options)
        try:
            import ray  # noqa: F401
        except ImportError:
            raise missing_extra("ray", "ray") from None
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        if self.address and "workers" in options:
            raise ValueError(f"executor option workers sizes an embedded Ray; a cluster ({self.address}) has the size it "
                             "has: leave workers out, or leave the address out for a Ray on this machine")
        if self.address:
            check_reachable(self.address)
            self.check_fits(cluster_resources(self.address))
        elif self.options["gpus"]:
            import torch

            if torch.cuda.device_count() == 0:  # the tasks would wait for a GPU forever
                raise ValueError(f"executor option gpus {self.options['gpus']:g}: this machine has no CUDA GPU for an "
                                 "embedded Ray; leave gpus out, or give a cluster's address (ray:ADDRESS)")
        self._started = False

    def describe(self) -> str:
        return f"ray ({self.address})" if self.address else "ray (embedded)"

    def check_fits(self, resources: dict) -> None:
        """A chain asking for more than the whole cluster has would wait forever: refuse it now."""
        for option, key in (("cpus", "CPU"), ("gpus", "GPU")):
            if self.options[option] > resources.get(key, 0):
                raise ValueError(f"executor option {option} {self.options[option]:g}: the Ray cluster at {self.address} "
                                 f"has {resources.get(key, 0):g} {key}s in all")

    def start(self) -> None:
        import ray

        if ray.is_initialized():
            return
        if self.address:
            try:
                ray.init(address=self.address, log_to_driver=False)
            except (ConnectionError, RuntimeError, TimeoutError) as err:
                raise ValueError(f"Ray address {self.address} cannot be joined: {err}") from None
        else:
            import torch

            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            workers = self.options.get("workers") or max(1, cpus // self.options["cpus"])
            # the workers import this obliviate, not another one installed elsewhere
            src = str(Path(__file__).resolve().parents[2])
            os.environ["PYTHONPATH"] = os.pathsep.join(p for p in [src, os.environ.get("PYTHONPATH")] if p)
            # address="local": a new Ray of this command's own, even where `ray start` left a cluster running
            ray.init(address="local", num_cpus=workers * self.options["cpus"], num_gpus=torch.cuda.device_count(),
                     include_dashboard=False, log_to_driver=False, configure_logging=False)
        self._started = True

    def run(self, chains, log=print):
        import ray

        self.start()
        task = ray.remote(num_cpus=self.options["cpus"], num_gpus=self.options["gpus"],
                          max_retries=self.options["retries"], retry_exceptions=False)(_call)
        pending = {task.remote(self.job(c)): c for c in chains}
        failures = []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            chain = pending.pop(done[0])
            try:
                ray.get(done[0])
            except Exception as err:  # noqa: BLE001 - the task's exception or its worker's death, after retries
                failures.append(Failure(chain, _short(err)))
                log(f"[obliviate] chain {chain.name} failed: {_short(err)}; log: {chain.log}")
        return failures

    def close(self) -> None:
        import ray

        if self._started and not self.address:  # an embedded Ray ends with the command; a cluster stays
            ray.shutdown()


def _call(job):
    return job()


def _short(err: BaseException) -> str:
    """The last line of a (remote) exception: its type and message, not Ray's whole traceback."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[-1] if lines else ''}".strip()


def check_reachable(address: str, timeout: float = 10.0) -> None:
    """Refuse an address nothing answers at, within `timeout` seconds, before any work."""
    hp = _host_port(address)
    if hp is None:
        return
    try:
        socket.create_connection(hp, timeout=timeout).close()
    except OSError as err:
        raise ValueError(f"Ray address {address} is unreachable ({err.strerror or err}); start the cluster "
                         "(ray start --head) or leave the address out for a Ray on this machine") from None


def cluster_resources(address: str, timeout: float = 20.0) -> dict:
    """The resources of the Ray cluster at `address`, asked by a short-lived process: joining an
    address where something else listens makes ray.init wait without end, and a process can be
    stopped after `timeout` seconds where a call cannot."""
    import subprocess
    import sys

    probe = ("import json, ray; ray.init(address=%r, log_to_driver=False, logging_level='ERROR'); "
             "print(json.dumps(ray.cluster_resources())); ray.shutdown()" % address)
    try:
        r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as err:
        said = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else (err.stderr or "")
        if "InvalidAuthToken" in said or "Unauthenticated" in said:  # Ray >= 2.59 starts clusters with token auth
            raise ValueError(f"the Ray cluster at {address} refused this process's authentication token; set "
                             "RAY_AUTH_MODE=token (and RAY_AUTH_TOKEN, or the cluster's ~/.ray/auth_token) as the "
                             "cluster has them") from None
        raise ValueError(f"Ray address {address} does not answer as a Ray cluster within {timeout:g} s; give the "
                         "address `ray start --head` printed (HOST:6379), or leave it out for a Ray on this machine") from None
    lines = r.stdout.strip().splitlines()
    if r.returncode or not lines:
        last = (r.stderr.strip().splitlines() or ["no answer"])[-1]
        raise ValueError(f"Ray address {address} cannot be joined: {last}")
    return json.loads(lines[-1])


class SlurmExecutor(Executor):
    """Each chain a job submitted with submitit: SLURM (`sbatch` on this machine), or with
    `cluster="local"` processes of this machine. A job preempted or out of time is requeued by
    submitit (ChainJob.checkpoint); a job that died without a result (killed, node lost) is
    submitted again, `retries` times; one whose chain raised an exception is reported."""

    name = "slurm"

    def __init__(self, folder: str | Path, cluster: str | None = None, **options):
        super().__init__(**options)
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise missing_extra("slurm", "slurm") from None
        if cluster not in (None, "local"):
            raise ValueError(f"slurm:{cluster} is not valid; valid: slurm (SLURM) or slurm:local (jobs as local processes)")
        if cluster is None and shutil.which("sbatch") is None:
            raise ValueError("the slurm executor submits with sbatch, which is not on this machine's PATH; run on a "
                             "SLURM login node, or use slurm:local to rehearse with local processes")
        if float(self.options["gpus"]) != int(self.options["gpus"]):
            raise ValueError(f"executor option gpus {self.options['gpus']:g}: a SLURM job holds whole GPUs; give an integer")
        self.cluster, self.folder = cluster or "slurm", Path(folder)

    def describe(self) -> str:
        return "slurm" if self.cluster == "slurm" else "slurm (local processes)"

    def executor(self):
        import submitit

        ex = submitit.AutoExecutor(folder=self.folder / "%j", cluster=self.cluster)
        o = self.options
        params: dict[str, Any] = {"timeout_min": o.get("time", 24 * 60), "cpus_per_task": o["cpus"],
                                  "gpus_per_node": int(o["gpus"]), "tasks_per_node": 1, "nodes": 1, "name": "obliviate"}
        if "mem_gb" in o:
            params["mem_gb"] = o["mem_gb"]
        if "partition" in o:
            params["slurm_partition"] = o["partition"]
        ex.update_parameters(**params)
        return ex

    def run(self, chains, log=print):
        ex = self.executor()
        limit = self.options.get("workers") or len(chains)
        waiting = [(c, 0) for c in chains]
        running, failures = [], []
        try:
            self._loop(ex, limit, waiting, running, failures, log)
        except BaseException:  # Ctrl-C: no job left behind to collide with the rerun's
            for _, _, job in running:
                with contextlib.suppress(Exception):
                    job.cancel(check=False)
            raise
        return failures

    def _loop(self, ex, limit, waiting, running, failures, log) -> None:
        from submitit.core.utils import FailedJobError, UncompletedJobError

        while waiting or running:
            while waiting and len(running) < limit:
                chain, tries = waiting.pop(0)
                running.append((chain, tries, ex.submit(self.job(chain))))
            still = []
            for chain, tries, job in running:
                if not job.done():
                    still.append((chain, tries, job))
                    continue
                try:
                    job.result()
                except FailedJobError:  # the chain raised: a bug fails the same way twice, so no retry
                    failures.append(Failure(chain, f"job {job.job_id} raised an exception (its traceback is in the log)"))
                    log(f"[obliviate] chain {chain.name} failed; log: {chain.log}")
                except UncompletedJobError:  # died without a result (killed, out of memory, node lost): it resumes
                    what = f"job {job.job_id} ended without a result (killed, out of memory or its node lost)"
                    if tries < self.options["retries"]:
                        log(f"[obliviate] chain {chain.name}: {what}; submitted again")
                        waiting.insert(0, (chain, tries + 1))
                    else:
                        failures.append(Failure(chain, what))
                        log(f"[obliviate] chain {chain.name} failed: {what}; log: {chain.log}")
            if len(still) == len(running) and not (waiting and len(still) < limit):
                time.sleep(1.0)
            running[:] = still


def check_options(name: str, options: dict, where: str) -> dict:
    """`options` for executor `name`: every key valid for it and every value of the right kind."""
    for key, value in options.items():
        if key not in OPTIONS:
            raise ValueError(f"{where}: executor option {key!r} is not valid; valid: {', '.join(OPTIONS)}")
        takes, (test, what) = OPTIONS[key]
        if name not in takes:
            valid = [k for k, (t, _) in OPTIONS.items() if name in t]
            raise ValueError(f"{where}: executor option {key} does not apply to the {name} executor (it is for "
                             f"{' and '.join(takes)}); the {name} executor takes: {', '.join(valid) or 'no options'}")
        if not test(value):
            raise ValueError(f"{where}: executor option {key} must be {what}, got {value!r}")
    return options


def check_block(block, where: str) -> dict:
    """An experiment file's `executor:` block: executor name -> its options."""
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise ValueError(f"{where}: executor is a mapping of executor names to their options, e.g. "
                         "{slurm: {partition: gpu, time: 240}}")
    for name, options in block.items():
        if name not in EXECUTORS:
            raise ValueError(f"{where}: executor {name!r} is not valid; valid: {', '.join(EXECUTORS)}")
        if not isinstance(options, dict):
            raise ValueError(f"{where}: executor.{name} is a mapping of options, got {options!r}")
        check_options(name, options, f"{where}: executor.{name}")
    return block


def make_executor(spec: str | None, options: dict | None = None, block: dict | None = None, *,
                  folder: str | Path = ".", where: str = "--executor") -> Executor:
    """The executor `spec` names (`local`, `ray`, `ray:ADDRESS`, `slurm`, `slurm:local`) with the
    file block's options for it under the command line's (`options`: flag values, None = unset).
    Everything is checked here, before any work."""
    spec = spec or "local"
    name, _, arg = spec.partition(":")
    if name not in EXECUTORS:
        raise ValueError(f"{where} {spec!r} is not valid; valid: local, ray, ray:ADDRESS, slurm, slurm:local")
    given = {k: v for k, v in (options or {}).items() if v is not None}
    check_options(name, given, "command line")
    merged = {**dict((block or {}).get(name) or {}), **given}
    check_options(name, merged, "executor")
    if name == "local":
        if arg:
            raise ValueError(f"{where} {spec!r}: the local executor takes no address; valid: local")
        return LocalExecutor(**merged)
    if name == "ray":
        return RayExecutor(arg or None, **merged)
    return SlurmExecutor(Path(folder) / "logs" / "slurm", cluster=arg or None, **merged)

