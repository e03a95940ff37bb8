"""Atomic writes: a reader (or a rerun after a crash) sees the old file or the new one, never
half of one. Everything the pipeline persists goes through here.

Files and folders end with the modes a plain open() / os.makedirs() would give (0666 / 0777
minus the umask), not tempfile's private 0600 / 0700, so that other users and hosts sharing a
workdir (NFS, gcsfuse) can read them.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import threading
from typing import Callable, Iterator

import numpy as np

_PROC_STATUS = "/proc/self/status"
_UMASK_LOCK = threading.Lock()
# chmod refused by a file system that fixes modes itself (some FUSE mounts): keep its modes.
_NO_MODES = (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS)


def umask() -> int:
  """The process umask, read without changing it (Linux /proc); elsewhere set and restored at
  once, so another thread creating a file in between gets at most the stricter 0o077."""
  try:
    with open(_PROC_STATUS) as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  with _UMASK_LOCK:
    mask = os.umask(0o077)
    os.umask(mask)
  return mask


def _chmod(target, mode: int) -> None:
  try:
    if isinstance(target, int):
      os.fchmod(target, mode)
    else:
      os.chmod(target, mode)
  except OSError as e:
    if e.errno not in _NO_MODES:
      raise


def mkstemp(dir: str, prefix: str = ".tmp-", suffix: str = "") -> tuple[int, str]:  # noqa: A002
  """tempfile.mkstemp with the mode open() would give (0666 & ~umask) instead of 0600."""
  fd, path = tempfile.mkstemp(dir=dir, prefix=prefix, suffix=suffix)
  try:
    _chmod(fd if hasattr(os, "fchmod") else path, 0o666 & ~umask())
  except BaseException:
    os.close(fd)
    os.unlink(path)
    raise
  return fd, path


def mkdtemp(dir: str, prefix: str = ".tmp-") -> str:  # noqa: A002
  """tempfile.mkdtemp with the mode os.makedirs would give (0777 & ~umask) instead of 0700."""
  path = tempfile.mkdtemp(dir=dir, prefix=prefix)
  try:
    _chmod(path, 0o777 & ~umask())
  except BaseException:
    os.rmdir(path)
    raise
  return path


@contextlib.contextmanager
def replacing(path: str, mode: str = "wb") -> Iterator:
  """Yields a file opened on a temporary name beside `path`; on a clean exit the data is
  fsynced and renamed onto `path`, on an error the temporary file is removed."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = mkstemp(directory, prefix=".tmp-", suffix=os.path.basename(path)[-24:])
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
  tmp = mkdtemp(parent, prefix=".tmp-" + os.path.basename(folder) + "-")
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
