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
