"""Shared test fixtures: paths to the repo and to the OLTR split lists shipped for the tests."""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import os
import pathlib
import socket

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
LT_FIXTURES = REPO / "tests" / "fixtures" / "lt_splits"


@pytest.fixture(scope="session")
def repo_root() -> pathlib.Path:
  return REPO


def _checksums() -> dict[str, str]:
  lines = (LT_FIXTURES / "SHA256SUMS").read_text(encoding="utf-8").splitlines()
  return {name: digest for digest, name in (line.split() for line in lines if line.strip())}


@pytest.fixture(scope="session")
def lt_splits_dir(tmp_path_factory) -> pathlib.Path:
  """A folder of the real OLTR split lists as plain `.txt`, as `data.lt_splits_dir` expects.

  The lists the package does not ship are gzipped in tests/fixtures/lt_splits; the Places-LT
  ones come from the package. Both are decompressed here and checked against the SHA-256 of the
  original lists, so a test comparing against "the real lists" still means it.
  Override with RETFORMER_LT_SPLITS=<folder of the plain lists>.
  """
  if "RETFORMER_LT_SPLITS" in os.environ:
    path = pathlib.Path(os.environ["RETFORMER_LT_SPLITS"])
    assert path.is_dir(), f"RETFORMER_LT_SPLITS={path} is not a folder"
    return path
  out = tmp_path_factory.mktemp("lt_splits")
  shipped = importlib.resources.files("retformer_jax.data") / "lt_splits"
  for name, digest in _checksums().items():
    fixture = LT_FIXTURES / (name + ".gz")
    packed = fixture.read_bytes() if fixture.is_file() else (shipped / (name + ".gz")).read_bytes()
    text = gzip.decompress(packed)
    assert hashlib.sha256(text).hexdigest() == digest, f"{name} differs from the OLTR list"
    (out / name).write_bytes(text)
  return out


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.fixture
def port() -> int:
  return free_port()
