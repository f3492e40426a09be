"""The set-up promises of the README: pins agree everywhere, CI runs what the README says."""

from __future__ import annotations

import json
import re
import subprocess
import sys
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


def _distribution(requirement_name: str) -> str:
    """``"ray[default]"`` -> ``"ray"``: the distribution an extra belongs to."""
    return requirement_name.partition("[")[0].lower()


def test_installed_versions_match_the_pins():
    from importlib.metadata import version

    for name, pinned in _pyproject_pins().items():
        dist = _distribution(name)
        assert version(dist) == pinned, f"{name}: installed {version(dist)}, pinned {pinned}"


def test_the_conda_route_pip_section_resolves_to_the_same_pins(tmp_path):
    """What ``conda env create -f environment.yml`` hands to pip, resolved by pip in a fresh
    virtual environment (``--dry-run``: nothing is installed; no conda needed): every package
    the project pins comes out at its pinned version, and pip finds no conflict."""
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_block = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("\n".join(r for r in pip_block if not r.startswith("-e")) + "\n")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    report = tmp_path / "report.json"
    done = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--dry-run", "--quiet",
         "--report", str(report), "-r", str(requirements)],
        capture_output=True, text=True,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    resolved = {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"]
                for item in json.loads(report.read_text())["install"]}
    for name, pinned in _environment_pins().items():
        dist = _distribution(name).replace("_", "-")
        assert resolved.get(dist) == pinned, f"{name}: pip resolved {resolved.get(dist)}"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    commands = [line.strip() for line in ci.splitlines() if line.strip() and
                not line.lstrip().startswith("#") and not line.startswith(("set ", "cd "))]
    assert commands == ["make test"]
    assert re.search(r"^make test$", readme, re.M), "README must give `make test`"
    assert re.search(r"^make reproduce$", readme, re.M), "README must give `make reproduce`"
