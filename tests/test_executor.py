"""Executors (experiment/executor.py): one experiment gives one summary.json whether its chains
run in this process, as Ray tasks or as SLURM jobs (submitit's local executor); a worker
killed mid-chain is retried and resumes; a failing chain is reported with its log while the
others finish; bad executor input is refused before any work."""
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from obliviate.experiment import Runner, load_experiment
from obliviate.experiment.chains import run_on
from obliviate.experiment.executor import Chain, ChainsFailed, make_executor

FAST = {"steps": 2, "anchor_images": 4, "sampler_steps": 2, "batch_size": 2}


def small_experiment(model, variants=None) -> dict:
    """2 variants x 2 swept values x 2 requests on MiniCanvas (the random-weight model)."""
    return {
        "name": "small", "model": str(model), "protocol": "minicanvas", "domain": "style",
        "sequence": ["fire", "ice"], "retained": ["lava"], "partners": ["circle"],
        "eval": {"seeds": [188], "probe_seeds": [5], "sampler": {"steps": 2, "guidance": 3.0}},
        "grid": {"prompts": 2}, "defaults": {"method_settings": FAST},
        "variants": variants or [{"name": "a", "sweep": {"key": "method_settings.lr", "values": [0.0001, 0.001]}},
                                 {"name": "b", "sweep": {"key": "method_settings.steps", "values": [1, 2]}}],
    }


def without_timings(obj):
    """summary.json less what a clock measures (wall, training and evaluation seconds)."""
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if not k.endswith("_seconds")}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


def summary_of(out: Path) -> dict:
    return without_timings(json.loads((out / "summary.json").read_text()))


@pytest.fixture(scope="module")
def ray_cluster():
    """One embedded Ray of 2 one-CPU workers for this module's tests (starting one takes ~8 s)."""
    ray = pytest.importorskip("ray")
    executor = make_executor("ray", {"workers": 2})
    executor.start()
    # tests hand Ray callables defined here: ship them by value (workers cannot import tests/)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local_summary(random_model, tmp_path_factory):
    """The one-process run, in a fresh process like the workers' (`obliviate run`), so nothing an
    earlier test left in this process can make the two differ."""
    root = tmp_path_factory.mktemp("local")
    (root / "exp.yaml").write_text(yaml.safe_dump(small_experiment(random_model)))
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, "-m", "obliviate.cli", "--quiet", "run", str(root / "exp.yaml"), "--out",
                           str(root / "exp")], env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return summary_of(root / "exp")


def test_local_ray_and_slurm_give_one_summary(random_model, local_summary, ray_cluster, tmp_path):
    exp = load_experiment(small_experiment(random_model))
    Runner(exp, tmp_path / "ray", quiet=True).run(run_on(make_executor("ray", {"workers": 2})))
    assert summary_of(tmp_path / "ray") == local_summary
    # every chain kept its log: the swept values (wave 1) and the variants (wave 2)
    assert sorted(p.name for p in (tmp_path / "ray" / "logs").glob("*.log")) == [
        "a-0-0001.log", "a-0-001.log", "a.log", "b-1.log", "b-2.log", "b.log"]
    pytest.importorskip("submitit")
    Runner(exp, tmp_path / "slurm", quiet=True).run(run_on(make_executor("slurm:local", {"workers": 2}, folder=tmp_path / "slurm")))
    assert summary_of(tmp_path / "slurm") == local_summary
    assert "finished" in (tmp_path / "slurm" / "logs" / "a.log").read_text()


class KillOnce:
    """A chain's work whose worker process is killed (SIGKILL, as the kernel's OOM killer or a
    lost node would) the first time it runs, once `watch` exists, i.e. in the middle of the chain."""

    def __init__(self, work, watch: str, marker: str):
        self.work, self.watch, self.marker = work, watch, marker

    def __call__(self):
        if not os.path.exists(self.marker):
            Path(self.marker).touch()

            def kill_when_watched_exists():
                while not list(Path(self.watch).parent.glob(Path(self.watch).name)):
                    time.sleep(0.02)
                os.kill(os.getpid(), signal.SIGKILL)

            threading.Thread(target=kill_when_watched_exists, daemon=True).start()
        return self.work()


def test_a_killed_worker_is_retried_and_resumes_to_the_same_summary(random_model, local_summary, ray_cluster, tmp_path):
    exp = load_experiment(small_experiment(random_model))
    out = tmp_path / "exp"
    executor = make_executor("ray", {"workers": 2, "retries": 1})
    original = executor.job
    marker = tmp_path / "killed-once"

    def job(chain):  # the sweep value a=0.0001 dies once its first request is a finished step
        j = original(chain)
        if chain.name == "a method_settings.lr=0.0001":
            j.work = KillOnce(j.work, str(out / "variants" / "a" / "sweep" / "0-0001" / "run" / "steps" / "001-*"), str(marker))
        return j

    executor.job = job
    Runner(exp, out, quiet=True).run(None if executor.in_process else run_on(executor))
    assert marker.exists()  # it was killed ...
    log = (out / "logs" / "a-0-0001.log").read_text()
    assert log.count(" start on ") == 2 and "'fire' is already step 1" in log  # ... started again, and resumed
    assert summary_of(out) == local_summary


def test_a_failing_chain_is_reported_with_its_log_and_the_others_finish(ray_cluster, tmp_path):
    done = tmp_path / "done"
    chains = [Chain("broken", functools.partial(int, "not a number"), tmp_path / "logs" / "broken.log"),
              Chain("fine", functools.partial(Path.touch, done), tmp_path / "logs" / "fine.log")]
    failures = make_executor("ray", {"workers": 2}).run(chains, log=lambda m: None)
    assert [f.chain.name for f in failures] == ["broken"] and "ValueError" in failures[0].error
    assert done.exists()  # the other chain finished
    assert "invalid literal for int()" in (tmp_path / "logs" / "broken.log").read_text()  # the traceback is in its log
    message = str(ChainsFailed(failures))
    assert "broken" in message and str(tmp_path / "logs" / "broken.log") in message


def obliviate(capsys, *args):
    """The command line in this process: (exit code, stderr)."""
    from obliviate.cli import main

    capsys.readouterr()
    code = main(["--quiet", *args])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("flags, says", [
    (["--executor", "dask"], "--executor 'dask' is not valid; valid: local, ray, ray:ADDRESS, slurm, slurm:local"),
    (["--executor", "ray", "--partition", "gpu"], "partition does not apply to the ray executor"),
    (["--workers", "2"], "workers does not apply to the local executor"),
    (["--executor", "slurm:cloud"], "slurm:cloud is not valid"),
    (["--executor", "ray", "--retries", "-1"], "retries must be an integer >= 0"),
    (["--executor", "slurm:local", "--gpus", "0.5"], "a SLURM job holds whole GPUs"),
])
def test_bad_executor_input_is_refused_before_any_work(random_model, tmp_path, capsys, flags, says):
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(small_experiment(random_model)))
    code, err = obliviate(capsys, "run", str(exp), "--out", str(tmp_path / "out"), *flags)
    assert code == 2 and says in err, err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing created


def test_an_executor_block_of_the_file_is_checked_when_the_file_is_read(random_model):
    cfg = small_experiment(random_model)
    assert load_experiment({**cfg, "executor": {"slurm": {"partition": "gpu", "time": 60}}})
    with pytest.raises(ValueError, match="executor option partition does not apply to the ray executor"):
        load_experiment({**cfg, "executor": {"ray": {"partition": "gpu"}}})
    with pytest.raises(ValueError, match="executor 'spark' is not valid; valid: local, ray, slurm"):
        load_experiment({**cfg, "executor": {"spark": {}}})


def test_the_file_s_executor_block_gives_options_and_the_command_line_wins(tmp_path):
    pytest.importorskip("ray")
    block = {"ray": {"cpus": 2, "retries": 5}, "slurm": {"partition": "gpu"}}
    executor = make_executor("ray", {"retries": 1, "workers": None}, block)  # None: the flag was not given
    assert executor.options == {"cpus": 2, "gpus": 0, "retries": 1}  # the slurm mapping is not the ray executor's
    assert executor.job(Chain("c", print, tmp_path / "c.log")).threads == 2  # one torch thread per CPU held


def test_an_unreachable_ray_address_is_refused_within_30_s_naming_it(random_model, tmp_path, capsys, monkeypatch):
    pytest.importorskip("ray")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exp = tmp_path / "exp.yaml"
    exp.write_text(yaml.safe_dump(small_experiment(random_model)))
    t0 = time.time()
    code, err = obliviate(capsys, "run", str(exp), "--out", str(tmp_path / "out"), "--executor", f"ray:127.0.0.1:{port}")
    assert time.time() - t0 < 30
    assert code == 2 and f"Ray address 127.0.0.1:{port} is unreachable" in err, err
    monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
    code, err = obliviate(capsys, "run", str(exp), "--out", str(tmp_path / "out"), "--executor", "ray")
    assert code == 2 and f"Ray address 127.0.0.1:{port} is unreachable" in err, err
    assert not (tmp_path / "out").exists()


def test_a_missing_extra_is_one_line_naming_the_pip_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    monkeypatch.setitem(sys.modules, "submitit", None)
    with pytest.raises(ValueError, match=r'the ray executor needs the ray extra: pip install "obliviate\[ray\]"'):
        make_executor("ray")
    with pytest.raises(ValueError, match=r'pip install "obliviate\[slurm\]"'):
        make_executor("slurm:local")


class DieOnce:
    """Work whose process is killed (SIGKILL) the first time it runs, then writes `out`."""

    def __init__(self, marker: str, out: str):
        self.marker, self.out = marker, out

    def __call__(self):
        if not os.path.exists(self.marker):
            Path(self.marker).touch()
            os.kill(os.getpid(), signal.SIGKILL)
        Path(self.out).write_text("done")


def test_slurm_submits_a_killed_job_again_and_reports_a_failing_one(tmp_path):
    cloudpickle = pytest.importorskip("cloudpickle")
    pytest.importorskip("submitit")
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the jobs unpickle DieOnce without tests/
    out = tmp_path / "out"
    chains = [Chain("killed", DieOnce(str(tmp_path / "killed-once"), str(out)), tmp_path / "logs" / "killed.log"),
              Chain("broken", functools.partial(int, "not a number"), tmp_path / "logs" / "broken.log")]
    messages = []
    failures = make_executor("slurm:local", {"workers": 2, "retries": 1}, folder=tmp_path).run(chains, log=messages.append)
    assert out.read_text() == "done"  # killed once, submitted again, finished
    assert any("killed: job" in m and "submitted again" in m for m in messages), messages
    assert [f.chain.name for f in failures] == ["broken"]  # an exception is not retried
    assert "invalid literal for int()" in (tmp_path / "logs" / "broken.log").read_text()


def test_gpus_an_embedded_ray_does_not_have_are_refused():
    import torch

    pytest.importorskip("ray")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="this machine has no CUDA GPU for an embedded Ray"):
        make_executor("ray", {"gpus": 1})


def test_slurm_options_reach_the_sbatch_script(tmp_path, monkeypatch):
    """Without a SLURM cluster: stand-in sbatch/srun on PATH, and the script submitit would submit
    (rendered by its SLURM executor) carries the partition, time, GPUs, CPUs and memory."""
    pytest.importorskip("submitit")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).write_text("#!/bin/sh\necho 'Submitted batch job 42'\n")
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    executor = make_executor("slurm", {"partition": "gpu", "time": 30, "mem_gb": 48, "cpus": 8, "gpus": 1}, folder=tmp_path)
    script = executor.executor()._executor._make_submission_file_text("python -m submitit.core._submit", "uid")
    for line in ("--partition=gpu", "--time=30", "--gpus-per-node=1", "--cpus-per-task=8", "--mem=48GB",
                 "--signal=USR2@"):  # USR2 before the time limit: submitit checkpoints and requeues
        assert f"#SBATCH {line}" in script, script
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ValueError, match="sbatch, which is not on this machine's PATH"):
        make_executor("slurm", folder=tmp_path)


def test_an_address_where_something_else_listens_is_refused_in_time():
    """ray.init waits without end on a port where a non-Ray server answers: the probe is stopped."""
    pytest.importorskip("ray")
    from obliviate.experiment.executor import cluster_resources

    with socket.socket() as server:  # listens, accepts, says nothing
        server.bind(("127.0.0.1", 0))
        server.listen()
        address = f"127.0.0.1:{server.getsockname()[1]}"
        t0 = time.time()
        with pytest.raises(ValueError, match=f"Ray address {address} does not answer as a Ray cluster within 5 s"):
            cluster_resources(address, timeout=5)
        assert time.time() - t0 < 15


def test_ray_address_joins_a_running_cluster(random_model, local_summary, tmp_path):
    """`ray start --head` (2 CPUs), then `obliviate run --executor ray:ADDRESS` in its own process."""
    pytest.importorskip("ray")
    ray_cli = Path(sys.executable).with_name("ray")
    if not ray_cli.exists():
        pytest.skip("the ray command is not installed next to this Python")
    port = None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0",
           "PYTHONPATH": os.pathsep.join(sys.path)}
    import tempfile

    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # short: Ray's socket paths must fit in 107 characters
    head_log = open(tmp_path / "head.log", "w")
    head = subprocess.Popen([str(ray_cli), "start", "--head", "--port", str(port), "--num-cpus", "2", "--block",
                             "--include-dashboard=false", "--temp-dir", temp], env=env, stdout=head_log, stderr=head_log)
    try:
        exp = tmp_path / "exp.yaml"
        exp.write_text(yaml.safe_dump(small_experiment(random_model)))
        for _ in range(60):  # the head takes a few seconds to listen
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(1)
        r = subprocess.run([sys.executable, "-m", "obliviate.cli", "--quiet", "run", str(exp), "--out", str(tmp_path / "out"),
                            "--executor", f"ray:127.0.0.1:{port}"], env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:] + (tmp_path / "head.log").read_text()[-2000:]
        assert summary_of(tmp_path / "out") == local_summary
    finally:
        head.terminate()  # `ray start --block` stops the processes it started
        head.wait(timeout=60)
        head_log.close()
        shutil.rmtree(temp, ignore_errors=True)
