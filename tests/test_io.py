"""Atomic writes: a crash mid-write leaves the previous file (or nothing), never half a file."""

from __future__ import annotations

import errno
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


# -- writes that fail name the file meant -------------------------------------------------------

def test_a_file_in_the_way_of_the_folder_is_named_not_the_temp_file(tmp_path):
    blocker = tmp_path / "results"
    blocker.write_text("not a folder")
    with pytest.raises(io.HcldError) as err:
        io.atomic_write_json(blocker / "run" / "metrics.json", {"v": 1})
    message = str(err.value)
    assert message.startswith(f"cannot write {blocker / 'run' / 'metrics.json'}: ")
    assert f"{blocker} is a file, not a folder" in message and ".tmp" not in message
    with pytest.raises(io.HcldError, match=f"cannot write {blocker / 'd'}: .*is a file"):
        with io.atomic_dir(blocker / "d"):
            pass
    with pytest.raises(io.HcldError, match="a folder has that name"):
        io.atomic_write_text(tmp_path, "x")


@pytest.mark.parametrize("code, words", [
    (errno.ENOSPC, "the disk is full"), (errno.EDQUOT, "the disk is full"),
    (errno.EROFS, "the file system is read-only"), (errno.EACCES, "permission denied")])
def test_a_failed_write_says_why_and_leaves_nothing(tmp_path, monkeypatch, code, words):
    def failing_fsync(fd):
        raise OSError(code, os.strerror(code))

    io.atomic_write_text(tmp_path / "old.md", "old")
    monkeypatch.setattr(io.os, "fsync", failing_fsync)
    with pytest.raises(io.HcldError, match=f"cannot write {tmp_path / 'old.md'}: {words}"):
        io.atomic_write_text(tmp_path / "old.md", "new")
    with pytest.raises(io.HcldError, match=f"cannot write in out_dir {tmp_path}: {words}"):
        io.ensure_writable_dir(tmp_path, "out_dir")
    assert (tmp_path / "old.md").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["old.md"]  # no temp file, no probe


def test_ensure_writable_dir_creates_the_folder_and_leaves_no_probe(tmp_path):
    out = io.ensure_writable_dir(tmp_path / "a" / "b", "out_dir")
    assert out == tmp_path / "a" / "b" and out.is_dir() and list(out.iterdir()) == []


def test_ensure_writable_dir_names_what_is_in_the_way(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(io.HcldError, match=f"out_dir {tmp_path / 'f'} is a file, not a folder"):
        io.ensure_writable_dir(tmp_path / "f", "out_dir")
    with pytest.raises(io.HcldError, match=f"cannot write in out_dir {tmp_path / 'f' / 'g'}: "
                       f"{tmp_path / 'f'} is a file, not a folder"):
        io.ensure_writable_dir(tmp_path / "f" / "g", "out_dir")
    with pytest.raises(io.HcldError, match="out_dir /dev/full is a special file"):
        io.ensure_writable_dir("/dev/full", "out_dir")


_MOUNTED = r"""
import json, subprocess, sys
from pathlib import Path
from hcld_lib import io
root = Path(sys.argv[1])
for name, options in (("full", "size=64k"), ("ro", "ro")):
    (root / name).mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(root / name)],
                   check=True)
with open(root / "full" / "filler", "wb", buffering=0) as f:  # fill the disk up
    try:
        while True:
            f.write(b"x" * 4096)
    except OSError:
        pass
messages = {}
for key, call in (("dir_full", lambda: io.ensure_writable_dir(root / "full", "out_dir")),
                  ("dir_ro", lambda: io.ensure_writable_dir(root / "ro" / "x", "out_dir")),
                  ("write_full", lambda: io.atomic_write_json(root / "full" / "m.json", {}))):
    try:
        call()
        messages[key] = None
    except io.HcldError as err:
        messages[key] = str(err)
messages["left"] = sorted(p.name for p in (root / "full").iterdir())
print(json.dumps(messages))
"""


def test_a_full_disk_and_a_read_only_mount_are_reported_by_name(tmp_path):
    """Real file systems: a 64 KiB tmpfs filled up and a read-only tmpfs, mounted in a private
    mount namespace (``unshare``), which root or a user namespace allows."""
    import json
    import shutil
    import subprocess
    import sys

    if shutil.which("unshare") is None or shutil.which("mount") is None:
        pytest.skip("needs unshare and mount (util-linux)")
    if subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode != 0:
        pytest.skip("no mount namespace allowed here (unshare -rm failed)")
    out = subprocess.run(["unshare", "-rm", sys.executable, "-c", _MOUNTED, str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    full, ro = tmp_path / "full", tmp_path / "ro" / "x"
    assert got["dir_full"].startswith(f"cannot write in out_dir {full}: the disk is full")
    assert got["dir_ro"].startswith(f"cannot write in out_dir {ro}: the file system is read-only")
    assert got["write_full"].startswith(f"cannot write {full / 'm.json'}: the disk is full")
    assert got["left"] == ["filler"]  # neither a probe nor a temp file stayed behind


# -- checked readers ------------------------------------------------------------------------------

class _RunsCode:
    """A pickle that runs a shell command when loaded."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path, writer):
    import pickle

    import torch

    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pt"
    payload = {"history": [], "model": _RunsCode(marker)}
    if writer == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(io.HcldError) as err:
        io.load_torch(path, what="run checkpoint", remedy="delete it and run the run again")
    message = str(err.value)
    assert message.startswith(f"run checkpoint {path} ")
    assert "refused and nothing of it ran" in message
    assert message.endswith("delete it and run the run again")
    if writer == "torch":  # pickle protocol 2: the safe unpickler reaches the call and names it
        assert "holds Python objects (it would call posix.system)" in message
    else:  # protocol 4 (pickle's default): it stops at the first instruction it does not know
        assert "is damaged, or is a pickle with instructions a torch file never holds" in message
    assert not marker.exists()


def _checkpoint(path):
    import torch

    torch.save({"history": [{"epoch": 1}], "model": {"w": torch.ones(3)}}, path)
    return path


@pytest.mark.parametrize("damage", ["truncated", "random", "empty", "text"])
def test_a_damaged_checkpoint_is_named_and_the_remedy_given(tmp_path, damage):
    path = _checkpoint(tmp_path / "checkpoint.pt")
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2],
                      "random": np.random.default_rng(0).bytes(700), "empty": b"",
                      "text": b"hello"}[damage])
    with pytest.raises(io.HcldError, match=rf"^checkpoint {path} is (truncated, )?damaged.*: "
                       r"delete it and re-run the step that wrote it$"):
        io.load_torch(path)


def test_load_torch_checks_keys_and_loads_what_it_should(tmp_path):
    import torch

    path = _checkpoint(tmp_path / "checkpoint.pt")
    loaded = io.load_torch(path, keys=("history", "model"))
    assert loaded["history"] == [{"epoch": 1}] and torch.equal(loaded["model"]["w"], torch.ones(3))
    with pytest.raises(io.HcldError, match=r"checkpoint .*checkpoint.pt lacks the key\(s\) "
                       r"'optimizer', 'rng' \(it has 'history', 'model'\)"):
        io.load_torch(path, keys=("history", "optimizer", "rng"))
    torch.save([1, 2], path)
    with pytest.raises(io.HcldError, match="holds a list, not the mapping with the keys 'history'"):
        io.load_torch(path, keys=("history",))
    with pytest.raises(io.HcldError, match=f"checkpoint {tmp_path / 'nope.pt'} does not exist"):
        io.load_torch(tmp_path / "nope.pt")


def test_numpy_values_load_only_when_allowed(tmp_path):
    import torch

    path = tmp_path / "rng.pt"
    state = np.random.RandomState(7).get_state()  # an RNG state, as a training checkpoint keeps
    torch.save({"rng": state, "x": np.float64(2.5)}, path)
    with pytest.raises(io.HcldError, match="would call numpy"):
        io.load_torch(path)
    loaded = io.load_torch(path, safe_globals=io.numpy_safe_globals())
    assert loaded["rng"][0] == "MT19937" and loaded["x"] == 2.5
    np.testing.assert_array_equal(loaded["rng"][1], state[1])


def test_read_json_names_a_truncated_or_incomplete_file(tmp_path):
    path = tmp_path / "metrics.json"
    io.atomic_write_json(path, {"history": [1], "test": {"ua": 0.5}})
    assert io.read_json(path, keys=("history",))["test"] == {"ua": 0.5}
    path.write_text(path.read_text()[:20])
    with pytest.raises(io.HcldError, match=rf"^run metrics {path} is not valid JSON \(.* at line "
                       r"\d+, column \d+; truncated or damaged\?\): re-run it$"):
        io.read_json(path, what="run metrics", remedy="re-run it")
    path.write_text("")
    with pytest.raises(io.HcldError, match=f"JSON file {path} is empty"):
        io.read_json(path)
    path.write_bytes(b"\xff\xfe{")
    with pytest.raises(io.HcldError, match="is not UTF-8 text"):
        io.read_json(path)
    path.write_text('{"test": 1}')
    with pytest.raises(io.HcldError, match=r"lacks the key\(s\) 'history' \(it has 'test'\)"):
        io.read_json(path, keys=("history",))
    with pytest.raises(io.HcldError, match="is a folder, not a file"):
        io.read_json(tmp_path)


def test_read_csv_names_missing_columns_and_empty_files(tmp_path):
    path = tmp_path / "history.csv"
    path.write_text("epoch,loss\n1,0.5\n")
    assert io.read_csv(path, columns=("epoch",))["loss"].tolist() == [0.5]
    with pytest.raises(io.HcldError, match=r"history .* lacks the column\(s\) 'ua' \(it has "
                       r"'epoch', 'loss'\)"):
        io.read_csv(path, what="history", columns=("epoch", "ua"))
    path.write_text("")
    with pytest.raises(io.HcldError, match=f"table {path} is empty"):
        io.read_csv(path)
    with pytest.raises(io.HcldError, match="does not exist"):
        io.read_csv(tmp_path / "none.csv")


def test_array_readers_refuse_pickles_and_name_damaged_files(tmp_path):
    good = tmp_path / "e.npz"
    io.atomic_save_npz(good, x=np.eye(2), y=np.array(["a"]))
    assert sorted(io.load_npz(good, keys=("x",))) == ["x", "y"]
    with pytest.raises(io.HcldError, match=r"lacks the key\(s\) 'z'"):
        io.load_npz(good, keys=("z",))
    evil = tmp_path / "evil.npz"
    np.savez(evil, x=np.array([_RunsCode(tmp_path / "pwned")], dtype=object))
    with pytest.raises(io.HcldError, match=f"array file {evil} holds Python objects"):
        io.load_npz(evil)
    np.save(tmp_path / "evil.npy", np.array([_RunsCode(tmp_path / "pwned")], dtype=object))
    with pytest.raises(io.HcldError, match="holds Python objects"):
        io.load_npy(tmp_path / "evil.npy")
    assert not (tmp_path / "pwned").exists()
    cut = tmp_path / "cut.npz"
    cut.write_bytes(good.read_bytes()[:100])
    with pytest.raises(io.HcldError, match=f"array file {cut} is truncated or not an .npz"):
        io.load_npz(cut)
    np.save(tmp_path / "a.npy", np.arange(4))
    np.testing.assert_array_equal(io.load_npy(tmp_path / "a.npy"), np.arange(4))
    with pytest.raises(io.HcldError, match="is an .npy array, not an .npz archive"):
        io.load_npz(tmp_path / "a.npy")
    (tmp_path / "b.npy").write_bytes((tmp_path / "a.npy").read_bytes()[:-8])
    with pytest.raises(io.HcldError, match="is truncated or not an .npy array"):
        io.load_npy(tmp_path / "b.npy")
