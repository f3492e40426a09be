"""The task engine: serial and Ray agree, a dead worker is retried, a bug is reported by name.

One local Ray with 2 CPUs serves the whole module (starting it is the slow part). Ray workers
import the toy task functions below by module name. pytest imports this file as the top-level
module ``test_engine`` from ``tests/``, and ``tests/`` is put on the workers' ``PYTHONPATH``
through the job's ``runtime_env``. Ray itself only adds the driver's working directory.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
