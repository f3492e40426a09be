"""The notebooks: committed clean (no outputs, a ``parameters`` cell first), and every one runs
headless under papermill on a tiny corpus, in order, in one shared folder tree, writing its
figures and tables.

The run uses 100 synthetic utterances, one epoch, two folds, the CNN only and 16-wide encoders,
so the whole chain (01 -> 08, the §6 notebooks included) takes a few minutes on 2 CPU cores.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9]*.ipynb"))
KERNEL = "hcld"

#: Files each notebook must write, non-empty, in the experiment's folder of the shared tmp tree.
#: Notebooks not listed (06, 07) must write at least one figure and one table named after their
#: number.
EXPECTED: dict[str, list[str]] = {
    "01": ["01_corpus.png", "01_spectrograms.png", "01_counts.csv", "01_counts.md"],
    "02": ["02_features.png", "02_features.csv", "02_features.md"],
    "03": ["03_curves.png", "03_confusion.png", "03_metrics.csv", "03_metrics.md",
           "03_pairs.png", "03_gradients.png"],
    "04": ["04_table2.png", "04_table2.csv", "04_table2.md", "04_runs.csv", "04_budgets.png",
           "04_budgets.csv", "04_backbones.png", "04_backbones.csv"],
    "05": ["05_umap.png", "05_scorecard.png", "05_scorecard.csv", "05_scorecard.md"],
    "08": ["08_readings.png", "08_readings.csv", "08_readings.md"],
    "09": ["report.md", "09_claims.csv", "09_claims.md", "../index.md"],
}


def _experiment_dir(tree: Path) -> Path:
    """The experiment folder the test parameters name (see ``experiments.params.setup``)."""
    from hcld_lib.experiments.params import setup

    params = _parameters(tree)
    return setup(params).results_dir


def _parameters(tree: Path) -> dict:
    return dict(
        profile="quick",
        n_utterances=100,
        max_epochs=1,
        folds=2,
        archs=["cnn"],
        seeds=[0],
        overrides={"embed_dim": 16, "hidden_dim": 16, "batch_size": 16},
        engine="serial",  # the Ray engine is tested in test_grid_engines; a local Ray per
        sweeps=False,     # notebook kernel would add its start-up to every chapter
        work_dir=str(tree / "work"),
        figures_dir=str(tree / "figures"),
        results_dir=str(tree / "results"),
    )


# --- committed form -----------------------------------------------------------------------------


def test_there_are_notebooks():
    names = [p.name[:2] for p in NOTEBOOKS]
    for number in EXPECTED:
        assert number in names, f"notebooks/{number}_*.ipynb is missing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_committed_notebook_is_clean_with_a_parameters_cell_first(path: Path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, f"{path.name} has no code cell"
    assert "parameters" in code[0].metadata.get("tags", []), (
        f"{path.name}: the first code cell must be tagged 'parameters'"
    )
    tagged = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged 'parameters', expected 1"
    for i, cell in enumerate(code):
        assert not cell.get("outputs"), f"{path.name}: code cell {i} has outputs; clear them"
        assert cell.get("execution_count") is None, f"{path.name}: code cell {i} was executed"
    assert nb.metadata.get("kernelspec", {}).get("name") == KERNEL, (
        f"{path.name}: kernelspec name must be {KERNEL!r}"
    )
    assert nb.cells[0].cell_type == "markdown", f"{path.name} should open with its story"


# --- execution ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kernel() -> str:
    """The ``hcld`` kernel, registered from this interpreter's prefix if it is not yet there."""
    from jupyter_client.kernelspec import KernelSpecManager

    if KERNEL not in KernelSpecManager().find_kernel_specs():
        subprocess.run(
            [sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", KERNEL,
             "--display-name", "Python (hcld)"],
            check=True, capture_output=True,
        )
    return KERNEL


@pytest.fixture(scope="session")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One folder tree shared by every notebook of the session (later ones reuse earlier runs),
    and the kernel environment: the repository importable, numba's cache in a tmp folder, and
    one OpenMP thread (the 16-wide test models gain nothing from more, and two spinning threads
    per process slow down by an order of magnitude when other processes share the 2 cores)."""
    root = tmp_path_factory.mktemp("notebooks")
    keys = ("PYTHONPATH", "NUMBA_CACHE_DIR", "OMP_NUM_THREADS")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), saved["PYTHONPATH"]) if p
    )
    os.environ["NUMBA_CACHE_DIR"] = str(Path(tempfile.gettempdir()) / "hcld-numba-cache")
    os.environ["OMP_NUM_THREADS"] = "1"
    yield root
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_writes_its_figures_and_tables(path: Path, tree: Path, kernel: str):
    import papermill as pm

    number = path.name[:2]
    executed = tree / "executed" / path.name
    executed.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        pm.execute_notebook(
            str(path), str(executed), parameters=_parameters(tree), kernel_name=kernel,
            cwd=str(path.parent), execution_timeout=600, progress_bar=False,
        )
    except pm.PapermillExecutionError as err:
        pytest.fail(f"{path.name} raised {err.ename}: {err.evalue} (see {executed})")
    print(f"{path.name}: {time.perf_counter() - start:.1f} s")

    nb = nbformat.read(executed, as_version=4)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, f"{path.name} has error outputs"

    folder = _experiment_dir(tree)
    if number in EXPECTED:
        for rel in EXPECTED[number]:
            out = folder / rel
            assert out.is_file(), f"{path.name} did not write {out}"
            assert out.stat().st_size > 0, f"{path.name} wrote an empty {out}"
    else:
        figs = list(folder.glob(f"{number}_*.png"))
        tables = list(folder.glob(f"{number}_*.md"))
        assert figs, f"{path.name} wrote no {number}_*.png in {folder}"
        assert tables, f"{path.name} wrote no {number}_*.md in {folder}"
        assert all(p.stat().st_size > 0 for p in figs + tables)
    # this is not the default experiment: the committed figures folder is never written
    assert not (tree / "figures").exists(), f"{path.name} wrote into figures_dir"


def test_the_report_names_its_provenance_and_the_corpus(tree: Path):
    folder = _experiment_dir(tree)
    report = folder / "report.md"
    if not report.is_file():
        pytest.skip("09_report did not run in this session")
    text = report.read_text()
    assert "profile=quick" in text and "backbone=fbank" in text and "protocol=paper" in text
    assert "not from IEMOCAP" in text
    table2 = (folder / "04_table2.md").read_text()
    assert "protocol=paper" in table2 and "paper (IEMOCAP" in table2
    assert f"`{folder.name}`" in (tree / "results" / "index.md").read_text()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_parameters_cell_declares_the_common_knobs(path: Path):
    """The knobs ``setup`` reads are in every parameters cell, with the same defaults, so that
    a user in JupyterLab sees them all and papermill's ``-p`` reaches every chapter."""
    import papermill as pm

    from hcld_lib.experiments.params import KNOBS

    declared = pm.inspect_notebook(str(path))
    missing = sorted(set(KNOBS) - set(declared))
    assert not missing, f"{path.name} does not declare {missing}"
    for name, default in KNOBS.items():
        value = ast.literal_eval(declared[name]["default"])
        assert value == default, f"{path.name}: {name} = {value!r}, expected {default!r}"
