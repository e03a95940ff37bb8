"""Faiss backend: any index-factory string, inner product on L2-normalised vectors.

Default "HNSW{M},Flat" with efConstruction / efSearch from the config; IVF factories (e.g.
"IVF65536,PQ64x4fs" for a billion-scale KB) are trained on a seeded sample and searched with
`nprobe`; "{nlist}" in the factory (e.g. "IVF{nlist},PQ128x4fs") becomes nlist_factor x sqrt(rows)
of each segment, so one setting fits segments of any size; `mmap` memory-maps the saved index
instead of reading it into RAM. With config.index.rerank_depth > 0 the codes only find candidates
and the store's fp16 vectors rank them (kb/rescore.py): PQ codes are then all the RAM it needs.
"""

from __future__ import annotations

import os

import numpy as np

from retformer_jax import atomic_io

FILE = "index.faiss"


def _faiss():
  """faiss, its OpenMP threads set to sleep when idle (unless the environment says otherwise):
  spinning threads on shared, busy cores made builds 10-20x slower."""
  os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
  import faiss  # imported on use: only the faiss backend needs it, and it loads slowly

  return faiss


def factory_string(cfg, n: int = 1) -> str:
  """The factory with "{nlist}" set for a segment of n rows: nlist_factor x sqrt(n), in [1, n]."""
  factory = cfg.factory or f"HNSW{cfg.hnsw_m},Flat"
  if "{nlist}" in factory:
    nlist = min(max(1, n), max(1, int(float(cfg.nlist_factor) * np.sqrt(max(1, n)))))
    factory = factory.replace("{nlist}", str(nlist))
  return factory


class FaissIndex:
  name = "faiss"

  def __init__(self, dim: int, cfg, index=None):
    self.cfg = cfg
    self.dim = dim
    self.index = index if index is not None else self._new_index(1)

  def _new_index(self, n: int):
    """An empty index from the factory string, sized for n rows ("{nlist}")."""
    faiss = _faiss()
    factory = factory_string(self.cfg, n)
    try:
      index = faiss.index_factory(self.dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as e:
      raise ValueError(f"config.index.faiss.factory={factory!r} is not a valid faiss "
                       f"index_factory string ({e}).") from e
    hnsw = getattr(faiss.downcast_index(index), "hnsw", None)
    if hnsw is not None:
      hnsw.efConstruction = int(self.cfg.ef_construction)
    return index

  @property
  def ntotal(self) -> int:
    return int(self.index.ntotal)

  def build(self, x_nd: np.ndarray, seed: int = 0) -> None:
    """Trains (when the factory needs it) on a seeded sample, then adds every vector."""
    n = len(x_nd)
    if "{nlist}" in (self.cfg.factory or ""):
      self.index = self._new_index(n)
    if not self.index.is_trained:
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
    faiss = _faiss()
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
    faiss = _faiss()
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
    faiss = _faiss()
    flags = faiss.IO_FLAG_MMAP if cfg.mmap else 0
    index = faiss.read_index(os.path.join(folder, FILE), flags)
    if index.d != dim:
      raise ValueError(f"{folder}: faiss index has dim {index.d}, the store has {dim}.")
    return cls(dim, cfg, index=index)
