"""ScaNN backend: k-means tree + anisotropic asymmetric hashing + exact reordering (dot product).

Leaves default to about sqrt(N), of which a tenth are searched; tiny segments (< 512 vectors)
use brute force. reorder_k > 0 keeps a float32 copy of the vectors in the index for exact
re-scoring; reorder_k = 0 keeps only the 4-bit codes, and config.index.rerank_depth re-scores
from the (memory-mapped) store instead, which is how a billion-scale KB fits in RAM. `add` rebuilds over the old and new vectors (ScaNN trees are trained on their
data); growing a KB adds a new segment instead (kb/index.py), which needs no rebuild.
"""

from __future__ import annotations

import os
import shutil

import numpy as np

from retformer_jax import atomic_io

_MIN_TREE = 512


class ScannIndex:
  name = "scann"

  def __init__(self, dim: int, cfg, searcher=None, vectors=None):
    self.dim, self.cfg = dim, cfg
    self.searcher = searcher
    self._vectors = vectors

  @property
  def ntotal(self) -> int:
    return 0 if self.searcher is None else int(self.searcher.size())

  def _leaves(self, n: int) -> tuple[int, int]:
    leaves = int(self.cfg.num_leaves) or max(1, int(round(np.sqrt(n))))
    leaves = max(1, min(leaves, n // 4))
    search = int(self.cfg.num_leaves_to_search) or max(1, leaves // 10)
    return leaves, min(search, leaves)

  def build(self, x_nd: np.ndarray, seed: int = 0) -> None:
    import scann  # imported on use: only the scann backend needs it, and it loads slowly

    del seed  # ScaNN's k-means and AH training use their own fixed seed
    db = np.ascontiguousarray(x_nd, np.float32)
    n = len(db)
    builder = scann.scann_ops_pybind.builder(db, 10, "dot_product")
    if n < _MIN_TREE:
      builder = builder.score_brute_force()
    else:
      leaves, search = self._leaves(n)
      builder = builder.tree(num_leaves=leaves, num_leaves_to_search=search,
                             training_sample_size=min(n, int(self.cfg.training_sample_size)))
      builder = builder.score_ah(int(self.cfg.dims_per_block),
                                 anisotropic_quantization_threshold=float(
                                     self.cfg.anisotropic_threshold))
      if int(self.cfg.reorder_k) > 0:  # 0: no in-RAM float copy (use index.rerank_depth)
        builder = builder.reorder(int(self.cfg.reorder_k))
    self.searcher = builder.build()
    self._vectors = x_nd

  def add(self, x_nd: np.ndarray) -> None:
    if self._vectors is None and self.searcher is not None:
      raise ValueError("This ScaNN index was loaded without its vectors; load it with "
                       "vectors=... (the store's image array) to add to it.")
    old = np.zeros((0, self.dim), np.float32) if self._vectors is None else self._vectors
    self.build(np.concatenate([np.asarray(old, np.float32), np.asarray(x_nd, np.float32)]))

  def search(self, q_md: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    k_eff = min(int(k), self.ntotal)
    m = len(q_md)
    sims = np.full((m, k), -np.inf, np.float32)
    ids = np.full((m, k), -1, np.int64)
    if k_eff == 0 or m == 0:
      return sims, ids
    kw = {"final_num_neighbors": k_eff}
    if self.ntotal >= _MIN_TREE:
      kw["leaves_to_search"] = self._leaves(self.ntotal)[1]
      if int(self.cfg.reorder_k) > 0:
        kw["pre_reorder_num_neighbors"] = max(k_eff, int(self.cfg.reorder_k))
    q = np.ascontiguousarray(q_md, np.float32)
    fn = self.searcher.search_batched_parallel if m >= 256 else self.searcher.search_batched
    got_ids, got_sims = fn(q, **kw)
    got_ids = np.asarray(got_ids, np.int64)
    ids[:, :got_ids.shape[1]] = got_ids
    sims[:, :got_ids.shape[1]] = np.asarray(got_sims, np.float32)
    return sims, ids

  def save(self, folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    tmp = atomic_io.mkdtemp(folder, prefix=".tmp-scann-")
    self.searcher.serialize(tmp, relative_path=True)
    final = os.path.join(folder, "scann")
    if os.path.exists(final):
      shutil.rmtree(final)
    os.replace(tmp, final)

  @classmethod
  def load(cls, folder: str, dim: int, cfg, vectors=None) -> "ScannIndex":
    import scann  # imported on use: only the scann backend needs it, and it loads slowly

    searcher = scann.scann_ops_pybind.load_searcher(os.path.join(folder, "scann"))
    return cls(dim, cfg, searcher=searcher, vectors=vectors)
