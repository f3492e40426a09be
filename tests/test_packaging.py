"""The set-up promises of the README: pins agree everywhere, CI runs what the README says."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def _pyproject_pins() -> dict[str, str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"]) + list(project["optional-dependencies"]["dev"])
    pins = {}
    for req in reqs:
        name, _, version = req.partition("==")
        assert version, f"pyproject.toml: {req!r} is not pinned with =="
        pins[name.lower()] = version
    return pins


def _environment_pins() -> dict[str, str]:
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_block = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    pins = {}
    for req in pip_block:
        if req.startswith("-e"):
            continue
        name, _, version = req.partition("==")
        pins[name.lower()] = version
    return pins


def test_environment_yml_and_pyproject_pin_the_same_versions():
    assert _environment_pins() == _pyproject_pins()


def test_environment_yml_uses_python_311_and_installs_the_package():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"]
    pip_block = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert "-e ." in pip_block


def test_torch_and_torchaudio_are_a_matching_pair():
    pins = _pyproject_pins()
    assert pins["torchaudio"] == "2.11.0"
    assert pins["torch"].startswith("2.11.")


def test_installed_versions_match_the_pins():
    from importlib.metadata import version

    for name, pinned in _pyproject_pins().items():
        assert version(name) == pinned, f"{name}: installed {version(name)}, pinned {pinned}"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    commands = [line.strip() for line in ci.splitlines() if line.strip() and
                not line.lstrip().startswith("#") and not line.startswith(("set ", "cd "))]
    assert commands == ["make test"]
    assert re.search(r"^make test$", readme, re.M), "README must give `make test`"
    assert re.search(r"^make reproduce$", readme, re.M), "README must give `make reproduce`"
