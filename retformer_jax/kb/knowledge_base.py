"""A KB as one table: the concatenation, in config order, of its sources' embedding stores.

Rows are global (source 0's rows, then source 1's, ...); gathers accept int64 rows of any shape
and return arrays of that shape (+ [d] for vectors), reading only the rows asked for.
`open_kb` opens the KB of a config (its config.kb.sources stores).
"""

from __future__ import annotations

import numpy as np

from retformer_jax.kb import store as store_lib


class KnowledgeBase:

  def __init__(self, stores: list[store_lib.EmbeddingStore]):
    if not stores:
      raise ValueError("A knowledge base needs at least one store.")
    self.stores = stores
    self.offsets = np.cumsum([0] + [s.count for s in stores]).astype(np.int64)
    self.size = int(self.offsets[-1])
    self.dim = stores[0].dim
    self.encoder = stores[0].encoder
    self.source_names = [s.name for s in stores]

  def offset_of(self, source_name: str) -> int | None:
    """First global row of a source, or None when the KB does not hold it."""
    if source_name not in self.source_names:
      return None
    return int(self.offsets[self.source_names.index(source_name)])

  def _locate(self, rows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = np.asarray(rows, np.int64)
    flat = rows.reshape(-1)
    if flat.size and (flat.min() < 0 or flat.max() >= self.size):
      raise IndexError(f"KB rows must be in [0, {self.size}); got min {flat.min()}, max "
                       f"{flat.max()}.")
    which = np.searchsorted(self.offsets, flat, side="right") - 1
    return rows, which, flat - self.offsets[which]

  def _gather(self, rows, field: str, width: int | None):
    rows, which, local = self._locate(rows)
    shape = rows.shape + ((width,) if width else ())
    first = getattr(self.stores[0], field)
    out = np.empty((len(local),) + ((width,) if width else ()), first.dtype)
    for s in np.unique(which):
      sel = np.nonzero(which == s)[0]
      loc = local[sel]
      order = np.argsort(loc, kind="stable")  # sorted reads are sequential on a memmap
      out[sel[order]] = np.asarray(getattr(self.stores[s], field)[loc[order]])
    return out.reshape(shape)

  def image(self, rows) -> np.ndarray:
    return self._gather(rows, "image", self.dim)

  def text(self, rows) -> np.ndarray:
    return self._gather(rows, "text", self.dim)

  def labels(self, rows) -> np.ndarray:
    return self._gather(rows, "labels", None)

  def ids(self, rows) -> np.ndarray:
    return self._gather(rows, "ids", None)

  def sources(self, rows) -> np.ndarray:
    """Index into `source_names` per row."""
    rows, which, _ = self._locate(rows)
    return which.reshape(rows.shape)

  def captions(self, rows) -> list[str]:
    rows, which, local = self._locate(rows)
    return [self.stores[w].captions([r])[0] for w, r in zip(which, local)]


def open_kb(workdir: str, config) -> KnowledgeBase:
  """The KB over config.kb.sources, its stores checked to share one encoder and dim."""
  return KnowledgeBase(store_lib.open_stores(workdir, config))
