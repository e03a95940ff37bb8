"""Multi-host coordination: who works on what, and waiting for the others.

Work is split by shard number (shard s goes to process s mod P); joins and index builds run on
process 0 while the others wait at a barrier. With one process everything is a no-op.
"""

from __future__ import annotations

import jax
from jax.experimental import multihost_utils


def process() -> tuple[int, int]:
  return jax.process_index(), jax.process_count()


def barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def mine(items, index: int | None = None, count: int | None = None) -> list:
  """The round-robin part of `items` that this process owns."""
  p, n = process()
  p = p if index is None else index
  n = n if count is None else count
  return [x for i, x in enumerate(items) if i % n == p]
