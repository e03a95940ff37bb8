"""Atomic writes: a reader (or a rerun after a crash) sees the old file or the new one, never
half of one. Everything the pipeline persists goes through here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from typing import Callable, Iterator

import numpy as np


@contextlib.contextmanager
def replacing(path: str, mode: str = "wb") -> Iterator:
  """Yields a file opened on a temporary name beside `path`; on a clean exit the data is
  fsynced and renamed onto `path`, on an error the temporary file is removed."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=os.path.basename(path)[-24:])
  try:
    with os.fdopen(fd, mode) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def write_json(path: str, obj, indent: int = 1) -> None:
  with replacing(path, "w") as f:
    json.dump(obj, f, indent=indent, sort_keys=True, default=_json_default)


def write_text(path: str, text: str) -> None:
  with replacing(path, "w") as f:
    f.write(text)


def save_npy(path: str, array) -> None:
  with replacing(path, "wb") as f:
    np.save(f, np.ascontiguousarray(array))


def save_npz(path: str, **arrays) -> None:
  with replacing(path, "wb") as f:
    np.savez(f, **arrays)


def build_folder(folder: str, is_complete: Callable[[str], bool],
                 write: Callable[[str], None]) -> str:
  """Makes `folder` by `write(tmp_dir)` then one rename, unless `is_complete(folder)` already.

  A crash never leaves a half-written folder; a stale one is replaced; when several processes
  race with the same inputs, the first rename wins and the others keep its result.
  """
  folder = os.path.abspath(folder)
  if is_complete(folder):
    return folder
  parent = os.path.dirname(folder)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=".tmp-" + os.path.basename(folder) + "-")
  try:
    write(tmp)
    if os.path.exists(folder):  # stale or incomplete: set it aside, then drop it
      old = tempfile.mkdtemp(dir=parent, prefix=".old-" + os.path.basename(folder) + "-")
      os.replace(folder, os.path.join(old, "stale"))
      shutil.rmtree(old, ignore_errors=True)
    try:
      os.replace(tmp, folder)
    except OSError:
      if not is_complete(folder):
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return folder


def _json_default(obj):
  if isinstance(obj, np.generic):
    return obj.item()
  if isinstance(obj, np.ndarray):
    return obj.tolist()
  return str(obj)
