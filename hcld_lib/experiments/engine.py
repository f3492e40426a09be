"""Run a list of independent tasks in-process or on Ray, with the same code on a laptop, a GPU box
or a cluster.

``run_tasks(fn, tasks)`` returns ``[fn(t) for t in tasks]`` in task order. It knows nothing about
training: ``fn`` is a module-level function (Ray pickles it by reference, so the workers must be
able to import its module) and each task a picklable spec. The tasks are expected to write their
own outputs atomically and to skip or resume work already done, so that running the same list
again after a failure or an interruption picks up where it stopped.

Engines:

* ``engine="serial"``: a plain loop in this process (debugging, profiling, tests).
* ``engine="ray"``: one Ray task per spec, ``num_cpus=1`` and ``num_gpus`` each, submitted with
  ``max_retries`` (a worker that dies: killed, out of memory, node lost, is retried) and
  ``retry_exceptions=False`` (a Python exception is a bug to report, not to retry). Results are
  collected with ``ray.wait`` as they finish and ``on_result`` is called for each.

Where Ray runs (``address``):

* ``None``: if Ray is already initialised in this process, it is reused as it is. Otherwise, if
  the environment variable ``RAY_ADDRESS`` is set, connect to that cluster; otherwise start a
  private local Ray (``num_cpus`` CPUs, default all of the machine's, no dashboard, on the
  loopback interface only, see below) and shut it down afterwards. A cluster left running by
  ``ray start`` is never joined silently.
* ``"auto"``: the cluster started on this node by ``ray start``; ``"host:port"`` a cluster's GCS;
  ``"ray://host:port"`` a remote cluster through Ray Client. Only the connection is closed after.

Starting a cluster (same Python, same Ray version, ``hcld_lib`` installed on every node):

    ray start --head --port=6379 --num-cpus=N          # on the head node
    ray start --address=HEAD_IP:6379                    # on each other node
    run_tasks(fn, tasks, address="auto")                # on the head node (or RAY_ADDRESS=...)

On SLURM, start the head and the workers inside one allocation as in Ray's guide
(https://docs.ray.io/en/latest/cluster/vms/user-guides/community/slurm.html), then run the
driver on the head node with ``address="auto"``. Ray 2.60 turns on token authentication for
the clusters that ``ray.init`` starts and writes the token to ``~/.ray/auth_token``. To connect
from another shell to such a cluster, or to a ``ray start`` cluster that found a token, give an
explicit address and export ``RAY_AUTH_MODE=token``.

The local Ray listens on loopback only. On Linux, Ray 2.60 takes the machine's outward address
as the node's address, even when ``ray.init`` is given ``_node_ip_address="127.0.0.1"`` (it
replaces a loopback address by the outward one unless ``ray_constants.ENABLE_RAY_CLUSTER`` is
false, which is what ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` sets when ``ray`` is imported), and
then the GCS server, the raylet, the workers and the dashboard agent listen on every interface
(``*`` / ``0.0.0.0``) and the runtime-env agent on the outward address. With the node's address
127.0.0.1 every one of them binds to 127.0.0.1 instead. So the local Ray started here is given
``_node_ip_address="127.0.0.1"`` while that flag is off, for the duration of ``ray.init`` only
(a cluster joined later from the same process is unaffected), and the start is refused with a
``RuntimeError`` if Ray still took another address. A driver that connects to such a Ray by
its address (``127.0.0.1:port``, as the batch hands its shared Ray to the notebooks) connects
the same way: Ray 2.60 would otherwise replace 127.0.0.1 by the outward address and wait for a
GCS that is not there. Outside ``hcld_lib`` (``ray.init(address="127.0.0.1:port")`` by hand),
export ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` first. The dashboard is off; its agents serve
127.0.0.1. Ray's token file (``~/.ray/auth_token``, or ``RAY_AUTH_TOKEN_PATH``), which Ray
writes readable by everyone (0644), is made readable by its owner only (0600) before the start,
and created that way (64 random hex digits, as Ray makes it) when absent. A Ray that ``ray
start`` began (``address="auto"``, a ``host:port``, ``RAY_ADDRESS``) is the user's: nothing of
it is changed. To keep such a cluster private:

* one machine: ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 ray start --head
  --node-ip-address=127.0.0.1`` binds every Ray process to 127.0.0.1 (GCS, raylet, agents,
  dashboard, Ray Client server), as the local Ray here; run the batch with
  ``RAY_AUTH_MODE=token`` and ``--ray-address 127.0.0.1:6379`` (the explicit address);
* several machines: the nodes must reach each other, so keep them on a private network or behind
  a firewall that admits only the other nodes (Ray's ports: the GCS ``--port``, and the
  ``--node-manager-port``, ``--object-manager-port`` and ``--min-worker-port`` ..
  ``--max-worker-port`` ranges, which can be fixed to open only those); turn token
  authentication on: ``ray start`` uses it only when it finds a token, so create one first
  (``ray get-auth-token --generate``), ``chmod 600 ~/.ray/auth_token``, copy it to every node
  the same way and export ``RAY_AUTH_MODE=token`` (a missing token is then an error, not an
  open cluster); leave the dashboard on its default host 127.0.0.1 (never
  ``--dashboard-host 0.0.0.0``) and reach it through an SSH tunnel
  (``ssh -L 8265:127.0.0.1:8265 head``).

Workers import ``hcld_lib`` and the module of ``fn``. On this machine that already works, because
the package is installed in the venv in editable mode and Ray puts the driver's working
directory on the workers' ``sys.path``. On other nodes, install the package in the same
environment on every node, or pass a ``runtime_env`` (for example
``{"working_dir": ".", "excludes": ["runs", ".venv"]}`` or ``{"py_modules": [hcld_lib]}``),
which Ray uploads to the nodes. Local paths in a ``runtime_env`` only work when this call starts
or connects Ray itself.

Threads: each Ray task gets one CPU. Ray sets ``OMP_NUM_THREADS`` in a worker to the task's CPU
count (1 here) unless the variable is already set. Measured with Ray 2.60: a worker has
``torch.get_num_threads() == 1`` and one thread in each OpenMP and OpenBLAS pool. When this call
starts or connects Ray, it also sets ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` and
``OPENBLAS_NUM_THREADS`` to 1 for its workers, overriding values inherited from the nodes'
shells. Without that, two workers on two cores would oversubscribe the CPU. Set
``runtime_env={"env_vars": {...}}`` to choose other values.

Logs: Ray's own logger is set to ERROR, which hides its start-up chatter, including a warning
on every start that token authentication is on. A task's Python warnings are recorded in its
worker and raised again in the driver, where they were raised (file and line) and once each, as
the serial engine shows them. What the workers print still reaches the driver, prefixed by the
task's name, and so do Ray's notices such as "(raylet) A worker died".
Ray merges lines that differ only in numbers ("[repeated 2x across cluster]").
Set ``RAY_DEDUP_LOGS=0`` before starting Ray to see every line.
Each Ray session leaves about 0.3 MB of logs in ``/tmp/ray/session_*``, which Ray never deletes.

GPUs: ``num_gpus=None`` means one GPU per task if the Ray cluster has any GPU, else none. The
check looks at the cluster, not the driver, so a CPU-only login or head node still schedules
runs on the GPU nodes. Pass a fraction (for example 0.25) to put several small runs on one GPU.
Ray only does the bookkeeping and does not cap memory. Pass 0 to keep runs on the CPU.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import secrets
import stat
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from hcld_lib.io import HcldError

__all__ = ["LOOPBACK", "TaskFailed", "private_token_file", "ray_session", "ray_token_file",
           "run_tasks"]

THREAD_LIMITS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}

OnResult = Callable[[int, Any, Any, int, int], None]


class TaskFailed(RuntimeError):
    """A task raised an exception, or its worker died more often than allowed.

    Raised ``from`` the original error. ``index`` and ``task`` identify the failed task.
    """

    def __init__(self, message: str, index: int, task: Any):
        super().__init__(message)
        self.index = index
        self.task = task


def _failure(index: int, task: Any, total: int, done: int, error: BaseException,
             describe: Callable[[Any], str] | None) -> TaskFailed:
    cause = getattr(error, "cause", None) or error  # RayTaskError wraps the task's exception
    name = describe(task) if describe else repr(task)
    return TaskFailed(
        f"task {index + 1}/{total} ({name}) failed: {type(cause).__name__}: {cause}\n"
        f"The outputs of the {done} task(s) that had finished are kept (each task writes its "
        "own), so running the same tasks again resumes from there.", index, task)


_REPLAYED: dict[Any, Any] = {}  # the "once per place" memory of the replayed warnings

Recorded = tuple[type[Warning], str, str, int]
"""A warning raised in a worker: (category, message, file, line)."""


def _recording(fn: Callable[[Any], Any], task: Any) -> tuple[Any, list[Recorded]]:
    """``fn(task)`` and the warnings it raised (what a Ray task runs)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = fn(task)
    return result, [(w.category, str(w.message), w.filename, w.lineno) for w in caught]


def _replay(recorded: list[Recorded]) -> None:
    """Raise a worker's warnings again in the driver, at their own file and line, so that the
    driver's filters apply (the default: once per place)."""
    for category, message, filename, lineno in recorded:
        warnings.warn_explicit(message, category, filename, lineno, registry=_REPLAYED)


@contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None,
                runtime_env: dict[str, Any] | None = None, prestart: bool = True
                ) -> Iterator[bool]:
    """Make sure Ray is initialised for the duration of the block; yield whether it was already.

    If Ray is already initialised, nothing is done and it is left running. Otherwise Ray is
    started or connected as described in the module docstring (``address``), with
    ``runtime_env`` for the whole job and the one-thread limits added to its ``env_vars``.
    ``ray.shutdown()`` is called at the end, which stops a local Ray that was started here and
    only disconnects from a cluster. Use it to share one Ray across several ``run_tasks`` calls.
    ``prestart=False``: a local Ray started here starts no worker for this driver in advance (the
    batch, which runs no task itself and only holds the Ray its notebooks share).
    """
    import ray

    if ray.is_initialized():
        yield True
        return
    runtime_env = dict(runtime_env or {})
    runtime_env["env_vars"] = {**THREAD_LIMITS, **runtime_env.get("env_vars", {})}
    target = address or os.environ.get("RAY_ADDRESS") or "local"
    init = {"address": target, "runtime_env": runtime_env, "logging_level": logging.ERROR}
    if target == "local":
        private_token_file()
        with _loopback_node():
            ray.init(num_cpus=num_cpus, include_dashboard=False, dashboard_host=LOOPBACK,
                     _node_ip_address=LOOPBACK,
                     _system_config={"prestart_worker_first_driver": bool(prestart)}, **init)
        _check_loopback(ray)
    elif _on_loopback(target):  # a local Ray of another driver (the batch's shared one)
        with _loopback_node():
            ray.init(**init)
    else:
        ray.init(**init)
    try:
        yield False
    finally:
        ray.shutdown()


LOOPBACK = "127.0.0.1"
"""The address every process of the local Ray listens on."""


@contextmanager
def _loopback_node() -> Iterator[None]:
    """Let Ray take 127.0.0.1 as the node's address while it starts (see the module docstring)."""
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def _on_loopback(address: str) -> bool:
    """Whether ``address`` is a GCS ``host:port`` on this machine's loopback interface."""
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # "auto", "ray://...", a host name
        return False


def _check_loopback(ray: Any) -> None:
    """Stop a local Ray whose node address is not loopback: its processes listen outside."""
    node = ray.util.get_node_ip_address()
    if not ipaddress.ip_address(node).is_loopback:
        ray.shutdown()
        raise RuntimeError(
            f"the local Ray took the node address {node} instead of {LOOPBACK}, so it would "
            "listen on the network; this Ray version no longer honours the loopback setting of "
            "hcld_lib.experiments.engine: use engine='serial' or start a cluster yourself")


def ray_token_file() -> Path | None:
    """The file a Ray started here reads its token from: ``RAY_AUTH_TOKEN_PATH``, else
    ``~/.ray/auth_token``; None when the token is given in ``RAY_AUTH_TOKEN`` or
    ``RAY_AUTH_MODE=disabled`` turns authentication off."""
    if (os.environ.get("RAY_AUTH_TOKEN")
            or os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "disabled"):
        return None
    given = os.environ.get("RAY_AUTH_TOKEN_PATH")
    return Path(given).expanduser() if given else Path.home() / ".ray" / "auth_token"


def private_token_file() -> Path | None:
    """Make the token file of a local Ray readable by its owner only (0600), first.

    An absent default file is created private, with a token as Ray makes one (256 random bits
    in hex), so that Ray finds it instead of writing its own readable by everyone. Returns the
    file (None: no token file, see :func:`ray_token_file`).

    Raises:
        HcldError: naming the file, when its permissions cannot be changed (another owner).
    """
    path = ray_token_file()
    if path is None:
        return None
    if not path.exists() and "RAY_AUTH_TOKEN_PATH" not in os.environ:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it meanwhile: tightened below
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32))
    if path.is_file() and stat.S_IMODE(path.stat().st_mode) & 0o077:
        try:
            os.chmod(path, 0o600)
        except OSError as err:
            raise HcldError(
                f"Ray's token file {path} is readable by other users and cannot be made "
                f"private ({err.strerror}): run `chmod 600 {path}` as its owner, or remove "
                "it") from err
    return path


def run_tasks(
    fn: Callable[[Any], Any],
    tasks: Sequence[Any],
    *,
    engine: Literal["ray", "serial"] = "ray",
    address: str | None = None,
    num_cpus: int | None = None,
    num_gpus: float | None = None,
    max_retries: int = 3,
    on_result: OnResult | None = None,
    describe: Callable[[Any], str] | None = None,
    runtime_env: dict[str, Any] | None = None,
) -> list[Any]:
    """Return ``[fn(t) for t in tasks]``, computed by ``engine``, in task order.

    ``on_result(index, task, result, done, total)`` is called in the driver as each task
    finishes (in completion order), for example to show runs done / total and an ETA.
    ``describe(task)`` names a task in error messages and in Ray's task list. ``address``,
    ``num_cpus`` and ``runtime_env`` only matter if this call starts or connects Ray (see
    ``ray_session``). If Ray is already initialised, a ``runtime_env`` given here is applied to
    each task instead, and Ray rejects local paths in it. ``num_gpus`` is each task's GPU
    share; ``None`` means 1 if the cluster has a GPU, else 0. ``max_retries`` is how many times
    a task whose worker died is run again.

    Raises ``TaskFailed`` naming the first task that raised (or whose worker kept dying). The
    tasks still running are then cancelled, but the outputs of the finished ones stay.
    """
    tasks = list(tasks)
    if engine == "serial":
        results = []
        for i, task in enumerate(tasks):
            try:
                results.append(fn(task))
            except Exception as err:
                raise _failure(i, task, len(tasks), i, err, describe) from err
            if on_result is not None:
                on_result(i, task, results[-1], i + 1, len(tasks))
        return results
    if engine != "ray":
        raise ValueError(f"engine must be 'ray' or 'serial', not {engine!r}")
    if not tasks:
        return []
    with ray_session(address, num_cpus=num_cpus, runtime_env=runtime_env) as reused:
        return _run_on_ray(fn, tasks, num_gpus=num_gpus, max_retries=max_retries,
                           on_result=on_result, describe=describe,
                           runtime_env=runtime_env if reused else None)


def _run_on_ray(fn: Callable[[Any], Any], tasks: list[Any], *, num_gpus: float | None,
                max_retries: int, on_result: OnResult | None,
                describe: Callable[[Any], str] | None,
                runtime_env: dict[str, Any] | None) -> list[Any]:
    import ray
    from ray.exceptions import RayError

    if num_gpus is None:
        num_gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    options: dict[str, Any] = {"num_cpus": 1, "num_gpus": num_gpus, "max_retries": max_retries,
                               "retry_exceptions": False}
    if runtime_env:
        options["runtime_env"] = runtime_env
    remote = ray.remote(_recording)
    fn_ref = ray.put(fn)
    index = {}
    for i, task in enumerate(tasks):
        name = describe(task) if describe else getattr(fn, "__name__", "task")
        index[remote.options(name=name, **options).remote(fn_ref, task)] = i
    pending = list(index)
    results: list[Any] = [None] * len(tasks)
    done = 0
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            i = index[ready[0]]
            try:
                results[i], recorded = ray.get(ready[0])
            except RayError as err:
                raise _failure(i, tasks[i], len(tasks), done, err, describe) from err
            _replay(recorded)
            done += 1
            if on_result is not None:
                on_result(i, tasks[i], results[i], done, len(tasks))
    except BaseException:  # a failed task, or Ctrl-C in the driver: stop the others
        for ref in pending:
            ray.cancel(ref)
        raise
    return results
