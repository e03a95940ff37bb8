"""Least-recently-used maps for the scorer: prompt-prefix K/V by bytes, vision features by count.

A scoring run touches each gallery image many times (Flickr30k: about 25 caption queries list
each image among their 5 candidates), so what was computed for an image is kept across
`score_pairs` calls; the bound keeps memory flat whatever the gallery size.
"""

from __future__ import annotations

import collections
from typing import Any, Hashable

import jax


def tree_bytes(value: Any) -> int:
  """Bytes held by the arrays of a pytree (device or host)."""
  return sum(int(getattr(a, "nbytes", 0)) for a in jax.tree_util.tree_leaves(value))


class LRU:
  """Map evicting its least recently used entries beyond max_bytes and/or max_items.

  max_bytes / max_items: None = no bound on that measure; 0 bytes keeps nothing. An entry
  larger than max_bytes alone is not kept. hits / misses / evictions count get and put calls.
  """

  def __init__(self, max_bytes: int | None = None, max_items: int | None = None):
    if max_bytes is not None and max_bytes < 0:
      raise ValueError(f"max_bytes={max_bytes} must be >= 0 (None: unbounded).")
    if max_items is not None and max_items < 0:
      raise ValueError(f"max_items={max_items} must be >= 0 (None: unbounded).")
    self.max_bytes, self.max_items = max_bytes, max_items
    self._data: collections.OrderedDict[Hashable, tuple[Any, int]] = collections.OrderedDict()
    self.bytes = 0
    self.hits = self.misses = self.evictions = 0

  def __len__(self) -> int:
    return len(self._data)

  def __contains__(self, key: Hashable) -> bool:
    return key in self._data

  def get(self, key: Hashable):
    """The value (now the most recently used), or None."""
    hit = self._data.get(key)
    if hit is None:
      self.misses += 1
      return None
    self.hits += 1
    self._data.move_to_end(key)
    return hit[0]

  def put(self, key: Hashable, value: Any, nbytes: int | None = None) -> None:
    nbytes = tree_bytes(value) if nbytes is None else int(nbytes)
    if key in self._data:
      self.bytes -= self._data.pop(key)[1]
    if (self.max_bytes is not None and nbytes > self.max_bytes) or self.max_items == 0:
      return
    self._data[key] = (value, nbytes)
    self.bytes += nbytes
    while ((self.max_bytes is not None and self.bytes > self.max_bytes) or
           (self.max_items is not None and len(self._data) > self.max_items)):
      _, (_, b) = self._data.popitem(last=False)
      self.bytes -= b
      self.evictions += 1

  def clear(self) -> None:
    self._data.clear()
    self.bytes = 0
