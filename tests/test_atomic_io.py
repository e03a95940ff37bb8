"""Atomic writes: an error mid-write leaves the old file and no temporary behind."""

import json
import os

import numpy as np
import pytest

from retformer_jax import atomic_io


def test_replacing_keeps_the_old_file_on_error(tmp_path):
  path = tmp_path / "sub" / "x.json"
  atomic_io.write_json(str(path), {"a": 1})
  with pytest.raises(RuntimeError):
    with atomic_io.replacing(str(path), "w") as f:
      f.write("{broken")
      raise RuntimeError("killed mid-write")
  assert json.loads(path.read_text()) == {"a": 1}
  assert os.listdir(path.parent) == ["x.json"]


def test_npy_npz_text_round_trip(tmp_path):
  atomic_io.save_npy(str(tmp_path / "a.npy"), np.arange(5))
  atomic_io.save_npz(str(tmp_path / "b.npz"), x=np.ones(3))
  atomic_io.write_text(str(tmp_path / "c.txt"), "hello")
  np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.arange(5))
  np.testing.assert_array_equal(np.load(tmp_path / "b.npz")["x"], np.ones(3))
  assert (tmp_path / "c.txt").read_text() == "hello"
  atomic_io.write_json(str(tmp_path / "d.json"), {"n": np.int64(3), "v": np.zeros(2)})
  assert json.loads((tmp_path / "d.json").read_text()) == {"n": 3, "v": [0.0, 0.0]}


def test_build_folder_writes_once_and_replaces_stale(tmp_path):
  folder = tmp_path / "model"
  calls = []

  def write(tmp):
    calls.append(tmp)
    with open(os.path.join(tmp, "done"), "w") as f:
      f.write(str(len(calls)))

  complete = lambda f: os.path.exists(os.path.join(f, "done"))  # noqa: E731
  atomic_io.build_folder(str(folder), complete, write)
  atomic_io.build_folder(str(folder), complete, write)
  assert len(calls) == 1 and (folder / "done").read_text() == "1"
  atomic_io.build_folder(str(folder), lambda f: False, write)  # stale: rebuilt in place
  assert (folder / "done").read_text() == "2"
  assert sorted(os.listdir(tmp_path)) == ["model"]  # no temporary folders left


def test_build_folder_error_leaves_nothing(tmp_path):
  def write(tmp):
    raise OSError("disk full")

  with pytest.raises(OSError):
    atomic_io.build_folder(str(tmp_path / "m"), lambda f: False, write)
  assert os.listdir(tmp_path) == []


@pytest.fixture(params=[0o022, 0o002], ids=["umask022", "umask002"])
def mask(request):
  old = os.umask(request.param)
  try:
    yield request.param
  finally:
    os.umask(old)


def _mode(path) -> int:
  return os.stat(path).st_mode & 0o777


def test_umask_is_read_without_changing_it(mask, monkeypatch):
  assert atomic_io.umask() == mask
  monkeypatch.setattr(atomic_io, "_PROC_STATUS", "/nonexistent/status")  # the portable path
  assert atomic_io.umask() == mask
  assert os.umask(mask) == mask  # left as it was


def test_written_files_honour_the_umask(tmp_path, mask):
  """Modes as open() gives them, so other users / hosts on a shared workdir can read them."""
  writers = {"a.json": lambda p: atomic_io.write_json(p, {"a": 1}),
             "b.txt": lambda p: atomic_io.write_text(p, "b"),
             "c.npy": lambda p: atomic_io.save_npy(p, np.arange(3)),
             "d.npz": lambda p: atomic_io.save_npz(p, x=np.ones(2))}
  for name, write in writers.items():
    path = str(tmp_path / "new" / name)
    write(path)
    assert _mode(path) == 0o666 & ~mask, name
    os.chmod(path, 0o600)  # a replaced file gets the umask's mode, not the old file's
    write(path)
    assert _mode(path) == 0o666 & ~mask, name
  assert _mode(tmp_path / "new") == 0o777 & ~mask


def test_built_folder_honours_the_umask(tmp_path, mask):
  def write(tmp):
    os.makedirs(os.path.join(tmp, "sub"))
    with open(os.path.join(tmp, "sub", "f"), "w") as f:
      f.write("x")

  folder = atomic_io.build_folder(str(tmp_path / "model"), lambda f: False, write)
  assert _mode(folder) == 0o777 & ~mask
  assert _mode(os.path.join(folder, "sub")) == 0o777 & ~mask
  assert _mode(os.path.join(folder, "sub", "f")) == 0o666 & ~mask


def test_temporaries_honour_the_umask(tmp_path, mask):
  fd, path = atomic_io.mkstemp(str(tmp_path), suffix=".x")
  os.close(fd)
  assert _mode(path) == 0o666 & ~mask
  assert _mode(atomic_io.mkdtemp(str(tmp_path))) == 0o777 & ~mask
