"""The papermill batch runner's small pieces (the notebooks themselves run in test_notebooks)."""

from __future__ import annotations

import pytest

from hcld_lib.batch import (
    REPO,
    batch_parameters,
    check_parameters,
    main,
    notebook_paths,
    parse_value,
)
from hcld_lib.io import HcldError


def test_parameter_values_parse_as_python_literals_or_strings():
    assert parse_value("3") == 3
    assert parse_value("0.5") == 0.5
    assert parse_value("['hcld', 'orth']") == ["hcld", "orth"]
    assert parse_value("None") is None
    assert parse_value("/data/IEMOCAP") == "/data/IEMOCAP"


def test_notebooks_are_found_in_order_and_filtered(tmp_path):
    for name in ["02_b.ipynb", "01_a.ipynb", "10_z.ipynb", "scratch.ipynb"]:
        (tmp_path / name).write_text("{}")
    assert [p.name for p in notebook_paths(tmp_path)] == ["01_a.ipynb", "02_b.ipynb", "10_z.ipynb"]
    assert [p.name for p in notebook_paths(tmp_path, ["02"])] == ["02_b.ipynb"]
    with pytest.raises(HcldError, match="no numbered notebooks"):
        notebook_paths(tmp_path, ["99"])


def test_a_misspelt_parameter_stops_the_batch_before_any_work_naming_the_known_ones(tmp_path):
    out = tmp_path / "executed"
    with pytest.raises(SystemExit) as stop:
        main(["-p", "datset", "manifest", "--out-dir", str(out)])
    message = str(stop.value)
    assert "unknown parameter(s) ['datset']" in message
    known = message.split("the known parameters are: ")[1].split(", ")
    assert {"dataset", "manifest", "profile", "seeds", "ray_address"} <= set(known)
    assert not out.exists()  # refused before a notebook ran or a folder was made


def test_a_parameter_known_to_one_notebook_is_accepted_for_the_batch():
    paths = notebook_paths(REPO / "notebooks")
    check_parameters(paths, {"profile": "quick", "dataset": "synthetic"})
    with pytest.raises(HcldError, match=r"unknown parameter\(s\) \['epoch'\] for 01_data"):
        check_parameters(paths[:1], {"epoch": 3})


def test_a_chapter_parameter_keeps_the_batch_out_of_the_committed_figures():
    paths = notebook_paths(REPO / "notebooks")
    assert batch_parameters(paths, "quick", {}) == {"profile": "quick"}
    assert batch_parameters(paths, "quick", {"engine": "serial"}) == {"profile": "quick",
                                                                       "engine": "serial"}
    chapter = batch_parameters(paths, "quick", {"variant": "orth"})
    assert chapter == {"profile": "quick", "variant": "orth", "figures_dir": None}
    mine = batch_parameters(paths, "quick", {"variant": "orth", "figures_dir": "/tmp/f"})
    assert mine["figures_dir"] == "/tmp/f"  # asked for: honoured
