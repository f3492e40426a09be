"""The papermill batch runner's small pieces (the notebooks themselves run in test_notebooks)."""

from __future__ import annotations

import pytest

from hcld_lib.batch import notebook_paths, parse_value
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
