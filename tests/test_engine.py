"""The task engine: serial and Ray agree, a dead worker is retried, a bug is reported by name.

One local Ray with 2 CPUs serves the whole module (starting it is the slow part). Ray workers
import the toy task functions below by module name. pytest imports this file as the top-level
module ``test_engine`` from ``tests/``, and ``tests/`` is put on the workers' ``PYTHONPATH``
through the job's ``runtime_env``. Ray itself only adds the driver's working directory.
"""

from __future__ import annotations

import ipaddress
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hcld_lib.experiments import engine as ray_engine
from hcld_lib.experiments.engine import TaskFailed, ray_session, run_tasks

TESTS_DIR = str(Path(__file__).resolve().parent)
REPO = Path(TESTS_DIR).parent


# -- toy tasks (module level, so that Ray workers can import them) --------------------------------

def square(spec: tuple[int, float]) -> int:
    """Return i*i after a pause, the first tasks pausing longest so they finish out of order."""
    i, pause = spec
    time.sleep(pause)
    return i * i


def write_once(spec: tuple[int, str, bool]) -> int:
    """Write out-<i> exactly once; with ``die`` set, kill the worker on the first attempt."""
    i, folder, die = spec
    marker = Path(folder, f"attempt-{i}")
    if die and not marker.exists():
        marker.touch()
        os._exit(1)  # a crash of the worker process, not a Python exception
    with open(Path(folder, f"out-{i}"), "x") as f:  # "x": a second success would fail
        f.write(str(i))
    return os.getpid()


def fail_on_three(spec: tuple[int, str]) -> int:
    """Raise on task 3; record every attempt so the test can count them."""
    i, folder = spec
    with open(Path(folder, f"attempts-{i}"), "a") as f:
        f.write("x")
    if i == 3:
        raise ValueError(f"bad spec {i}")
    return i


def read_env(name: str) -> str | None:
    return os.environ.get(name)


def warn_twice(i: int) -> int:
    """Warn with a message of its own, then with one that every task shares."""
    import warnings

    warnings.warn(f"task {i} is odd" if i % 2 else f"task {i} is even", UserWarning, stacklevel=1)
    warnings.warn("shared message", UserWarning, stacklevel=1)
    return i


# -- fixture --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray with 2 CPUs for the module, started (and stopped) through ``ray_session``."""
    import ray

    if ray.is_initialized():  # another test module left one: ours must carry the runtime_env
        ray.shutdown()
    with ray_session(num_cpus=2, runtime_env={"env_vars": {"PYTHONPATH": TESTS_DIR}}) as reused:
        assert not reused
        yield ray.get_runtime_context().gcs_address
    assert not ray.is_initialized()


# -- tests ----------------------------------------------------------------------------------------

def test_serial_and_ray_give_the_same_results_in_task_order(ray_cluster):
    tasks = [(i, 0.05 * (6 - i)) for i in range(6)]
    calls = {"serial": [], "ray": []}
    results = {
        engine: run_tasks(square, tasks, engine=engine,
                          on_result=lambda *args, e=engine: calls[e].append(args))
        for engine in ("serial", "ray")
    }
    assert results["serial"] == results["ray"] == [i * i for i in range(6)]
    for engine, seen in calls.items():
        assert sorted(index for index, *_ in seen) == list(range(6)), engine
        assert [done for *_, done, total in seen] == list(range(1, 7)), engine
        assert all(total == 6 and result == task[0] ** 2 and tasks[index] == task
                   for index, task, result, done, total in seen), engine


def test_ray_runs_tasks_with_one_thread_each(ray_cluster):
    import ray

    @ray.remote(num_cpus=1)
    def thread_settings():
        import torch
        return os.environ.get("OMP_NUM_THREADS"), torch.get_num_threads()

    assert ray.get(thread_settings.remote()) == ("1", 1)


def test_a_runtime_env_given_to_a_running_ray_applies_to_each_task(ray_cluster):
    # merged with the job's env_vars by Ray: this module is still importable (PYTHONPATH)
    assert run_tasks(read_env, ["HCLD_TOY", "OMP_NUM_THREADS"],
                     runtime_env={"env_vars": {"HCLD_TOY": "yes"}}) == ["yes", "1"]


def test_a_workers_warnings_reach_the_driver_as_under_the_serial_engine(ray_cluster):
    """Raised again in the driver at the task's own file and line (not as worker log lines),
    once per place and message under the default filter, as the serial engine shows them."""
    import warnings

    seen = {}
    for engine in ("serial", "ray"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert run_tasks(warn_twice, [1, 2, 3], engine=engine) == [1, 2, 3]
        seen[engine] = sorted((str(w.message), Path(w.filename).name, w.category.__name__)
                              for w in caught)
    assert seen["ray"] == seen["serial"]
    assert [m for m, _, _ in seen["ray"]] == ["shared message"] * 3 + [
        "task 1 is odd", "task 2 is even", "task 3 is odd"]
    assert {f for _, f, _ in seen["ray"]} == {"test_engine.py"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        run_tasks(warn_twice, [5, 7], engine="ray")
    assert sorted(str(w.message) for w in caught) == ["shared message", "task 5 is odd",
                                                      "task 7 is odd"]


def test_a_killed_worker_is_retried_and_each_output_written_once(ray_cluster, tmp_path):
    tasks = [(i, str(tmp_path), i % 2 == 0) for i in range(4)]
    pids = run_tasks(write_once, tasks, max_retries=2, describe=lambda t: f"run {t[0]}")
    assert len(pids) == 4
    assert sorted(p.name for p in tmp_path.glob("out-*")) == [f"out-{i}" for i in range(4)]
    assert sorted(p.name for p in tmp_path.glob("attempt-*")) == ["attempt-0", "attempt-2"]


def test_a_worker_that_keeps_dying_is_reported_by_name(ray_cluster, tmp_path):
    with pytest.raises(TaskFailed, match=r"task 1/1 \(run 0\) failed: WorkerCrashedError"):
        run_tasks(write_once, [(0, str(tmp_path), True)], max_retries=0,
                  describe=lambda t: f"run {t[0]}")


@pytest.mark.parametrize("engine", ["serial", "ray"])
def test_an_exception_is_reported_with_the_task_description_and_not_retried(
        ray_cluster, tmp_path, engine):
    tasks = [(i, str(tmp_path)) for i in range(5)]
    with pytest.raises(TaskFailed) as info:
        run_tasks(fail_on_three, tasks, engine=engine, describe=lambda t: f"toy run #{t[0]}")
    message = str(info.value)
    assert "task 4/5 (toy run #3) failed: ValueError: bad spec 3" in message
    assert "are kept" in message and "resumes" in message
    assert info.value.index == 3 and info.value.task == tasks[3]
    assert isinstance(info.value.__cause__, ValueError)  # Ray's RayTaskError(ValueError) too
    assert (tmp_path / "attempts-3").read_text() == "x"  # retry_exceptions=False


def test_a_second_driver_connects_to_the_running_cluster_by_address(ray_cluster):
    code = (
        "from hcld_lib.experiments.engine import run_tasks\n"
        "from test_engine import square\n"
        f"print(run_tasks(square, [(i, 0.0) for i in range(4)], address={ray_cluster!r},\n"
        f"                runtime_env={{'env_vars': {{'PYTHONPATH': {TESTS_DIR!r}}}}}))\n"
    )
    env = {**os.environ, "PYTHONPATH": TESTS_DIR}
    env.pop("RAY_ADDRESS", None)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1] == "[0, 1, 4, 9]"
    # the second driver only disconnected: the cluster still serves this one
    assert run_tasks(square, [(5, 0.0)]) == [25]


def test_empty_task_list_and_unknown_engine():
    assert run_tasks(square, [], engine="ray") == []
    with pytest.raises(ValueError, match="engine"):
        run_tasks(square, [(1, 0.0)], engine="dask")


# -- the grid on the engines: real (tiny) training runs ------------------------------------------

TINY_RUN = dict(embed_dim=16, hidden_dim=16, n_layers=1, frame_stride=4, batch_size=16, lr=3e-3,
                warmup_epochs=1, lcl_text_encoder="learned", val_fraction=0.2, n_folds=2,
                device="cpu", max_epochs=3, checkpoint_every=1)


@pytest.fixture(scope="module")
def tiny_cache(tmp_path_factory) -> str:
    from hcld_lib.data.synthetic import synthesize_corpus
    from hcld_lib.features.extract import extract_features

    root = tmp_path_factory.mktemp("engine_corpus")
    table = synthesize_corpus(root / "corpus", n_utterances=60, seed=2, emotion_strength=1.0)
    return str(extract_features(table, "fbank", root / "cache", max_seconds=3.0,
                                progress=False).path)


def _grid(cache: str, out: Path) -> list:
    from hcld_lib.experiments.grid import grid_configs
    from hcld_lib.training.config import RunConfig

    base = RunConfig(features=cache, out_dir=str(out), **TINY_RUN)
    return grid_configs(base, ["emo_only", "hcld"], ["cnn"], [0, 1], [0, 1])


def train_and_die_once(config) -> dict:
    """Train a run; on the first attempt, kill the worker right after epoch 1's checkpoint."""
    from hcld_lib.training.run import train_run

    marker = Path(config.out_dir, f"died-{config.resolved_run_name}")

    def die(epoch: int, row: dict) -> None:
        if epoch == 1 and not marker.exists():
            marker.touch()
            os._exit(1)

    return train_run(config, on_epoch_end=die)


def _metric_rows(df):
    return df.drop(columns=["run_dir"]).sort_values("run_name").reset_index(drop=True)


def test_the_grid_on_ray_gives_the_serial_metrics(ray_cluster, tiny_cache, tmp_path):
    import pandas as pd
    import torch

    from hcld_lib.experiments.grid import run_configs

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a Ray worker: the same kernels, the same numbers
    try:
        serial = run_configs(_grid(tiny_cache, tmp_path / "serial"), progress=False,
                             engine="serial")
    finally:
        torch.set_num_threads(threads)
    ray_rows = run_configs(_grid(tiny_cache, tmp_path / "ray"), progress=False, engine="ray")
    assert len(serial) == len(ray_rows) == 8
    pd.testing.assert_frame_equal(_metric_rows(serial), _metric_rows(ray_rows))


def test_a_worker_killed_mid_run_resumes_on_retry(ray_cluster, tiny_cache, tmp_path):
    import pandas as pd

    from hcld_lib.experiments.grid import finished_grid, run_configs

    configs = _grid(tiny_cache, tmp_path / "killed")
    run_tasks(train_and_die_once, configs, describe=lambda c: c.resolved_run_name)
    for config in configs:  # every run died once, after its first epoch, and finished once
        run = Path(config.out_dir, config.resolved_run_name)
        assert Path(config.out_dir, f"died-{config.resolved_run_name}").exists()
        assert (run / "metrics.json").is_file() and not (run / "checkpoint.pt").exists()
        assert len(pd.read_csv(run / "history.csv")) == TINY_RUN["max_epochs"]
    # resumed from the checkpoint, every run ends with the numbers of an uninterrupted one
    whole = run_configs(_grid(tiny_cache, tmp_path / "whole"), progress=False, engine="ray")
    pd.testing.assert_frame_equal(_metric_rows(finished_grid(configs)), _metric_rows(whole))


def test_a_killed_driver_resumes_without_retraining_finished_runs(ray_cluster, tiny_cache,
                                                                  tmp_path):
    import signal

    from hcld_lib.experiments.grid import is_finished, run_configs

    out = tmp_path / "driver"
    configs = _grid(tiny_cache, out)
    script = (
        "import sys; sys.path.insert(0, sys.argv[1])\n"
        "from test_engine import _grid\n"
        "from hcld_lib.experiments.grid import run_configs\n"
        "run_configs(_grid(sys.argv[2], __import__('pathlib').Path(sys.argv[3])),\n"
        "            progress=False, engine='ray', address=sys.argv[4])\n"
    )
    driver = subprocess.Popen([sys.executable, "-c", script, TESTS_DIR, tiny_cache, str(out),
                               ray_cluster], start_new_session=True)
    deadline = time.time() + 300
    while not any(is_finished(c) for c in configs):
        assert driver.poll() is None and time.time() < deadline, "the driver finished no run"
        time.sleep(0.2)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    finished = {c.resolved_run_name: Path(c.out_dir, c.resolved_run_name, "metrics.json")
                .stat().st_mtime_ns for c in configs if is_finished(c)}
    assert 0 < len(finished) < len(configs)
    rows = run_configs(configs, progress=False, engine="serial")
    assert len(rows) == len(configs) and all(is_finished(c) for c in configs)
    for name, mtime in finished.items():  # a finished run is read, never trained again
        assert Path(out, name, "metrics.json").stat().st_mtime_ns == mtime


# -- the local Ray stays on this machine -----------------------------------------------------------

def _is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip)
    mapped = getattr(address, "ipv4_mapped", None)  # ::ffff:127.0.0.1, as the gRPC servers bind
    return (mapped or address).is_loopback


def _listening(processes) -> list[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket of ``processes``."""
    import psutil

    found = []
    for process in processes:
        try:
            name = process.name()
            found += [(name, c.laddr.ip, c.laddr.port) for c in process.net_connections("inet")
                      if c.status == psutil.CONN_LISTEN]
        except (psutil.NoSuchProcess, psutil.ZombieProcess):  # a worker that just exited
            continue
    return found


def test_the_local_ray_listens_on_loopback_only_and_keeps_its_token_private(ray_cluster):
    """Every process of the Ray that ray_session started (the driver, the GCS server, the raylet,
    the agents, the workers: the driver and its descendants) listens on 127.0.0.1 alone."""
    import psutil

    assert run_tasks(square, [(i, 0.0) for i in range(2)]) == [0, 1]  # workers are up
    driver = psutil.Process()
    sockets = _listening([driver, *driver.children(recursive=True)])
    names = {name for name, _, _ in sockets}
    assert {"gcs_server", "raylet"} <= names and any(n.startswith("ray::") for n in names), names
    assert [s for s in sockets if not _is_loopback(s[1])] == []
    assert ray_cluster.startswith(f"{ray_engine.LOOPBACK}:")
    token = ray_engine.ray_token_file()
    if token is not None:  # None: the token is in RAY_AUTH_TOKEN, or authentication is off
        assert stat.S_IMODE(token.stat().st_mode) == 0o600


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    for name in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return tmp_path


def test_an_absent_token_file_is_created_private(home):
    token = ray_engine.private_token_file()
    assert token == home / ".ray" / "auth_token"
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    text = token.read_text()
    assert len(text) == 64 and int(text, 16) >= 0  # 256 random bits in hex, as Ray makes it
    assert ray_engine.private_token_file() == token and token.read_text() == text  # kept


def test_a_readable_token_file_is_made_private_and_kept(home, monkeypatch):
    token = home / ".ray" / "auth_token"
    token.parent.mkdir()
    token.write_text("f" * 64)
    token.chmod(0o644)  # as Ray 2.60 writes it
    assert ray_engine.private_token_file() == token
    assert stat.S_IMODE(token.stat().st_mode) == 0o600 and token.read_text() == "f" * 64
    given = home / "elsewhere" / "token"
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(given))
    assert ray_engine.private_token_file() == given and not given.exists()  # Ray's to report
    given.parent.mkdir()
    given.write_text("e" * 64)
    given.chmod(0o640)
    assert ray_engine.private_token_file() == given
    assert stat.S_IMODE(given.stat().st_mode) == 0o600


@pytest.mark.parametrize("variable, value", [("RAY_AUTH_TOKEN", "a" * 64),
                                             ("RAY_AUTH_MODE", "disabled")])
def test_no_token_file_is_made_when_the_token_is_elsewhere_or_off(home, monkeypatch, variable,
                                                                   value):
    monkeypatch.setenv(variable, value)
    assert ray_engine.private_token_file() is None
    assert not (home / ".ray").exists()


def test_a_ray_that_took_an_outward_address_is_stopped_and_refused():
    from types import SimpleNamespace

    stopped = []
    fake = SimpleNamespace(util=SimpleNamespace(get_node_ip_address=lambda: "192.0.2.7"),
                           shutdown=lambda: stopped.append(True))
    with pytest.raises(RuntimeError, match=r"took the node address 192\.0\.2\.7.*serial"):
        ray_engine._check_loopback(fake)
    assert stopped == [True]
    fake.util.get_node_ip_address = lambda: ray_engine.LOOPBACK
    ray_engine._check_loopback(fake)
    assert stopped == [True]
