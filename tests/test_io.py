"""Atomic writes: a crash mid-write leaves the previous file (or nothing), never half a file."""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

from hcld_lib import io


def test_atomic_write_json_round_trip_with_numpy_values(tmp_path):
    path = tmp_path / "sub" / "m.json"
    io.atomic_write_json(path, {"a": np.float32(0.5), "b": np.arange(3), "p": tmp_path})
    assert json.loads(path.read_text()) == {"a": 0.5, "b": [0, 1, 2], "p": str(tmp_path)}


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "m.json"
    io.atomic_write_json(path, {"v": 1})
    with pytest.raises(TypeError):
        io.atomic_write_json(path, {"v": object()})  # not JSON-serialisable: fails before rename
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


def test_atomic_save_npz_round_trip(tmp_path):
    io.atomic_save_npz(tmp_path / "e.npz", x=np.eye(2, dtype=np.float32), y=np.array(["a", "b"]))
    with np.load(tmp_path / "e.npz") as z:
        np.testing.assert_array_equal(z["x"], np.eye(2))
        assert list(z["y"]) == ["a", "b"]


def test_atomic_dir_renames_only_on_success(tmp_path):
    final = tmp_path / "cache"
    with pytest.raises(RuntimeError):
        with io.atomic_dir(final) as tmp:
            (tmp / "half.npy").write_bytes(b"x")
            raise RuntimeError("crash")
    assert not final.exists()
    assert list(tmp_path.iterdir()) == []
    with io.atomic_dir(final) as tmp:
        (tmp / "whole.npy").write_bytes(b"x")
    assert (final / "whole.npy").read_bytes() == b"x"
    with io.atomic_dir(final) as tmp:  # replacing an existing folder
        (tmp / "new.npy").write_bytes(b"y")
    assert sorted(p.name for p in final.iterdir()) == ["new.npy"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_hcld_error_is_a_value_error():
    assert issubclass(io.HcldError, ValueError)


def test_written_files_get_the_usual_permissions_not_private_ones(tmp_path):
    mask = os.umask(0o022)
    try:
        path = io.atomic_write_text(tmp_path / "t.md", "x")
        with io.atomic_dir(tmp_path / "d") as tmp:
            (tmp / "f").write_text("y")
    finally:
        os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
