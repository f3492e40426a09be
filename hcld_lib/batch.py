"""Run every numbered notebook headless with papermill: the main job (``make reproduce``).

    python -m hcld_lib.batch                         # the embedded default (quick profile)
    python -m hcld_lib.batch --profile paper -p dataset iemocap -p iemocap_root /data/IEMOCAP
    python -m hcld_lib.batch --only 04 -p epochs 3   # one notebook with other parameters

Executed copies go to ``runs/notebooks/`` (git-ignored); the notebooks write their figures and
tables to ``results/<experiment>/`` (and the default experiment's figures to ``figures/``). A
parameter that no notebook knows is an error before anything runs; a notebook that raises stops
the batch with its name and the path of the executed copy, where the traceback is.
"""

from __future__ import annotations

import argparse
import ast
import os
import sys
import time
from pathlib import Path

from hcld_lib.experiments.params import profile as get_profile
from hcld_lib.io import HcldError, atomic_write_text

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


def parse_value(text: str) -> object:
    """A papermill ``-p`` value: a Python literal when it parses as one, else the string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


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


def run_batch(
    profile: str = "quick",
    parameters: dict[str, object] | None = None,
    only: list[str] | None = None,
    out_dir: Path | None = None,
    timeout: int = 3600,
    kernel: str = KERNEL,
    threads: int | None = None,
) -> list[tuple[str, float]]:
    """Execute the notebooks in order; return (name, seconds) for each.

    ``threads`` sets ``OMP_NUM_THREADS`` for the kernels (default: the profile's ``threads``;
    the quick profile's encoders are so small that torch's intra-op threads cost more than they
    give, so it uses 1). An ``OMP_NUM_THREADS`` already in the environment wins.
    """
    import papermill as pm

    threads = get_profile(profile).threads if threads is None else threads
    notebooks_dir = REPO / "notebooks"
    paths = notebook_paths(notebooks_dir, only)
    params = {"profile": profile, **(parameters or {})}
    check_parameters(paths, params)
    out_dir = out_dir or REPO / "runs" / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    if threads is not None:
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    timings: list[tuple[str, float]] = []
    for nb in paths:
        print(f"[hcld] {nb.name} ...", flush=True)
        start = time.perf_counter()
        output = out_dir / nb.name
        try:
            pm.execute_notebook(
                str(nb),
                str(output),
                parameters=params,
                kernel_name=kernel,
                cwd=str(notebooks_dir),
                execution_timeout=timeout,
                progress_bar=False,
            )
        except pm.PapermillExecutionError as err:
            raise SystemExit(
                f"[hcld] {nb.name} failed ({err.ename}: {err.evalue}); "
                f"the executed copy with the traceback is {output}"
            ) from None
        seconds = time.perf_counter() - start
        timings.append((nb.name, seconds))
        print(f"[hcld] {nb.name} done in {seconds:.0f} s", flush=True)
    total = sum(s for _, s in timings)
    lines = ["notebook,seconds", *(f"{n},{s:.1f}" for n, s in timings), f"total,{total:.1f}"]
    atomic_write_text(out_dir / "timings.csv", "\n".join(lines) + "\n")
    print(f"[hcld] {len(timings)} notebooks done in {total:.0f} s; executed copies in {out_dir}")
    return timings


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
    args = parser.parse_args(argv)
    params = {name: parse_value(value) for name, value in args.parameter}
    try:
        run_batch(args.profile, params, args.only, args.out_dir, args.timeout, threads=args.threads)
    except HcldError as err:
        sys.exit(f"[hcld] {err}")


if __name__ == "__main__":
    main()
