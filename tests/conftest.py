"""Shared test fixtures: paths to the repo and to the real split lists beside it."""

from __future__ import annotations

import os
import pathlib
import socket

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
  return REPO


@pytest.fixture(scope="session")
def lt_splits_dir() -> pathlib.Path:
  """The real OLTR split lists, in shared/ beside the repo (override: RETFORMER_LT_SPLITS)."""
  path = pathlib.Path(os.environ.get("RETFORMER_LT_SPLITS",
                                     REPO.parent / "shared" / "data" / "lt_splits"))
  assert path.is_dir(), f"split lists not found at {path}; set RETFORMER_LT_SPLITS"
  return path


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture
def port() -> int:
  return free_port()
