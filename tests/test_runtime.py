"""The one offline rule, and where downloads go when it allows them."""

from __future__ import annotations

import os

import pytest

from hcld_lib import runtime


@pytest.fixture
def online(monkeypatch):
    for name in runtime.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("variable", runtime.OFFLINE_VARIABLES)
@pytest.mark.parametrize("value, expected", [("1", True), ("true", True), ("YES", True),
                                             (" on ", True), ("0", False), ("false", False),
                                             ("", False), ("no", False)])
def test_each_variable_switches_downloads_off_with_a_true_value(online, monkeypatch, variable,
                                                                value, expected):
    monkeypatch.setenv(variable, value)
    assert runtime.offline() is expected


def test_an_explicit_choice_beats_the_environment(online, monkeypatch):
    assert runtime.offline() is False
    assert runtime.offline(True) is True
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert runtime.offline() is True
    assert runtime.offline(False) is False


def test_the_cache_home_follows_its_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("HCLD_CACHE_DIR", str(tmp_path / "mine"))
    assert runtime.cache_home() == tmp_path / "mine"
    monkeypatch.delenv("HCLD_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert runtime.cache_home() == tmp_path / "xdg" / "hcld"


def test_torch_threads_sets_and_puts_back_even_on_an_error():
    import torch

    from hcld_lib.runtime import torch_threads

    before = torch.get_num_threads()
    with torch_threads(3):
        assert torch.get_num_threads() == 3
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(None):
        assert torch.get_num_threads() == max(1, os.cpu_count() or 1)
        raise RuntimeError("inside")
    assert torch.get_num_threads() == before
