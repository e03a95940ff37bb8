"""Faiss backend: any index-factory string, inner product on L2-normalised vectors.

Default "HNSW{M},Flat" with efConstruction / efSearch from the config; IVF factories (e.g.
"IVF65536,PQ64x4fs" for a billion-scale KB) are trained on a seeded sample and searched with
`nprobe`; `mmap` memory-maps the saved index instead of reading it into RAM.
"""

from __future__ import annotations

import os

import numpy as np

from retformer_jax import atomic_io

FILE = "index.faiss"


def factory_string(cfg) -> str:
  return cfg.factory or f"HNSW{cfg.hnsw_m},Flat"


class FaissIndex:
  name = "faiss"

  def __init__(self, dim: int, cfg, index=None):
    import faiss  # imported on use: only the faiss backend needs it, and it loads slowly

    self.cfg = cfg
    self.dim = dim
    if index is None:
      try:
        index = faiss.index_factory(dim, factory_string(cfg), faiss.METRIC_INNER_PRODUCT)
      except RuntimeError as e:
        raise ValueError(f"config.index.faiss.factory={factory_string(cfg)!r} is not a valid "
                         f"faiss index_factory string ({e}).") from e
      hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
      if hnsw is not None:
        hnsw.efConstruction = int(cfg.ef_construction)
    self.index = index

  @property
  def ntotal(self) -> int:
    return int(self.index.ntotal)

  def build(self, x_nd: np.ndarray, seed: int = 0) -> None:
    """Trains (when the factory needs it) on a seeded sample, then adds every vector."""
    if not self.index.is_trained:
      n = len(x_nd)
      rng = np.random.default_rng(seed)
      take = np.sort(rng.choice(n, min(n, int(self.cfg.train_size)), replace=False))
      self.index.train(np.asarray(x_nd[take], np.float32))
    self.add(x_nd)

  def add(self, x_nd: np.ndarray, chunk: int = 65536) -> None:
    if not self.index.is_trained:
      raise ValueError("faiss index is not trained; call build() first.")
    for lo in range(0, len(x_nd), chunk):
      self.index.add(np.ascontiguousarray(x_nd[lo:lo + chunk], np.float32))

  def _set_search_params(self) -> None:
    import faiss  # imported on use: only the faiss backend needs it, and it loads slowly

    ps = faiss.ParameterSpace()
    inner = faiss.downcast_index(self.index)
    if getattr(inner, "hnsw", None) is not None:
      inner.hnsw.efSearch = int(self.cfg.ef_search)
    try:
      ivf = faiss.extract_index_ivf(self.index)
    except RuntimeError:
      ivf = None
    if ivf is not None:
      ps.set_index_parameter(self.index, "nprobe", int(self.cfg.nprobe))
      q = faiss.downcast_index(ivf.quantizer)
      if getattr(q, "hnsw", None) is not None:
        q.hnsw.efSearch = max(int(self.cfg.ef_search), int(self.cfg.nprobe))

  def search(self, q_md: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    self._set_search_params()
    sims, ids = self.index.search(np.ascontiguousarray(q_md, np.float32), int(k))
    return sims.astype(np.float32), ids.astype(np.int64)

  def save(self, folder: str) -> None:
    import faiss  # imported on use: only the faiss backend needs it, and it loads slowly

    os.makedirs(folder, exist_ok=True)
    fd, tmp = atomic_io.mkstemp(folder, prefix=".tmp-", suffix=".faiss")
    os.close(fd)
    try:
      faiss.write_index(self.index, tmp)
      os.replace(tmp, os.path.join(folder, FILE))
    except BaseException:
      if os.path.exists(tmp):
        os.unlink(tmp)
      raise

  @classmethod
  def load(cls, folder: str, dim: int, cfg, vectors=None) -> "FaissIndex":
    import faiss  # imported on use: only the faiss backend needs it, and it loads slowly

    flags = faiss.IO_FLAG_MMAP if cfg.mmap else 0
    index = faiss.read_index(os.path.join(folder, FILE), flags)
    if index.d != dim:
      raise ValueError(f"{folder}: faiss index has dim {index.d}, the store has {dim}.")
    return cls(dim, cfg, index=index)
