"""Where the KB stages keep their outputs, and the fingerprint / JSON helpers they share.

Workdir layout (shared with training / eval / RetLLM):
  WORKDIR/demo_clip/                    embedded demo CLIP (config.clip.path == "")
  WORKDIR/store/<source_name>/          one embedding store per source ("demo:train", "web-cc")
  WORKDIR/index/<kb_name>/              ANN index over the KB's sources
  WORKDIR/neighbors/<kb_name>/<split>/  top-k per query split

Source names and their grammar: kb/source_spec.py.
"""

from __future__ import annotations

import hashlib
import json
import os

from retformer_jax import atomic_io


def store_dir(workdir: str, name: str) -> str:
  return os.path.join(workdir, "store", name)


def index_dir(workdir: str, kb_name: str) -> str:
  return os.path.join(workdir, "index", kb_name)


def neighbors_dir(workdir: str, kb_name: str, split: str) -> str:
  return os.path.join(workdir, "neighbors", kb_name, split)


def fingerprint(obj) -> str:
  """Stable hash of a JSON-able description of a stage's inputs."""
  blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
  return hashlib.sha256(blob.encode()).hexdigest()[:24]


def write_json(path: str, obj) -> None:
  """Atomic JSON write: readers see the old file or the new one, never a half."""
  atomic_io.write_json(path, obj)


def read_json(path: str):
  with open(path) as f:
    return json.load(f)
