"""Run every numbered notebook headless with papermill: the main job (``make reproduce``).

    python -m hcld_lib.batch                         # the embedded default (quick profile)
    python -m hcld_lib.batch --profile paper -p dataset iemocap -p iemocap_root /data/IEMOCAP
    python -m hcld_lib.batch --only 04 -p epochs 3   # one notebook with other parameters
    python -m hcld_lib.batch --ray-address auto      # the grids on a running Ray cluster

Executed copies go to ``runs/notebooks/`` (git-ignored); the notebooks write their figures and
tables to ``results/<experiment>/`` (and the default experiment's figures to ``figures/``). A
parameter that no notebook knows is an error before anything runs; a notebook that raises stops
the batch with its name and the path of the executed copy, where the traceback is.

Order: a notebook declares the chapters it reads from in its metadata (``"hcld": {"needs":
["04"], "trains": true}``); the batch runs a notebook once those have finished, up to ``--jobs``
at a time (default 4), those that train first, so that the single-threaded work of the others
(plots, UMAP, speaker embeddings) fills the gaps of the training. The chapters that train need
only the corpus (01): the feature caches they read are made by whichever chapter asks first
(chapter 02, as a rule), under the cache's lock, while the others wait and read them. With the
Ray engine and no ``--ray-address``, the batch starts one local Ray (one worker per core) while
the first chapters run, which every notebook's grid then shares; it is stopped at the end.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat

from hcld_lib.experiments.engine import ray_session
from hcld_lib.experiments.params import KNOBS
from hcld_lib.experiments.params import profile as get_profile
from hcld_lib.io import HcldError, atomic_write_text, parse_value

REPO = Path(__file__).resolve().parent.parent
KERNEL = "hcld"


def notebook_paths(notebooks_dir: Path, only: list[str] | None = None) -> list[Path]:
    """The numbered notebooks (``NN_name.ipynb``) in order, optionally those whose name starts
    with one of ``only`` (e.g. ``["04", "05"]``)."""
    paths = sorted(notebooks_dir.glob("[0-9][0-9]_*.ipynb"))
    if only:
        paths = [p for p in paths if any(p.name.startswith(o) for o in only)]
    if not paths:
        raise HcldError(f"no numbered notebooks matching {only or '*'} in {notebooks_dir}")
    return paths


def needs(path: Path) -> tuple[list[str], bool]:
    """The chapters (two-digit numbers) a notebook reads results from, and whether it trains
    (its metadata ``"hcld": {"needs": [...], "trains": ...}``)."""
    meta = nbformat.read(path, as_version=4).metadata.get("hcld", {})
    return [str(n) for n in meta.get("needs", [])], bool(meta.get("trains", False))


def check_parameters(paths: list[Path], parameters: dict[str, object]) -> None:
    """Refuse a parameter that none of ``paths`` declares in its ``parameters`` cell, naming the
    known ones (a typo such as ``datset`` would otherwise be ignored by papermill)."""
    import papermill as pm

    known: set[str] = set()
    for path in paths:
        known |= set(pm.inspect_notebook(str(path)))
    unknown = sorted(set(parameters) - known)
    if unknown:
        raise HcldError(
            f"unknown parameter(s) {unknown} for {', '.join(p.name for p in paths)}; the known "
            f"parameters are: {', '.join(sorted(known))}"
        )


def batch_parameters(paths: list[Path], profile: str, parameters: dict[str, object]
                     ) -> dict[str, object]:
    """The parameters every notebook of ``paths`` gets: ``profile`` and ``parameters``, checked
    by :func:`check_parameters`. A chapter's own parameter (03's ``variant``, ...) makes other
    figures than the committed ones, so it also sets ``figures_dir=None`` unless given."""
    params = {"profile": profile, **parameters}
    check_parameters(paths, params)
    if set(params) - set(KNOBS) and "figures_dir" not in params:
        params["figures_dir"] = None
    return params


def _execute(path: Path, output: Path, params: dict[str, object], kernel: str,
             timeout: int) -> float:
    """Run one notebook through papermill in its own process; return its seconds."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "papermill", str(path), str(output), "-k", kernel,
         "--cwd", str(path.parent), "--execution-timeout", str(timeout), "--no-progress-bar",
         "--log-level", "ERROR", "-y", json.dumps(params)],
        capture_output=True, text=True,
    )
    if done.returncode != 0:
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        reason = next((ln for ln in reversed(lines) if "Error" in ln or "Exception" in ln),
                      lines[-1] if lines else "no message")
        raise HcldError(f"{path.name} failed ({reason.strip()}); the executed copy with the "
                        f"traceback is {output}")
    return time.perf_counter() - start


def run_batch(
    profile: str = "quick",
    parameters: dict[str, object] | None = None,
    only: list[str] | None = None,
    out_dir: Path | None = None,
    timeout: int = 3600,
    kernel: str = KERNEL,
    threads: int | None = None,
    jobs: int = 4,
) -> list[tuple[str, float]]:
    """Execute the notebooks (dependencies first, ``jobs`` at a time); return (name, seconds).

    ``threads`` sets ``OMP_NUM_THREADS`` for the kernels (default: the profile's ``threads``;
    the quick profile's encoders are so small that torch's intra-op threads cost more than they
    give, so it uses 1). An ``OMP_NUM_THREADS`` already in the environment wins.
    """
    threads = get_profile(profile).threads if threads is None else threads
    paths = notebook_paths(REPO / "notebooks", only)
    params = batch_parameters(paths, profile, parameters or {})
    out_dir = out_dir or REPO / "runs" / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    if threads is not None:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    numbers = {q.name[:2] for q in paths}
    waiting = {p.name[:2]: (p, set(needs(p)[0]) & numbers, needs(p)[1]) for p in paths}
    # one local Ray for every chapter that trains (none: no Ray at all)
    shared_ray = (params.get("engine", "ray") == "ray" and not params.get("ray_address")
                  and any(trains for _, _, trains in waiting.values()))
    timings: list[tuple[str, float]] = []
    start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        pool = stack.enter_context(concurrent.futures.ThreadPoolExecutor(max(1, jobs)))
        running: dict[concurrent.futures.Future, str] = {}
        while waiting or running:
            finished = {n for n, _ in timings}
            # the chapters that train first: the others' single-threaded work fills the gaps
            for number, (path, deps, trains) in sorted(waiting.items(),
                                                       key=lambda kv: (not kv[1][2], kv[0])):
                ray_pending = trains and shared_ray and "ray_address" not in params
                if deps <= finished and len(running) < max(1, jobs) and not ray_pending:
                    print(f"[hcld] {path.name} ...", flush=True)
                    future = pool.submit(_execute, path, out_dir / path.name, dict(params),
                                         kernel, timeout)
                    running[future] = number
                    del waiting[number]
            if shared_ray and "ray_address" not in params:
                # start the shared local Ray while the first chapters (no training) run
                stack.enter_context(ray_session(num_cpus=os.cpu_count(), prestart=False))
                import ray

                params["ray_address"] = ray.get_runtime_context().gcs_address
                continue
            done, _ = concurrent.futures.wait(running, return_when="FIRST_COMPLETED")
            for future in done:
                number = running.pop(future)
                seconds = future.result()  # a failure stops the batch here
                timings.append((number, seconds))
                print(f"[hcld] {number} done in {seconds:.0f} s", flush=True)
    wall = time.perf_counter() - start
    named = [(next(p.name for p in paths if p.name.startswith(n)), s) for n, s in timings]
    lines = ["notebook,seconds", *(f"{n},{s:.1f}" for n, s in sorted(named)), f"wall,{wall:.1f}"]
    atomic_write_text(out_dir / "timings.csv", "\n".join(lines) + "\n")
    print(f"[hcld] {len(named)} notebooks done in {wall:.0f} s; executed copies in {out_dir}")
    return sorted(named)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hcld_lib.batch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", default="quick",
                        help="a profile of hcld_lib.experiments.params.PROFILES")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                        metavar=("NAME", "VALUE"), help="a notebook parameter (repeatable)")
    parser.add_argument("--only", nargs="+", help="run only notebooks whose name starts with these")
    parser.add_argument("--timeout", type=int, default=3600, help="per-cell execution timeout (s)")
    parser.add_argument("--out-dir", type=Path, help="where executed copies go (runs/notebooks)")
    parser.add_argument("--threads", type=int, help="torch threads per kernel (quick: 1)")
    parser.add_argument("--jobs", type=int, default=4, help="notebooks run at the same time")
    parser.add_argument("--engine", choices=("ray", "serial"),
                        help="how the grids run (the notebooks' engine parameter; default ray)")
    parser.add_argument("--ray-address", help="a running Ray cluster: 'auto' or ray://host:port")
    args = parser.parse_args(argv)
    params = {name: parse_value(value) for name, value in args.parameter}
    if args.engine:
        params["engine"] = args.engine
    if args.ray_address:
        params["ray_address"] = args.ray_address
    try:
        run_batch(args.profile, params, args.only, args.out_dir, args.timeout,
                  threads=args.threads, jobs=args.jobs)
    except HcldError as err:
        sys.exit(f"[hcld] {err}")


if __name__ == "__main__":
    main()
